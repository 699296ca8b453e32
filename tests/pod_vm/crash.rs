//! QEMU dies under a running pod: the supervisor notices at once and cleans up.

use std::time::Duration;

use contrast_tests::{health_check, processes_mentioning, ttrpc_client};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{launch, Scratch};

/// The supervisor must report QEMU's death within this long (issue acceptance).
const DEATH_REPORT_DEADLINE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_qemu_is_reported_and_cleaned_up() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let vm = launch(&scratch, &config, "crash").await.expect("pod VM launches");
    let client = ttrpc_client(vm.dial_agent().await.expect("agent reachable"));
    assert_eq!(health_check(&client).await.expect("Health/Check"), "SERVING");
    let helpers = processes_mentioning(&scratch.pod_dir("crash"));
    assert_eq!(helpers.len(), 2, "QEMU and vhost-device-vsock run: {helpers:?}");

    let pid = i32::try_from(vm.qemu_pid()).expect("pid fits");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill QEMU");
    let exit = tokio::time::timeout(DEATH_REPORT_DEADLINE, vm.wait()).await.expect("death reported within 1 s");
    assert!(!exit.expected, "{exit}");
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert!(exit.to_string().contains("killed by signal 9"), "{exit}");
    assert!(exit.console_tail.contains("ready on vsock port"), "console tail quoted: {exit}");
    // Helpers are stopped by the time the death is reported.
    let left = processes_mentioning(&scratch.pod_dir("crash"));
    assert!(left.is_empty(), "helpers left after QEMU death: {left:?}");
    // Dialing a dead VM fails at once instead of waiting for the dial timeout.
    let err = tokio::time::timeout(DEATH_REPORT_DEADLINE, vm.dial_agent()).await.expect("fails fast").unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");

    let exit = vm.stop().await;
    assert_eq!(exit.signal, Some(9));
    scratch.assert_nothing_left("crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_vm_is_killed_and_removed() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let vm = launch(&scratch, &config, "dropped").await.expect("pod VM launches");
    let mut exited = vm.exited();
    drop(vm);
    tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| e.is_some()))
        .await
        .expect("killed after drop")
        .expect("supervisor reports");
    scratch.assert_nothing_left("dropped");
}
