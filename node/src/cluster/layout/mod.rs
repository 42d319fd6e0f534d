//! Layouts: which node owns which partition, versioned and signed.
//!
//! - [`Layout`]: members, the partition table (an ordered replica list per partition, one replica
//!   today) and a version that only ever grows. [`Layout::check`] states its invariants.
//! - [`Layout::initial`] and [`Layout::next`] compute tables with `assign` (the algorithm).
//! - [`ControlKey`] signs layouts (it lives with `mesh-ctl`, never on nodes); [`ControlPublicKey`]
//!   verifies them on every node. [`Layout::verify`] is the only way a node gets a layout from bytes.
//!
//! Wire and disk format: `dsm.v1.SignedLayout` (the exact encoded `dsm.v1.Layout` bytes plus an
//! Ed25519 signature over `"dsm-layout-v1" || bytes`). `Layout.format` versions the message.

pub mod assign;

use crate::domain::ids::{PARTITIONS, Partition};
use crate::security::control_key::{ControlKey, ControlPublicKey, KeyFileError};
use crate::security::identity::is_valid_name;
use mesh_proto::v1 as pb;
use prost::Message as _;
use std::collections::BTreeMap;

/// Format of `dsm.v1.Layout` this binary reads and writes.
pub(crate) const LAYOUT_FORMAT: u32 = 1;
const SIGNING_CONTEXT: &[u8] = b"dsm-layout-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("layout signature does not verify against the mesh control key")]
    BadSignature,
    #[error("layout bytes do not decode")]
    Decode,
    #[error("layout format {0} is not supported by this binary (it reads format {LAYOUT_FORMAT})")]
    Format(u32),
    #[error("layout version {offered} is not newer than the current version {current}")]
    NotNewer { offered: u64, current: u64 },
    #[error(
        "layout version {offered} skips ahead of the current version {current}: apply version {} first",
        current + 1
    )]
    Skipped { offered: u64, current: u64 },
    #[error(
        "layout version {offered} cannot be applied yet: {pending} partitions of version {current} are still moving to or from this node; wait for the rebalance to finish (`mesh-ctl rebalance status`)"
    )]
    InTransition {
        offered: u64,
        current: u64,
        pending: usize,
    },
    #[error(
        "layout version {offered} gives this node partitions, but it has no record of the layout before it, so it cannot know who holds their data: start a joining node with the mesh's current layout and let `mesh-ctl layout apply` move it on"
    )]
    NoHistory { offered: u64 },
    #[error("invalid layout: {0}")]
    Invalid(String),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
}

/// One node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub node_id: String,
    pub peer_addr: String,
    pub gateway_addr: String,
}

/// A versioned partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: u64,
    /// Sorted by node id.
    pub members: Vec<Member>,
    pub replication: usize,
    /// `replication` member indices per partition, primary first.
    assignment: Vec<u16>,
}

impl Layout {
    /// The first layout of a mesh (version 1).
    pub fn initial(members: Vec<Member>) -> Result<Layout, LayoutError> {
        Layout::compute(1, members, &vec![None; usize::from(PARTITIONS)])
    }

