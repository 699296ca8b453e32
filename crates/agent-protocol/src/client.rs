//! Typed async client of the agent API for the shim and the tests: every call carries the
//! request timeout, and errors keep the ttrpc status code the agent answered with.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::time::Duration;

use ttrpc::r#async::Client;

use crate::{agent, agent_ttrpc, health, health_ttrpc};

/// An agent call that failed: the status code the agent sent (or `Unavailable` for transport
/// failures) and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent {method}: {code:?}: {message}")]
pub struct AgentError {
    pub method: &'static str,
    pub code: ttrpc::Code,
    pub message: String,
}

impl AgentError {
    /// Whether the agent says it has no such container or process. Ours answers NOT_FOUND;
    /// kata-agent answers INVALID_ARGUMENT or INTERNAL with "invalid container id" /
    /// "process ... not found" (kata-containers `src/agent/src/rpc.rs`, `sandbox.rs`),
    /// so a shim that must tolerate "already gone" checks all of them.
    pub fn is_unknown_container(&self) -> bool {
        let msg = self.message.to_ascii_lowercase();
        self.code == ttrpc::Code::NOT_FOUND
            || (matches!(self.code, ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::INTERNAL)
                && (msg.contains("invalid container id") || msg.contains("not found")))
    }

    fn from_ttrpc(method: &'static str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => {
                AgentError { method, code: s.code.enum_value_or(ttrpc::Code::UNKNOWN), message: s.message }
            }
            other => AgentError { method, code: ttrpc::Code::UNAVAILABLE, message: other.to_string() },
        }
    }
}

/// How much later than the request timeout ttrpc's own timer fires.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AgentClient {
    agent: agent_ttrpc::AgentServiceClient,
    health: health_ttrpc::HealthClient,
    timeout: Duration,
}

macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, req: &$req) -> Result<$resp, AgentError> {
                self.bounded(stringify!($name), self.agent.$name(self.ctx(), req)).await
            }
        )*
    };
}

impl AgentClient {
    /// Wraps a connected agent stream (from vsock dialing); `timeout` bounds each call.
    pub fn new(stream: OwnedFd, timeout: Duration) -> Self {
        let client = Client::new(stream.into_raw_fd());
        AgentClient {
            agent: agent_ttrpc::AgentServiceClient::new(client.clone()),
            health: health_ttrpc::HealthClient::new(client),
            timeout,
        }
    }

    /// The request's context: the agent learns the deadline; ttrpc's own timer is set a little
    /// later so that [`AgentClient::bounded`] decides, with a clear error.
    fn ctx(&self) -> ttrpc::context::Context {
        let after = self.timeout + DEADLINE_GRACE;
        ttrpc::context::with_timeout(after.as_nanos().min(i64::MAX as u128) as i64)
    }

