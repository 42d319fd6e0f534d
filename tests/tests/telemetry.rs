//! Telemetry of real nodes: spans exported over OTLP/gRPC to a real collector, and the Prometheus
//! exposition checked by `promtool`.
//!
//! The collector is `tests/python/otlp_receiver.py` (grpcio and the `opentelemetry-proto`
//! messages, in the harness's venv): it needs python3 and PyPI on first use, and
//! `NEXTEST_PROFILE=no-python` leaves it out. `promtool` comes from the Debian package
//! `prometheus` (`.ci/run` installs it); `NEXTEST_PROFILE=no-promtool` leaves its test out.

use mesh_node::access::policy::{Method, Role};
use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER, LIST_CUSTOMER_ORDERS, UPDATE_ORDER_STATUS};
use mesh_proto::v1::{
    GetOrderRequest, ListCustomerOrdersRequest, OrderStatus, UpdateOrderStatusRequest,
};
use mesh_tests::{
    MeshHarness as _, TestMesh, assert_eventually, contains, create_ok, python, sample_order,
    within,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERVICE: &str = "dsm-telemetry-test";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `tests/python/otlp_receiver.py`, listening on an ephemeral loopback port.
struct Collector {
    child: Child,
    spans: PathBuf,
    endpoint: String,
}

impl Collector {
    fn start(py: &Path, dir: &Path) -> Collector {
        let spans = dir.join("spans.jsonl");
        let mut child = Command::new(py)
            .arg(workspace_root().join("tests/python/otlp_receiver.py"))
            .arg("--out")
            .arg(&spans)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tests/python/otlp_receiver.py");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| {
                panic!("the OTLP receiver did not start (its stderr is above): {line:?}")
            });
        Collector {
            child,
            spans,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line per span"))
            .collect()
    }

    /// The Export requests exactly as they arrived.
    fn raw(&self) -> Vec<u8> {
        let mut path = self.spans.clone().into_os_string();
        path.push(".bin");
        std::fs::read(path).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every string in a JSON value: keys and string values, not numbers.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

fn node_of(span: &Value) -> &str {
    span["resource"]["dsm.node_id"].as_str().unwrap_or("?")
}

/// The spans node `node` exported under `name`.
fn named<'a>(spans: &'a [Value], node: &str, name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| node_of(s) == node && s["name"] == name)
        .collect()
}

/// The span whose child `span` is (same trace), if it was exported.
fn parent_of<'a>(spans: &'a [Value], span: &Value) -> Option<&'a Value> {
    spans.iter().find(|p| {
        p["trace_id"] == span["trace_id"]
            && p["span_id"] == span["parent_span_id"]
            && span["parent_span_id"] != ""
    })
}

