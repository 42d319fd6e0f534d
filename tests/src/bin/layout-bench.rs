//! `layout-bench`: quality of our partition layout against jump consistent hash and a ring with
//! virtual nodes (the `hashring` crate, 160 points per node), side by side, for 3..=64 nodes.
//!
//! For each N: the fraction of keys that move when node N+1 joins (and its ratio to the ideal
//! 1/(N+1)), max/mean keys per node, and the cost of one key -> node lookup.
//!
//! `cargo run --release -p mesh-tests --bin layout-bench -- [--keys 200000]`

use clap::Parser;
use mesh_node::cluster::layout::{Layout, Member};
use mesh_node::domain::ids::partition_of;
use std::hint::black_box;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            node_id: format!("n{i:02}"),
            peer_addr: String::new(),
            gateway_addr: String::new(),
        })
        .collect()
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
fn jump(mut key: u64, buckets: i64) -> i64 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct VNode {
    node: usize,
    replica: u32,
}

fn ring(n: usize) -> hashring::HashRing<VNode> {
    let mut r = hashring::HashRing::new();
    for node in 0..n {
        for replica in 0..160 {
            r.add(VNode { node, replica });
        }
    }
    r
}

struct Quality {
    moved_ratio: f64,
    max_over_mean: f64,
    lookup_ns: f64,
}

fn measure(
    keys: &[String],
    n: usize,
    owner_n: &dyn Fn(&str) -> usize,
    owner_n1: &dyn Fn(&str) -> usize,
) -> Quality {
    let mut load = vec![0usize; n];
    let mut moved = 0usize;
    for k in keys {
        let a = owner_n(k);
        load[a] += 1;
        if a != owner_n1(k) {
            moved += 1;
        }
    }
    let started = Instant::now();
    for k in keys {
        black_box(owner_n(black_box(k)));
    }
    let lookup_ns = started.elapsed().as_nanos() as f64 / keys.len() as f64;
    let mean = keys.len() as f64 / n as f64;
    Quality {
        moved_ratio: (moved as f64 / keys.len() as f64) / (1.0 / (n + 1) as f64),
        max_over_mean: *load.iter().max().expect("nodes") as f64 / mean,
        lookup_ns,
    }
}

fn main() {
    let args = Args::parse();
    let keys: Vec<String> = (0..args.keys).map(|i| format!("customer-{i:08}")).collect();
    println!(
        "layout-bench: {} keys; moved = fraction moved when node N+1 joins / ideal 1/(N+1)",
        keys.len()
    );
    println!(
        "{:>3} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}",
        "N",
        "dsm mov",
        "max/mean",
        "ns",
        "jump mov",
        "max/mean",
        "ns",
        "ring mov",
        "max/mean",
        "ns"
    );
    let mut worst = [(0.0f64, 0.0f64, 0.0f64); 3];
    for n in 3..=64usize {
        let before = Layout::initial(members(n)).expect("layout");
        let after = before.next(members(n + 1)).expect("layout");
        let idx = |l: &Layout, k: &str| {
            let id = &l.owner_of(partition_of(k)).node_id;
            id[1..].parse::<usize>().expect("index")
        };
        let dsm = measure(&keys, n, &|k| idx(&before, k), &|k| idx(&after, k));
        let h = |k: &str| mesh_node::domain::hash::hash_bytes(k.as_bytes());
        let jmp = measure(&keys, n, &|k| jump(h(k), n as i64) as usize, &|k| {
            jump(h(k), n as i64 + 1) as usize
        });
        let (r0, r1) = (ring(n), ring(n + 1));
        let rng = measure(&keys, n, &|k| r0.get(&k).expect("node").node, &|k| {
            r1.get(&k).expect("node").node
        });
        for (w, q) in worst.iter_mut().zip([&dsm, &jmp, &rng]) {
            w.0 = w.0.max(q.moved_ratio);
            w.1 = w.1.max(q.max_over_mean);
            w.2 = w.2.max(q.lookup_ns);
        }
        if [3, 4, 5, 8, 10, 16, 20, 31, 32, 48, 60, 63, 64].contains(&n) {
            println!(
                "{n:>3} | {:>8.3} {:>8.3} {:>8.1} | {:>8.3} {:>8.3} {:>8.1} | {:>8.3} {:>8.3} {:>8.1}",
                dsm.moved_ratio,
                dsm.max_over_mean,
                dsm.lookup_ns,
                jmp.moved_ratio,
                jmp.max_over_mean,
                jmp.lookup_ns,
                rng.moved_ratio,
                rng.max_over_mean,
                rng.lookup_ns
            );
        }
    }
    println!(
        "worst over N=3..64 | dsm: moved {:.3}, max/mean {:.3}, {:.1} ns | jump: moved {:.3}, max/mean {:.3}, {:.1} ns | ring: moved {:.3}, max/mean {:.3}, {:.1} ns",
        worst[0].0,
        worst[0].1,
        worst[0].2,
        worst[1].0,
        worst[1].1,
        worst[1].2,
        worst[2].0,
        worst[2].1,
        worst[2].2
    );
    println!("targets: moved <= 1.05, max/mean <= 1.05, lookup < 100 ns");
}
