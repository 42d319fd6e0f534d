//! The one authorization check for every service the node serves (gateway, admin, audit) and for
//! every request a peer forwards on a client's behalf.
//!
//! Who the caller is comes from exactly two places: the verified TLS certificate of a connection
//! to this node's gateway ([`tls_identity`]), or the client's end-to-end proof carried by a
//! forwarded request ([`proof_identity`], which spends the proof's nonce). What the caller may do
//! is decided by [`authorize`] against the role table (`access::policy`); the role comes from the
//! certificate only, and a forwarding node's word counts for nothing (ARCHITECTURE.md,
//! "The life of a request").

use crate::access::policy::{self, Field, Method, Role};
use crate::api::listener::PeerInfo;
use crate::audit::recorder::Access;
use crate::cluster::routing::Mesh;
use crate::error::Error;
use crate::security::identity::Identity;
use crate::security::proof::{self, PROOF_HEADER, ProofError};
use mesh_proto::v1::{ClientProof, ForwardedCall};
use std::sync::Arc;
use tonic::Request;

/// What a caller asks to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action<'a> {
    /// Call a gateway method with a request carrying or asking for these buyer fields.
    Gateway(Method, &'a [Field]),
    /// Operate the mesh (`dsm.v1.Admin`).
    Administer,
    /// Read the audit trail (`dsm.v1.Audit`).
    ReadAudit,
}

/// The authenticated, authorised caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub identity: Arc<Identity>,
    pub role: Role,
}

/// The certificate identity of a request that arrived on this node's TLS listener, noted in the
/// request's audit record.
pub(crate) fn tls_identity<T>(
    req: &Request<T>,
    access: &mut Access,
) -> Result<Arc<Identity>, Error> {
    let info = req.extensions().get::<PeerInfo>().ok_or_else(|| {
        Error::Unauthenticated("no verified client certificate on this connection".into())
    })?;
    let identity = info.identity.clone().map_err(|e| {
        Error::Unauthenticated(format!(
            "client certificate has no usable mesh identity: {e}"
        ))
    })?;
    access.caller(&identity);
    Ok(identity)
}

/// The client behind a request forwarded by node `from`, from its end-to-end proof (which spends
/// its nonce, remembered with `partition` if the request is for one), noted in the request's
/// audit record.
pub(crate) fn proof_identity(
    mesh: &Mesh,
    from: &str,
    call: &ForwardedCall,
    partition: Option<crate::domain::ids::Partition>,
    access: &mut Access,
) -> Result<Arc<Identity>, Error> {
    let proof = call.proof.as_ref().ok_or_else(|| {
        Error::Unauthenticated("forwarded request carries no client proof".into())
    })?;
    let identity = Arc::new(
        mesh.proofs
            .verify(&call.method, &call.request, proof, partition)
            .map_err(|e| match e {
                // A genuine request can meet this (signed just before the owner restarted): the
                // client retries with a new proof, as it does after any UNAVAILABLE.
                ProofError::BeforeServing => {
                    Error::Unavailable(format!("client proof refused: {e}; retry"))
                }
                e => Error::Unauthenticated(format!("client proof refused: {e}")),
            })?,
    );
    access.caller(&identity);
    tracing::debug!(forwarded_by = from, principal = %identity, method = %call.method, "forwarded request");
    Ok(identity)
}

/// May `identity` do `action` in the mesh of `trust_domain`?
pub(crate) fn authorize(
    trust_domain: &str,
    identity: Arc<Identity>,
    action: Action<'_>,
) -> Result<Caller, Error> {
    let foreign = identity.trust_domain() != trust_domain;
    let role = identity.role();
    // The operator services answer every refusal alike, as they always have: not an admin (or
    // auditor) of this mesh, whatever the certificate is.
    match (action, role) {
        (Action::Administer, r) if foreign || r != Some(Role::Admin) => {
            return Err(Error::PermissionDenied(format!(
                "{identity} is not an admin of this mesh"
            )));
        }
        (Action::ReadAudit, r) if foreign || r != Some(Role::Auditor) => {
            return Err(Error::PermissionDenied(format!(
                "role `{}` may not read the audit trail",
                r.map_or_else(|| "node".to_owned(), |r| r.to_string())
            )));
        }
        _ => {}
    }
    if foreign {
        return Err(Error::Unauthenticated(format!(
            "certificate is for trust domain `{}`, this mesh is `{trust_domain}`",
            identity.trust_domain(),
        )));
    }
    let Some(role) = role else {
        return Err(Error::PermissionDenied(
            "node certificates cannot call the gateway; use a client certificate".into(),
        ));
    };
    match action {
        Action::Gateway(method, buyer_fields) => {
            if let Some(field) = buyer_fields.first()
                && policy::sees_no_buyer_field(role)
            {
                return Err(Error::PermissionDenied(format!(
                    "role `{role}` gets no buyer fields, and this {method} request carries or asks for `{}`",
                    field.path()
                )));
            }
            if !policy::may_call(role, method) {
                return Err(Error::PermissionDenied(format!(
                    "role `{role}` may not call {method}"
                )));
            }
        }
        Action::Administer | Action::ReadAudit => {}
    }
    Ok(Caller { identity, role })
}

/// Authenticates a request on this node's TLS listener and authorises `action`: the one entry
/// check of every service. The caller is noted in `access` even when refused.
pub(crate) fn admit<T>(
    mesh: &Mesh,
    req: &Request<T>,
    action: Action<'_>,
    access: &mut Access,
) -> Result<Caller, Error> {
    let identity = tls_identity(req, access)?;
    authorize(&mesh.trust_domain, identity, action)
}

/// A request of this node's client, made ready to be served by another node: its method, its
/// encoded body, and the client's end-to-end proof (header `x-dsm-proof`) with the certificate
/// chain the client presented here. `missing` says why a request without a proof cannot go.
///
/// With `member`, the proof is the one of the request's member proofs (`x-dsm-member-proof`) that
/// names that node: a call fanned out to every member carries one for each.
pub(crate) fn forwarded_call<T: prost::Message>(
    req: &Request<T>,
    method: &str,
    member: Option<&str>,
    missing: impl FnOnce() -> Error,
) -> Result<ForwardedCall, Error> {
    let proof = match member {
        None => {
            let header = req
                .metadata()
                .get(PROOF_HEADER)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(missing)?;
            proof::parse_header(header).map_err(|e| Error::Unauthenticated(e.to_string()))?
        }
        Some(node) => req
            .metadata()
            .get_all(proof::MEMBER_PROOF_HEADER)
            .iter()
            .filter_map(|v| proof::parse_header(v.to_str().ok()?).ok())
            .find(|p| p.audience == node)
            .ok_or_else(missing)?,
    };
    let chain = req
        .extensions()
        .get::<PeerInfo>()
        .map(|i| i.chain.to_vec())
        .unwrap_or_default();
    Ok(ForwardedCall {
        method: method.to_owned(),
        request: req.get_ref().encode_to_vec(),
        proof: Some(ClientProof { chain, ..proof }),
    })
}
