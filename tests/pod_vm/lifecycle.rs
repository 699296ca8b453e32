//! Boot, reach the agent, move data, stop orderly, leave nothing.

use contrast_tests::{agent_version, health_check, pull_pattern, ttrpc_client};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contrast_vmm::{LaunchRequest, PodVm};

use crate::{launch, Scratch};

/// How long the guest's kernel may take to refine its TSC rate against the HPET (it starts a
/// second after the TSC clocksource registers; a busy host delays it).
const TSC_REFINE_DEADLINE: Duration = Duration::from_secs(60);

fn host_kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Guest→host bytes moved through one vsock connection; must exceed the 64 KiB single-write
/// limit many times over (vhost-device-vsock stall bug, LAB.md).
const BULK_BYTES: usize = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_bulk_transfer_and_orderly_stop() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let vm = launch(&scratch, &config, "lifecycle").await.expect("pod VM launches");
    assert_eq!(vm.accel(), "tcg");
    assert!(vm.state_dir().join("console.log").exists(), "serial console is captured");
    // Under TCG every QEMU thread (vCPU, main loop, I/O) runs as SCHED_BATCH.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vm.qemu_pid())).expect("QEMU's threads");
    let policies: Vec<String> = tasks
        .flatten()
        .map(|t| {
            let sched = std::fs::read_to_string(t.path().join("sched")).unwrap_or_default();
            let policy = sched.lines().find(|l| l.starts_with("policy")).unwrap_or_default();
            policy.rsplit(' ').next().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(policies.len() > 1 && policies.iter().all(|p| p == "3"), "SCHED_BATCH is 3: {policies:?}");
    // ... with a 100 ms slice where the host's kernel takes one (Linux >= 6.12 shows it).
    let sched = std::fs::read_to_string(format!("/proc/{}/sched", vm.qemu_pid())).expect("QEMU's sched");
    if let Some(slice) = sched.lines().find(|l| l.starts_with("se.slice")) {
        if host_kernel_at_least(6, 12) {
            assert!(slice.ends_with(" 100000000"), "{slice}");
        }
    }

    let client = ttrpc_client(vm.dial_agent().await.expect("agent reachable over hybrid vsock"));
    assert_eq!(health_check(&client).await.expect("Health/Check"), "SERVING");
    let (api, agent) = agent_version(&client).await.expect("Health/Version");
    assert_eq!(api, "0.0.1");
    assert!(agent.starts_with("contrast-agent "), "{agent}");

    let moved = pull_pattern(&client, BULK_BYTES).await.expect("bulk transfer guest→host");
    assert_eq!(moved, BULK_BYTES);
    // The connection still works after the bulk transfer.
    assert_eq!(health_check(&client).await.expect("Health/Check after transfer"), "SERVING");
    drop(client);

    let exit = vm.stop().await;
    assert!(exit.expected, "{exit}");
    // The guest honoured the ACPI power button: QEMU exited by itself with status 0.
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(exit.console_tail.contains("power button pressed"), "{exit}");
    scratch.assert_nothing_left("lifecycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_and_qmp_events() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let vm = launch(&scratch, &config, "events").await.expect("pod VM launches");
    let mut events = vm.qmp().subscribe();
    assert_eq!(vm.qmp().query_status().await.expect("query-status"), "running");

    // Three dials race the boot: each waits for the agent's announcement (one wait for all
    // three), so no connection reaches vhost-device-vsock before the guest started its device
    // or is closed while the guest may still accept it (either would end its worker and every
    // later dial of this pod would time out).
    let (first, second, third) = tokio::join!(vm.dial_agent(), vm.dial_agent(), vm.dial_agent());
    let clients = [first, second, third].map(|c| ttrpc_client(c.expect("connection during boot")));
    for client in &clients {
        assert_eq!(health_check(client).await.expect("check"), "SERVING");
    }
    let fourth = ttrpc_client(vm.dial_agent().await.expect("connection after boot"));
    assert_eq!(health_check(&fourth).await.expect("check 4"), "SERVING");
    drop((clients, fourth));

    let exit = vm.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.name);
    }
    assert!(names.contains(&"POWERDOWN".to_owned()), "{names:?}");
    assert!(names.contains(&"SHUTDOWN".to_owned()), "{names:?}");
    scratch.assert_nothing_left("events");
}

