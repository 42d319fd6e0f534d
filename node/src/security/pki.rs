//! The mesh PKI: a CA, and short-lived leaf certificates that carry a mesh identity.
//!
//! Shared by `mesh-ctl` (which issues) and the tests (which also mint deliberately bad
//! certificates). Keys are ECDSA P-256 through rcgen on aws-lc-rs. The CA key stays with the
//! operator (the CA directory or a Kubernetes Secret); nodes only ever see the CA certificate.

use crate::security::identity::{Identity, is_valid_trust_domain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The control key signs layouts; it lives beside the CA key, never on nodes.
pub(crate) const CONTROL_KEY_FILE: &str = "control.key";
/// Its public half, given to every node (`control_public_key`).
pub const CONTROL_PUB_FILE: &str = "control.pub";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("`{0}` is not a certificate serial number (hex)")]
    Serial(String),
    #[error(
        "{0} already exists; refusing to overwrite a CA (remove it first if you really mean to)"
    )]
    Exists(PathBuf),
    #[error("invalid trust domain `{0}`: use lowercase letters, digits, `.` and `-`")]
    TrustDomain(String),
    #[error("{0} is not a mesh CA certificate (no spiffe://<trust-domain> URI SAN)")]
    NotMeshCa(PathBuf),
    #[error("identity {identity} is in another trust domain than this CA ({ca})")]
    ForeignIdentity { identity: String, ca: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a secret (private key) readable by the owner only.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(io_err(path))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("system CSPRNG is available");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// The mesh certificate authority.
pub struct CertificateAuthority {
    trust_domain: String,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// What a leaf certificate is for and for how long.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub identity: Identity,
    /// DNS names a node answers to (server certificates). Ignored for clients.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A certificate valid from five minutes ago (clock skew) for `ttl`.
    pub fn new(identity: Identity, ttl: std::time::Duration) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        let (dns_names, ip_addresses) = match &identity {
            Identity::Node { node_id, .. } => (
                vec!["localhost".to_owned(), node_id.clone()],
                vec![IpAddr::from([127, 0, 0, 1])],
            ),
            _ => (Vec::new(), Vec::new()),
        };
        LeafSpec {
            identity,
            dns_names,
            ip_addresses,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::try_from(ttl).unwrap_or(Duration::days(1)),
        }
    }
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedCert {
    pub identity: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>.key` (0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_public(&cert, self.cert_pem.as_bytes())?;
        write_secret(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

impl CertificateAuthority {
    /// A new CA for `trust_domain`, valid for `validity`.
    pub fn create(
        trust_domain: &str,
        validity: std::time::Duration,
    ) -> Result<CertificateAuthority, PkiError> {
        if !is_valid_trust_domain(trust_domain) {
            return Err(PkiError::TrustDomain(trust_domain.to_owned()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A unique name per CA: during a CA rotation two CAs are trusted at once, and chains and
        // revocation lists are matched to their CA by name.
        let mut tag = [0u8; 4];
        aws_lc_rs::rand::fill(&mut tag).expect("system CSPRNG is available");
        dn.push(
            DnType::CommonName,
            format!("Dark Store Mesh CA ({trust_domain}) {}", hex::encode(tag)),
        );
        dn.push(DnType::OrganizationName, "Dark Store Mesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::try_from(validity).unwrap_or(Duration::days(3650));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let trust_domain =
            ca_trust_domain(&cert_pem).ok_or_else(|| PkiError::NotMeshCa(cert_path.clone()))?;
        Ok(CertificateAuthority {
            trust_domain,
            cert_pem,
            key,
        })
    }

    /// Writes `ca.pem` and `ca.key` (0600) and a new control key into `dir`, refusing to overwrite
    /// an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        self.save_cert_and_key(dir)?;
        let (control, control_text) = crate::security::control_key::ControlKey::generate();
        write_secret(&dir.join(CONTROL_KEY_FILE), control_text.as_bytes())?;
        write_public(
            &dir.join(CONTROL_PUB_FILE),
            control.public().to_text().as_bytes(),
        )
    }

    /// Writes only `ca.pem` and `ca.key` (0600), refusing to overwrite: a CA rotation keeps the
    /// control key.
    pub fn save_cert_and_key(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        if cert_path.exists() {
            return Err(PkiError::Exists(cert_path));
        }
        write_secret(&dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes())?;
        write_public(&cert_path, self.cert_pem.as_bytes())
    }

    /// This CA certificate's serial number, lower-case hex.
    pub fn serial(&self) -> String {
        use rustls_pki_types::{CertificateDer, pem::PemObject as _};
        use x509_parser::prelude::*;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .ok()
            .and_then(|der| {
                X509Certificate::from_der(&der)
                    .ok()
                    .map(|(_, c)| hex::encode(c.raw_serial()))
            })
            .unwrap_or_default()
    }

    /// A certificate revocation list signed by this CA: number `number` (increase it with every
    /// list), revoking `revoked` (hex serial numbers with the time each was revoked). Good for a
    /// year; nodes do not enforce its next-update time, a newer list simply replaces it.
    pub fn crl_pem(
        &self,
        number: u64,
        revoked: &[(String, OffsetDateTime)],
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for (serial, at) in revoked {
            let bytes = hex::decode(serial).map_err(|_| PkiError::Serial(serial.clone()))?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: *at,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(params.signed_by(&issuer)?.pem()?)
    }

    /// The control key saved beside this CA in `dir`.
    pub fn load_control_key(
        dir: &Path,
    ) -> Result<crate::security::control_key::ControlKey, PkiError> {
        let path = dir.join(CONTROL_KEY_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        crate::security::control_key::ControlKey::parse(&text).map_err(|e| PkiError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `spec`. Node certificates are good for server and client
    /// authentication (gateway and peer transport); client and admin certificates for client
    /// authentication only.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        if spec.identity.trust_domain() != self.trust_domain {
            return Err(PkiError::ForeignIdentity {
                identity: spec.identity.to_string(),
                ca: self.trust_domain.clone(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.identity.to_string());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(spec.identity.to_string().try_into()?)];
        if matches!(spec.identity, Identity::Node { .. }) {
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            for dns in &spec.dns_names {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(dns.clone().try_into()?));
            }
            for ip in &spec.ip_addresses {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            identity: spec.identity.to_string(),
            serial: hex::encode(serial.to_bytes()),
            not_after: spec.not_after,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The trust domain a mesh CA certificate names in its `spiffe://<td>` URI SAN.
pub(crate) fn ca_trust_domain(cert_pem: &str) -> Option<String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    use x509_parser::prelude::*;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://")
            .filter(|td| !td.contains('/') && is_valid_trust_domain(td))
            .map(str::to_owned),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::policy::Role;

    #[test]
    fn issued_leaf_carries_its_identity() {
        let ca = CertificateAuthority::create("mesh.test", std::time::Duration::from_secs(3600))
            .expect("ca");
        assert_eq!(ca_trust_domain(ca.cert_pem()).as_deref(), Some("mesh.test"));
        let id = Identity::Client {
            trust_domain: "mesh.test".into(),
            role: Role::Oms,
            name: "ops".into(),
        };
        let leaf = ca
            .issue(&LeafSpec::new(
                id.clone(),
                std::time::Duration::from_secs(600),
            ))
            .expect("leaf");
        use rustls_pki_types::{CertificateDer, pem::PemObject as _};
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("pem");
        assert_eq!(Identity::from_certificate(&der), Ok(id));
    }

    #[test]
    fn refuses_identities_of_another_trust_domain() {
        let ca = CertificateAuthority::create("mesh.test", std::time::Duration::from_secs(3600))
            .expect("ca");
        let id = Identity::Admin {
            trust_domain: "other.test".into(),
            name: "a".into(),
        };
        assert!(matches!(
            ca.issue(&LeafSpec::new(id, std::time::Duration::from_secs(60))),
            Err(PkiError::ForeignIdentity { .. })
        ));
    }

    #[test]
    fn secrets_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::create("mesh.test", std::time::Duration::from_secs(3600))
            .expect("ca");
        ca.save(dir.path()).expect("save");
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(ca.save(dir.path()), Err(PkiError::Exists(_))));
        CertificateAuthority::load(dir.path()).expect("loads back");
    }
}
