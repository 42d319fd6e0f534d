//! Mesh identities: the SPIFFE-style URI SAN that every mesh certificate carries, as a parsed type.
//!
//! `spiffe://<trust-domain>/node/<node-id>`, `spiffe://<trust-domain>/client/<role>/<name>` and
//! `spiffe://<trust-domain>/admin/<name>`. A client's role comes from its certificate and from nowhere
//! else, so parsing is strict: exactly one `spiffe://` URI, known path shapes, a known role.

use crate::access::policy::Role;
use std::{fmt, str::FromStr};

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Node {
        trust_domain: String,
        node_id: String,
    },
    Client {
        trust_domain: String,
        role: Role,
        name: String,
    },
    Admin {
        trust_domain: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a spiffe:// URI")]
    NotSpiffe,
    #[error("invalid trust domain `{0}`: use lowercase letters, digits, `.` and `-`")]
    TrustDomain(String),
    #[error("unknown identity kind `{0}`: expected node, client or admin")]
    Kind(String),
    #[error("identity path must be /node/<id>, /client/<role>/<name> or /admin/<name>")]
    Shape,
    #[error(transparent)]
    Role(#[from] crate::access::policy::UnknownRole),
    #[error(
        "invalid name `{0}`: 1-63 characters of lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    )]
    Name(String),
    #[error("certificate carries no spiffe:// URI SAN")]
    Missing,
    #[error("certificate carries more than one spiffe:// URI SAN")]
    Ambiguous,
    #[error("certificate could not be parsed")]
    BadCertificate,
}

impl Identity {
    pub fn trust_domain(&self) -> &str {
        match self {
            Identity::Node { trust_domain, .. }
            | Identity::Client { trust_domain, .. }
            | Identity::Admin { trust_domain, .. } => trust_domain,
        }
    }

    /// The role this identity acts as on the gateway. Admin certificates act as `admin`; node
    /// certificates have no client role.
    pub fn role(&self) -> Option<Role> {
        match self {
            Identity::Client { role, .. } => Some(*role),
            Identity::Admin { .. } => Some(Role::Admin),
            Identity::Node { .. } => None,
        }
    }

    /// Reads the identity from a DER certificate's URI SANs.
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::BadCertificate)?;
        let mut found = None;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(uri.parse::<Identity>()?);
            }
        }
        found.ok_or(IdentityError::Missing)
    }
}

/// Names of nodes and clients: short, lowercase, safe in paths, DNS labels and metric labels.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

pub fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 253
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && !td.starts_with(['.', '-'])
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(IdentityError::NotSpiffe)?;
        let (td, path) = rest.split_once('/').ok_or(IdentityError::Shape)?;
        if !is_valid_trust_domain(td) {
            return Err(IdentityError::TrustDomain(td.to_owned()));
        }
        let trust_domain = td.to_owned();
        let parts: Vec<&str> = path.split('/').collect();
        let name = |n: &str| {
            if is_valid_name(n) {
                Ok(n.to_owned())
            } else {
                Err(IdentityError::Name(n.to_owned()))
            }
        };
        match parts.as_slice() {
            ["node", id] => Ok(Identity::Node {
                trust_domain,
                node_id: name(id)?,
            }),
            ["client", role, n] => Ok(Identity::Client {
                trust_domain,
                role: role.parse()?,
                name: name(n)?,
            }),
            ["admin", n] => Ok(Identity::Admin {
                trust_domain,
                name: name(n)?,
            }),
            [kind, ..] if !matches!(*kind, "node" | "client" | "admin") => {
                Err(IdentityError::Kind((*kind).to_owned()))
            }
            _ => Err(IdentityError::Shape),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node {
                trust_domain,
                node_id,
            } => {
                write!(f, "spiffe://{trust_domain}/node/{node_id}")
            }
            Identity::Client {
                trust_domain,
                role,
                name,
            } => {
                write!(f, "spiffe://{trust_domain}/client/{role}/{name}")
            }
            Identity::Admin { trust_domain, name } => {
                write!(f, "spiffe://{trust_domain}/admin/{name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            "spiffe://mesh.local/client/oms/ops-1".parse::<Identity>(),
            Ok(Identity::Client {
                trust_domain: "mesh.local".into(),
                role: Role::Oms,
                name: "ops-1".into()
            })
        );
        assert!(matches!(
            "spiffe://mesh.local/node/n1".parse::<Identity>(),
            Ok(Identity::Node { .. })
        ));
        assert!(matches!(
            "spiffe://mesh.local/admin/alice".parse::<Identity>(),
            Ok(Identity::Admin { .. })
        ));
    }

    #[test]
    fn rejects_malformed_identities() {
        for bad in [
            "https://mesh.local/node/n1",
            "spiffe://mesh.local",
            "spiffe://Mesh/node/n1",
            "spiffe://mesh.local/node/n1/extra",
            "spiffe://mesh.local/client/root/x",
            "spiffe://mesh.local/client/oms",
            "spiffe://mesh.local/robot/x",
            "spiffe://mesh.local/node/",
            "spiffe://mesh.local/node/N1",
            "spiffe://mesh.local/node/-n1",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} should not parse");
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,20}"
    }

    proptest! {
        #[test]
        fn identities_round_trip(td in "[a-z0-9][a-z0-9.-]{0,20}", n in name(), r in 0usize..12, kind in 0u8..3) {
            let id = match kind {
                0 => Identity::Node { trust_domain: td, node_id: n },
                1 => Identity::Client { trust_domain: td, role: Role::ALL[r], name: n },
                _ => Identity::Admin { trust_domain: td, name: n },
            };
            prop_assert_eq!(id.to_string().parse::<Identity>(), Ok(id));
        }
    }
}
