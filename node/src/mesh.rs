//! The node's place in the mesh: its id, the current verified layout, the peer transport and the
//! proof verifier. Answers the one routing question: is this partition mine, or whose is it?
//!
//! Without a layout (a standalone node) every partition is local. With one, the layout decides;
//! a new layout replaces the current one only if it verifies against the control key and is newer.

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

#[derive(Debug)]
pub struct Mesh {
    pub node_id: String,
    pub trust_domain: String,
    control_key: Option<ControlPublicKey>,
    layout: RwLock<Option<Arc<Layout>>>,
    pub transport: Arc<PeerTransport>,
    pub proofs: ProofVerifier,
}

impl Mesh {
    pub fn new(
        node_id: String,
        trust_domain: String,
        control_key: Option<ControlPublicKey>,
        layout: Option<Layout>,
        transport: Arc<PeerTransport>,
        proofs: ProofVerifier,
    ) -> Mesh {
        Mesh {
            node_id,
            trust_domain,
            control_key,
            layout: RwLock::new(layout.map(Arc::new)),
            transport,
            proofs,
        }
    }

    pub fn layout(&self) -> Option<Arc<Layout>> {
        self.layout
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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

    /// Whether `node_id` is a member of the current layout (peers must be).
    pub fn is_member(&self, node_id: &str) -> bool {
        self.layout().is_some_and(|l| l.is_member(node_id))
    }

    /// Verifies `signed` against the control key and checks it may follow the current layout.
    pub fn verify_next(&self, signed: &SignedLayout) -> Result<Layout, LayoutError> {
        let key = self.control_key.as_ref().ok_or_else(|| {
            LayoutError::Invalid(
                "this node has no control public key configured (control_public_key)".into(),
            )
        })?;
        let layout = Layout::verify(signed, key)?;
        layout.may_follow(self.layout().as_deref())?;
        Ok(layout)
    }

    /// Makes a verified layout current, unless a newer one was installed meanwhile.
    pub fn install(&self, layout: Arc<Layout>) {
        let mut current = self
            .layout
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if layout.may_replace(current.as_deref()).is_ok() {
            tracing::info!(
                version = layout.version,
                members = layout.members.len(),
                "layout applied"
            );
            *current = Some(layout);
        }
    }
}
