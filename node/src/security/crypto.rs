//! Encryption at rest: the node's key-encryption key, per-customer data keys, and keyed hashes.
//!
//! - A node key file holds 32 random bytes (`dsm-kek-v1:<64 hex>`), from a file or a Kubernetes
//!   Secret, never from the database. Two keys are derived from it with HKDF-SHA256: the
//!   key-encryption key (KEK) and the index key.
//! - Each customer gets a random 256-bit data key (DEK). Their orders are sealed with AES-256-GCM
//!   under the DEK; the DEK is stored only wrapped (AES-256-GCM) under the KEK. Deleting the wrapped
//!   DEK crypto-shreds every copy of the customer's data, backups included.
//! - Storage keys use HMAC-SHA256 under the index key, so nothing on disk reveals a customer id.
//!
//! Every sealed blob is `nonce (12) || ciphertext || tag (16)` with a fresh random nonce, and binds
//! its storage key as associated data, so a record moved to another key fails to open.

use aws_lc_rs::{aead, hkdf, hmac, rand};
use std::{fmt, path::Path};

const KEY_FILE_PREFIX: &str = "dsm-kek-v1:";
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read key file {path}: {source}")]
    ReadKeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not a node key (expected `{KEY_FILE_PREFIX}` and 64 hex digits; make one with `mesh-ctl key init`)"
    )]
    BadKeyFile { path: String },
    #[error("sealed record failed authentication (wrong key or tampered data)")]
    Open,
    #[error("sealed record is truncated")]
    Truncated,
}

/// Keys derived from the node key file. Never logged (Debug prints nothing secret).
pub struct NodeKeys {
    kek: aead::LessSafeKey,
    index: hmac::Key,
}

impl fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKeys(..)")
    }
}

/// Contents of a fresh node key file.
pub fn generate_key_file() -> String {
    let mut master = [0u8; 32];
    rand::fill(&mut master).expect("system CSPRNG is available");
    format!("{KEY_FILE_PREFIX}{}\n", hex::encode(master))
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(master: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"dark-store-mesh").extract(master);
    let mut out = [0u8; 32];
    prk.expand(&[info], Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl NodeKeys {
    pub fn load(path: &Path) -> Result<NodeKeys, CryptoError> {
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::ReadKeyFile {
            path: path.display().to_string(),
            source,
        })?;
        NodeKeys::parse(&text).ok_or_else(|| CryptoError::BadKeyFile {
            path: path.display().to_string(),
        })
    }

    pub fn parse(text: &str) -> Option<NodeKeys> {
        let hex_key = text.trim().strip_prefix(KEY_FILE_PREFIX)?;
        let mut master = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut master).ok()?;
        Some(NodeKeys::from_master(&master))
    }

    fn from_master(master: &[u8; 32]) -> NodeKeys {
        let kek = derive(master, b"dsm kek v1");
        let index = derive(master, b"dsm index v1");
        NodeKeys {
            kek: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, &kek).expect("32-byte AES key"),
            ),
            index: hmac::Key::new(hmac::HMAC_SHA256, &index),
        }
    }

    /// Keyed hash for storage keys and audit subjects: `HMAC(index key, domain || 0 || value)`.
    pub(crate) fn keyed_hash(&self, domain: &[u8], value: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(domain);
        ctx.update(&[0]);
        ctx.update(value);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A fresh data key, returned with its wrapped form (bound to `aad`) for storage.
    pub(crate) fn new_data_key(&self, aad: &[u8]) -> (DataKey, Vec<u8>) {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw).expect("system CSPRNG is available");
        let wrapped = seal(&self.kek, &raw, aad);
        (DataKey::from_raw(&raw), wrapped)
    }

    /// Unwraps a stored data key.
    pub(crate) fn unwrap_data_key(
        &self,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let raw = open(&self.kek, wrapped, aad)?;
        if raw.len() != 32 {
            return Err(CryptoError::Open);
        }
        Ok(DataKey::from_raw(&raw))
    }

    /// Seals a small node-level value (for example the key check) under the KEK.
    pub(crate) fn seal_with_kek(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.kek, plaintext, aad)
    }

    pub(crate) fn open_with_kek(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.kek, sealed, aad)
    }
}

/// A customer's data key in the clear, for handing a partition to its new owner over the
/// mutually authenticated peer transport (see `storage::handoff`). It never touches a disk:
/// the receiver wraps it under its own KEK at once. Zeroed when dropped; Debug prints nothing.
pub(crate) struct TransferKey([u8; 32]);

impl fmt::Debug for TransferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransferKey(..)")
    }
}

