//! Certificate rotation and revocation on a live mesh, without restarts (issue 7).
//!
//! A `mesh-ctl up` mesh of real node processes serves continuous client load while node and client
//! certificates are rotated, the CA is rotated with an overlap and the old CA is then removed: no
//! request fails and no node restarts. Then a client and a node are revoked, and the mesh refuses
//! them within seconds, on connections that were already open as well as on new ones.

use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER};
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{UpMesh, create_ok, get_order_request};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::Channel;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "mesh-ctl failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn gateway(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<OrderGatewayClient<Channel>> {
    Ok(OrderGatewayClient::new(
        mesh_node::api::client::connect(addr, "localhost", tls).await?,
    ))
}

/// A storefront writer that, like a real client, picks up its rotated certificate: when the file
/// changes it connects again with the new one and drops the old connection.
struct Writer {
    acked: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
    attempts: AtomicU64,
    /// The certificate file contents the writer currently connects with.
    using: Mutex<Vec<u8>>,
}

async fn write_load(mesh: Arc<UpMesh>, node: usize, w: Arc<Writer>, stop: Arc<AtomicBool>) {
    let (cert_file, _) = mesh.client_files("storefront");
    let mut current = Vec::new();
    let mut client: Option<(
        OrderGatewayClient<Channel>,
        mesh_node::security::proof::Signer,
    )> = None;
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let on_disk = std::fs::read(&cert_file).unwrap_or_default();
        if on_disk != current || client.is_none() {
            let (tls, signer) = mesh.tls_and_signer("storefront");
            match gateway(mesh.gateway(node), tls).await {
                Ok(c) => {
                    client = Some((c, signer));
                    current = on_disk.clone();
                    *w.using.lock().await = on_disk;
                }
                Err(e) => {
                    w.failures.lock().await.push(format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let (c, signer) = client.as_mut().expect("connected");
        i += 1;
        let req = mesh_tests::sample_order(&format!("rot-{node}-{i}"), i);
        w.attempts.fetch_add(1, Ordering::Relaxed);
        match c.create_order(signer.signed(CREATE_ORDER, req)).await {
            Ok(r) => w
                .acked
                .lock()
                .await
                .push(r.into_inner().order.expect("order").order_id),
            Err(s) => w
                .failures
                .lock()
                .await
                .push(format!("{:?}: {}", s.code(), s.message())),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every writer connects with the certificate now on disk.
async fn writers_switched(mesh: &UpMesh, writers: &[Arc<Writer>]) {
    let (cert_file, _) = mesh.client_files("storefront");
    let on_disk = std::fs::read(&cert_file).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(20);
    for w in writers {
        while *w.using.lock().await != on_disk {
            assert!(
                Instant::now() < deadline,
                "a writer never took its new certificate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn check_json(mesh: &UpMesh) -> serde_json::Value {
    let out = mesh.ctl(&["check", "-o", "json"]);
    serde_json::from_slice(&out.stdout).expect("check -o json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_ca_rotate_under_load_without_restarts_or_failed_requests() {
    let mesh = Arc::new(UpMesh::start(3, &[]));
    let pids: Vec<u32> = (0..3).map(|i| mesh.pid(i)).collect();
    let before = check_json(&mesh);
    assert_eq!(
        before["ok"], true,
        "a fresh mesh fails its check: {before:#}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<Arc<Writer>> = (0..2)
        .map(|_| {
            Arc::new(Writer {
                acked: Mutex::new(Vec::new()),
                failures: Mutex::new(Vec::new()),
                attempts: AtomicU64::new(0),
                using: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let tasks: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(node, w)| tokio::spawn(write_load(mesh.clone(), node, w.clone(), stop.clone())))
        .collect();
    let settle = || tokio::time::sleep(Duration::from_millis(1500));
    settle().await;

    // 1. New node and client certificates from the same CA.
    let serials = |c: &serde_json::Value| -> Vec<String> {
        c["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter_map(|i| i["check"].as_str())
            .filter(|s| s.contains("certificate (serial"))
            .map(str::to_owned)
            .collect()
    };
    let old_serials = serials(&before);
    ok(&mesh.ctl(&["cert", "rotate"]));
    let after = check_json(&mesh);
    let new_serials = serials(&after);
    assert_eq!(new_serials.len(), 3, "{after:#}");
    assert!(
        new_serials.iter().all(|s| !old_serials.contains(s)),
        "a node still serves its old certificate: {old_serials:?} -> {new_serials:?}"
    );
    writers_switched(&mesh, &writers).await;
    settle().await;

    // 2. CA rotation: a new CA trusted beside the old one, everything re-issued from it, then the
    //    old CA removed from every node's trust.
    let started = ok(&mesh.ctl(&["ca", "rotate"]));
    assert!(started.contains("trusts 2 CA(s)"), "{started}");
    settle().await;
    ok(&mesh.ctl(&["cert", "rotate"]));
    writers_switched(&mesh, &writers).await;
    settle().await;
    let finished = ok(&mesh.ctl(&["ca", "rotate", "--finish"]));
    assert!(finished.contains("trusts 1 CA(s)"), "{finished}");
    settle().await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }

    let mut acked = Vec::new();
    let mut attempts = 0;
    for w in &writers {
        let failures = w.failures.lock().await;
        assert!(
            failures.is_empty(),
            "{} request(s) failed during rotation: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        attempts += w.attempts.load(Ordering::Relaxed);
        acked.extend(w.acked.lock().await.iter().cloned());
    }
    eprintln!(
        "rotation under load: {attempts} requests, {} acknowledged, 0 failed",
        acked.len()
    );
    assert!(acked.len() > 100, "too little load: {}", acked.len());

    // Nothing restarted, the mesh checks out under the new CA alone, and every acknowledged order
    // is readable with a certificate from the new CA.
    let after = check_json(&mesh);
    assert_eq!(
        after["ok"], true,
        "check fails after the rotation: {after:#}"
    );
    for (i, pid) in pids.iter().enumerate() {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), None).is_ok(),
            "node {i} (pid {pid}) is gone"
        );
    }
    let audit = ok(&mesh.ctl(&["audit", "verify"]));
    assert!(!audit.contains("false"), "{audit}");
    let (tls, signer) = mesh.tls_and_signer("oms");
    let mut oms = gateway(mesh.gateway(2), tls).await.expect("connect");
    for id in &acked {
        let req = get_order_request(id);
        oms.get_order(signer.signed(GET_ORDER, req))
            .await
            .unwrap_or_else(|s| panic!("acknowledged order unreadable: {s:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_and_a_revoked_node_are_refused_within_seconds_without_restarts() {
    let mesh = UpMesh::start(3, &[]);
    // Expiry: local certificates live a day, so a two-day window warns about every one of them
    // (a warning is not a failure), and each node exports when its certificate expires.
    let warned = mesh.ctl(&["check", "--warn-within", "2d"]);
    let text = String::from_utf8_lossy(&warned.stdout);
    assert_eq!(warned.status.code(), Some(0), "{text}");
    for node in ["n1", "n2", "n3"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("‼ node") && l.contains(node) && l.contains("expires in")),
            "no expiry warning for {node}:\n{text}"
        );
    }
    let ops: SocketAddr = mesh.file["nodes"][0]["ops"]
        .as_str()
        .expect("ops")
        .parse()
        .expect("addr");
    let (_, metrics) = mesh_tests::http_get(ops, "/metrics");
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dsm_tls_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no certificate expiry metric:\n{metrics}"))
        .trim()
        .parse::<f64>()
        .expect("a number") as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        (now + 23 * 3600..=now + 24 * 3600).contains(&expiry),
        "the node's certificate expires at {expiry}, now is {now}"
    );
    let (tls, signer) = mesh.tls_and_signer("storefront");
    let mut sf = gateway(mesh.gateway(0), tls).await.expect("connect");
    let mut ids = Vec::new();
    for i in 0..40u32 {
        let order = create_ok(
            &mut sf,
            signer.signed(
                CREATE_ORDER,
                mesh_tests::sample_order(&format!("rv-{i}"), i),
            ),
        )
        .await;
        ids.push(order.order_id);
    }
    // An oms client with an open connection, reading fine.
    let (oms_tls, oms_signer) = mesh.tls_and_signer("oms");
    let mut oms = gateway(mesh.gateway(0), oms_tls.clone())
        .await
        .expect("connect");
    oms.get_order(oms_signer.signed(GET_ORDER, get_order_request(&ids[0])))
        .await
        .expect("oms reads before revocation");

    // Revoke the oms client: its open connection is refused on its next request.
    let (oms_cert, _) = mesh.client_files("oms");
    let started = Instant::now();
    ok(&mesh.ctl(&["cert", "revoke", "--cert", oms_cert.to_str().expect("path")]));
    let refused_after = loop {
        match oms
            .get_order(oms_signer.signed(GET_ORDER, get_order_request(&ids[0])))
            .await
        {
            Err(s) if s.code() == tonic::Code::Unauthenticated => break started.elapsed(),
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "a revoked client is still served 5 s later: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("revoked client refused after {refused_after:?}");
    // A new connection with the revoked certificate fails, on every node.
    for node in 0..3 {
        let fresh = async {
            let mut c = gateway(mesh.gateway(node), oms_tls.clone()).await?;
            c.get_order(oms_signer.signed(GET_ORDER, get_order_request(&ids[0])))
                .await?;
            anyhow::Ok(())
        };
        assert!(
            fresh.await.is_err(),
            "node {node} serves a new connection with a revoked certificate"
        );
    }
    // Everyone else is unaffected.
    sf.create_order(signer.signed(CREATE_ORDER, mesh_tests::sample_order("rv-after", 1)))
        .await
        .expect("the storefront still writes");

    // A revoked auditor's open watch ends within seconds as well: it streamed on, with reveal
    // reasons opened, until the auditor disconnected.
    let (auditor_tls, _) = mesh.tls_and_signer("auditor");
    let channel = mesh_node::api::client::connect(mesh.gateway(0), "localhost", auditor_tls)
        .await
        .expect("connect");
    let mut watch = mesh_proto::v1::audit_client::AuditClient::new(channel)
        .watch(mesh_proto::v1::AuditWatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), watch.message())
            .await
            .is_err(),
        "the watch of a valid auditor ended by itself"
    );
    let (auditor_cert, _) = mesh.client_files("auditor");
    let started = Instant::now();
    ok(&mesh.ctl(&[
        "cert",
        "revoke",
        "--cert",
        auditor_cert.to_str().expect("path"),
    ]));
    loop {
        match tokio::time::timeout(Duration::from_secs(6), watch.message()).await {
            Err(_) => panic!("a revoked auditor's watch is still open 6 s later"),
            Ok(Ok(Some(_))) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "a revoked auditor's watch still streams 10 s later"
            ),
            Ok(Err(s)) => {
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
                assert!(s.message().contains("no longer accepted"), "{s:?}");
                break;
            }
            Ok(Ok(None)) => panic!("the watch ended without saying why"),
        }
    }
    eprintln!(
        "revoked auditor's watch ended after {:?}",
        started.elapsed()
    );

    // Revoke node n3: within seconds n1 and n2 refuse it, in both directions.
    let started = Instant::now();
    let out = ok(&mesh.ctl(&["cert", "revoke", "--node", "n3"]));
    assert!(out.contains("cut off"), "{out}");
    loop {
        let c = check_json(&mesh);
        let reach: Vec<(String, String)> = c["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|i| {
                i["check"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("reaches its peers"))
            })
            .map(|i| {
                (
                    i["check"].as_str().unwrap_or_default().to_owned(),
                    i["detail"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let cut = |node: &str, other: &str| {
            reach
                .iter()
                .any(|(check, detail)| check.contains(node) && detail.contains(other))
        };
        if cut("n1", "n3") && cut("n2", "n3") && cut("n3", "n1") && cut("n3", "n2") {
            assert!(
                !cut("n1", "n2") && !cut("n2", "n1"),
                "the other nodes lost each other: {reach:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "n3 is not cut off 10 s after its revocation: {reach:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("revoked node cut off after {:?}", started.elapsed());
    // The check names the failure and exits non-zero.
    let failed = mesh.ctl(&["check"]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "check passed with a revoked node"
    );
    // No node restarted for any of this.
    for i in 0..3 {
        let pid = mesh.pid(i);
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok(),
            "node {i} (pid {pid}) is gone"
        );
    }
}
