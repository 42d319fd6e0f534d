//! What a handoff tells the audit trail: every export, import and shred of a partition, and every
//! pull this node refused, is one record (ARCHITECTURE.md, "Handoff"). The cluster layer names
//! only this trait; the audit layer above implements it on its log, so the dependency points down.
//!
//! Recording is fail-closed like every other record: an export or an import that cannot be
//! recorded does not happen (the puller retries), and a leftover whose shred cannot be recorded
//! stays a leftover until it can.

use crate::domain::ids::Partition;
use crate::error::Error;
use std::future::Future;
use std::pin::Pin;

/// One step of a handoff, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This node sent the partition (data keys included) to `peer`, its owner in `layout`.
    Exported,
    /// This node received the partition from `peer`, its owner before `layout`.
    Imported,
    /// This node deleted its copy (and its wrapped data keys) once `peer` held the partition.
    Shredded,
    /// This node refused `peer`'s pull; nothing was sent.
    Refused,
}

impl Step {
    /// The audit record's action.
    pub fn action(self) -> &'static str {
        match self {
            Step::Exported => "PartitionExported",
            Step::Imported => "PartitionImported",
            Step::Shredded => "PartitionShredded",
            Step::Refused => "PartitionPull",
        }
    }
}

/// A step with what it concerns. `detail` is counts or the refusal's message: never PII.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub step: Step,
    pub partition: Partition,
    /// The other node's id.
    pub peer: String,
    /// The layout version the step happened under.
    pub layout: u64,
    pub detail: String,
    /// For a refusal: the gRPC code name it was refused with.
    pub refused: Option<&'static str>,
}

/// Where handoff steps are recorded.
pub trait Journal: Send + Sync + std::fmt::Debug + 'static {
    /// Records `handoff` durably, or says why it could not.
    fn record(
        &self,
        handoff: Handoff,
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>>;
}
