//! Encrypted, durable order storage: one fjall database per node (`<data_dir>/store/`).
//!
//! Every customer's orders are sealed under that customer's data key (see `crypto`), every key is a
//! keyed hash (see `keys`), and every write is acknowledged only after the group committer has made
//! it durable with `fdatasync` (see `commit`). A create or update is one atomic fjall batch in one
//! journal, so a crash or a power cut leaves either all of it or none of it. Read-modify-write
//! steps (creating a customer's data key, updating an order) hold the customer's lock stripe until
//! their write is durable; this process is the store's only writer.
//!
//! Why fjall: an LSM tree whose keyspaces share one journal (atomic batches across them), prefix
//! scans for partitions and customers, `PersistMode::SyncData` for a real `fdatasync`, and a
//! maintained release line. The store it replaced, sled 0.34, made its log "durable" with
//! `sync_file_range`, which is not an fsync, and a power cut lost a node (ARCHITECTURE.md, "Storage").
//!
//! The data directory carries a format version (`FORMAT_VERSION`); a directory written by the
//! sled-based releases (format 1) is refused with a message, and nothing in it is touched.

pub mod commit;
pub mod handoff;
mod inventory;
pub mod keys;

use crate::domain::ids::{ContactHandle, OrderId, Partition, partition_of};
use crate::durable_fs;
use crate::security::crypto::{CryptoError, DataKey, NodeKeys};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use commit::{CommitError, FlushObserver, GroupCommit, Space, Spaces, Writes};
use keys::Hash;
use mesh_proto::v1::Order;
use prost::Message as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Version of the data directory layout. Bump it with a tested migration.
pub(crate) const FORMAT_VERSION: u8 = 2;
/// Where the database lives inside the data directory.
const STORE_DIR: &str = "store";
/// Version byte in front of every stored value.
const RECORD_V1: u8 = 1;
const KEY_CHECK: &[u8] = b"dark-store-mesh key check";
/// Lock stripes for per-customer read-modify-write. Enough that unrelated customers rarely share.
const STRIPES: usize = 1024;
/// Block cache of the database: hot orders and index blocks (the memory target is per node).
const CACHE_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage error: {0}")]
    Engine(#[from] fjall::Error),
    #[error("could not make the write durable: {0}")]
    Flush(CommitError),
    #[error("{0}")]
    Io(String),
    #[error(
        "{} holds a data directory of format v1 (the sled store of earlier releases); this \
         binary reads format v{FORMAT_VERSION} (fjall) and changed nothing in it. No release with \
         v1 was deployed, so there is no migration: start this node on an empty data directory \
         (a member of a mesh pulls its partitions again), or move the old one aside",
        dir.display()
    )]
    SledDirectory { dir: PathBuf },
    #[error(
        "a stored {0} failed to decrypt: the record is corrupt or was written under another key"
    )]
    Corrupt(&'static str),
    #[error(
        "the node key does not match this data directory (it was created with another key file)"
    )]
    KeyMismatch,
    #[error(
        "data directory format v{found} is not supported by this binary (it reads v{FORMAT_VERSION})"
    )]
    Format { found: u8 },
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    Rejected(String),
}

/// What a caller learns of a storage failure: the code and what to do; the internals stay in the
/// node's log (they name no customer, only keys' hashes and I/O errors).
impl From<StorageError> for crate::error::Error {
    fn from(e: StorageError) -> crate::error::Error {
        use crate::error::Error;
        match e {
            StorageError::Flush(_) => {
                tracing::warn!(error = %e, "write not made durable");
                Error::Unavailable(
                    "the write could not be made durable; it was not acknowledged, retry".into(),
                )
            }
            StorageError::NotFound => Error::NotFound("order not found".into()),
            StorageError::Rejected(why) => Error::FailedPrecondition(why),
            other => {
                tracing::error!(error = %other, "storage error");
                Error::Internal("internal storage error; see the node's log".into())
            }
        }
    }
}

/// Prefix of an audit note sealed for the trail (v2, under the node's key) or, in logs written
/// before, under a customer's data key (v1).
pub(crate) const SEALED_NOTE: &str = "sealed:v";
const NOTE_V1: &str = "sealed:v1:";
const NOTE_V2: &str = "sealed:v2:";

