//! The kata agent ttrpc API, generated at build time from `protos/`.
//!
//! Wire-compatible with kata-agent: package `grpc`, services `grpc.AgentService` and
//! `grpc.Health`, same method names and field numbers.

/// The modules generated from `protos/` at build time (build.rs), each with the lints
/// generated code does not meet allowed.
macro_rules! generated {
    ($($name:ident),* $(,)?) => {$(
        #[allow(
            clippy::all,
            clippy::unwrap_used,
            clippy::undocumented_unsafe_blocks,
            clippy::uninlined_format_args,
            non_camel_case_types,
            non_upper_case_globals,
            non_snake_case,
            unused_mut,
            unused_imports,
            dead_code
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
        }
    )*};
}

generated!(health, health_ttrpc, portforward, diagnostics, diagnostics_ttrpc, agent, agent_ttrpc, oci, types);

/// `google.protobuf.Empty`, as the generated service code names it.
pub mod empty {
    pub use protobuf::well_known_types::empty::*;
}

mod client;
pub use client::{AgentClient, AgentError};

/// vsock port the agent listens on (kata: `vSockPort` in the runtime's agent config).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Host vsock port the agent connects to, and at once closes, once it serves
/// [`AGENT_VSOCK_PORT`]: the host's cue to dial, instead of polling a guest that is still
/// booting. The connection carries no data and proves nothing; the host dials and checks
/// health as before. With hybrid vsock it reaches the unix socket `<uds-path>_1025`.
pub const AGENT_READY_VSOCK_PORT: u32 = 1025;

/// vsock port of the agent's port forwarder (CRI `PortForward`). Not ttrpc: the host sends
/// the guest port as two bytes, big-endian; the agent asks the policy (rule
/// `PortForwardRequest`, [`portforward::PortForwardRequest`]) and connects to 127.0.0.1:port,
/// then answers one status byte: [`PORT_FORWARD_CONNECTED`], or [`PORT_FORWARD_REFUSED`] /
/// [`PORT_FORWARD_FAILED`] followed by the reason (UTF-8, at most 512 bytes) and the end of
/// the connection. After `CONNECTED` both directions carry frames — a four-byte big-endian
/// length, then that many bytes (at most 64 KiB from the host; a guest write, header
/// included, at most [`MAX_GUEST_WRITE`]) — and a frame of length 0 ends its direction (a
/// half-close, which vhost-device-vsock cannot carry). The host closes the connection once
/// both directions have ended, or earlier when the guest stays silent for 30 s after the
/// host's end (the host then resets its client).
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1026;
pub const PORT_FORWARD_CONNECTED: u8 = 0;
/// The pod's policy does not allow the port.
pub const PORT_FORWARD_REFUSED: u8 = 1;
/// Nothing accepted the connection in the guest.
pub const PORT_FORWARD_FAILED: u8 = 2;

/// Largest single write the agent makes to a vsock connection. vhost-device-vsock 0.3 stalls a
/// connection for good when the guest (Linux 6.12) sends one write of 64 KiB or more as a
/// multi-descriptor chain; every guest-side write stays at or below this.
pub const MAX_GUEST_WRITE: usize = 32 * 1024;

/// Largest payload the diagnostics `Pattern` call returns.
pub const MAX_PATTERN_LEN: u32 = 1 << 20;

/// Byte `i` of the diagnostics pattern that starts at `seed`.
pub fn pattern_byte(seed: u32, i: usize) -> u8 {
    ((seed as usize + i) % 251) as u8
}
