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

use crate::security::identity::{Identity, is_valid_name, is_valid_trust_domain};
use serde::Deserialize;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    trust_domain: Option<String>,
    data_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    gateway_listen: Option<String>,
    ops_listen: Option<String>,
    peer_listen: Option<String>,
    control_public_key: Option<PathBuf>,
    layout_file: Option<PathBuf>,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    audit: FileAudit,
    #[serde(default)]
    access: FileAccess,
    #[serde(default)]
    rebalance: FileRebalance,
    #[serde(default)]
    telemetry: FileTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRebalance {
    rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccess {
    contact_grace: Option<String>,
    reveal_limit: Option<u64>,
    reveal_window: Option<String>,
    require_purpose: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    retention: Option<String>,
    segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
    reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_concurrent_requests: Option<u64>,
    request_timeout: Option<String>,
    handshake_timeout: Option<String>,
    drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<String>,
    level: Option<String>,
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

struct Collect<'a> {
    env: &'a dyn Source,
    errors: Vec<String>,
}

impl Collect<'_> {
    /// The environment override if set, else the file value.
    fn pick(&self, env_key: &str, file: Option<String>) -> Option<String> {
        self.env.var(env_key).or(file)
    }

    fn required(&mut self, key: &str, env_key: &str, file: Option<String>) -> Option<String> {
        let v = self.pick(env_key, file).filter(|v| !v.is_empty());
        if v.is_none() {
            self.errors.push(format!(
                "{key}: required (set it in the file or with {env_key})"
            ));
        }
        v
    }

    fn addr(
        &mut self,
        key: &str,
        env_key: &str,
        file: Option<String>,
        default: &str,
    ) -> SocketAddr {
        let raw = self
            .pick(env_key, file)
            .unwrap_or_else(|| default.to_owned());
        raw.parse().unwrap_or_else(|_| {
            self.errors.push(format!(
                "{key}: `{raw}` is not an address like 127.0.0.1:7443"
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn duration(
        &mut self,
        key: &str,
        env_key: &str,
        file: Option<String>,
        default: Duration,
    ) -> Duration {
        match self.pick(env_key, file) {
            None => default,
            Some(raw) => {
                match humantime::parse_duration(&raw) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
                    _ => {
                        self.errors.push(format!("{key}: `{raw}` is not a duration between 1ms and 1h (for example `10s`)"));
                        default
                    }
                }
            }
        }
    }

    fn readable(&mut self, key: &str, path: &Option<PathBuf>) {
        if let Some(p) = path
            && let Err(e) = std::fs::metadata(p)
        {
            self.errors
                .push(format!("{key}: cannot read {}: {e}", p.display()));
        }
    }
}

impl Config {
    /// Loads the file (if any), applies environment overrides and validates everything, including
    /// that the TLS files parse, the certificate names this node in this trust domain, and the
    /// key file is a node key.
    pub fn load(file: Option<&Path>, env: &dyn Source) -> Result<Config, ConfigErrors> {
        let mut c = Collect {
            env,
            errors: Vec::new(),
        };
        let fc: FileConfig = match file {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    return Err(ConfigErrors(vec![format!(
                        "cannot read config file {}: {e}",
                        path.display()
                    )]));
                }
                Ok(text) => match toml::from_str(&text) {
                    Ok(fc) => fc,
                    Err(e) => {
                        return Err(ConfigErrors(vec![format!(
                            "config file {}: {}",
                            path.display(),
                            e.message()
                        )]));
                    }
                },
            },
        };
        let path_of = |c: &Collect<'_>, env_key: &str, v: Option<PathBuf>| {
            c.pick(env_key, v.map(|p| p.display().to_string()))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };

        let node_id = c.required("node_id", "DSM_NODE_ID", fc.node_id);
        if let Some(id) = &node_id
            && !is_valid_name(id)
        {
            c.errors.push(format!(
                "node_id: `{id}` must be 1-63 lowercase letters, digits, `-`, `_` or `.`"
            ));
        }
        let trust_domain = c.required("trust_domain", "DSM_TRUST_DOMAIN", fc.trust_domain);
        if let Some(td) = &trust_domain
            && !is_valid_trust_domain(td)
        {
            c.errors.push(format!(
                "trust_domain: `{td}` must be lowercase letters, digits, `.` and `-`"
            ));
        }
        let data_dir = path_of(&c, "DSM_DATA_DIR", fc.data_dir);
        if data_dir.is_none() {
            c.errors
                .push("data_dir: required (set it in the file or with DSM_DATA_DIR)".into());
        }
        let key_file = path_of(&c, "DSM_KEY_FILE", fc.key_file);
        match &key_file {
            None => c
                .errors
                .push("key_file: required (make one with `mesh-ctl key init`)".into()),
            Some(p) => {
                if let Err(e) = crate::security::crypto::NodeKeys::load(p) {
                    c.errors.push(format!("key_file: {e}"));
                }
            }
        }
        let gateway_listen = c.addr(
            "gateway_listen",
            "DSM_GATEWAY_LISTEN",
            fc.gateway_listen,
            "127.0.0.1:7443",
        );
        let ops_listen = c.addr(
            "ops_listen",
            "DSM_OPS_LISTEN",
            fc.ops_listen,
            "127.0.0.1:9090",
        );
        if gateway_listen == ops_listen && gateway_listen.port() != 0 {
            c.errors
                .push("ops_listen: must differ from gateway_listen".into());
        }
        let peer_listen = c.addr(
            "peer_listen",
            "DSM_PEER_LISTEN",
            fc.peer_listen,
            "127.0.0.1:7444",
        );

        // Layouts: a control public key to verify them, and optionally an initial signed layout.
        let control_public_key = match path_of(&c, "DSM_CONTROL_PUBLIC_KEY", fc.control_public_key)
        {
            None => None,
            Some(p) => match std::fs::read_to_string(&p) {
                Err(e) => {
                    c.errors.push(format!(
                        "control_public_key: cannot read {}: {e}",
                        p.display()
                    ));
                    None
                }
                Ok(text) => match crate::security::control_key::ControlPublicKey::parse(&text) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        c.errors
                            .push(format!("control_public_key: {}: {e}", p.display()));
                        None
                    }
                },
            },
        };
        let mut layout = None;
        let mut layout_signed = None;
        if let Some(p) = path_of(&c, "DSM_LAYOUT_FILE", fc.layout_file) {
            use prost::Message as _;
            match (std::fs::read(&p), &control_public_key) {
                (Err(e), _) => c
                    .errors
                    .push(format!("layout_file: cannot read {}: {e}", p.display())),
                (Ok(_), None) => c
                    .errors
                    .push("layout_file: needs control_public_key to verify it".into()),
                (Ok(bytes), Some(key)) => {
                    match mesh_proto::v1::SignedLayout::decode(bytes.as_slice()) {
                        Err(_) => c.errors.push(format!(
                            "layout_file: {} is not a signed layout",
                            p.display()
                        )),
                        Ok(signed) => match crate::cluster::layout::Layout::verify(&signed, key) {
                            Err(e) => c.errors.push(format!("layout_file: {}: {e}", p.display())),
                            Ok(l) => {
                                layout = Some(l);
                                layout_signed = Some(signed);
                            }
                        },
                    }
                }
            }
        }

        let tls_ca = path_of(&c, "DSM_TLS_CA", fc.tls.ca);
        let tls_cert = path_of(&c, "DSM_TLS_CERT", fc.tls.cert);
        let tls_key = path_of(&c, "DSM_TLS_KEY", fc.tls.key);
        for (key, v) in [
            ("tls.ca", &tls_ca),
            ("tls.cert", &tls_cert),
            ("tls.key", &tls_key),
        ] {
            if v.is_none() {
                c.errors.push(format!("{key}: required"));
            }
            c.readable(key, v);
        }
        if let (Some(ca), Some(cert), Some(key)) = (&tls_ca, &tls_cert, &tls_key) {
            match crate::security::tls::TlsMaterial::load(ca, cert, key) {
                Err(e) => c.errors.push(format!("tls: {e}")),
                Ok(m) => match Identity::from_certificate(&m.chain[0]) {
                    Err(e) => c.errors.push(format!("tls.cert: {e}")),
                    Ok(Identity::Node { trust_domain: td, node_id: id }) => {
                        if Some(&id) != node_id.as_ref() || Some(&td) != trust_domain.as_ref() {
                            c.errors.push(format!(
                                "tls.cert: certificate is for node `{id}` in `{td}`, but this node is configured as `{}` in `{}`",
                                node_id.as_deref().unwrap_or("?"),
                                trust_domain.as_deref().unwrap_or("?")
                            ));
                        }
                    }
                    Ok(other) => c.errors.push(format!("tls.cert: {other} is not a node certificate (issue one with `mesh-ctl cert issue node`)")),
                },
            }
        }

        let tls_crl = path_of(&c, "DSM_TLS_CRL", fc.tls.crl);
        let tls_reload_interval = c.duration(
            "tls.reload_interval",
            "DSM_TLS_RELOAD_INTERVAL",
            fc.tls.reload_interval,
            Duration::from_secs(2),
        );

        let max_concurrent_requests = match c.pick(
            "DSM_MAX_CONCURRENT_REQUESTS",
            fc.limits.max_concurrent_requests.map(|n| n.to_string()),
        ) {
            None => 512,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => n,
                _ => {
                    c.errors.push(format!("limits.max_concurrent_requests: `{raw}` must be a whole number from 1 to 100000"));
                    512
                }
            },
        };
        let request_timeout = c.duration(
            "limits.request_timeout",
            "DSM_REQUEST_TIMEOUT",
            fc.limits.request_timeout,
            Duration::from_secs(10),
        );
        let handshake_timeout = c.duration(
            "limits.handshake_timeout",
            "DSM_HANDSHAKE_TIMEOUT",
            fc.limits.handshake_timeout,
            Duration::from_secs(5),
        );
        let drain_timeout = c.duration(
            "limits.drain_timeout",
            "DSM_DRAIN_TIMEOUT",
            fc.limits.drain_timeout,
            Duration::from_secs(10),
        );
        let log_format = match c.pick("DSM_LOG_FORMAT", fc.log.format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.errors
                    .push(format!("log.format: `{other}` must be `text` or `json`"));
                LogFormat::Text
            }
        };
        let log_level = c
            .pick("DSM_LOG_LEVEL", fc.log.level)
            .unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            c.errors.push(format!("log.level: `{log_level}` is not a tracing filter (for example `info` or `mesh_node=debug`)"));
        }

        let mut audit_retention = crate::audit::log::Retention::default();
        if let Some(raw) = c.pick("DSM_AUDIT_RETENTION", fc.audit.retention) {
            match humantime::parse_duration(&raw) {
                Ok(d) if d >= Duration::from_secs(1) => audit_retention.keep = d,
                _ => c.errors.push(format!("audit.retention: `{raw}` is not a duration of at least 1s (for example `1095d`)")),
            }
        }
        if let Some(raw) = c.pick(
            "DSM_AUDIT_SEGMENT_BYTES",
            fc.audit.segment_bytes.map(|n| n.to_string()),
        ) {
            match raw.parse::<u64>() {
                Ok(n) if n >= 1024 => audit_retention.segment_bytes = n,
                _ => c.errors.push(format!(
                    "audit.segment_bytes: `{raw}` must be a whole number of at least 1024"
                )),
            }
        }

        let access = access_rules(&mut c, fc.access);
        let rebalance_rate = match c.pick("DSM_REBALANCE_RATE", fc.rebalance.rate) {
            None => DEFAULT_REBALANCE_RATE,
            Some(raw) => match parse_bytes(&raw) {
                Some(n) if n >= 1024 => n,
                _ => {
                    c.errors.push(format!(
                        "rebalance.rate: `{raw}` must be bytes per second, at least 1KiB (for example `32MiB` or `500000`)"
                    ));
                    DEFAULT_REBALANCE_RATE
                }
            },
        };

        let telemetry = telemetry_settings(&mut c, fc.telemetry);

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        match (
            node_id,
            trust_domain,
            data_dir,
            key_file,
            tls_ca,
            tls_cert,
            tls_key,
        ) {
            (
                Some(node_id),
                Some(trust_domain),
                Some(data_dir),
                Some(key_file),
                Some(tls_ca),
                Some(tls_cert),
                Some(tls_key),
            ) => Ok(Config {
                node_id,
                trust_domain,
                data_dir,
                key_file,
                gateway_listen,
                ops_listen,
                peer_listen,
                control_public_key,
                layout,
                layout_signed,
                tls_ca,
                tls_cert,
                tls_key,
                tls_crl,
                tls_reload_interval,
                max_concurrent_requests,
                request_timeout,
                handshake_timeout,
                drain_timeout,
                log_format,
                log_level,
                audit_retention,
                access,
                rebalance_rate,
                telemetry,
            }),
            _ => Err(ConfigErrors(vec!["incomplete configuration".into()])),
        }
    }
}

