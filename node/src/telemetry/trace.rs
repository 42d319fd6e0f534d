//! OpenTelemetry traces: the spans a node exports, what they may carry, and the OTLP/gRPC exporter
//! that sends them (only when `[telemetry] otlp_endpoint` is configured).
//!
//! Export is an allow-list. Only spans with target [`TARGET`] are exported, and every such span is
//! made by a function of this module or by `#[instrument(target = "dsm_trace", ...)]` on a storage
//! operation; everything else (`h2`, `hyper`, `tonic`, `tower`, `quinn`, `rustls`, our own log
//! spans and every log event) never reaches the exporter. The node's log never shows these spans
//! either (`init_logging` turns the target off), so logs are the same with and without OTLP.
//!
//! | span name                          | made by                     | attributes |
//! |------------------------------------|-----------------------------|------------|
//! | `dsm.v1.OrderGateway/<Method>`     | [`request`], every gateway request on the node it reached, and on the owner of a forwarded one | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `dsm.status`, `dsm.role`, `dsm.partition`, `dsm.forwarded_by` |
//! | `route.forward`, `route.relay`     | [`hop`], a call sent to the node that serves the partition | `dsm.hop`, `dsm.peer`, `dsm.partition`, `dsm.outcome` |
//! | `rebalance.pull`                   | pulling a partition from its previous owner | `dsm.peer`, `dsm.partition`, `dsm.background` |
//! | `storage.<operation>`              | `storage`: `create_order`, `get_order`, `order_by_handle`, `update_order`, `customer_orders`, `export_partition`, `import_partition`, `drop_partition` | `dsm.storage.op` (`create`, `read`, `update`, `list`, `export`, `import`, `drop`), `dsm.partition` |
//!
//! No PII, by construction: attribute values are method and role names, gRPC codes, node ids and
//! partition numbers (one of 4096, shared by thousands of customers). Never a customer id, order
//! id, contact handle, principal (certificate names are chosen by operators and may name a
//! person), purpose or reason text, or any request or response body; error messages are not
//! recorded either (only their code). `tests/tests/telemetry.rs` sends known PII through a real
//! mesh and searches everything the collector receives for it.

use crate::access::policy::{Method, Role};
use crate::domain::ids::Partition;
use crate::error::Error;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::time::Duration;
use tracing::Span;
use tracing::field::Empty;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of every exported span (and of nothing else).
pub const TARGET: &str = "dsm_trace";

/// The `[telemetry]` section of the node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, `http://host:port`; `None` exports nothing (the default).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of traces kept, 0.0 to 1.0, decided where a trace starts (its root span); a span
    /// whose parent was sampled is kept.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "mesh-node".into(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: cannot set up the OTLP exporter: {0}")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The running exporter; [`Exporter::shutdown`] sends what is still queued.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// How long shutdown waits for the last spans to reach the collector.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The tracing layer that exports this node's spans, and its exporter, if an endpoint is
/// configured. Must be called on the tokio runtime: the exporter's gRPC channel lives there (the
/// SDK's batch processor thread hands it a batch every few seconds, or at shutdown).
pub fn layer<S>(
    config: &TelemetryConfig,
    node_id: &str,
) -> Result<Option<(impl Layer<S> + use<S>, Exporter)>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("dsm.node_id", node_id.to_owned()),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("mesh-node"))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
    Ok(Some((layer, Exporter { provider })))
}

impl Exporter {
    /// Exports the spans still queued and stops; call after the node has drained.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The SDK blocks until its batch thread is done, and that thread needs this runtime.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_GRACE))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the last spans may not have been exported"),
            Err(e) => tracing::warn!(error = %e, "span exporter shutdown failed"),
        }
    }
}

/// The span of one gateway request; `forwarded_by` names the node that forwarded it, if any.
/// [`record_caller`] and [`finish_request`] fill in the rest.
pub fn request(method: Method, forwarded_by: Option<&str>) -> Span {
    let path = method.path();
    let span = tracing::info_span!(
        target: TARGET,
        "gateway.request",
        otel.name = path.strip_prefix('/').unwrap_or(path),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = "dsm.v1.OrderGateway",
        rpc.method = method.as_str(),
        rpc.grpc.status_code = Empty,
        dsm.status = Empty,
        dsm.role = Empty,
        dsm.partition = Empty,
        dsm.forwarded_by = Empty,
    );
    if let Some(node) = forwarded_by {
        span.record("dsm.forwarded_by", node);
    }
    span
}

