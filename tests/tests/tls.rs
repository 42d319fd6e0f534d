//! Who the gateway refuses, at the TLS layer, before any gRPC: no client certificate, a certificate
//! from another CA, an expired certificate, and a client that offers only TLS 1.2. A valid
//! certificate through the same code path is the control.

use mesh_node::access::policy::Role;
use mesh_node::security::identity::Identity;
use mesh_node::security::pki::LeafSpec;
use mesh_node::security::tls::TlsMaterial;
use mesh_proto::v1::order_gateway_client::OrderGatewayClient;
use mesh_tests::{Credentials, NodeProcess, Pki, sample_order, within};
use rustls::RootCertStore;
use std::sync::Arc;

fn roots(pki: &Pki) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for c in mesh_node::security::tls::load_certs(&pki.ca_cert()).expect("CA") {
        store.add(c).expect("root");
    }
    store
}

/// Tries a CreateOrder with `tls`; returns the error text if it was refused.
async fn attempt(node: &NodeProcess, tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let channel = mesh_node::api::client::connect(node.gateway, "localhost", tls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    OrderGatewayClient::new(channel)
        .create_order(sample_order("cust-tls", 1))
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn handshake_failures(node: &NodeProcess) -> u64 {
    let (_, metrics) = node.ops_get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("dsm_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("handshake failure counter")
}

fn tls13_with(
    pki: &Pki,
    creds: Option<&Credentials>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(mesh_node::security::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(pki));
    let mut cfg = match creds {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let m = TlsMaterial::load(&c.ca, &c.cert, &c.key).expect("material");
            builder
                .with_client_auth_cert(m.chain, m.key)
                .expect("client cert")
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_clients_and_accepts_a_good_one() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let good = pki.client(Role::Storefront);
        assert_eq!(
            attempt(&node, good.tls()).await,
            Ok(()),
            "control: a valid certificate works"
        );

        // No client certificate at all.
        let before = handshake_failures(&node);
        let err = attempt(&node, tls13_with(&pki, None, &[&rustls::version::TLS13]))
            .await
            .expect_err("no cert refused");
        assert!(!err.is_empty());

        // A certificate from another mesh's CA (same role, same trust domain name).
        let foreign = Pki::new();
        let foreign_creds = foreign.client(Role::Storefront);
        let mixed = Credentials {
            ca: pki.ca_cert(),
            ..foreign_creds
        };
        attempt(&node, mixed.tls())
            .await
            .expect_err("foreign CA refused");

        // An expired certificate from the right CA.
        let id = Identity::Client {
            trust_domain: pki.ca.trust_domain().into(),
            role: Role::Storefront,
            name: "expired".into(),
        };
        let mut spec = LeafSpec::new(id, std::time::Duration::from_secs(3600));
        spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3);
        spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let expired = pki.issue(&spec, "expired");
        attempt(&node, expired.tls())
            .await
            .expect_err("expired refused");

        // A client that offers only TLS 1.2, with a valid certificate.
        attempt(
            &node,
            tls13_with(&pki, Some(&good), &[&rustls::version::TLS12]),
        )
        .await
        .expect_err("TLS 1.2 refused");

        mesh_tests::assert_eventually!(
            std::time::Duration::from_secs(5),
            handshake_failures(&node) >= before + 4,
            "node counted {} handshake failures, expected 4 more than {before}",
            handshake_failures(&node)
        );
        // The control still works afterwards, and only its one order exists.
        assert_eq!(attempt(&node, good.tls()).await, Ok(()));
    })
    .await;
}

/// What the handshake actually agrees, not what the provider lists: the gateway negotiates the
/// hybrid post-quantum group X25519MLKEM768 with a mesh client, over TLS 1.3. And the mesh CA
/// issues no certificate for another trust domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_negotiates_x25519mlkem768_and_the_ca_issues_for_its_trust_domain_only() {
    within(60, async {
        let pki = Pki::new();
        let node = NodeProcess::start(&pki, "n1");
        let good = pki.client(Role::Storefront);
        let tcp = tokio::net::TcpStream::connect(node.gateway)
            .await
            .expect("tcp");
        let connector = tokio_rustls::TlsConnector::from(good.tls());
        let tls = connector
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .expect("handshake");
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .expect("a key exchange group")
            .name();
        assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        let id = Identity::Client {
            trust_domain: "elsewhere.test".into(),
            role: Role::Storefront,
            name: "foreign-domain".into(),
        };
        // The mesh CA will not issue one (so no chain to the mesh CA can carry one); another CA's
        // certificates are refused in the handshake (`refuses_bad_clients_and_accepts_a_good_one`).
        let refused = pki
            .ca
            .issue(&LeafSpec::new(id, std::time::Duration::from_secs(3600)))
            .map(|_| ())
            .expect_err("the mesh CA issues for its own trust domain only");
        assert!(refused.to_string().contains("elsewhere.test"), "{refused}");
    })
    .await;
}
