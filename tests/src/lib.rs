//! Cluster harness for end-to-end tests and benchmarks: real `mesh-node` processes (built from this
//! workspace), real certificates from the mesh PKI, real sled data directories, real mTLS gRPC.
//!
//! - [`Pki`]: a CA in a temp dir; issues node and client certificates (also deliberately bad ones).
//! - [`NodeProcess`]: one node process: start, `kill -9`, restart on the same data, stop gracefully,
//!   inspect offline. If a test panics, the node's log tail is printed.
//! - [`sample_order`]: a valid order request with distinctive, searchable PII.
//! - [`python`]: a Python interpreter with the test requirements (a venv under `target/`).

use anyhow::{Context as _, bail};
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, LeafSpec};
use mesh_node::access::policy::Role;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_proto::v1::{
    Address, Channel, CreateOrderRequest, Customer, LineItem, Payment, PaymentMethod, PaymentStatus,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const TRUST_DOMAIN: &str = "mesh.test";

/// Polls `cond` until it holds or `timeout` passes; never a bare sleep that guesses.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }};
}

/// Runs an async test body with a deadline, so a hang fails instead of stalling CI. The binaries
/// are built (or found) first: a cold build must not eat the test's time budget.
pub async fn within<F: Future<Output = T>, T>(secs: u64, body: F) -> T {
    tokio::task::spawn_blocking(|| {
        bin_dir();
    })
    .await
    .expect("building the binaries");
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Directory holding the freshly built `mesh-node` and `mesh-ctl` binaries. Set `DSM_BIN_DIR` to
/// use prebuilt ones; otherwise they are (re)built once per test process with cargo.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("DSM_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // Same profile as this harness: benchmarks (release) drive release nodes, tests debug ones.
        let release = !cfg!(debug_assertions);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "mesh-node",
            "-p",
            "mesh-ctl",
            "--bins",
        ]);
        if release {
            // Benchmarks measure with switches that shipped builds do not have (audit off).
            cmd.args(["--release", "--features", "mesh-node/bench-switches"]);
        } else {
            // Tests crash nodes at chosen points of a handoff (`DSM_FAULT_POINT`, see `fault`).
            cmd.args(["--features", "mesh-node/fault-injection"]);
        }
        let status = cmd
            .status()
            .expect("running cargo to build mesh-node and mesh-ctl");
        assert!(status.success(), "building mesh-node and mesh-ctl failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map_or_else(|_| workspace_root().join("target"), PathBuf::from);
        target.join(if release { "release" } else { "debug" })
    })
}

pub fn mesh_node_bin() -> PathBuf {
    bin_dir().join("mesh-node")
}

pub fn mesh_ctl_bin() -> PathBuf {
    bin_dir().join("mesh-ctl")
}

/// Paths of a certificate, its key, and the CA bundle to trust.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Credentials {
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        mesh_node::api::client::client_tls(&self.ca, &self.cert, &self.key).expect("client TLS config")
    }
}

/// A mesh CA in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_trust_domain(TRUST_DOMAIN)
    }

    pub fn with_trust_domain(td: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::create(td, Duration::from_secs(86_400)).expect("CA");
        ca.save(&dir.path().join("ca")).expect("save CA");
        Pki { dir, ca }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join(mesh_node::security::pki::CA_CERT_FILE)
    }

    /// Issues `spec` and writes it under a unique stem.
    pub fn issue(&self, spec: &LeafSpec, stem: &str) -> Credentials {
        let (cert, key) = self
            .ca
            .issue(spec)
            .expect("issue")
            .write(&self.dir.path().join("certs"), stem)
            .expect("write");
        Credentials {
            ca: self.ca_cert(),
            cert,
            key,
        }
    }

    pub fn client(&self, role: Role) -> Credentials {
        self.client_named(role, &format!("test-{role}"))
    }

    pub fn client_named(&self, role: Role, name: &str) -> Credentials {
        let id = Identity::Client {
            trust_domain: self.ca.trust_domain().into(),
            role,
            name: name.into(),
        };
        self.issue(
            &LeafSpec::new(id, Duration::from_secs(3600)),
            &format!("client-{role}-{name}"),
        )
    }

    pub fn node(&self, id: &str) -> Credentials {
        let identity = Identity::Node {
            trust_domain: self.ca.trust_domain().into(),
            node_id: id.into(),
        };
        self.issue(
            &LeafSpec::new(identity, Duration::from_secs(3600)),
            &format!("node-{id}"),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// How to start a node: addresses and, for a mesh, the signed layout file.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub log_level: String,
    pub gateway: SocketAddr,
    pub peer: SocketAddr,
    pub layout_file: Option<PathBuf>,
    /// Extra environment for the process (fault injection).
    pub env: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            log_level: "info,mesh_node=debug".into(),
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            layout_file: None,
            env: Vec::new(),
        }
    }
}

