//! The node's place in the mesh: its id, the current verified layout, the partitions in motion,
//! the peer client and the proof verifier. It gives the one routing answer ([`Mesh::route`]) that
//! the gateway and the rebalancer both ask: serve here, forward to the owner, or relay to the
//! previous owner during a move (ARCHITECTURE.md, "The life of a request" and "A partition
//! handoff").
//!
//! Without a layout (a standalone node) every partition is served here. With one, the current
//! layout decides, refined by the partitions in motion: one this node owns but has not received
//! yet is still served by its previous owner (a signed request can be sent there; an unsigned one
//! waits here for the pull), and one it gave away but has not handed over yet is still served
//! here. The previous layout is kept while partitions move away from it (its members may still
//! talk to us, and it names where each moving partition comes from). Layout changes themselves
//! are made by `rebalance`, which persists them first and keeps [`Moving`] up to date.

use crate::cluster::layout::{Layout, LayoutError, Member};
use crate::cluster::peer::PeerClient;
use crate::domain::ids::Partition;
use crate::security::control_key::ControlPublicKey;
use crate::security::proof::ProofVerifier;
use mesh_proto::v1::SignedLayout;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Where a request for a partition is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: this node owns the partition (once received), or still holds it after giving it away.
    Serve,
    /// On its owner under the current layout.
    Forward(Member),
    /// On its previous owner, which serves it until this node has pulled it (signed requests only).
    Relay(Member),
}

/// The partitions of this node that are mid-move (kept by `rebalance`, read by [`Mesh::route`]).
#[derive(Debug, Default)]
pub struct Moving {
    /// Owned under the current layout, not received yet.
    pub pending: BTreeSet<Partition>,
    /// Held here, owned elsewhere: shredded once the owner confirms.
    pub leftover: BTreeSet<Partition>,
    /// Given away by the latest change but not exported yet: this node still serves them (the new
    /// owner sends their requests here until it has pulled them). Empty after a restart, so a
    /// restarted old owner never serves a partition it may already have handed over.
    pub holding: BTreeSet<Partition>,
}

/// The layouts a node runs: the current one (as verified and as signed) and the one it replaced.
#[derive(Debug, Clone)]
pub struct Layouts {
    pub current: Arc<Layout>,
    pub signed: SignedLayout,
    pub previous: Option<Arc<Layout>>,
}

#[derive(Debug)]
pub struct Mesh {
    pub node_id: String,
    pub trust_domain: String,
    control_key: Option<ControlPublicKey>,
    layouts: RwLock<Option<Layouts>>,
    /// Partitions in motion; one lock with the routing answer that reads them.
    moving: Mutex<Moving>,
    pub peers: PeerClient,
    pub proofs: ProofVerifier,
}

impl Mesh {
    pub fn new(
        node_id: String,
        trust_domain: String,
        control_key: Option<ControlPublicKey>,
        layouts: Option<Layouts>,
        peers: PeerClient,
        proofs: ProofVerifier,
    ) -> Mesh {
        Mesh {
            node_id,
            trust_domain,
            control_key,
            layouts: RwLock::new(layouts),
            moving: Mutex::new(Moving::default()),
            peers,
            proofs,
        }
    }

    /// The partitions in motion (for `rebalance`, which changes them).
    pub fn moving(&self) -> MutexGuard<'_, Moving> {
        self.moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn layouts(&self) -> Option<Layouts> {
        self.layouts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn layout(&self) -> Option<Arc<Layout>> {
        self.layouts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|l| l.current.clone())
    }

    /// The one routing answer: where a request for partition `p` is served now. `signed` says
    /// whether the request carries its client's end-to-end proof, without which no other node
    /// may serve it on the client's behalf.
    pub fn route(&self, p: Partition, signed: bool) -> Route {
        // The owners are read under the layouts lock (cloning two members, not the layouts), and
        // the lock is released before the moving sets are read: the two locks never nest.
        let (owner, previous_owner) = {
            let layouts = self
                .layouts
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(l) = layouts.as_ref() else {
                return Route::Serve;
            };
            let owner = l.current.owner_of(p);
            if owner.node_id != self.node_id {
                (Some(owner.clone()), None)
            } else {
                (
                    None,
                    l.previous.as_ref().map(|prev| prev.owner_of(p).clone()),
                )
            }
        };
        let moving = self.moving();
        match (owner, previous_owner) {
            (Some(_), _) if moving.holding.contains(&p) => Route::Serve,
            (Some(owner), _) => Route::Forward(owner),
            (None, Some(previous)) if signed && moving.pending.contains(&p) => {
                Route::Relay(previous)
            }
            (None, _) => Route::Serve,
        }
    }

    /// The owner of partition `p` under the current layout, unless it is this node (or there is no
    /// layout, when every partition is this node's).
    pub(crate) fn owner_elsewhere(&self, p: Partition) -> Option<Member> {
        let layout = self.layout()?;
        let owner = layout.owner_of(p);
        (owner.node_id != self.node_id).then(|| owner.clone())
    }

    /// Whether this node owns partition `p` under the current layout.
    pub fn owns(&self, p: Partition) -> bool {
        self.owner_elsewhere(p).is_none()
    }

    /// Whether `node_id` may talk to this node: a member of the current layout or of the one before
    /// it (a node leaving the mesh serves its partitions to their new owners until they have them).
    pub fn is_member(&self, node_id: &str) -> bool {
        self.layouts().is_some_and(|l| {
            l.current.is_member(node_id) || l.previous.is_some_and(|p| p.is_member(node_id))
        })
    }

    /// Verifies `signed` against the control key.
    pub fn verify(&self, signed: &SignedLayout) -> Result<Layout, LayoutError> {
        let key = self.control_key.as_ref().ok_or_else(|| {
            LayoutError::Invalid(
                "this node has no control public key configured (control_public_key)".into(),
            )
        })?;
        Layout::verify(signed, key)
    }

    /// Makes a verified, persisted layout current; the one it replaces becomes the previous one.
    pub fn install(&self, layout: Arc<Layout>, signed: SignedLayout) {
        let mut layouts = self
            .layouts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tracing::info!(
            version = layout.version,
            members = layout.members.len(),
            "layout applied"
        );
        let previous = layouts.take().map(|l| l.current);
        // A node that joins (or rejoins) is up now, whatever its last failure here was.
        self.peers.forget_failures(
            layout
                .members
                .iter()
                .filter(|m| previous.as_ref().is_none_or(|p| !p.is_member(&m.node_id)))
                .map(|m| m.node_id.as_str()),
        );
        *layouts = Some(Layouts {
            current: layout,
            signed,
            previous,
        });
    }
}
