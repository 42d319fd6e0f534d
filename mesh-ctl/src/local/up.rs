//! `mesh-ctl up`: the embedded default. A local mesh of real `mesh-node` processes on loopback with
//! freshly issued certificates, written up in `DIR/mesh.json` once every node is ready.
//!
//! Layout of DIR (kept between runs so data survives a restart; certificates are reissued):
//! `ca/` (CA, key 0600), `clients/<role>.pem|.key` (one client per role), `nodes/<id>/` (node
//! certificate, key file, `node.toml`, `data/`), and `mesh.json` while the mesh is up.

use crate::Output;
use crate::output::print;
use anyhow::{Context as _, bail};
use mesh_node::access::policy::Role;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, LeafSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Number of nodes of a new mesh (default 3). An existing directory restarts the members of
    /// its layout; change their number with `mesh-ctl scale`.
    #[arg(long)]
    nodes: Option<usize>,
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

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct MeshFile {
    pub trust_domain: String,
    /// The `--base-port` the mesh was started with (0: free ports), for nodes `scale` adds.
    #[serde(default)]
    pub base_port: u16,
    pub layout_version: u64,
    /// Name to verify node certificates against when dialling a gateway.
    pub server_name: String,
    pub ca_cert: PathBuf,
    pub nodes: Vec<NodeEntry>,
    pub clients: BTreeMap<String, ClientEntry>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeEntry {
    pub id: String,
    pub gateway: String,
    pub ops: String,
    pub peer: String,
    pub partitions: usize,
    pub pid: u32,
    pub data_dir: PathBuf,
    /// Set by `mesh-ctl scale` before it stops the node, so `up` knows the exit is expected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ClientEntry {
    pub identity: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, serde::Deserialize)]
pub struct Ready {
    pub gateway: String,
    pub ops: String,
    pub peer: String,
    pub pid: u32,
}

/// The mesh-node binary: explicit, else next to this binary. When run through `cargo run`, build it
/// first with the same profile so the quick start never runs a stale node.
pub fn node_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
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

