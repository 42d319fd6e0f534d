//! One real `mesh-node` process: its config and files in a temp dir, start (waiting for its
//! ready file), `kill -9`, restart on the same data, graceful stop, offline `inspect`, and clients
//! of its gateway and ops port. If a test panics, the node's log tail is printed.

use crate::{Credentials, Pki, mesh_node_bin};
use anyhow::{Context as _, bail};
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

impl NodeOptions {
    /// The defaults, with extra environment `env` for the process (settings such as
    /// `DSM_ACCESS_REVEAL_LIMIT`, or a fault point).
    pub fn with_env(env: &[(&str, &str)]) -> NodeOptions {
        NodeOptions {
            env: owned_env(env),
            ..NodeOptions::default()
        }
    }
}

/// `env` as the owned pairs a process keeps.
pub(crate) fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A free loopback port for TCP and UDP alike (bound then released: a caller that binds it later
/// retries on "address in use"). The node library's, which `mesh-ctl up` uses too.
pub fn free_port() -> u16 {
    mesh_node::ops::port::free_loopback_port()
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

    /// As [`NodeProcess::start`], with extra environment for the process (see
    /// [`NodeOptions::with_env`]).
    pub fn start_with_env(pki: &Pki, id: &str, env: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::start_with(pki, id, &NodeOptions::with_env(env))
    }

    /// As [`NodeProcess::start_with`], returning why the node did not start.
    pub fn try_start_with(pki: &Pki, id: &str, opts: &NodeOptions) -> anyhow::Result<NodeProcess> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let credentials = pki.node(id);
        let key_file = dir.join("node.kek");
        mesh_node::security::pki::write_secret(
            &key_file,
            mesh_node::security::crypto::generate_key_file().as_bytes(),
        )
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
