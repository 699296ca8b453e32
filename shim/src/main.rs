//! containerd-shim-contrast-cc-v2: containerd's runtime v2 shim that runs each pod in its own
//! (confidential) VM and forwards container operations to the guest agent.

mod error;
mod io;
mod metrics;
mod pod;
mod rootfs;
mod service;
mod shim;
mod spec;

/// Runtime type containerd knows this shim by (`runtime_type` in its config).
const RUNTIME_ID: &str = "io.containerd.contrast-cc.v2";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("containerd-shim-contrast-cc-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let config = containerd_shim::Config {
        // QEMU and the helpers are reaped by their own supervisors, never by a global reaper.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<shim::ContrastShim>(RUNTIME_ID, Some(config)));
}
