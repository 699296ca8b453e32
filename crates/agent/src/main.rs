//! `contrast-agent`: the pod VM's guest agent (see the library, `src/lib.rs`).

// Link shim for the static musl build; it must be in the binary itself.
#[cfg(target_env = "musl")]
mod libc_compat;

fn main() {
    contrast_agent::main();
}
