//! Shim errors and their ttrpc codes (containerd and kubelet branch on them).

use contrast_agent_protocol::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("runtime config: {0}")]
    Config(String),
    #[error("pod VM: {0}")]
    Vm(String),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Internal(String),
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) | ShimError::Config(_) => ttrpc::Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Agent(a) => a.code,
            ShimError::Vm(_) | ShimError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
