//! Faults through the real stack — containerd 2.1, the shim, QEMU (TCG), vhost-device-vsock,
//! virtiofsd and the agent in the pod VM: each ends in a clear error or a clean exit within
//! a bound, and nothing stays behind (processes, mounts, state dirs, shim sockets).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use contrast_cri_client::{container_config, CriClient};
use contrast_tests::containerd::{Containerd, Release, CRI_HANDLER, IMAGE, NAMESPACE, RUNTIME};
use contrast_tests::image_dir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
/// The agent request timeout these tests configure: what a hung guest may cost a call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What a call may take beyond the bound the shim promises (ctr's own start, a busy host).
const SLACK: Duration = Duration::from_secs(15);
/// How long the pod's processes, mounts and state may take to go after its removal.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a pod VM may take to boot to a running container (TCG on two cores).
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

fn containerd() -> Containerd {
    let release = Release::named("2.1").expect("containerd 2.1 (make containerd-releases)");
    Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("pod-VM image")).expect("containerd starts")
}

/// Makes the pod runtime config (the one next to the shim, used by `ctr` and CRI pods alike)
/// that of these tests: a short agent request timeout, the debug QMP monitor, and the state
/// dir `state_dir` when given.
fn fault_config(cd: &Containerd, state_dir: Option<&Path>) {
    let path = cd.dir.path().join("bin/configuration.toml");
    let base = std::fs::read_to_string(&path).expect("test config");
    let mut text = base
        .replace("[agent.kata]\n", &format!("[agent.kata]\nrequest_timeout = {}\n", REQUEST_TIMEOUT.as_secs()))
        .replace("[hypervisor.qemu]\n", "[hypervisor.qemu]\ndebug_qmp = true\n");
    if let Some(dir) = state_dir {
        let line = text.lines().find(|l| l.starts_with("state_dir =")).expect("state_dir line").to_owned();
        text = text.replace(&line, &format!("state_dir = \"{}\"", dir.display()));
    }
    std::fs::write(&path, text).expect("write config");
}

fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn processes_named(cd: &Containerd, name: &str) -> Vec<i32> {
    contrast_tests::processes_mentioning(&cd.pod_root())
        .into_iter()
        .filter(|(_, cmd)| cmd.split_whitespace().next().is_some_and(|p| p.ends_with(name)))
        .map(|(p, _)| p as i32)
        .collect()
}

fn one_process(cd: &Containerd, name: &str) -> Pid {
    let found = wait_for(BOOT_DEADLINE, || processes_named(cd, name).first().copied());
    Pid::from_raw(found.unwrap_or_else(|| panic!("no {name} process of the pod\n{}", cd.log())))
}

fn wait_status(cd: &Containerd, id: &str, want: &str, deadline: Duration) {
    if wait_for(deadline, || (cd.task_status(id) == want).then_some(())).is_none() {
        panic!("task {id} is {:?}, not {want}, after {deadline:?}\n{}", cd.task_status(id), cd.log());
    }
}

