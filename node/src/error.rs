//! The node's error type and the one place that maps errors to gRPC status codes.
//!
//! Messages are written for the caller: they name the field, the rule or the next step, and never
//! carry PII (no customer ids, names, phones or addresses; order ids are not PII).

use crate::storage::StorageError;
use crate::validate::Violations;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    Invalid(#[from] Violations),
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
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A status returned by the owner node of a forwarded request, passed through unchanged.
    #[error("{1}")]
    Remote(Code, String),
}

impl Error {
    /// The gRPC code of this error: the one place errors map to codes.
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) | Error::Storage(StorageError::NotFound) => Code::NotFound,
            Error::FailedPrecondition(_) | Error::Storage(StorageError::Rejected(_)) => {
                Code::FailedPrecondition
            }
            Error::Unavailable(_) | Error::Moved(_) | Error::Storage(StorageError::Flush(_)) => {
                Code::Unavailable
            }
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Remote(code, _) => *code,
            Error::Storage(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        let message = match &e {
            // Storage internals stay in the node's log; the caller learns only what to do.
            Error::Storage(StorageError::Flush(_)) => {
                "the write could not be made durable; it was not acknowledged, retry".to_owned()
            }
            Error::Storage(StorageError::NotFound) => "order not found".to_owned(),
            Error::Storage(StorageError::Rejected(why)) => why.clone(),
            Error::Storage(_) => "internal storage error; see the node's log".to_owned(),
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}
