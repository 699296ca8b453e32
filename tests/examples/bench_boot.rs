//! `make bench` (boot part): boot-to-agent-ready of a pod VM through vmm, against the same
//! kernel + initrd booted bare by QEMU to the first line of its init. Median of N runs each,
//! written to docs/performance.md between the `bench-boot` markers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use contrast_tests::{health_check, image_dir, ttrpc_client, write_section, TestConfig};
use contrast_vmm::{LaunchRequest, PodVm};

const RUNS: usize = 7;
/// First line the agent prints as PID 1: marks "reached init".
const INIT_MARKER: &str = "contrast-agent: started";
const BARE_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));

    let mut bare = Vec::new();
    let mut qmp_ready = Vec::new();
    let mut agent_ready = Vec::new();
    for run in 0..RUNS {
        bare.push(bare_boot(&image).await?);
        let (q, a) = vmm_boot(&image, run).await?;
        qmp_ready.push(q);
        agent_ready.push(a);
        eprintln!("run {run}: bare-to-init {:.2?}, vmm QMP ready {q:.2?}, agent ready {a:.2?}", bare[run]);
    }
    let (b, q, a) = (median(&mut bare), median(&mut qmp_ready), median(&mut agent_ready));
    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_boot build/image docs/performance.md`), \
         {RUNS} runs each, median (min–max). QEMU {qemu}, TCG, q35, 512 MiB, 1 vCPU, uncompressed vmlinux (PVH).\n\n\
         | measurement | median | min | max |\n|---|---|---|---|\n\
         | bare QEMU boot of the same kernel+initrd to init's first line | {b:.2?} | {bmin:.2?} | {bmax:.2?} |\n\
         | vmm `PodVm::launch` returns (helper + QEMU spawned, QMP ready, `running`) | {q:.2?} | {qmin:.2?} | {qmax:.2?} |\n\
         | vmm boot to agent ready (`Health/Check` = SERVING over hybrid vsock) | {a:.2?} | {amin:.2?} | {amax:.2?} |\n",
        qemu = qemu_version(),
        bmin = bare[0],
        bmax = bare[RUNS - 1],
        qmin = qmp_ready[0],
        qmax = qmp_ready[RUNS - 1],
        amin = agent_ready[0],
        amax = agent_ready[RUNS - 1],
    );
    println!("{section}");
    write_section(&doc, "bench-boot", &section)?;
    Ok(())
}

async fn bare_boot(image: &Path) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let console = dir.path().join("console.log");
    let start = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-M", "q35", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-kernel"])
        .arg(image.join("vmlinux"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", "console=ttyS0 reboot=k panic=-1 quiet", "-serial"])
        .arg(format!("file:{}", console.display()))
        .kill_on_drop(true)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    loop {
        if std::fs::read_to_string(&console).is_ok_and(|c| c.contains(INIT_MARKER)) {
            let took = start.elapsed();
            child.kill().await?;
            return Ok(took);
        }
        if start.elapsed() > BARE_BOOT_TIMEOUT {
            bail!("bare boot did not reach init within {BARE_BOOT_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn vmm_boot(image: &Path, run: usize) -> Result<(Duration, Duration)> {
    let scratch = tempfile::Builder::new().prefix("cb").tempdir()?;
    let config = TestConfig::new(image, &scratch.path().join("run"))
        .write_and_load(&scratch.path().join("configuration.toml"))?;
    let overrides = config.pod_overrides(&BTreeMap::new())?;
    let id = format!("bench{run}");
    let start = Instant::now();
    let vm = PodVm::launch(LaunchRequest {
        id: &id,
        config: &config,
        overrides: &overrides,
        state_dir: scratch.path().join("run/default").join(&id),
        launch_digest: None,
        shared_dir: None,
    })
    .await?;
    let qmp = start.elapsed();
    let client = ttrpc_client(vm.dial_agent().await?);
    let status = health_check(&client).await?;
    let agent = start.elapsed();
    anyhow::ensure!(status == "SERVING", "agent answered {status}");
    drop(client);
    vm.stop().await;
    Ok((qmp, agent))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("QEMU emulator version ").to_owned()))
        .unwrap_or_else(|| "unknown".into())
}