impl Drop for TransferKey {
    fn drop(&mut self) {
        // Best effort without `unsafe`: `black_box` keeps the wipe from being optimised away.
        self.0 = [0; 32];
        std::hint::black_box(&self.0);
    }
}

impl TransferKey {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<TransferKey> {
        Some(TransferKey(bytes.try_into().ok()?))
    }

    pub(crate) fn data_key(&self) -> DataKey {
        DataKey::from_raw(&self.0)
    }

    /// The raw key for the handoff message. It must only travel inside the peer TLS; the caller
    /// wipes the copy once it is encoded.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl NodeKeys {
    /// Unwraps a stored data key for transfer to a partition's new owner.
    pub(crate) fn export_data_key(
        &self,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<TransferKey, CryptoError> {
        let mut raw = open(&self.kek, wrapped, aad)?;
        let key = TransferKey::from_bytes(&raw).ok_or(CryptoError::Open);
        raw.fill(0);
        std::hint::black_box(&raw);
        key
    }

    /// Wraps a received data key under this node's KEK, bound to `aad` (its new storage key).
    pub(crate) fn import_data_key(&self, key: &TransferKey, aad: &[u8]) -> Vec<u8> {
        seal(&self.kek, &key.0, aad)
    }
}

/// A customer's data key, unwrapped in memory only for the duration of one operation.
pub(crate) struct DataKey(aead::LessSafeKey);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    fn from_raw(raw: &[u8]) -> DataKey {
        DataKey(aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, raw).expect("32-byte AES key"),
        ))
    }
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.0, plaintext, aad)
    }
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.0, sealed, aad)
    }
}

fn seal(key: &aead::LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce).expect("system CSPRNG is available");
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(NONCE_LEN);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut body,
    )
    .expect("AES-GCM sealing of an in-memory buffer cannot fail");
    out.extend_from_slice(&body);
    out
}

fn open(key: &aead::LessSafeKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
    let mut body = body.to_vec();
    let plain_len = key
        .open_in_place(nonce, aead::Aad::from(aad), &mut body)
        .map_err(|_| CryptoError::Open)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> NodeKeys {
        NodeKeys::parse(&generate_key_file()).expect("fresh key file parses")
    }

    #[test]
    fn data_keys_wrap_and_seal() {
        let k = keys();
        let (dek, wrapped) = k.new_data_key(b"cust-a");
        let sealed = dek.seal(b"secret order", b"order-1");
        let dek2 = k.unwrap_data_key(&wrapped, b"cust-a").expect("unwraps");
        assert_eq!(
            dek2.open(&sealed, b"order-1").expect("opens"),
            b"secret order"
        );
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn tampering_or_moving_a_record_fails() {
        let k = keys();
        let (dek, wrapped) = k.new_data_key(b"cust-a");
        let mut sealed = dek.seal(b"secret order", b"order-1");
        assert!(dek.open(&sealed, b"order-2").is_err(), "bound to its key");
        assert!(
            k.unwrap_data_key(&wrapped, b"cust-b").is_err(),
            "bound to its customer"
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(dek.open(&sealed, b"order-1").is_err());
        assert!(dek.open(&sealed[..10], b"order-1").is_err());
    }

    #[test]
    fn another_nodes_key_cannot_unwrap() {
        let (a, b) = (keys(), keys());
        let (_, wrapped) = a.new_data_key(b"c");
        assert!(b.unwrap_data_key(&wrapped, b"c").is_err());
        assert_ne!(
            a.keyed_hash(b"customer", b"c"),
            b.keyed_hash(b"customer", b"c")
        );
    }

    #[test]
    fn a_transferred_data_key_opens_on_the_new_node_only_once_rewrapped() {
        let (a, b) = (keys(), keys());
        let (dek, wrapped) = a.new_data_key(b"ck-a");
        let sealed = dek.seal(b"order", b"ok-a");
        let moved = a.export_data_key(&wrapped, b"ck-a").expect("export");
        let rewrapped = b.import_data_key(&moved, b"ck-b");
        assert_ne!(rewrapped, wrapped);
        let on_b = b.unwrap_data_key(&rewrapped, b"ck-b").expect("b unwraps");
        assert_eq!(on_b.open(&sealed, b"ok-a").expect("same key"), b"order");
        assert!(a.unwrap_data_key(&rewrapped, b"ck-b").is_err());
        assert_eq!(format!("{moved:?}"), "TransferKey(..)");
    }

    #[test]
    fn key_file_format_is_strict() {
        assert!(NodeKeys::parse("dsm-kek-v1:00").is_none());
        assert!(NodeKeys::parse(&"a".repeat(64)).is_none());
        assert!(NodeKeys::parse(&format!("dsm-kek-v1:{}", "0".repeat(64))).is_some());
    }
}
