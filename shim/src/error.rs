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
    #[error("runtime config")]
    Config(#[source] contrast_config::Error),
    // Boxed: a VM error carries the console and QEMU log tails.
    #[error("pod VM")]
    Vm(#[source] Box<contrast_vmm::Error>),
    #[error("agent unreachable")]
    AgentUnreachable(#[source] Box<contrast_vmm::Error>),
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// An agent call broke because the pod VM is gone: the VM's end says why.
    #[error("agent {method}: the pod VM is gone: {exit}")]
    VmGone { method: &'static str, exit: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// The message containerd and kubelet show: this error and every cause under it
    /// (`pod VM: cannot start QEMU (/usr/bin/qemu): No such file or directory`). A cause
    /// whose text a level above already quotes is not repeated.
    pub fn message(&self) -> String {
        let mut msg = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            let text = e.to_string();
            if !msg.contains(&text) {
                msg = format!("{msg}: {text}");
            }
            cause = e.source();
        }
        msg
    }

    fn code(&self) -> ttrpc::Code {
        match self {
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            // Pod input: kubelet reports it; retrying cannot help.
            ShimError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            // The node's runtime class is misconfigured: the operator must act.
            ShimError::Config(_) | ShimError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Agent(a) => a.code,
            ShimError::VmGone { .. } => ttrpc::Code::UNAVAILABLE,
            ShimError::Vm(_) | ShimError::AgentUnreachable(_) | ShimError::Io { .. } | ShimError::Internal(_) => {
                ttrpc::Code::INTERNAL
            }
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
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
        let missing = contrast_config::RuntimeClassConfig::load(std::path::Path::new("/nonexistent/c.toml"))
            .expect_err("no such file");
        assert_eq!(code(ShimError::Config(missing)), ttrpc::Code::FAILED_PRECONDITION);
        assert_eq!(code(ShimError::NotFound("container c".into())), ttrpc::Code::NOT_FOUND);
        let agent =
            AgentError { method: "exec_process", code: ttrpc::Code::PERMISSION_DENIED, message: "policy".into() };
        assert_eq!(code(ShimError::Agent(agent)), ttrpc::Code::PERMISSION_DENIED);
    }

    #[test]
    fn the_message_keeps_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = ShimError::Io { what: "opening stdio FIFOs".into(), source: io };
        assert_eq!(e.message(), "opening stdio FIFOs: No such file or directory");
        let missing = contrast_config::RuntimeClassConfig::load(std::path::Path::new("/nonexistent/c.toml"))
            .expect_err("no such file");
        let text = missing.to_string();
        let msg = ShimError::Config(missing).message();
        assert!(msg.starts_with("runtime config: ") && msg.contains("/nonexistent/c.toml"), "{msg}");
        assert_eq!(msg.matches(&text).count(), 1, "{msg}");
    }
}
