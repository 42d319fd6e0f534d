//! [`UpMesh`]: a local mesh started by `mesh-ctl up` (the operator's path), read through the
//! `mesh.json` it writes, and stopped with Ctrl-C (SIGINT) when dropped.

use crate::harness::{GatewayClient, MeshHarness, Unsupported, layout_in};
use crate::{Credentials, mesh_ctl_bin, mesh_node_bin};
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::Layout;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A local mesh started by `mesh-ctl up` (the operator's path), stopped when dropped.
#[derive(Debug)]
pub struct UpMesh {
    pub dir: tempfile::TempDir,
    up: Child,
    /// `mesh.json` as `up` wrote it.
    pub file: serde_json::Value,
}

impl UpMesh {
    /// `mesh-ctl up --nodes n` on free ports, with extra node environment. A probed free port can
    /// be taken by a concurrent test before a node binds it: then `up` exits, and it is started
    /// again on fresh ports (as `TestMesh` does); any other early exit fails with what `up` said.
    pub fn start(n: usize, env: &[(&str, &str)]) -> UpMesh {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match UpMesh::try_start(n, env) {
                Ok(mesh) => return mesh,
                Err(said) if attempt < 4 && said.contains("in use") => {}
                Err(said) => panic!("mesh-ctl up did not start a mesh: {said}"),
            }
        }
    }

    fn try_start(n: usize, env: &[(&str, &str)]) -> Result<UpMesh, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("up.log");
        let up = Command::new(mesh_ctl_bin())
            .args(["up", "--nodes", &n.to_string(), "--base-port", "0", "--dir"])
            .arg(dir.path())
            .arg("--node-bin")
            .arg(mesh_node_bin())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("up.log"))
            .spawn()
            .expect("mesh-ctl up");
        let mut mesh = UpMesh {
            dir,
            up,
            file: serde_json::Value::Null,
        };
        let path = mesh.dir.path().join("mesh.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !path.exists() {
            let said = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = mesh.up.try_wait() {
                return Err(format!("it exited ({status}) saying:\n{}", said()));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("no mesh.json after 120 s; it said:\n{}", said()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Written once every node is ready; read it whole (it is written in one step).
        mesh.file = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("mesh.json");
        Ok(mesh)
    }

    /// Runs `mesh-ctl ARGS --dir <this mesh>`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(mesh_ctl_bin())
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .expect("mesh-ctl")
    }

    /// The gateway address of node `i` (0-based, in mesh.json order).
    pub fn gateway(&self, i: usize) -> SocketAddr {
        self.file["nodes"][i]["gateway"]
            .as_str()
            .expect("gateway")
            .parse()
            .expect("addr")
    }

    /// The process id of node `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.file["nodes"][i]["pid"].as_u64().expect("pid") as u32
    }

    /// The certificate and key files of the local client for `role`.
    pub fn client_files(&self, role: &str) -> (PathBuf, PathBuf) {
        let c = &self.file["clients"][role];
        (
            PathBuf::from(c["cert"].as_str().expect("cert")),
            PathBuf::from(c["key"].as_str().expect("key")),
        )
    }

    /// The local client files for `role` as they are now on disk (after a rotation: the new
    /// certificate), trusting the mesh's current bundle.
    pub fn credentials_of(&self, role: &str) -> Credentials {
        let (cert, key) = self.client_files(role);
        Credentials {
            ca: PathBuf::from(self.file["ca_cert"].as_str().expect("ca_cert")),
            cert,
            key,
        }
    }

    /// A TLS config and proof signer from the client files for `role` as they are now on disk
    /// (see [`UpMesh::credentials_of`]).
    pub fn tls_and_signer(
        &self,
        role: &str,
    ) -> (
        Arc<rustls::ClientConfig>,
        mesh_node::security::proof::Signer,
    ) {
        let credentials = self.credentials_of(role);
        (credentials.tls(), credentials.signer())
    }
}

/// Node `i` is the `i`-th entry of `mesh.json`. `mesh-ctl up` stops the whole mesh when one of
/// its nodes dies, so nodes cannot be killed and restarted one at a time.
impl MeshHarness for UpMesh {
    fn node_ids(&self) -> Vec<String> {
        self.file["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["id"].as_str().expect("id").to_owned())
            .collect()
    }

    fn layout(&self) -> Layout {
        layout_in(self.dir.path())
    }

    fn credentials(&self, role: Role) -> Credentials {
        self.credentials_of(role.as_str())
    }

    async fn client(&self, i: usize, credentials: &Credentials) -> GatewayClient {
        let server_name = self.file["server_name"].as_str().expect("server_name");
        let channel =
            mesh_node::api::client::connect(self.gateway(i), server_name, credentials.tls())
                .await
                .unwrap_or_else(|e| panic!("connecting to node {i}'s gateway: {e}"));
        GatewayClient::new(channel)
    }

    async fn kill(&mut self, _: usize) -> Result<(), Unsupported> {
        Err(Unsupported(
            "mesh-ctl up stops the whole mesh when one of its nodes dies",
        ))
    }

    async fn restart(&mut self, _: usize) -> Result<(), Unsupported> {
        Err(Unsupported(
            "mesh-ctl up starts nodes only with the whole mesh",
        ))
    }
}

impl Drop for UpMesh {
    fn drop(&mut self) {
        // SIGINT: `up` stops its nodes (drain and flush) before it exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.up.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if matches!(self.up.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
    }
}