/// A free loopback port for TCP and UDP alike (bound then released; fine for tests).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A mesh of real node processes on loopback sharing one CA and one signed layout (version 1).
#[derive(Debug)]
pub struct TestMesh {
    pub pki: Pki,
    pub nodes: Vec<NodeProcess>,
    pub layout: mesh_node::cluster::layout::Layout,
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
            let members: Vec<mesh_node::cluster::layout::Member> = (1..=n)
                .map(|i| mesh_node::cluster::layout::Member {
                    node_id: format!("n{i}"),
                    peer_addr: format!("127.0.0.1:{}", free_port()),
                    gateway_addr: format!("127.0.0.1:{}", free_port()),
                })
                .collect();
            let layout = mesh_node::cluster::layout::Layout::initial(members.clone()).expect("layout");
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
                        env: env
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
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

    /// The index of node `id`.
    pub fn index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The layout mesh-ctl last signed (`layout.bin`), verified.
    pub fn layout_now(&self) -> mesh_node::cluster::layout::Layout {
        let control =
            CertificateAuthority::load_control_key(&self.pki.ca_dir()).expect("control key");
        let bytes = std::fs::read(&self.layout_file).expect("layout.bin");
        let signed: mesh_proto::v1::SignedLayout =
            prost::Message::decode(bytes.as_slice()).expect("signed layout");
        mesh_node::cluster::layout::Layout::verify(&signed, &control.public()).expect("verifies")
    }

    /// Starts node `id` on the current layout file (not yet a member: `change_members` adds it),
    /// or restarts it if it ran before. Returns its index.
    pub fn start_node(&mut self, id: &str, env: &[(&str, &str)]) -> usize {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
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
    pub async fn change_members(&mut self, ids: &[&str]) -> mesh_node::cluster::layout::Layout {
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
        let version = (current.version + 1).to_string();
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

    /// The index of the node owning `customer_id`.
    pub fn owner_of_customer(&self, customer_id: &str) -> usize {
        owner_position(
            &self.layout,
            self.nodes.iter().map(|n| n.id.as_str()),
            customer_id,
        )
    }

    /// A customer id owned by node `index`.
    pub fn customer_on(&self, index: usize, salt: &str) -> String {
        customer_owned_by(
            &self.layout,
            self.nodes.iter().map(|n| n.id.as_str()),
            index,
            salt,
        )
    }
}

/// The position, among the node ids `ids` (in a mesh's order), of the node `layout` assigns
/// `customer_id` to.
pub fn owner_position<'a>(
    layout: &mesh_node::cluster::layout::Layout,
    ids: impl IntoIterator<Item = &'a str>,
    customer_id: &str,
) -> usize {
    let owner = &layout
        .owner_of(mesh_node::domain::ids::partition_of(customer_id))
        .node_id;
    ids.into_iter()
        .position(|id| id == owner)
        .expect("owner is a node")
}

/// A customer id `<salt>-<n>` that `layout` assigns to the node at position `index` of `ids`.
pub fn customer_owned_by<'a>(
    layout: &mesh_node::cluster::layout::Layout,
    ids: impl IntoIterator<Item = &'a str> + Clone,
    index: usize,
    salt: &str,
) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|c| owner_position(layout, ids.clone(), c) == index)
        .expect("some customer")
}

