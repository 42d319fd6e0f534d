//! The `layout` target: `SignedLayout::decode`, `Layout::verify` and what a node does with a
//! verified layout.

use super::{at, bytes_from, fuzz, layouts, member, name_like};
use crate::cluster::layout::Layout;
use crate::domain::ids::PARTITIONS;
use crate::security::control_key::ControlKey;
use mesh_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use std::sync::Arc;

/// The signed bytes of a layout as the signer would produce them over `inner`.
fn resign(inner: Vec<u8>, key: &ControlKey) -> pb::SignedLayout {
    let signature = key.sign(&[b"dsm-layout-v1".as_slice(), &inner].concat());
    pb::SignedLayout {
        layout: inner,
        signature,
    }
}

#[derive(Debug, Clone)]
enum LayoutEdit {
    Format(u32),
    Version(u64),
    Partitions(u32),
    Replication(u32),
    Rename(usize, String),
    Drop(usize),
    Add(String),
    Swap(usize, usize),
    Assign(usize, u32),
    TruncateAssignment(usize),
    PushAssignment(u32),
}

fn layout_edit() -> impl Strategy<Value = LayoutEdit> {
    let small = prop_oneof![3 => 0..8u32, 1 => any::<u32>()];
    prop_oneof![
        1 => (0..3u32).prop_map(LayoutEdit::Format),
        1 => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0..5u64].prop_map(LayoutEdit::Version),
        1 => prop_oneof![Just(4096u32), Just(4095), Just(0), any::<u32>()].prop_map(LayoutEdit::Partitions),
        1 => prop_oneof![0..3u32, any::<u32>()].prop_map(LayoutEdit::Replication),
        1 => (any::<usize>(), name_like()).prop_map(|(i, n)| LayoutEdit::Rename(i, n)),
        1 => any::<usize>().prop_map(LayoutEdit::Drop),
        1 => name_like().prop_map(LayoutEdit::Add),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LayoutEdit::Swap(a, b)),
        3 => (any::<usize>(), small.clone()).prop_map(|(i, m)| LayoutEdit::Assign(i, m)),
        1 => any::<usize>().prop_map(LayoutEdit::TruncateAssignment),
        1 => small.prop_map(LayoutEdit::PushAssignment),
    ]
}

#[derive(Debug, Clone)]
enum LayoutInput {
    /// A stored or received `SignedLayout`, mutated: stops at the signature unless untouched.
    Signed(Vec<u8>),
    /// The layout bytes mutated, then signed: what the control key's holder could send.
    Inner(Vec<u8>),
    /// A real layout with its fields edited, then signed.
    Fields(usize, Vec<LayoutEdit>),
}

fn edit_layout(mut l: pb::Layout, edits: &[LayoutEdit]) -> pb::Layout {
    for e in edits {
        let (n, a) = (l.members.len(), l.assignment.len());
        match e {
            LayoutEdit::Format(f) => l.format = *f,
            LayoutEdit::Version(v) => l.version = *v,
            LayoutEdit::Partitions(p) => l.partitions = *p,
            LayoutEdit::Replication(r) => l.replication = *r,
            LayoutEdit::Rename(i, name) => {
                if n > 0 {
                    l.members[at(i, n)].node_id = name.clone();
                }
            }
            LayoutEdit::Drop(i) => {
                if n > 0 {
                    l.members.remove(at(i, n));
                }
            }
            LayoutEdit::Add(name) => l.members.push(pb::LayoutMember {
                node_id: name.clone(),
                peer_addr: "127.0.0.1:7999".into(),
                gateway_addr: String::new(),
            }),
            LayoutEdit::Swap(i, j) => {
                if n > 0 {
                    l.members.swap(at(i, n), at(j, n));
                }
            }
            LayoutEdit::Assign(i, m) => {
                if a > 0 {
                    l.assignment[at(i, a)] = *m;
                }
            }
            LayoutEdit::TruncateAssignment(i) => l.assignment.truncate(at(i, a + 1)),
            LayoutEdit::PushAssignment(m) => l.assignment.push(*m),
        }
    }
    l
}

