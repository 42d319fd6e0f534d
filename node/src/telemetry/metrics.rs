//! Prometheus metrics of a node, served on the plaintext ops port.
//!
//! Labels are low-cardinality by construction (method names and gRPC codes); nothing about a
//! customer or an order is ever a label or a value. Names follow Prometheus conventions: counters
//! end in `_total`, durations are in seconds and sizes in bytes (the unit is part of the name),
//! timestamps are Unix seconds; `promtool check metrics` passes on `/metrics`
//! (`tests/tests/telemetry.rs`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `dsm_gateway_requests_total` | counter | `method`, `code` |
//! | `dsm_gateway_request_duration_seconds` | histogram | `method` |
//! | `dsm_tls_handshake_failures_total` | counter | |
//! | `dsm_orders_created_total` | counter | |
//! | `dsm_storage_flushes_total` | counter | |
//! | `dsm_storage_flush_batch_writes` | histogram | |
//! | `dsm_storage_flush_duration_seconds` | histogram | |
//! | `dsm_rebalance_received_partitions_total`, `dsm_rebalance_received_orders_total` | counter | |
//! | `dsm_rebalance_received_bytes_total`, `dsm_rebalance_sent_bytes_total` | counter | |
//! | `dsm_rebalance_shredded_partitions_total` | counter | |
//! | `dsm_rebalance_pending_partitions`, `dsm_rebalance_leftover_partitions` | gauge | |
//! | `dsm_tls_certificate_expiry_timestamp_seconds`, `dsm_tls_ca_expiry_timestamp_seconds` | gauge | |
//! | `dsm_tls_trusted_cas`, `dsm_tls_revoked_certificates` | gauge | |
//! | `dsm_tls_credential_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `dsm_node_info` | gauge (always 1) | `node_id`, `version` |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::{Registry, Unit};

/// Static label values: recording a request allocates nothing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node_id: String,
    version: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<MethodLabels, Histogram>,
    pub handshake_failures: Counter,
    pub orders_created: Counter,
    pub flushes: Counter,
    pub flush_batch: Histogram,
    pub flush_duration: Histogram,
    pub rebalance: RebalanceMetrics,
    pub tls: TlsMetrics,
}

