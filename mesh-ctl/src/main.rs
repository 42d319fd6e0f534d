//! `mesh-ctl`: the control binary of Dark Store Mesh.
//!
//! Noun-verb subcommands; data on stdout (`-o table|json`), logs and progress on stderr; exit codes:
//! 0 success, 1 the operation ran and found a problem, 2 usage or input error.
//!
//! Modules by subject (folders), then the commands each serves:
//!
//! | module | commands |
//! |---|---|
//! | `pki` | `ca init`, `cert issue node|client|admin`, `key init` |
//! | `pki::rotation` | `cert rotate`, `cert revoke`, `ca rotate [--finish]`: trust bundle, CRLs, pushes |
//! | `local::up` | `up`: a local mesh of real node processes |
//! | `local::status` | `status`: members, partitions, layout and health |
//! | `local::check` | `check`: certificates, reachability, layout agreement, audit chains |
//! | `layout` | `layout show|stage|apply|revert`: staged, signed layout changes |
//! | `layout::rebalance` | `rebalance status`: progress of a layout change, and the wait |
//! | `layout::scale` | `scale --nodes N`: stage + apply + wait, starting/stopping local nodes |
//! | `k8s` | `k8s init|secrets|layout|kek|ca-rotate`: the manifests the Helm chart mounts |
//! | `audit` | `audit query|watch|verify` |
//! | `audit::access` | `access show`: the role table as nodes enforce it |
//! | `control` | the mesh directory shared by all: CA, control key, signed layouts, admin calls |
//! | `output` | what goes to stdout (`-o table|json`) |

mod audit;
mod control;
mod k8s;
mod layout;
mod local;
mod output;
mod pki;

use audit::access;
use layout::{rebalance, scale};
use local::{check, status, up};
use pki::rotation;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mesh-ctl",
    version,
    about = "Control Dark Store Mesh: PKI, local meshes, and more"
)]
struct Cli {
    /// Output format of the data printed on stdout.
    #[arg(short, long, value_enum, global = true, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The mesh certificate authority.
    Ca {
        #[command(subcommand)]
        command: pki::CaCommand,
    },
    /// Leaf certificates for nodes, clients and admins.
    Cert {
        #[command(subcommand)]
        command: pki::CertCommand,
    },
    /// Node key-encryption keys.
    Key {
        #[command(subcommand)]
        command: pki::KeyCommand,
    },
    /// Start a local mesh on loopback with fresh certificates, and run until interrupted.
    Up(up::UpArgs),
    /// Kubernetes: set a mesh directory up for a Helm release of charts/mesh and print the
    /// Secret and ConfigMap manifests the chart mounts (CA bundle and CRLs, node certificates,
    /// key-encryption keys, the signed layout).
    K8s {
        #[command(subcommand)]
        command: k8s::K8sCommand,
    },
    /// The audit trail: query it mesh-wide, or verify every node's chain.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Who may see what: the role table exactly as nodes enforce it.
    Access {
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// Layouts: show the current one, stage membership changes, apply them, or discard them.
    Layout {
        #[command(subcommand)]
        command: layout::LayoutCommand,
    },
    /// Progress of the current layout change (partitions received, copies shredded).
    Rebalance {
        #[command(subcommand)]
        command: rebalance::RebalanceCommand,
    },
    /// Grow or shrink a local mesh to N nodes: stage, apply, wait for the rebalance, start and
    /// stop node processes.
    Scale(scale::ScaleArgs),
    /// Members, partition counts, layout agreement and health of a local mesh (exit 1 on a problem).
    Status(status::StatusArgs),
    /// A checklist: certificates valid and not near expiry, every member reachable, layout
    /// agreed, audit chains verify (exit 1 if anything failed).
    Check(check::CheckArgs),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_CTL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Ok(false): the command ran and found a problem (exit 1).
    let result = match cli.command {
        Command::Ca {
            command: pki::CaCommand::Rotate(args),
        } => rotation::rotate_ca(args, cli.output).await,
        Command::Ca { command } => pki::ca(command, cli.output).map(|()| true),
        Command::Cert {
            command: pki::CertCommand::Rotate(args),
        } => rotation::rotate(args, cli.output).await,
        Command::Cert {
            command: pki::CertCommand::Revoke(args),
        } => rotation::revoke(args, cli.output).await,
        Command::Cert { command } => pki::cert(command, cli.output).map(|()| true),
        Command::Key { command } => pki::key(command, cli.output).map(|()| true),
        Command::Up(args) => up::run(args, cli.output).await.map(|()| true),
        Command::K8s { command } => k8s::run(command, cli.output).await,
        Command::Status(args) => status::run(args, cli.output).await,
        Command::Check(args) => check::run(args, cli.output).await,
        Command::Layout { command } => layout::run(command, cli.output).await,
        Command::Rebalance { command } => rebalance::run(command, cli.output).await,
        Command::Scale(args) => scale::run(args, cli.output).await,
        Command::Audit { command } => audit::run(command, cli.output).await,
        Command::Access { command } => access::run(command, cli.output).map(|()| true),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "mesh-ctl",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mesh-ctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
