//! Unit tests of `trust`.

use super::*;
use crate::security::pki::{CertificateAuthority, LeafSpec};
use std::time::Duration;

const TD: &str = "mesh.test";

fn node(id: &str) -> Identity {
    Identity::Node {
        trust_domain: TD.into(),
        node_id: id.into(),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
    trust: Arc<Trust>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&LeafSpec::new(node("n1"), Duration::from_secs(3600)))
        .unwrap()
        .write(dir.path(), "n1")
        .unwrap();
    let files = TrustFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("n1.pem"),
        key: dir.path().join("n1.key"),
        crl: Some(dir.path().join("crl.pem")),
        pushed_crl: dir.path().join("tls").join("crl.pem"),
    };
    let trust = Trust::load(files, node("n1"), None).unwrap();
    Setup { dir, ca, trust }
}

fn leaf(ca: &CertificateAuthority, id: &str) -> (String, Vec<u8>) {
    let issued = ca
        .issue(&LeafSpec::new(node(id), Duration::from_secs(3600)))
        .unwrap();
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    (issued.serial, der)
}

#[test]
fn a_pushed_crl_revokes_on_the_next_request_and_survives_a_reload() {
    let s = setup();
    let (serial, der) = leaf(&s.ca, "n2");
    assert_eq!(s.trust.admits(&[&der]), Ok(()));
    let crl =
        s.ca.crl_pem(1, &[(serial, time::OffsetDateTime::now_utc())])
            .unwrap();
    assert!(s.trust.install_crls(crl.as_bytes()).unwrap());
    assert!(s.trust.admits(&[&der]).unwrap_err().contains("Revoked"));
    assert_eq!(s.trust.current().status.revoked, 1);
    // Stored in the data directory: a reload (or a restart) keeps it.
    assert!(!s.trust.reload().unwrap());
    assert!(s.trust.admits(&[&der]).is_err());
    // An older list from the same CA does not undo it.
    let older = s.ca.crl_pem(0, &[]).unwrap();
    s.trust.install_crls(older.as_bytes()).unwrap();
    assert!(s.trust.admits(&[&der]).is_err());
}

#[test]
fn a_crl_from_another_ca_is_refused_and_changes_nothing() {
    let s = setup();
    let (serial, der) = leaf(&s.ca, "n2");
    let other = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let forged = other
        .crl_pem(9, &[(serial, time::OffsetDateTime::now_utc())])
        .unwrap();
    let err = s.trust.install_crls(forged.as_bytes()).unwrap_err();
    assert!(
        err.to_string().contains("no CRL signed by a trusted CA"),
        "{err}"
    );
    assert_eq!(s.trust.admits(&[&der]), Ok(()));
    assert_eq!(s.trust.current().status.generation, 1);
}

#[test]
fn a_reload_that_would_break_the_node_is_refused_whole() {
    let s = setup();
    // A certificate for another node at the configured path.
    s.ca.issue(&LeafSpec::new(node("n9"), Duration::from_secs(3600)))
        .unwrap()
        .write(s.dir.path(), "n1")
        .unwrap();
    let err = s.trust.reload().unwrap_err();
    assert!(err.to_string().contains("this node is"), "{err}");
    assert_eq!(s.trust.current().status.generation, 1);
    assert!(!s.trust.last_error().is_empty());
    // A bundle without our CA: refused as well.
    let other = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    s.ca.issue(&LeafSpec::new(node("n1"), Duration::from_secs(3600)))
        .unwrap()
        .write(s.dir.path(), "n1")
        .unwrap();
    std::fs::write(s.dir.path().join("ca.pem"), other.cert_pem()).unwrap();
    assert!(s.trust.reload().is_err());
    // Both CAs (a rotation's overlap): accepted, and peers of either CA are admitted.
    std::fs::write(
        s.dir.path().join("ca.pem"),
        format!("{}{}", s.ca.cert_pem(), other.cert_pem()),
    )
    .unwrap();
    assert!(s.trust.reload().unwrap());
    assert!(s.trust.last_error().is_empty());
    let g = s.trust.current();
    assert_eq!((g.status.generation, g.status.trusted_cas), (2, 2));
    assert_eq!(s.trust.admits(&[&leaf(&other, "n2").1]), Ok(()));
    assert_eq!(s.trust.admits(&[&leaf(&s.ca, "n3").1]), Ok(()));
}
