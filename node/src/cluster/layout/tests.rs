//! Layout tests: invariants, signatures, and the assignment against a naive model.

use super::assign::assign;
use super::*;
use proptest::prelude::*;

fn member(i: usize) -> Member {
    Member {
        node_id: format!("n{i:02}"),
        peer_addr: format!("127.0.0.1:{}", 7000 + i),
        gateway_addr: format!("127.0.0.1:{}", 8000 + i),
    }
}

fn members(ids: impl IntoIterator<Item = usize>) -> Vec<Member> {
    ids.into_iter().map(member).collect()
}

/// The naive model: loads within one of each other and summing to P.
fn naive_balanced(owners: &[usize], n: usize) -> bool {
    let mut load = vec![0usize; n];
    for &o in owners {
        load[o] += 1;
    }
    let (floor, ceil) = (owners.len() / n, owners.len().div_ceil(n));
    load.iter().all(|&l| l == floor || l == ceil) && load.iter().sum::<usize>() == owners.len()
}

fn moved(a: &Layout, b: &Layout) -> usize {
    b.moved_from(a)
}

#[test]
fn initial_layout_is_balanced_and_deterministic() {
    let a = Layout::initial(members(0..3)).expect("layout");
    let b = Layout::initial(members([2, 0, 1])).expect("layout");
    assert_eq!(a, b, "member order does not matter");
    let loads: Vec<usize> = a.loads().into_values().collect();
    assert_eq!(loads.iter().sum::<usize>(), usize::from(PARTITIONS));
    assert!(
        loads.iter().max().expect("max") - loads.iter().min().expect("min") <= 1,
        "{loads:?}"
    );
}

#[test]
fn signatures_verify_and_forgeries_do_not() {
    let (key, _) = ControlKey::generate();
    let layout = Layout::initial(members(0..3)).expect("layout");
    let signed = layout.sign(&key);
    assert_eq!(Layout::verify(&signed, &key.public()), Ok(layout.clone()));

    let (other, _) = ControlKey::generate();
    assert_eq!(
        Layout::verify(&layout.sign(&other), &key.public()),
        Err(LayoutError::BadSignature)
    );
    let mut tampered = signed.clone();
    let last = tampered.layout.len() - 1;
    tampered.layout[last] ^= 1;
    assert_eq!(
        Layout::verify(&tampered, &key.public()),
        Err(LayoutError::BadSignature)
    );
}

#[test]
fn older_or_equal_versions_are_refused() {
    let v1 = Layout::initial(members(0..3)).expect("v1");
    let v2 = v1.next(members(0..4)).expect("v2");
    assert_eq!(v2.version, 2);
    assert!(v2.may_replace(Some(&v1)).is_ok());
    assert_eq!(
        v1.may_replace(Some(&v2)),
        Err(LayoutError::NotNewer {
            offered: 1,
            current: 2
        })
    );
    assert!(v2.may_replace(Some(&v2)).is_err());
    let v3 = v2.next(members(0..5)).expect("v3");
    assert_eq!(
        v3.may_replace(Some(&v1)),
        Err(LayoutError::Skipped {
            offered: 3,
            current: 1
        }),
        "a node never skips a version the others went through"
    );
    assert!(v3.may_replace(Some(&v2)).is_ok());
    assert!(v2.moved_from(&v1) > 0);
    assert_eq!(
        v2.moves_from(&v1)
            .filter(|p| v2.owner_of(*p).node_id != "n03")
            .count(),
        0,
        "a joining member takes partitions; nobody else swaps any"
    );
    assert_eq!(v1.next(members(0..3)).expect("same").moved_from(&v1), 0);
}

#[test]
fn keys_round_trip_through_their_files() {
    let (key, text) = ControlKey::generate();
    let parsed = ControlKey::parse(&text).expect("parse");
    assert_eq!(parsed.public(), key.public());
    assert_eq!(
        ControlPublicKey::parse(&key.public().to_text()),
        Ok(key.public())
    );
    assert!(ControlKey::parse("dsm-control-key-v1:00").is_err());
}

#[test]
fn check_rejects_broken_tables() {
    let mut l = Layout::initial(members(0..3)).expect("layout");
    l.assignment[0] = 9;
    assert!(l.check().is_err());
    let mut l = Layout::initial(members(0..3)).expect("layout");
    let (a, b) = (l.assignment[0], (l.assignment[0] + 1) % 3);
    for slot in l.assignment.iter_mut().filter(|m| **m == a).take(5) {
        *slot = b;
    }
    assert!(
        l.check().is_err(),
        "moving 5 partitions unbalances the table"
    );
}

#[test]
fn partition_hash_is_pinned() {
    // A change to these values re-homes every customer of every mesh: it needs a migration.
    // Values computed independently (FNV-1a 64 then the murmur3 finaliser, in Python).
    assert_eq!(crate::domain::hash::hash_bytes(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(
        crate::domain::hash::hash_bytes(b"n1"),
        0xf5c0_8557_ac1e_5104
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn assignment_is_always_balanced(n in 1usize..70, seed in any::<u64>()) {
        let previous: Vec<Option<usize>> = (0..usize::from(PARTITIONS))
            .map(|p| { let h = crate::domain::hash::mix64(seed ^ p as u64); (!h.is_multiple_of(3)).then_some((h as usize >> 8) % n) })
            .collect();
        let owners = assign(&previous, &(0..n).map(|i| format!("n{i}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert!(naive_balanced(&owners, n));
    }

    #[test]
    fn a_join_moves_exactly_the_new_members_share(n in 1usize..64) {
        let before = Layout::initial(members(0..n)).expect("before");
        let after = before.next(members(0..=n)).expect("after");
        let new_id = member(n).node_id;
        let share = after.loads()[&new_id];
        prop_assert_eq!(moved(&before, &after), share, "only the new member's share moves");
        for p in (0..PARTITIONS).filter_map(Partition::new) {
            if before.owner_of(p).node_id != after.owner_of(p).node_id {
                prop_assert_eq!(&after.owner_of(p).node_id, &new_id, "moves go to the new member only");
            }
        }
        // The ideal is P/(n+1); the share is within rounding of it.
        let ideal = f64::from(PARTITIONS) / (n + 1) as f64;
        prop_assert!((share as f64) <= ideal.ceil());
    }

    #[test]
    fn a_leave_moves_exactly_the_leavers_partitions(n in 2usize..64, leaver in any::<prop::sample::Index>()) {
        let before = Layout::initial(members(0..n)).expect("before");
        let gone = leaver.index(n);
        let after = before.next(members((0..n).filter(|&i| i != gone))).expect("after");
        prop_assert_eq!(moved(&before, &after), before.partitions_of(&member(gone).node_id).len());
        prop_assert!(!after.is_member(&member(gone).node_id));
    }

    #[test]
    fn any_membership_change_stays_balanced(start in 1usize..20, add in 0usize..10, remove in 0usize..10) {
        let before = Layout::initial(members(0..start)).expect("before");
        let kept: Vec<usize> = (0..start).skip(remove.min(start - 1)).collect();
        let after = before.next(members(kept.iter().copied().chain(100..100 + add))).expect("after");
        prop_assert!(after.check().is_ok());
        prop_assert_eq!(after.version, 2);
    }
}
