//! Agent errors and the ttrpc codes they map to (containerd and kata branch on these).

use crate::policy::PolicyError;
use crate::runner_client::RunnerError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Internal(String),
    /// What kata-agent answers UNAVAILABLE for (a terminal call on a process without one).
    #[error("{0}")]
    Unavailable(String),
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(_) => Error::InvalidArgument(e.to_string()),
            PolicyError::Denied { .. } | PolicyError::Blocked { .. } => Error::PermissionDenied(e.to_string()),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UnsupportedDriver(_) | StorageError::Invalid { .. } => Error::InvalidArgument(e.to_string()),
            StorageError::Mount { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl From<RunnerError> for Error {
    fn from(e: RunnerError) -> Self {
        // libcontainer rejects bad specs when creating; those are the caller's to fix.
        match &e {
            RunnerError::Failed(msg) if msg.contains("invalid") || msg.contains("No such file") => {
                Error::InvalidArgument(e.to_string())
            }
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
            Error::Internal(_) => ttrpc::Code::INTERNAL,
            Error::Unavailable(_) => ttrpc::Code::UNAVAILABLE,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