/// Default `rebalance.rate`: 32 MiB/s, a small share of a node's disk and network.
pub const DEFAULT_REBALANCE_RATE: u64 = 32 << 20;

/// Bytes as `123`, `64KiB`, `32MiB` or `1GiB` (binary units; `KB`/`MB`/`GB` are read the same).
pub fn parse_bytes(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (n, unit) = raw.split_at(split);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "KB" | "K" => 10,
        "MiB" | "MB" | "M" => 20,
        "GiB" | "GB" | "G" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// The `[telemetry]` section: where spans go, under which service name, how many.
fn telemetry_settings(c: &mut Collect<'_>, ft: FileTelemetry) -> crate::telemetry::trace::TelemetryConfig {
    let mut t = crate::telemetry::trace::TelemetryConfig::default();
    if let Some(raw) = c
        .pick("DSM_OTLP_ENDPOINT", ft.otlp_endpoint)
        .filter(|s| !s.is_empty())
    {
        match raw.parse::<hyper::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.host().is_some_and(|h| !h.is_empty())
                    && uri.path_and_query().is_none_or(|p| p.as_str() == "/") =>
            {
                t.otlp_endpoint = Some(raw);
            }
            Ok(uri) if uri.scheme_str() == Some("https") => c.errors.push(format!(
                "telemetry.otlp_endpoint: `{raw}`: https is not supported; send spans to a collector \
                 on the node's host or pod over http (for example `http://127.0.0.1:4317`)"
            )),
            _ => c.errors.push(format!(
                "telemetry.otlp_endpoint: `{raw}` is not an OTLP/gRPC endpoint like `http://127.0.0.1:4317`"
            )),
        }
    }
    if let Some(raw) = c.pick("DSM_TELEMETRY_SERVICE_NAME", ft.service_name) {
        if !raw.is_empty()
            && raw.len() <= 63
            && raw
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            t.service_name = raw;
        } else {
            c.errors.push(format!(
                "telemetry.service_name: `{raw}` must be 1-63 letters, digits, `-`, `_` or `.`"
            ));
        }
    }
    if let Some(raw) = c.pick(
        "DSM_TELEMETRY_SAMPLE_RATIO",
        ft.sample_ratio.map(|r| r.to_string()),
    ) {
        match raw.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => t.sample_ratio = r,
            _ => c.errors.push(format!(
                "telemetry.sample_ratio: `{raw}` must be a number from 0.0 to 1.0"
            )),
        }
    }
    t
}