/// Records the caller's role and the partition on the current span, when that is a request span
/// (it is wherever the gateway calls this: inside [`request`], outside any storage or hop span).
pub(crate) fn record_caller(role: Role, partition: Option<Partition>) {
    let span = Span::current();
    span.record("dsm.role", role.as_str());
    if let Some(p) = partition {
        span.record("dsm.partition", i64::from(p.get()));
    }
}

/// Records a request's outcome. Server-side faults mark the span as an error (OpenTelemetry's
/// gRPC conventions); a refusal the caller caused (a denied role, a bad field) does not.
pub(crate) fn finish_request(span: &Span, code: tonic::Code) {
    use tonic::Code::*;
    span.record("rpc.grpc.status_code", code as i64);
    span.record("dsm.status", crate::error::code_name(code));
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Why a call goes to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From the gateway that received the request to the partition's owner.
    Forward,
    /// From an owner still waiting for a partition to its previous owner, which serves it until
    /// the handoff.
    Relay,
}

impl Hop {
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Forward => "forward",
            Hop::Relay => "relay",
        }
    }
}

/// Runs `call` (a request sent to node `peer` for partition `p`) inside a routing-hop span, and
/// records how it ended: `ok`, `moved` (refused unopened, the partition is changing owner), or the
/// gRPC code.
pub async fn hop<T>(
    kind: Hop,
    peer: &str,
    p: Partition,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        target: TARGET,
        "route",
        otel.name = match kind {
            Hop::Forward => "route.forward",
            Hop::Relay => "route.relay",
        },
        otel.kind = "client",
        otel.status_code = Empty,
        dsm.hop = kind.as_str(),
        dsm.peer = peer,
        dsm.partition = i64::from(p.get()),
        dsm.outcome = Empty,
    );
    let result = call.instrument(span.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(Error::Moved(_)) => "moved",
        Err(e) => crate::error::code_name(e.code()),
    };
    span.record("dsm.outcome", outcome);
    if matches!(&result, Err(Error::Unavailable(_))) {
        span.record("otel.status_code", "ERROR");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Every field name and value recorded on spans of [`TARGET`].
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Recorded {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .lock()
                .unwrap()
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Recorded {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().target() == TARGET {
                attrs.record(&mut self.clone());
            }
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            values.record(&mut self.clone());
        }
    }

    #[tokio::test]
    async fn request_and_hop_spans_carry_only_their_declared_fields() {
        let seen = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        let p = Partition::new(7).unwrap();
        let span = request(Method::GetOrder, Some("n2"));
        span.in_scope(|| record_caller(Role::Oms, Some(p)));
        finish_request(&span, tonic::Code::Unavailable);
        let moved: Result<(), Error> =
            hop(Hop::Relay, "n3", p, async { Err(Error::Moved("x".into())) }).await;
        assert!(moved.is_err());
        let fields = seen.0.lock().unwrap().clone();
        let get = |name: &str| {
            fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("otel.name"),
            ["\"dsm.v1.OrderGateway/GetOrder\"", "\"route.relay\""]
        );
        assert_eq!(get("dsm.role"), ["\"oms\""]);
        assert_eq!(get("dsm.partition"), ["7", "7"]);
        assert_eq!(get("dsm.forwarded_by"), ["\"n2\""]);
        assert_eq!(get("rpc.grpc.status_code"), ["14"]);
        assert_eq!(get("dsm.status"), ["\"UNAVAILABLE\""]);
        assert_eq!(get("otel.status_code"), ["\"ERROR\""]);
        assert_eq!(get("dsm.outcome"), ["\"moved\""]);
        assert_eq!(get("dsm.peer"), ["\"n3\""]);
        // Nothing but the catalogue's attributes (and the exporter's `otel.*` controls).
        let allowed = [
            "otel.name",
            "otel.kind",
            "otel.status_code",
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code",
            "dsm.status",
            "dsm.role",
            "dsm.partition",
            "dsm.forwarded_by",
            "dsm.hop",
            "dsm.peer",
            "dsm.outcome",
        ];
        for (name, _) in &fields {
            assert!(allowed.contains(&name.as_str()), "unexpected field {name}");
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_set_up() {
        let none = layer::<tracing_subscriber::Registry>(&TelemetryConfig::default(), "n1")
            .expect("no endpoint is not an error");
        assert!(none.is_none());
    }
}
