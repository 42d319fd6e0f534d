//! `mesh-ctl up`: the embedded default. A local mesh of real `mesh-node` processes on loopback with
//! freshly issued certificates, written up in `DIR/mesh.json` once every node is ready.
//!
//! Layout of DIR (kept between runs so data survives a restart; certificates are reissued):
//! `ca/` (CA, key 0600), `clients/<role>.pem|.key` (one client per role), `nodes/<id>/` (node
//! certificate, key file, `node.toml`, `data/`), and `mesh.json` while the mesh is up.

use crate::Output;
use crate::pki::print;
use anyhow::{Context as _, bail};
use mesh_node::identity::Identity;
use mesh_node::layout::{Layout, Member};
use mesh_node::pki::{CertificateAuthority, LeafSpec};
use mesh_node::policy::Role;
use prost::Message as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// State directory (CA, certificates, node data, mesh.json).
    #[arg(long, default_value = "mesh-local")]
    dir: PathBuf,
    /// Node i's gateway listens on base-port + i - 1, its ops port on base-port + 1000 + i - 1 and
    /// its peer (QUIC, UDP) port on base-port + 2000 + i - 1.
    /// 0 picks free ports (see mesh.json for the result).
    #[arg(long, default_value_t = 7443)]
    base_port: u16,
    #[arg(long, default_value = "mesh.local")]
    trust_domain: String,
    /// The mesh-node binary (default: next to mesh-ctl, rebuilt first when run through cargo).
    #[arg(long, env = "DSM_MESH_NODE_BIN")]
    node_bin: Option<PathBuf>,
}

