//! cgroup v2 in the guest: setup at boot, and the per-container files behind stats,
//! pause/resume, updates and OOM events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use contrast_agent_protocol::{agent, oci};

/// Where cgroup2 is mounted in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers containers may use (kernel `Documentation/admin-guide/cgroup-v2.rst`).
const CONTROLLERS: &str = "+cpu +memory +pids";
/// Pause between checks that a freeze took effect.
const FREEZE_POLL: Duration = Duration::from_millis(5);
/// How long a freeze may take before we report failure.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Mounts cgroup2 and enables the controllers for the container tree.
pub fn setup() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("cgroup2"),
        CGROUP_ROOT,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting cgroup2")?;
    std::fs::write(Path::new(CGROUP_ROOT).join("cgroup.subtree_control"), CONTROLLERS)
        .context("enabling cgroup controllers at the root")?;
    let parent = Path::new(CGROUP_ROOT).join(crate::spec::CGROUP_PARENT.trim_start_matches('/'));
    std::fs::create_dir_all(&parent).context("creating the container cgroup parent")?;
    std::fs::write(parent.join("cgroup.subtree_control"), CONTROLLERS)
        .context("enabling cgroup controllers for containers")?;
    Ok(())
}

pub fn dir_of(container_id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(crate::spec::CGROUP_PARENT.trim_start_matches('/')).join(container_id)
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn read_keyed(dir: &Path, file: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

pub fn stats(container_id: &str) -> agent::StatsContainerResponse {
    let dir = dir_of(container_id);
    let mut memory = agent::MemoryStats::new();
    let mut usage = agent::MemoryData::new();
    usage.usage = read_u64(&dir, "memory.current");
    usage.max_usage = read_u64(&dir, "memory.peak");
    usage.limit = read_u64(&dir, "memory.max");
    memory.usage = Some(usage).into();
    for (k, v) in read_keyed(&dir, "memory.stat") {
        if k == "file" {
            memory.cache = v;
        }
        memory.stats.insert(k, v);
    }
    let mut cpu_usage = agent::CpuUsage::new();
    let mut throttling = agent::ThrottlingData::new();
    for (k, v) in read_keyed(&dir, "cpu.stat") {
        // cpu.stat reports microseconds; the kata API (like cgroup v1) nanoseconds.
        match k.as_str() {
            "usage_usec" => cpu_usage.total_usage = v * 1000,
            "user_usec" => cpu_usage.usage_in_usermode = v * 1000,
            "system_usec" => cpu_usage.usage_in_kernelmode = v * 1000,
            "nr_periods" => throttling.periods = v,
            "nr_throttled" => throttling.throttled_periods = v,
            "throttled_usec" => throttling.throttled_time = v * 1000,
            _ => {}
        }
    }
    let mut cpu = agent::CpuStats::new();
    cpu.cpu_usage = Some(cpu_usage).into();
    cpu.throttling_data = Some(throttling).into();
    let mut pids = agent::PidsStats::new();
    pids.current = read_u64(&dir, "pids.current");
    pids.limit = read_u64(&dir, "pids.max");
    let mut cg = agent::CgroupStats::new();
    cg.memory_stats = Some(memory).into();
    cg.cpu_stats = Some(cpu).into();
    cg.pids_stats = Some(pids).into();
    let mut resp = agent::StatsContainerResponse::new();
    resp.cgroup_stats = Some(cg).into();
    resp
}

/// Freezes (`true`) or thaws the container's cgroup and waits until the kernel reports it.
pub async fn set_frozen(container_id: &str, frozen: bool) -> Result<()> {
    let dir = dir_of(container_id);
    std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }).context("writing cgroup.freeze")?;
    let want = if frozen { 1 } else { 0 };
    let deadline = tokio::time::Instant::now() + FREEZE_TIMEOUT;
    loop {
        if read_keyed(&dir, "cgroup.events").iter().any(|(k, v)| k == "frozen" && *v == want) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("cgroup did not reach frozen={want} within {FREEZE_TIMEOUT:?}");
        }
        tokio::time::sleep(FREEZE_POLL).await;
    }
}

/// Applies new limits (memory, CPU, pids) to a running container.
pub fn update(container_id: &str, r: &oci::LinuxResources) -> Result<()> {
    let dir = dir_of(container_id);
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), &value).with_context(|| format!("writing {value} to {file}"))
    };
    if let Some(m) = r.Memory.as_ref() {
        if m.Limit > 0 {
            write("memory.max", m.Limit.to_string())?;
        } else if m.Limit < 0 {
            write("memory.max", "max".into())?;
        }
    }
    if let Some(c) = r.CPU.as_ref() {
        if c.Quota != 0 || c.Period != 0 {
            let quota = if c.Quota > 0 { c.Quota.to_string() } else { "max".into() };
            let period = if c.Period > 0 { c.Period } else { 100_000 };
            write("cpu.max", format!("{quota} {period}"))?;
        }
        if c.Shares > 0 {
            // cgroup v1 shares [2, 262144] → v2 weight [1, 10000] (runc's conversion formula).
            let weight = 1 + ((c.Shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write("cpu.weight", weight.to_string())?;
        }
    }
    if let Some(p) = r.Pids.as_ref() {
        if p.Limit > 0 {
            write("pids.max", p.Limit.to_string())?;
        } else if p.Limit < 0 {
            write("pids.max", "max".into())?;
        }
    }
    Ok(())
}

/// The container's `oom_kill` counter (memory.events).
pub fn oom_kills(container_id: &str) -> u64 {
    read_keyed(&dir_of(container_id), "memory.events").into_iter().find(|(k, _)| k == "oom_kill").map_or(0, |(_, v)| v)
}

/// Waits until no process is left in a container's cgroup (or it is gone); false if some
/// still are at `deadline`.
pub async fn wait_empty(container_id: &str, deadline: tokio::time::Instant) -> bool {
    let dir = dir_of(container_id);
    loop {
        if !read_keyed(&dir, "cgroup.events").iter().any(|(k, v)| k == "populated" && *v != 0) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(FREEZE_POLL).await;
    }
}

/// Whether the container's cgroup is asked to be frozen (`cgroup.freeze`): a paused
/// container, or one being signalled.
pub fn freeze_requested(container_id: &str) -> bool {
    std::fs::read_to_string(dir_of(container_id).join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1")
}

/// All pids in the container's cgroup.
pub fn pids(container_id: &str) -> Vec<i32> {
    std::fs::read_to_string(dir_of(container_id).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
