//! `make bench` (agent part): the guest agent's memory idle and with 5 containers, and the
//! latency of create+start+wait+remove of `true` inside a running pod VM, driven from the
//! host over the agent API. Written to docs/performance.md between the `bench-agent` markers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use contrast_agent_protocol::{diagnostics, diagnostics_ttrpc};
use contrast_tests::pod::TestPod;
use contrast_tests::{image_dir, write_section};

const RUNS: usize = 25;
const BUSY_CONTAINERS: usize = 5;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));
    let pod = TestPod::start(&image, "bench-agent").await?;
    let diag = diagnostics_ttrpc::DiagnosticsClient::new(contrast_tests::ttrpc_client(pod.vm.dial_agent().await?));
    let memory = || async {
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64);
        diag.agent_memory(ctx, &diagnostics::AgentMemoryRequest::new()).await.context("AgentMemory")
    };
    // Warm up once so the first-run costs (page cache of the shared rootfs) are not counted.
    pod.run("warmup", &["true"], false).await?;
    pod.wait("warmup", "").await?;
    pod.remove("warmup").await?;
    let idle = memory().await?;

    let mut lat = Vec::new();
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for i in 0..RUNS {
        let id = format!("t{i}");
        let spec = contrast_tests::pod::container_spec(&pod.rootfs, &["true"], false);
        let t0 = Instant::now();
        pod.agent.create_container(&contrast_tests::pod::create_request(&id, spec)).await?;
        let t1 = Instant::now();
        let mut start = contrast_agent_protocol::agent::StartContainerRequest::new();
        start.container_id = id.clone();
        pod.agent.start_container(&start).await?;
        let t2 = Instant::now();
        let status = pod.wait(&id, "").await?;
        let t3 = Instant::now();
        pod.remove(&id).await?;
        let t4 = Instant::now();
        lat.push(t4 - t0);
        for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3].into_iter().enumerate() {
            phases[k].push(d);
        }
        anyhow::ensure!(status == 0, "true exited {status}");
    }
    lat.sort();
    for p in &mut phases {
        p.sort();
    }

    for i in 0..BUSY_CONTAINERS {
        pod.run(&format!("busy{i}"), &["sleep", "1000"], false).await?;
    }
    let busy = memory().await?;
    pod.stop().await;

    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_agent build/image docs/performance.md`). \
         Pod VM under TCG, 512 MiB; the host drives the agent over hybrid vsock.\n\n\
         | measurement | value |\n|---|---|\n\
         | agent RSS, idle sandbox (promise: ≤ 4096 KiB) | {} KiB ({:.2}× the promise; anonymous {} KiB) |\n\
         | agent RSS, {BUSY_CONTAINERS} running containers | {} KiB (anonymous {} KiB) |\n\
         | guest memory in use, idle / {BUSY_CONTAINERS} containers | {} / {} KiB |\n\
         | create+start+wait+remove of `true`, median of {RUNS} | {:.1?} (min {:.1?}, max {:.1?}) |\n\
         | … of which CreateContainer / StartContainer / WaitProcess / RemoveContainer (medians) | {:.1?} / {:.1?} / {:.1?} / {:.1?} |\n",
        idle.rss_kib,
        idle.rss_kib as f64 / 4096.0,
        idle.rss_anon_kib,
        busy.rss_kib,
        busy.rss_anon_kib,
        idle.guest_used_kib,
        busy.guest_used_kib,
        lat[RUNS / 2],
        lat[0],
        lat[RUNS - 1],
        phases[0][RUNS / 2],
        phases[1][RUNS / 2],
        phases[2][RUNS / 2],
        phases[3][RUNS / 2],
    );
    println!("{section}");
    write_section(&doc, "bench-agent", &section)
}
