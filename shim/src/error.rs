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
            // Pod input: kubelet reports it; retrying cannot help.
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            // The node's runtime class is misconfigured: the operator must act.
            ShimError::Config(_) | ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Agent(a) => a.code,
            ShimError::Vm(_) | ShimError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ShimError) -> ttrpc::Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code.enum_value_or(ttrpc::Code::UNKNOWN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn who_must_act_decides_the_code() {
        // A pod's bad annotation or spec: the pod author's to fix.
        assert_eq!(code(ShimError::InvalidArgument("annotation x".into())), ttrpc::Code::INVALID_ARGUMENT);
        // A missing kernel or config file on the node: the operator's.
        assert_eq!(code(ShimError::Config("kernel missing".into())), ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(code(ShimError::NotFound("container c".into())), ttrpc::Code::NOT_FOUND);
        let agent =
            AgentError { method: "exec_process", code: ttrpc::Code::PERMISSION_DENIED, message: "policy".into() };
        assert_eq!(code(ShimError::Agent(agent)), ttrpc::Code::PERMISSION_DENIED);
    }
}
