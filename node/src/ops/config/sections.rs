//! One function per part of the configuration: each reads its keys (file value, then `DSM_*`
//! override), checks them, records every problem in the [`Collect`] and returns what it found.
//! `Config::load` calls them in order.

use super::LogFormat;
use super::collect::Collect;
use super::file::{
    FileAccess, FileAudit, FileConfig, FileLimits, FileLog, FileRebalance, FileTelemetry, FileTls,
};
use crate::security::identity::{Identity, is_valid_name, is_valid_trust_domain};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Who and where the node is: its id, trust domain, data directory and key file.
pub(super) struct Place {
    pub node_id: Option<String>,
    pub trust_domain: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

pub(super) fn place(c: &mut Collect<'_>, fc: &mut FileConfig) -> Place {
    let node_id = c.required("node_id", "DSM_NODE_ID", fc.node_id.take());
    if let Some(id) = &node_id
        && !is_valid_name(id)
    {
        c.errors.push(format!(
            "node_id: `{id}` must be 1-63 lowercase letters, digits, `-`, `_` or `.`"
        ));
    }
    let trust_domain = c.required("trust_domain", "DSM_TRUST_DOMAIN", fc.trust_domain.take());
    if let Some(td) = &trust_domain
        && !is_valid_trust_domain(td)
    {
        c.errors.push(format!(
            "trust_domain: `{td}` must be lowercase letters, digits, `.` and `-`"
        ));
    }
    let data_dir = c.path("DSM_DATA_DIR", fc.data_dir.take());
    if data_dir.is_none() {
        c.errors
            .push("data_dir: required (set it in the file or with DSM_DATA_DIR)".into());
    }
    let key_file = c.path("DSM_KEY_FILE", fc.key_file.take());
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
    Place {
        node_id,
        trust_domain,
        data_dir,
        key_file,
    }
}

/// The three listening addresses.
pub(super) struct Listen {
    pub gateway: SocketAddr,
    pub ops: SocketAddr,
    pub peer: SocketAddr,
}

pub(super) fn listen(c: &mut Collect<'_>, fc: &mut FileConfig) -> Listen {
    let gateway_listen = c.addr(
        "gateway_listen",
        "DSM_GATEWAY_LISTEN",
        fc.gateway_listen.take(),
        "127.0.0.1:7443",
    );
    let ops_listen = c.addr(
        "ops_listen",
        "DSM_OPS_LISTEN",
        fc.ops_listen.take(),
        "127.0.0.1:9090",
    );
    if gateway_listen == ops_listen && gateway_listen.port() != 0 {
        c.errors
            .push("ops_listen: must differ from gateway_listen".into());
    }
    let peer_listen = c.addr(
        "peer_listen",
        "DSM_PEER_LISTEN",
        fc.peer_listen.take(),
        "127.0.0.1:7444",
    );

    Listen {
        gateway: gateway_listen,
        ops: ops_listen,
        peer: peer_listen,
    }
}

/// The control public key and the initial signed layout.
pub(super) struct Layouts {
    pub control_public_key: Option<crate::security::control_key::ControlPublicKey>,
    pub layout: Option<crate::cluster::layout::Layout>,
    pub layout_signed: Option<mesh_proto::v1::SignedLayout>,
}

pub(super) fn layouts(c: &mut Collect<'_>, fc: &mut FileConfig) -> Layouts {
    // Layouts: a control public key to verify them, and optionally an initial signed layout.
    let control_public_key = match c.path("DSM_CONTROL_PUBLIC_KEY", fc.control_public_key.take()) {
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
    if let Some(p) = c.path("DSM_LAYOUT_FILE", fc.layout_file.take()) {
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

    Layouts {
        control_public_key,
        layout,
        layout_signed,
    }
}

/// The `[tls]` section, checked against the node's id and trust domain.
pub(super) struct Tls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub reload_interval: Duration,
}

pub(super) fn tls(c: &mut Collect<'_>, ft: FileTls, place: &Place) -> Tls {
    let (node_id, trust_domain) = (&place.node_id, &place.trust_domain);
    let tls_ca = c.path("DSM_TLS_CA", ft.ca);
    let tls_cert = c.path("DSM_TLS_CERT", ft.cert);
    let tls_key = c.path("DSM_TLS_KEY", ft.key);
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

    let tls_crl = c.path("DSM_TLS_CRL", ft.crl);
    let tls_reload_interval = c.duration(
        "tls.reload_interval",
        "DSM_TLS_RELOAD_INTERVAL",
        ft.reload_interval,
        Duration::from_secs(2),
    );

    Tls {
        ca: tls_ca,
        cert: tls_cert,
        key: tls_key,
        crl: tls_crl,
        reload_interval: tls_reload_interval,
    }
}

/// The `[limits]` section.
pub(super) struct Limits {
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
}

pub(super) fn limits(c: &mut Collect<'_>, fl: FileLimits) -> Limits {
    let max_concurrent_requests = match c.pick(
        "DSM_MAX_CONCURRENT_REQUESTS",
        fl.max_concurrent_requests.map(|n| n.to_string()),
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
        fl.request_timeout,
        Duration::from_secs(10),
    );
    let handshake_timeout = c.duration(
        "limits.handshake_timeout",
        "DSM_HANDSHAKE_TIMEOUT",
        fl.handshake_timeout,
        Duration::from_secs(5),
    );
    let drain_timeout = c.duration(
        "limits.drain_timeout",
        "DSM_DRAIN_TIMEOUT",
        fl.drain_timeout,
        Duration::from_secs(10),
    );
    Limits {
        max_concurrent_requests,
        request_timeout,
        handshake_timeout,
        drain_timeout,
    }
}

/// The `[log]` section: format and level.
pub(super) fn log(c: &mut Collect<'_>, fl: FileLog) -> (LogFormat, String) {
    let log_format = match c.pick("DSM_LOG_FORMAT", fl.format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.errors
                .push(format!("log.format: `{other}` must be `text` or `json`"));
            LogFormat::Text
        }
    };
    let log_level = c
        .pick("DSM_LOG_LEVEL", fl.level)
        .unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        c.errors.push(format!("log.level: `{log_level}` is not a tracing filter (for example `info` or `mesh_node=debug`)"));
    }

