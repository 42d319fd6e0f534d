//! The mesh through real processes and real QUIC: routing through any gateway, shards on disk,
//! containment of a stolen node identity, refusals at the peer port, layouts, and node loss.

use mesh_node::access::policy::{Method, Role};
use mesh_node::api::gateway::{CREATE_ORDER, GET_ORDER, LIST_CUSTOMER_ORDERS, UPDATE_ORDER_STATUS};
use mesh_node::cluster::layout::Layout;
use mesh_node::cluster::transport::PeerTransport;
use mesh_node::security::control_key::ControlKey;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::LeafSpec;
use mesh_node::security::proof::{Signer, parse_header};
use mesh_node::security::tls::TlsMaterial;
use mesh_proto::v1::admin_client::AdminClient;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    ApplyLayoutRequest, ClientProof, ForwardedCall, GetOrderRequest, GetStatusRequest,
    ListCustomerOrdersRequest, PeerRequest, Ping, UpdateOrderStatusRequest,
};
use mesh_tests::{
    Credentials, GatewayClient, MeshHarness as _, TestMesh, create_ok, get_order_request,
    local_trail, orders_written_anywhere_are_read_everywhere, sample_order, stolen_transport,
    within,
};
use prost::Message as _;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// The DER chain of a credential, as a client presents it in TLS.
fn chain_of(c: &Credentials) -> Vec<Vec<u8>> {
    TlsMaterial::load(&c.ca, &c.cert, &c.key)
        .expect("material")
        .chain
        .iter()
        .map(|d| d.to_vec())
        .collect()
}

