//! Boot, reach the agent, move data, stop orderly, leave nothing.

use contrast_tests::{agent_version, health_check, pull_pattern, ttrpc_client};

use crate::{launch, Scratch};

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