    /// Runs one call within the request timeout; a call that got no answer by then fails
    /// with `DeadlineExceeded`, naming the timeout (the guest or QEMU no longer answers).
    async fn bounded<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, AgentError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| AgentError::from_ttrpc(method, e)),
            Err(_) => Err(AgentError {
                method,
                code: ttrpc::Code::DEADLINE_EXCEEDED,
                message: format!("the agent did not answer within {:?} (agent.kata.request_timeout)", self.timeout),
            }),
        }
    }

    /// A context without deadline, for calls that block until something happens
    /// (`WaitProcess`, `ReadStdout`, `GetOOMEvent`).
    fn unbounded() -> ttrpc::context::Context {
        ttrpc::context::Context::default()
    }

    pub async fn check(&self) -> Result<health::HealthCheckResponse, AgentError> {
        self.bounded("check", self.health.check(self.ctx(), &health::CheckRequest::new())).await
    }

    pub async fn version(&self) -> Result<health::VersionCheckResponse, AgentError> {
        self.bounded("version", self.health.version(self.ctx(), &health::CheckRequest::new())).await
    }

    calls! {
        create_sandbox(agent::CreateSandboxRequest) -> crate::empty::Empty;
        destroy_sandbox(agent::DestroySandboxRequest) -> crate::empty::Empty;
        create_container(agent::CreateContainerRequest) -> crate::empty::Empty;
        start_container(agent::StartContainerRequest) -> crate::empty::Empty;
        remove_container(agent::RemoveContainerRequest) -> crate::empty::Empty;
        exec_process(agent::ExecProcessRequest) -> crate::empty::Empty;
        signal_process(agent::SignalProcessRequest) -> crate::empty::Empty;
        update_container(agent::UpdateContainerRequest) -> crate::empty::Empty;
        stats_container(agent::StatsContainerRequest) -> agent::StatsContainerResponse;
        pause_container(agent::PauseContainerRequest) -> crate::empty::Empty;
        resume_container(agent::ResumeContainerRequest) -> crate::empty::Empty;
        write_stdin(agent::WriteStreamRequest) -> agent::WriteStreamResponse;
        close_stdin(agent::CloseStdinRequest) -> crate::empty::Empty;
        tty_win_resize(agent::TtyWinResizeRequest) -> crate::empty::Empty;
        get_guest_details(agent::GuestDetailsRequest) -> agent::GuestDetailsResponse;
        list_processes(agent::ListProcessesRequest) -> agent::ListProcessesResponse;
        set_policy(agent::SetPolicyRequest) -> crate::empty::Empty;
        update_interface(agent::UpdateInterfaceRequest) -> crate::types::Interface;
        update_routes(agent::UpdateRoutesRequest) -> agent::Routes;
        list_interfaces(agent::ListInterfacesRequest) -> agent::Interfaces;
        list_routes(agent::ListRoutesRequest) -> agent::Routes;
        add_arp_neighbors(agent::AddARPNeighborsRequest) -> crate::empty::Empty;
        copy_file(agent::CopyFileRequest) -> crate::empty::Empty;
    }

    /// Blocks until the process exits; returns its status (128+signal when killed).
    pub async fn wait_process(
        &self,
        req: &agent::WaitProcessRequest,
    ) -> Result<agent::WaitProcessResponse, AgentError> {
        self.agent.wait_process(Self::unbounded(), req).await.map_err(|e| AgentError::from_ttrpc("wait_process", e))
    }

    /// Blocks until output is available; an error with `OutOfRange` means end of stream.
    pub async fn read_stdout(&self, req: &agent::ReadStreamRequest) -> Result<agent::ReadStreamResponse, AgentError> {
        self.agent.read_stdout(Self::unbounded(), req).await.map_err(|e| AgentError::from_ttrpc("read_stdout", e))
    }

    pub async fn read_stderr(&self, req: &agent::ReadStreamRequest) -> Result<agent::ReadStreamResponse, AgentError> {
        self.agent.read_stderr(Self::unbounded(), req).await.map_err(|e| AgentError::from_ttrpc("read_stderr", e))
    }

    pub async fn get_oom_event(&self) -> Result<agent::OOMEvent, AgentError> {
        self.agent
            .get_oom_event(Self::unbounded(), &agent::GetOOMEventRequest::new())
            .await
            .map_err(|e| AgentError::from_ttrpc("get_oom_event", e))
    }
}

#[cfg(test)]
mod tests {
    use super::{AgentClient, AgentError};
    use std::time::Duration;

    #[tokio::test]
    async fn a_call_nobody_answers_fails_with_deadline_exceeded() {
        // The peer end stays open and silent: a frozen guest.
        let (ours, _silent) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let client = AgentClient::new(ours.into(), Duration::from_millis(100));
        let err = client.check().await.expect_err("no answer");
        // ttrpc's own (later) timer would have said Unavailable, without the setting's name.
        assert_eq!(err.code, ttrpc::Code::DEADLINE_EXCEEDED, "{err}");
        assert!(err.to_string().contains("agent.kata.request_timeout"), "{err}");
    }

    fn error(code: ttrpc::Code, message: &str) -> AgentError {
        AgentError { method: "remove_container", code, message: message.into() }
    }

    #[test]
    fn unknown_container_in_every_agents_words() {
        assert!(error(ttrpc::Code::NOT_FOUND, "container c not found").is_unknown_container());
        // kata-agent
        assert!(error(ttrpc::Code::INVALID_ARGUMENT, "Invalid container id").is_unknown_container());
        assert!(error(ttrpc::Code::INTERNAL, "invalid container id: c").is_unknown_container());
        assert!(error(ttrpc::Code::INTERNAL, "process 7 not found").is_unknown_container());
        // Not "gone": a real failure, and bad input that has nothing to do with the id.
        assert!(!error(ttrpc::Code::INTERNAL, "cgroup did not freeze").is_unknown_container());
        assert!(!error(ttrpc::Code::INVALID_ARGUMENT, "signal 99 is not valid").is_unknown_container());
        assert!(!error(ttrpc::Code::UNAVAILABLE, "not found").is_unknown_container());
    }
}
