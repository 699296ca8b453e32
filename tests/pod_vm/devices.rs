//! Device rules in the pod VM: a container uses only the devices its spec's
//! `linux.resources.devices` and the runtime's defaults allow, whatever nodes it can create.

use contrast_agent_protocol::{agent, oci};
use contrast_tests::image_dir;
use contrast_tests::pod::{container_spec, create_request, TestPod};

/// Creates a node for the guest's root disk (`/dev/vda`) and reads a byte through it, uses
/// /dev/null, and prints the disk's numbers; each step that works says so. (The rootfs is
/// shared by the pod's containers: the node of an earlier one goes first.)
const PROBE: &str = "rm -f /tmp/disk; mknod /tmp/disk b $(tr : ' ' < /sys/block/vda/dev) && echo made; \
                     head -c 1 /tmp/disk > /dev/null && echo read; \
                     echo x > /dev/null && echo null; cat /sys/block/vda/dev";

fn rule(allow: bool, kind: &str, major: i64, minor: i64, access: &str) -> oci::LinuxDeviceCgroup {
    let mut r = oci::LinuxDeviceCgroup::new();
    r.Allow = allow;
    r.Type = kind.into();
    r.Major = major;
    r.Minor = minor;
    r.Access = access.into();
    r
}

fn probe_spec(pod: &TestPod, rules: Vec<oci::LinuxDeviceCgroup>) -> oci::Spec {
    let mut spec = container_spec(&pod.rootfs, &["sh", "-c", PROBE], false);
    let mut resources = oci::LinuxResources::new();
    resources.Devices = rules;
    spec.Linux.as_mut().expect("linux").Resources = Some(resources).into();
    spec
}

/// Runs PROBE in a container whose device rules are `rules`; returns its output.
async fn probe(pod: &TestPod, id: &str, rules: Vec<oci::LinuxDeviceCgroup>) -> String {
    let spec = probe_spec(pod, rules);
    pod.agent.create_container(&create_request(id, spec)).await.expect("create");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    pod.agent.start_container(&start).await.expect("start");
    let out = pod.read_all_stdout(id, "").await.expect("stdout");
    pod.wait(id, "").await.expect("wait");
    pod.remove(id).await.expect("remove");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_use_only_the_devices_their_rules_allow() {
    let pod = TestPod::start(&image_dir().expect("image"), "devices").await.expect("pod starts");
    // containerd's default rule: deny everything; the runtime's defaults add the usual devices
    // and creating nodes.
    let deny_all = rule(false, "", -1, -1, "rwm");
    let out = probe(&pod, "denied", vec![deny_all.clone()]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["made", "null"], "the disk's node is made but cannot be read: {out}");
    let (major, minor) = lines[2].split_once(':').expect("the disk's major:minor");
    let (major, minor): (i64, i64) = (major.parse().expect("major"), minor.parse().expect("minor"));

    // A rule for the disk, read only: now it can be read.
    let out = probe(&pod, "allowed", vec![deny_all.clone(), rule(true, "b", major, minor, "r")]).await;
    assert_eq!(out.lines().take(3).collect::<Vec<_>>(), ["made", "read", "null"], "{out}");

    // A later rule takes the read back.
    let rules = vec![deny_all, rule(true, "b", major, minor, "r"), rule(false, "b", major, -1, "r")];
    let out = probe(&pod, "revoked", rules).await;
    assert_eq!(out.lines().take(2).collect::<Vec<_>>(), ["made", "null"], "{out}");

    // A rule the kernel cannot express (a FIFO is no device kind) is the request's error, and
    // the id stays free.
    let spec = probe_spec(&pod, vec![rule(true, "p", -1, -1, "rw")]);
    let err = pod.agent.create_container(&create_request("fifo", spec)).await.expect_err("a FIFO device rule");
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("device rule 0"), "{err}");
    let out = probe(&pod, "fifo", vec![]).await;
    assert_eq!(out.lines().take(2).collect::<Vec<_>>(), ["made", "null"], "no rules: only the defaults: {out}");
    pod.stop().await;
}
