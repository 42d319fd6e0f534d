//! The audit trail through real processes: exactly one record per request with the right fields,
//! no PII in the audit store, tampering detected by `mesh-ctl audit verify` and by an independent
//! Python verifier, fail-closed reads, and a mesh-wide query.

use mesh_node::access::policy::{Method, Role};
use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER, REVEAL_FIELD};
use mesh_proto::v1::audit_client::AuditClient;
use mesh_proto::v1::{AuditQueryRequest, AuditRecord, ListCustomerOrdersRequest, OrderStatus};
use mesh_tests::{
    MeshHarness as _, NodeProcess, Pki, TestMesh, audit_query as query, contact_handle, contains,
    create_ok, get_order_request, local_trail, probe, read_tree, sample_order, within,
};
use std::path::Path;
use std::process::Command;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_for_every_role_leaves_exactly_one_record_and_no_pii() {
    within(120, async {
        let pki = Pki::new();
        let mut node = NodeProcess::start(&pki, "n1");
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let req = sample_order("audit-cust-1", 77);
        let order = create_ok(&mut sf, req.clone()).await;

        let handle = contact_handle(&node, &pki, &order.order_id).await;
        let target = probe::Target {
            order_id: order.order_id.clone(),
            customer_id: "audit-cust-1".into(),
            handle,
            purpose: "ndr-callback".into(),
            status: OrderStatus::Packed,
            reveal: "customer.phone".into(),
            new_customer: "audit-cust-2".into(),
        };

        // Every role calls every method once; what it was told is what the trail must say.
        let mut outcomes = Vec::new();
        for role in Role::ALL {
            let mut c = node.client(&pki.client_named(role, "probe")).await;
            for method in Method::ALL {
                let code = match probe::call(&mut c, None, method, &target).await {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                };
                outcomes.push((role, method, code));
            }
        }
        let records = local_trail(&node, &pki, "").await;
        let code_name = |c: Code| format!("{c:?}");
        for (role, method, code) in outcomes {
            let principal = format!("spiffe://{}/client/{role}/probe", mesh_tests::TRUST_DOMAIN);
            let mine: Vec<&AuditRecord> = records
                .iter()
                .filter(|r| r.principal == principal && r.action == method.path())
                .collect();
            assert_eq!(mine.len(), 1, "{role} {method}: {mine:?}");
            let r = mine[0];
            assert_eq!(r.role, role.as_str());
            if code == Code::Ok {
                assert_eq!(r.decision, "allow", "{role} {method}");
            } else {
                assert_eq!(r.decision, "deny", "{role} {method}");
                assert_eq!(
                    r.reason.replace('_', "").to_lowercase(),
                    code_name(code).to_lowercase(),
                    "{role} {method}"
                );
                assert!(r.fields.is_empty(), "{role} {method}");
            }
            // Denials for lack of the right are the role table's; every role gets some.
            if !mesh_node::access::policy::may_call(role, method) {
                assert_eq!(code, Code::PermissionDenied, "{role} {method}");
            }
        }
        // The oms read: subjects are keyed hashes, the purpose is kept, disclosed fields named.
        let oms_get = records
            .iter()
            .find(|r| r.role == "oms" && r.action == GET_ORDER && r.principal.ends_with("/probe"))
            .expect("oms read");
        assert_eq!(oms_get.purpose, "ndr-callback");
        // Keyed hashes: hex of 32 bytes, and not the plain SHA-256 of the id, which anyone could
        // compute from a guessable id (a length check alone cannot tell the two apart).
        use mesh_node::audit::chain::hash_line as sha256_hex;
        for (subject, id) in [
            (&oms_get.order, order.order_id.as_str()),
            (&oms_get.customer, "audit-cust-1"),
        ] {
            assert!(
                subject.len() == 64 && subject.bytes().all(|b| b.is_ascii_hexdigit()),
                "{subject}"
            );
            assert_ne!(
                *subject,
                sha256_hex(id.as_bytes()),
                "an unkeyed hash of {id}"
            );
        }
        assert!(oms_get.fields.contains(&"customer.address.city".to_owned()));
        for masked in ["customer.name", "customer.phone", "customer.address.line1"] {
            assert!(
                !oms_get.fields.contains(&masked.to_owned()),
                "oms sees {masked} masked or not at all: {:?}",
                oms_get.fields
            );
        }
        // A reveal records the field and the reason, code and words.
        let reveal = records
            .iter()
            .find(|r| {
                r.role == "oms" && r.action == REVEAL_FIELD && r.principal.ends_with("/probe")
            })
            .expect("oms reveal");
        assert_eq!(reveal.decision, "allow");
        assert_eq!(reveal.fields, vec!["customer.phone".to_owned()]);
        assert_eq!(reveal.purpose, "ndr-callback");
        assert_eq!(
            reveal.note,
            "buyer missed the delivery and asked for a call back"
        );
        // Querying is audited too.
        let again = local_trail(&node, &pki, mesh_node::api::audit::QUERY).await;
        assert!(!again.is_empty());
        // Only auditors may read the trail.
        let mut oms =
            AuditClient::new(node.channel(&pki.client(Role::Oms)).await.expect("connect"));
        let denied = oms
            .query(AuditQueryRequest {
                local_only: true,
                ..Default::default()
            })
            .await
            .expect_err("oms may not");
        assert_eq!(denied.code(), Code::PermissionDenied);

        node.stop();
        let disk = read_tree(&node.data_dir().join("audit"));
        let c = req.customer.expect("customer");
        for needle in [
            "audit-cust-1",
            "audit-cust-2",
            &c.name,
            &c.phone,
            c.phone.trim_start_matches("+91"),
            &c.email,
            &order.order_id,
        ] {
            assert!(
                !contains(&disk, needle.as_bytes()),
                "the audit store contains `{needle}`"
            );
        }
    })
    .await;
}

