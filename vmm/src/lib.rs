//! Pod VMs with QEMU: the command line per platform, process supervision, the QMP client,
//! vsock dialing (kernel vhost-vsock or hybrid vsock through vhost-device-vsock) and the
//! helper daemons.

pub mod helper;
pub mod net;
pub mod pidfile;
mod pod_vm;
pub mod port_forward;
pub mod qemu_args;
pub mod qmp;
pub mod supervisor;
pub mod tsc;
pub mod vsock;

pub use pod_vm::{Error, LaunchInitData, LaunchRequest, PodVm};
pub use supervisor::VmExit;

/// vsock port of the kata agent API (kata runtime `vSockPort`); the agent's
/// `contrast_agent_protocol::AGENT_VSOCK_PORT` (the shim's tests check they agree).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Host vsock port the agent announces itself on once it serves; the agent's
/// `contrast_agent_protocol::AGENT_READY_VSOCK_PORT`.
pub const AGENT_READY_VSOCK_PORT: u32 = 1025;
