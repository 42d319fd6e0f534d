//! The `crl` target: `Trust::install_crls` (PEM, DER, signatures) on what `Admin/PushCrl` carries.

use super::{Mutation, TD, apply, at, bytes_from, fuzz, mutations, node};
use crate::security::pki::{CertificateAuthority, LeafSpec};
use crate::security::proof::Signer;
use crate::security::trust::{Trust, TrustFiles};
use base64::Engine as _;
use proptest::collection::vec;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(super) struct CrlFixture {
    pub(super) ca: CertificateAuthority,
    /// The CA's key, to sign edited lists as only the CA could.
    pub(super) ca_signer: Signer,
    files: TrustFiles,
    pub(super) trust: Arc<Trust>,
    serials: Vec<String>,
    _dir: tempfile::TempDir,
}

pub(super) fn crl_fixture() -> CrlFixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    ca.save_cert_and_key(&dir.path().join("ca")).unwrap();
    let ca_signer =
        Signer::from_pem(&std::fs::read(dir.path().join("ca").join("ca.key")).unwrap()).unwrap();
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
    let trust = Trust::load(files.clone(), node("n1"), None).unwrap();
    let serials = (0..3)
        .map(|i| {
            ca.issue(&LeafSpec::new(
                node(&format!("p{i}")),
                Duration::from_secs(3600),
            ))
            .unwrap()
            .serial
        })
        .collect();
    CrlFixture {
        ca,
        ca_signer,
        files,
        trust,
        serials,
        _dir: dir,
    }
}

/// The header and content lengths of the DER element at the start of `der`.
fn der_element(der: &[u8]) -> Option<(usize, usize)> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(2 + i)?);
    }
    Some((2 + n, len))
}

fn der_header(tag: u8, len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![tag, len as u8];
    }
    let bytes: Vec<u8> = (len as u32)
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    [vec![tag, 0x80 | bytes.len() as u8], bytes].concat()
}

/// A CRL's to-be-signed part and signature algorithm.
pub(super) fn crl_parts(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (h, _) = der_element(der)?;
    let body = der.get(h..)?;
    let (th, tl) = der_element(body)?;
    let tbs = body.get(..th + tl)?.to_vec();
    let rest = body.get(th + tl..)?;
    let (ah, al) = der_element(rest)?;
    Some((tbs, rest.get(..ah + al)?.to_vec()))
}

/// A CRL with this to-be-signed part, signed by the CA.
pub(super) fn crl_signed(signer: &Signer, tbs: &[u8], alg: &[u8]) -> Vec<u8> {
    let sig = signer.sign(tbs);
    let bits = [der_header(0x03, sig.len() + 1), vec![0], sig].concat();
    let body = [tbs, alg, &bits].concat();
    [der_header(0x30, body.len()), body].concat()
}

#[derive(Debug, Clone)]
enum CrlInput {
    /// PEM text, mutated (signatures break unless only the armour changed).
    Pem(Vec<u8>),
    /// A real list's to-be-signed part mutated, signed by the CA, then PEM.
    Resigned(usize, Vec<Mutation>),
    /// A list the CA makes: a number, revoked serials (hex of these bytes) and times.
    Made(u64, Vec<(Vec<u8>, i64)>),
    /// Several inputs in one PEM file.
    Concat(Vec<CrlInput>),
}

fn crl_input(pem_seeds: Vec<Vec<u8>>) -> impl Strategy<Value = CrlInput> {
    let leaf = prop_oneof![
        4 => bytes_from(pem_seeds).prop_map(CrlInput::Pem),
        3 => (any::<usize>(), mutations()).prop_map(|(i, m)| CrlInput::Resigned(i, m)),
        2 => (
            prop_oneof![0..5u64, any::<u64>()],
            vec((vec(any::<u8>(), 0..22), -62_135_596_800..253_402_300_799i64), 0..3)
        )
            .prop_map(|(n, r)| CrlInput::Made(n, r)),
    ];
    leaf.prop_recursive(1, 4, 3, |inner| vec(inner, 2..4).prop_map(CrlInput::Concat))
}

fn crl_bytes(f: &CrlFixture, ders: &[Vec<u8>], input: &CrlInput) -> Vec<u8> {
    match input {
        CrlInput::Pem(b) => b.clone(),
        CrlInput::Resigned(i, ms) => {
            let der = &ders[at(i, ders.len())];
            let Some((tbs, alg)) = crl_parts(der) else {
                return Vec::new();
            };
            let tbs = apply(ders, tbs, ms);
            pem("X509 CRL", &crl_signed(&f.ca_signer, &tbs, &alg)).into_bytes()
        }
        CrlInput::Made(number, revoked) => {
            let revoked: Vec<(String, time::OffsetDateTime)> = revoked
                .iter()
                .filter_map(|(serial, at)| {
                    Some((
                        hex::encode(serial),
                        time::OffsetDateTime::from_unix_timestamp(*at).ok()?,
                    ))
                })
                .collect();
            f.ca.crl_pem(*number, &revoked)
                .map(String::into_bytes)
                .unwrap_or_default()
        }
        CrlInput::Concat(parts) => parts.iter().flat_map(|p| crl_bytes(f, ders, p)).collect(),
    }
}

