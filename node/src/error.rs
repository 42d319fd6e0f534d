//! The node's error type and the one place that maps errors to gRPC status codes.
//!
//! Every service (gateway, admin, audit) and every peer answer turns its failures into [`Error`]
//! and lets `From<Error> for Status` say what the caller sees; nothing else builds a status.
//! Lower-level errors (storage, layouts) convert into it where they are defined, so this module
//! sits just above the domain and depends on nothing else of the node.
//!
//! Messages are written for the caller: they name the field, the rule or the next step, and never
//! carry PII (no customer ids, names, phones or addresses; order ids are not PII).

use crate::domain::validate::Violations;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Request validation: every bad field, named.
    #[error("invalid request: {0}")]
    Invalid(#[from] Violations),
    /// A malformed argument that is not a request field (a layout, a peer message).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The partition is changing owner: route again and retry (the gateway does, within the
    /// request's deadline; a client that sees it may retry too).
    #[error("{0}")]
    Moved(String),
    /// Records a caller was promised but can no longer get (a watcher that fell behind).
    #[error("{0}")]
    DataLoss(String),
    /// A fault inside this node; the message says where to look, the details are in its log.
    #[error("{0}")]
    Internal(String),
    /// A status returned by the owner node of a forwarded request, passed through unchanged.
    #[error("{1}")]
    Remote(Code, String),
}

impl Error {
    /// The gRPC code of this error: the one place errors map to codes.
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::Moved(_) => Code::Unavailable,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
            Error::Remote(code, _) => *code,
        }
    }

    /// The status a peer sent back for a call this node made on a client's behalf.
    pub fn remote(status: &Status) -> Error {
        Error::Remote(status.code(), status.message().to_owned())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// The conventional upper-snake name of a gRPC code (metric labels, audit reasons, spans).
/// The conventional upper-snake name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
