//! Container harness: the FROM-scratch image, built by `tests/docker/build.sh`, running a mesh of
//! `mesh-node` containers on a private Docker network, with the faults Docker can inject (`kill`,
//! `stop`/`start`, `network disconnect`/`connect`).
//!
//! How the addresses fit together: every test gets its own bridge network, on which node `nK` is
//! the network alias `nK` (aliases are per network, so concurrent tests each have their own `n1`).
//! The signed layout names members by those aliases (`n1:7443`, `n1:7444`); the nodes resolve them
//! through Docker's DNS, and each node certificate carries its alias as a DNS name. The test process
//! is outside that network: it dials each gateway through a port published on host loopback,
//! fixed when the container is created so it survives restarts and reconnects (the container's
//! bridge address does not), and verifies the node certificate as `nK`.
//!
//! Everything the harness creates is labelled with this host and process, removed when the mesh is
//! dropped (also on panic), and swept by later runs if the process was killed before it could.

use crate::harness::{GatewayClient, MeshHarness, Unsupported};
use crate::{Credentials, Pki, TRUST_DOMAIN, free_port};
use anyhow::{Context as _, bail};
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, LeafSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The uid and gid the image runs as (`USER 65532:65532`): mounted files must be readable by it.
const IMAGE_UID: u32 = 65532;
/// Ports inside every container; the host sees the gateway on a published loopback port.
const GATEWAY_PORT: u16 = 7443;
const PEER_PORT: u16 = 7444;
const OPS_PORT: u16 = 9090;
/// Label naming who created a container or network: `<hostname>/<pid>`.
const OWNER_LABEL: &str = "dev.dsm.test-owner";

/// Panics with what is missing when there is no usable Docker engine. (To leave the container
/// tests out, run with `NEXTEST_PROFILE=no-docker`: they are then counted as skipped.)
pub fn docker_required() {
    if let Err(e) = docker_available() {
        panic!("{e}");
    }
}

/// Whether the docker CLI exists and its daemon answers, with a message saying which is missing.
pub fn docker_available() -> Result<(), String> {
    let skip = "or leave the container tests out with NEXTEST_PROFILE=no-docker";
    match std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "the container tests need Docker, but the `docker` CLI is not installed (not on PATH); \
             install Docker, {skip}"
        )),
        Err(e) => Err(format!(
            "the container tests need Docker, but running `docker version` failed: {e}; {skip}"
        )),
        Ok(out) if !out.status.success() => Err(format!(
            "the container tests need Docker, but the Docker daemon is not reachable (`docker \
             version` failed: {}); start it or give this user access to it, {skip}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// Builds the image (or finds it up to date): what the container tests prepare before their
/// clock starts, as in `within_after(containers::build_image, secs, body)`.
pub fn build_image() {
    image();
}

/// The id of the image `tests/docker/build.sh` builds from this checkout: built (or found up to
/// date) once per test process. The script serializes concurrent builds, so parallel test
/// processes wait for one cold build and then find everything cached.
pub fn image() -> &'static str {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root = crate::workspace_root();
            let started = Instant::now();
            let out = std::process::Command::new(root.join("tests/docker/build.sh"))
                .arg("dark-store-mesh:dev")
                .current_dir(&root)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| format!("running tests/docker/build.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "tests/docker/build.sh failed ({}); its output is above",
                    out.status
                ));
            }
            let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // Run containers by id: a concurrent rebuild may move the tag meanwhile.
            let id = std::process::Command::new("docker")
                .args(["image", "inspect", "--format", "{{.Id}}", &tag])
                .output()
                .map_err(|e| format!("docker image inspect: {e}"))?;
            if !id.status.success() {
                return Err(format!(
                    "docker image inspect {tag}: {}",
                    String::from_utf8_lossy(&id.stderr)
                ));
            }
            eprintln!(
                "image {tag} ready in {:.0?}",
                started.elapsed() // cold: the static release build; warm: seconds
            );
            Ok(String::from_utf8_lossy(&id.stdout).trim().to_owned())
        })
        .as_deref()
        .unwrap_or_else(|e| panic!("building the image: {e}"))
}