/// A free loopback port for TCP and UDP alike.
fn free_port() -> u16 {
    loop {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if std::net::UdpSocket::bind(("127.0.0.1", addr.port())).is_ok() {
            return addr.port();
        }
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct MeshFile {
    pub trust_domain: String,
    pub layout_version: u64,
    /// Name to verify node certificates against when dialling a gateway.
    pub server_name: String,
    pub ca_cert: PathBuf,
    pub nodes: Vec<NodeEntry>,
    pub clients: BTreeMap<String, ClientEntry>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct NodeEntry {
    pub id: String,
    pub gateway: String,
    pub ops: String,
    pub peer: String,
    pub partitions: usize,
    pub pid: u32,
    pub data_dir: PathBuf,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ClientEntry {
    pub identity: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, serde::Deserialize)]
struct Ready {
    gateway: String,
    ops: String,
    peer: String,
    pid: u32,
}

/// The mesh-node binary: explicit, else next to this binary. When run through `cargo run`, build it
/// first with the same profile so the quick start never runs a stale node.
fn node_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating mesh-ctl")?;
    let dir = exe.parent().context("mesh-ctl has no parent directory")?;
    let sibling = dir.join("mesh-node");
    if let (Ok(cargo), Ok(_)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR")) {
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "mesh-node", "--bin", "mesh-node"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("building mesh-node")?;
        anyhow::ensure!(status.success(), "building mesh-node failed");
    }
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "cannot find mesh-node next to {}; build it (cargo build -p mesh-node) or pass --node-bin",
        exe.display()
    )
}

fn abs(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

pub async fn run(args: UpArgs, output: Output) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes {}: a local mesh has 1 to 64 nodes", args.nodes);
    }
    let node_bin = node_binary(args.node_bin)?;
    let dir = abs(&args.dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join(mesh_node::pki::CA_CERT_FILE).exists() {
        CertificateAuthority::load(&ca_dir)?
    } else {
        let ca =
            CertificateAuthority::create(&args.trust_domain, Duration::from_secs(3650 * 86_400))?;
        ca.save(&ca_dir)?;
        ca
    };
    let td = ca.trust_domain().to_owned();
    let ca_cert = ca_dir.join(mesh_node::pki::CA_CERT_FILE);
    let day = Duration::from_secs(86_400);

    let mut clients = BTreeMap::new();
    for role in Role::ALL {
        let identity = Identity::Client {
            trust_domain: td.clone(),
            role,
            name: format!("local-{role}"),
        };
        let (cert, key) = ca
            .issue(&LeafSpec::new(identity.clone(), day))?
            .write(&dir.join("clients"), role.as_str())?;
        clients.insert(
            role.to_string(),
            ClientEntry {
                identity: identity.to_string(),
                cert,
                key,
            },
        );
    }

    // Addresses, then the layout over them: reused while the members and addresses stay the same,
    // the next version when only addresses changed, refused when the member set changed (moving
    // data between nodes is `mesh-ctl scale`, not `up`).
    let port = |i: usize, offset: u16| {
        if args.base_port == 0 {
            free_port()
        } else {
            args.base_port + offset + i as u16
        }
    };
    let members: Vec<Member> = (0..args.nodes)
        .map(|i| Member {
            node_id: format!("n{}", i + 1),
            gateway_addr: format!("127.0.0.1:{}", port(i, 0)),
            peer_addr: format!("127.0.0.1:{}", port(i, 2000)),
        })
        .collect();
    let ops_ports: Vec<u16> = (0..args.nodes).map(|i| port(i, 1000)).collect();
    let control = CertificateAuthority::load_control_key(&ca_dir)
        .context("loading the control key (make a fresh --dir if this CA predates control keys)")?;
    let layout_path = dir.join("layout.bin");
    let layout = match std::fs::read(&layout_path).ok() {
        None => Layout::initial(members.clone())?,
        Some(bytes) => {
            let signed = mesh_proto::v1::SignedLayout::decode(bytes.as_slice())
                .context("reading layout.bin")?;
            let old = Layout::verify(&signed, &control.public())?;
            let old_ids: Vec<&str> = old.members.iter().map(|m| m.node_id.as_str()).collect();
            let new_ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
            if old_ids != new_ids {
                bail!(
                    "{} holds a {}-node mesh; changing it to {} nodes moves data, which `up` does not do (use a fresh --dir)",
                    dir.display(),
                    old_ids.len(),
                    new_ids.len()
                );
            }
            if old.members == members {
                old
            } else {
                old.next(members.clone())?
            }
        }
    };
    std::fs::write(&layout_path, layout.sign(&control).encode_to_vec())?;
    let control_pub = ca_dir.join(mesh_node::pki::CONTROL_PUB_FILE);

    let mut children: Vec<(String, Child, PathBuf, PathBuf)> = Vec::new();
    for (i, member) in layout.members.iter().enumerate() {
        let id = member.node_id.clone();
        let node_dir = dir.join("nodes").join(&id);
        std::fs::create_dir_all(&node_dir)?;
        let (cert, key) = ca
            .issue(&LeafSpec::new(
                Identity::Node {
                    trust_domain: td.clone(),
                    node_id: id.clone(),
                },
                day,
            ))?
            .write(&node_dir, "node")?;
        let key_file = node_dir.join("node.kek");
        if !key_file.exists() {
            mesh_node::pki::write_secret(
                &key_file,
                mesh_node::crypto::generate_key_file().as_bytes(),
            )?;
        }
        let data_dir = node_dir.join("data");
        let config = format!(
            "node_id = {id:?}\ntrust_domain = {td:?}\ndata_dir = {data:?}\nkey_file = {kek:?}\n\
             gateway_listen = {gw:?}\nops_listen = \"127.0.0.1:{ops}\"\npeer_listen = {peer:?}\n\
             control_public_key = {control:?}\nlayout_file = {layout:?}\n\
             [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            data = data_dir.display().to_string(),
            kek = key_file.display().to_string(),
            gw = member.gateway_addr,
            ops = ops_ports[i],
            peer = member.peer_addr,
            control = control_pub.display().to_string(),
            layout = layout_path.display().to_string(),
            ca = ca_cert.display().to_string(),
            cert = cert.display().to_string(),
            key = key.display().to_string(),
        );
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config)?;
        let ready = node_dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(&node_bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", node_bin.display()))?;
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let prefix = id.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{prefix}] {line}");
                }
            });
        }
        children.push((id, child, ready, data_dir));
    }

    let loads = layout.loads();
    let mut nodes = Vec::new();
    for (id, child, ready, data_dir) in &mut children {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let r: Ready = loop {
            if let Ok(text) = std::fs::read_to_string(&*ready) {
                break serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", ready.display()))?;
            }
            if let Some(status) = child.try_wait()? {
                bail!("node {id} exited during startup ({status}); its log is above");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {id} was not ready within 30s; its log is above");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        nodes.push(NodeEntry {
            id: id.clone(),
            gateway: r.gateway,
            ops: r.ops,
            peer: r.peer,
            partitions: loads.get(id.as_str()).copied().unwrap_or(0),
            pid: r.pid,
            data_dir: data_dir.clone(),
        });
    }

    let mesh = MeshFile {
        trust_domain: td,
        layout_version: layout.version,
        server_name: "localhost".into(),
        ca_cert,
        nodes,
        clients,
    };
    let mesh_path = dir.join("mesh.json");
    let tmp = dir.join("mesh.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&mesh)?)?;
    std::fs::rename(&tmp, &mesh_path)?;
    print(output, &serde_json::to_value(&mesh)?, || {
        let mut s = format!(
            "mesh up: {} node(s), trust domain {}\n",
            mesh.nodes.len(),
            mesh.trust_domain
        );
        for n in &mesh.nodes {
            s += &format!(
                "  {:<4} gateway {:<21} ops {:<21} partitions {}\n",
                n.id, n.gateway, n.ops, n.partitions
            );
        }
        s += &format!(
            "  mesh file {}\n  press Ctrl-C to stop",
            mesh_path.display()
        );
        s
    })?;

    // Run until interrupted, or until a node dies on its own.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let died = async {
        loop {
            for (id, child, ..) in &mut children {
                if let Ok(Some(status)) = child.try_wait() {
                    return (id.clone(), status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        (id, status) = died => Err(anyhow::anyhow!("node {id} exited unexpectedly ({status})")),
    };
    eprintln!("stopping the mesh");
    let _ = std::fs::remove_file(&mesh_path);
    for (_, child, ..) in &mut children {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (id, child, ..) in &mut children {
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_err()
        {
            eprintln!("node {id} did not stop within 15s; killing it");
            let _ = child.kill().await;
        }
    }
    outcome
}