/// A node with some history, stopped (so its final checkpoint is written).
async fn node_with_history(pki: &Pki) -> NodeProcess {
    let mut node = NodeProcess::start(pki, "n1");
    let mut sf = node.client(&pki.client(Role::Storefront)).await;
    let mut oms = node.client(&pki.client(Role::Oms)).await;
    for i in 0..12u32 {
        let o = create_ok(&mut sf, sample_order(&format!("hist-{i}"), i)).await;
        oms.get_order(get_order_request(&o.order_id))
            .await
            .expect("read");
    }
    node.stop();
    node
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("segment-00000001.jsonl")
}

/// Gives every record another principal and re-links the chain with recomputed hashes; the new
/// head (hash) of each record, by seq.
fn rewrite_records(dir: &Path) -> std::collections::BTreeMap<u64, String> {
    let mut heads = std::collections::BTreeMap::new();
    edit_lines(dir, |l| {
        let mut prev = "0".repeat(64);
        for line in l.iter_mut() {
            let mut rec: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).expect("json");
            rec.insert(
                "principal".into(),
                "spiffe://mesh.test/client/oms/nobody".into(),
            );
            rec.insert("prev".into(), prev.clone().into());
            *line = serde_json::to_string(&rec).expect("json");
            prev = mesh_node::audit::chain::hash_line(line.as_bytes());
            heads.insert(rec["seq"].as_u64().expect("seq"), prev.clone());
        }
    });
    heads
}

/// Rewrites every record (see [`rewrite_records`]) and re-signs every checkpoint
/// of node n1 over the new heads with the key and certificate in `cert`/`key` (PEM files): what
/// someone who can rewrite the log would do with a key that is not n1's own.
fn rewrite_and_resign(dir: &Path, cert: &Path, key: &Path) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let heads = rewrite_records(dir);
    let pem = std::fs::read_to_string(cert).expect("cert");
    let der = b64
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .expect("pem body");
    let signer = mesh_node::security::proof::Signer::from_pem_file(key).expect("key");
    let path = dir.join("checkpoints.jsonl");
    let text = std::fs::read_to_string(&path).expect("checkpoints");
    let mut out = String::new();
    for line in text.lines() {
        let mut cp: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).expect("json");
        let seq = cp["seq"].as_u64().expect("seq");
        let ts = cp["ts"].as_i64().expect("ts");
        let head = heads[&seq].clone();
        let payload = mesh_node::audit::chain::checkpoint_payload("n1", seq, &head, ts);
        cp.insert("head".into(), head.into());
        cp.insert("sig".into(), b64.encode(signer.sign(&payload)).into());
        cp.insert("cert".into(), b64.encode(&der).into());
        out.push_str(&serde_json::to_string(&cp).expect("json"));
        out.push('\n');
    }
    std::fs::write(&path, out).expect("write checkpoints");
}

fn edit_lines(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(segment(dir)).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    std::fs::write(segment(dir), lines.join("\n") + "\n").expect("write");
}

