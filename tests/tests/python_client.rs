//! A third-party client: Python grpcio with stubs generated from `proto/` at run time, talking mTLS
//! to a real node. Needs python3 and PyPI (the harness makes a venv under target/); run
//! with `NEXTEST_PROFILE=no-python` to leave it out on a machine without them.

use mesh_node::access::policy::Role;
use mesh_tests::{NodeProcess, Pki, python, within};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_creates_and_reads_orders_over_mtls() {
    let py = python();
    within(180, async move {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let storefront = pki.client(Role::Storefront);
        let oms = pki.client(Role::Oms);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("root")
            .to_owned();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(py)
                .arg(root.join("tests/python/client.py"))
                .arg("--target")
                .arg(node.gateway.to_string())
                .arg("--proto-root")
                .arg(root.join("proto"))
                .arg("--ca")
                .arg(&storefront.ca)
                .arg("--storefront-cert")
                .arg(&storefront.cert)
                .arg("--storefront-key")
                .arg(&storefront.key)
                .arg("--oms-cert")
                .arg(&oms.cert)
                .arg("--oms-key")
                .arg(&oms.key)
                .output()
                .expect("running the Python client")
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "python client failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("JSON from the Python client");
        assert!(
            seen["order_id"]
                .as_str()
                .expect("order id")
                .starts_with("o1-"),
            "{seen}"
        );
        assert_eq!(seen["storefront_sees_phone"], "+91******2233");
        assert_eq!(seen["oms_sees_phone"], "+91******2233");
        assert_eq!(seen["oms_sees_email"], "f***@example.org");
        assert_eq!(seen["oms_sees_name"], "F*** Q***");
        assert_eq!(seen["oms_reveals_name"], "Farhan Qureshi");
        assert_eq!(seen["reveals_remaining"], 19);
        assert_eq!(seen["oms_sees_total"], 135_000);
        assert_eq!(seen["status_after_pack"], "ORDER_STATUS_PACKED");
        assert_eq!(seen["storefront_update"], "PERMISSION_DENIED");
        let invalid = seen["invalid_create"].as_str().expect("invalid");
        assert!(
            invalid.starts_with("INVALID_ARGUMENT")
                && invalid.contains("customer: is required")
                && invalid.contains("items: must not be empty"),
            "{invalid}"
        );
    })
    .await;
}
