//! The cluster layer: how identical nodes share the key space.
//!
//! - `layout`: signed, versioned partition tables and the assignment algorithm (the ring maths).
//! - `routing`: this node's layouts and the one routing answer: serve here, forward, or relay.
//! - `transport`: the peer protocol over mutually authenticated QUIC.
//! - `link_filter`: cuts or delays links to chosen peers in tests (`fault-injection` only).
//! - `peer`: the one typed peer client (requests, deadlines, proofs, error mapping).
//! - `dispatch`: peer messages handed to the component that registered for their kind.
//! - `rebalance`: layout changes: partition handoff between nodes, throttled, resumable.

pub mod dispatch;
pub mod layout;
pub mod link_filter;
pub mod peer;
pub mod rebalance;
pub mod routing;
pub mod transport;