fn spawn_ctr(cd: &Containerd, args: &[&str]) -> Child {
    cd.ctr_command(NAMESPACE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr")
}

/// Waits for `child` at most `deadline`; kills it (and fails the test) when it hangs.
fn finish(mut child: Child, what: &str, deadline: Duration) -> (Output, Duration) {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{what} did not return within {deadline:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("output"), started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything gone: the test's leftovers (processes, shims, mounts, state dirs) and the
/// shim sockets of this containerd's namespace.
fn assert_clean(cd: &Containerd, what: &str) {
    let end = Instant::now() + CLEANUP_DEADLINE;
    while !cd.leftovers().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = cd.leftovers();
    assert!(left.is_empty(), "{what}: left behind: {left:#?}\ncontainerd log:\n{}", cd.log());
}

fn remove(cd: &Containerd, id: &str) {
    let _ = cd.ctr(&["task", "delete", "-f", id]);
    let _ = cd.ctr(&["container", "rm", id]);
}

/// A command on the pod's debug QMP monitor (`debug_qmp = true`).
fn qmp(cd: &Containerd, command: &str) -> String {
    let socket = find_file(&cd.pod_root(), "qmp-debug.sock").expect("the pod's debug QMP socket");
    let stream = UnixStream::connect(&socket).expect("connect debug QMP");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("QMP greeting");
    let mut w = stream;
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{c}\"}}").expect("send");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("QMP answer");
            if !line.contains("\"event\"") {
                break;
            }
        }
    }
    line
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn qemu_killed_before_the_agent_is_ready() {
    let cd = containerd();
    fault_config(&cd, None);
    let run = spawn_ctr(&cd, &["run", "--runtime", RUNTIME, "--rm", IMAGE, "early", "true"]);
    // The guest kernel is booting (its console has output); the agent is seconds away.
    let qemu = one_process(&cd, "qemu-system-x86_64");
    let booting = wait_for(BOOT_DEADLINE, || {
        let console = find_file(&cd.pod_root(), "console.log")?;
        (std::fs::metadata(console).ok()?.len() > 0).then_some(())
    });
    assert!(booting.is_some(), "the guest never wrote to its console\n{}", cd.log());
    kill(qemu, Signal::SIGKILL).expect("kill QEMU");
    let (out, _) = finish(run, "ctr run", BOOT_DEADLINE);
    assert!(!out.status.success());
    let err = stderr(&out);
    eprintln!("ctr run: {err}");
    assert!(err.contains("agent unreachable") && err.contains("QEMU killed by signal 9"), "{err}");
    remove(&cd, "early");
    assert_clean(&cd, "QEMU killed at boot");
}

/// CRI `StartContainer` is in flight (containerd has the shim create and start the task; the
/// agent has the request but QEMU is stopped) when QEMU is killed: it fails at once, saying
/// that the VM is gone and how it ended, not after the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_while_start_waits_for_the_agent() {
    let cd = containerd();
    fault_config(&cd, None);
    let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
    let pod = cri.run_pod("start", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
    let id =
        cri.create_container(&pod, container_config("c", IMAGE, &["sleep", "1000"])).await.expect("CreateContainer");
    let qemu = one_process(&cd, "qemu-system-x86_64");
    kill(qemu, Signal::SIGSTOP).expect("stop QEMU");
    let mut starter = cri.clone();
    let start = tokio::spawn(async move {
        let at = Instant::now();
        (starter.start_container(&id).await, at)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill(qemu, Signal::SIGKILL).expect("kill QEMU");
    let killed_at = Instant::now();
    let (result, _) = start.await.expect("start task");
    let took = killed_at.elapsed();
    let err = format!("{:#}", result.expect_err("StartContainer on a killed VM"));
    eprintln!("StartContainer returned {took:?} after QEMU was killed: {err}");
    assert!(took < REQUEST_TIMEOUT, "StartContainer waited {took:?}: {err}");
    assert!(err.contains("the pod VM is gone: QEMU killed by signal 9"), "{err}");
    cri.remove_pod(&pod.id).await.expect("remove the pod");
    assert_clean(&cd, "QEMU killed during Start");
}

#[test]
fn qemu_killed_during_an_exec_that_streams_output() {
    let cd = containerd();
    fault_config(&cd, None);
    cd.ctr_ok(&["run", "--runtime", RUNTIME, "-d", IMAGE, "t", "sleep", "1000"]).expect("detached run");
    let mut exec =
        spawn_ctr(&cd, &["task", "exec", "--exec-id", "s", "t", "sh", "-c", "while :; do echo tick; sleep 0.2; done"]);
    let mut lines = BufReader::new(exec.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("tick"), "the exec streams");
    kill(one_process(&cd, "qemu-system-x86_64"), Signal::SIGKILL).expect("kill QEMU");
    let (out, took) = finish(exec, "ctr task exec", SLACK);
    eprintln!("exec ended {took:?} after the kill: {:?} {}", out.status, stderr(&out));
    assert_eq!(out.status.code(), Some(255), "the exec ends with the VM's status 255");
    wait_status(&cd, "t", "STOPPED", SLACK);
    remove(&cd, "t");
    assert_clean(&cd, "QEMU killed during exec");
}

/// A helper the pod needs dies: the pod ends (its tasks exit 255, the VM is stopped) and its
/// removal leaves nothing.
fn helper_killed(helper: &str) {
    let cd = containerd();
    fault_config(&cd, None);
    cd.ctr_ok(&["run", "--runtime", RUNTIME, "-d", IMAGE, "t", "sleep", "1000"]).expect("detached run");
    kill(one_process(&cd, helper), Signal::SIGKILL).expect("kill the helper");
    wait_status(&cd, "t", "STOPPED", SLACK);
    let qemu_gone = wait_for(SLACK, || processes_named(&cd, "qemu-system-x86_64").is_empty().then_some(()));
    assert!(qemu_gone.is_some(), "QEMU outlived {helper}");
    let out = cd.ctr(&["task", "delete", "t"]);
    assert!(stderr(&out).contains("exit code 255") || out.status.success(), "{}", stderr(&out));
    let _ = cd.ctr(&["container", "rm", "t"]);
    assert_clean(&cd, helper);
}

#[test]
fn vhost_device_vsock_killed() {
    helper_killed("vhost-device-vsock");
}

#[test]
fn virtiofsd_killed() {
    helper_killed("virtiofsd");
}

/// The guest is frozen (QMP `stop`): the agent never answers. An exec fails after the request
/// timeout with DeadlineExceeded; `kill -s KILL` cannot be delivered either, so the shim ends
/// the VM: the task stops and its removal leaves nothing.
#[test]
fn frozen_guest_fails_calls_in_time_and_kill_still_ends_the_pod() {
    let cd = containerd();
    fault_config(&cd, None);
    cd.ctr_ok(&["run", "--runtime", RUNTIME, "-d", IMAGE, "t", "sleep", "1000"]).expect("detached run");
    let answer = qmp(&cd, "stop");
    assert!(answer.contains("\"return\""), "QMP stop: {answer}");
    let exec = spawn_ctr(&cd, &["task", "exec", "--exec-id", "e", "t", "true"]);
    let (out, took) = finish(exec, "ctr task exec", REQUEST_TIMEOUT + SLACK);
    eprintln!("exec into a frozen guest: {took:?}: {}", stderr(&out));
    assert!(!out.status.success());
    assert!(stderr(&out).to_lowercase().contains("deadline"), "{}", stderr(&out));
    // The error shows the frozen VM: its vCPU thread sleeps (QMP `stop` parks it).
    assert!(stderr(&out).contains("the pod VM is running: last console lines: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("QEMU's vCPU threads: CPU 0/TCG S "), "{}", stderr(&out));
    // Every call the agent must answer says so, not only exec.
    let (out, took) = finish(spawn_ctr(&cd, &["task", "pause", "t"]), "ctr task pause", REQUEST_TIMEOUT + SLACK);
    eprintln!("pause of a frozen guest's task: {took:?}: {}", stderr(&out));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the pod VM is running: last console lines: "), "{}", stderr(&out));
    let (out, took) =
        finish(spawn_ctr(&cd, &["task", "kill", "-s", "KILL", "t"]), "ctr task kill", REQUEST_TIMEOUT + SLACK);
    eprintln!("kill of a frozen guest's task: {took:?}: {}", stderr(&out));
    assert!(out.status.success(), "{}", stderr(&out));
    wait_status(&cd, "t", "STOPPED", SLACK);
    let (out, _) = finish(spawn_ctr(&cd, &["task", "delete", "t"]), "ctr task delete", SLACK);
    assert!(
        stderr(&out).contains("exit code 137") || stderr(&out).contains("exit code 255") || out.status.success(),
        "{}",
        stderr(&out)
    );
    let _ = cd.ctr(&["container", "rm", "t"]);
    assert_clean(&cd, "frozen guest");
}

/// QEMU itself hangs (SIGSTOP: neither the guest nor QMP answers): an exec fails within the
/// request timeout, and `ctr task delete -f` (kill + wait + delete) still ends the pod.
#[test]
fn hung_qemu_fails_calls_in_time_and_delete_force_still_ends_the_pod() {
    let cd = containerd();
    fault_config(&cd, None);
    cd.ctr_ok(&["run", "--runtime", RUNTIME, "-d", IMAGE, "t", "sleep", "1000"]).expect("detached run");
    kill(one_process(&cd, "qemu-system-x86_64"), Signal::SIGSTOP).expect("stop QEMU");
    let exec = spawn_ctr(&cd, &["task", "exec", "--exec-id", "e", "t", "true"]);
    let (out, took) = finish(exec, "ctr task exec", REQUEST_TIMEOUT + SLACK);
    eprintln!("exec into a hung QEMU: {took:?}: {}", stderr(&out));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("QEMU's vCPU threads: CPU 0/TCG T "), "stopped by SIGSTOP: {}", stderr(&out));
    let (out, took) =
        finish(spawn_ctr(&cd, &["task", "delete", "-f", "t"]), "ctr task delete -f", 2 * REQUEST_TIMEOUT + SLACK);
    eprintln!("delete -f of a hung QEMU's task: {took:?}: {}", stderr(&out));
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = cd.ctr(&["container", "rm", "t"]);
    assert_clean(&cd, "hung QEMU");
}

/// containerd dies while the shim is booting a pod for `Create`: after its restart the task
/// can be removed (or containerd removed it itself), and nothing is left.
#[test]
fn containerd_killed_in_the_middle_of_create() {
    let mut cd = containerd();
    fault_config(&cd, None);
    let run = spawn_ctr(&cd, &["run", "--runtime", RUNTIME, "-d", IMAGE, "mid", "sleep", "1000"]);
    one_process(&cd, "qemu-system-x86_64");
    cd.kill();
    let (out, _) = finish(run, "ctr run", SLACK);
    assert!(!out.status.success(), "ctr run survived its containerd");
    cd.spawn().expect("containerd restarts");
    remove(&cd, "mid");
    assert_clean(&cd, "containerd killed during Create");
    // The node still runs pods.
    let out = cd.ctr(&["run", "--runtime", RUNTIME, "--rm", IMAGE, "after", "echo", "fine"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n", "{}", stderr(&out));
    assert_clean(&cd, "the pod after the restart");
}

/// A shim daemon that stops answering (stopped here, as a deadlocked one would be) while
/// containerd restarts: containerd gives up on it (its load timeout) and runs `<shim> delete`,
/// which ends the daemon with its pod; nothing is left, and the node still runs pods.
#[test]
fn a_hung_shim_is_ended_by_containerds_cleanup() {
    let mut cd = containerd();
    fault_config(&cd, None);
    let out = cd.ctr(&["run", "--runtime", RUNTIME, "-d", IMAGE, "hung", "sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shims = cd.shim_pids();
    let [shim] = shims[..] else { panic!("one shim daemon: {shims:?}") };
    let shim = Pid::from_raw(shim as i32);
    kill(shim, Signal::SIGSTOP).expect("SIGSTOP the shim");
    cd.kill();
    cd.spawn().expect("containerd restarts");
    // containerd's cleanup of a shim it cannot load: `<shim> delete`, in the background.
    let ended = || {
        let stat = std::fs::read_to_string(format!("/proc/{shim}/stat")).unwrap_or_default();
        // Gone, or a zombie its (re)parent has not reaped yet.
        stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
    };
    let gone = wait_for(BOOT_DEADLINE, || ended().then_some(()));
    if gone.is_none() {
        let _ = kill(shim, Signal::SIGKILL);
        panic!(
            "the hung shim daemon outlived containerd's cleanup
{}",
            cd.log()
        );
    }
    remove(&cd, "hung");
    assert_clean(&cd, "a hung shim after containerd's cleanup");
    let out = cd.ctr(&["run", "--runtime", RUNTIME, "--rm", IMAGE, "after", "echo", "fine"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n", "{}", stderr(&out));
    assert_clean(&cd, "the pod after the cleanup");
}

/// containerd restarts while a pod VM boots slowly (a QEMU that starts 20 s late): containerd
/// takes the shim of a create it never saw finish for leaked and runs `<shim> delete` at once,
/// which ends the daemon mid-boot with its helpers — QEMU never starts — and nothing of the
/// pod is left.
#[test]
fn containerd_restarted_during_a_slow_boot_leaves_nothing() {
    let mut cd = containerd();
    fault_config(&cd, None);
    let slow = cd.dir.path().join("bin/slow-qemu");
    std::fs::write(&slow, "#!/bin/sh\nsleep 20\nexec /usr/bin/qemu-system-x86_64 \"$@\"\n").expect("wrapper");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = cd.dir.path().join("bin/configuration.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let line = text.lines().find(|l| l.starts_with("path = ")).expect("qemu path line").to_owned();
    std::fs::write(&path, text.replace(&line, &format!("path = \"{}\"", slow.display()))).expect("config");
    let run = spawn_ctr(&cd, &["run", "--runtime", RUNTIME, "-d", IMAGE, "slow", "sleep", "1000"]);
    // The vsock helper starts before QEMU: the pod's boot is under way.
    one_process(&cd, "vhost-device-vsock");
    cd.kill();
    let _ = finish(run, "ctr run", SLACK);
    cd.spawn().expect("containerd restarts");
    let end = Instant::now() + BOOT_DEADLINE;
    let mut qemu_started = false;
    while !cd.leftovers().is_empty() && Instant::now() < end {
        qemu_started |= !processes_named(&cd, "qemu-system-x86_64").is_empty();
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = cd.leftovers();
    let _ = cd.ctr(&["container", "rm", "slow"]);
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());
    assert!(!qemu_started, "the boot went on after containerd's restart\n{}", cd.log());
}

/// The state dir's file system is full: `Create` fails saying so, and nothing is left there.
#[test]
fn full_state_dir_file_system_is_a_clear_error() {
    let cd = containerd();
    let full = cd.dir.path().join("full");
    std::fs::create_dir_all(&full).expect("mount point");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "contrast-test-full"])
        .arg(&full)
        .status()
        .expect("mount");
    assert!(status.success(), "mount tmpfs");
    let filler = std::fs::File::create(full.join("filler")).expect("filler");
    let _ = std::io::copy(&mut Read::take(std::io::repeat(0), 1 << 20), &mut &filler);
    drop(filler);
    fault_config(&cd, Some(&full.join("state")));
    let out = cd.ctr(&["run", "--runtime", RUNTIME, "--rm", IMAGE, "nospace", "true"]);
    let err = stderr(&out);
    eprintln!("ctr run on a full state dir: {err}");
    let _ = cd.ctr(&["container", "rm", "nospace"]);
    // What may stay: the state root and the namespace's directory, shared by its pods.
    let shared = [full.join("state"), full.join("state").join(NAMESPACE)];
    let left: Vec<_> = walk(&full).into_iter().filter(|p| !p.ends_with("filler") && !shared.contains(p)).collect();
    let _ = std::process::Command::new("umount").arg(&full).status();
    assert!(!out.status.success());
    assert!(err.contains("No space left on device") && err.contains(&full.display().to_string()), "{err}");
    assert!(left.is_empty(), "left in the state dir's file system: {left:?}");
    assert_clean(&cd, "full state dir");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}
