//! The mesh control key (Ed25519): `mesh-ctl` signs layouts with it, every node verifies them with
//! its public half (`cluster::layout` says what is signed). Kept with the CA, never on nodes.
//! Key files are text: a versioned prefix and the hex of the PKCS#8 document or the raw public key.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};

const CONTROL_KEY_PREFIX: &str = "dsm-control-key-v1:";
const CONTROL_PUB_PREFIX: &str = "dsm-control-pub-v1:";

/// A key file that does not hold a mesh control key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control key file is not a mesh control key ({0})")]
pub struct KeyFileError(pub String);

/// The mesh control key (Ed25519). Signs layouts; kept with the CA, never on nodes.
pub struct ControlKey(Ed25519KeyPair);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(..)")
    }
}

impl ControlKey {
    /// A fresh key and its key-file text.
    pub fn generate() -> (ControlKey, String) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("system CSPRNG is available");
        let text = format!("{CONTROL_KEY_PREFIX}{}\n", hex::encode(pkcs8.as_ref()));
        (
            ControlKey(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh PKCS#8 parses")),
            text,
        )
    }

    pub fn parse(text: &str) -> Result<ControlKey, KeyFileError> {
        let hex_der = text
            .trim()
            .strip_prefix(CONTROL_KEY_PREFIX)
            .ok_or_else(|| KeyFileError("missing prefix".into()))?;
        let der = hex::decode(hex_der).map_err(|_| KeyFileError("not hex".into()))?;
        Ed25519KeyPair::from_pkcs8(&der)
            .map(ControlKey)
            .map_err(|_| KeyFileError("not an Ed25519 PKCS#8 key".into()))
    }

    /// An Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }

    pub fn public(&self) -> ControlPublicKey {
        ControlPublicKey(self.0.public_key().as_ref().to_vec())
    }
}

/// The public half of the control key, given to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPublicKey(Vec<u8>);

impl ControlPublicKey {
    pub(crate) fn to_text(&self) -> String {
        format!("{CONTROL_PUB_PREFIX}{}\n", hex::encode(&self.0))
    }

    pub fn parse(text: &str) -> Result<ControlPublicKey, KeyFileError> {
        let h = text
            .trim()
            .strip_prefix(CONTROL_PUB_PREFIX)
            .ok_or_else(|| KeyFileError("missing prefix".into()))?;
        let bytes = hex::decode(h).map_err(|_| KeyFileError("not hex".into()))?;
        if bytes.len() != 32 {
            return Err(KeyFileError("an Ed25519 public key has 32 bytes".into()));
        }
        Ok(ControlPublicKey(bytes))
    }

    /// Whether `signature` is the control key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}