#[test]
fn fuzz_layout_never_panics() {
    let (key, _) = ControlKey::generate();
    let public = key.public();
    let bases = layouts();
    let signed: Vec<pb::SignedLayout> = bases.iter().map(|l| l.sign(&key)).collect();
    let inner: Vec<Vec<u8>> = signed.iter().map(|s| s.layout.clone()).collect();
    let outer: Vec<Vec<u8>> = signed.iter().map(|s| s.encode_to_vec()).collect();
    let inner_protos = Arc::new(
        inner
            .iter()
            .map(|b| pb::Layout::decode(b.as_slice()).unwrap())
            .collect::<Vec<_>>(),
    );
    let strategy = prop_oneof![
        2 => bytes_from(outer).prop_map(LayoutInput::Signed),
        4 => bytes_from(inner).prop_map(LayoutInput::Inner),
        4 => (any::<usize>(), vec(layout_edit(), 1..6))
            .prop_map(|(i, e)| LayoutInput::Fields(i, e)),
    ];
    fuzz("layout", strategy, |input| {
        let signed = match input {
            LayoutInput::Signed(bytes) => match pb::SignedLayout::decode(bytes.as_slice()) {
                Ok(s) => s,
                Err(_) => return Ok(()),
            },
            LayoutInput::Inner(bytes) => resign(bytes, &key),
            LayoutInput::Fields(i, edits) => resign(
                edit_layout(inner_protos[at(i, inner_protos.len())].clone(), &edits)
                    .encode_to_vec(),
                &key,
            ),
        };
        let Ok(layout) = Layout::verify(&signed, &public) else {
            return Ok(());
        };
        // A verified layout is checked, re-signs and verifies equal, and is safe to use.
        prop_assert_eq!(layout.check(), Ok(()));
        prop_assert_eq!(
            Layout::verify(&layout.sign(&key), &public),
            Ok(layout.clone())
        );
        let loads = layout.loads();
        prop_assert_eq!(loads.values().sum::<usize>(), usize::from(PARTITIONS));
        for m in layout.members.iter().take(3) {
            let _ = layout.partitions_of(&m.node_id);
        }
        for base in &bases {
            let _ = layout.moved_from(base);
            let _ = layout.may_replace(Some(base));
            let _ =
                crate::cluster::rebalance::plan(&base.members[0].node_id, Some(base), &layout, 0);
        }
        let _ = crate::cluster::rebalance::plan(&layout.members[0].node_id, None, &layout, 0);
        // As the current layout: what the next one is checked against, and computed from.
        for base in &bases {
            let _ = base.may_replace(Some(&layout));
            let _ =
                crate::cluster::rebalance::plan(&base.members[0].node_id, Some(&layout), base, 0);
        }
        let _ = layout.next(bases[3].members.clone());
        Ok(())
    });
}

// ---- Regressions: crashes the target found, as minimal inputs ----

/// Found by `fuzz_layout_never_panics`: a layout signed at version `u64::MAX` verifies
/// (`Layout::check` asks only for a version of at least 1); `Layout::next` then computes
/// `self.version + 1` (`cluster/layout/mod.rs`), which overflows: a panic in debug builds, a wrap
/// to version 0 in release (refused then by `check`).
#[test]
fn regression_layout_at_the_last_version() {
    let (key, _) = ControlKey::generate();
    let base = Layout::initial((0..3).map(member).collect()).unwrap();
    let mut inner = pb::Layout::decode(base.sign(&key).layout.as_slice()).unwrap();
    inner.version = u64::MAX;
    let last = Layout::verify(&resign(inner.encode_to_vec(), &key), &key.public()).unwrap();
    assert!(last.next((0..4).map(member).collect()).is_err());
}
