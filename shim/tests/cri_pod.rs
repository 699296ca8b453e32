//! A pod driven over CRI the way kubelet drives it, on containerd 1.6, 1.7 and 2.1: the pod's
//! hostname and sysctls inside its containers, an OOM kill as kubelet sees it, a pod sharing
//! one PID namespace stops, and host mount propagation is refused clearly.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use contrast_cri_client::{container_config, cri, pod_config, CriClient};
use contrast_tests::containerd::{Containerd, Release, CRI_HANDLER, IMAGE};
use contrast_tests::{containerd_matrix, image_dir};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long an OOM-killed container may take to be seen as exited.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// StopPodSandbox + RemovePodSandbox must return within this (it hung with a shared PID
/// namespace: containerd waited forever for the container's exit).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

fn containerd(release: Release) -> Containerd {
    Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image")).expect("containerd starts")
}

async fn assert_clean(cd: &Containerd) {
    let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());
}

/// The container's status once it has exited, or as it is after [`EXIT_DEADLINE`].
async fn exited(cri: &mut CriClient, container: &str) -> cri::ContainerStatus {
    let end = Instant::now() + EXIT_DEADLINE;
    loop {
        let status = cri.container_status(container).await.expect("ContainerStatus");
        if status.state == cri::ContainerState::ContainerExited as i32 || Instant::now() > end {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

containerd_matrix! {
    /// The pod's hostname is what `hostname` says in its containers, and the pod's sysctls
    /// (a safe one and a namespaced unsafe one, both of the pod's IPC namespace) are in force.
    async fn pod_hostname_and_sysctls_reach_its_containers(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let mut config = pod_config("sysctl-pod", "default");
        config.hostname = "web-host-7".into();
        if let Some(linux) = config.linux.as_mut() {
            linux.sysctls =
                HashMap::from([("kernel.shm_rmid_forced".into(), "1".into()), ("fs.mqueue.msg_max".into(), "100".into())]);
        }
        let pod = cri.run_pod_config(CRI_HANDLER, config).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("container");
        let script = "hostname; cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max";
        let (code, out, err) = cri.exec_sync(&c, &["sh", "-c", script]).await.expect("ExecSync");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        assert_eq!(String::from_utf8_lossy(&out), "web-host-7\n1\n100\n");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// A container that allocates past its limit ends as kubelet expects: exit 137, reason
    /// `OOMKilled` (containerd sets it from the one TaskOOM the shim publishes).
    async fn oom_killed_container_ends_with_137_and_reason_oom_killed(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let pod = cri.run_pod("oom-pod", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let mut config = container_config("hog", IMAGE, &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"]);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
            ..Default::default()
        });
        let c = cri.run_container_config(&pod, config).await.expect("container");
        let status = exited(&mut cri, &c).await;
        assert_eq!(status.state, cri::ContainerState::ContainerExited as i32, "{status:?}");
        assert_eq!(status.exit_code, 137, "{status:?}");
        assert_eq!(status.reason, "OOMKilled", "{status:?}");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// `shareProcessNamespace: true`: the containers join the pod's PID namespace. Stopping
    /// the pod must not wait forever for their exits.
    async fn pod_sharing_one_pid_namespace_stops(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let mut config = pod_config("shared-pid", "default");
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = cri::NamespaceMode::Pod as i32;
        }
        let pod = cri.run_pod_config(CRI_HANDLER, config).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("container");
        // One PID namespace: the pause process is visible from the container.
        let (code, out, _) =
            cri.exec_sync(&c, &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).await.expect("ExecSync");
        assert_eq!(code, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("sleep 2147483647") && text.contains("sleep 1000"), "{text}");
        // An init that exits leaving a child behind: nothing ends that child in a namespace
        // the container does not own, and its output pipe stays open. The container still
        // exits (runc's shim ends such leftovers too), and the child goes with it.
        let leaver = cri.run_container(&pod, "leaver", IMAGE, &["sh", "-c", "sleep 3600 & exit 3"]).await.expect("leaver");
        let status = exited(&mut cri, &leaver).await;
        assert_eq!(status.state, cri::ContainerState::ContainerExited as i32, "{status:?}");
        assert_eq!(status.exit_code, 3, "{status:?}");
        let (code, out, _) =
            cri.exec_sync(&c, &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).await.expect("ExecSync");
        assert_eq!(code, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("sleep 3600"), "the leftover child runs on: {text}");
        let stopped = tokio::time::timeout(STOP_DEADLINE, cri.remove_pod(&pod.id)).await;
        assert!(stopped.is_ok(), "StopPodSandbox/RemovePodSandbox did not return within {STOP_DEADLINE:?}");
        stopped.expect("in time").expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// `mountPropagation: Bidirectional` / `HostToContainer` cannot work across a VM: the
    /// container is refused with a message that says so, and the pod keeps running.
    async fn host_mount_propagation_is_refused_clearly(release: Release) {
        let cd = containerd(release);
        // containerd itself demands a shared source mount for these propagations.
        let source = cd.dir.path().join("shared-src");
        std::fs::create_dir_all(&source).expect("mkdir");
        nix::mount::mount(Some(&source), &source, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .expect("bind the source onto itself");
        nix::mount::mount(None::<&str>, &source, None::<&str>, nix::mount::MsFlags::MS_SHARED, None::<&str>)
            .expect("make it shared");
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let pod = cri.run_pod("prop-pod", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let propagations = [
            ("bidirectional", cri::MountPropagation::PropagationBidirectional),
            ("host-to-container", cri::MountPropagation::PropagationHostToContainer),
        ];
        for (name, propagation) in propagations {
            // CRI creates the container record first; the shim's refusal comes at its start.
            let mut config = container_config(name, IMAGE, &["sleep", "1000"]);
            config.mounts = vec![cri::Mount {
                container_path: "/data".into(),
                host_path: source.display().to_string(),
                propagation: propagation as i32,
                ..Default::default()
            }];
            let err = cri.run_container_config(&pod, config).await.expect_err("propagation must be refused");
            let msg = format!("{err:#}");
            assert!(msg.contains("/data") && msg.contains("cannot cross the pod VM boundary"), "{msg}");
        }
        // The pod itself is unharmed.
        let c = cri.run_container(&pod, "fine", IMAGE, &["sleep", "1000"]).await.expect("a container without it");
        let (code, _, _) = cri.exec_sync(&c, &["true"]).await.expect("ExecSync");
        assert_eq!(code, 0);
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        let _ = nix::mount::umount2(&source, nix::mount::MntFlags::MNT_DETACH);
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// A pod with a network namespace of its own (CNI, as on a node) starts, and its network
    /// sysctls are in force in the VM. containerd 2.x adds `net.ipv4.ping_group_range` and
    /// `net.ipv4.ip_unprivileged_port_start` to every such sandbox, so before the pod's
    /// network namespace became the VM's own, no CRI pod started on 2.1 at all.
    async fn pod_with_its_own_network_namespace_starts_with_its_net_sysctls(release: Release) {
        let is_v2 = release.is_v2();
        let cd = Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image"))
            .expect("containerd starts");
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let mut config = pod_config("netns-pod", "default");
        if let Some(linux) = config.linux.as_mut() {
            linux.sysctls = HashMap::from([("net.ipv4.ping_group_range".into(), "0 2147483647".into())]);
            if let Some(ns) = linux.security_context.as_mut().and_then(|s| s.namespace_options.as_mut()) {
                ns.network = cri::NamespaceMode::Pod as i32;
            }
        }
        let pod = match cri.run_pod_config(CRI_HANDLER, config).await {
            Ok(pod) => pod,
            Err(e) => panic!("RunPodSandbox: {e:#}\n{}", cd.log()),
        };
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("container");
        let script = "cat /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv4/ip_unprivileged_port_start";
        let (code, out, err) = cri.exec_sync(&c, &["sh", "-c", script]).await.expect("ExecSync");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["0", "2147483647"]));
        // containerd 2.x's enable_unprivileged_ports default; 1.x leaves the kernel's 1024.
        assert_eq!(lines.get(1).copied(), Some(if is_v2 { "0" } else { "1024" }), "{text}");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// The pod VM is sized from the pod's resources, which containerd (1.6.20, 1.7, 2.1 alike)
    /// puts on the sandbox's spec (`io.kubernetes.cri.sandbox-memory`,
    /// `sandbox-cpu-quota/period`), not from the pause container's own limits.
    async fn pod_vm_is_sized_from_the_pods_resources(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let mut config = pod_config("sized-pod", "default");
        if let Some(linux) = config.linux.as_mut() {
            linux.resources = Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                // Half a CPU (rounds up to one more vCPU). 1.5 CPUs made a 3-vCPU guest on a
                // 2-core host, which under TCG beside the other tests' VMs once starved into
                // an RCU stall and missed the agent's 60 s dial.
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            });
        }
        let pod = cri.run_pod_config(CRI_HANDLER, config).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("container");
        let (code, out, err) =
            cri.exec_sync(&c, &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"]).await.expect("ExecSync");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.lines();
        let vcpus: u32 = lines.next().and_then(|l| l.trim().parse().ok()).expect("nproc");
        let mem_kib: u64 =
            lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).expect("MemTotal");
        // The test runtime class: 1 vCPU, 512 MiB. 0.5 CPUs round up to 1 more; 256 MiB more.
        assert_eq!(vcpus, 2, "{text}");
        let (low, high) = (640 << 10, 768 << 10);
        assert!((low..=high).contains(&mem_kib), "MemTotal {mem_kib} kB not within {low}..={high}: {text}");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// A container given CAP_NET_ADMIN can build a bridge in the pod's network: the guest
    /// kernel has the bridge driver.
    async fn container_with_net_admin_creates_a_bridge(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let pod = cri.run_pod("bridge-pod", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let net_admin = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability { add_capabilities: vec!["NET_ADMIN".into()], ..Default::default() }),
            ..Default::default()
        };
        let c = cri
            .run_container_with(&pod, "netadm", IMAGE, &["sleep", "1000"], Some(net_admin))
            .await
            .expect("container with NET_ADMIN");
        let (code, out, err) =
            cri.exec_sync(&c, &["sh", "-c", "brctl addbr br-test && ls /sys/class/net/br-test/bridge >/dev/null && echo made"])
                .await
                .expect("ExecSync");
        assert_eq!(code, 0, "brctl addbr failed: {}", String::from_utf8_lossy(&err));
        assert_eq!(String::from_utf8_lossy(&out), "made\n");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// A read-only bind mount that is not recursive (Kubernetes `readOnly: true` with
    /// `recursiveReadOnly: Disabled`): the container sees it read-only and exec works in it.
    async fn read_only_bind_mount_is_read_only_and_exec_works(release: Release) {
        let cd = containerd(release);
        let source = cd.dir.path().join("ro-src");
        std::fs::create_dir_all(&source).expect("mkdir");
        std::fs::write(source.join("hello"), "from the host\n").expect("write");
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let pod = cri.run_pod("ro-pod", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let mut config = container_config("ro", IMAGE, &["sleep", "1000"]);
        config.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: source.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        let c = cri.run_container_config(&pod, config).await.expect("container with a read-only mount");
        let (code, out, err) = cri
            .exec_sync(&c, &["sh", "-c", "cat /data/hello; touch /data/x 2>/dev/null && echo writable || echo read-only"])
            .await
            .expect("ExecSync");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        assert_eq!(String::from_utf8_lossy(&out), "from the host\nread-only\n");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// `kubectl exec -it`: an exec with a terminal and stdin through CRI's streaming server.
    /// The process sees a terminal, reads what was typed, and its output comes back.
    async fn exec_with_a_terminal_and_stdin_through_the_streaming_server(release: Release) {
        let cd = containerd(release);
        let mut cri =
            CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects").streaming_from(cd.netns_path());
        let pod = cri.run_pod("tty-pod", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("container");
        let script = "tty; read line; echo \"got:$line\"";
        let out = tokio::time::timeout(EXIT_DEADLINE, cri.exec_stream(&c, &["sh", "-c", script], true, b"hello\n"))
            .await
            .expect("the exec session ends")
            .expect("Exec over the streaming server");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("/dev/pts/"), "the process has a terminal: {text:?} {out:?}");
        assert!(text.contains("got:hello"), "stdin reached it: {text:?} {out:?}");
        assert!(out.status.contains("Success"), "{out:?}");
        // Each session's stdin ends with it: containerd sends no CloseIO for a terminal exec,
        // and the shim kept every session's stdin FIFO (and the task pumping it) until the
        // pod ended.
        for _ in 0..2 {
            let out = tokio::time::timeout(EXIT_DEADLINE, cri.exec_stream(&c, &["true"], true, b""))
                .await
                .expect("the exec session ends")
                .expect("Exec over the streaming server");
            assert!(out.status.contains("Success"), "{out:?}");
        }
        let (shim, _) = cd.shim_daemon(&pod.id).expect("the pod's shim daemon");
        let stdin_fifos = || -> Vec<String> {
            let fds = std::fs::read_dir(format!("/proc/{shim}/fd")).expect("the shim's descriptors");
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .filter(|target| target.contains("stdin"))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stdin_fifos().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(stdin_fifos(), Vec::<String>::new(), "stdin FIFOs of ended exec sessions still open in the shim");
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}

containerd_matrix! {
    /// kubelet's RunPodSandbox deadline passes while the shim boots the pod's VM: containerd
    /// gives up and cleans up (its `Delete` finds no task yet, its `Shutdown` finds a create
    /// running, then it closes the connection and runs `<shim> delete`), while the shim,
    /// whose create now runs to its end instead of being cut off at the deadline, is still
    /// booting. Nothing may be left, and the next pod starts.
    async fn a_pod_containerd_gave_up_on_leaves_nothing(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        // Booting the VM alone takes over a second under TCG.
        let Err(err) =
            cri.run_pod_within(CRI_HANDLER, pod_config("impatient", "default"), Duration::from_millis(500)).await
        else {
            panic!("the pod started within the deadline")
        };
        let err = format!("{err:#}").to_lowercase();
        assert!(["deadline", "timeout", "cancel"].iter().any(|w| err.contains(w)), "{err}");
        assert_clean(&cd).await;
        // The next pod is unharmed.
        let pod = cri.run_pod("patient", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "fine", IMAGE, &["sleep", "1000"]).await.expect("a container");
        let (code, _, _) = cri.exec_sync(&c, &["true"]).await.expect("ExecSync");
        assert_eq!(code, 0);
        cri.remove_pod(&pod.id).await.expect("remove the pod");
        assert_clean(&cd).await;
    }
}
