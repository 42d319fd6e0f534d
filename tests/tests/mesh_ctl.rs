//! `mesh-ctl` as an operator uses it: the PKI commands, and `mesh-ctl up` bringing up a local mesh
//! that a client reaches with the credentials written to mesh.json. Also `mesh-node run` refusing a
//! bad configuration with every problem listed.

use mesh_node::access::policy::Role;
use mesh_node::security::identity::Identity;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{
    UpMesh, mesh_ctl_bin, mesh_node_bin, orders_written_anywhere_are_read_everywhere, sample_order,
    within,
};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A channel to the gateway of `node`, an entry of mesh.json.
async fn gateway_channel(
    mesh: &serde_json::Value,
    node: &serde_json::Value,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> tonic::transport::Channel {
    let addr = node["gateway"]
        .as_str()
        .expect("gateway")
        .parse()
        .expect("addr");
    mesh_node::api::client::connect(addr, mesh["server_name"].as_str().expect("name"), tls)
        .await
        .expect("connect")
}

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(mesh_ctl_bin())
        .args(args)
        .output()
        .expect("running mesh-ctl")
}

/// `mesh-ctl ARGS`, which must succeed (else its stderr is the failure).
fn ctl_ok(args: &[&str]) -> std::process::Output {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn ca_init_and_cert_issue_write_owner_only_keys_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    ctl_ok(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().expect("utf8"),
        "--trust-domain",
        "brand.example",
        "-o",
        "json",
    ]);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    // A second init refuses to overwrite the CA.
    let again = ctl(&["ca", "init", "--dir", ca.to_str().expect("utf8")]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let certs = dir.path().join("certs");
    let out = ctl_ok(&[
        "cert",
        "issue",
        "client",
        "--role",
        "support",
        "--name",
        "ndr-desk",
        "--ca-dir",
        ca.to_str().expect("utf8"),
        "--out",
        certs.to_str().expect("utf8"),
        "--ttl",
        "2h",
        "-o",
        "json",
    ]);
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        issued["identity"],
        "spiffe://brand.example/client/support/ndr-desk"
    );
    let key = std::path::PathBuf::from(issued["key"].as_str().expect("key path"));
    assert_eq!(mode(&key), 0o600);
    let der = mesh_node::security::tls::load_certs(std::path::Path::new(
        issued["cert"].as_str().expect("cert"),
    ))
    .expect("cert");
    assert_eq!(
        Identity::from_certificate(&der[0]).expect("identity"),
        Identity::Client {
            trust_domain: "brand.example".into(),
            role: Role::Support,
            name: "ndr-desk".into()
        }
    );

    let out = ctl_ok(&[
        "cert",
        "issue",
        "node",
        "--id",
        "n7",
        "--ca-dir",
        ca.to_str().expect("utf8"),
        "--out",
        certs.to_str().expect("utf8"),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://brand.example/node/n7"));

    // Every role of the role table can be issued, and the certificate carries exactly that role.
    for role in Role::ALL {
        let out = ctl(&[
            "cert",
            "issue",
            "client",
            "--role",
            role.as_str(),
            "--name",
            "every-role",
            "--ca-dir",
            ca.to_str().expect("utf8"),
            "--out",
            certs.join(role.as_str()).to_str().expect("utf8"),
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let der = mesh_node::security::tls::load_certs(std::path::Path::new(
            issued["cert"].as_str().expect("cert"),
        ))
        .expect("cert");
        assert_eq!(
            Identity::from_certificate(&der[0])
                .expect("identity")
                .role(),
            Some(role)
        );
    }

    // Unknown roles are refused with the list of known ones.
    let out = ctl(&[
        "cert",
        "issue",
        "client",
        "--role",
        "root",
        "--name",
        "x",
        "--ca-dir",
        ca.to_str().expect("utf8"),
        "--out",
        certs.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("storefront"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let kek = dir.path().join("node.kek");
    assert!(
        ctl(&["key", "init", "--out", kek.to_str().expect("utf8")])
            .status
            .success()
    );
    assert_eq!(mode(&kek), 0o600);
    assert!(mesh_node::security::crypto::NodeKeys::load(&kek).is_ok());
    assert_eq!(
        ctl(&["key", "init", "--out", kek.to_str().expect("utf8")])
            .status
            .code(),
        Some(2),
        "no silent overwrite of a key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_three_node_mesh_that_serves_orders_through_every_gateway() {
    within(120, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut up = Command::new(mesh_ctl_bin())
            .args(["up", "--nodes", "3", "--base-port", "0", "--dir"])
            .arg(dir.path())
            .arg("--node-bin")
            .arg(mesh_node_bin())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mesh-ctl up");
        let mesh_json = dir.path().join("mesh.json");
        mesh_tests::assert_eventually!(
            Duration::from_secs(60),
            mesh_json.exists(),
            "mesh.json never appeared"
        );
        let mesh: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&mesh_json).expect("read"))
                .expect("json");
        let nodes = mesh["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3);
        let partitions: u64 = nodes
            .iter()
            .map(|n| n["partitions"].as_u64().expect("partitions"))
            .sum();
        assert_eq!(partitions, u64::from(mesh_node::domain::ids::PARTITIONS));
        let clients = mesh["clients"].as_object().expect("clients");
        for role in Role::ALL {
            assert!(
                clients.contains_key(role.as_str()),
                "no client certificate for {role}"
            );
        }
        let sf = &mesh["clients"]["storefront"];
        let key = std::path::PathBuf::from(sf["key"].as_str().expect("key"));
        let tls = mesh_node::api::client::client_tls(
            mesh["ca_cert"].as_str().expect("ca").as_ref(),
            sf["cert"].as_str().expect("cert").as_ref(),
            &key,
        )
        .expect("tls");
        let signer = mesh_node::security::proof::Signer::from_pem_file(&key).expect("signer");
        for (i, node) in nodes.iter().enumerate() {
            let channel = gateway_channel(&mesh, node, tls.clone()).await;
            for c in 0..5 {
                let req = signer.signed(
                    mesh_node::api::gateway::CREATE_ORDER,
                    sample_order(&format!("up-{i}-{c}"), c),
                );
                let order = OrderGatewayClient::new(channel.clone())
                    .create_order(req)
                    .await
                    .expect("create through any gateway");
                assert!(
                    order
                        .into_inner()
                        .order
                        .expect("order")
                        .order_id
                        .starts_with("o1-")
                );
            }
        }

        let status = Command::new(mesh_ctl_bin())
            .args(["status", "-o", "json", "--dir"])
            .arg(dir.path())
            .output()
            .expect("status");
        assert!(
            status.status.success(),
            "mesh-ctl status: {}\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
        assert_eq!(report["ok"], true);
        let reported: u64 = report["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["partitions"].as_u64().expect("p"))
            .sum();
        assert_eq!(reported, u64::from(mesh_node::domain::ids::PARTITIONS));

        // The trail through mesh-ctl: a mesh-wide query, and every node's chain verifies.
        let query = Command::new(mesh_ctl_bin())
            .args([
                "audit",
                "query",
                "-o",
                "json",
                "--action",
                mesh_node::api::gateway::CREATE_ORDER,
                "--dir",
            ])
            .arg(dir.path())
            .output()
            .expect("audit query");
        assert!(
            query.status.success(),
            "{}",
            String::from_utf8_lossy(&query.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&query.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
            .collect();
        assert_eq!(lines.len(), 15, "one record per create");
        let record_nodes: std::collections::BTreeSet<&str> = lines
            .iter()
            .map(|r| r["node"].as_str().expect("node"))
            .collect();
        assert_eq!(record_nodes.len(), 3, "records from every node");
        // Verified while orders keep being written (each node asked for a fresh checkpoint first):
        // a healthy live mesh passes at once, every time. It failed, every node "no signed
        // checkpoint covers this log", until the next once-a-second checkpoint.
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let writing = writing.clone();
            let signer = mesh_node::security::proof::Signer::from_pem_file(&key).expect("signer");
            let channel = gateway_channel(&mesh, &nodes[0], tls.clone()).await;
            tokio::spawn(async move {
                let mut c = 0u32;
                while writing.load(Ordering::Relaxed) {
                    let req = signer.signed(
                        mesh_node::api::gateway::CREATE_ORDER,
                        sample_order(&format!("burst-{c}"), c),
                    );
                    OrderGatewayClient::new(channel.clone())
                        .create_order(req)
                        .await
                        .expect("create during verify");
                    c += 1;
                }
                c
            })
        };
        for run in 0..3 {
            let verify = tokio::process::Command::new(mesh_ctl_bin())
                .args(["audit", "verify", "-o", "json", "--dir"])
                .arg(dir.path())
                .output()
                .await
                .expect("verify");
            assert!(
                verify.status.success(),
                "mesh-ctl audit verify failed on a healthy live mesh (run {run}):\n{}{}",
                String::from_utf8_lossy(&verify.stdout),
                String::from_utf8_lossy(&verify.stderr)
            );
            let report: serde_json::Value =
                serde_json::from_slice(&verify.stdout).expect("json report");
            let logs = report.as_array().expect("one entry per node");
            assert_eq!(logs.len(), 3, "{report}");
            assert!(logs.iter().all(|l| l["live"] == true), "{report}");
        }
        writing.store(false, Ordering::Relaxed);
        let written = writer.await.expect("writer");
        assert!(written > 0, "no order was written during the verify runs");

        // A live, merged watch over every node.
        let mut watch = Command::new(mesh_ctl_bin())
            .args([
                "audit",
                "watch",
                "-o",
                "json",
                "--action",
                mesh_node::api::gateway::CREATE_ORDER,
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("audit watch");
        let stdout = watch.stdout.take().expect("stdout");
        let first_line = std::thread::spawn(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        // Give the watch a moment to subscribe on every node, then write on the last node.
        let last = &nodes[2];
        let channel = gateway_channel(&mesh, last, tls.clone()).await;
        let mut seen = None;
        for attempt in 0..50u32 {
            let req = signer.signed(
                mesh_node::api::gateway::CREATE_ORDER,
                sample_order(&format!("watched-{attempt}"), attempt),
            );
            OrderGatewayClient::new(channel.clone())
                .create_order(req)
                .await
                .expect("create");
            if first_line.is_finished() {
                seen = Some(first_line.join().expect("reader").expect("read"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = watch.kill();
        let _ = watch.wait();
        let line = seen.expect("mesh-ctl audit watch printed a record within 5s");
        let rec: serde_json::Value = serde_json::from_str(line.trim()).expect("a JSON record");
        assert_eq!(rec["action"], mesh_node::api::gateway::CREATE_ORDER);

        // Ctrl-C (SIGINT) stops every node and removes mesh.json.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(up.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("signal");
        let exit = tokio::task::spawn_blocking(move || up.wait())
            .await
            .expect("join")
            .expect("wait");
        assert!(exit.success(), "mesh-ctl up exited with {exit}");
        assert!(!mesh_json.exists());
        for node in nodes {
            let pid = node["pid"].as_u64().expect("pid") as i32;
            assert!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
                "node process {pid} still running"
            );
        }
        // With the mesh down, status reports the problem with exit 1... once mesh.json is gone it
        // cannot find the mesh at all, which is a usage error (2).
        let down = Command::new(mesh_ctl_bin())
            .args(["status", "--dir"])
            .arg(dir.path())
            .output()
            .expect("status");
        assert_eq!(down.status.code(), Some(2));
    })
    .await;
}

#[test]
fn mesh_node_refuses_a_bad_config_listing_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "node_id = \"N 1\"\ngateway_listen = \"everywhere\"\n[tls]\nca = \"/nonexistent/ca.pem\"\n",
    )
    .expect("write");
    let out = Command::new(mesh_node_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("DSM_NODE_ID")
        .output()
        .expect("mesh-node");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "node_id",
        "trust_domain",
        "data_dir",
        "key_file",
        "gateway_listen",
        "tls.ca",
        "tls.cert",
        "tls.key",
    ] {
        assert!(err.contains(key), "`{key}` not reported in:\n{err}");
    }
}

/// The scenario every harness runs (`mesh_tests::scenario`), here on the mesh `mesh-ctl up`
/// starts, with the client credentials it wrote to mesh.json (it cannot restart one node, so the
/// scenario skips that part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_scenario_orders_written_anywhere_are_read_everywhere_on_mesh_ctl_up() {
    within(120, async {
        let mut mesh = tokio::task::spawn_blocking(|| UpMesh::start(3, &[]))
            .await
            .expect("mesh-ctl up");
        let written = orders_written_anywhere_are_read_everywhere(&mut mesh, "up").await;
        assert_eq!(written.len(), 9);
    })
    .await;
}
