//! `make soak`: load through the real containerd and ctr — 100 pod create/delete cycles one
//! after another, then 10 rounds of 10 pods started at once on this machine's cores (pods
//! ending side by side once left a shim socket in 2 of 100) — and what is left
//! afterwards: processes, containerd's open fds, mounts, sockets and state dirs, counted
//! before and after. Written to docs/reliability.md between the `soak` markers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use contrast_tests::containerd::{Containerd, IMAGE, NAMESPACE, RUNTIME};
use contrast_tests::{image_dir, write_section};

const CYCLES: usize = 100;
const CONCURRENT: usize = 10;
/// Rounds of [`CONCURRENT`] pods started at once.
const ROUNDS: usize = 10;
/// Where containerd puts shim sockets (`/run/containerd/s/<hash>`), for every containerd.
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// What a pod could leave behind, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    /// Shim daemons of this containerd plus QEMU, vhost-device-vsock and virtiofsd anywhere.
    processes: usize,
    containerd_fds: usize,
    mounts: usize,
    /// Shim sockets in /run/containerd/s and sockets under the pods' state root.
    sockets: usize,
    state_dirs: usize,
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn sockets_under(dir: &Path) -> usize {
    use std::os::unix::fs::FileTypeExt;
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_socket() {
            n += 1;
        } else if t.is_dir() {
            n += sockets_under(&e.path());
        }
    }
    n
}

fn named_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| {
            let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
            let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
            ["qemu-system-x86_64", "vhost-device-vsock", "virtiofsd"].contains(&name)
        })
        .count()
}

fn counts(cd: &Containerd, containerd_pid: u32) -> Counts {
    let root = cd.pod_root();
    Counts {
        processes: cd.shim_pids().len() + named_processes(),
        containerd_fds: count_entries(&PathBuf::from(format!("/proc/{containerd_pid}/fd"))),
        mounts: std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |m| m.lines().count()),
        sockets: count_entries(Path::new(SHIM_SOCKETS)) + sockets_under(&root),
        state_dirs: count_entries(&root.join(NAMESPACE)),
    }
}

fn containerd_pid(cd: &Containerd) -> Result<u32> {
    let socket = cd.socket();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let config = cd.dir.path().join("config.toml");
        if cmdline.contains("containerd --config") && cmdline.contains(&config.display().to_string()) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no containerd for {socket}")
}

fn run(cd: &Containerd, id: &str, script: &str) -> Command {
    let mut c = cd.ctr_command(NAMESPACE);
    c.args(["run", "--runtime", RUNTIME, "--rm", IMAGE, id, "sh", "-c", script]);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn check(out: &Output, want: &str, what: &str) -> Result<()> {
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == want,
        "{what}: {:?}, stdout {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(what: &str, before: usize, after_cycles: usize, after: usize) -> String {
    format!("| {what} | {before} | {after_cycles} | {after} |")
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let shim = PathBuf::from(args.next().context("usage: soak <shim> [image dir] [doc]")?);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/reliability.md"));
    let cd = Containerd::start(&shim, &image)?;
    let pid = containerd_pid(&cd)?;
    // One pod first: containerd loads the shim plugin path, opens its metadata, etc.
    check(&run(&cd, "warm-up", "echo ok").output()?, "ok\n", "warm-up pod")?;
    let before = counts(&cd, pid);

    let mut times = Vec::with_capacity(CYCLES);
    for i in 0..CYCLES {
        let started = Instant::now();
        let out = run(&cd, &format!("cycle-{i}"), &format!("echo cycle-{i}")).output()?;
        times.push(started.elapsed());
        check(&out, &format!("cycle-{i}\n"), &format!("cycle {i}"))?;
    }
    let after_cycles = counts(&cd, pid);

    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut failed = 0;
    for r in 0..ROUNDS {
        let started = Instant::now();
        let children: Vec<_> = (0..CONCURRENT)
            .map(|i| run(&cd, &format!("together-{r}-{i}"), &format!("echo together-{r}-{i}")).spawn())
            .collect::<std::io::Result<_>>()?;
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output()?;
            if let Err(e) = check(&out, &format!("together-{r}-{i}\n"), &format!("concurrent pod {i} of round {r}")) {
                eprintln!("{e:#}");
                failed += 1;
            }
        }
        rounds.push(started.elapsed());
    }
    ensure!(failed == 0, "{failed} of {} concurrent pods failed", ROUNDS * CONCURRENT);
    rounds.sort();
    let concurrent = percentile(&rounds, 0.5);
    // containerd and the shims finish their cleanup a moment after `ctr run --rm` returns.
    let end = Instant::now() + Duration::from_secs(30);
    let mut after = counts(&cd, pid);
    while after != before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        after = counts(&cd, pid);
    }
    let leaks = cd.leftovers();

    times.sort();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let median = percentile(&times, 0.5);
    let serial_per_core = median.as_secs_f64() * CONCURRENT as f64 / cores as f64;
    let body = format!(
        "Command: `make soak` (runs `target/release/examples/soak <shim> build/image docs/reliability.md`): a private \
         containerd 1.6 (Debian bookworm), runtime class `contrast-cc` (insecure platform, TCG), every pod a \
         `ctr run --rm` of busybox `sh -c 'echo …'` whose output is checked; {cores} cores.\n\n\
         - {CYCLES} create/delete cycles one after another: all succeeded; per pod median {:.2} s, p95 {:.2} s, \
         max {:.2} s.\n\
         - {ROUNDS} rounds of {CONCURRENT} pods started at once: all succeeded; a round took median {:.1} s \
         (max {:.1} s) — {:.2}× the serial cost spread over the cores ({CONCURRENT} × {:.2} s ÷ {cores} = \
         {serial_per_core:.1} s).\n\
         - Left behind after both (the test suite's leftover check: processes, mounts, state dirs): {}.\n\n\
         | count | before | after {CYCLES} cycles | after the {ROUNDS} × {CONCURRENT} concurrent pods |\n|---|---|---|---|\n\
         {}\n{}\n{}\n{}\n{}\n",
        median.as_secs_f64(),
        percentile(&times, 0.95).as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        concurrent.as_secs_f64(),
        rounds[rounds.len() - 1].as_secs_f64(),
        concurrent.as_secs_f64() / serial_per_core,
        median.as_secs_f64(),
        if leaks.is_empty() { "nothing".to_owned() } else { format!("{leaks:?}") },
        row(
            "shim, QEMU, vhost-device-vsock, virtiofsd processes",
            before.processes,
            after_cycles.processes,
            after.processes
        ),
        row("containerd's open fds", before.containerd_fds, after_cycles.containerd_fds, after.containerd_fds),
        row("mounts", before.mounts, after_cycles.mounts, after.mounts),
        row("sockets (/run/containerd/s, pod state root)", before.sockets, after_cycles.sockets, after.sockets),
        row("pod state dirs", before.state_dirs, after_cycles.state_dirs, after.state_dirs),
    );
    print!("{body}");
    write_section(&doc, "soak", &body)?;
    ensure!(after == before && leaks.is_empty(), "leaked: before {before:?}, after {after:?}, {leaks:?}");
    Ok(())
}
