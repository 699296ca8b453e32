//! `make bench` (shim part), through the real containerd and ctr: shim RSS per idle pod, the
//! pod start breakdown, `ctr run --rm <image> true` through our shim vs runc side by side,
//! and exec latency. Written to docs/performance.md between the `bench-shim` markers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use contrast_node_installer::overhead;
use contrast_tests::containerd::{Containerd, IMAGE, RUNTIME};
use contrast_tests::{image_dir, write_section};

const RUNS: usize = 5;
/// Pods started at once for the concurrency row.
const CONCURRENT: usize = 10;
/// Rounds of the concurrency row, each a serial pod and then CONCURRENT at once: one round
/// alone moved between 1.5× and 2.0× from run to run on these shared machines.
const CONCURRENT_ROUNDS: usize = 3;
/// The measured idle pod, for the installer's RuntimeClass overhead (relative to the checkout).
const OVERHEAD_FILE: &str = "packaging/pod-overhead.toml";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (VmRSS, RssAnon) of the shim daemon whose bundle is under `dir`, KiB.
fn shim_rss_kib(dir: &Path) -> Result<(u64, u64)> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        // By command line, not executable: `make shim-profile` runs the shim under valgrind.
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if cmdline.contains("containerd-shim-contrast") && cwd.starts_with(dir) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let kib = |key: &str| -> Result<u64> {
                let v = status.lines().find_map(|l| l.strip_prefix(key)).with_context(|| key.to_owned())?;
                Ok(v.trim().trim_end_matches("kB").trim().parse()?)
            };
            return Ok((kib("VmRSS:")?, kib("RssAnon:")?));
        }
    }
    anyhow::bail!("no shim daemon found")
}

/// Where a process's resident memory is, KiB.
#[derive(Default, Clone, Copy)]
struct Resident {
    /// Outside the guest RAM and outside TCG's cache: what the process holds on any node.
    own: u64,
    /// The guest RAM mapping (`memory-backend-memfd`, shown as `/memfd:…` in smaps; QEMU and
    /// the vhost-user helpers all map it).
    guest: u64,
    /// TCG's translated-code cache: executable anonymous (or `tcg` memfd) mappings, which
    /// exist only where QEMU emulates the CPU.
    tcg: u64,
}

fn resident_kib(pid: u32) -> Result<Resident> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut r = Resident::default();
    let mut kind = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (perms, inode, name) = (f.get(1).copied().unwrap_or(""), f.get(4).copied().unwrap_or(""), f.get(5));
            let tcg =
                perms.contains('x') && ((inode == "0" && name.is_none()) || name.is_some_and(|n| n.contains("tcg")));
            kind = if tcg {
                2
            } else if name.is_some_and(|n| n.starts_with("/memfd:")) {
                1
            } else {
                0
            };
        } else if first == "Rss:" {
            let kib: u64 = fields.next().unwrap_or("0").parse()?;
            match kind {
                1 => r.guest += kib,
                2 => r.tcg += kib,
                _ => r.own += kib,
            }
        }
    }
    Ok(r)
}

/// Per idle pod: QEMU's, vhost-device-vsock's and virtiofsd's resident memory.
fn pod_memory_kib(cd: &Containerd) -> Result<(Resident, Resident, Resident)> {
    let (mut qemu, mut vsock, mut fs) = (Resident::default(), Resident::default(), Resident::default());
    for (pid, cmd) in contrast_tests::processes_mentioning(&cd.pod_root()) {
        let r = resident_kib(pid)?;
        if cmd.contains("qemu-system") {
            qemu = r;
        } else if cmd.contains("vhost-device-vsock") {
            vsock = r;
        } else if cmd.contains("virtiofsd") {
            fs = r;
        }
    }
    ensure!(qemu.own > 0, "no QEMU found under {}", cd.pod_root().display());
    Ok((qemu, vsock, fs))
}

/// CPU time all processes have used since boot (`/proc/stat`: everything but idle and iowait).
fn busy_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    ensure!(ticks.len() >= 8, "unexpected /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 on Linux).
    let busy: u64 = ticks[..8].iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(Duration::from_millis(busy * 10))
}