/// Runs `docker args...`; its stdout, else an error carrying its stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `docker args...` from synchronous code (clean-up in `Drop`); output ignored.
fn docker_sync(args: &[&str]) -> Option<String> {
    std::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn owner() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

/// Removes containers and networks an earlier test process on this host created and could not
/// clean up (it was killed): those whose owning process is gone.
fn sweep_orphans() {
    let host = hostname();
    let orphaned = |label: &str| {
        let Some((h, pid)) = label.trim().rsplit_once('/') else {
            return false;
        };
        h == host && !Path::new("/proc").join(pid).exists()
    };
    let format = format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let filter = format!("label={OWNER_LABEL}");
    for (kind, list) in [
        ("container", ["ps", "-a"].as_slice()),
        ("network", ["network", "ls"].as_slice()),
    ] {
        let mut args = list.to_vec();
        args.extend(["--filter", &filter, "--format", &format]);
        let Some(out) = docker_sync(&args) else {
            continue;
        };
        for line in out.lines() {
            if let Some((id, label)) = line.split_once(' ')
                && orphaned(label)
            {
                match kind {
                    "container" => docker_sync(&["rm", "-f", "-v", id]),
                    _ => docker_sync(&["network", "rm", id]),
                };
            }
        }
    }
}

/// One node container.
#[derive(Debug)]
pub struct ContainerNode {
    /// Node id, and its network alias and certificate name.
    pub id: String,
    /// The container's (unique) name.
    pub container: String,
    /// The gateway as the test process dials it (published on host loopback).
    pub gateway: SocketAddr,
    /// Its config, certificate, keys and layout, mounted read-only at /etc/dsm.
    pub etc: PathBuf,
}

/// A mesh of node containers on their own Docker network. Dropping it removes the containers
/// (with their data volumes) and the network.
#[derive(Debug)]
pub struct ContainerMesh {
    pub pki: Pki,
    pub layout: Layout,
    pub network: String,
    pub nodes: Vec<ContainerNode>,
    image: String,
}

impl ContainerMesh {
    /// Starts nodes `n1..nN` as containers named `dsm-<test>-<pid>-<n>-nK` and waits until Docker
    /// reports every one healthy (the image's HEALTHCHECK, i.e. `mesh-node healthcheck`).
    pub async fn start(test: &str, n: usize) -> ContainerMesh {
        sweep_orphans();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let prefix = format!(
            "dsm-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let pki = Pki::new();
        let control = CertificateAuthority::load_control_key(&pki.ca_dir()).expect("control key");
        let members: Vec<Member> = (1..=n)
            .map(|i| Member {
                node_id: format!("n{i}"),
                gateway_addr: format!("n{i}:{GATEWAY_PORT}"),
                peer_addr: format!("n{i}:{PEER_PORT}"),
            })
            .collect();
        let layout = Layout::initial(members.clone()).expect("layout");
        let layout_bytes = prost::Message::encode_to_vec(&layout.sign(&control));

        let owner = owner();
        let mut mesh = ContainerMesh {
            pki,
            layout,
            network: prefix.clone(),
            nodes: Vec::new(),
            image: image().to_owned(),
        };
        // From here on, Drop cleans up whatever was created.
        docker(&[
            "network",
            "create",
            "--label",
            &format!("{OWNER_LABEL}={owner}"),
            &mesh.network,
        ])
        .await
        .expect("creating the test network");
        for m in &members {
            let etc = mesh.write_node_files(&m.node_id, &layout_bytes);
            let container = format!("{prefix}-{}", m.node_id);
            let gateway = mesh
                .run_container(&m.node_id, &container, &etc, &owner)
                .await;
            mesh.nodes.push(ContainerNode {
                id: m.node_id.clone(),
                container,
                gateway,
                etc,
            });
        }
        for i in 0..mesh.nodes.len() {
            mesh.wait_healthy(i, Duration::from_secs(60)).await;
        }
        mesh
    }

    /// Node `id`'s files: certificate (DNS names: its alias and localhost), key, key-encryption
    /// key, CA, control public key, layout and node.toml, readable by the image's user.
    fn write_node_files(&self, id: &str, layout: &[u8]) -> PathBuf {
        let etc = self.pki.dir.path().join("containers").join(id);
        std::fs::create_dir_all(&etc).expect("node dir");
        let mut spec = LeafSpec::new(
            Identity::Node {
                trust_domain: TRUST_DOMAIN.into(),
                node_id: id.into(),
            },
            Duration::from_secs(3600),
        );
        spec.dns_names = vec![id.to_owned(), "localhost".to_owned()];
        spec.ip_addresses = Vec::new();
        let issued = self.pki.ca.issue(&spec).expect("node certificate");
        issued.write(&etc, "node").expect("write node certificate");
        mesh_node::security::pki::write_secret(
            &etc.join("node.kek"),
            mesh_node::security::crypto::generate_key_file().as_bytes(),
        )
        .expect("key file");
        std::fs::copy(self.pki.ca_cert(), etc.join("ca.pem")).expect("ca.pem");
        std::fs::copy(
            self.pki
                .ca_dir()
                .join(mesh_node::security::pki::CONTROL_PUB_FILE),
            etc.join("control.pub"),
        )
        .expect("control.pub");
        std::fs::write(etc.join("layout.bin"), layout).expect("layout.bin");
        std::fs::write(
            etc.join("node.toml"),
            format!(
                "node_id = {id:?}\ntrust_domain = {TRUST_DOMAIN:?}\ndata_dir = \"/var/lib/dsm\"\n\
                 key_file = \"/etc/dsm/node.kek\"\n\
                 gateway_listen = \"0.0.0.0:{GATEWAY_PORT}\"\nops_listen = \"0.0.0.0:{OPS_PORT}\"\n\
                 peer_listen = \"0.0.0.0:{PEER_PORT}\"\n\
                 control_public_key = \"/etc/dsm/control.pub\"\nlayout_file = \"/etc/dsm/layout.bin\"\n\
                 [tls]\nca = \"/etc/dsm/ca.pem\"\ncert = \"/etc/dsm/node.pem\"\nkey = \"/etc/dsm/node.key\"\n\
                 [log]\nformat = \"json\"\nlevel = \"info\"\n"
            ),
        )
        .expect("node.toml");
        // The node runs as 65532: give it its files (root can), else make them readable (they are
        // throwaway test credentials in a private temp dir).
        for entry in std::fs::read_dir(&etc).expect("node dir").flatten() {
            let path = entry.path();
            if std::os::unix::fs::chown(&path, Some(IMAGE_UID), Some(IMAGE_UID)).is_err() {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
            }
        }
        let _ = std::os::unix::fs::chown(&etc, Some(IMAGE_UID), Some(IMAGE_UID));
        etc
    }

    /// `docker run`s node `id` the way a production deployment would: read-only root, no
    /// capabilities, no privilege escalation, config files mounted read-only, data in a volume.
    /// Returns the gateway's published address (retrying if a probed port was taken meanwhile).
    async fn run_container(
        &self,
        id: &str,
        container: &str,
        etc: &Path,
        owner: &str,
    ) -> SocketAddr {
        for attempt in 1.. {
            let port = free_port();
            let publish = format!("127.0.0.1:{port}:{GATEWAY_PORT}");
            let mount = format!("{}:/etc/dsm:ro", etc.display());
            let label = format!("{OWNER_LABEL}={owner}");
            let result = docker(&[
                "run",
                "--detach",
                "--name",
                container,
                "--hostname",
                id,
                "--network",
                &self.network,
                "--network-alias",
                id,
                "--label",
                &label,
                "--read-only",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--publish",
                &publish,
                "--volume",
                &mount,
                // An anonymous volume: kept across stop/start, removed with the container.
                "--volume",
                "/var/lib/dsm",
                "--env",
                "DSM_CONFIG=/etc/dsm/node.toml",
                // The image's HEALTHCHECK, polled faster than its production interval.
                "--health-interval",
                "1s",
                &self.image,
            ])
            .await;
            match result {
                Ok(_) => return SocketAddr::from(([127, 0, 0, 1], port)),
                Err(e) => {
                    // `docker run` may have created the container before failing to start it.
                    let _ = docker(&["rm", "--force", "--volumes", container]).await;
                    if !(attempt < 4 && format!("{e:#}").contains("already")) {
                        panic!("starting container {container}: {e:#}");
                    }
                }
            }
        }
        unreachable!()
    }

    /// `docker kill` (SIGKILL): no drain, no flush.
    pub async fn kill(&self, i: usize) {
        docker(&["kill", &self.nodes[i].container])
            .await
            .expect("docker kill");
    }

    /// `docker stop` with a grace period: SIGTERM, the node drains and flushes, SIGKILL after
    /// `grace`.
    pub async fn stop(&self, i: usize, grace: Duration) {
        docker(&[
            "stop",
            "--time",
            &grace.as_secs().to_string(),
            &self.nodes[i].container,
        ])
        .await
        .expect("docker stop");
    }

    /// `docker start` a stopped or killed node (same container: same data volume and ports).
    pub async fn start_node(&self, i: usize) {
        docker(&["start", &self.nodes[i].container])
            .await
            .expect("docker start");
    }

    /// Cuts node `i` off the mesh network (and so from its peers and from the host).
    pub async fn disconnect(&self, i: usize) {
        docker(&[
            "network",
            "disconnect",
            &self.network,
            &self.nodes[i].container,
        ])
        .await
        .expect("docker network disconnect");
    }

    /// Reconnects node `i` under its alias.
    pub async fn reconnect(&self, i: usize) {
        docker(&[
            "network",
            "connect",
            "--alias",
            &self.nodes[i].id,
            &self.network,
            &self.nodes[i].container,
        ])
        .await
        .expect("docker network connect");
    }

    /// Docker's health status of node `i` (`starting`, `healthy`, `unhealthy`), or the container
    /// state when it is not running.
    pub async fn health(&self, i: usize) -> String {
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Running}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            &self.nodes[i].container,
        ])
        .await
        .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Waits until Docker reports node `i` healthy.
    pub async fn wait_healthy(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.health(i).await;
            if status == "healthy" {
                return;
            }
            if status == "exited" || status == "dead" || Instant::now() > deadline {
                panic!(
                    "node {} is {status}, not healthy, after {timeout:?}; its log:\n{}",
                    self.nodes[i].id,
                    self.logs(i, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` of node `i`'s log (`docker logs`).
    pub fn logs(&self, i: usize, lines: usize) -> String {
        let out = std::process::Command::new("docker")
            .args([
                "logs",
                "--tail",
                &lines.to_string(),
                &self.nodes[i].container,
            ])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }
}

impl Drop for ContainerMesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "---- log of node {} ({}) ----\n{}",
                    self.nodes[i].id,
                    self.nodes[i].container,
                    self.logs(i, 40)
                );
            }
        }
        let mut rm = vec!["rm", "--force", "--volumes"];
        rm.extend(self.nodes.iter().map(|n| n.container.as_str()));
        if !self.nodes.is_empty() && docker_sync(&rm).is_none() {
            eprintln!("warning: could not remove containers {:?}", &rm[3..]);
        }
        if docker_sync(&["network", "rm", &self.network]).is_none() {
            eprintln!("warning: could not remove network {}", self.network);
        }
    }
}

/// Node `i` is container `n<i+1>`, dialled through its published gateway port and verified as its
/// network alias.
impl MeshHarness for ContainerMesh {
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
        let node = &self.nodes[i];
        let channel = mesh_node::api::client::connect(node.gateway, &node.id, credentials.tls())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}'s gateway: {e}", node.id));
        GatewayClient::new(channel)
    }

    /// `docker kill` (SIGKILL).
    async fn kill(&mut self, i: usize) -> Result<(), Unsupported> {
        ContainerMesh::kill(self, i).await;
        Ok(())
    }

    /// `docker start` on the same container (same data volume and ports), until Docker reports
    /// it healthy.
    async fn restart(&mut self, i: usize) -> Result<(), Unsupported> {
        self.start_node(i).await;
        self.wait_healthy(i, Duration::from_secs(60)).await;
        Ok(())
    }
}
