//! A partition export on the wire (`dsm.v1.PartitionData`) and back: the one place its fields are
//! mapped, and where an import from a peer is checked before anything is stored.

use crate::domain::ids::Partition;
use crate::error::Error;
use crate::security::proof::{MAX_SPENT_PER_PARTITION, SpentProofs};
use crate::storage::handoff::{CustomerExport, PartitionExport};
use mesh_proto::v1::{PartitionData, SealedOrder, SpentProof, TransferredCustomer};

/// The handoff message: the partition's data and the client proofs already spent on it.
pub(super) fn to_wire(export: &PartitionExport, spent: SpentProofs) -> PartitionData {
    PartitionData {
        partition: u32::from(export.partition.get()),
        spent_proofs: spent
            .nonces
            .into_iter()
            .map(|(timestamp_unix_ms, nonce)| SpentProof {
                timestamp_unix_ms,
                nonce,
            })
            .collect(),
        proofs_not_before_unix_ms: spent.not_before_ms,
        customers: export
            .customers
            .iter()
            .map(|c| TransferredCustomer {
                data_key: c.data_key.to_wire(),
                orders: c
                    .orders
                    .iter()
                    .map(|(storage_key, sealed)| SealedOrder {
                        storage_key: storage_key.clone(),
                        sealed: sealed.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The export in a handoff message, which must be for partition `p`, and the proofs spent on it.
/// The raw key bytes in the message are wiped as they are taken.
pub(super) fn from_wire(
    p: Partition,
    mut data: PartitionData,
) -> Result<(PartitionExport, SpentProofs), Error> {
    if data.partition != u32::from(p.get()) {
        return Err(Error::Unavailable(format!(
            "asked for partition {p}, received partition {}",
            data.partition
        )));
    }
    if data.spent_proofs.len() > MAX_SPENT_PER_PARTITION {
        return Err(Error::Unavailable(format!(
            "partition {p} arrived with {} spent proofs, more than the {MAX_SPENT_PER_PARTITION} a handoff may carry",
            data.spent_proofs.len()
        )));
    }
    let spent = SpentProofs {
        nonces: std::mem::take(&mut data.spent_proofs)
            .into_iter()
            .map(|s| (s.timestamp_unix_ms, s.nonce))
            .collect(),
        not_before_ms: data.proofs_not_before_unix_ms,
    };
    let mut customers = Vec::with_capacity(data.customers.len());
    for c in &mut data.customers {
        let key = crate::security::crypto::TransferKey::from_bytes(&c.data_key);
        c.data_key.fill(0);
        std::hint::black_box(&c.data_key);
        let data_key = key.ok_or_else(|| {
            Error::Unavailable(format!("partition {p} arrived with a malformed data key"))
        })?;
        customers.push(CustomerExport {
            data_key,
            orders: std::mem::take(&mut c.orders)
                .into_iter()
                .map(|o| (o.storage_key, o.sealed))
                .collect(),
        });
    }
    Ok((
        PartitionExport {
            partition: p,
            customers,
        },
        spent,
    ))
}
