//! Agent container stats as containerd's cgroups v1 `Metrics` (what `ctr task metrics` and the
//! CRI stats decode for type `io.containerd.cgroups.v1.Metrics`).

use containerd_shim_protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use contrast_agent_protocol::agent::StatsContainerResponse;

/// containerd's type URL for cgroups v1 metrics (containerd `pkg/cgroups` typeurl registration).
const METRICS_V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

pub fn to_any(stats: &StatsContainerResponse) -> protobuf::Result<Any> {
    let cg = &stats.cgroup_stats;
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = cg.pids_stats.current;
    pids.limit = cg.pids_stats.limit;
    m.pids = Some(pids).into();
    let mut usage = CPUUsage::new();
    usage.total = cg.cpu_stats.cpu_usage.total_usage;
    usage.kernel = cg.cpu_stats.cpu_usage.usage_in_kernelmode;
    usage.user = cg.cpu_stats.cpu_usage.usage_in_usermode;
    let mut cpu = CPUStat::new();
    cpu.usage = Some(usage).into();
    m.cpu = Some(cpu).into();
    let mem = &cg.memory_stats;
    let mut entry = MemoryEntry::new();
    entry.usage = mem.usage.usage;
    entry.max = mem.usage.max_usage;
    entry.limit = mem.usage.limit;
    let mut memory = MemoryStat::new();
    memory.cache = mem.cache;
    memory.rss = mem.stats.get("anon").copied().unwrap_or(0);
    memory.usage = Some(entry).into();
    m.memory = Some(memory).into();
    let mut any = Any::new();
    any.type_url = METRICS_V1_TYPE.into();
    any.value = m.write_to_bytes()?;
    Ok(any)
}