    (log_format, log_level)
}

/// The `[audit]` section: how long the trail is kept and how it rotates.
pub(super) fn audit(c: &mut Collect<'_>, fa: FileAudit) -> crate::audit::log::Retention {
    let mut audit_retention = crate::audit::log::Retention::default();
    if let Some(raw) = c.pick("DSM_AUDIT_RETENTION", fa.retention) {
        match humantime::parse_duration(&raw) {
            Ok(d) if d >= Duration::from_secs(1) => audit_retention.keep = d,
            _ => c.errors.push(format!(
                "audit.retention: `{raw}` is not a duration of at least 1s (for example `1095d`)"
            )),
        }
    }
    if let Some(raw) = c.pick(
        "DSM_AUDIT_SEGMENT_BYTES",
        fa.segment_bytes.map(|n| n.to_string()),
    ) {
        match raw.parse::<u64>() {
            Ok(n) if n >= 1024 => audit_retention.segment_bytes = n,
            _ => c.errors.push(format!(
                "audit.segment_bytes: `{raw}` must be a whole number of at least 1024"
            )),
        }
    }

    audit_retention
}

/// The `[rebalance]` section: the pull rate.
pub(super) fn rebalance_rate(c: &mut Collect<'_>, fr: FileRebalance) -> u64 {
    match c.pick("DSM_REBALANCE_RATE", fr.rate) {
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
    }
}

/// Default `rebalance.rate`: 32 MiB/s, a small share of a node's disk and network.
pub(crate) const DEFAULT_REBALANCE_RATE: u64 = 32 << 20;

/// Bytes as `123`, `64KiB`, `32MiB` or `1GiB` (binary units; `KB`/`MB`/`GB` are read the same).
pub(crate) fn parse_bytes(raw: &str) -> Option<u64> {
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
pub(super) fn telemetry_settings(
    c: &mut Collect<'_>,
    ft: FileTelemetry,
) -> crate::telemetry::trace::TelemetryConfig {
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
pub(super) fn access_rules(
    c: &mut Collect<'_>,
    fa: FileAccess,
) -> crate::access::windows::AccessRules {
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