fn note_aad(customer_key: &[u8]) -> Vec<u8> {
    let mut aad = b"dsm-audit-note-v1".to_vec();
    aad.extend_from_slice(customer_key);
    aad
}

/// A v2 note is bound to the customer subject of its record: it opens for no other record.
fn note_aad_v2(customer_subject: &[u8]) -> Vec<u8> {
    let mut aad = b"dsm-audit-note-v2".to_vec();
    aad.extend_from_slice(customer_subject);
    aad
}

fn versioned(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(RECORD_V1);
    v.extend_from_slice(body);
    v
}

fn body<'a>(rec: &'a [u8], what: &'static str) -> Result<&'a [u8], StorageError> {
    match rec.split_first() {
        Some((&RECORD_V1, body)) => Ok(body),
        Some((&other, _)) => Err(StorageError::Format { found: other }),
        None => Err(StorageError::Corrupt(what)),
    }
}

fn hash_of(v: &[u8], what: &'static str) -> Result<Hash, StorageError> {
    v.try_into().map_err(|_| StorageError::Corrupt(what))
}

/// What a node's store holds, from an offline read of every record.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Inventory {
    pub customers: u64,
    pub orders: u64,
    /// Records that failed to decrypt or decode (0 on a healthy store).
    pub unreadable: u64,
    /// Index entries that point at no order (0 on a healthy store: writes are atomic).
    pub dangling_index: u64,
    /// Customers and orders per partition.
    pub partitions: BTreeMap<u16, PartitionCount>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PartitionCount {
    pub customers: u64,
    pub orders: u64,
}

/// A node's persisted layout state (signed layouts as `dsm.v1.SignedLayout` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLayout {
    pub current: Vec<u8>,
    /// The layout `current` replaced, while partitions may still be moving from it.
    pub previous: Option<Vec<u8>>,
    /// Partitions this node owns under `current` but has not received yet.
    pub pending: Vec<Partition>,
}

/// A stored pending set (`None`: empty) without partition `p`.
fn pending_without(stored: Option<&[u8]>, p: Partition) -> Vec<u8> {
    let mut bits = stored.map_or_else(|| pending_bits(&[]), <[u8]>::to_vec);
    if let Some(b) = bits.get_mut(usize::from(p.get() / 8)) {
        *b &= !(1 << (p.get() % 8));
    }
    bits
}

fn pending_bits(pending: &[Partition]) -> Vec<u8> {
    let mut bits = vec![0u8; usize::from(crate::domain::ids::PARTITIONS / 8)];
    for p in pending {
        bits[usize::from(p.get() / 8)] |= 1 << (p.get() % 8);
    }
    bits
}

/// Whether `dir` holds anything sled 0.34 writes at the top of its directory.
fn is_sled_directory(dir: &Path) -> bool {
    ["conf", "db", "blobs"].iter().any(|n| dir.join(n).exists())
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("snap."))
        })
}

/// Where an order lives: its customer hash, customer key and order key.
type Located = (Hash, Vec<u8>, Vec<u8>);

