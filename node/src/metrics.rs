//! Prometheus metrics of a node, served on the plaintext ops port.
//!
//! Labels are low-cardinality by construction (method names and gRPC codes); nothing about a
//! customer or an order is ever a label or a value.

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

/// The conventional upper-snake name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
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
    pub fn observe(&self, status: &crate::trust::TrustStatus, ok: bool) {
        self.cert_expiry.set(status.cert_not_after);
        self.ca_expiry.set(status.ca_not_after);
        self.trusted_cas.set(status.trusted_cas as i64);
        self.revoked.set(status.revoked as i64);
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

    pub fn observe_request(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }
}

impl crate::storage::commit::FlushObserver for Metrics {
    fn flushed(&self, batch: usize, seconds: f64) {
        self.flushes.inc();
        self.flush_batch.observe(batch as f64);
        self.flush_duration.observe(seconds);
    }
}
