//! `mesh-ctl ca init`, `mesh-ctl cert issue (node|client|admin)`, `mesh-ctl key init`.

pub mod rotation;

use crate::Output;
use crate::output::print;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use mesh_node::access::policy::Role;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::{CertificateAuthority, IssuedCert, LeafSpec};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a mesh CA (`ca.pem`, `ca.key` with mode 0600) in DIR. Keep ca.key off the nodes.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "mesh.local")]
        trust_domain: String,
        #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// Rotate the CA of a mesh with an overlap: trust a new CA beside the old one everywhere;
    /// then `cert rotate`; then `ca rotate --finish` stops trusting the old one. No restarts.
    Rotate(crate::pki::rotation::CaRotateArgs),
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Issue a certificate.
    Issue {
        #[command(subcommand)]
        kind: IssueKind,
    },
    /// New certificates and keys for every node and client of a mesh directory; each node
    /// reloads them without a restart and must report the new serial.
    Rotate(crate::pki::rotation::RotateArgs),
    /// Revoke a node's or a client's certificate: a CRL signed by the CA, pushed to every node,
    /// enforced on new handshakes and on the next request of open connections.
    Revoke(crate::pki::rotation::RevokeArgs),
}

#[derive(clap::Args)]
pub struct IssueCommon {
    /// The CA directory (from `mesh-ctl ca init`).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Where to write `<name>.pem` and `<name>.key` (0600).
    #[arg(long)]
    out: PathBuf,
    /// Lifetime of the certificate. Short by design: rotate rather than extend.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Subcommand)]
pub enum IssueKind {
    /// A node certificate (server and client auth): spiffe://<td>/node/<id>.
    Node {
        #[arg(long)]
        id: String,
        /// DNS names the node answers to (default: localhost and the node id; the node id is
        /// always added, since peers verify a node by it).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the node answers on (default: 127.0.0.1).
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A client certificate for a consuming system: spiffe://<td>/client/<role>/<name>.
    Client {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// An operator certificate: spiffe://<td>/admin/<name>.
    Admin {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        common: IssueCommon,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Write a fresh node key file (mode 0600). Keep it out of the data directory and backups.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file (its data becomes unreadable).
        #[arg(long)]
        force: bool,
    },
}

pub fn ca(cmd: CaCommand, output: Output) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Rotate(_) => unreachable!("dispatched to rotation::rotate_ca by main"),
        CaCommand::Init {
            dir,
            trust_domain,
            validity,
        } => {
            let ca = CertificateAuthority::create(&trust_domain, validity)?;
            ca.save(&dir)?;
            let cert = dir.join(mesh_node::security::pki::CA_CERT_FILE);
            print(
                output,
                &serde_json::json!({ "trust_domain": trust_domain, "ca_cert": cert }),
                || format!("created CA for {trust_domain}: {}", cert.display()),
            )
        }
    }
}

/// Issues one leaf certificate from the CA in `ca_dir`.
pub fn issue(
    ca_dir: &Path,
    spec: &LeafSpec,
    out: &Path,
    stem: &str,
) -> anyhow::Result<(IssuedCert, PathBuf, PathBuf)> {
    let ca = CertificateAuthority::load(ca_dir)
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    let issued = ca.issue(spec)?;
    let (cert, key) = issued.write(out, stem)?;
    Ok((issued, cert, key))
}

fn trust_domain_of(ca_dir: &Path) -> anyhow::Result<String> {
    Ok(CertificateAuthority::load(ca_dir)
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?
        .trust_domain()
        .to_owned())
}

pub fn cert(cmd: CertCommand, output: Output) -> anyhow::Result<()> {
    let CertCommand::Issue { kind } = cmd else {
        unreachable!("rotate and revoke are dispatched to rotation by main");
    };
    let (spec, common, stem) = match kind {
        IssueKind::Node {
            id,
            dns,
            ip,
            common,
        } => {
            let td = trust_domain_of(&common.ca_dir)?;
            let mut spec = LeafSpec::new(
                Identity::Node {
                    trust_domain: td,
                    node_id: id.clone(),
                },
                common.ttl,
            );
            if !dns.is_empty() {
                // Peers and mesh-ctl verify a node by its id as the TLS server name, so the id is
                // always one of its names, whatever else it answers to.
                let mut names = dns;
                if !names.contains(&id) {
                    names.push(id.clone());
                }
                spec.dns_names = names;
            }
            if !ip.is_empty() {
                spec.ip_addresses = ip;
            }
            (spec, common, id)
        }
        IssueKind::Client { role, name, common } => {
            let td = trust_domain_of(&common.ca_dir)?;
            (
                LeafSpec::new(
                    Identity::Client {
                        trust_domain: td,
                        role,
                        name: name.clone(),
                    },
                    common.ttl,
                ),
                common,
                name,
            )
        }
        IssueKind::Admin { name, common } => {
            let td = trust_domain_of(&common.ca_dir)?;
            (
                LeafSpec::new(
                    Identity::Admin {
                        trust_domain: td,
                        name: name.clone(),
                    },
                    common.ttl,
                ),
                common,
                name,
            )
        }
    };
    let id = spec.identity.to_string();
    if !mesh_node::security::identity::is_valid_name(&stem) {
        bail!("invalid name `{stem}`: use 1-63 lowercase letters, digits, `-`, `_` or `.`");
    }
    let (issued, cert, key) = issue(&common.ca_dir, &spec, &common.out, &stem)?;
    print(
        output,
        &serde_json::json!({ "identity": id, "serial": issued.serial, "not_after": issued.not_after.to_string(), "cert": cert, "key": key }),
        || {
            format!(
                "issued {id}\n  cert  {}\n  key   {}\n  until {}",
                cert.display(),
                key.display(),
                issued.not_after
            )
        },
    )
}

pub fn key(cmd: KeyCommand, output: Output) -> anyhow::Result<()> {
    let KeyCommand::Init { out, force } = cmd;
    if out.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it (data sealed under the old key becomes unreadable)",
            out.display()
        );
    }
    mesh_node::security::pki::write_secret(
        &out,
        mesh_node::security::crypto::generate_key_file().as_bytes(),
    )?;
    print(output, &serde_json::json!({ "key_file": out }), || {
        format!("wrote node key {}", out.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_with_explicit_dns_names_still_names_the_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        ca(
            CaCommand::Init {
                dir: ca_dir.clone(),
                trust_domain: "mesh.test".into(),
                validity: Duration::from_secs(3600),
            },
            Output::Json,
        )
        .expect("ca init");
        cert(
            CertCommand::Issue {
                kind: IssueKind::Node {
                    id: "n7".into(),
                    dns: vec!["n7.mesh.svc".into()],
                    ip: Vec::new(),
                    common: IssueCommon {
                        ca_dir,
                        out: dir.path().to_owned(),
                        ttl: Duration::from_secs(3600),
                    },
                },
            },
            Output::Json,
        )
        .expect("issue");
        let der = mesh_node::security::tls::load_certs(&dir.path().join("n7.pem")).expect("cert");
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(&der[0]).expect("parse");
        let names: Vec<String> = c
            .subject_alternative_name()
            .expect("san")
            .expect("san")
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["n7.mesh.svc", "n7"]);
    }
}
