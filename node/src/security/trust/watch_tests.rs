//! Unit tests of `trust`.

use super::*;
use crate::security::pki::{CertificateAuthority, LeafSpec};
use std::time::Duration;

/// Without any push: a certificate rotated on disk is served after the next poll.
#[tokio::test]
async fn the_watch_loop_picks_up_a_rotated_certificate_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create("mesh.test", Duration::from_secs(3600)).unwrap();
    let id = Identity::Node {
        trust_domain: "mesh.test".into(),
        node_id: "n1".into(),
    };
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let issue = || {
        ca.issue(&LeafSpec::new(id.clone(), Duration::from_secs(3600)))
            .unwrap()
            .write(dir.path(), "n1")
            .unwrap()
    };
    issue();
    let files = TrustFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("n1.pem"),
        key: dir.path().join("n1.key"),
        crl: None,
        pushed_crl: dir.path().join("tls/crl.pem"),
    };
    let trust = Trust::load(files, id.clone(), None).unwrap();
    let before = trust.current().status.cert_serial.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(trust.clone().watch(Duration::from_millis(20), stop.clone()));
    issue();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while trust.current().status.cert_serial == before {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(trust.current().status.generation, 2);
    stop.cancel();
    task.await.unwrap();
}
