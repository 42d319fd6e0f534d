//! What a layout change means for this node, before anything moves: the partitions it gains
//! ([`plan`]), and the layouts it starts with ([`initial_layouts`]: the stored ones, moved on to
//! the configured layout file by the same rule as a runtime apply).

use crate::cluster::layout::{Layout, LayoutError};
use crate::cluster::routing::Layouts;
use crate::domain::ids::Partition;
use crate::security::control_key::ControlPublicKey;
use crate::storage::{SavedLayout, Store};
use mesh_proto::v1::SignedLayout;
use prost::Message as _;
use std::sync::Arc;

/// What a node does with a new layout: the partitions it gains (pending until received).
/// `pending_now` is how many partitions of the current change it has yet to receive or shred.
pub fn plan(
    node_id: &str,
    current: Option<&Layout>,
    next: &Layout,
    pending_now: usize,
) -> Result<Vec<Partition>, LayoutError> {
    next.may_replace(current)?;
    if pending_now > 0 {
        return Err(LayoutError::InTransition {
            offered: next.version,
            current: current.map_or(0, |c| c.version),
            pending: pending_now,
        });
    }
    match current {
        Some(c) => Ok(next
            .moves_from(c)
            .filter(|p| next.owner_of(*p).node_id == node_id)
            .collect()),
        // A mesh's first layout moves nothing. A node with no history that a later layout gives
        // partitions cannot know where their data is, so it must not serve them empty.
        None if next.version > 1 && !next.partitions_of(node_id).is_empty() => {
            Err(LayoutError::NoHistory {
                offered: next.version,
            })
        }
        None => Ok(Vec::new()),
    }
}

/// The layout state a node starts with: its stored layouts, moved on to the configured layout file
/// if that is newer (by the same rule as a runtime apply).
pub(crate) async fn initial_layouts(
    node_id: &str,
    store: &Store,
    key: Option<&ControlPublicKey>,
    configured: Option<&SignedLayout>,
) -> Result<(Option<Layouts>, Vec<Partition>), LayoutError> {
    let decode = |bytes: &[u8]| -> Result<(Layout, SignedLayout), LayoutError> {
        let signed = SignedLayout::decode(bytes).map_err(|_| LayoutError::Decode)?;
        let key = key.ok_or_else(|| {
            LayoutError::Invalid(
                "a layout is stored but no control_public_key is configured".into(),
            )
        })?;
        Ok((Layout::verify(&signed, key)?, signed))
    };
    let saved = store
        .saved_layout()
        .map_err(|e| LayoutError::Invalid(format!("reading the stored layout: {e}")))?;
    let (mut layouts, mut pending) = match saved {
        None => (None, Vec::new()),
        Some(saved) => {
            let (current, signed) = decode(&saved.current)?;
            let previous = match &saved.previous {
                Some(bytes) => Some(Arc::new(decode(bytes)?.0)),
                None => None,
            };
            (
                Some(Layouts {
                    current: Arc::new(current),
                    signed,
                    previous,
                }),
                saved.pending,
            )
        }
    };
    if let Some(signed) = configured {
        let key = key.ok_or_else(|| {
            LayoutError::Invalid("layout_file needs control_public_key to verify it".into())
        })?;
        let next = Layout::verify(signed, key)?;
        let mut current = layouts.as_ref().map(|l| l.current.clone());
        // A node that left the mesh (it owns nothing in its stored layout, holds no data and
        // expects none) may come back on a layout any number of versions later: it has nothing to
        // reconcile, so it starts as a node without history.
        let gone = current.as_ref().is_some_and(|c| {
            next.version > c.version + 1
                && c.partitions_of(node_id).is_empty()
                && pending.is_empty()
        });
        if gone
            && store
                .partitions_present()
                .map_err(|e| LayoutError::Invalid(format!("reading the store: {e}")))?
                .is_empty()
        {
            current = None;
            layouts = None;
        }
        if current.as_ref().is_none_or(|c| next.version > c.version) {
            let gained = plan(node_id, current.as_deref(), &next, pending.len())?;
            let saved = SavedLayout {
                current: signed.encode_to_vec(),
                previous: layouts.as_ref().map(|l| l.signed.encode_to_vec()),
                pending: gained.clone(),
            };
            store
                .save_layout(&saved)
                .await
                .map_err(|e| LayoutError::Invalid(format!("persisting the layout: {e}")))?;
            layouts = Some(Layouts {
                current: Arc::new(next),
                signed: signed.clone(),
                previous: current,
            });
            pending = gained;
        }
    }
    Ok((layouts, pending))
}
