//! The plaintext operations port: `/healthz` (the process is alive), `/readyz` (the node serves
//! traffic) and `/metrics` (Prometheus). Plaintext because kubelet probes and scrapers cannot
//! present client certificates; it exposes no order data.

use crate::telemetry::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared between the ops server and the node's lifecycle.
#[derive(Debug)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    /// True once the gateway listens and the store is open; false again while draining.
    pub ready: AtomicBool,
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn handle(req: &Request<hyper::body::Incoming>, state: &OpsState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => {
            respond(StatusCode::OK, "text/plain", "ready\n")
        }
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        // OpenMetrics for scrapers that ask for it (Prometheus does); the classic text format
        // for everything else (promtool, curl, older scrapers).
        "/metrics"
            if req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text")) =>
        {
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.render(),
            )
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render_prometheus(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<OpsState>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "ops accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = handle(&req, &state);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A loopback port that is free for TCP and UDP alike right now (a node's gateway and ops ports
/// are TCP, its peer port UDP; `mesh-ctl up --base-port 0` and the test harness give one number to
/// both). Bound and released, so another process can still take it before it is used: callers that
/// bind it later retry on "address in use".
pub fn free_loopback_port() -> u16 {
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
