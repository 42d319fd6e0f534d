//! The reveal ledger: each principal's allowance of reveals, one for the whole mesh.
//!
//! The allowance of a principal is kept by the owner of the principal's home partition
//! (`partition_of(principal)`), so spreading reveals over shards does not multiply the limit. A
//! reveal on any node takes one from it there (a `Charge` peer message, registered here). Fails
//! closed: if the home node cannot be asked, the reveal is refused.
//!
//! Each node also keeps its own ceiling per principal, with the same limit and window, for the
//! reveals it serves: a home node that grants without counting (breached, or misconfigured) lifts
//! a principal's limit to at most one allowance per owner node, never to unlimited.

use crate::access::windows::{Exhausted, RevealLimiter};
use crate::cluster::dispatch::{Dispatch, Kind, PeerService};
use crate::cluster::routing::Mesh;
use crate::domain::clock::Clock;
use crate::domain::ids::partition_of;
use crate::error::Error;
use crate::security::identity::Identity;
use mesh_proto::v1::RevealAllowance;
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest principal a peer may charge a reveal to (a SPIFFE URI of this mesh is far shorter).
const MAX_PRINCIPAL_BYTES: usize = 512;

#[derive(Debug)]
pub(crate) struct RevealLedger {
    mesh: Arc<Mesh>,
    /// The allowances of the principals homed on this node.
    limiter: RevealLimiter,
    /// Every principal's reveals of orders owned here, whatever its home node answers.
    ceiling: RevealLimiter,
    clock: Clock,
    /// How long asking the home node may take.
    timeout: Duration,
}

impl RevealLedger {
    /// `limiter` keeps the allowances homed here, `ceiling` (same limit and window) this node's
    /// own count of the reveals it serves.
    pub fn new(
        mesh: Arc<Mesh>,
        limiter: RevealLimiter,
        ceiling: RevealLimiter,
        clock: Clock,
        timeout: Duration,
    ) -> RevealLedger {
        RevealLedger {
            mesh,
            limiter,
            ceiling,
            clock,
            timeout,
        }
    }

    /// Registers the `Charge` peer message.
    pub(crate) fn register(self: &Arc<Self>, dispatch: &Dispatch) {
        dispatch.register(Kind::Charge, self.clone());
    }

    /// Takes one reveal from `principal`'s allowance (and from this node's ceiling for it); the
    /// reveals left.
    pub(crate) async fn charge(&self, principal: &str) -> Result<u32, Error> {
        let local = self.ceiling.take(principal, self.clock.now()).map_err(|e| {
            Error::ResourceExhausted(format!(
                "reveal limit reached: {} per {} for this principal on this node's orders; the next reveal is possible in {}",
                e.limit,
                humantime::format_duration(e.window),
                humantime::format_duration(Duration::from_secs(e.retry_after.as_secs().max(1)))
            ))
        })?;
        let allowance = match self.mesh.owner_elsewhere(partition_of(principal)) {
            None => self.limiter.take(principal, self.clock.now()),
            Some(home) => {
                let deadline = Instant::now() + self.timeout;
                match self.mesh.peers.charge(&home, principal, deadline).await {
                    Ok(a) if a.granted => Ok(a.remaining),
                    Ok(a) => Err(Exhausted {
                        limit: a.limit,
                        window: Duration::from_millis(a.window_ms),
                        retry_after: Duration::from_millis(a.retry_after_ms),
                    }),
                    Err(e) => {
                        tracing::warn!(node = %home.node_id, error = %e, "reveal ledger unreachable");
                        return Err(Error::Unavailable(format!(
                            "the reveal ledger for this principal (node {}) is unreachable, so the reveal was refused; retry",
                            home.node_id
                        )));
                    }
                }
            }
        };
        // The home node's count, unless this node's own ceiling is lower.
        allowance.map(|mesh_wide| mesh_wide.min(local)).map_err(|e| {
            Error::ResourceExhausted(format!(
                "reveal limit reached: {} per {} for this principal across the mesh; the next reveal is possible in {}",
                e.limit,
                humantime::format_duration(e.window),
                humantime::format_duration(Duration::from_secs(e.retry_after.as_secs().max(1)))
            ))
        })
    }

    /// Answers a peer's charge for a principal homed here.
    fn take(&self, principal: &str) -> RevealAllowance {
        match self.limiter.take(principal, self.clock.now()) {
            Ok(remaining) => RevealAllowance {
                granted: true,
                remaining,
                ..RevealAllowance::default()
            },
            Err(e) => RevealAllowance {
                granted: false,
                remaining: 0,
                retry_after_ms: u64::try_from(e.retry_after.as_millis()).unwrap_or(u64::MAX),
                limit: e.limit,
                window_ms: u64::try_from(e.window.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

impl PeerService for RevealLedger {
    async fn serve(self: Arc<Self>, _from: String, body: Body) -> Result<PeerResult, Error> {
        match body {
            Body::Charge(charge) => {
                // A peer names the principal: only a client identity of this mesh, of bounded
                // length, may take a place in the ledger (not arbitrary strings up to the
                // message limit).
                if charge.principal.len() > MAX_PRINCIPAL_BYTES
                    || !charge.principal.parse::<Identity>().is_ok_and(|i| {
                        i.role().is_some() && i.trust_domain() == self.mesh.trust_domain
                    })
                {
                    return Err(Error::InvalidArgument(
                        "a reveal charge must name a client identity of this mesh".into(),
                    ));
                }
                Ok(PeerResult::Allowance(self.take(&charge.principal)))
            }
            _ => Err(Error::Unavailable(
                "the ledger does not serve that message".into(),
            )),
        }
    }
}