/// The files of one local node under `DIR/nodes/<id>`.
pub struct NodeFiles {
    pub config: PathBuf,
    pub ready: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Writes node `member`'s certificate (reissued), key file (kept) and config under
/// `DIR/nodes/<id>`. Its layout file is `DIR/layout.bin`.
pub fn prepare_node(
    dir: &Path,
    ca: &CertificateAuthority,
    member: &Member,
    ops_port: u16,
) -> anyhow::Result<NodeFiles> {
    let id = &member.node_id;
    let td = ca.trust_domain().to_owned();
    let node_dir = dir.join("nodes").join(id);
    std::fs::create_dir_all(&node_dir)?;
    let issued = crate::pki::rotation::issue(
        &dir.join("ca"),
        ca,
        &LeafSpec::new(
            Identity::Node {
                trust_domain: td.clone(),
                node_id: id.clone(),
            },
            Duration::from_secs(86_400),
        ),
    )?;
    let (cert, key) = crate::pki::rotation::write_issued(&issued, &node_dir, "node")?;
    let key_file = node_dir.join("node.kek");
    if !key_file.exists() {
        mesh_node::security::pki::write_secret(
            &key_file,
            mesh_node::security::crypto::generate_key_file().as_bytes(),
        )?;
    }
    let ca_dir = dir.join("ca");
    let data_dir = node_dir.join("data");
    let crl = crate::pki::rotation::crl_path(&ca_dir);
    let config = format!(
        "node_id = {id:?}\ntrust_domain = {td:?}\ndata_dir = {data:?}\nkey_file = {kek:?}\n\
         gateway_listen = {gw:?}\nops_listen = \"127.0.0.1:{ops_port}\"\npeer_listen = {peer:?}\n\
         control_public_key = {control:?}\nlayout_file = {layout:?}\n\
         [tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\ncrl = {crl:?}\n",
        data = data_dir.display().to_string(),
        kek = key_file.display().to_string(),
        gw = member.gateway_addr,
        peer = member.peer_addr,
        control = ca_dir
            .join(mesh_node::security::pki::CONTROL_PUB_FILE)
            .display()
            .to_string(),
        layout = dir.join("layout.bin").display().to_string(),
        ca = crate::pki::rotation::trust_path(&ca_dir)
            .display()
            .to_string(),
        crl = crl.display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let config_path = node_dir.join("node.toml");
    std::fs::write(&config_path, config)?;
    let ready = node_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    Ok(NodeFiles {
        config: config_path,
        ready,
        data_dir,
        log: node_dir.join("node.log"),
    })
}

/// The node's `mesh-node run` command line.
pub fn node_command(node_bin: &Path, files: &NodeFiles) -> std::process::Command {
    let mut cmd = std::process::Command::new(node_bin);
    cmd.arg("run")
        .arg("--config")
        .arg(&files.config)
        .arg("--ready-file")
        .arg(&files.ready);
    cmd
}

/// Waits for a starting node's ready file; `exited` says whether the process died meanwhile.
pub async fn wait_ready(
    id: &str,
    files: &NodeFiles,
    mut exited: impl FnMut() -> Option<String>,
) -> anyhow::Result<Ready> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&files.ready) {
            return serde_json::from_str(&text)
                .with_context(|| format!("reading {}", files.ready.display()));
        }
        if let Some(status) = exited() {
            bail!("node {id} exited during startup ({status}); see its log");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {id} was not ready within 30s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Port `offset` of node number `i` (0-based) for a mesh started with `base_port`.
pub fn port(base_port: u16, i: usize, offset: u16) -> u16 {
    if base_port == 0 {
        mesh_node::ops::port::free_loopback_port()
    } else {
        base_port + offset + i as u16
    }
}

/// A node process `up` started, with the files it runs from.
struct LocalNode {
    id: String,
    /// Killed on drop, so an `up` that fails half-way leaves no node behind.
    child: Child,
    /// Its pid, which `child` forgets once it has exited.
    pid: u32,
    files: NodeFiles,
}

/// What `up` has on disk before any node starts.
struct Prepared {
    /// `--dir`, absolute: node configs name files under it and nodes run from anywhere.
    dir: PathBuf,
    ca: CertificateAuthority,
    /// The trust bundle clients are told to use.
    ca_cert: PathBuf,
    clients: BTreeMap<String, ClientEntry>,
    /// The signed layout the nodes start with, saved as `DIR/layout.bin`.
    layout: Layout,
}

pub async fn run(args: UpArgs, output: Output) -> anyhow::Result<()> {
    let node_bin = node_binary(args.node_bin)?;
    let Prepared {
        dir,
        ca,
        ca_cert,
        clients,
        layout,
    } = prepare(&args.dir, &args.trust_domain, args.nodes, args.base_port)?;
    let mut nodes = start_nodes(&dir, &ca, &layout, &node_bin, args.base_port)?;
    let entries = wait_all_ready(&layout, &mut nodes).await?;
    let mesh = MeshFile {
        trust_domain: ca.trust_domain().to_owned(),
        base_port: args.base_port,
        layout_version: layout.version,
        server_name: "localhost".into(),
        ca_cert,
        nodes: entries,
        clients,
    };
    publish(&dir, &mesh, output)?;

    // Run until interrupted, or until a node dies on its own.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = supervise(&dir, &mut nodes, term).await;
    shut_down(&dir, &mut nodes).await;
    outcome
}

/// Sets up DIR: the CA (created once, then kept), freshly issued client certificates, and the
/// signed layout the nodes will run.
fn prepare(
    dir: &Path,
    trust_domain: &str,
    nodes: Option<usize>,
    base_port: u16,
) -> anyhow::Result<Prepared> {
    let dir = abs(dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join(mesh_node::security::pki::CA_CERT_FILE).exists() {
        CertificateAuthority::load(&ca_dir)?
    } else {
        let ca = CertificateAuthority::create(trust_domain, Duration::from_secs(3650 * 86_400))?;
        ca.save(&ca_dir)?;
        ca
    };
    crate::pki::rotation::ensure_trust_files(&ca_dir)?;
    // Clients trust the bundle: both CAs while a CA rotation is under way.
    let ca_cert = crate::pki::rotation::trust_path(&ca_dir);
    let clients = issue_clients(&dir, &ca)?;
    let layout = plan_layout(&dir, nodes, base_port)?;
    Ok(Prepared {
        dir,
        ca,
        ca_cert,
        clients,
        layout,
    })
}

/// One client certificate per role under `DIR/clients`, valid for a day.
fn issue_clients(
    dir: &Path,
    ca: &CertificateAuthority,
) -> anyhow::Result<BTreeMap<String, ClientEntry>> {
    let ca_dir = dir.join("ca");
    let td = ca.trust_domain().to_owned();
    let day = Duration::from_secs(86_400);
    let mut clients = BTreeMap::new();
    for role in Role::ALL {
        let identity = Identity::Client {
            trust_domain: td.clone(),
            role,
            name: format!("local-{role}"),
        };
        let issued =
            crate::pki::rotation::issue(&ca_dir, ca, &LeafSpec::new(identity.clone(), day))?;
        let (cert, key) =
            crate::pki::rotation::write_issued(&issued, &dir.join("clients"), role.as_str())?;
        clients.insert(
            role.to_string(),
            ClientEntry {
                identity: identity.to_string(),
                cert,
                key,
            },
        );
    }
    Ok(clients)
}

/// The node number (0-based) a local node id `n<i>` stands for; it picks the node's ports.
fn node_number(id: &str) -> usize {
    id.trim_start_matches('n')
        .parse::<usize>()
        .map_or(0, |n| n.saturating_sub(1))
}

/// The layout the nodes start with, signed and saved under DIR when its version is new.
fn plan_layout(dir: &Path, nodes: Option<usize>, base_port: u16) -> anyhow::Result<Layout> {
    // Members: those of the stored layout (with the same ids) or n1..nN for a new mesh. Addresses
    // are reassigned; when only they changed, the layout moves to the next version.
    let control_dir = crate::control::MeshDir::open(dir)?;
    let existing = control_dir.layout().ok().map(|(l, _)| l);
    let ids: Vec<String> = match (&existing, nodes) {
        (Some(old), Some(n)) if n != old.members.len() => bail!(
            "{} holds a {}-node mesh; change its size with `mesh-ctl scale --nodes {n} --dir {}` while it runs (or use a fresh --dir)",
            dir.display(),
            old.members.len(),
            dir.display()
        ),
        (Some(old), _) => old.members.iter().map(|m| m.node_id.clone()).collect(),
        (None, n) => {
            let n = n.unwrap_or(3);
            if n == 0 || n > 64 {
                bail!("--nodes {n}: a local mesh has 1 to 64 nodes");
            }
            (1..=n).map(|i| format!("n{i}")).collect()
        }
    };
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            node_id: id.clone(),
            gateway_addr: format!("127.0.0.1:{}", port(base_port, node_number(id), 0)),
            peer_addr: format!("127.0.0.1:{}", port(base_port, node_number(id), 2000)),
        })
        .collect();
    let control = control_dir
        .control_key()
        .context("loading the control key (make a fresh --dir if this CA predates control keys)")?;
    let layout = match existing {
        None => Layout::initial(members.clone())?,
        Some(old) if old.members == members => old,
        Some(old) => old.next(members.clone())?,
    };
    if control_dir
        .layout()
        .ok()
        .is_none_or(|(l, _)| l.version != layout.version)
    {
        control_dir.save_layout(&layout.sign(&control))?;
    }
    Ok(layout)
}

/// Starts one `mesh-node` per member of `layout`, its output relayed to ours.
fn start_nodes(
    dir: &Path,
    ca: &CertificateAuthority,
    layout: &Layout,
    node_bin: &Path,
    base_port: u16,
) -> anyhow::Result<Vec<LocalNode>> {
    let mut nodes = Vec::new();
    for member in &layout.members {
        let id = member.node_id.clone();
        let files = prepare_node(dir, ca, member, port(base_port, node_number(&id), 1000))?;
        let mut child = Command::from(node_command(node_bin, &files))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", node_bin.display()))?;
        relay_output(&id, &mut child);
        let pid = child.id().context("a node exited as it started")?;
        nodes.push(LocalNode {
            id,
            child,
            pid,
            files,
        });
    }
    Ok(nodes)
}

/// Copies a node's stdout and stderr to our stderr, each line prefixed with the node id, so the
/// nodes' logs interleave readably in one terminal.
fn relay_output(id: &str, child: &mut Child) {
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
        let prefix = id.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{prefix}] {line}");
            }
        });
    }
}