/// The node's TLS credentials (`trust`): expiry for alerting, reloads, revocations in force.
#[derive(Debug, Default, Clone)]
pub struct TlsMetrics {
    pub cert_expiry: Gauge,
    pub ca_expiry: Gauge,
    pub trusted_cas: Gauge,
    pub revoked: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

impl TlsMetrics {
    /// Records the credentials in force after a load or reload attempt.
    /// (Plain values, so that instrumentation stays below the security layer that reports it.)
    pub(crate) fn observe(
        &self,
        cert_not_after: i64,
        ca_not_after: i64,
        trusted_cas: usize,
        revoked: usize,
        ok: bool,
    ) {
        self.cert_expiry.set(cert_not_after);
        self.ca_expiry.set(ca_not_after);
        self.trusted_cas.set(trusted_cas as i64);
        self.revoked.set(revoked as i64);
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// Partition handoff, as this node sees it.
#[derive(Debug, Default, Clone)]
pub struct RebalanceMetrics {
    pub received_partitions: Counter,
    pub received_orders: Counter,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub shredded_partitions: Counter,
    pub pending_partitions: Gauge,
    pub leftover_partitions: Gauge,
}

impl Metrics {
    pub fn new(node_id: &str) -> Metrics {
        let mut registry = Registry::with_prefix("dsm");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Gateway requests by method and gRPC status code",
            requests.clone(),
        );
        let request_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ])
        });
        registry.register_with_unit(
            "gateway_request_duration",
            "Gateway request latency",
            Unit::Seconds,
            request_duration.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused or failed on the gateway",
            handshake_failures.clone(),
        );
        let orders_created = Counter::default();
        registry.register(
            "orders_created",
            "Orders created and made durable",
            orders_created.clone(),
        );
        let flushes = Counter::default();
        registry.register(
            "storage_flushes",
            "Group-commit flushes (fsyncs) of the store",
            flushes.clone(),
        );
        let flush_batch = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register(
            "storage_flush_batch_writes",
            "Writes made durable per group-commit flush",
            flush_batch.clone(),
        );
        let flush_duration = Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]);
        registry.register_with_unit(
            "storage_flush_duration",
            "Duration of one group-commit flush",
            Unit::Seconds,
            flush_duration.clone(),
        );
        let rebalance = RebalanceMetrics::default();
        for (name, help, counter, unit) in [
            (
                "rebalance_received_partitions",
                "Partitions received from their previous owner",
                &rebalance.received_partitions,
                None,
            ),
            (
                "rebalance_received_orders",
                "Orders received with partitions",
                &rebalance.received_orders,
                None,
            ),
            (
                "rebalance_received",
                "Partition data received from previous owners",
                &rebalance.received_bytes,
                Some(Unit::Bytes),
            ),
            (
                "rebalance_sent",
                "Partition data sent to new owners",
                &rebalance.sent_bytes,
                Some(Unit::Bytes),
            ),
            (
                "rebalance_shredded_partitions",
                "Partitions deleted here after their new owner confirmed them",
                &rebalance.shredded_partitions,
                None,
            ),
        ] {
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, counter.clone()),
                None => registry.register(name, help, counter.clone()),
            }
        }
        registry.register(
            "rebalance_pending_partitions",
            "Partitions this node owns but has not received yet",
            rebalance.pending_partitions.clone(),
        );
        registry.register(
            "rebalance_leftover_partitions",
            "Partitions this node still holds but no longer owns",
            rebalance.leftover_partitions.clone(),
        );
        let tls = TlsMetrics::default();
        registry.register_with_unit(
            "tls_certificate_expiry_timestamp",
            "When this node's certificate expires (Unix time); alert well before it",
            Unit::Seconds,
            tls.cert_expiry.clone(),
        );
        registry.register_with_unit(
            "tls_ca_expiry_timestamp",
            "When the first of the trusted CAs expires (Unix time)",
            Unit::Seconds,
            tls.ca_expiry.clone(),
        );
        registry.register(
            "tls_trusted_cas",
            "CAs in the trust bundle (2 during a CA rotation)",
            tls.trusted_cas.clone(),
        );
        registry.register(
            "tls_revoked_certificates",
            "Certificates revoked by the CRLs in force",
            tls.revoked.clone(),
        );
        registry.register(
            "tls_credential_reloads",
            "Loads and reloads of the TLS credentials, by result",
            tls.reloads.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            node_id: node_id.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
        registry.register("node_info", "Node identity and build", info);
        Metrics {
            registry,
            requests,
            request_duration,
            handshake_failures,
            orders_created,
            flushes,
            flush_batch,
            flush_duration,
            rebalance,
            tls,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format (0.0.4), for scrapers and tools that do not ask for OpenMetrics.
    pub(crate) fn render_prometheus(&self) -> String {
        prometheus_text(&self.render())
    }

    pub(crate) fn observe_request(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: crate::error::code_name(code),
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }
}

/// Rewrites an OpenMetrics exposition (as `prometheus_client` writes it) in the Prometheus text
/// format 0.0.4, which `promtool` and scrapers without OpenMetrics support read: a counter family
/// is named after its samples (`x_total`, where OpenMetrics says `x`), OpenMetrics-only types
/// become `untyped`, and `# UNIT` and `# EOF` lines go. Samples are the same in both formats.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's `# HELP` comes before its `# TYPE`, which decides the family's name.
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, &mut help);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, &mut help);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, &mut help);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's metrics with every family holding a sample.
    fn busy() -> Metrics {
        let m = Metrics::new("n1");
        m.observe_request("GetOrder", tonic::Code::Ok, 0.003);
        m.observe_request("CreateOrder", tonic::Code::PermissionDenied, 0.001);
        m.handshake_failures.inc();
        m.orders_created.inc();
        m.flushes.inc();
        m.flush_batch.observe(3.0);
        m.flush_duration.observe(0.002);
        m.rebalance.received_bytes.inc_by(1024);
        m.tls
            .reloads
            .get_or_create(&ReloadLabels { result: "ok" })
            .inc();
        m
    }

    #[test]
    fn counters_end_in_total_and_units_are_base_units_in_both_formats() {
        let m = busy();
        for text in [m.render(), m.render_prometheus()] {
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("dsm_"), "{line}");
                for bad in ["_ms", "_milliseconds", "_kb", "_mib", "_count_total"] {
                    assert!(!name.contains(bad), "{name}: not a base unit");
                }
            }
            for counter in [
                "dsm_gateway_requests_total{",
                "dsm_tls_handshake_failures_total ",
                "dsm_orders_created_total ",
                "dsm_storage_flushes_total ",
                "dsm_rebalance_received_bytes_total ",
                "dsm_rebalance_sent_bytes_total ",
                "dsm_tls_credential_reloads_total{",
                "dsm_gateway_request_duration_seconds_bucket{",
                "dsm_storage_flush_duration_seconds_sum ",
                "dsm_tls_certificate_expiry_timestamp_seconds ",
            ] {
                assert!(text.contains(counter), "{counter} missing from\n{text}");
            }
        }
    }

    #[test]
    fn the_prometheus_format_names_counter_families_like_their_samples() {
        let m = busy();
        let om = m.render();
        let text = m.render_prometheus();
        assert!(om.ends_with("# EOF\n") && !text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        // A naive model: every TYPE line names a family whose samples follow it.
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                let next = text.lines().skip_while(|l| *l != line).nth(1).unwrap();
                assert!(
                    next.starts_with(&format!("# TYPE {name} ")),
                    "{line} / {next}"
                );
            } else {
                let (name, kind) = family.clone().expect("a sample after its TYPE");
                let sample = line.split(['{', ' ']).next().unwrap();
                let ok = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample == format!("{name}{s}")),
                    _ => sample == name,
                };
                assert!(ok, "{sample} is not a sample of {name} ({kind})");
            }
        }
        // The samples themselves are the same in both formats.
        let samples = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(samples(&om), samples(&text));
    }
}