/// A proof for `request` to `method`, signed by `signer`, claiming `chain`.
fn proof_for(signer: &Signer, chain: &[Vec<u8>], method: &str, request: &[u8]) -> ClientProof {
    let parsed = parse_header(&signer.proof_header(method, request)).expect("header");
    ClientProof {
        chain: chain.to_vec(),
        ..parsed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_created_through_any_gateway_are_readable_through_every_gateway() {
    within(120, async {
        let mut mesh = TestMesh::start(3);
        let sf = mesh.pki.client(Role::Storefront);
        let oms = mesh.pki.client(Role::Oms);
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut storefronts = Vec::new();
        let mut omses = Vec::new();
        for n in &mesh.nodes {
            storefronts.push(n.client(&sf).await);
            omses.push(n.client(&oms).await);
        }
        let mut created = Vec::new();
        for i in 0..30u32 {
            let customer = format!("mesh-cust-{i}");
            let via = i as usize % 3;
            let order = storefronts[via]
                .create_order(sf_sign.signed(CREATE_ORDER, sample_order(&customer, i)))
                .await
                .unwrap_or_else(|s| panic!("create via n{}: {s:?}", via + 1))
                .into_inner()
                .order
                .expect("order");
            created.push((order.order_id, customer));
        }
        for (order_id, customer) in &created {
            for (g, client) in omses.iter_mut().enumerate() {
                let got = client
                    .get_order(oms_sign.signed(GET_ORDER, get_order_request(order_id)))
                    .await
                    .unwrap_or_else(|s| panic!("read {order_id} via n{}: {s:?}", g + 1))
                    .into_inner()
                    .order
                    .expect("order");
                assert_eq!(&got.customer_id, customer);
                assert_eq!(
                    got.customer.expect("customer").phone.len(),
                    13,
                    "projected for oms (masked)"
                );
            }
        }
        // A forwarded update and a forwarded stream.
        let (order_id, customer) = &created[0];
        let via = (mesh.owner_of_customer(customer) + 1) % 3;
        omses[via]
            .update_order_status(oms_sign.signed(
                UPDATE_ORDER_STATUS,
                UpdateOrderStatusRequest {
                    order_id: order_id.clone(),
                    status: 2,
                    ..Default::default()
                },
            ))
            .await
            .expect("forwarded update");
        let mut stream = omses[via]
            .list_customer_orders(oms_sign.signed(
                LIST_CUSTOMER_ORDERS,
                ListCustomerOrdersRequest {
                    customer_id: customer.clone(),
                    purpose: String::new(),
                },
            ))
            .await
            .expect("forwarded list")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("stream")
            .expect("one order")
            .order
            .expect("order");
        assert_eq!(first.status, 2);

        // Each node's disk holds exactly the partitions the layout gives it, and all orders exist once.
        let mut total = 0;
        for node in &mut mesh.nodes {
            node.stop();
            let inv = node.inspect();
            let held: BTreeSet<u16> = inv["partitions"]
                .as_object()
                .expect("partitions")
                .keys()
                .map(|k| k.parse().expect("p"))
                .collect();
            let owned: BTreeSet<u16> = mesh
                .layout
                .partitions_of(&node.id)
                .iter()
                .map(|p| p.get())
                .collect();
            assert!(
                held.is_subset(&owned),
                "{} holds partitions it does not own: {:?}",
                node.id,
                held.difference(&owned).collect::<Vec<_>>()
            );
            assert_eq!(inv["unreadable"].as_u64(), Some(0));
            total += inv["orders"].as_u64().expect("orders");
            assert!(
                inv["orders"].as_u64().expect("orders") > 0,
                "{} got no orders: the shard spread is off",
                node.id
            );
        }
        assert_eq!(total, 30);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_without_a_client_proof_is_refused_with_a_clear_error() {
    within(60, async {
        let mesh = TestMesh::start(2);
        let sf = mesh.pki.client(Role::Storefront);
        let customer = mesh.customer_on(1, "unsigned");
        let mut via_other = mesh.nodes[0].client(&sf).await;
        let status = via_other
            .create_order(sample_order(&customer, 1))
            .await
            .expect_err("unsigned forward refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(
            status.message().contains("client proof") && status.message().contains("n2"),
            "{}",
            status.message()
        );
        // Straight to the owner, no proof is needed: the owner sees the certificate itself.
        let mut owner = mesh.nodes[1].client(&sf).await;
        owner
            .create_order(sample_order(&customer, 1))
            .await
            .expect("direct create");
    })
    .await;
}

async fn peer_call(
    t: &PeerTransport,
    mesh: &TestMesh,
    to: usize,
    call: ForwardedCall,
) -> Result<Vec<u8>, (i32, String)> {
    let member = mesh
        .layout
        .member(&mesh.nodes[to].id)
        .expect("member")
        .clone();
    let req = PeerRequest {
        deadline_unix_ms: 0,
        body: Some(Body::Call(call)),
    };
    match t
        .call(&member, req, Instant::now() + Duration::from_secs(5))
        .await
    {
        Ok(r) => match r.result {
            Some(PeerResult::Response(b)) => Ok(b),
            Some(PeerResult::Status(s)) => Err((s.code, s.message)),
            other => Err((-1, format!("{other:?}"))),
        },
        Err(e) => Err((-2, e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_identity_cannot_upgrade_any_roles_forwarded_request() {
    within(120, async {
        let mesh = TestMesh::start(2);
        let customer = mesh.customer_on(1, "upgrade");
        let sf = mesh.pki.client(Role::Storefront);
        let mut owner = mesh.nodes[1].client(&sf).await;
        let order = create_ok(&mut owner, sample_order(&customer, 9)).await;
        let get = GetOrderRequest {
            order_id: order.order_id.clone(),
            purpose: "ndr-callback".into(),
            fields: Vec::new(),
        }
        .encode_to_vec();
        let reveal = mesh_proto::v1::RevealFieldRequest {
            order_id: order.order_id.clone(),
            field: "customer.phone".into(),
            reason_code: "ndr-callback".into(),
            reason_text: "buyer asked for a call back".into(),
        }
        .encode_to_vec();
        let t = stolen_transport(&mesh.nodes[0].credentials);
        let oms = mesh.pki.client(Role::Oms);
        let oms_chain = chain_of(&oms);
        let call = |method: Method, request: &[u8], proof: ClientProof| ForwardedCall {
            method: method.path().into(),
            request: request.to_vec(),
            proof: Some(proof),
        };
        for role in Role::ALL {
            let creds = mesh.pki.client_named(role, "captured");
            let (s, chain) = (creds.signer(), chain_of(&creds));
            // The attacker holds a genuine GetOrder proof of this role, captured at node n1.
            let genuine = proof_for(&s, &chain, GET_ORDER, &get);
            // Re-aimed at a stronger method, or re-labelled with an oms certificate: refused.
            for (method, body) in [
                (Method::RevealField, reveal.as_slice()),
                (Method::ResolveContactHandle, get.as_slice()),
                (Method::ListCustomerOrders, get.as_slice()),
            ] {
                let err = peer_call(&t, &mesh, 1, call(method, body, genuine.clone()))
                    .await
                    .expect_err("re-aimed");
                // Refused by the proof check, or (when the re-read body names a partition this
                // node does not serve) sent back unopened before it.
                let sent_back =
                    err.0 == Code::Unavailable as i32 && err.1.contains("is served by node");
                assert!(
                    err.1.contains("signature") || sent_back,
                    "{role} {method}: {err:?}"
                );
            }
            let relabelled = ClientProof {
                chain: oms_chain.clone(),
                ..genuine.clone()
            };
            let err = peer_call(&t, &mesh, 1, call(Method::GetOrder, &get, relabelled))
                .await
                .expect_err("relabelled");
            assert!(err.1.contains("signature"), "{role}: {err:?}");
            // The genuine request itself is served as exactly this role, or refused as it.
            match peer_call(&t, &mesh, 1, call(Method::GetOrder, &get, genuine)).await {
                Ok(bytes) => {
                    let o = mesh_proto::v1::GetOrderResponse::decode(bytes.as_slice())
                        .expect("decode")
                        .order
                        .expect("order");
                    assert_eq!(o.view.expect("view").role, role.as_str());
                    assert!(mesh_node::access::policy::may_call(role, Method::GetOrder));
                }
                Err((code, msg)) => {
                    assert_eq!(code, Code::PermissionDenied as i32, "{role}: {msg}");
                    assert!(msg.contains(role.as_str()), "{role}: {msg}");
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_identity_cannot_read_or_widen_anything_on_other_shards() {
    within(120, async {
        let mut mesh = TestMesh::start(3);
        let sf = mesh.pki.client(Role::Storefront);
        let customer = mesh.customer_on(1, "victim");
        let mut owner = mesh.nodes[1].client(&sf).await;
        let order = create_ok(&mut owner, sample_order(&customer, 7)).await;
        // n1 holds data of its own too, so the offline check of its disk below has something to
        // look at (it passed over an empty set before).
        let own = mesh.customer_on(0, "attacker-shard");
        create_ok(&mut mesh.nodes[0].client(&sf).await, sample_order(&own, 8)).await;
        let get = get_order_request(&order.order_id);

        // The attacker holds node n1's certificate and key and speaks the peer protocol to n2.
        let a = mesh.nodes[0].credentials.clone();
        let t = stolen_transport(&a);
        let a_chain = chain_of(&a);
        let call = |method: &str, request: Vec<u8>, proof: Option<ClientProof>| ForwardedCall {
            method: method.into(),
            request,
            proof,
        };

        // 1. No client proof at all.
        let err = peer_call(&t, &mesh, 1, call(GET_ORDER, get.encode_to_vec(), None))
            .await
            .expect_err("refused");
        assert_eq!(err.0, Code::Unauthenticated as i32, "{err:?}");
        // 2. A proof signed with the stolen node key: valid chain, but a node is not a client role.
        let node_signer = a.signer();
        let proof = proof_for(&node_signer, &a_chain, GET_ORDER, &get.encode_to_vec());
        let err = peer_call(
            &t,
            &mesh,
            1,
            call(GET_ORDER, get.encode_to_vec(), Some(proof)),
        )
        .await
        .expect_err("refused");
        assert_eq!(err.0, Code::PermissionDenied as i32, "{err:?}");
        // 3. A proof claiming a client's chain but signed by the node key.
        let sf_chain = chain_of(&sf);
        let forged = proof_for(&node_signer, &sf_chain, GET_ORDER, &get.encode_to_vec());
        let err = peer_call(
            &t,
            &mesh,
            1,
            call(GET_ORDER, get.encode_to_vec(), Some(forged)),
        )
        .await
        .expect_err("refused");
        assert!(
            err.0 == Code::Unauthenticated as i32 && err.1.contains("signature"),
            "{err:?}"
        );
        // 4. A genuine storefront proof captured in transit: replayed, retargeted, or re-roled.
        let sf_signer = sf.signer();
        let genuine = proof_for(&sf_signer, &sf_chain, GET_ORDER, &get.encode_to_vec());
        let other = GetOrderRequest {
            order_id: mesh_node::domain::ids::OrderId::mint(
                order
                    .order_id
                    .parse::<mesh_node::domain::ids::OrderId>()
                    .expect("id")
                    .partition(),
            )
            .to_string(),
            purpose: String::new(),
            fields: Vec::new(),
        };
        let err = peer_call(
            &t,
            &mesh,
            1,
            call(GET_ORDER, other.encode_to_vec(), Some(genuine.clone())),
        )
        .await
        .expect_err("retargeted");
        assert!(err.1.contains("signature"), "{err:?}");
        let update = UpdateOrderStatusRequest {
            order_id: order.order_id.clone(),
            status: 8,
            ..Default::default()
        };
        let err = peer_call(
            &t,
            &mesh,
            1,
            call(
                UPDATE_ORDER_STATUS,
                update.encode_to_vec(),
                Some(genuine.clone()),
            ),
        )
        .await
        .expect_err("re-roled");
        assert!(err.1.contains("signature"), "{err:?}");
        let first = peer_call(
            &t,
            &mesh,
            1,
            call(GET_ORDER, get.encode_to_vec(), Some(genuine.clone())),
        )
        .await;
        let seen = mesh_proto::v1::GetOrderResponse::decode(
            first
                .expect("the genuine request itself is served")
                .as_slice(),
        )
        .expect("decode");
        assert_eq!(
            seen.order.expect("order").customer.expect("c").phone,
            "+91******0007",
            "served with the storefront's projection, never more"
        );
        let err = peer_call(
            &t,
            &mesh,
            1,
            call(GET_ORDER, get.encode_to_vec(), Some(genuine)),
        )
        .await
        .expect_err("replay");
        assert!(err.1.contains("replay"), "{err:?}");

        // A's own disk yields A's shard only; B's disk does not open with A's key.
        for node in &mut mesh.nodes {
            node.stop();
        }
        let inv = mesh.nodes[0].inspect();
        let owned: BTreeSet<u16> = mesh
            .layout
            .partitions_of("n1")
            .iter()
            .map(|p| p.get())
            .collect();
        let held = inv["partitions"].as_object().expect("partitions");
        assert!(!held.is_empty(), "n1's disk holds no partition: {inv}");
        for p in held.keys() {
            assert!(
                owned.contains(&p.parse::<u16>().expect("p")),
                "n1's disk holds partition {p} it does not own"
            );
        }
        let out = std::process::Command::new(mesh_tests::mesh_node_bin())
            .args(["inspect", "--data-dir"])
            .arg(mesh.nodes[1].data_dir())
            .arg("--key-file")
            .arg(mesh.nodes[0].key_file())
            .output()
            .expect("inspect");
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not match"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_everyone_but_member_nodes() {
    within(90, async {
        let mesh = TestMesh::start(2);
        let ping = || PeerRequest {
            deadline_unix_ms: 0,
            body: Some(Body::Ping(Ping {})),
        };
        let target = mesh.layout.member("n2").expect("n2").clone();
        let deadline = || Instant::now() + Duration::from_secs(4);
        let try_with = |creds: &Credentials, client_auth: bool| {
            let m = TlsMaterial::load(&creds.ca, &creds.cert, &creds.key).expect("material");
            let server =
                mesh_node::security::tls::server_config(&m, &[mesh_node::cluster::transport::ALPN])
                    .expect("server");
            let client = if client_auth {
                mesh_node::security::tls::client_config(&m, &[mesh_node::cluster::transport::ALPN])
                    .expect("client")
            } else {
                let mut roots = rustls::RootCertStore::empty();
                for c in &m.roots {
                    roots.add(c.clone()).expect("root");
                }
                let mut cfg = rustls::ClientConfig::builder_with_provider(
                    mesh_node::security::tls::provider(),
                )
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_no_client_auth();
                cfg.alpn_protocols = vec![mesh_node::cluster::transport::ALPN.to_vec()];
                Arc::new(cfg)
            };
            PeerTransport::bind_with(
                "127.0.0.1:0".parse().expect("addr"),
                server,
                client,
                mesh_tests::TRUST_DOMAIN,
            )
            .expect("bind")
        };
        // Control: a member node's identity is served.
        let member = try_with(&mesh.nodes[0].credentials, true);
        member
            .call(&target, ping(), deadline())
            .await
            .expect("member n1 is served");

        let pki = &mesh.pki;
        let td = pki.ca.trust_domain().to_owned();
        let foreign = mesh_tests::Pki::new();
        let mut expired = LeafSpec::new(
            Identity::Node {
                trust_domain: td.clone(),
                node_id: "n1".into(),
            },
            Duration::from_secs(60),
        );
        expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cases: Vec<(&str, Credentials, bool)> = vec![
            ("no certificate", mesh.nodes[0].credentials.clone(), false),
            (
                "another CA",
                Credentials {
                    ca: pki.ca_cert(),
                    ..foreign.node("n1")
                },
                true,
            ),
            ("expired", pki.issue(&expired, "expired-n1"), true),
            ("not in the layout", pki.node("n9"), true),
            ("a client certificate", pki.client(Role::Oms), true),
        ];
        for (what, creds, auth) in cases {
            let t = try_with(&creds, auth);
            let result = t.call(&target, ping(), deadline()).await;
            assert!(result.is_err(), "{what}: the peer port answered {result:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_older_layouts_are_refused() {
    within(60, async {
        let mesh = TestMesh::start(2);
        let admin = mesh.pki.client(Role::Admin);
        let mut client = AdminClient::new(mesh.nodes[0].channel(&admin).await.expect("connect"));
        let status = client
            .get_status(GetStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!((status.node_id.as_str(), status.layout_version), ("n1", 1));
        assert_eq!(
            status.members.iter().map(|m| m.partitions).sum::<u32>(),
            u32::from(mesh_node::domain::ids::PARTITIONS)
        );
        assert!(status.members.iter().all(|m| m.reachable), "{status:?}");

        let control =
            mesh_node::security::pki::CertificateAuthority::load_control_key(&mesh.pki.ca_dir())
                .expect("control");
        let v2 = mesh.layout.next(mesh.layout.members.clone()).expect("v2");
        let (forger, _) = ControlKey::generate();
        let forged = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(v2.sign(&forger)),
            })
            .await
            .expect_err("forged");
        assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
        // Re-applying the layout a node runs is a no-op (an interrupted apply can be re-run); a
        // different layout with the same version is refused.
        let again = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(mesh.layout.sign(&control)),
            })
            .await
            .expect("the same layout again")
            .into_inner();
        assert_eq!(again.version, 1);
        let mut moved = mesh.layout.members.clone();
        moved[0].gateway_addr = "127.0.0.1:1".into();
        let other_v1 = Layout::initial(moved).expect("another v1");
        let replay = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(other_v1.sign(&control)),
            })
            .await
            .expect_err("same version");
        assert_eq!(replay.code(), Code::FailedPrecondition, "{replay:?}");
        let applied = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(v2.sign(&control)),
            })
            .await
            .expect("v2")
            .into_inner();
        assert_eq!(applied.version, 2);
        let older = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(mesh.layout.sign(&control)),
            })
            .await
            .expect_err("older");
        assert_eq!(older.code(), Code::FailedPrecondition);
        assert!(older.message().contains("not newer"), "{}", older.message());
        // A version that skips one is refused, naming the version to apply first.
        let v4 = v2
            .next(v2.members.clone())
            .and_then(|v3| v3.next(v3.members.clone()))
            .expect("v4");
        let skipped = client
            .apply_layout(ApplyLayoutRequest {
                layout: Some(v4.sign(&control)),
            })
            .await
            .expect_err("skips v3");
        assert_eq!(skipped.code(), Code::FailedPrecondition);
        assert!(
            skipped.message().contains("apply version 3 first"),
            "{}",
            skipped.message()
        );
        // Non-admins may not touch layouts.
        let mut oms = AdminClient::new(
            mesh.nodes[0]
                .channel(&mesh.pki.client(Role::Oms))
                .await
                .expect("connect"),
        );
        assert_eq!(
            oms.get_status(GetStatusRequest {})
                .await
                .expect_err("oms")
                .code(),
            Code::PermissionDenied
        );
        let _: &Layout = &v2;

        // Every administrative action is in the node's audit trail, refusals included.
        let seen: Vec<(String, String, String)> = local_trail(
            &mesh.nodes[0],
            &mesh.pki,
            mesh_node::api::admin::APPLY_LAYOUT,
        )
        .await
        .into_iter()
        .map(|r| (r.decision, r.reason, r.purpose))
        .collect();
        assert_eq!(
            seen,
            [
                (
                    "deny".to_owned(),
                    "PERMISSION_DENIED".to_owned(),
                    String::new()
                ),
                ("allow".to_owned(), String::new(), "layout v1".to_owned()),
                (
                    "deny".to_owned(),
                    "FAILED_PRECONDITION".to_owned(),
                    String::new()
                ),
                ("allow".to_owned(), String::new(), "layout v2".to_owned()),
                // Older and skipping.
                (
                    "deny".to_owned(),
                    "FAILED_PRECONDITION".to_owned(),
                    String::new()
                ),
                (
                    "deny".to_owned(),
                    "FAILED_PRECONDITION".to_owned(),
                    String::new()
                ),
            ]
        );
    })
    .await;
}

/// One order for a customer on each node's shard, all created through `entry`: (owner, order id).
async fn one_order_per_shard(
    mesh: &TestMesh,
    entry: &mut GatewayClient,
    signer: &Signer,
    salt: &str,
) -> Vec<(usize, String)> {
    let mut orders = Vec::new();
    for owner in 0..mesh.nodes.len() {
        let customer = mesh.customer_on(owner, salt);
        let o = entry
            .create_order(signer.signed(CREATE_ORDER, sample_order(&customer, owner as u32)))
            .await
            .unwrap_or_else(|s| panic!("create ({salt}): {s:?}"))
            .into_inner()
            .order
            .expect("order");
        orders.push((owner, o.order_id));
    }
    orders
}

/// A read of `order_id` that gives up after 5 s.
fn bounded_get(signer: &Signer, order_id: &str) -> tonic::Request<GetOrderRequest> {
    let mut req = signer.signed(GET_ORDER, get_order_request(order_id));
    req.set_timeout(Duration::from_secs(5));
    req
}

/// Reads each of `orders` through `reader`: node `lost`'s shard fails fast with UNAVAILABLE naming
/// the partition and the node; every other shard serves. `why` says how it was lost.
async fn assert_only_the_lost_shard_fails(
    reader: &mut GatewayClient,
    signer: &Signer,
    orders: &[(usize, String)],
    lost: usize,
    why: &str,
) {
    for (owner, order_id) in orders {
        let started = Instant::now();
        let result = reader.get_order(bounded_get(signer, order_id)).await;
        if *owner == lost {
            let Err(status) = result else {
                panic!("the shard {why} answered: it should fail");
            };
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains("partition")
                    && status.message().contains(&format!("n{}", lost + 1)),
                "{}",
                status.message()
            );
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "failed after {:?}, not fast",
                started.elapsed()
            );
        } else {
            result.unwrap_or_else(|s| panic!("shard of n{} should serve: {s:?}", owner + 1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_only_its_shard_fast_and_recovers_with_nothing_lost() {
    within(120, async {
        let mut mesh = TestMesh::start(3);
        let sf = mesh.pki.client(Role::Storefront);
        let oms = mesh.pki.client(Role::Oms);
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut entry = mesh.nodes[0].client(&sf).await;
        let orders = one_order_per_shard(&mesh, &mut entry, &sf_sign, "kill").await;
        mesh.nodes[2].kill9();
        let mut reader = mesh.nodes[0].client(&oms).await;
        assert_only_the_lost_shard_fails(&mut reader, &oms_sign, &orders, 2, "of the dead node")
            .await;
        mesh.nodes[2].spawn().expect("restart n3");
        let (_, dead_order) = &orders[2];
        mesh_tests::assert_eventually!(
            Duration::from_secs(20),
            reader
                .get_order(oms_sign.signed(GET_ORDER, get_order_request(dead_order)))
                .await
                .is_ok(),
            "n3's shard did not come back through n1"
        );
    })
    .await;
}

/// A network partition made by the transport's own link filter (`cluster::link_filter`), so it
/// runs without Docker: with the link n1-n3 cut, n1's gateway still serves its own and n2's shards,
/// fails n3's fast with UNAVAILABLE naming the shard, and once the link heals it serves n3's
/// shard again with nothing lost. The container tests cut a real network for the same guarantee.
#[tokio::test]
async fn a_cut_link_fails_only_the_shard_behind_it_and_heals_with_nothing_lost() {
    within(120, async {
        let links = tempfile::NamedTempFile::new().expect("link filter file");
        let links_path = links.path().display().to_string();
        let mesh = TestMesh::start_with(3, "info", &[("DSM_FAULT_LINKS", links_path.as_str())]);
        let sf = mesh.pki.client(Role::Storefront);
        let oms = mesh.pki.client(Role::Oms);
        let (sf_sign, oms_sign) = (sf.signer(), oms.signer());
        let mut entry = mesh.nodes[0].client(&sf).await;
        let orders = one_order_per_shard(&mesh, &mut entry, &sf_sign, "cut").await;
        let get = |order_id: &str| bounded_get(&oms_sign, order_id);
        std::fs::write(links.path(), "cut n1 n3\n").expect("cut the link");
        // The filter re-reads its file within 50 ms; wait until the cut shows, bounded.
        let mut reader = mesh.nodes[0].client(&oms).await;
        let behind_cut = orders[2].1.clone();
        mesh_tests::assert_eventually!(
            Duration::from_secs(5),
            reader.get_order(get(&behind_cut)).await.is_err(),
            "the cut link n1-n3 never took effect"
        );
        assert_only_the_lost_shard_fails(&mut reader, &oms_sign, &orders, 2, "behind the cut")
            .await;
        // n3 itself still serves its shard to a client that reaches it directly.
        let mut direct = mesh.nodes[2].client(&oms).await;
        direct
            .get_order(get(&behind_cut))
            .await
            .expect("n3 serves its own shard during the cut");
        std::fs::write(links.path(), "").expect("heal the link");
        mesh_tests::assert_eventually!(
            Duration::from_secs(20),
            reader.get_order(get(&behind_cut)).await.is_ok(),
            "n3's shard did not come back through n1 after the link healed"
        );
        for (_, order_id) in &orders {
            reader
                .get_order(get(order_id))
                .await
                .expect("every acknowledged order is readable after the partition");
        }
    })
    .await;
}

/// The scenario every harness runs (`mesh_tests::scenario`), here on node processes the harness
/// starts: written through every gateway, read through every gateway, and again after n3 is
/// killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_scenario_orders_written_anywhere_are_read_everywhere_on_processes() {
    within(120, async {
        let mut mesh = TestMesh::start(3);
        let written = orders_written_anywhere_are_read_everywhere(&mut mesh, "processes").await;
        assert_eq!(written.len(), 9);
    })
    .await;
}

/// A peer's reveal charge names a client identity of this mesh, of bounded length: a breached node
/// can no longer fill another node's ledger with arbitrary strings up to the message limit (it was
/// granted before), nor charge a node certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_charge_from_a_peer_must_name_a_client_of_this_mesh() {
    within(60, async {
        let mesh = TestMesh::start(2);
        let stolen = stolen_transport(&mesh.pki.node("n2"));
        let member = mesh.layout.member("n1").expect("member").clone();
        let charge = |principal: String| PeerRequest {
            deadline_unix_ms: 0,
            body: Some(Body::Charge(mesh_proto::v1::RevealCharge { principal })),
        };
        let ask = |principal: String| {
            let (stolen, member, req) = (&stolen, &member, charge(principal));
            async move {
                stolen
                    .call(member, req, Instant::now() + Duration::from_secs(5))
                    .await
                    .expect("n1 answers")
                    .result
            }
        };
        let client = format!(
            "spiffe://{}/client/support/agent-7",
            mesh_tests::TRUST_DOMAIN
        );
        assert!(
            matches!(ask(client).await, Some(PeerResult::Allowance(a)) if a.granted),
            "a charge for a client of this mesh is taken"
        );
        for bad in [
            "x".repeat(1 << 20),
            "not an identity".to_owned(),
            format!("spiffe://{}/node/n2", mesh_tests::TRUST_DOMAIN),
            "spiffe://elsewhere.test/client/support/agent-7".to_owned(),
        ] {
            match ask(bad.clone()).await {
                Some(PeerResult::Status(s)) => {
                    assert_eq!(s.code, Code::InvalidArgument as i32, "{}", s.message)
                }
                other => panic!("a charge for `{:.40}` was not refused: {other:?}", bad),
            }
        }
    })
    .await;
}

/// Sends `proof` for a GetOrder of `order` to node `to` as node `via` would forward it.
async fn forward_get(
    via: &PeerTransport,
    to: &mesh_node::cluster::layout::Member,
    order: &str,
    proof: ClientProof,
) -> Result<(), (i32, String)> {
    let req = PeerRequest {
        deadline_unix_ms: 0,
        body: Some(Body::Call(ForwardedCall {
            method: GET_ORDER.into(),
            request: get_order_request(order).encode_to_vec(),
            proof: Some(proof),
        })),
    };
    match via
        .call(to, req, Instant::now() + Duration::from_secs(10))
        .await
    {
        Ok(r) => match r.result {
            Some(PeerResult::Response(_)) => Ok(()),
            Some(PeerResult::Status(s)) => Err((s.code, s.message)),
            other => Err((-1, format!("{other:?}"))),
        },
        Err(e) => Err((-2, e.to_string())),
    }
}

/// A proof is spent once per mesh: a breached node that forwarded a client's GetOrder replays its
/// proof to the owner after the owner restarted (its replay cache was in memory) and to the
/// partition's next owner after a move. Both answered the order before; both refuse now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_proof_is_refused_after_the_owner_restarts_and_after_its_partition_moves() {
    within(240, async {
        let mut mesh = TestMesh::start(2);
        let v1 = mesh.layout_now();
        // v2 adds n3; the customer's partition is n2's in v1 and n3's in v2.
        let v2 = mesh_tests::with_member(&v1, "n3");
        // A partition that moves n2 -> n3.
        let customer = mesh_tests::customer_placed("spent", &[(&v1, "n2"), (&v2, "n3")]);
        let sf = mesh.pki.client(Role::Storefront);
        let order = create_ok(
            &mut mesh.nodes[1].client(&sf).await,
            sample_order(&customer, 1),
        )
        .await;
        let oms = mesh.pki.client(Role::Oms);
        let (signer, chain) = (oms.signer(), chain_of(&oms));
        let get = get_order_request(&order.order_id).encode_to_vec();
        let breached = stolen_transport(&mesh.pki.node("n1"));
        let n2 = v1.member("n2").expect("n2").clone();

        // Restart: spent, then the owner restarts, then replayed.
        let proof = proof_for(&signer, &chain, GET_ORDER, &get);
        forward_get(&breached, &n2, &order.order_id, proof.clone())
            .await
            .expect("the genuine request is served");
        let err = forward_get(&breached, &n2, &order.order_id, proof.clone())
            .await
            .expect_err("a replay");
        assert!(err.1.contains("replay"), "{err:?}");
        mesh.kill(1).await.expect("kill");
        mesh.restart(1).await.expect("restart");
        // The breached node's connection to n2 died with it: a new one.
        let breached = stolen_transport(&mesh.pki.node("n1"));
        let err = forward_get(&breached, &n2, &order.order_id, proof)
            .await
            .expect_err("replayed to the restarted owner");
        // Retryable: a genuine client signs again (and the breached node cannot).
        assert_eq!(err.0, Code::Unavailable as i32, "{err:?}");
        assert!(err.1.contains("before this node started"), "{err:?}");

        // Move: n3 is up, the proof is spent on n2, the partition moves to n3, then the proof is
        // replayed to n3 (which started before it was signed: its spent nonce refuses it).
        mesh.start_node("n3", &[]);
        let proof = proof_for(&signer, &chain, GET_ORDER, &get);
        forward_get(&breached, &n2, &order.order_id, proof.clone())
            .await
            .expect("the genuine request is served");
        let now = mesh.change_members(&["n1", "n2", "n3"]).await;
        let p = mesh_node::domain::ids::partition_of(&customer);
        assert_eq!(now.owner_of(p).node_id, "n3");
        let n3 = now.member("n3").expect("n3").clone();
        let err = forward_get(&breached, &n3, &order.order_id, proof)
            .await
            .expect_err("replayed to the new owner");
        assert_eq!(err.0, Code::Unauthenticated as i32, "{err:?}");
        assert!(err.1.contains("replay"), "{err:?}");
        // A fresh proof is served by the new owner.
        forward_get(
            &breached,
            &n3,
            &order.order_id,
            proof_for(&signer, &chain, GET_ORDER, &get),
        )
        .await
        .expect("a fresh proof at the new owner");
    })
    .await;
}
