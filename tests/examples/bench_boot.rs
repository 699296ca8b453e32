//! `make bench` (boot part): boot-to-agent-ready of a pod VM through vmm, against the same
//! image booted bare by QEMU to the agent's first line; for the shipped image (our kernel,
//! initrd opens the dm-verity root disk, then runs the agent from it), the same image built
//! with Debian's cloud kernel (its baseline: modules loaded by the initrd and the agent), and
//! the development layout without a disk (agent as the initrd's `/init`). Median of N runs
//! each, interleaved, written to docs/performance.md between the `bench-boot` markers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use contrast_tests::{health_check, image_dir, ttrpc_client, write_section, TestConfig};
use contrast_vmm::{LaunchRequest, PodVm};

const RUNS: usize = 7;
/// First line the agent prints as PID 1: marks "reached the agent".
const INIT_MARKER: &str = "contrast-agent: started";
const BARE_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

#[derive(Clone, Copy)]
enum Layout {
    Verity,
    InitrdOnly,
    /// `pod.igvm` (kernel, initrd and command line in one file, no firmware).
    Igvm,
}

/// One image booted one way.
struct Subject<'a> {
    label: &'static str,
    image: &'a Path,
    layout: Layout,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let debian = PathBuf::from(args.next().context("usage: bench_boot <image dir> <Debian-kernel image dir> [doc]")?);
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));
    let subjects = [
        Subject { label: "our kernel, verity disk (shipped)", image: &image, layout: Layout::Verity },
        Subject { label: "Debian cloud kernel, verity disk", image: &debian, layout: Layout::Verity },
        Subject { label: "our kernel, initrd only", image: &image, layout: Layout::InitrdOnly },
    ];
    // Per subject: [bare to agent, vmm launch returns, vmm agent ready]
    let mut m: Vec<[Vec<Duration>; 3]> = subjects.iter().map(|_| Default::default()).collect();
    for run in 0..RUNS {
        for (s, subject) in subjects.iter().enumerate() {
            let bare = bare_boot(subject.image, subject.layout).await?;
            let (q, a) = vmm_boot(subject.image, run, subject.layout, None).await?;
            eprintln!(
                "run {run} {}: bare-to-agent {bare:.2?}, vmm QMP ready {q:.2?}, agent ready {a:.2?}",
                subject.label
            );
            m[s][0].push(bare);
            m[s][1].push(q);
            m[s][2].push(a);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let mut rows = String::new();
    // What each measurement is, and the Debian kernel's median of it (the ratio's baseline).
    let what = [
        "bare QEMU boot to the agent's first line",
        "vmm `PodVm::launch` returns (helper + QEMU spawned, QMP ready, `running`)",
        "**vmm boot to agent ready** (`Health/Check` = SERVING over hybrid vsock)",
    ];
    let baseline: Vec<Duration> = (0..3).map(|k| median(&mut m[1][k]).0).collect();
    for (k, measurement) in what.iter().enumerate() {
        for (s, subject) in subjects.iter().enumerate() {
            let (mid, min, max) = median(&mut m[s][k]);
            let ratio = mid.as_secs_f64() / baseline[k].as_secs_f64();
            rows.push_str(&format!(
                "| {measurement} | {} | {mid:.2?} | {min:.2?} | {max:.2?} | {ratio:.2}× |\n",
                subject.label
            ));
        }
    }
    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_boot build/image build/image-debian \
         docs/performance.md`), {RUNS} runs each, interleaved, median (min–max). QEMU {qemu}, TCG, q35, 512 MiB, \
         1 vCPU, uncompressed vmlinux (PVH). *Our kernel*: `build/image`, the shipped image — our kernel (Debian's \
         linux-source, `packaging/kernel/pod-vm.config`, no modules), `initrd.img` (contrast-init) opens the \
         dm-verity root disk `root.img` read-only over virtio-blk, reads the agent through verity, switches root, \
         runs the agent. *Debian cloud kernel*: `build/image-debian`, the same image built with `KERNEL=debian` \
         (Debian's `linux-image-*-cloud-amd64`; the initrd and the agent load its modules) — the baseline of the \
         ratio column. *Initrd only*: `initrd-agent.img`, the root tree packed into the initrd with the agent as \
         `/init`, no disk.\n\n\
         | measurement | image | median | min | max | ratio to Debian's kernel |\n|---|---|---|---|---|---|\n{rows}",
        qemu = qemu_version(Path::new("qemu-system-x86_64")),
    );
    println!("{section}");
    write_section(&doc, "bench-boot", &section)?;
    igvm_vs_kernel(&image, &doc).await
}

/// Boot to agent ready from `pod.igvm` against the kernel + initrd path, both with the
/// project-built QEMU 10.2 (the one QEMU here that loads IGVM), interleaved.
async fn igvm_vs_kernel(image: &Path, doc: &Path) -> Result<()> {
    let qemu = contrast_tests::igvm_qemu()?;
    let (mut kernel, mut igvm) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let (_, k) = vmm_boot(image, run, Layout::Verity, Some(&qemu)).await?;
        let (_, i) = vmm_boot(image, run, Layout::Igvm, Some(&qemu)).await?;
        eprintln!("run {run}: agent ready, kernel+initrd {k:.2?}, pod.igvm {i:.2?}");
        kernel.push(k);
        igvm.push(i);
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (k, kmin, kmax) = stats(&mut kernel);
    let (i, imin, imax) = stats(&mut igvm);
    let section = format!(
        "Command: `make bench` (`bench_boot`, after the table above; `CONTRAST_IGVM_QEMU` = the QEMU \
         `scripts/build-qemu-igvm.sh` built), {RUNS} runs each, interleaved, median (min–max). Both with that QEMU \
         ({qemu}), TCG, q35, 512 MiB, 1 vCPU, the shipped image and root disk, vmm `PodVm::launch` to \
         `Health/Check` = SERVING. *kernel + initrd*: `-kernel vmlinux` (PVH) `-initrd initrd.img`, the \
         image's command line (the baseline). *pod.igvm*: `igvm-cfg` with `pod.igvm` (the same vmlinux, initrd \
         and command line in one file, entered at the kernel's 64-bit entry by the file's boot stub; no firmware, \
         no ACPI).\n\n\
         | boot format | median | min | max | ratio to kernel + initrd |\n|---|---|---|---|---|\n\
         | kernel + initrd (baseline) | {k:.2?} | {kmin:.2?} | {kmax:.2?} | 1.00× |\n\
         | pod.igvm | {i:.2?} | {imin:.2?} | {imax:.2?} | {ratio:.2}× |\n",
        qemu = qemu_version(&qemu),
        ratio = i.as_secs_f64() / k.as_secs_f64(),
    );
    println!("{section}");
    write_section(doc, "bench-igvm", &section)?;
    Ok(())
}

async fn bare_boot(image: &Path, layout: Layout) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let console = dir.path().join("console.log");
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-M", "q35", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-kernel"])
        .arg(image.join("vmlinux"))
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    match layout {
        Layout::Verity => {
            let cmdline = std::fs::read_to_string(image.join("cmdline"))?;
            cmd.arg("-initrd").arg(image.join("initrd.img"));
            cmd.arg("-append").arg(format!("{} quiet", cmdline.trim()));
            cmd.arg("-drive")
                .arg(format!("if=none,id=root,format=raw,readonly=on,file={}", image.join("root.img").display()));
            cmd.args(["-device", "virtio-blk-pci,drive=root"]);
        }
        Layout::InitrdOnly => {
            cmd.arg("-initrd").arg(image.join("initrd-agent.img"));
            cmd.args(["-append", "console=ttyS0 reboot=k panic=-1 oops=panic no_timer_check quiet"]);
        }
        Layout::Igvm => bail!("the bare boot measures the kernel paths only"),
    }
    let start = Instant::now();
    let mut child = cmd.kill_on_drop(true).spawn().context("starting qemu-system-x86_64")?;
    loop {
        if std::fs::read_to_string(&console).is_ok_and(|c| c.contains(INIT_MARKER)) {
            let took = start.elapsed();
            child.kill().await?;
            return Ok(took);
        }
        if start.elapsed() > BARE_BOOT_TIMEOUT {
            bail!("bare boot did not reach the agent within {BARE_BOOT_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn vmm_boot(image: &Path, run: usize, layout: Layout, qemu: Option<&Path>) -> Result<(Duration, Duration)> {
    let scratch = tempfile::Builder::new().prefix("cb").tempdir()?;
    let state = scratch.path().join("run");
    let mut config = match layout {
        Layout::Verity => TestConfig::new(image, &state),
        Layout::InitrdOnly => TestConfig::initrd_only(image, &state),
        Layout::Igvm => TestConfig::igvm(image, &state)?,
    };
    if let Some(qemu) = qemu {
        config.qemu = qemu.to_owned();
    }
    let config = config.write_and_load(&scratch.path().join("configuration.toml"))?;
    let overrides = config.pod_overrides(&BTreeMap::new())?;
    let id = format!("bench{run}");
    let start = Instant::now();
    let vm = PodVm::launch(LaunchRequest {
        id: &id,
        config: &config,
        overrides: &overrides,
        state_dir: scratch.path().join("run/default").join(&id),
        init_data: None,
        shared_dir: None,
        netns: None,
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

fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("QEMU emulator version ").to_owned()))
        .unwrap_or_else(|| "unknown".into())
}