fn ctl_verify(dir: &Path, ca: &Path) -> (Option<i32>, String) {
    let out = Command::new(mesh_tests::mesh_ctl_bin())
        .args(["audit", "verify", "--audit-dir"])
        .arg(dir)
        .arg("--ca")
        .arg(ca)
        .output()
        .expect("mesh-ctl audit verify");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn py_verify(dir: &Path, ca: &Path) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_owned();
    let out = Command::new(mesh_tests::python())
        .arg(root.join("tests/python/verify_audit.py"))
        .arg("--audit-dir")
        .arg(dir)
        .arg("--ca")
        .arg(ca)
        .output()
        .expect("python verifier");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "python verifier said: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_ctl_and_an_independent_verifier_detect_every_kind_of_tampering() {
    within(180, async {
        let pki = Pki::new();
        let node = node_with_history(&pki).await;
        let audit = node.data_dir().join("audit");
        let ca = pki.ca_cert();
        let (code, out) = ctl_verify(&audit, &ca);
        assert_eq!(code, Some(0), "pristine log: {out}");
        {
            let py = py_verify(&audit, &ca);
            assert_eq!(py["ok"], true, "{py}");
            assert!(py["records"].as_u64().expect("records") >= 24);
        }
        // Verified as another node's log, an intact log fails: another node's key cannot vouch.
        let out = Command::new(mesh_tests::mesh_ctl_bin())
            .args(["audit", "verify", "--node", "n2", "--audit-dir"])
            .arg(&audit)
            .arg("--ca")
            .arg(&ca)
            .output()
            .expect("verify as n2");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("log of node n2"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        type Tamper = Box<dyn Fn(&Path)>;
        // Keys a forger might hold: a CA of its own that names n1, an n1 certificate of the real
        // CA that was not valid when the checkpoints were signed, and n2's genuine key.
        let forger = tempfile::tempdir().expect("tempdir");
        let n1 = mesh_node::security::identity::Identity::Node {
            trust_domain: mesh_tests::TRUST_DOMAIN.into(),
            node_id: "n1".into(),
        };
        let own_ca = mesh_node::security::pki::CertificateAuthority::create(
            mesh_tests::TRUST_DOMAIN,
            std::time::Duration::from_secs(3600),
        )
        .expect("a forger's CA");
        let self_made = own_ca
            .issue(&mesh_node::security::pki::LeafSpec::new(
                n1.clone(),
                std::time::Duration::from_secs(3600),
            ))
            .expect("issue")
            .write(forger.path(), "n1-self-made")
            .expect("write");
        let mut lapsed = mesh_node::security::pki::LeafSpec::new(n1, std::time::Duration::ZERO);
        lapsed.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        lapsed.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let expired = pki.issue(&lapsed, "n1-expired");
        let n2 = pki.node("n2");
        let resigned = |cert: std::path::PathBuf, key: std::path::PathBuf| -> Tamper {
            Box::new(move |d| rewrite_and_resign(d, &cert, &key))
        };
        let cases: Vec<(&str, &str, Tamper)> = vec![
            (
                "re-hashed, re-signed by a self-made CA's n1",
                "signature invalid",
                resigned(self_made.0.clone(), self_made.1.clone()),
            ),
            (
                "re-hashed, re-signed by an expired n1 certificate",
                "signature invalid",
                resigned(expired.cert.clone(), expired.key.clone()),
            ),
            (
                "re-hashed, re-signed with n2's real key",
                "signature invalid",
                resigned(n2.cert.clone(), n2.key.clone()),
            ),
            (
                "flip a byte",
                "seq 6",
                Box::new(|d| edit_lines(d, |l| l[4] = l[4].replacen("\"allow\"", "\"allaw\"", 1))),
            ),
            (
                "delete a record",
                "seq 8",
                Box::new(|d| {
                    edit_lines(d, |l| {
                        l.remove(6);
                    })
                }),
            ),
            (
                "reorder two",
                "seq 5",
                Box::new(|d| edit_lines(d, |l| l.swap(3, 4))),
            ),
            (
                "truncate the tail",
                "truncated",
                Box::new(|d| {
                    edit_lines(d, |l| {
                        let n = l.len();
                        l.truncate(n - 3);
                    })
                }),
            ),
            (
                "re-hashed forgery",
                "rewritten",
                Box::new(|d| {
                    rewrite_records(d);
                }),
            ),
        ];
        for (what, needle, tamper) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            copy_dir(&audit, tmp.path());
            tamper(tmp.path());
            let (code, out) = ctl_verify(tmp.path(), &ca);
            assert_eq!(code, Some(1), "{what} not detected: {out}");
            assert!(
                out.contains(needle),
                "{what}: `{needle}` not named in {out}"
            );
            {
                assert_eq!(
                    py_verify(tmp.path(), &ca)["ok"],
                    false,
                    "the independent verifier missed: {what}"
                );
            }
        }
    })
    .await;
}

