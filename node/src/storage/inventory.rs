//! The offline health check of a store (`mesh-node inspect`): every record read and decrypted, every
//! index entry followed. A healthy store has no unreadable record and no dangling index entry,
//! because every write is one atomic batch.

use super::{DataKey, Inventory, StorageError, Store, hash_of, keys};

impl Store {
    /// Reads and decrypts every record: how many customers and orders each partition holds, how
    /// many records are unreadable, and how many index entries point nowhere.
    pub fn inventory(&self) -> Result<Inventory, StorageError> {
        let mut inv = Inventory::default();
        let mut current: Option<(Vec<u8>, Option<DataKey>)> = None;
        for kv in self.data.iter() {
            let (k, v) = kv.into_inner()?;
            let Some((p, kind)) = keys::parse(&k) else {
                inv.unreadable += 1;
                continue;
            };
            let count = inv.partitions.entry(p.get()).or_default();
            match kind {
                keys::CUSTOMER => {
                    inv.customers += 1;
                    count.customers += 1;
                }
                keys::ORDER => {
                    inv.orders += 1;
                    count.orders += 1;
                    let ck = keys::customer_key_of_order(&k).unwrap_or_default();
                    if current.as_ref().is_none_or(|(c, _)| *c != ck) {
                        current = Some((ck.clone(), self.data_key(&ck).ok().flatten()));
                    }
                    let readable = current
                        .as_ref()
                        .and_then(|(_, dek)| dek.as_ref())
                        .is_some_and(|dek| Self::open_order(dek, &k, &v).is_ok());
                    if !readable {
                        inv.unreadable += 1;
                    }
                }
                keys::INDEX | keys::HANDLE => {
                    let found = match kind {
                        keys::INDEX => {
                            match (keys::hashes(&k).next(), hash_of(&v, "order index")) {
                                (Some(oh), Ok(ch)) => {
                                    self.data.contains_key(keys::order_key(p, &ch, &oh))?
                                }
                                _ => false,
                            }
                        }
                        _ => match hash_of(&v, "handle index") {
                            Ok(oh) => self.locate_hash(p, oh)?.is_some(),
                            Err(_) => false,
                        },
                    };
                    if !found {
                        inv.dangling_index += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(inv)
    }
}
