//! The one typed peer client: every call this node makes to another node goes through here.
//!
//! It owns what every call needs and nothing else may write by hand: building the
//! `dsm.v1.PeerRequest`, the deadline of each kind of call, passing a client's end-to-end proof
//! on, and turning the transport's failures and the peer's `PeerResult` into [`Error`]s. One
//! method per peer call; the messages are the ones handled by `dispatch` on the other side.
//! See ARCHITECTURE.md, "The life of a request".

use crate::cluster::layout::Member;
use crate::cluster::transport::{PeerTransport, TransportError};
use crate::domain::ids::Partition;
use crate::error::Error;
use crate::telemetry::trace::{self, Hop};
use mesh_proto::v1::peer_request::Body;
use mesh_proto::v1::peer_response::Result as PeerResult;
use mesh_proto::v1::{
    ForwardedCall, HandoffAnswer, HandoffPull, HandoffQuery, LayoutPush, PartitionData,
    PeerRequest, Ping, RevealAllowance, RevealCharge, SignedLayout,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a liveness probe (`mesh-ctl status`) waits for a peer.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long passing a new layout on to a member may take (best effort; pulls carry it too).
pub(crate) const LAYOUT_PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long asking a new owner which partitions it holds may take.
pub(crate) const HOLDINGS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one member may take to answer its part of a mesh-wide audit query.
pub(crate) const AUDIT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one pull may take (export, transfer and answer of one partition).
pub(crate) const PULL_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls other nodes over the peer transport.
#[derive(Debug, Clone)]
pub struct PeerClient {
    transport: Arc<PeerTransport>,
}

impl PeerClient {
    /// See [`PeerTransport::forget_failures`].
    pub(crate) fn forget_failures<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        self.transport.forget_failures(nodes);
    }

    pub fn new(transport: Arc<PeerTransport>) -> PeerClient {
        PeerClient { transport }
    }

    /// The transport underneath (for serving and for closing at shutdown).
    pub fn transport(&self) -> &Arc<PeerTransport> {
        &self.transport
    }

    /// Sends one message and returns the peer's answer, or why there is none. `what` names the
    /// call in errors ("the shard holding partition 7", "the reveal ledger").
    async fn exchange(
        &self,
        to: &Member,
        body: Body,
        deadline: Instant,
        what: &str,
    ) -> Result<PeerResult, Error> {
        let request = PeerRequest {
            // Set by the transport from `deadline` when it sends the request.
            deadline_unix_ms: 0,
            body: Some(body),
        };
        match self.transport.call(to, request, deadline).await {
            Ok(answer) => answer.result.ok_or_else(|| {
                Error::Unavailable(format!("{what} (node {}) sent an empty answer", to.node_id))
            }),
            Err(TransportError::Unavailable { node, reason }) => Err(Error::Unavailable(format!(
                "{what} (node {node}) is unreachable: {reason}"
            ))),
            Err(TransportError::Deadline { node }) => Err(Error::Unavailable(format!(
                "{what} (node {node}) did not answer before the deadline"
            ))),
            Err(e) => Err(Error::Unavailable(format!("{what}: {e}"))),
        }
    }

    /// The answer of a call whose reply is a status or the encoded response of a method: the
    /// bytes, [`Error::Moved`] when the peer refused it unopened because its partition is moving,
    /// or the peer's status passed through unchanged.
    async fn call(
        &self,
        to: &Member,
        call: ForwardedCall,
        deadline: Instant,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        match self.exchange(to, Body::Call(call), deadline, what).await? {
            PeerResult::Response(bytes) => Ok(bytes),
            other => Err(refused(to, other)),
        }
    }

    /// Sends a client's call (method, body, the client's proof and chain) to the node that serves
    /// partition `p`: [`Hop::Forward`] from the gateway that received it to the owner, or
    /// [`Hop::Relay`] from an owner still waiting for `p` to its previous owner, which serves it
    /// until it hands `p` over (the call goes on unchanged: its proof is the client's, not a
    /// node's). Traced as that hop.
    pub(crate) async fn hop(
        &self,
        kind: Hop,
        to: &Member,
        call: ForwardedCall,
        deadline: Instant,
        p: Partition,
    ) -> Result<Vec<u8>, Error> {
        let what = format!("the shard holding partition {p}");
        trace::hop(kind, &to.node_id, p, self.call(to, call, deadline, &what)).await
    }

    /// Sends an auditor's query (with the auditor's proof) to one member; its encoded records.
    pub async fn audit_query(&self, to: &Member, call: ForwardedCall) -> Result<Vec<u8>, Error> {
        let deadline = Instant::now() + AUDIT_QUERY_TIMEOUT;
        self.call(to, call, deadline, "the audit query")
            .await
            .map_err(|e| match e {
                Error::Remote(code, message) => {
                    Error::Remote(code, format!("node {}: {message}", to.node_id))
                }
                other => other,
            })
    }

    /// Takes one reveal from `principal`'s mesh-wide allowance, kept by `to`.
    pub(crate) async fn charge(
        &self,
        to: &Member,
        principal: &str,
        deadline: Instant,
    ) -> Result<RevealAllowance, Error> {
        let body = Body::Charge(RevealCharge {
            principal: principal.to_owned(),
        });
        match self
            .exchange(to, body, deadline, "the reveal ledger")
            .await?
        {
            PeerResult::Allowance(a) => Ok(a),
            other => Err(refused(to, other)),
        }
    }

    /// Asks `from`, the owner of partition `p` under the previous layout, for the partition,
    /// showing it this node's `layout`.
    pub async fn pull(
        &self,
        from: &Member,
        p: Partition,
        layout: SignedLayout,
    ) -> Result<PartitionData, Error> {
        let body = Body::Pull(HandoffPull {
            partition: u32::from(p.get()),
            layout: Some(layout),
        });
        let what = format!("the previous owner of partition {p}");
        match self
            .exchange(from, body, Instant::now() + PULL_TIMEOUT, &what)
            .await?
        {
            PeerResult::Partition(data) => Ok(data),
            other => Err(refused(from, other)),
        }
    }

    /// Asks the owner of some partitions whether it holds them yet.
    pub(crate) async fn holdings(
        &self,
        to: &Member,
        partitions: Vec<u32>,
    ) -> Result<HandoffAnswer, Error> {
        let body = Body::Query(HandoffQuery { partitions });
        let deadline = Instant::now() + HOLDINGS_TIMEOUT;
        match self.exchange(to, body, deadline, "the new owner").await? {
            PeerResult::Holdings(answer) => Ok(answer),
            other => Err(refused(to, other)),
        }
    }

    /// Passes a signed layout on to a member.
    pub(crate) async fn push_layout(&self, to: &Member, layout: SignedLayout) -> Result<(), Error> {
        let body = Body::Layout(LayoutPush {
            layout: Some(layout),
        });
        let deadline = Instant::now() + LAYOUT_PUSH_TIMEOUT;
        match self.exchange(to, body, deadline, "a member").await? {
            PeerResult::Pong(_) => Ok(()),
            other => Err(refused(to, other)),
        }
    }

    /// Whether `to` answers at all.
    pub async fn ping(&self, to: &Member) -> Result<(), Error> {
        let deadline = Instant::now() + PING_TIMEOUT;
        match self
            .exchange(to, Body::Ping(Ping {}), deadline, "a member")
            .await?
        {
            PeerResult::Pong(_) => Ok(()),
            other => Err(refused(to, other)),
        }
    }
}

/// The error a peer's answer stands for when it is not the value the call expects: the peer's own
/// status passed on ([`Error::Moved`] when it refused the call unopened because its partition is
/// moving), or an answer of the wrong kind.
fn refused(from: &Member, answer: PeerResult) -> Error {
    match answer {
        PeerResult::Status(s) if s.moved => Error::Moved(s.message),
        PeerResult::Status(s) => Error::Remote(tonic::Code::from(s.code), s.message),
        _ => unexpected(from),
    }
}

fn unexpected(from: &Member) -> Error {
    Error::Unavailable(format!(
        "node {} sent an answer of the wrong kind",
        from.node_id
    ))
}
