//! Reading the audit trail as an auditor through a node's gateway, and the shape scenarios repeat:
//! query one action's records, then keep those a test is about.

use crate::{NodeProcess, Pki};
use mesh_node::access::policy::Role;
use mesh_proto::v1::{AuditQueryRequest, AuditRecord};

/// Every audit record matching `q`, read through `node`'s gateway as an auditor (this node's
/// own, or with `local_only` false those of `node` and every other member the layout names).
pub async fn audit_query(node: &NodeProcess, pki: &Pki, q: AuditQueryRequest) -> Vec<AuditRecord> {
    mesh_query(node, pki, &[node.id.as_str()], q).await
}

/// [`audit_query`] for a mesh of `members`: the query carries one auditor proof per member, each
/// naming it, as a mesh-wide query must.
pub async fn mesh_query(
    node: &NodeProcess,
    pki: &Pki,
    members: &[&str],
    q: AuditQueryRequest,
) -> Vec<AuditRecord> {
    let auditor = pki.client(Role::Auditor);
    let signer = auditor.signer();
    let mut client = mesh_proto::v1::audit_client::AuditClient::new(
        node.channel(&auditor).await.expect("connect"),
    );
    let mut stream = client
        .query(signer.signed_for_members(mesh_node::api::audit::QUERY, q, members))
        .await
        .expect("query")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.expect("stream") {
        out.push(r);
    }
    out
}

/// `node`'s own records of `action` (every action when empty), in the order it wrote them.
pub async fn local_trail(node: &NodeProcess, pki: &Pki, action: &str) -> Vec<AuditRecord> {
    audit_query(
        node,
        pki,
        AuditQueryRequest {
            local_only: true,
            action: action.to_owned(),
            ..AuditQueryRequest::default()
        },
    )
    .await
}

/// The records of [`local_trail`] for which `keep` holds.
pub async fn local_trail_where(
    node: &NodeProcess,
    pki: &Pki,
    action: &str,
    keep: impl FnMut(&AuditRecord) -> bool,
) -> Vec<AuditRecord> {
    let mut records = local_trail(node, pki, action).await;
    records.retain(keep);
    records
}