    /// The next layout for a new member list, moving as few partitions as possible.
    pub fn next(&self, members: Vec<Member>) -> Result<Layout, LayoutError> {
        let mut sorted = members;
        sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let index: BTreeMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, m)| (m.node_id.as_str(), i))
            .collect();
        let previous: Vec<Option<usize>> = (0..usize::from(PARTITIONS))
            .map(|p| {
                index
                    .get(
                        self.members[usize::from(self.assignment[p * self.replication])]
                            .node_id
                            .as_str(),
                    )
                    .copied()
            })
            .collect();
        let version = self
            .version
            .checked_add(1)
            .ok_or_else(|| LayoutError::Invalid("layout version is at its maximum".into()))?;
        Layout::compute(version, sorted, &previous)
    }

    fn compute(
        version: u64,
        mut members: Vec<Member>,
        previous: &[Option<usize>],
    ) -> Result<Layout, LayoutError> {
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        if members.is_empty() {
            return Err(LayoutError::Invalid(
                "a layout needs at least one member".into(),
            ));
        }
        let ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
        let assignment = assign::assign(previous, &ids)
            .into_iter()
            .map(|m| m as u16)
            .collect();
        let layout = Layout {
            version,
            members,
            replication: 1,
            assignment,
        };
        layout.check()?;
        Ok(layout)
    }

    /// The invariants every layout satisfies; verified layouts are checked before use.
    pub fn check(&self) -> Result<(), LayoutError> {
        let bad = |s: String| Err(LayoutError::Invalid(s));
        if self.version == 0 {
            return bad("version must be at least 1".into());
        }
        if self.members.is_empty() || self.members.len() > usize::from(PARTITIONS) {
            return bad(format!(
                "{} members; a layout has 1 to {PARTITIONS}",
                self.members.len()
            ));
        }
        if self.replication != 1 {
            return bad(format!(
                "replication {} is not supported yet (1)",
                self.replication
            ));
        }
        for w in self.members.windows(2) {
            if w[0].node_id >= w[1].node_id {
                return bad(format!(
                    "members must be sorted and unique (`{}` then `{}`)",
                    w[0].node_id, w[1].node_id
                ));
            }
        }
        for m in &self.members {
            if !is_valid_name(&m.node_id) {
                return bad(format!("invalid node id `{}`", m.node_id));
            }
        }
        if self.assignment.len() != usize::from(PARTITIONS) * self.replication {
            return bad(format!(
                "{} assignment entries for {PARTITIONS} partitions",
                self.assignment.len()
            ));
        }
        let mut load = vec![0usize; self.members.len()];
        for &m in &self.assignment {
            let Some(l) = load.get_mut(usize::from(m)) else {
                return bad(format!("assignment names member {m}, which does not exist"));
            };
            *l += 1;
        }
        let (min, max) = (
            load.iter().min().copied().unwrap_or(0),
            load.iter().max().copied().unwrap_or(0),
        );
        if max - min > 1 {
            return bad(format!(
                "unbalanced: members hold between {min} and {max} partitions"
            ));
        }
        Ok(())
    }

    pub fn owner_of(&self, p: Partition) -> &Member {
        &self.members[usize::from(self.assignment[usize::from(p.get()) * self.replication])]
    }

    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    pub fn is_member(&self, node_id: &str) -> bool {
        self.member(node_id).is_some()
    }

    /// The partitions whose primary is `node_id`.
    pub fn partitions_of(&self, node_id: &str) -> Vec<Partition> {
        (0..PARTITIONS)
            .filter_map(Partition::new)
            .filter(|p| self.owner_of(*p).node_id == node_id)
            .collect()
    }

    /// Partition counts per member.
    pub fn loads(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = self
            .members
            .iter()
            .map(|m| (m.node_id.clone(), 0))
            .collect();
        for p in (0..PARTITIONS).filter_map(Partition::new) {
            *out.entry(self.owner_of(p).node_id.clone()).or_default() += 1;
        }
        out
    }

    fn to_proto(&self) -> pb::Layout {
        pb::Layout {
            format: LAYOUT_FORMAT,
            version: self.version,
            partitions: u32::from(PARTITIONS),
            replication: self.replication as u32,
            members: self
                .members
                .iter()
                .map(|m| pb::LayoutMember {
                    node_id: m.node_id.clone(),
                    peer_addr: m.peer_addr.clone(),
                    gateway_addr: m.gateway_addr.clone(),
                })
                .collect(),
            assignment: self.assignment.iter().map(|&m| u32::from(m)).collect(),
        }
    }

    fn from_proto(p: pb::Layout) -> Result<Layout, LayoutError> {
        if p.format != LAYOUT_FORMAT {
            return Err(LayoutError::Format(p.format));
        }
        if p.partitions != u32::from(PARTITIONS) {
            return Err(LayoutError::Invalid(format!(
                "{} partitions; this mesh has {PARTITIONS}",
                p.partitions
            )));
        }
        let assignment = p
            .assignment
            .iter()
            .map(|&m| {
                u16::try_from(m)
                    .map_err(|_| LayoutError::Invalid(format!("member index {m} out of range")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layout = Layout {
            version: p.version,
            members: p
                .members
                .into_iter()
                .map(|m| Member {
                    node_id: m.node_id,
                    peer_addr: m.peer_addr,
                    gateway_addr: m.gateway_addr,
                })
                .collect(),
            replication: p.replication as usize,
            assignment,
        };
        layout.check()?;
        Ok(layout)
    }

    /// Signs this layout with the control key.
    pub fn sign(&self, key: &ControlKey) -> pb::SignedLayout {
        let bytes = self.to_proto().encode_to_vec();
        let signature = key.sign(&[SIGNING_CONTEXT, &bytes].concat());
        pb::SignedLayout {
            layout: bytes,
            signature,
        }
    }

    /// Verifies a signed layout and checks its invariants. The only way to get a layout from bytes.
    pub fn verify(
        signed: &pb::SignedLayout,
        key: &ControlPublicKey,
    ) -> Result<Layout, LayoutError> {
        if !key.verifies(
            &[SIGNING_CONTEXT, &signed.layout].concat(),
            &signed.signature,
        ) {
            return Err(LayoutError::BadSignature);
        }
        let proto =
            pb::Layout::decode(signed.layout.as_slice()).map_err(|_| LayoutError::Decode)?;
        Layout::from_proto(proto)
    }

    /// Whether a node holding `current` may move to this layout: exactly the next version, so no
    /// node skips a change the others went through.
    pub(crate) fn may_replace(&self, current: Option<&Layout>) -> Result<(), LayoutError> {
        match current {
            Some(c) if self.version <= c.version => Err(LayoutError::NotNewer {
                offered: self.version,
                current: c.version,
            }),
            Some(c) if self.version > c.version + 1 => Err(LayoutError::Skipped {
                offered: self.version,
                current: c.version,
            }),
            _ => Ok(()),
        }
    }

    /// How many partitions change owner from `current` to this layout.
    pub fn moved_from(&self, current: &Layout) -> usize {
        self.moves_from(current).count()
    }

    /// The partitions that change owner from `current` to this layout.
    pub fn moves_from<'a>(&'a self, current: &'a Layout) -> impl Iterator<Item = Partition> + 'a {
        (0..PARTITIONS)
            .filter_map(Partition::new)
            .filter(|p| self.owner_of(*p).node_id != current.owner_of(*p).node_id)
    }
}

#[cfg(test)]
mod tests;