/// `key=<n>` from the last containerd log line that has it.
fn logged_ms(log: &str, key: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let at = l.find(&format!("{key}="))? + key.len() + 1;
        l[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let shim = PathBuf::from(args.next().context("usage: bench_shim <shim> [image dir] [doc] [overhead file]")?);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));
    // Elsewhere only for runs whose figures must not reach the installer (`make shim-profile`).
    let overhead_file = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(OVERHEAD_FILE));
    let cd = Containerd::start(&shim, &image)?;

    let mut anon = Vec::new();
    let (mut qemu_own, mut guest_ram, mut tcg, mut vsock_own, mut fs_own) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut create, mut guest_create, mut start) = (Vec::new(), Vec::new(), Vec::new());
    // Per run, then the median: medians of different series do not subtract.
    let (mut outside, mut in_shim) = (Vec::new(), Vec::new());
    let (mut rss, mut start_total, mut qmp, mut agent, mut exec) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let id = format!("idle{i}");
        let t = Instant::now();
        cd.ctr_ok(&["run", "--runtime", RUNTIME, "-d", IMAGE, &id, "sleep", "1000"])?;
        start_total.push(t.elapsed());
        let log = cd.log();
        qmp.push(Duration::from_millis(logged_ms(&log, "qmp_ready_ms").context("qmp_ready_ms in log")?));
        agent.push(Duration::from_millis(logged_ms(&log, "agent_ready_ms").context("agent_ready_ms in log")?));
        create.push(Duration::from_millis(logged_ms(&log, "create_ms").context("create_ms in log")?));
        guest_create.push(Duration::from_millis(logged_ms(&log, "guest_create_ms").context("guest_create_ms")?));
        start.push(Duration::from_millis(logged_ms(&log, "start_ms").context("start_ms in log")?));
        let last = |v: &Vec<Duration>| v[v.len() - 1];
        outside.push(last(&start_total).saturating_sub(last(&create) + last(&start)));
        in_shim.push(last(&create).saturating_sub(last(&agent)).saturating_sub(last(&guest_create)));
        std::thread::sleep(Duration::from_secs(1));
        let (r, a) = shim_rss_kib(cd.dir.path())?;
        rss.push(r);
        anon.push(a);
        let (q, v, f) = pod_memory_kib(&cd)?;
        qemu_own.push(q.own);
        guest_ram.push(q.guest);
        tcg.push(q.tcg);
        vsock_own.push(v.own);
        fs_own.push(f.own);
        let t = Instant::now();
        let out = cd.ctr_ok(&["task", "exec", "--exec-id", "x", &id, "true"])?;
        exec.push(t.elapsed());
        ensure!(out.is_empty(), "exec printed {out:?}");
        cd.ctr_ok(&["task", "kill", "-s", "KILL", &id])?;
        std::thread::sleep(Duration::from_millis(300));
        let _ = cd.ctr(&["task", "delete", &id]);
        cd.ctr_ok(&["container", "rm", &id])?;
    }
    rss.sort();
    anon.sort();
    let mid = |v: &mut Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let (qemu_own, guest_ram, tcg, vsock_own, fs_own) =
        (mid(&mut qemu_own), mid(&mut guest_ram), mid(&mut tcg), mid(&mut vsock_own), mid(&mut fs_own));
    let shim_kib = rss[RUNS / 2];
    let per_pod_mib = (shim_kib + qemu_own + vsock_own + fs_own) as f64 / 1024.0;
    std::fs::write(
        &overhead_file,
        format!(
            "# Memory one idle pod costs on the node beyond its guest RAM, KiB: written by `make bench`\n\
             # (tests/examples/bench_shim.rs), read by `contrast-node-installer manifests` to compute the\n\
             # RuntimeClass overhead. Median of {RUNS} idle pods (one `sleep` container each), QEMU under TCG.\n\
             # The shim's VmRSS.\n\
             shim_kib = {shim_kib}\n\
             # QEMU outside the guest RAM mapping and outside TCG's translated-code cache.\n\
             qemu_kib = {qemu_own}\n\
             # vhost-device-vsock + virtiofsd, outside the guest RAM mapping.\n\
             helpers_kib = {}\n\
             # TCG's translated-code cache (only without KVM; bounded by contrast_config::TCG_TB_SIZE_MIB).\n\
             tcg_cache_kib = {tcg}\n",
            vsock_own + fs_own
        ),
    )
    .with_context(|| format!("writing {}", overhead_file.display()))?;
    let measured = std::fs::read_to_string(&overhead_file)?;
    let overhead_snp = overhead::overhead_mib_from(&measured, "snp")?;
    let overhead_insecure = overhead::overhead_mib_from(&measured, "insecure")?;

    let (mut ours, mut runc, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (t, busy) = (Instant::now(), busy_cpu()?);
        cd.ctr_ok(&["run", "--runtime", RUNTIME, "--rm", IMAGE, &format!("c{i}"), "true"])?;
        ours.push(t.elapsed());
        cpu.push(busy_cpu()? - busy);
        let t = Instant::now();
        cd.ctr_ok(&["run", "--runtime", "io.containerd.runc.v2", "--rm", IMAGE, &format!("r{i}"), "true"])?;
        runc.push(t.elapsed());
    }
    // The same pod, CONCURRENT at once: against the serial cost spread over the cores. Each
    // round's serial pod runs just before it and joins the serial samples, so every round's
    // ratio is against a baseline from the same minutes.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rounds = Vec::new();
    for round in 0..CONCURRENT_ROUNDS {
        let (t, busy) = (Instant::now(), busy_cpu()?);
        cd.ctr_ok(&["run", "--runtime", RUNTIME, "--rm", IMAGE, &format!("s{round}"), "true"])?;
        let serial = t.elapsed();
        ours.push(serial);
        cpu.push(busy_cpu()? - busy);
        let started = Instant::now();
        let results: Vec<Result<String>> = std::thread::scope(|s| {
            let cd = &cd;
            let handles: Vec<_> = (0..CONCURRENT)
                .map(|i| {
                    let id = format!("p{round}-{i}");
                    s.spawn(move || cd.ctr_ok(&["run", "--runtime", RUNTIME, "--rm", IMAGE, &id, "true"]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))).collect()
        });
        let together = started.elapsed();
        let failed: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        ensure!(failed.is_empty(), "{} of {CONCURRENT} concurrent pods failed: {failed:?}", failed.len());
        let spread = serial * CONCURRENT as u32 / cores as u32;
        rounds.push((together.as_secs_f64() / spread.as_secs_f64(), together));
    }
    rounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (ratio, together) = rounds[CONCURRENT_ROUNDS / 2];
    let (ratio_min, ratio_max) = (rounds[0].0, rounds[CONCURRENT_ROUNDS - 1].0);
    let (st, q, a, e, o, r) = (
        median(&mut start_total),
        median(&mut qmp),
        median(&mut agent),
        median(&mut exec),
        median(&mut ours),
        median(&mut runc),
    );
    let shim_overhead = st.saturating_sub(a);
    let cpu_per_pod = median(&mut cpu);
    let cpu_floor = cpu_per_pod * CONCURRENT as u32 / cores as u32;
    let (gc, sr) = (median(&mut guest_create), median(&mut start));
    let (outside, in_shim) = (median(&mut outside), median(&mut in_shim));
    let (margin, tb) = (overhead::OVERHEAD_MARGIN_PERCENT, contrast_config::TCG_TB_SIZE_MIB);
    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_shim <shim> build/image docs/performance.md`; \
         the shim is the shipped build: static musl, non-PIE, `release-shim` profile, linked by lld with the daemon's hot functions first), \
         containerd 1.6 (Debian) driven with ctr, median of {RUNS} each ({} for our shim's serial `ctr run --rm`, \
         which also runs before each concurrency round), QEMU under TCG.\n\n\
         | measurement | value |\n|---|---|\n\
         | shim daemon RSS per idle pod (`VmRSS` of the shim, one pod running `sleep`; promise ≤ 3.9 MiB) | {} KiB (min {}, max {}; {:.2}× the promise) |\n\
         | … of which anonymous (`RssAnon`; the rest is the shim's own code pages) | {} KiB |\n\
         | pod start: QEMU spawned and QMP ready (`PodVm::launch`) | {q:.2?} |\n\
         | pod start: agent ready (sandbox created in the guest) | {a:.2?} |\n\
         | pod start: `ctr run -d … sleep` returns (container started) | {st:.2?} |\n\
         | … of which not VM boot (ctr + containerd + shim + container create/start; promise ≤ 3 % of agent ready) | {shim_overhead:.2?} ({:.1} %) |\n\
         | … … outside the shim's Create/Start (ctr, containerd, snapshot, shim process start) | {outside:.2?} |\n\
         | … … CreateContainer in the guest (libcontainer under TCG) | {gc:.2?} |\n\
         | … … StartContainer (guest) | {sr:.2?} |\n\
         | … … the shim's own work in Create (config, rootfs mounts, spec, FIFOs, events) | {in_shim:.2?} |\n\
         | `ctr run --rm {IMAGE} true`, our shim (pod VM boot included) | {o:.2?} |\n\
         | `ctr run --rm {IMAGE} true`, runc v2 (same containerd, same run) | {r:.2?} |\n\
         | `ctr task exec … true` into a running pod | {e:.2?} |\n\
         | {CONCURRENT} × `ctr run --rm … true` started at once, until the last returns (the median round of {CONCURRENT_ROUNDS}) | {together:.2?} |\n\
         | … against {CONCURRENT} × a serial `ctr run --rm` run just before it ÷ {cores} cores (median of {CONCURRENT_ROUNDS} rounds, min–max) | {ratio:.2}× ({ratio_min:.2}–{ratio_max:.2}×) |\n\
         | CPU time one serial `ctr run --rm … true` takes, all processes (`/proc/stat`) | {cpu_per_pod:.2?} ({:.2} cores busy while it runs) |\n\
         | … so {CONCURRENT} pods need at least {CONCURRENT} × that ÷ {cores} cores | {cpu_floor:.2?} (the concurrent run took {:.2}× that) |\n\n\
         Memory of an idle pod beyond its guest RAM (same runs, median; `Rss` from `/proc/<pid>/smaps`, \
         the guest RAM mapping — `memory-backend-memfd`, mapped by QEMU and both vhost-user helpers — \
         counted apart, and so is TCG's translated-code cache, which a KVM node has not). \
         These figures go to `packaging/pod-overhead.toml`, from which the installer computes the \
         RuntimeClass `overhead.podFixed.memory` beyond the guest RAM: now {overhead_snp} MiB on `snp`/`tdx` \
         (idle pod + {margin} %), {overhead_insecure} MiB on `insecure` (plus the {tb} MiB bound of the TCG cache).\n\n\
         | process | resident KiB |\n|---|---|\n\
         | QEMU, outside guest RAM and TCG's cache | {qemu_own} |\n\
         | QEMU, TCG's translated-code cache (bounded at {tb} MiB; none under KVM) | {tcg} |\n\
         | guest RAM resident (the guest's own use; bounded by the VM's memory) | {guest_ram} |\n\
         | vhost-device-vsock, outside guest RAM | {vsock_own} |\n\
         | virtiofsd, outside guest RAM | {fs_own} |\n\
         | shim + QEMU + helpers, outside guest RAM and TCG's cache | {per_pod_mib:.1} MiB |\n\
         | … against the RuntimeClass overhead on `snp`/`tdx` | {overhead_snp} MiB ({:.2}× of it used) |\n\
         | … with TCG's cache, against the overhead on `insecure` | {:.1} MiB of {overhead_insecure} MiB ({:.2}×) |\n",
        RUNS + CONCURRENT_ROUNDS,
        rss[RUNS / 2],
        rss[0],
        rss[RUNS - 1],
        rss[RUNS / 2] as f64 / (3.9 * 1024.0),
        anon[anon.len() / 2],
        shim_overhead.as_secs_f64() / a.as_secs_f64() * 100.0,
        cpu_per_pod.as_secs_f64() / o.as_secs_f64(),
        together.as_secs_f64() / cpu_floor.as_secs_f64(),
        per_pod_mib / overhead_snp as f64,
        per_pod_mib + tcg as f64 / 1024.0,
        (per_pod_mib + tcg as f64 / 1024.0) / overhead_insecure as f64,
    );
    println!("{section}");
    write_section(&doc, "bench-shim", &section)?;
    ensure!(cd.leftovers().is_empty(), "benchmark left something behind: {:?}", cd.leftovers());
    Ok(())
}
