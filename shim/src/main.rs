//! containerd-shim-contrast-cc-v2: containerd's runtime v2 shim that runs each pod in its own
//! (confidential) VM and forwards container operations to the guest agent.

mod bootstrap;
mod copied_files;
mod error;
mod events;
mod io;
mod layers;
mod logbinary;
mod metrics;
mod network;
mod pod;
mod rootfs;
mod service;
mod shim;
mod spec;
mod task_state;

/// Runtime type containerd knows this shim by (`runtime_type` in its config).
const RUNTIME_ID: &str = "io.containerd.contrast-cc.v2";

/// `-info` (containerd 2.x): the runtime's name and version as a protobuf `RuntimeInfo` on
/// stdout. containerd writes runtime options (an `Any`, or `BootstrapParams` from 2.3) to
/// stdin; they are read and not needed for the answer.
fn print_info() -> std::io::Result<()> {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    use std::io::{Read, Write};
    let mut options = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut options);
    let info = RuntimeInfo {
        name: RUNTIME_ID.into(),
        version: Some(RuntimeVersion { version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }).into(),
        ..Default::default()
    };
    let bytes = info.write_to_bytes().map_err(std::io::Error::other)?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)?;
    out.flush()
}

/// The value after `flag` in containerd's command line (`-id <id>`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

/// Daemon mode: log through `tracing` into containerd's `log` FIFO in the bundle directory
/// (containerd copies it into its own log). The containerd-shim crate's `log` records are
/// bridged in. Level from `RUST_LOG` (a level name: `debug`, `trace`, ...), else info (debug
/// with `-debug`). A level, not `EnvFilter` directives: their parser compiles regular
/// expressions in every shim process, for a filter nobody needs per module here.
pub fn init_logging(debug: bool) {
    use tracing_subscriber::filter::LevelFilter;
    let Ok(fifo) = std::fs::OpenOptions::new().write(true).open("log") else { return };
    let default = if debug { LevelFilter::DEBUG } else { LevelFilter::INFO };
    let level = std::env::var("RUST_LOG").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
    let fifo = std::sync::Mutex::new(fifo);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(fifo).try_init();
    // The daemon's stderr goes nowhere: a panic would end a request, a connection or the
    // daemon without a word. Into containerd's log with it.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}\n{backtrace}");
    }));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!("containerd-shim-contrast-cc-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if args.iter().any(|a| a == "-info" || a == "--info") {
        std::process::exit(match print_info() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{RUNTIME_ID}: -info: {e}");
                1
            }
        });
    }
    let config = containerd_shim::Config {
        // QEMU and the helpers are reaped by their own supervisors, never by a global reaper.
        no_reaper: true,
        no_sub_reaper: true,
        // Our own subscriber writes to the log FIFO, with the pod id on every line.
        no_setup_logger: true,
        ..Default::default()
    };
    let pod = flag_value(&args, "-id").unwrap_or_default();
    // Daemon mode (no `start`/`delete` action): log into the bundle's FIFO from the start.
    // `delete` warns on stderr: containerd logs what it says as "cleanup warnings".
    match args.last().map(String::as_str) {
        Some("start") => {}
        Some("delete") => {
            let level = if args.iter().any(|a| a == "-debug") { tracing::Level::DEBUG } else { tracing::Level::WARN };
            let _ = tracing_subscriber::fmt()
                .with_max_level(level)
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .try_init();
        }
        _ => init_logging(args.iter().any(|a| a == "-debug")),
    }
    // The runtime is single-threaded: a span entered here is current for every task.
    let span = tracing::info_span!("shim", pod = %pod);
    let _entered = span.enter();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<shim::ContrastShim>(RUNTIME_ID, Some(config)));
}