/// Waits for every node's ready file, in layout order; the mesh.json entries they make.
async fn wait_all_ready(
    layout: &Layout,
    nodes: &mut [LocalNode],
) -> anyhow::Result<Vec<NodeEntry>> {
    let loads = layout.loads();
    let mut entries = Vec::new();
    for node in nodes.iter_mut() {
        let r = wait_ready(&node.id, &node.files, || {
            node.child.try_wait().ok().flatten().map(|s| s.to_string())
        })
        .await?;
        entries.push(NodeEntry {
            id: node.id.clone(),
            gateway: r.gateway,
            ops: r.ops,
            peer: r.peer,
            partitions: loads.get(node.id.as_str()).copied().unwrap_or(0),
            pid: r.pid,
            data_dir: node.files.data_dir.clone(),
            leaving: false,
        });
    }
    Ok(entries)
}

/// Writes `DIR/mesh.json`, which says the mesh is up, and tells the operator where it is.
fn publish(dir: &Path, mesh: &MeshFile, output: Output) -> anyhow::Result<()> {
    let mesh_path = dir.join("mesh.json");
    mesh.save(dir)?;
    print(output, &serde_json::to_value(mesh)?, || {
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
    })
}

/// Returns on Ctrl-C or SIGTERM (Ok), or when a node dies on its own (the error `up` exits with).
async fn supervise(
    dir: &Path,
    nodes: &mut [LocalNode],
    mut term: tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    // A process of `up`'s is expected to exit once `mesh-ctl scale` retires it: mesh.json then
    // marks it leaving, drops it, or lists another process under its id (scale started it again).
    let died = async {
        loop {
            let listed = MeshFile::load(dir).ok();
            for node in nodes.iter_mut() {
                if let Ok(Some(status)) = node.child.try_wait() {
                    let pid = node.pid;
                    let retired = listed.as_ref().is_some_and(|m| {
                        !m.nodes
                            .iter()
                            .any(|n| n.id == node.id && n.pid == pid && !n.leaving)
                    });
                    if !retired {
                        return (node.id.clone(), status);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        (id, status) = died => Err(anyhow::anyhow!("node {id} exited unexpectedly ({status})")),
    }
}

/// Stops every node of the mesh (SIGTERM, then SIGKILL after 15 s) and removes mesh.json.
async fn shut_down(dir: &Path, nodes: &mut [LocalNode]) {
    eprintln!("stopping the mesh");
    // Nodes `mesh-ctl scale` started are not our children: stop them by pid.
    let ours: Vec<u32> = nodes.iter().filter_map(|n| n.child.id()).collect();
    let extra: Vec<u32> = MeshFile::load(dir)
        .map(|m| {
            m.nodes
                .iter()
                .map(|n| n.pid)
                .filter(|p| !ours.contains(p))
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_file(dir.join("mesh.json"));
    for pid in ours.iter().chain(&extra) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for pid in &extra {
        wait_gone(*pid, Duration::from_secs(15)).await;
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(15), node.child.wait())
            .await
            .is_err()
        {
            eprintln!("node {} did not stop within 15s; killing it", node.id);
            let _ = node.child.kill().await;
        }
    }
}

/// Waits until process `pid` has exited (SIGKILL after `grace`).
pub async fn wait_gone(pid: u32, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let deadline = tokio::time::Instant::now() + grace;
    while nix::sys::signal::kill(pid, None).is_ok() {
        // Reap it if it is our child (a zombie still answers signal 0).
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if tokio::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl MeshFile {
    pub fn load(dir: &Path) -> anyhow::Result<MeshFile> {
        let path = dir.join("mesh.json");
        serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| {
                format!("reading {} (is `mesh-ctl up` running?)", path.display())
            })?,
        )
        .with_context(|| format!("reading {}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("mesh.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join("mesh.json"))?;
        Ok(())
    }
}
