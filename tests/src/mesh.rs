//! [`TestMesh`]: a mesh of real node processes started by the harness on loopback, sharing one CA
//! and one signed layout, and changed with the real control plane (`mesh-ctl layout stage` and
//! `apply`).

use crate::harness::{GatewayClient, MeshHarness, Unsupported, layout_in};
use crate::node::owned_env;
use crate::{Credentials, NodeOptions, NodeProcess, Pki, free_port, mesh_ctl};
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::pki::CertificateAuthority;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A mesh of real node processes on loopback sharing one CA and one signed layout (version 1).
#[derive(Debug)]
pub struct TestMesh {
    pub pki: Pki,
    pub nodes: Vec<NodeProcess>,
    pub layout: Layout,
    pub layout_file: PathBuf,
}

impl TestMesh {
    /// Starts `n` nodes `n1..nN` with fixed ports, so a restarted node comes back where the layout
    /// says it is.
    pub fn start(n: usize) -> TestMesh {
        TestMesh::start_with_log(n, &NodeOptions::default().log_level)
    }

    /// As [`TestMesh::start`], with the nodes' log filter (benchmarks use production's `info`).
    pub fn start_with_log(n: usize, log_level: &str) -> TestMesh {
        TestMesh::start_with(n, log_level, &[])
    }

    /// As [`TestMesh::start`], with extra environment for every node (settings such as
    /// `DSM_ACCESS_REVEAL_LIMIT`).
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> TestMesh {
        TestMesh::start_with(n, &NodeOptions::default().log_level, env)
    }

    /// As [`TestMesh::start`], with the nodes' log filter and extra environment (settings such as
    /// `DSM_ACCESS_CONTACT_GRACE`).
    pub fn start_with(n: usize, log_level: &str, env: &[(&str, &str)]) -> TestMesh {
        let pki = Pki::new();
        let control = CertificateAuthority::load_control_key(&pki.ca_dir()).expect("control key");
        let layout_file = pki.dir.path().join("layout.bin");
        // A probed free port can be taken by a concurrent test before the node binds it: then
        // the whole mesh starts again on fresh ports (and a fresh first layout).
        let mut attempt = 0;
        let (layout, nodes) = loop {
            attempt += 1;
            let members: Vec<Member> = (1..=n)
                .map(|i| Member {
                    node_id: format!("n{i}"),
                    peer_addr: format!("127.0.0.1:{}", free_port()),
                    gateway_addr: format!("127.0.0.1:{}", free_port()),
                })
                .collect();
            let layout = Layout::initial(members.clone()).expect("layout");
            std::fs::write(
                &layout_file,
                prost::Message::encode_to_vec(&layout.sign(&control)),
            )
            .expect("write layout");
            let started: anyhow::Result<Vec<NodeProcess>> = members
                .iter()
                .map(|m| {
                    let opts = NodeOptions {
                        gateway: m.gateway_addr.parse().expect("addr"),
                        peer: m.peer_addr.parse().expect("addr"),
                        layout_file: Some(layout_file.clone()),
                        log_level: log_level.to_owned(),
                        env: owned_env(env),
                    };
                    NodeProcess::try_start_with(&pki, &m.node_id, &opts)
                })
                .collect();
            match started {
                Ok(nodes) => break (layout, nodes),
                Err(e) if attempt < 4 && format!("{e:#}").contains("Address already in use") => {}
                Err(e) => panic!("the mesh does not start: {e:#}"),
            }
        };
        TestMesh {
            pki,
            nodes,
            layout,
            layout_file,
        }
    }

    /// The mesh directory `mesh-ctl --dir` works on: the CA (with the control key), `layout.bin`.
    pub fn dir(&self) -> PathBuf {
        self.pki.dir.path().to_owned()
    }

    /// `mesh-ctl layout apply --version V --wait`: pushes the staged layout `version` and waits
    /// (up to 120 s) until every partition has moved. Its stdout, else why it failed.
    pub async fn apply_and_wait(&self, version: u64) -> anyhow::Result<String> {
        let dir = self.dir();
        let dir = dir.to_str().expect("utf-8 dir");
        let version = version.to_string();
        mesh_ctl(&[
            "layout",
            "apply",
            "--version",
            &version,
            "--wait",
            "--timeout",
            "120s",
            "--dir",
            dir,
        ])
        .await
    }

