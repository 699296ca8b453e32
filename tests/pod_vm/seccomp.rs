//! Seccomp profiles from the OCI spec are enforced in the guest, for the container's process
//! and for processes exec'd into it; containers without one run unfiltered.

use contrast_agent_protocol::{agent, oci};
use contrast_tests::image_dir;
use contrast_tests::pod::{container_spec, create_request, exec_request, TestPod};

/// Allows everything except creating directories (EACCES, an explicit errno) and changing
/// modes (the default errno, EPERM).
fn profile() -> oci::LinuxSeccomp {
    let mut sc = oci::LinuxSeccomp::new();
    sc.DefaultAction = "SCMP_ACT_ALLOW".into();
    sc.Architectures = vec!["SCMP_ARCH_X86_64".into()];
    let mut mkdir = oci::LinuxSyscall::new();
    mkdir.Names = vec!["mkdir".into(), "mkdirat".into()];
    mkdir.Action = "SCMP_ACT_ERRNO".into();
    mkdir.set_errnoret(13);
    let mut chmod = oci::LinuxSyscall::new();
    // A name libseccomp may not know (newer kernels) is skipped, as runc does.
    chmod.Names = vec!["chmod".into(), "fchmodat".into(), "fchmodat2".into()];
    chmod.Action = "SCMP_ACT_ERRNO".into();
    sc.Syscalls = vec![mkdir, chmod];
    sc
}

/// containerd's default capability set (no CAP_SYS_ADMIN), as Kubernetes pods get it.
const DEFAULT_CAPS: [(&str, u32); 14] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// Bounding, effective and permitted set to `caps`; no_new_privs stays off (the default).
fn with_caps(process: &mut oci::Process, caps: &[(&str, u32)]) -> String {
    let names: Vec<String> = caps.iter().map(|(n, _)| n.to_string()).collect();
    let mut c = oci::LinuxCapabilities::new();
    c.Bounding = names.clone();
    c.Effective = names.clone();
    c.Permitted = names;
    process.Capabilities = Some(c).into();
    format!("{:016x}", caps.iter().fold(0u64, |m, (_, bit)| m | 1 << bit))
}

const PROBE: &str = "grep -E '^(Seccomp|CapEff|CapPrm|CapBnd):' /proc/self/status; mkdir /tmp/d 2>&1; echo mkdir=$?; \
                     touch /tmp/f; chmod 600 /tmp/f 2>&1; echo chmod=$?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_is_enforced_in_container_and_exec() {
    let pod = TestPod::start(&image_dir().expect("image"), "seccomp").await.expect("pod starts");

    let mut spec = container_spec(&pod.rootfs, &["sh", "-c", &format!("{PROBE}; sleep 1000")], false);
    spec.Linux.as_mut().expect("linux").Seccomp = Some(profile()).into();
    // Without CAP_SYS_ADMIN and without no_new_privs, like a default Kubernetes container.
    let default_mask = with_caps(spec.Process.as_mut().expect("process"), &DEFAULT_CAPS);
    pod.agent.create_container(&create_request("filtered", spec)).await.expect("create with seccomp");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "filtered".into();
    pod.agent.start_container(&start).await.expect("start");
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("chmod=") {
        out.extend(pod.read_stdout("filtered", "").await.expect("stdout"));
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("Seccomp:\t2"), "filter mode expected:\n{out}");
    assert!(out.contains(&format!("CapEff:\t{default_mask}")), "capabilities as asked:\n{out}");
    assert!(out.contains(&format!("CapBnd:\t{default_mask}")), "bounding set as asked:\n{out}");
    assert!(out.contains("Permission denied") && out.contains("mkdir=1"), "mkdir gets EACCES:\n{out}");
    assert!(out.contains("Operation not permitted") && out.contains("chmod=1"), "chmod gets EPERM:\n{out}");

    // An exec'd process gets the container's filter too.
    pod.agent.exec_process(&exec_request("filtered", "probe", &["sh", "-c", PROBE], false)).await.expect("exec");
    let exec_out =
        String::from_utf8_lossy(&pod.read_all_stdout("filtered", "probe").await.expect("exec stdout")).into_owned();
    assert!(exec_out.contains("Seccomp:\t2") && exec_out.contains("mkdir=1"), "{exec_out}");
    assert_eq!(pod.wait("filtered", "probe").await.expect("wait exec"), 0);

    // Without a profile: no filter, mkdir works.
    pod.run("plain", &["sh", "-c", PROBE], false).await.expect("plain runs");
    let plain = String::from_utf8_lossy(&pod.read_all_stdout("plain", "").await.expect("plain stdout")).into_owned();
    assert!(plain.contains("Seccomp:\t0") && plain.contains("mkdir=0") && plain.contains("chmod=0"), "{plain}");

    // A malformed profile is a malformed spec.
    let mut bad = profile();
    bad.DefaultAction = "SCMP_ACT_SOMETIMES".into();
    let mut spec = container_spec(&pod.rootfs, &["true"], false);
    spec.Linux.as_mut().expect("linux").Seccomp = Some(bad).into();
    let err = pod.agent.create_container(&create_request("bad", spec)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");

    pod.signal("filtered", "", 9).await.expect("kill");
    assert_eq!(pod.wait("filtered", "").await.expect("wait"), 137);
    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
}
