//! Node configuration: a TOML file plus `DSM_*` environment overrides, validated completely before
//! anything is bound or opened. Every problem is reported at once, each naming its key.
//!
//! ```toml
//! node_id = "n1"
//! trust_domain = "mesh.local"
//! data_dir = "/var/lib/dsm"
//! key_file = "/etc/dsm/node.kek"       # the key-encryption key (`mesh-ctl key init`)
//! gateway_listen = "0.0.0.0:7443"       # mTLS gRPC
//! ops_listen = "0.0.0.0:9090"           # plaintext /healthz, /readyz, /metrics
//! peer_listen = "0.0.0.0:7444"          # mutually authenticated QUIC between nodes (UDP)
//! control_public_key = "/etc/dsm/control.pub"  # verifies layouts (`mesh-ctl ca init` makes it)
//! layout_file = "/etc/dsm/layout.bin"   # initial signed layout; a newer stored one wins
//! [tls]
//! ca = "/etc/dsm/ca.pem"               # trust bundle
//! cert = "/etc/dsm/node.pem"
//! key = "/etc/dsm/node.key"
//! crl = "/etc/dsm/crl.pem"             # optional revocation lists (`mesh-ctl cert revoke`)
//! reload_interval = "2s"               # how often the four TLS files are re-read
//! [limits]
//! max_concurrent_requests = 512
//! request_timeout = "10s"
//! handshake_timeout = "5s"
//! drain_timeout = "10s"
//! [log]
//! format = "text"                       # or "json"
//! level = "info"
//! [audit]
//! retention = "1095d"                   # keep the trail this long (longer than any order data)
//! segment_bytes = 67108864              # rotate segments past this size
//! [access]
//! contact_grace = "72h"                 # courier/label views and contact handles end this long after delivery
//! reveal_limit = 20                     # RevealField calls per principal per reveal_window
//! reveal_window = "1h"
//! require_purpose = ["comms", "support"]  # roles that must state a purpose on every read
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4317"  # export spans over OTLP/gRPC; unset: no export
//! service_name = "mesh-node"            # the service.name resource attribute
//! sample_ratio = 1.0                    # share of traces kept (0.0 to 1.0)
//! ```
//!
//! Each key has an environment override: `DSM_NODE_ID`, `DSM_TRUST_DOMAIN`, `DSM_DATA_DIR`,
//! `DSM_KEY_FILE`, `DSM_GATEWAY_LISTEN`, `DSM_OPS_LISTEN`, `DSM_PEER_LISTEN`, `DSM_CONTROL_PUBLIC_KEY`,
//! `DSM_LAYOUT_FILE`, `DSM_TLS_CA`, `DSM_TLS_CERT`,
//! `DSM_TLS_KEY`, `DSM_TLS_CRL`, `DSM_TLS_RELOAD_INTERVAL`, `DSM_MAX_CONCURRENT_REQUESTS`, `DSM_REQUEST_TIMEOUT`, `DSM_HANDSHAKE_TIMEOUT`,
//! `DSM_DRAIN_TIMEOUT`, `DSM_LOG_FORMAT`, `DSM_LOG_LEVEL`, `DSM_AUDIT_RETENTION`,
//! `DSM_AUDIT_SEGMENT_BYTES`, `DSM_ACCESS_CONTACT_GRACE`, `DSM_ACCESS_REVEAL_LIMIT`,
//! `DSM_ACCESS_REVEAL_WINDOW`, `DSM_ACCESS_REQUIRE_PURPOSE` (comma-separated roles; empty for none),
//! `DSM_OTLP_ENDPOINT`, `DSM_TELEMETRY_SERVICE_NAME`, `DSM_TELEMETRY_SAMPLE_RATIO`.

mod collect;
mod file;
mod sections;

use collect::Collect;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where configuration values come from besides the file. Tests inject a map.
pub trait Source {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct Env;

impl Source for Env {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A complete, validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub trust_domain: String,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub gateway_listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    /// Verifies layouts; without it the node runs standalone (every partition local).
    pub control_public_key: Option<crate::security::control_key::ControlPublicKey>,
    /// The initial layout, verified.
    pub layout: Option<crate::cluster::layout::Layout>,
    /// The initial layout's signed bytes, persisted on first start.
    pub layout_signed: Option<mesh_proto::v1::SignedLayout>,
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Operator-distributed CRLs; may be absent until the first revocation.
    pub tls_crl: Option<PathBuf>,
    /// How often the TLS files are re-read (rotation and revocation without a restart).
    pub tls_reload_interval: Duration,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    /// How long the audit trail is kept and how it rotates.
    pub audit_retention: crate::audit::log::Retention,
    /// Access windows, the reveal limit and purpose requirements.
    pub access: crate::access::windows::AccessRules,
    /// Upper bound on the partition data this node pulls per second during a rebalance.
    pub rebalance_rate: u64,
    /// Trace export (OTLP); off unless an endpoint is configured.
    pub telemetry: crate::telemetry::trace::TelemetryConfig,
    pub log_level: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the file (if any), applies environment overrides and validates everything, including
    /// that the TLS files parse, the certificate names this node in this trust domain, and the
    /// key file is a node key. Each part of the configuration is read by its own function in
    /// `sections`; every problem is reported at once.
    pub fn load(file: Option<&Path>, env: &dyn Source) -> Result<Config, ConfigErrors> {
        let mut fc = file::read(file)?;
        let mut c = Collect {
            env,
            errors: Vec::new(),
        };
        let place = sections::place(&mut c, &mut fc);
        let listen = sections::listen(&mut c, &mut fc);
        let layouts = sections::layouts(&mut c, &mut fc);
        let tls = sections::tls(&mut c, fc.tls, &place);
        let limits = sections::limits(&mut c, fc.limits);
        let (log_format, log_level) = sections::log(&mut c, fc.log);
        let audit_retention = sections::audit(&mut c, fc.audit);
        let access = sections::access_rules(&mut c, fc.access);
        let rebalance_rate = sections::rebalance_rate(&mut c, fc.rebalance);
        let telemetry = sections::telemetry_settings(&mut c, fc.telemetry);
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let (
            Some(node_id),
            Some(trust_domain),
            Some(data_dir),
            Some(key_file),
            Some(tls_ca),
            Some(tls_cert),
            Some(tls_key),
        ) = (
            place.node_id,
            place.trust_domain,
            place.data_dir,
            place.key_file,
            tls.ca,
            tls.cert,
            tls.key,
        )
        else {
            return Err(ConfigErrors(vec!["incomplete configuration".into()]));
        };
        Ok(Config {
            node_id,
            trust_domain,
            data_dir,
            key_file,
            gateway_listen: listen.gateway,
            ops_listen: listen.ops,
            peer_listen: listen.peer,
            control_public_key: layouts.control_public_key,
            layout: layouts.layout,
            layout_signed: layouts.layout_signed,
            tls_ca,
            tls_cert,
            tls_key,
            tls_crl: tls.crl,
            tls_reload_interval: tls.reload_interval,
            max_concurrent_requests: limits.max_concurrent_requests,
            request_timeout: limits.request_timeout,
            handshake_timeout: limits.handshake_timeout,
            drain_timeout: limits.drain_timeout,
            log_format,
            log_level,
            audit_retention,
            access,
            rebalance_rate,
            telemetry,
        })
    }
}

#[cfg(test)]
mod tests;
