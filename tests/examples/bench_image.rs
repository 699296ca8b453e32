//! `make bench` (image part): how long `contrast-image` takes to build the pod-VM image from
//! its prepared inputs (unpacked kernel package, static agent and init, busybox), and the sizes
//! of what it produces. Written to docs/performance.md between the `bench-image` markers.
//!
//! Usage: bench_image CONTRAST_IMAGE KERNEL_TREE AGENT INIT DOC

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use contrast_tests::write_section;

const RUNS: usize = 5;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [tool, kernel, agent, runner, init, doc] = args.as_slice() else {
        anyhow::bail!("usage: bench_image CONTRAST_IMAGE KERNEL_TREE AGENT RUNNER INIT DOC");
    };
    let dir = tempfile::tempdir()?;
    let mut times = Vec::new();
    for run in 0..RUNS {
        let out = dir.path().join(format!("run{run}"));
        let start = Instant::now();
        let status = Command::new(tool)
            .arg("--kernel-tree")
            .arg(kernel)
            .arg("--agent")
            .arg(agent)
            .arg("--runner")
            .arg(runner)
            .arg("--init")
            .arg(init)
            .args(["--busybox", "/bin/busybox", "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running contrast-image")?;
        ensure!(status.success(), "contrast-image failed");
        times.push(start.elapsed());
        eprintln!("run {run}: {:.2?}", times[run]);
    }
    times.sort();
    let out = dir.path().join("run0");
    let values: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("reference-values.json"))?)?;
    let size = |name: &str| -> Result<String> { Ok(mib(std::fs::metadata(out.join(name))?.len())) };
    let erofs = values["verity"]["root_filesystem"]["size"].as_u64().unwrap_or(0);
    let blocks = values["verity"]["data_blocks"].as_u64().unwrap_or(0);
    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_image target/release/contrast-image <kernel tree> \
         <agent> <runner> <init> docs/performance.md`): `contrast-image` from prepared inputs (kernel already \
         built, agent, runner and init already built), {RUNS} runs, median {:.2?} (min {:.2?}, max {:.2?}). \
         Every run produced the same `root.img` SHA-256 ({}).\n\n\
         | output | size |\n|---|---|\n\
         | `vmlinux` (uncompressed kernel, what the VM boots) | {} |\n\
         | `vmlinuz` (the kernel's bzImage) | {} |\n\
         | `initrd.img` (contrast-init, and the modules that reach the root if the kernel has any; gzip) | {} |\n\
         | `root.img` (GPT: erofs root {} + verity hash partition, 1 MiB aligned) | {} |\n\
         | `initrd-agent.img` (initrd-only development layout, for comparison) | {} |\n\
         | verity: data blocks / hash tree incl. superblock | {blocks} × 4 KiB / {} |\n",
        times[RUNS / 2],
        times[0],
        times[RUNS - 1],
        same_disk(dir.path())?,
        size("vmlinux")?,
        size("vmlinuz")?,
        size("initrd.img")?,
        mib(erofs),
        size("root.img")?,
        size("initrd-agent.img")?,
        kib(hash_partition_bytes(&out)?),
    );
    println!("{section}");
    write_section(doc, "bench-image", &section)?;
    Ok(())
}

/// The root disk hash all runs agree on.
fn same_disk(dir: &Path) -> Result<String> {
    let mut hashes = Vec::new();
    for run in 0..RUNS {
        let text = std::fs::read(dir.join(format!("run{run}/reference-values.json")))?;
        let v: serde_json::Value = serde_json::from_slice(&text)?;
        hashes.push(v["root_disk"]["sha256"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(hashes.iter().all(|h| *h == hashes[0]), "runs produced different disks: {hashes:?}");
    Ok(format!("{}…", &hashes[0][..16]))
}

fn hash_partition_bytes(out: &Path) -> Result<u64> {
    let disk = std::fs::read(out.join("root.img"))?;
    Ok(contrast_tests::tamper::partition_range(&disk, 2)?.len() as u64)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}