/// The node's order store.
pub struct Store {
    db: fjall::Database,
    /// Orders, wrapped data keys and indexes, every key starting with its partition.
    data: fjall::Keyspace,
    /// Node-level records: format version, key check, the current signed layout.
    meta: fjall::Keyspace,
    keys: Arc<NodeKeys>,
    commit: GroupCommit,
    /// The writer thread, joined on close so the database is released deterministically.
    writer: std::thread::JoinHandle<()>,
    /// Per-customer read-modify-write, held until the write is durable.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Read-modify-write of the meta records (the pending set).
    meta_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct NoObserver;
impl FlushObserver for NoObserver {
    fn flushed(&self, _: usize, _: f64) {}
}

impl Store {
    /// Opens (or creates) the store in `dir`. Must run inside a tokio runtime (it starts the group
    /// committer). Fails if the directory was written with another key or a newer format.
    pub fn open(
        dir: &Path,
        keys: Arc<NodeKeys>,
        observer: Option<Arc<dyn FlushObserver>>,
    ) -> Result<Store, StorageError> {
        // sled kept `conf`, `db`, `blobs/` and `snap.*` at the top of the data directory; any one
        // of them (a power cut may have taken the others) marks a directory of the old format.
        if is_sled_directory(dir) {
            return Err(StorageError::SledDirectory { dir: dir.into() });
        }
        // Its name must survive a power cut like its contents (fjall syncs what is inside).
        durable_fs::create_dir_all(&dir.join(STORE_DIR))
            .map_err(|e| StorageError::Io(format!("creating the store directory: {e}")))?;
        let db = fjall::Database::builder(dir.join(STORE_DIR))
            // The group committer persists; every batch is still written to the OS at commit.
            .cache_size(CACHE_BYTES)
            .open()?;
        // Sealed values do not compress; nothing is configured to (no compression feature).
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default)?;
        let data = db.keyspace("data", fjall::KeyspaceCreateOptions::default)?;
        // fjall 3.1 does not sync the directory it creates a keyspace in, so a power cut after the
        // first writes took both keyspaces (and every acknowledged write) with it; the power-loss
        // drill found it. Sync them here, once, before anything is written.
        for sub in ["keyspaces", ""] {
            durable_fs::sync_dir(&dir.join(STORE_DIR).join(sub))
                .map_err(|e| StorageError::Io(format!("syncing the store directory: {e}")))?;
        }
        match meta.get("format")? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(StorageError::Format {
                    found: v.first().copied().unwrap_or(0),
                });
            }
            None => {
                meta.insert(
                    "key_check",
                    keys.seal_with_kek(KEY_CHECK, b"meta/key_check"),
                )?;
                meta.insert("format", [FORMAT_VERSION])?;
                db.persist(fjall::PersistMode::SyncAll)?;
            }
        }
        let check = meta.get("key_check")?.ok_or(StorageError::KeyMismatch)?;
        if keys
            .open_with_kek(&check, b"meta/key_check")
            .ok()
            .as_deref()
            != Some(KEY_CHECK)
        {
            return Err(StorageError::KeyMismatch);
        }
        let spaces = Spaces {
            db: db.clone(),
            data: data.clone(),
            meta: meta.clone(),
        };
        let (commit, writer) =
            GroupCommit::start(spaces, observer.unwrap_or_else(|| Arc::new(NoObserver)))
                .map_err(|e| StorageError::Io(format!("starting the store's writer: {e}")))?;
        Ok(Store {
            db,
            data,
            meta,
            keys,
            commit,
            writer,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            meta_lock: tokio::sync::Mutex::new(()),
        })
    }

    async fn durable(&self) -> Result<(), StorageError> {
        self.commit.durable().await.map_err(StorageError::Flush)
    }

    /// Waits until everything a read made before this call could have seen is durable, so that an
    /// answer never shows data a power cut could take back (one group sync at most; nothing when
    /// no write is in flight). The gateway calls it once per request, after the handler.
    pub async fn settled(&self) {
        self.commit.settled().await;
    }

    /// Holds the writer between commits and syncs while the guard lives (tests only).
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commit
            .sync_gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits `writes` in the next group and returns once they are durable.
    async fn write(&self, writes: Writes) -> Result<(), StorageError> {
        self.commit.write(writes).await.map_err(StorageError::Flush)
    }

    async fn stripe(&self, customer: &Hash) -> tokio::sync::MutexGuard<'_, ()> {
        let i = usize::from(u16::from_be_bytes([customer[0], customer[1]])) % STRIPES;
        self.stripes[i].lock().await
    }

    fn data_key(&self, customer_key: &[u8]) -> Result<Option<DataKey>, StorageError> {
        match self.data.get(customer_key)? {
            None => Ok(None),
            Some(rec) => Ok(Some(
                self.keys
                    .unwrap_data_key(body(&rec, "customer key")?, customer_key)
                    .map_err(|_: CryptoError| StorageError::Corrupt("customer key"))?,
            )),
        }
    }

    fn open_order(dek: &DataKey, order_key: &[u8], rec: &[u8]) -> Result<Order, StorageError> {
        let plain = dek
            .open(body(rec, "order")?, order_key)
            .map_err(|_| StorageError::Corrupt("order"))?;
        Order::decode(plain.as_slice()).map_err(|_| StorageError::Corrupt("order"))
    }

    /// Stores a new order (its id and timestamps already set) and returns once it is durable.
    /// With an idempotency key that this customer used before, returns the earlier order instead.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.create_order",
        skip_all,
        fields(
            dsm.storage.op = "create",
            dsm.partition = i64::from(partition_of(&order.customer_id).get()),
        )
    )]
    pub async fn create_order(
        &self,
        order: &Order,
        idempotency_key: &str,
    ) -> Result<Order, StorageError> {
        let id: OrderId = order
            .order_id
            .parse()
            .map_err(|_| StorageError::Rejected("order id is not a mesh order id".into()))?;
        let p = partition_of(&order.customer_id);
        if id.partition() != p {
            return Err(StorageError::Rejected(
                "order id was minted for another partition".into(),
            ));
        }
        let ch = keys::customer_hash(&self.keys, &order.customer_id);
        let oh = keys::order_hash(&self.keys, &order.order_id);
        let ck = keys::customer_key(p, &ch);
        let ok = keys::order_key(p, &ch, &oh);
        let idem = (!idempotency_key.is_empty()).then(|| {
            keys::idempotency_key(p, &ch, &keys::idempotency_hash(&self.keys, idempotency_key))
        });
        let plain = order.encode_to_vec();

        let earlier = {
            let _guard = self.stripe(&ch).await;
            match idem
                .as_ref()
                .map(|k| self.data.get(k))
                .transpose()?
                .flatten()
            {
                Some(earlier) => Some(hash_of(&earlier, "idempotency record")?),
                None => {
                    let mut writes = Writes::default();
                    let dek = match self.data_key(&ck)? {
                        Some(dek) => dek,
                        None => {
                            let (dek, wrapped) = self.keys.new_data_key(&ck);
                            writes.put(Space::Data, ck.as_slice(), versioned(&wrapped));
                            dek
                        }
                    };
                    writes.put(
                        Space::Data,
                        ok.as_slice(),
                        versioned(&dek.seal(&plain, &ok)),
                    );
                    writes.put(Space::Data, keys::index_key(p, &oh), &ch[..]);
                    self.index_handle(&mut writes, p, order, &oh);
                    if let Some(idem) = &idem {
                        writes.put(Space::Data, idem.as_slice(), &oh[..]);
                    }
                    self.write(writes).await?;
                    None
                }
            }
        };
        if earlier.is_some() {
            // The earlier order is durable: its request held this stripe until it was.
            self.durable().await?;
        }
        match earlier {
            None => Ok(order.clone()),
            Some(earlier) => {
                let ok = keys::order_key(p, &ch, &earlier);
                let rec = self
                    .data
                    .get(&ok)?
                    .ok_or(StorageError::Corrupt("idempotency record"))?;
                let dek = self
                    .data_key(&ck)?
                    .ok_or(StorageError::Corrupt("customer key"))?;
                Self::open_order(&dek, &ok, &rec)
            }
        }
    }

    /// Adds the contact-handle index entry of `order` (stored under order hash `oh`), if it has one.
    fn index_handle(&self, writes: &mut Writes, p: Partition, order: &Order, oh: &Hash) {
        if let Some(handle) = order
            .customer
            .as_ref()
            .map(|c| c.contact_handle.as_str())
            .filter(|h| !h.is_empty())
        {
            let hh = keys::handle_hash(&self.keys, handle);
            writes.put(Space::Data, keys::handle_key(p, &hh), &oh[..]);
        }
    }

    /// Locates an order: its customer hash (from the index), customer key and order key.
    fn locate(&self, id: &OrderId) -> Result<Option<Located>, StorageError> {
        self.locate_hash(
            id.partition(),
            keys::order_hash(&self.keys, &id.to_string()),
        )
    }

    fn locate_hash(&self, p: Partition, oh: Hash) -> Result<Option<Located>, StorageError> {
        let Some(ch) = self.data.get(keys::index_key(p, &oh))? else {
            return Ok(None);
        };
        let ch = hash_of(&ch, "order index")?;
        Ok(Some((
            ch,
            keys::customer_key(p, &ch),
            keys::order_key(p, &ch, &oh),
        )))
    }

    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.get_order",
        skip_all,
        fields(
            dsm.storage.op = "read",
            dsm.partition = i64::from(id.partition().get()),
        )
    )]
    pub fn get_order(&self, id: &OrderId) -> Result<Option<Order>, StorageError> {
        self.read_located(self.locate(id)?)
    }

    /// The order a contact handle was minted for.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.order_by_handle",
        skip_all,
        fields(
            dsm.storage.op = "read",
            dsm.partition = i64::from(handle.partition().get()),
        )
    )]
    pub(crate) fn order_by_handle(
        &self,
        handle: &ContactHandle,
    ) -> Result<Option<Order>, StorageError> {
        let p = handle.partition();
        let hh = keys::handle_hash(&self.keys, &handle.to_string());
        let Some(oh) = self.data.get(keys::handle_key(p, &hh))? else {
            return Ok(None);
        };
        self.read_located(self.locate_hash(p, hash_of(&oh, "handle index")?)?)
    }

    fn read_located(&self, located: Option<Located>) -> Result<Option<Order>, StorageError> {
        let Some((_, ck, ok)) = located else {
            return Ok(None);
        };
        let (Some(rec), Some(dek)) = (self.data.get(&ok)?, self.data_key(&ck)?) else {
            return Ok(None);
        };
        Self::open_order(&dek, &ok, &rec).map(Some)
    }

    /// Read-modify-write of one order under its customer's lock; `change` may reject the update.
    /// Returns the updated order once it is durable.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.update_order",
        skip_all,
        fields(
            dsm.storage.op = "update",
            dsm.partition = i64::from(id.partition().get()),
        )
    )]
    pub async fn update_order<F>(&self, id: &OrderId, change: F) -> Result<Order, StorageError>
    where
        F: Fn(&mut Order) -> Result<(), String>,
    {
        let (ch, ck, ok) = self.locate(id)?.ok_or(StorageError::NotFound)?;
        let _guard = self.stripe(&ch).await;
        let rec = self.data.get(&ok)?.ok_or(StorageError::NotFound)?;
        let dek = self.data_key(&ck)?.ok_or(StorageError::NotFound)?;
        let mut order = Self::open_order(&dek, &ok, &rec)?;
        change(&mut order).map_err(StorageError::Rejected)?;
        let mut writes = Writes::default();
        writes.put(
            Space::Data,
            ok.as_slice(),
            versioned(&dek.seal(&order.encode_to_vec(), &ok)),
        );
        self.write(writes).await?;
        Ok(order)
    }

    /// Every order of a customer, oldest first.
    #[tracing::instrument(
        target = "dsm_trace",
        name = "storage.customer_orders",
        skip_all,
        fields(
            dsm.storage.op = "list",
            dsm.partition = i64::from(partition_of(customer_id).get()),
        )
    )]
    pub fn customer_orders(&self, customer_id: &str) -> Result<Vec<Order>, StorageError> {
        let p = partition_of(customer_id);
        let ch = keys::customer_hash(&self.keys, customer_id);
        let Some(dek) = self.data_key(&keys::customer_key(p, &ch))? else {
            return Ok(Vec::new());
        };
        let mut orders = self
            .data
            .prefix(keys::customer_orders_prefix(p, &ch))
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                Self::open_order(&dek, &k, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        orders.sort_by_key(|o| o.created_at.map(|t| (t.seconds, t.nanos)));
        Ok(orders)
    }

    /// Seals a caller's justification (screened for contact details before it gets here) for the
    /// audit trail under this node's key, bound to the record's customer subject: the trail holds
    /// no readable free text, and the evidence stays readable to auditors through this node for as
    /// long as the trail is kept, also after the customer's partition moved away and its data key
    /// was shredded here. The result is `sealed:v2:<base64url(nonce ‖ ciphertext)>`.
    pub(crate) fn seal_note(&self, customer_subject: &str, text: &str) -> String {
        let sealed = self
            .keys
            .seal_with_kek(text.as_bytes(), &note_aad_v2(customer_subject.as_bytes()));
        format!("{NOTE_V2}{}", B64.encode(sealed))
    }

    /// Opens a note sealed by [`Store::seal_note`] for the record whose customer subject (hex
    /// keyed hash) is `customer_subject`. `None` if it is not a sealed note or cannot be opened
    /// here (another node's record; for a v1 note, also once the customer's key is gone).
    pub(crate) fn open_note(&self, note: &str, customer_subject: &str) -> Option<String> {
        if let Some(v2) = note.strip_prefix(NOTE_V2) {
            let sealed = B64.decode(v2).ok()?;
            let text = self
                .keys
                .open_with_kek(&sealed, &note_aad_v2(customer_subject.as_bytes()))
                .ok()?;
            return String::from_utf8(text).ok();
        }
        let blob = B64.decode(note.strip_prefix(NOTE_V1)?).ok()?;
        let (p, sealed) = blob.split_at_checked(2)?;
        let p = Partition::new(u16::from_be_bytes(p.try_into().ok()?))?;
        let ch: Hash = hex::decode(customer_subject).ok()?.try_into().ok()?;
        let ck = keys::customer_key(p, &ch);
        let dek = self.data_key(&ck).ok()??;
        String::from_utf8(dek.open(sealed, &note_aad(&ck)).ok()?).ok()
    }

    /// The audit subject of a customer: the keyed hash its records are stored under, in hex.
    pub(crate) fn customer_subject(&self, customer_id: &str) -> String {
        hex::encode(keys::customer_hash(&self.keys, customer_id))
    }

    /// The audit subject of an order, in hex.
    pub(crate) fn order_subject(&self, order_id: &str) -> String {
        hex::encode(keys::order_hash(&self.keys, order_id))
    }

    /// The persisted layout state, if any.
    pub(crate) fn saved_layout(&self) -> Result<Option<SavedLayout>, StorageError> {
        let Some(current) = self.meta.get("layout")? else {
            return Ok(None);
        };
        let pending = match self.meta.get("pending")? {
            None => Vec::new(),
            Some(bits) => (0..crate::domain::ids::PARTITIONS)
                .filter(|p| {
                    bits.get(usize::from(p / 8))
                        .is_some_and(|b| b & (1 << (p % 8)) != 0)
                })
                .filter_map(Partition::new)
                .collect(),
        };
        Ok(Some(SavedLayout {
            current: current.to_vec(),
            previous: self.meta.get("previous_layout")?.map(|v| v.to_vec()),
            pending,
        }))
    }

    /// Persists a layout change durably and atomically: the new signed layout, the one it replaces,
    /// and the partitions this node must still receive.
    pub async fn save_layout(&self, saved: &SavedLayout) -> Result<(), StorageError> {
        let _meta = self.meta_lock.lock().await;
        let mut writes = Writes::default();
        writes.put(Space::Meta, "layout", saved.current.as_slice());
        match &saved.previous {
            Some(prev) => writes.put(Space::Meta, "previous_layout", prev.as_slice()),
            None => writes.delete(Space::Meta, "previous_layout"),
        }
        writes.put(Space::Meta, "pending", pending_bits(&saved.pending));
        self.write(writes).await
    }

    /// The partitions this store holds any record of (one seek per partition).
    pub(crate) fn partitions_present(&self) -> Result<Vec<Partition>, StorageError> {
        let mut out = Vec::new();
        for p in (0..crate::domain::ids::PARTITIONS).filter_map(Partition::new) {
            if let Some(first) = self.data.prefix(p.to_be_bytes()).next() {
                first.key()?;
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Syncs everything committed so far to disk (data and metadata).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// Stops the writer (its last act is a full sync), and releases the database.
    pub async fn close(self) -> Result<(), StorageError> {
        let Store {
            db, commit, writer, ..
        } = self;
        drop(commit);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|_| StorageError::Io("the store's writer did not stop".into()))?
            .map_err(|_| StorageError::Io("the store's writer panicked".into()))?;
        db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
