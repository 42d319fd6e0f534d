//! The node's place in the mesh: its id, the current verified layout, the peer transport and the
//! proof verifier. Answers the one routing question: is this partition mine, or whose is it?
//!
//! Without a layout (a standalone node) every partition is local. With one, the current layout
//! decides; the previous one is kept while partitions move away from it (its members may still
//! talk to us, and it names where each moving partition comes from). Layout changes themselves are
//! made by `rebalance`, which persists them first.

use crate::ids::Partition;
use crate::layout::{ControlPublicKey, Layout, LayoutError, Member};
use crate::proof::ProofVerifier;
use crate::transport::PeerTransport;
use mesh_proto::v1::SignedLayout;
use std::sync::{Arc, RwLock};

/// Where a partition's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote(Member),
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
    pub transport: Arc<PeerTransport>,
    pub proofs: ProofVerifier,
}

impl Mesh {
    pub fn new(
        node_id: String,
        trust_domain: String,
        control_key: Option<ControlPublicKey>,
        layouts: Option<Layouts>,
        transport: Arc<PeerTransport>,
        proofs: ProofVerifier,
    ) -> Mesh {
        Mesh {
            node_id,
            trust_domain,
            control_key,
            layouts: RwLock::new(layouts),
            transport,
            proofs,
        }
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

    /// Where requests for partition `p` go under the current layout.
    pub fn route(&self, p: Partition) -> Route {
        match self.layout() {
            None => Route::Local,
            Some(l) => {
                let owner = l.owner_of(p);
                if owner.node_id == self.node_id {
                    Route::Local
                } else {
                    Route::Remote(owner.clone())
                }
            }
        }
    }

    /// Whether `node_id` may talk to this node: a member of the current layout or of the one before
    /// it (a node leaving the mesh serves its partitions to their new owners until they have them).
    pub fn is_member(&self, node_id: &str) -> bool {
        self.layouts().is_some_and(|l| {
            l.current.is_member(node_id) || l.previous.is_some_and(|p| p.is_member(node_id))
        })
    }

    /// Verifies `signed` against the control key and checks it is the next version.
    pub fn verify_next(&self, signed: &SignedLayout) -> Result<Layout, LayoutError> {
        let layout = self.verify(signed)?;
        layout.may_replace(self.layout().as_deref())?;
        Ok(layout)
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
        *layouts = Some(Layouts {
            current: layout,
            signed,
            previous,
        });
    }
}