/// Whether everything the test waits for has arrived.
fn complete(spans: &[Value]) -> bool {
    [
        ("n1", "dsm.v1.OrderGateway/CreateOrder"),
        ("n1", "route.forward"),
        ("n1", "storage.create_order"),
        ("n2", "dsm.v1.OrderGateway/CreateOrder"),
        ("n2", "storage.create_order"),
        ("n2", "storage.get_order"),
        ("n2", "storage.update_order"),
        ("n2", "storage.customer_orders"),
        ("n1", "dsm.v1.OrderGateway/UpdateOrderStatus"),
    ]
    .iter()
    .all(|(node, name)| !named(spans, node, name).is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_requests_routing_hops_and_storage_are_traced_over_otlp_without_pii() {
    let py = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&py, dir.path());
    within(180, async move {
        let mut mesh = TestMesh::start_with_env(
            2,
            &[
                ("DSM_OTLP_ENDPOINT", collector.endpoint.as_str()),
                ("DSM_TELEMETRY_SERVICE_NAME", SERVICE),
            ],
        );
        let sf = mesh.pki.client(Role::Storefront);
        let oms = mesh.pki.client(Role::Oms);
        let sf_sign = sf.signer();
        let oms_sign = oms.signer();
        let mut sf_n1 = mesh.nodes[0].client(&sf).await;
        let mut oms_n1 = mesh.nodes[0].client(&oms).await;

        // Everything below goes through n1's gateway: a customer n2 owns (each request is a
        // forward, handled and stored on n2) and one n1 owns. `pii` collects what must never be
        // exported: the buyers' details, their ids and order ids, and the clients' identities.
        let remote = mesh.customer_on(1, "otel-buyer");
        let local = mesh.customer_on(0, "otel-buyer");
        let mut pii: Vec<String> = vec![
            "test-storefront".into(),
            "test-oms".into(),
            "spiffe://".into(),
            "ndr-callback".into(),
        ];
        let mut orders = Vec::new();
        for (customer, n) in [(&remote, 4242), (&local, 4343)] {
            let req = sample_order(customer, n);
            let c = req.customer.clone().expect("customer");
            let a = c.address.clone().expect("address");
            pii.extend([
                customer.clone(),
                c.name.clone(),
                c.phone.clone(),
                c.phone.trim_start_matches("+91").to_owned(),
                c.email.clone(),
                a.line1.clone(),
                a.line2.clone(),
                a.city.clone(),
                req.external_ref.clone(),
            ]);
            let order = create_ok(&mut sf_n1, sf_sign.signed(CREATE_ORDER, req)).await;
            pii.push(order.order_id.clone());
            orders.push(order);
        }
        for order in &orders {
            oms_n1
                .get_order(oms_sign.signed(
                    GET_ORDER,
                    GetOrderRequest {
                        order_id: order.order_id.clone(),
                        purpose: "ndr-callback".into(),
                        fields: Vec::new(),
                    },
                ))
                .await
                .expect("get");
            oms_n1
                .update_order_status(oms_sign.signed(
                    UPDATE_ORDER_STATUS,
                    UpdateOrderStatusRequest {
                        order_id: order.order_id.clone(),
                        status: OrderStatus::Packed as i32,
                        purpose: "ndr-callback".into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("update");
        }
        let mut listed = oms_n1
            .list_customer_orders(oms_sign.signed(
                LIST_CUSTOMER_ORDERS,
                ListCustomerOrdersRequest {
                    customer_id: remote.clone(),
                    purpose: "ndr-callback".into(),
                },
            ))
            .await
            .expect("list")
            .into_inner();
        while listed.message().await.expect("listing").is_some() {}
        // A refusal: the storefront may not update orders.
        let refused = sf_n1
            .update_order_status(UpdateOrderStatusRequest {
                order_id: orders[1].order_id.clone(),
                status: OrderStatus::Cancelled as i32,
                ..Default::default()
            })
            .await
            .expect_err("storefront may not update");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);

        // SIGTERM: each node drains, then sends the spans its exporter still holds.
        for node in &mut mesh.nodes {
            let status = node.stop().expect("the node was running");
            assert!(status.success(), "node {} exited with {status}", node.id);
        }
        assert_eventually!(
            Duration::from_secs(20),
            complete(&collector.spans()),
            "not every expected span arrived: {:#?}",
            collector
                .spans()
                .iter()
                .map(|s| format!("{} {}", node_of(s), s["name"]))
                .collect::<BTreeSet<_>>()
        );
        let spans = collector.spans();

        // Every span is one of ours: the service and node named, made by mesh_node under the
        // exported target; nothing from h2, hyper, tonic, tower, quinn or rustls.
        for span in &spans {
            let r = &span["resource"];
            assert_eq!(r["service.name"], SERVICE, "{span}");
            assert!(["n1", "n2"].contains(&node_of(span)), "{span}");
            assert_eq!(r["service.instance.id"].as_str(), Some(node_of(span)));
            assert_eq!(span["scope"], "mesh-node", "{span}");
            let a = &span["attributes"];
            assert_eq!(a["target"], "dsm_trace", "{span}");
            let module = a["code.module.name"].as_str().unwrap_or_default();
            assert!(module.starts_with("mesh_node::"), "{span}");
            let mut text = Vec::new();
            strings(span, &mut text);
            for s in &text {
                for internal in ["h2", "hyper", "tonic", "tower", "quinn", "rustls"] {
                    assert!(
                        !s.starts_with(internal) && !s.contains(&format!("{internal}::")),
                        "a span of `{internal}` was exported: {span}"
                    );
                }
            }
        }

        // The gateway request on the node it reached: method, role, outcome, partition.
        let p_remote = mesh_node::domain::ids::partition_of(&remote).get();
        let creates = named(&spans, "n1", "dsm.v1.OrderGateway/CreateOrder");
        let edge = creates
            .iter()
            .find(|s| s["attributes"]["dsm.partition"] == p_remote)
            .expect("n1's span of the forwarded create");
        let a = &edge["attributes"];
        assert_eq!(a["rpc.system"], "grpc");
        assert_eq!(a["rpc.service"], "dsm.v1.OrderGateway");
        assert_eq!(a["rpc.method"], "CreateOrder");
        assert_eq!(a["dsm.role"], "storefront");
        assert_eq!(a["dsm.status"], "OK");
        assert_eq!(a["rpc.grpc.status_code"], 0);
        assert_eq!(edge["kind"], 2, "a server span");

        // The routing hop, a child of that request: to n2, which answered.
        let hop = named(&spans, "n1", "route.forward")
            .into_iter()
            .find(|h| parent_of(&spans, h).is_some_and(|p| p["span_id"] == edge["span_id"]))
            .expect("the forward of the create, under its request span");
        let a = &hop["attributes"];
        assert_eq!(a["dsm.hop"], "forward");
        assert_eq!(a["dsm.peer"], "n2");
        assert_eq!(a["dsm.partition"], p_remote);
        assert_eq!(a["dsm.outcome"], "ok");
        assert_eq!(hop["kind"], 3, "a client span");

        // On the owner: the forwarded request, and the storage operation under it.
        let owner = named(&spans, "n2", "dsm.v1.OrderGateway/CreateOrder");
        let owner = owner
            .iter()
            .find(|s| s["attributes"]["dsm.forwarded_by"] == "n1")
            .expect("n2's span of the forwarded create");
        assert_eq!(owner["attributes"]["dsm.role"], "storefront");
        assert_eq!(owner["attributes"]["dsm.status"], "OK");
        let stored = named(&spans, "n2", "storage.create_order")
            .into_iter()
            .find(|s| parent_of(&spans, s).is_some_and(|p| p["span_id"] == owner["span_id"]))
            .expect("the storage create under n2's request span");
        assert_eq!(stored["attributes"]["dsm.storage.op"], "create");
        assert_eq!(stored["attributes"]["dsm.partition"], p_remote);
        for (name, op) in [
            ("storage.get_order", "read"),
            ("storage.update_order", "update"),
            ("storage.customer_orders", "list"),
        ] {
            let s = named(&spans, "n2", name);
            assert!(
                s.iter().any(|s| s["attributes"]["dsm.storage.op"] == op),
                "{name}: {s:?}"
            );
        }
        // The local customer's create is stored on n1 itself, under n1's request span.
        let local_store = named(&spans, "n1", "storage.create_order");
        assert!(
            local_store
                .iter()
                .any(|s| parent_of(&spans, s).is_some_and(|p| p["name"]
                    == "dsm.v1.OrderGateway/CreateOrder"
                    && node_of(p) == "n1")),
            "{local_store:?}"
        );
        // A refusal is recorded with its code; the caller's mistake is not a server error.
        let denied = named(&spans, "n1", "dsm.v1.OrderGateway/UpdateOrderStatus")
            .into_iter()
            .find(|s| s["attributes"]["dsm.status"] == "PERMISSION_DENIED")
            .expect("the refused update");
        assert_eq!(denied["attributes"]["rpc.grpc.status_code"], 7);
        assert_ne!(denied["status"]["code"], 2, "not an error span");

        // No PII, and no request content, anywhere in what was exported: in every string of
        // every span, and in the bytes of every Export request.
        let raw = collector.raw();
        assert!(!raw.is_empty());
        let mut text = Vec::new();
        for span in &spans {
            strings(span, &mut text);
        }
        for secret in &pii {
            assert!(
                !contains(&raw, secret.as_bytes()),
                "`{secret}` was sent to the collector"
            );
            if let Some(s) = text.iter().find(|s| s.contains(secret.as_str())) {
                panic!("`{secret}` is in an exported span: {s}");
            }
        }

        // The log does not show the exported spans.
        let log = std::fs::read_to_string(mesh.nodes[0].log_file()).expect("log");
        assert!(
            !log.contains("dsm_trace") && !log.contains("gateway.request"),
            "{log}"
        );
    })
    .await;
}

/// GET `path` asking for `accept`.
fn get_accepting(addr: SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to ops port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_owned(), body.to_owned())
}

/// `promtool check metrics` on `text`: its verdict, and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be run ({e}): install the Debian package `prometheus` \
                 (apt-get install prometheus; .ci/run does), or leave this test out \
                 with NEXTEST_PROFILE=no-promtool"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_nodes_that_served_traffic_pass_promtool_with_bounded_labels() {
    // promtool's own lint must catch what this test relies on it for.
    let (ok, said) =
        promtool_check("# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n");
    assert!(!ok && said.contains("_total"), "promtool: {said}");

    within(120, async {
        let mesh = TestMesh::start(2);
        let sf = mesh.pki.client(Role::Storefront);
        let sf_sign = sf.signer();
        let mut sf_n1 = mesh.nodes[0].client(&sf).await;
        let mut order_ids = Vec::new();
        let mut customers = Vec::new();
        for (i, owner) in [0, 1, 1].into_iter().enumerate() {
            let customer = mesh.customer_on(owner, &format!("metrics-{i}"));
            let order = create_ok(
                &mut sf_n1,
                sf_sign.signed(CREATE_ORDER, sample_order(&customer, i as u32)),
            )
            .await;
            order_ids.push(order.order_id);
            customers.push(customer);
        }
        // Refusals too: an unknown order, a role that may not update, an invalid order.
        let _ = sf_n1
            .get_order(sf_sign.signed(
                GET_ORDER,
                GetOrderRequest {
                    order_id: "o1-0001-00000000000000000000".into(),
                    ..Default::default()
                },
            ))
            .await;
        let _ = sf_n1
            .update_order_status(UpdateOrderStatusRequest {
                order_id: order_ids[0].clone(),
                status: OrderStatus::Packed as i32,
                ..Default::default()
            })
            .await;
        let mut bad = sample_order(&customers[0], 9);
        bad.items.clear();
        let _ = sf_n1.create_order(sf_sign.signed(CREATE_ORDER, bad)).await;

        let methods: BTreeSet<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
        let codes: BTreeSet<&str> = (0..=16)
            .map(|c| mesh_node::error::code_name(tonic::Code::from(c)))
            .collect();
        for node in &mesh.nodes {
            let (status, text) = node.ops_get("/metrics");
            assert_eq!(status, 200);
            assert!(
                text.contains("dsm_gateway_requests_total{")
                    && text.contains("dsm_gateway_request_duration_seconds_bucket{"),
                "{text}"
            );
            let (ok, said) = promtool_check(&text);
            assert!(
                ok,
                "promtool check metrics on {}'s /metrics:\n{said}\n{text}",
                node.id
            );

            // Every label is one of a few, with values from small fixed sets: no customer or
            // order ever becomes a time series.
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((_, labels)) = line.split_once('{') else {
                    continue;
                };
                let labels = labels.split_once('}').expect("closed labels").0;
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v.trim_matches('"');
                    let bounded = match k {
                        "method" => methods.contains(v),
                        "code" => codes.contains(v),
                        "result" => ["ok", "error"].contains(&v),
                        "le" => true,
                        "node_id" => v == node.id,
                        "version" => v == env!("CARGO_PKG_VERSION"),
                        _ => false,
                    };
                    assert!(bounded, "unexpected label {k}={v:?} in {line}");
                }
                for id in order_ids.iter().chain(&customers) {
                    assert!(!line.contains(id.as_str()), "{line}");
                }
            }

            // Prometheus asks for OpenMetrics and gets it.
            let (head, om) = get_accepting(
                node.ops,
                "/metrics",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            );
            assert!(
                head.contains("application/openmetrics-text") && om.ends_with("# EOF\n"),
                "{head}\n{om}"
            );
        }
    })
    .await;
}
