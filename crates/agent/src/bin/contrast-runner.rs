//! `contrast-runner`: one libcontainer operation for the agent (see `runner` in the library).

// Link shim for the static musl build; it must be in the binary itself.
#[cfg(target_env = "musl")]
#[path = "../libc_compat.rs"]
mod libc_compat;

fn main() {
    contrast_agent::runner_main();
}
