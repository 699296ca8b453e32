//! `grpc.AgentService`: checks each request against the policy, then hands it to the sandbox.
//! Methods we do not implement fall through to the generated defaults (Unimplemented).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contrast_agent_protocol::{agent, agent_ttrpc, empty::Empty, types};
use ttrpc::r#async::TtrpcContext;

use crate::error::Error;
use crate::policy::Policy;
use crate::sandbox::Sandbox;

pub struct AgentService {
    pub sandbox: Arc<Sandbox>,
    pub policy: Arc<Policy>,
}

type Result<T> = ttrpc::Result<T>;

impl AgentService {
    fn allow<M: protobuf::MessageFull>(&self, req: &M) -> std::result::Result<(), Error> {
        Ok(self.policy.allow(req)?)
    }
}

/// Runs a request's work in a task of its own, to its end: the ttrpc server drops a handler
/// at the deadline the host sends, and a create cut off there left its id reserved for good
/// (every later create of it refused) and its storages mounted.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(Error::Internal(format!("request handler: {e}")).into()))
}

fn io_error(e: std::io::Error) -> ttrpc::Error {
    Error::Internal(e.to_string()).into()
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentService {
    async fn create_sandbox(&self, _: &TtrpcContext, req: agent::CreateSandboxRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.create_sandbox(&req)?;
        Ok(Empty::new())
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, req: agent::DestroySandboxRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.destroy_sandbox().await?;
        Ok(Empty::new())
    }

    async fn create_container(&self, _: &TtrpcContext, req: agent::CreateContainerRequest) -> Result<Empty> {
        let (sandbox, policy) = (self.sandbox.clone(), self.policy.clone());
        to_the_end(async move {
            let allowed = match policy.check(&req) {
                Ok(a) => a,
                Err(e) => {
                    sandbox.discard_copies(&req.container_id);
                    return Err(Error::from(e).into());
                }
            };
            let created = sandbox.create_container(&req).await;
            let doomed = sandbox.take_doomed(&req.container_id);
            if created.is_ok() && doomed {
                // The host removed it while it was being created (it gave up waiting).
                crate::log!("container {}: removed as its create ended (the host gave up on it)", req.container_id);
                let _ = sandbox.remove_container(&req.container_id, Sandbox::default_remove_timeout()).await;
                return Err(
                    Error::NotFound(format!("container {} (removed while it was created)", req.container_id)).into()
                );
            }
            created?;
            policy.commit(allowed);
            Ok(Empty::new())
        })
        .await
    }

    async fn start_container(&self, _: &TtrpcContext, req: agent::StartContainerRequest) -> Result<Empty> {
        self.allow(&req)?;
        let sandbox = self.sandbox.clone();
        to_the_end(async move {
            sandbox.start_container(&req.container_id).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn remove_container(&self, _: &TtrpcContext, req: agent::RemoveContainerRequest) -> Result<Empty> {
        let (sandbox, policy) = (self.sandbox.clone(), self.policy.clone());
        to_the_end(async move {
            let allowed = policy.check(&req).map_err(Error::from)?;
            let timeout = if req.timeout == 0 {
                Sandbox::default_remove_timeout()
            } else {
                Duration::from_secs(req.timeout.into())
            };
            sandbox.remove_container(&req.container_id, timeout).await?;
            policy.commit(allowed);
            Ok(Empty::new())
        })
        .await
    }

    async fn exec_process(&self, _: &TtrpcContext, req: agent::ExecProcessRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.exec_process(&req).await?;
        Ok(Empty::new())
    }

    async fn signal_process(&self, _: &TtrpcContext, req: agent::SignalProcessRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.signal_process(&req.container_id, &req.exec_id, req.signal).await?;
        Ok(Empty::new())
    }

    /// kata-agent's `ListProcesses`: format `json` is a JSON array of the container's guest
    /// pids (what kata's shim asks for); `table` (ps(1) output in kata) is not offered, since
    /// the guest has no ps.
    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> Result<agent::ListProcessesResponse> {
        self.allow(&req)?;
        if req.format != "json" {
            return Err(Error::InvalidArgument(format!("process list format {:?}: only \"json\"", req.format)).into());
        }
        let pids = self.sandbox.pids(&req.container_id)?;
        let mut resp = agent::ListProcessesResponse::new();
        resp.process_list = serde_json::to_vec(&pids).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(resp)
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> Result<agent::WaitProcessResponse> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        let mut resp = agent::WaitProcessResponse::new();
        resp.status = p.wait().await;
        if req.exec_id.is_empty() || req.exec_id == req.container_id {
            // An OOM kill that ended the container is queued before its exit is answered,
            // so GetOOMEvent reports it before the host can remove the container.
            self.sandbox.note_oom_kills(&req.container_id);
        } else {
            self.sandbox.forget_exec(&req.container_id, &req.exec_id, p);
        }
        Ok(resp)
    }

    async fn update_container(&self, _: &TtrpcContext, req: agent::UpdateContainerRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.update(&req.container_id, req.resources.as_ref())?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> Result<agent::StatsContainerResponse> {
        self.allow(&req)?;
        Ok(self.sandbox.stats(&req.container_id)?)
    }

    async fn pause_container(&self, _: &TtrpcContext, req: agent::PauseContainerRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.set_paused(&req.container_id, true).await?;
        Ok(Empty::new())
    }

    async fn resume_container(&self, _: &TtrpcContext, req: agent::ResumeContainerRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.sandbox.set_paused(&req.container_id, false).await?;
        Ok(Empty::new())
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> Result<agent::WriteStreamResponse> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        let n = p.io.write_stdin(&req.data).await.map_err(io_error)?;
        let mut resp = agent::WriteStreamResponse::new();
        resp.len = n as u32;
        Ok(resp)
    }

    async fn read_stdout(&self, _: &TtrpcContext, req: agent::ReadStreamRequest) -> Result<agent::ReadStreamResponse> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        let data = p.io.read_stdout(req.len as usize).await.map_err(io_error)?;
        end_of_stream_or(data)
    }

    async fn read_stderr(&self, _: &TtrpcContext, req: agent::ReadStreamRequest) -> Result<agent::ReadStreamResponse> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        let data = p.io.read_stderr(req.len as usize).await.map_err(io_error)?;
        end_of_stream_or(data)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: agent::CloseStdinRequest) -> Result<Empty> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        p.io.close_stdin().await.map_err(io_error)?;
        Ok(Empty::new())
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: agent::TtyWinResizeRequest) -> Result<Empty> {
        self.allow(&req)?;
        let p = self.sandbox.process(&req.container_id, &req.exec_id)?;
        let (rows, cols) = (u16::try_from(req.row), u16::try_from(req.column));
        let (Ok(rows), Ok(cols)) = (rows, cols) else {
            return Err(Error::InvalidArgument("terminal size out of range".into()).into());
        };
        // kata-agent answers UNAVAILABLE "no tty" for a process without a terminal (rpc.rs,
        // tty_win_resize); kata's shim relies on nothing else.
        p.io.resize(rows, cols).map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(Empty::new())
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> Result<agent::GuestDetailsResponse> {
        self.allow(&req)?;
        let mut resp = agent::GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
        }
        let mut details = agent::AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").into();
        details.init_daemon = std::process::id() == 1;
        details.storage_handlers = vec!["virtio-fs".into(), "local".into(), "ephemeral".into()];
        details.supports_seccomp = true;
        resp.agent_details = Some(details).into();
        Ok(resp)
    }

    async fn get_oom_event(&self, _: &TtrpcContext, req: agent::GetOOMEventRequest) -> Result<agent::OOMEvent> {
        self.allow(&req)?;
        let mut resp = agent::OOMEvent::new();
        resp.container_id = self.sandbox.next_oom_event().await;
        Ok(resp)
    }

    async fn set_policy(&self, _: &TtrpcContext, req: agent::SetPolicyRequest) -> Result<Empty> {
        self.allow(&req)?;
        self.policy.set(&req.policy).map_err(Error::from)?;
        crate::log!("policy set ({} bytes)", req.policy.len());
        Ok(Empty::new())
    }

    async fn update_interface(&self, _: &TtrpcContext, req: agent::UpdateInterfaceRequest) -> Result<types::Interface> {
        self.allow(&req)?;
        Ok(crate::network::update_interface(&req)?)
    }

    async fn update_routes(&self, _: &TtrpcContext, req: agent::UpdateRoutesRequest) -> Result<agent::Routes> {
        self.allow(&req)?;
        Ok(crate::network::update_routes(&req)?)
    }

    async fn list_interfaces(&self, _: &TtrpcContext, req: agent::ListInterfacesRequest) -> Result<agent::Interfaces> {
        self.allow(&req)?;
        Ok(crate::network::list_interfaces()?)
    }

    async fn list_routes(&self, _: &TtrpcContext, req: agent::ListRoutesRequest) -> Result<agent::Routes> {
        self.allow(&req)?;
        Ok(crate::network::list_routes()?)
    }

    async fn copy_file(&self, _: &TtrpcContext, req: agent::CopyFileRequest) -> Result<Empty> {
        self.allow(&req)?;
        crate::copy_file::copy_file(&req)?;
        Ok(Empty::new())
    }

    async fn add_arp_neighbors(&self, _: &TtrpcContext, req: agent::AddARPNeighborsRequest) -> Result<Empty> {
        self.allow(&req)?;
        crate::network::add_arp_neighbors(&req)?;
        Ok(Empty::new())
    }
}

/// kata-agent answers a read at end of stream with an error; runtimes stop copying on it.
fn end_of_stream_or(data: Vec<u8>) -> Result<agent::ReadStreamResponse> {
    if data.is_empty() {
        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::OUT_OF_RANGE, "EOF")));
    }
    let mut resp = agent::ReadStreamResponse::new();
    resp.data = data;
    Ok(resp)
}
