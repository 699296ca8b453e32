//! `contrast-agent`: the pod VM's guest agent, as a library for its binary and for the fuzz
//! targets (fuzz/), which drive what it parses from the host (specs, storages).
//!
//! Runs as the guest's PID 1 from the initrd: sets up the minimal system (mounts, kernel
//! modules, power button), then serves the kata agent ttrpc API on vsock port 1024.

mod agent_service;
mod cgroup;
mod copy_file;
mod device_filter;
mod error;
mod init;
mod launch;
pub mod layers;
mod measured;
mod network;
mod policy;
mod policy_input;
mod port_forward;
mod reaper;
mod runner;
mod runner_client;
mod sandbox;
mod services;
pub mod spec;
mod stdio;
pub mod storage;
mod transport;
mod volumes;

use std::path::Path;

use anyhow::{Context, Result};

/// Guest-local socket the ttrpc server listens on; vsock connections are proxied to it.
const TTRPC_SOCKET: &str = "/run/contrast-agent.sock";

/// Logs one line to the serial console, prefixed with seconds since boot.
macro_rules! log {
    ($($arg:tt)*) => { eprintln!("[{:>8.3}] contrast-agent: {}", $crate::uptime(), format_args!($($arg)*)) };
}
pub(crate) use log;

/// Logs a failed removal of `path`; one that was gone already is what was wanted.
pub(crate) fn log_unless_gone(result: std::io::Result<()>, path: &Path) {
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            log!("removing {}: {e}", path.display());
        }
    }
}

/// Seconds since boot (CLOCK_BOOTTIME), like the kernel's own console timestamps.
pub(crate) fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// The guest's own pause for a confidential pod's sandbox container: this binary bound at
/// `<PAUSE_ROOT>/pause` in an otherwise empty root, run as `/pause`.
const PAUSE_ROOT: &str = "/run/contrast/pause";

/// `contrast-runner`'s `main`: one libcontainer operation, its request as the only argument.
/// A binary of its own so that the agent, which runs for the pod's lifetime, does not carry
/// libcontainer's code (docs/performance.md, agent memory).
pub fn runner_main() -> ! {
    runner::main(&std::env::args().nth(1).unwrap_or_default())
}

/// The agent binary's `main`: the sandbox pause, or the agent itself.
pub fn main() {
    if std::env::args().next().as_deref() == Some("/pause") {
        // PID 1 of the sandbox container: sleep until killed.
        loop {
            nix::unistd::pause();
        }
    }
    log!("started (version {})", env!("CARGO_PKG_VERSION"));
    let is_init = std::process::id() == 1;
    if let Err(e) = run(is_init) {
        log!("fatal: {e:#}");
        if is_init {
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(is_init: bool) -> Result<()> {
    let cmdline = if is_init { init::setup_system().context("system setup")? } else { init::KernelCmdline::read()? };
    if is_init && cmdline.debug_console {
        init::spawn_debug_console();
    }
    if is_init {
        if let Err(e) = init::prepare_pause_root(Path::new(PAUSE_ROOT)) {
            log!("no guest pause for confidential sandboxes: {e:#}");
        }
    }
    // Before anything is served: the init data, checked against the launch binding.
    let policy = std::sync::Arc::new(measured::decide_policy());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async move {
        let reaper = reaper::Reaper::new();
        tokio::spawn(reaper.clone().run());
        let _server = services::start(Path::new(TTRPC_SOCKET), cmdline.diagnostics, reaper, policy.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = port_forward::serve(policy).await {
                log!("port forwarding not served: {e:#}");
            }
        });
        transport::serve_vsock(contrast_agent_protocol::AGENT_VSOCK_PORT, Path::new(TTRPC_SOCKET)).await
    })
}