/// Deleting the oldest records up to a signed checkpoint leaves a chain that starts late but is
/// anchored: only retention may do that, and it says so in the trail (an `AuditPrune` record
/// naming the records it removed). Both verifiers refuse a late start no prune accounts for; before
/// this they passed it, so the oldest accesses could vanish unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_oldest_records_is_detected_by_both_verifiers() {
    within(180, async {
        let pki = Pki::new();
        // Two runs: the first ends with a signed checkpoint, the second appends after it.
        let mut node = node_with_history(&pki).await;
        node.spawn().expect("restart");
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        for i in 0..3u32 {
            let _ = oms
                .get_order(get_order_request(&format!("o1-0000-{i:020}")))
                .await;
        }
        node.stop();
        let audit = node.data_dir().join("audit");
        let ca = pki.ca_cert();
        assert_eq!(
            ctl_verify(&audit, &ca).0,
            Some(0),
            "the intact log verifies"
        );
        let checkpoints: Vec<u64> = std::fs::read_to_string(audit.join("checkpoints.jsonl"))
            .expect("checkpoints")
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect();
        let records = std::fs::read_to_string(segment(&audit))
            .expect("segment")
            .lines()
            .count() as u64;
        let cut = *checkpoints
            .iter()
            .find(|s| **s > 1 && **s < records)
            .expect("a checkpoint inside the log (the first run's last)");
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_dir(&audit, tmp.path());
        edit_lines(tmp.path(), |l| {
            l.drain(..usize::try_from(cut).expect("small"));
        });
        let (code, out) = ctl_verify(tmp.path(), &ca);
        assert_eq!(
            code,
            Some(1),
            "records 1-{cut} deleted, not detected: {out}"
        );
        assert!(
            out.contains("AuditPrune"),
            "the failure names what is missing: {out}"
        );
        {
            assert_eq!(
                py_verify(tmp.path(), &ca)["ok"],
                false,
                "the independent verifier missed the deleted records 1-{cut}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_record_cannot_be_written_reads_are_refused_and_return_nothing() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start_with_env(&pki, "n1", &[("DSM_FAULT_POINT", "audit-append")]);
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        let status = sf
            .create_order(sample_order("fail-closed", 1))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("audit"), "{}", status.message());
        let mut oms = node.client(&pki.client(Role::Oms)).await;
        let status = oms
            .list_customer_orders(ListCustomerOrdersRequest {
                customer_id: "fail-closed".into(),
                purpose: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_through_any_gateway_merges_every_nodes_trail() {
    within(120, async {
        let mesh = TestMesh::start(3);
        for (i, node) in mesh.nodes.iter().enumerate() {
            let customer = mesh.customer_on(i, "trail");
            node.client(&mesh.pki.client(Role::Storefront))
                .await
                .create_order(sample_order(&customer, 1))
                .await
                .expect("create on owner");
        }
        let records = mesh_tests::mesh_query(
            &mesh.nodes[0],
            &mesh.pki,
            &["n1", "n2", "n3"],
            AuditQueryRequest {
                action: CREATE_ORDER.into(),
                ..Default::default()
            },
        )
        .await;
        let nodes: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert!(
            records
                .windows(2)
                .all(|w| w[0].ts_unix_ms <= w[1].ts_unix_ms),
            "merged in time order"
        );

        // A proof for any node does not go mesh-wide: each member needs one naming it.
        let auditor = mesh.pki.client(Role::Auditor);
        let signer = auditor.signer();
        let q = AuditQueryRequest::default();
        let refused = AuditClient::new(mesh.nodes[0].channel(&auditor).await.expect("connect"))
            .query(signer.signed(mesh_node::api::audit::QUERY, q.clone()))
            .await
            .expect_err("a query without member proofs");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("per member"), "{refused:?}");

        // A breached n2 passes the auditor's call on to n3 before answering it: with the proof it
        // received (for n2), or with one for any node, n3 answers nothing. Before, each proof
        // covered only method and body, and every member returned its trail to n2.
        let breached = mesh_tests::stolen_transport(&mesh.pki.node("n2"));
        let to_n3 = mesh.layout.member("n3").expect("n3").clone();
        let chain: Vec<Vec<u8>> =
            mesh_node::security::tls::TlsMaterial::load(&auditor.ca, &auditor.cert, &auditor.key)
                .expect("material")
                .chain
                .iter()
                .map(|d| d.to_vec())
                .collect();
        let body = prost::Message::encode_to_vec(&q);
        let ask = |audience: &str| {
            let header = signer.proof_header_for(audience, mesh_node::api::audit::QUERY, &body);
            let proof = mesh_proto::v1::ClientProof {
                chain: chain.clone(),
                ..mesh_node::security::proof::parse_header(&header).expect("header")
            };
            let req = mesh_proto::v1::PeerRequest {
                deadline_unix_ms: 0,
                body: Some(mesh_proto::v1::peer_request::Body::Call(
                    mesh_proto::v1::ForwardedCall {
                        method: mesh_node::api::audit::QUERY.into(),
                        request: body.clone(),
                        proof: Some(proof),
                    },
                )),
            };
            let (breached, to_n3) = (&breached, &to_n3);
            async move {
                breached
                    .call(
                        to_n3,
                        req,
                        std::time::Instant::now() + std::time::Duration::from_secs(10),
                    )
                    .await
                    .expect("n3 answers")
                    .result
            }
        };
        use mesh_proto::v1::peer_response::Result as PeerResult;
        for audience in ["n2", ""] {
            match ask(audience).await {
                Some(PeerResult::Status(s)) => {
                    assert_eq!(s.code, Code::Unauthenticated as i32, "{}", s.message);
                }
                Some(PeerResult::Response(_)) => {
                    panic!("n3 sent its trail for a proof for `{audience}` passed on by n2")
                }
                other => panic!("n3 answered a proof for `{audience}` with {other:?}"),
            }
        }
        // The auditor's proof for n3 is what n3 answers (so the refusals above are about the
        // audience, not the shape of the call).
        assert!(
            matches!(ask("n3").await, Some(PeerResult::Response(_))),
            "n3 refused its own proof"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_records_as_they_are_written() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let mut client = AuditClient::new(
            node.channel(&pki.client(Role::Auditor))
                .await
                .expect("connect"),
        );
        let mut live = client
            .watch(mesh_proto::v1::AuditWatchRequest {
                action: CREATE_ORDER.into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        sf.create_order(sample_order("watched", 1))
            .await
            .expect("create");
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), live.message())
            .await
            .expect("a record within 5s")
            .expect("stream")
            .expect("record");
        assert_eq!(
            (r.action.as_str(), r.role.as_str(), r.decision.as_str()),
            (CREATE_ORDER, "storefront", "allow")
        );
        assert_eq!(
            mesh_node::audit::chain::hash_line(r.line.as_bytes()).len(),
            64,
            "the exact stored line comes along"
        );
        // A refused watch is refused and recorded too.
        let mut oms =
            AuditClient::new(node.channel(&pki.client(Role::Oms)).await.expect("connect"));
        let denied = oms
            .watch(mesh_proto::v1::AuditWatchRequest::default())
            .await
            .expect_err("oms may not watch");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let refusals = query(
            &node,
            &pki,
            AuditQueryRequest {
                local_only: true,
                action: mesh_node::api::audit::WATCH.into(),
                decision: "deny".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        assert_eq!(refusals[0].role, "oms");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_past_retention_keeps_the_rest_verifiable() {
    within(120, async {
        let pki = Pki::new();
        let mut node = NodeProcess::start_with_env(
            &pki,
            "n1",
            &[
                ("DSM_AUDIT_RETENTION", "2s"),
                ("DSM_AUDIT_SEGMENT_BYTES", "2048"),
            ],
        );
        let mut sf = node.client(&pki.client(Role::Storefront)).await;
        for i in 0..30u32 {
            sf.create_order(sample_order(&format!("old-{i}"), i))
                .await
                .expect("create");
        }
        let audit = node.data_dir().join("audit");
        assert!(audit.join("segment-00000001.jsonl").exists());
        // Old segments age past 2s; new traffic keeps the log moving while pruning runs.
        mesh_tests::assert_eventually!(
            std::time::Duration::from_secs(30),
            {
                let _ = sf.create_order(sample_order("new", 1)).await;
                !audit.join("segment-00000001.jsonl").exists()
            },
            "the oldest segment was never pruned"
        );
        node.stop();
        let lines = mesh_node::audit::log::read_all(&audit).expect("read");
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        assert!(
            text.iter().any(|l| l.contains("\"action\":\"AuditPrune\"")),
            "pruning is itself recorded"
        );
        let (code, out) = ctl_verify(&audit, &pki.ca_cert());
        assert_eq!(code, Some(0), "the pruned log must still verify: {out}");
        {
            assert_eq!(py_verify(&audit, &pki.ca_cert())["ok"], true);
        }
    })
    .await;
}