/// The `[access]` section: windows, the reveal limit, purpose requirements.
fn access_rules(c: &mut Collect<'_>, fa: FileAccess) -> crate::access::windows::AccessRules {
    use crate::access::policy::Role;
    let mut rules = crate::access::windows::AccessRules::default();
    // Grace periods are counted in hours or days, so the 1h cap of `limits.*` does not apply.
    let span = |c: &mut Collect<'_>,
                key: &str,
                env: &str,
                file: Option<String>,
                into: &mut Duration| {
        if let Some(raw) = c.pick(env, file) {
            match humantime::parse_duration(&raw) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(366 * 86_400) => {
                    *into = d;
                }
                _ => c.errors.push(format!(
                    "{key}: `{raw}` is not a duration from 1s to 366d (for example `72h`)"
                )),
            }
        }
    };
    span(
        c,
        "access.contact_grace",
        "DSM_ACCESS_CONTACT_GRACE",
        fa.contact_grace,
        &mut rules.contact_grace,
    );
    span(
        c,
        "access.reveal_window",
        "DSM_ACCESS_REVEAL_WINDOW",
        fa.reveal_window,
        &mut rules.reveal_window,
    );
    if let Some(raw) = c.pick(
        "DSM_ACCESS_REVEAL_LIMIT",
        fa.reveal_limit.map(|n| n.to_string()),
    ) {
        match raw.parse::<u32>() {
            Ok(n) if (1..=100_000).contains(&n) => rules.reveal_limit = n,
            _ => c.errors.push(format!(
                "access.reveal_limit: `{raw}` must be a whole number from 1 to 100000"
            )),
        }
    }
    let roles = match c.env.var("DSM_ACCESS_REQUIRE_PURPOSE") {
        Some(raw) => Some(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        None => fa.require_purpose,
    };
    if let Some(roles) = roles {
        rules.require_purpose.clear();
        for name in roles {
            match name.parse::<Role>() {
                Ok(role) => rules.require_purpose.push(role),
                Err(e) => c.errors.push(format!("access.require_purpose: {e}")),
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests;