/// `accel = "auto"` takes KVM only where the readiness check says it can run a guest: on a
/// host whose /dev/kvm belongs to PVM (these machines) that is TCG, and the pod boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accelerator_follows_the_readiness_check() {
    let scratch = Scratch::new();
    let mut config = scratch.load(&scratch.config());
    config.hypervisor.qemu.accel = contrast_config::Accel::Auto;
    let (kvm, why) = contrast_node_check::kvm_usable(std::path::Path::new("/"));
    let vm = launch(&scratch, &config, "auto").await.expect("pod VM launches");
    assert_eq!(vm.accel(), if kvm { "kvm" } else { "tcg" }, "{why}");
    let client = ttrpc_client(vm.dial_agent().await.expect("agent reachable"));
    assert_eq!(health_check(&client).await.expect("Health/Check"), "SERVING");
    drop(client);
    vm.stop().await;
    scratch.assert_nothing_left("auto");
}

/// A guest whose agent never announces itself (QEMU stopped with SIGSTOP right after launch):
/// the dial fails after `dial_timeout`, and the error names the vCPU threads' state (here T,
/// stopped), so a hung guest can be told from a spinning one; the VM still stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unannounced_agent_fails_the_dial_naming_the_vcpu_threads() {
    use nix::sys::signal::{kill, Signal};
    let scratch = Scratch::new();
    let mut config = scratch.load(&scratch.config());
    config.agent.kata.dial_timeout = 3;
    let vm = launch(&scratch, &config, "silent").await.expect("pod VM launches");
    let qemu = nix::unistd::Pid::from_raw(vm.qemu_pid() as i32);
    kill(qemu, Signal::SIGSTOP).expect("SIGSTOP QEMU");
    let err = vm.dial_agent().await.expect_err("nothing announces").to_string();
    kill(qemu, Signal::SIGCONT).expect("SIGCONT QEMU");
    eprintln!("the dial: {err}");
    assert!(err.contains("did not announce"), "{err}");
    assert!(err.contains("QEMU's vCPU threads: CPU 0/TCG T "), "{err}");
    vm.stop().await;
    scratch.assert_nothing_left("silent");
}

/// A TCG guest is told the host's TSC rate (`tsc_early_khz=`) instead of calibrating it
/// against the PIT, which a vCPU thread descheduled at the wrong moment misleads by 3-94x
/// (`contrast_vmm::tsc`): the kernel runs no PIT calibration, and its own refinement against
/// the HPET a second later agrees with the rate the shim measured to within 1 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcg_guest_takes_the_host_tsc_rate_and_its_hpet_agrees() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let mut overrides = config.pod_overrides(&BTreeMap::new()).expect("no annotations");
    // The kernel's TSC lines are KERN_INFO: on the console only with this log level.
    overrides.extra_kernel_params = "loglevel=7".into();
    let vm = PodVm::launch(LaunchRequest {
        id: "tsc",
        config: &config,
        overrides: &overrides,
        state_dir: scratch.pod_dir("tsc"),
        init_data: None,
        shared_dir: None,
        netns: None,
    })
    .await
    .expect("pod VM launches");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.qemu_pid())).expect("QEMU's command line");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let khz: u64 = cmdline
        .split(' ')
        .find_map(|a| a.strip_prefix("tsc_early_khz="))
        .unwrap_or_else(|| panic!("no tsc_early_khz on the guest's command line: {cmdline}"))
        .parse()
        .expect("tsc_early_khz is a number");

    let console = vm.state_dir().join("console.log");
    let end = Instant::now() + TSC_REFINE_DEADLINE;
    let (log, refined) = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let refined = log.lines().find_map(|l| {
            let mhz = l.split("Refined TSC clocksource calibration: ").nth(1)?.strip_suffix(" MHz")?;
            let (whole, frac) = mhz.split_once('.')?;
            Some(whole.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?)
        });
        if refined.is_some() || Instant::now() > end {
            break (log, refined);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tsc_lines: Vec<&str> = log.lines().filter(|l| l.contains("tsc:") || l.contains("TSC")).collect();
    assert!(!log.contains("calibrate against PIT") && !log.contains("PIT calibration"), "{tsc_lines:#?}");
    let refined =
        refined.unwrap_or_else(|| panic!("no refined TSC rate within {TSC_REFINE_DEADLINE:?}: {tsc_lines:#?}"));
    assert!(refined.abs_diff(khz) * 100 <= khz, "the HPET says {refined} kHz, the shim {khz} kHz");
    eprintln!("TSC: shim {khz} kHz, guest's HPET refinement {refined} kHz");

    let exit = vm.stop().await;
    assert!(exit.expected, "{exit}");
    scratch.assert_nothing_left("tsc");
}
