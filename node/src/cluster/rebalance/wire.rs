//! A partition export on the wire (`dsm.v1.PartitionData`) and back: the one place its fields are
//! mapped, and where an import from a peer is checked before anything is stored.

use crate::domain::ids::Partition;
use crate::error::Error;
use crate::storage::handoff::{CustomerExport, PartitionExport};
use mesh_proto::v1::{PartitionData, SealedOrder, TransferredCustomer};

pub(super) fn to_wire(export: &PartitionExport) -> PartitionData {
    PartitionData {
        partition: u32::from(export.partition.get()),
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

/// The export in a handoff message, which must be for partition `p`. The raw key bytes in the
/// message are wiped as they are taken.
pub(super) fn from_wire(p: Partition, mut data: PartitionData) -> Result<PartitionExport, Error> {
    if data.partition != u32::from(p.get()) {
        return Err(Error::Unavailable(format!(
            "asked for partition {p}, received partition {}",
            data.partition
        )));
    }
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
    Ok(PartitionExport {
        partition: p,
        customers,
    })
}
