//! Unit tests of `rebalance`.

use super::*;
use crate::cluster::layout::Layout;
use crate::cluster::layout::Member;
use std::time::Instant;

fn members(n: usize) -> Vec<Member> {
    (1..=n)
        .map(|i| Member {
            node_id: format!("n{i}"),
            peer_addr: format!("127.0.0.1:{i}"),
            gateway_addr: format!("127.0.0.1:{}", 100 + i),
        })
        .collect()
}

#[test]
fn a_change_gains_exactly_the_partitions_that_move_to_this_node() {
    let v1 = Layout::initial(members(3)).expect("v1");
    let v2 = v1.next(members(4)).expect("v2");
    let gained = plan("n4", Some(&v1), &v2, 0).expect("plan");
    assert_eq!(gained, v2.partitions_of("n4"));
    assert!(plan("n1", Some(&v1), &v2, 0).expect("plan").is_empty());
    // The first layout of a mesh moves nothing; a node without history may join as a
    // non-owner but not be handed partitions it cannot find.
    assert!(plan("n1", None, &v1, 0).expect("initial").is_empty());
    assert!(plan("n4", None, &v1, 0).expect("not a member").is_empty());
    assert_eq!(
        plan("n4", None, &v2, 0),
        Err(LayoutError::NoHistory { offered: 2 })
    );
}

#[test]
fn a_change_waits_for_the_previous_one_and_never_skips_a_version() {
    let v1 = Layout::initial(members(3)).expect("v1");
    let v2 = v1.next(members(4)).expect("v2");
    let v3 = v2.next(members(5)).expect("v3");
    assert!(matches!(
        plan("n5", Some(&v2), &v3, 7),
        Err(LayoutError::InTransition {
            offered: 3,
            current: 2,
            pending: 7
        })
    ));
    assert!(matches!(
        plan("n5", Some(&v1), &v3, 0),
        Err(LayoutError::Skipped { .. })
    ));
    assert!(matches!(
        plan("n1", Some(&v2), &v1, 0),
        Err(LayoutError::NotNewer { .. })
    ));
}

#[tokio::test]
async fn the_throttle_holds_background_pulls_to_the_rate() {
    let t = Throttle::new(1000);
    t.charge(1500);
    let started = Instant::now();
    t.ready().await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}
