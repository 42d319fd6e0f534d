//! The audit trail as the rebalance journal: one record per partition export, import, shred and
//! refused pull (see `cluster::rebalance::journal` and ARCHITECTURE.md, "Handoff").
//!
//! The record's principal is the other node (`node:<id>`, as for the log's own records), its role
//! `node`, and its purpose names the partition, the peer, the layout version and the counts. No
//! customer or order is named: a handoff moves a whole partition.

use crate::audit::log::{AuditLog, Entry};
use crate::cluster::rebalance::journal::{Handoff, Journal, Step};
use crate::error::Error;
use std::future::Future;
use std::pin::Pin;

fn entry(h: Handoff) -> Entry {
    let (p, peer, v) = (h.partition, &h.peer, h.layout);
    let purpose = match h.step {
        Step::Exported => format!("partition {p} sent to node {peer}, its owner in layout v{v}"),
        Step::Imported => format!("partition {p} received from node {peer} for layout v{v}"),
        Step::Shredded => {
            format!("partition {p} deleted here: node {peer} holds it in layout v{v}")
        }
        Step::Refused => {
            format!("partition {p} not sent to node {peer} (this node at layout v{v})")
        }
    };
    Entry {
        principal: format!("node:{peer}"),
        role: "node".into(),
        action: h.step.action().into(),
        purpose: if h.detail.is_empty() {
            purpose
        } else {
            format!("{purpose}: {}", h.detail)
        },
        allowed: h.refused.is_none(),
        reason: h.refused.unwrap_or_default().into(),
        ..Entry::default()
    }
}

impl Journal for AuditLog {
    fn record(&self, h: Handoff) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        let (action, partition) = (h.step.action(), h.partition.get());
        Box::pin(async move {
            self.append(entry(h)).await.map(|_| ()).map_err(|e| {
                tracing::error!(error = %e, action, partition, "handoff not recorded; not done");
                Error::Unavailable(
                    "the audit trail is unavailable, so the handoff step was not taken; retry later"
                        .into(),
                )
            })
        })
    }
}
