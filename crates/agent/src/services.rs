//! The ttrpc services the agent serves.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use contrast_agent_protocol::{agent_ttrpc, diagnostics, diagnostics_ttrpc, health, health_ttrpc, MAX_PATTERN_LEN};
use ttrpc::r#async::{Server, TtrpcContext};

/// Version of the agent API we speak (kata-agent reports the same string for its API).
const API_VERSION: &str = "0.0.1";

struct HealthService;

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(resp)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        let mut resp = health::VersionCheckResponse::new();
        resp.grpc_version = API_VERSION.to_owned();
        resp.agent_version = format!("contrast-agent {}", env!("CARGO_PKG_VERSION"));
        Ok(resp)
    }
}

struct DiagnosticsService;

#[async_trait]
impl diagnostics_ttrpc::Diagnostics for DiagnosticsService {
    async fn pattern(
        &self,
        _ctx: &TtrpcContext,
        req: diagnostics::PatternRequest,
    ) -> ttrpc::Result<diagnostics::PatternResponse> {
        if req.length > MAX_PATTERN_LEN {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("length {} exceeds {MAX_PATTERN_LEN}", req.length),
            )));
        }
        let mut resp = diagnostics::PatternResponse::new();
        resp.data = (0..req.length as usize).map(|i| contrast_agent_protocol::pattern_byte(req.seed, i)).collect();
        Ok(resp)
    }

    async fn agent_memory(
        &self,
        _ctx: &TtrpcContext,
        _req: diagnostics::AgentMemoryRequest,
    ) -> ttrpc::Result<diagnostics::AgentMemoryResponse> {
        let mut resp = diagnostics::AgentMemoryResponse::new();
        resp.rss_kib = proc_kib("/proc/self/status", "VmRSS:");
        resp.rss_anon_kib = proc_kib("/proc/self/status", "RssAnon:");
        let total = proc_kib("/proc/meminfo", "MemTotal:");
        let available = proc_kib("/proc/meminfo", "MemAvailable:");
        resp.guest_used_kib = total.saturating_sub(available);
        Ok(resp)
    }
}

/// A `Key:   123 kB` value from a /proc status-like file.
fn proc_kib(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the ttrpc server on the guest-local unix socket.
pub async fn start(
    socket: &Path,
    diagnostics: bool,
    reaper: Arc<crate::reaper::Reaper>,
    policy: Arc<crate::policy::Policy>,
) -> Result<Server> {
    let _ = std::fs::remove_file(socket);
    let agent = crate::agent_service::AgentService { sandbox: Arc::new(crate::sandbox::Sandbox::new(reaper)), policy };
    let mut server = Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .context("binding the ttrpc socket")?
        .register_service(health_ttrpc::create_health(Arc::new(Box::new(HealthService))))
        .register_service(agent_ttrpc::create_agent_service(Arc::new(Box::new(agent))));
    if diagnostics {
        crate::log!("diagnostics service enabled (contrast.diagnostics=1)");
        server = server.register_service(diagnostics_ttrpc::create_diagnostics(Arc::new(Box::new(DiagnosticsService))));
    }
    server.start().await.context("starting the ttrpc server")?;
    Ok(server)
}