/// One real `mesh-node` process and its files.
#[derive(Debug)]
pub struct NodeProcess {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub credentials: Credentials,
    child: Option<Child>,
    pub gateway: SocketAddr,
    pub ops: SocketAddr,
    pub peer: SocketAddr,
    pub env: Vec<(String, String)>,
    // Keeps the node's directory alive as long as the process handle.
    _tmp: Option<tempfile::TempDir>,
}

impl NodeProcess {
    /// Writes a config for node `id` (ephemeral ports, fresh key file and data dir) and starts it,
    /// logging at debug level for `mesh_node` so a failing test shows what happened.
    pub fn start(pki: &Pki, id: &str) -> NodeProcess {
        NodeProcess::start_with_log(pki, id, "info,mesh_node=debug")
    }

    /// As [`NodeProcess::start`], with the node's log filter (benchmarks use production's `info`).
    pub fn start_with_log(pki: &Pki, id: &str, log_level: &str) -> NodeProcess {
        NodeProcess::start_with(
            pki,
            id,
            &NodeOptions {
                log_level: log_level.into(),
                ..NodeOptions::default()
            },
        )
    }

    /// Starts node `id` with explicit addresses and (for a mesh) a layout.
    pub fn start_with(pki: &Pki, id: &str, opts: &NodeOptions) -> NodeProcess {
        NodeProcess::try_start_with(pki, id, opts).expect("node starts")
    }