    /// The index of node `id`.
    pub fn index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The layout mesh-ctl last signed (`layout.bin`), verified.
    pub fn layout_now(&self) -> Layout {
        layout_in(&self.dir())
    }

    /// Starts node `id` on the current layout file (not yet a member: `change_members` adds it),
    /// or restarts it if it ran before. Returns its index.
    pub fn start_node(&mut self, id: &str, env: &[(&str, &str)]) -> usize {
        let env = owned_env(env);
        if let Some(i) = self.nodes.iter().position(|n| n.id == id) {
            let node = &mut self.nodes[i];
            node.env = env;
            if !node.is_running() {
                node.spawn().expect("node restarts");
            }
            return i;
        }
        // A free port can be taken by a concurrent test between probing and binding: try again
        // with fresh ones.
        for attempt in 0.. {
            let opts = NodeOptions {
                gateway: SocketAddr::from(([127, 0, 0, 1], free_port())),
                peer: SocketAddr::from(([127, 0, 0, 1], free_port())),
                layout_file: Some(self.layout_file.clone()),
                env: env.clone(),
                ..NodeOptions::default()
            };
            match NodeProcess::try_start_with(&self.pki, id, &opts) {
                Ok(node) => {
                    self.nodes.push(node);
                    break;
                }
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {}
                Err(e) => panic!("node {id} does not start: {e:#}"),
            }
        }
        self.nodes.len() - 1
    }

    /// Starts node `id` (see [`TestMesh::start_node`]) and stages its joining with
    /// `mesh-ctl layout stage add`. Returns its index.
    pub async fn stage_join(&mut self, id: &str, env: &[(&str, &str)]) -> usize {
        let i = self.start_node(id, env);
        let (gw, peer) = (
            self.nodes[i].gateway.to_string(),
            self.nodes[i].peer.to_string(),
        );
        let dir = self.dir();
        let dir = dir.to_str().expect("utf-8 dir");
        mesh_ctl(&[
            "layout",
            "stage",
            "add",
            id,
            "--gateway",
            &gw,
            "--peer",
            &peer,
            "--dir",
            dir,
        ])
        .await
        .expect("stage add");
        i
    }

    /// Moves the mesh to exactly the members `ids` with the real control plane: starts joining
    /// nodes, `mesh-ctl layout stage` each change, `layout apply --version V --wait`, then stops
    /// the nodes that left (kept in `nodes`, stopped, for inspection). Returns the new layout.
    pub async fn change_members(&mut self, ids: &[&str]) -> Layout {
        let current = self.layout_now();
        let dir = self.dir();
        let dir = dir.to_str().expect("utf-8 dir");
        for id in ids {
            if !current.is_member(id) {
                self.stage_join(id, &[]).await;
            }
        }
        for m in &current.members {
            if !ids.contains(&m.node_id.as_str()) {
                mesh_ctl(&["layout", "stage", "remove", &m.node_id, "--dir", dir])
                    .await
                    .expect("stage remove");
            }
        }
        self.apply_and_wait(current.version + 1)
            .await
            .expect("apply");
        let next = self.layout_now();
        for node in &mut self.nodes {
            if !next.is_member(&node.id) && node.is_running() {
                node.stop();
            }
        }
        self.layout = next.clone();
        next
    }
}

/// Node `i` is the `i`-th process the harness started (stopped ones included, for inspection).
impl MeshHarness for TestMesh {
    fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    fn layout(&self) -> Layout {
        self.layout.clone()
    }

    fn credentials(&self, role: Role) -> Credentials {
        self.pki.client(role)
    }

    async fn client(&self, i: usize, credentials: &Credentials) -> GatewayClient {
        self.nodes[i].client(credentials).await
    }

    /// `kill -9`: no drain, no flush.
    async fn kill(&mut self, i: usize) -> Result<(), Unsupported> {
        self.nodes[i].kill9();
        Ok(())
    }

    /// The same process again on the same config, data and ports.
    async fn restart(&mut self, i: usize) -> Result<(), Unsupported> {
        let node = &mut self.nodes[i];
        node.spawn()
            .unwrap_or_else(|e| panic!("node {} does not restart: {e:#}", node.id));
        Ok(())
    }
}
