//! `make demo`: a private containerd with our shim registered runs a container in a pod VM
//! (insecure platform, QEMU under TCG) through `ctr run`, prints its output, then cleans up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use contrast_tests::containerd::{Containerd, IMAGE, RUNTIME};
use contrast_tests::image_dir;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let shim = PathBuf::from(args.next().context("usage: demo <shim binary> [image dir]")?);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;

    println!("starting a private containerd with runtime {RUNTIME} ...");
    let cd = Containerd::start(&shim, &image)?;
    println!("  containerd at {}; image {IMAGE} imported", cd.socket());

    let script = "echo \"hello from a container in a pod VM\"; echo \"guest kernel: $(uname -r)\"; \
                  echo \"container hostname: $(hostname)\"";
    println!("$ ctr run --runtime {RUNTIME} --rm {IMAGE} demo sh -c '...'");
    let start = Instant::now();
    let out = cd.ctr(&["run", "--runtime", RUNTIME, "--rm", IMAGE, "demo", "sh", "-c", script]);
    let took = start.elapsed();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "ctr run failed ({}); containerd log: {}", out.status, cd.log());
    println!("(pod VM booted, container ran, VM stopped: {took:.2?}; host kernel: {})", host_kernel());

    let left = cd.leftovers();
    println!("left behind: {}", if left.is_empty() { "nothing".to_owned() } else { format!("{left:?}") });
    ensure!(left.is_empty(), "demo left something behind");
    Ok(())
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}