    /// As [`NodeProcess::start_with`], returning why the node did not start.
    pub fn try_start_with(pki: &Pki, id: &str, opts: &NodeOptions) -> anyhow::Result<NodeProcess> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let credentials = pki.node(id);
        let key_file = dir.join("node.kek");
        mesh_node::security::pki::write_secret(&key_file, mesh_node::security::crypto::generate_key_file().as_bytes())
            .expect("key file");
        let mut mesh = String::new();
        if let Some(layout) = &opts.layout_file {
            mesh = format!(
                "control_public_key = {:?}\nlayout_file = {:?}\n",
                pki.ca_dir()
                    .join(mesh_node::security::pki::CONTROL_PUB_FILE)
                    .display()
                    .to_string(),
                layout.display().to_string()
            );
        }
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = {id:?}\ntrust_domain = {td:?}\ndata_dir = {data:?}\nkey_file = {kek:?}\n\
                 gateway_listen = \"{gw}\"\nops_listen = \"127.0.0.1:0\"\npeer_listen = \"{peer}\"\n{mesh}\
                 [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[log]\nlevel = {log:?}\n",
                td = pki.ca.trust_domain(),
                data = dir.join("data").display().to_string(),
                kek = key_file.display().to_string(),
                gw = opts.gateway,
                peer = opts.peer,
                ca = credentials.ca.display().to_string(),
                cert = credentials.cert.display().to_string(),
                key = credentials.key.display().to_string(),
                log = opts.log_level,
            ),
        )
        .expect("write config");
        let mut node = NodeProcess {
            id: id.into(),
            dir,
            config,
            credentials,
            child: None,
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer: opts.peer,
            env: opts.env.clone(),
            _tmp: Some(tmp),
        };
        node.spawn()?;
        Ok(node)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("node.kek")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Starts the process on the existing config and data, and waits until it reports ready.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let ready = self.dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())?;
        let mut child = Command::new(mesh_node_bin())
            .envs(self.env.iter().cloned())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning mesh-node")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text)?;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mesh-node exited during startup ({status}):\n{}",
                    self.log_tail(30)
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("mesh-node not ready within 30s:\n{}", self.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.gateway = info["gateway"].as_str().context("gateway")?.parse()?;
        self.ops = info["ops"].as_str().context("ops")?.parse()?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`: no drain, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (drain + flush). Returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `mesh-node inspect -o json` on the (stopped) node's data directory.
    pub fn inspect(&self) -> serde_json::Value {
        let out = Command::new(mesh_node_bin())
            .arg("inspect")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--key-file")
            .arg(self.key_file())
            .args(["-o", "json"])
            .output()
            .expect("running mesh-node inspect");
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A gateway client holding `credentials`.
    pub async fn client(
        &self,
        credentials: &Credentials,
    ) -> OrderGatewayClient<tonic::transport::Channel> {
        OrderGatewayClient::new(self.channel(credentials).await.expect("connect to gateway"))
    }

    pub async fn channel(
        &self,
        credentials: &Credentials,
    ) -> Result<tonic::transport::Channel, mesh_node::api::client::ConnectError> {
        mesh_node::api::client::connect(self.gateway, "localhost", credentials.tls()).await
    }

    /// GETs a path on the plaintext ops port.
    pub fn ops_get(&self, path: &str) -> (u16, String) {
        http_get(self.ops, path)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of node {} ----\n{}", self.id, self.log_tail(40));
        }
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET, enough for the ops port.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to ops port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// A valid order with PII derived from `n`, distinctive enough to search for on disk.
pub fn sample_order(customer_id: &str, n: u32) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer_id.into(),
        external_ref: format!("SF-{n}"),
        channel: Channel::Storefront as i32,
        customer: Some(Customer {
            name: format!("Meenakshi Sundaram{n}"),
            phone: format!("+9198{:08}", n % 100_000_000),
            email: format!("meenakshi.{n}@example.in"),
            address: Some(Address {
                line1: format!("{n} Lakshmi Nagar Main Road"),
                line2: "Near Ganesh Temple".into(),
                city: "Coimbatore".into(),
                state: "Tamil Nadu".into(),
                pincode: "641001".into(),
            }),
            ..Customer::default()
        }),
        items: vec![
            LineItem {
                sku: "SAREE-SILK-01".into(),
                name: "Silk saree".into(),
                quantity: 1,
                unit_price_paise: 349_900,
            },
            LineItem {
                sku: "BLOUSE-02".into(),
                name: "Blouse piece".into(),
                quantity: 2,
                unit_price_paise: 29_900,
            },
        ],
        total_paise: 409_700,
        payment: Some(Payment {
            method: PaymentMethod::Cod as i32,
            amount_paise: 409_700,
            status: PaymentStatus::Pending as i32,
        }),
        consent: None,
        idempotency_key: String::new(),
    }
}

/// A Python 3 interpreter with `tests/python/requirements.txt` installed (a venv under `target/`,
/// created on first use). Fails with a message naming what is missing.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| python_venv("py-venv", "tests/python/requirements.txt"))
        .clone()
}

/// A Python 3 interpreter in `target/<name>` with the requirements file `requirements` (relative
/// to the workspace) installed, rebuilt only when that file changes. Several test processes may
/// ask at once: one installs, the others wait. Panics naming what is missing (python3, venv, PyPI).
pub fn python_venv(name: &str, requirements: &str) -> PathBuf {
    let root = workspace_root();
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let venv = target.join(name);
    let py = venv.join("bin/python");
    let requirements = root.join(requirements);
    let ready = venv.join(".requirements-installed");
    let wanted = std::fs::read_to_string(&requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    let installed = || std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str());
    if installed() {
        return py;
    }
    let lock = target.join(format!("{name}.lock"));
    std::fs::create_dir_all(&target).expect("target dir");
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    while std::fs::create_dir(&lock).is_err() {
        if installed() {
            return py;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {} (remove it if stale)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = (|| -> anyhow::Result<()> {
        if !py.exists() {
            let s = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .context(
                    "python3 is required for the Python-based tests (apt-get install python3 \
                     python3-venv), or set DSM_SKIP_PYTHON=1 to skip them on purpose",
                )?;
            anyhow::ensure!(s.success(), "python3 -m venv failed (install python3-venv)");
        }
        let s = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()?;
        anyhow::ensure!(
            s.success(),
            "pip install -r {} failed (PyPI must be reachable)",
            requirements.display()
        );
        std::fs::write(&ready, &wanted)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = result {
        panic!(
            "setting up Python test tooling in {}: {e:#}",
            venv.display()
        );
    }
    py
}

/// Every file under `dir`, concatenated: for byte searches of what a node keeps on disk.
pub fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// Runs `mesh-ctl` with `args`; its stdout on success, else an error with its stderr.
pub async fn mesh_ctl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(mesh_ctl_bin())
        .args(args)
        .output()
        .await
        .context("running mesh-ctl")?;
    if !out.status.success() {
        bail!(
            "mesh-ctl {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub mod containers;
/// Calls any gateway method with one set of arguments: how the role-by-method tests drive a node.
pub mod history;

/// A local mesh started by `mesh-ctl up` (the operator's path), stopped when dropped.
#[derive(Debug)]
pub struct UpMesh {
    pub dir: tempfile::TempDir,
    up: Child,
    /// `mesh.json` as `up` wrote it.
    pub file: serde_json::Value,
}

impl UpMesh {
    /// `mesh-ctl up --nodes n` on free ports, with extra node environment.
    pub fn start(n: usize, env: &[(&str, &str)]) -> UpMesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = Command::new(mesh_ctl_bin())
            .args(["up", "--nodes", &n.to_string(), "--base-port", "0", "--dir"])
            .arg(dir.path())
            .arg("--node-bin")
            .arg(mesh_node_bin())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mesh-ctl up");
        let path = dir.path().join("mesh.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "mesh-ctl up never wrote mesh.json"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let file = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("mesh.json");
        UpMesh { dir, up, file }
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

    /// A TLS config and proof signer from the client files for `role` as they are now on disk
    /// (after a rotation: the new certificate), trusting the mesh's current bundle.
    pub fn client(&self, role: &str) -> (Arc<rustls::ClientConfig>, mesh_node::security::proof::Signer) {
        let (cert, key) = self.client_files(role);
        let bundle = PathBuf::from(self.file["ca_cert"].as_str().expect("ca_cert"));
        (
            mesh_node::api::client::client_tls(&bundle, &cert, &key).expect("client tls"),
            mesh_node::security::proof::Signer::from_pem_file(&key).expect("signer"),
        )
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

pub mod probe {
    use mesh_node::access::policy::Method;
    use mesh_node::security::proof::Signer;
    use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
    use mesh_proto::v1::{
        GetOrderRequest, GetShippingLabelRequest, ListCustomerOrdersRequest, Order, OrderStatus,
        ResolveContactHandleRequest, ResolveContactHandleResponse, RevealFieldRequest,
        RevealFieldResponse, ShippingLabel, UpdateOrderStatusRequest,
    };
    use tonic::Status;
    use tonic::transport::Channel;

    /// The order, customer and handle a probe aims at, and what it asks for.
    #[derive(Debug, Clone)]
    pub struct Target {
        pub order_id: String,
        pub customer_id: String,
        pub handle: String,
        pub purpose: String,
        /// The status an `UpdateOrderStatus` probe asks for.
        pub status: OrderStatus,
        /// The field a `RevealField` probe asks for.
        pub reveal: String,
        /// The customer a `CreateOrder` probe creates an order for.
        pub new_customer: String,
    }

    /// What a method answered.
    #[derive(Debug, Clone)]
    pub enum Answer {
        Orders(Vec<Order>),
        Label(Box<ShippingLabel>),
        Revealed(RevealFieldResponse),
        Resolved(ResolveContactHandleResponse),
    }

    impl Answer {
        pub fn orders(self) -> Vec<Order> {
            match self {
                Answer::Orders(o) => o,
                other => panic!("expected orders, got {other:?}"),
            }
        }
    }

    fn req<T>(signer: Option<&Signer>, m: Method, body: T) -> tonic::Request<T>
    where
        T: prost::Message,
    {
        match signer {
            Some(s) => s.signed(m.path(), body),
            None => tonic::Request::new(body),
        }
    }

    /// Calls `method` through `client`, signing the request when `signer` is given.
    pub async fn call(
        client: &mut OrderGatewayClient<Channel>,
        signer: Option<&Signer>,
        method: Method,
        t: &Target,
    ) -> Result<Answer, Status> {
        let get = GetOrderRequest {
            order_id: t.order_id.clone(),
            purpose: t.purpose.clone(),
            fields: Vec::new(),
        };
        Ok(match method {
            Method::CreateOrder => Answer::Orders(
                client
                    .create_order(req(
                        signer,
                        method,
                        crate::sample_order(&t.new_customer, 901),
                    ))
                    .await?
                    .into_inner()
                    .order
                    .into_iter()
                    .collect(),
            ),
            Method::GetOrder => Answer::Orders(
                client
                    .get_order(req(signer, method, get))
                    .await?
                    .into_inner()
                    .order
                    .into_iter()
                    .collect(),
            ),
            Method::UpdateOrderStatus => Answer::Orders(
                client
                    .update_order_status(req(
                        signer,
                        method,
                        UpdateOrderStatusRequest {
                            order_id: t.order_id.clone(),
                            status: t.status as i32,
                            purpose: t.purpose.clone(),
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner()
                    .order
                    .into_iter()
                    .collect(),
            ),
            Method::ListCustomerOrders => {
                let mut stream = client
                    .list_customer_orders(req(
                        signer,
                        method,
                        ListCustomerOrdersRequest {
                            customer_id: t.customer_id.clone(),
                            purpose: t.purpose.clone(),
                        },
                    ))
                    .await?
                    .into_inner();
                let mut orders = Vec::new();
                while let Some(item) = stream.message().await? {
                    orders.extend(item.order);
                }
                Answer::Orders(orders)
            }
            Method::GetShippingLabel => Answer::Label(Box::new(
                client
                    .get_shipping_label(req(
                        signer,
                        method,
                        GetShippingLabelRequest {
                            order_id: t.order_id.clone(),
                            purpose: t.purpose.clone(),
                        },
                    ))
                    .await?
                    .into_inner()
                    .label
                    .unwrap_or_default(),
            )),
            Method::RevealField => Answer::Revealed(
                client
                    .reveal_field(req(
                        signer,
                        method,
                        RevealFieldRequest {
                            order_id: t.order_id.clone(),
                            field: t.reveal.clone(),
                            reason_code: "ndr-callback".into(),
                            reason_text: "buyer missed the delivery and asked for a call back"
                                .into(),
                        },
                    ))
                    .await?
                    .into_inner(),
            ),
            Method::ResolveContactHandle => Answer::Resolved(
                client
                    .resolve_contact_handle(req(
                        signer,
                        method,
                        ResolveContactHandleRequest {
                            contact_handle: t.handle.clone(),
                            purpose: t.purpose.clone(),
                        },
                    ))
                    .await?
                    .into_inner(),
            ),
        })
    }
}

/// Every audit record matching `q`, read through `node`'s gateway as an auditor.
pub async fn audit_query(
    node: &NodeProcess,
    pki: &Pki,
    q: mesh_proto::v1::AuditQueryRequest,
) -> Vec<mesh_proto::v1::AuditRecord> {
    let auditor = pki.client(Role::Auditor);
    let signer = mesh_node::security::proof::Signer::from_pem_file(&auditor.key).expect("signer");
    let mut client = mesh_proto::v1::audit_client::AuditClient::new(
        node.channel(&auditor).await.expect("connect"),
    );
    let mut stream = client
        .query(signer.signed(mesh_node::api::audit::QUERY, q))
        .await
        .expect("query")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.expect("stream") {
        out.push(r);
    }
    out
}