#[test]
fn fuzz_crl_never_panics() {
    let f = crl_fixture();
    let now = time::OffsetDateTime::now_utc();
    let other = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    let pems: Vec<String> = vec![
        f.ca.crl_pem(1, &[]).unwrap(),
        f.ca.crl_pem(2, &[(f.serials[0].clone(), now)]).unwrap(),
        f.ca.crl_pem(
            3,
            &f.serials
                .iter()
                .map(|s| (s.clone(), now))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
        other.crl_pem(9, &[(f.serials[1].clone(), now)]).unwrap(),
    ];
    let ders: Vec<Vec<u8>> = pems
        .iter()
        .map(|p| {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(p.as_bytes())
                .unwrap()
                .to_vec()
        })
        .collect();
    let mut seeds: Vec<Vec<u8>> = pems.iter().map(|p| p.clone().into_bytes()).collect();
    seeds.push(format!("{}{}", pems[1], pems[3]).into_bytes());
    fuzz("crl", crl_input(seeds), |input| {
        let bytes = crl_bytes(&f, &ders, &input);
        // Each case starts from the same state: no pushed list.
        if f.files.pushed_crl.exists() {
            std::fs::remove_file(&f.files.pushed_crl).unwrap();
            let reset = f.trust.reload();
            prop_assert!(reset.is_ok(), "{:?}", reset);
        }
        let installed = f.trust.install_crls(&bytes);
        if installed.is_ok() || f.files.pushed_crl.exists() {
            // What was stored lets the node reload and restart with it.
            let reloaded = f.trust.reload();
            prop_assert!(
                reloaded.is_ok(),
                "install_crls answered {:?}, then the stored list breaks reload: {:?}",
                installed,
                reloaded
            );
            let restarted = Trust::load(f.files.clone(), node("n1"), None);
            prop_assert!(restarted.is_ok(), "{:?}", restarted.err());
        }
        Ok(())
    });
}

pub(super) fn first_der_crl(pem_text: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem_text.as_bytes())
        .unwrap()
        .to_vec()
}

// ---- Regressions: crashes the target found, as minimal inputs ----

/// Found by `fuzz_crl_never_panics`: a CRL signed by the mesh CA that revokes a certificate as of
/// a time before 1970 (here 1969-12-31T23:59:59Z, as `mesh-ctl` writes it from a `revoked.json`
/// entry with a negative `at`). `Trust::install_crls` (`security/trust.rs`) checks pushed lists
/// with x509-parser, which accepts it, stores and syncs it, and only then reloads: the TLS stack
/// (webpki) refuses the list, `install_crls` answers an error, but the list stays stored, so
/// every later reload fails and the node no longer starts (`Trust::load` fails the same way).
#[test]
fn regression_crl_dated_before_1970_is_stored_then_breaks_reload() {
    let f = crl_fixture();
    let at = time::OffsetDateTime::from_unix_timestamp(-1).unwrap();
    let crl = f.ca.crl_pem(1, &[(f.serials[0].clone(), at)]).unwrap();
    let _ = f.trust.install_crls(crl.as_bytes());
    assert!(f.trust.reload().is_ok(), "{}", f.trust.last_error());
    assert!(Trust::load(f.files.clone(), node("n1"), None).is_ok());
}

/// Found by `fuzz_crl_never_panics` too, the same fault with another trigger: a version 1 CRL
/// (no `version` field, as `openssl ca -gencrl` writes without CRL extensions) signed by the mesh
/// CA. x509-parser accepts it, webpki refuses it (a parse error); it stays stored.
#[test]
fn regression_crl_version_1_is_stored_then_breaks_reload() {
    let f = crl_fixture();
    let der = first_der_crl(&f.ca.crl_pem(1, &[]).unwrap());
    let (tbs, alg) = crl_parts(&der).unwrap();
    let (h, _) = der_element(&tbs).unwrap();
    // The TBS starts with `version INTEGER 1` (v2) and ends with `[0] crlExtensions`: drop both.
    assert_eq!(&tbs[h..h + 3], &[0x02, 0x01, 0x01]);
    let mut content = Vec::new();
    let mut rest = &tbs[h + 3..];
    while !rest.is_empty() {
        let (eh, el) = der_element(rest).unwrap();
        if rest[0] != 0xa0 {
            content.extend_from_slice(&rest[..eh + el]);
        }
        rest = &rest[eh + el..];
    }
    let v1 = [der_header(0x30, content.len()), content].concat();
    let crl = pem("X509 CRL", &crl_signed(&f.ca_signer, &v1, &alg));
    let _ = f.trust.install_crls(crl.as_bytes());
    assert!(f.trust.reload().is_ok(), "{}", f.trust.last_error());
    assert!(Trust::load(f.files.clone(), node("n1"), None).is_ok());
}
