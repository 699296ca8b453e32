//! The container's OCI spec (bundle `config.json`) in the kata protobuf form the agent takes,
//! with host paths rewritten to where the guest sees them.

use contrast_agent_protocol::oci;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Process, Spec};

/// kata's CRI annotations the shim reads (containerd `pkg/cri/annotations`).
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// CRI's container type: `sandbox` for the pause container, `container` otherwise.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's resources on the sandbox's spec (containerd's `pkg/cri/annotations`; 1.6.20,
/// 1.7 and 2.1 send them): the sum of its containers' limits as kubelet computed it.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// What the pod VM must hold beyond its runtime class's defaults.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodResources {
    /// Bytes.
    pub memory: Option<i64>,
    pub vcpus: Option<u32>,
}

/// The resources a pod VM is sized for, from its first container: a CRI pause container is
/// the sandbox, not a workload — its own limits mean nothing, the pod's come in
/// [`SANDBOX_MEMORY`] / [`SANDBOX_CPU_QUOTA`] / [`SANDBOX_CPU_PERIOD`] (a containerd that
/// sends none gets the defaults). A container outside CRI (`ctr run`) is its own pod and
/// sizes it with its memory limit.
pub fn pod_resources(spec: &Spec) -> Result<PodResources, String> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    if annotations.get(CONTAINER_TYPE).map(String::as_str) != Some("sandbox") {
        return Ok(PodResources { memory: memory_limit(spec), vcpus: None });
    }
    let number = |key: &str| -> Result<Option<i64>, String> {
        match annotations.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| format!("annotation {key}={v:?} is not a number")),
        }
    };
    let memory = number(SANDBOX_MEMORY)?.filter(|m| *m > 0);
    let vcpus = match (number(SANDBOX_CPU_QUOTA)?, number(SANDBOX_CPU_PERIOD)?) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            Some(u32::try_from((quota + period - 1) / period).map_err(|_| format!("cpu quota {quota} is too large"))?)
        }
        _ => None,
    };
    Ok(PodResources { memory, vcpus })
}

/// Pod grouping of a container: the sandbox it belongs to (itself without CRI annotations).
pub fn sandbox_id(spec: &Spec, container_id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_owned())
}

/// The pod's network namespace, from the sandbox container's spec: CNI's netns (a `network`
/// namespace with a path), or none (a new, empty namespace: the VM gets loopback only).
/// A CRI sandbox without a network namespace of its own uses the node's (`hostNetwork:
/// true`): a VM has its own kernel and cannot join it, so such a pod is refused.
pub fn pod_network_namespace(spec: &Spec) -> Result<Option<std::path::PathBuf>, String> {
    let network = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| n.iter().find(|ns| ns.typ() == LinuxNamespaceType::Network));
    match network {
        Some(ns) => Ok(ns.path().clone().filter(|p| !p.as_os_str().is_empty())),
        None if is_cri_sandbox(spec) => {
            Err("the pod uses the node's network namespace (hostNetwork: true): a pod VM \
                                             has a kernel and network stack of its own and cannot share the node's; \
                                             run the pod without hostNetwork, or with a runtime class that is not a VM"
                .into())
        }
        None => Ok(None),
    }
}

/// A network namespace given by path must not be the node's own (the shim's, or init's): the
/// VM's taps and redirects would take over the node's interfaces, and its port forwarding
/// the node's loopback (`ctr run --with-ns network:/proc/1/ns/net`, or any such spec).
pub fn refuse_node_network_namespace(netns: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(pod) = std::fs::metadata(netns) else {
        // Not there: the network setup says so, naming it.
        return Ok(());
    };
    for node in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if std::fs::metadata(node).is_ok_and(|n| (n.dev(), n.ino()) == (pod.dev(), pod.ino())) {
            return Err(format!(
                "the network namespace {} is the node's own: a pod VM cannot join it (its NICs would \
                 take over the node's interfaces); give the pod a network namespace of its own",
                netns.display()
            ));
        }
    }
    Ok(())
}

fn is_cri_sandbox(spec: &Spec) -> bool {
    spec.annotations().as_ref().and_then(|a| a.get("io.kubernetes.cri.container-type")).map(String::as_str)
        == Some("sandbox")
}

/// Whether the container joins another's PID namespace (CRI: the pod's, `NamespaceMode::POD`,
/// or a target container's): a PID namespace with a path.
pub fn shares_pod_pid_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_some()))
}

/// Mount propagation from the host (`rshared`, `rslave`: CRI's `Bidirectional` and
/// `HostToContainer`) cannot cross the VM boundary — mounts made later on either side never
/// reach the other. Refused at create, naming the mount, rather than silently differing.
pub fn refuse_host_propagation(spec: &Spec) -> Result<(), String> {
    const FROM_HOST: [&str; 4] = ["shared", "rshared", "slave", "rslave"];
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if let Some(p) = m.options().as_deref().unwrap_or_default().iter().find(|o| FROM_HOST.contains(&o.as_str())) {
            return Err(format!(
                "mount {}: propagation {p:?} (Kubernetes mountPropagation Bidirectional/HostToContainer) cannot \
                 cross the pod VM boundary; use None",
                m.destination().display()
            ));
        }
    }
    match spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) if FROM_HOST.contains(&p) => {
            Err(format!("rootfsPropagation {p:?}: propagation from the host cannot cross the pod VM boundary"))
        }
        _ => Ok(()),
    }
}

/// A device node of the node's (CRI `devices`, a device plugin's, `ctr run --device`) names
/// hardware of the host, which the pod VM does not have. Refused at create, naming it, rather
/// than a container that silently lacks it.
pub fn refuse_host_devices(spec: &Spec) -> Result<(), String> {
    match spec.linux().as_ref().and_then(|l| l.devices().as_ref()).and_then(|d| d.first()) {
        Some(d) => Err(format!(
            "device {} ({} {}:{}): the node's devices cannot be passed into the pod VM",
            d.path().display(),
            d.typ().as_str(),
            d.major(),
            d.minor()
        )),
        None => Ok(()),
    }
}

/// Memory limit of the container in bytes, if the spec sets one.
pub fn memory_limit(spec: &Spec) -> Option<i64> {
    spec.linux().as_ref()?.resources().as_ref()?.memory().as_ref()?.limit().filter(|l| *l > 0)
}

pub fn process(p: &Process) -> oci::Process {
    let mut out = oci::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    if let Some(b) = p.console_size() {
        let mut size = oci::Box::new();
        size.Height = b.height() as u32;
        size.Width = b.width() as u32;
        out.ConsoleSize = Some(size).into();
    }
    let mut user = oci::User::new();
    user.UID = p.user().uid();
    user.GID = p.user().gid();
    user.AdditionalGids = p.user().additional_gids().clone().unwrap_or_default();
    out.User = Some(user).into();
    out.Args = p.args().clone().unwrap_or_default();
    out.Env = p.env().clone().unwrap_or_default();
    out.Cwd = p.cwd().display().to_string();
    if let Some(c) = p.capabilities() {
        let names = |set: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
            set.as_ref().map(|s| s.iter().map(|c| format!("CAP_{c}")).collect()).unwrap_or_default()
        };
        let mut caps = oci::LinuxCapabilities::new();
        caps.Bounding = names(c.bounding());
        caps.Effective = names(c.effective());
        caps.Inheritable = names(c.inheritable());
        caps.Permitted = names(c.permitted());
        caps.Ambient = names(c.ambient());
        out.Capabilities = Some(caps).into();
    }
    for r in p.rlimits().as_deref().unwrap_or_default() {
        let mut l = oci::POSIXRlimit::new();
        l.Type = spec_name(&r.typ());
        l.Hard = r.hard();
        l.Soft = r.soft();
        out.Rlimits.push(l);
    }
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    out.ApparmorProfile = p.apparmor_profile().clone().unwrap_or_default();
    out.OOMScoreAdj = p.oom_score_adj().map_or(0, i64::from);
    out.SelinuxLabel = p.selinux_label().clone().unwrap_or_default();
    out
}

/// Converts the spec; `rootfs` is the guest path of the container root, `mounts` the spec's
/// mounts already rewritten for the guest.
pub fn convert(spec: &Spec, rootfs: &str, mounts: &[Mount]) -> Result<oci::Spec, String> {
    let mut out = oci::Spec::new();
    out.Version = spec.version().clone();
    out.Process = Some(process(spec.process().as_ref().ok_or("OCI spec has no process")?)).into();
    let mut root = oci::Root::new();
    root.Path = rootfs.to_owned();
    root.Readonly = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
    out.Root = Some(root).into();
    out.Hostname = spec.hostname().clone().unwrap_or_default();
    for m in mounts {
        let mut pm = oci::Mount::new();
        pm.destination = m.destination().display().to_string();
        pm.source = m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default();
        pm.type_ = m.typ().clone().unwrap_or_default();
        pm.options = m.options().clone().unwrap_or_default();
        out.Mounts.push(pm);
    }
    if let Some(a) = spec.annotations() {
        out.Annotations = a.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    if let Some(h) = spec.hooks() {
        let n =
            [h.prestart(), h.poststart(), h.poststop(), h.create_runtime(), h.create_container(), h.start_container()]
                .iter()
                .map(|v| v.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        if n > 0 {
            return Err("OCI hooks are not supported in the pod VM".into());
        }
    }
    if let Some(l) = spec.linux() {
        let mut linux = oci::Linux::new();
        // kata runtime's convention (the agent is in another kernel): no network or cgroup
        // namespace, and no host paths — sharing the pod's PID namespace travels as
        // `CreateContainerRequest.sandbox_pidns` (see [`shares_pod_pid_namespace`]).
        for ns in l.namespaces().as_deref().unwrap_or_default() {
            if matches!(ns.typ(), LinuxNamespaceType::Network | LinuxNamespaceType::Cgroup) {
                continue;
            }
            let mut pn = oci::LinuxNamespace::new();
            pn.Type = spec_name(&ns.typ());
            linux.Namespaces.push(pn);
        }
        if let Some(r) = l.resources() {
            linux.Resources = Some(resources(r)).into();
        }
        linux.CgroupsPath = l.cgroups_path().as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        linux.MaskedPaths = l.masked_paths().clone().unwrap_or_default();
        linux.ReadonlyPaths = l.readonly_paths().clone().unwrap_or_default();
        if let Some(sysctl) = l.sysctl() {
            linux.Sysctl = sysctl.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        if let Some(sc) = l.seccomp() {
            linux.Seccomp = Some(seccomp(sc)?).into();
        }
        out.Linux = Some(linux).into();
    }
    Ok(out)
}

/// The runtime spec's name of an enum value (`pid`, `SCMP_ACT_ERRNO`, `SCMP_ARCH_X86_64`, ...).
fn spec_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The seccomp profile in kata's message, which has no `defaultErrnoRet`: the agent's
/// libseccomp answers the default action's errno with EPERM, so any other value is refused
/// rather than changed.
fn seccomp(sc: &oci_spec::runtime::LinuxSeccomp) -> Result<oci::LinuxSeccomp, String> {
    if let Some(errno) = sc.default_errno_ret().filter(|e| *e != nix::libc::EPERM as u32) {
        return Err(format!(
            "seccomp defaultErrnoRet {errno} cannot be passed to the pod VM (only EPERM, {})",
            nix::libc::EPERM
        ));
    }
    if sc.listener_path().is_some() {
        return Err("seccomp listenerPath (notification) is not supported in the pod VM".into());
    }
    let mut out = oci::LinuxSeccomp::new();
    out.DefaultAction = spec_name(&sc.default_action());
    out.Architectures = sc.architectures().as_deref().unwrap_or_default().iter().map(spec_name).collect();
    out.Flags = sc.flags().as_deref().unwrap_or_default().iter().map(spec_name).collect();
    for sys in sc.syscalls().as_deref().unwrap_or_default() {
        let mut ps = oci::LinuxSyscall::new();
        ps.Names = sys.names().clone();
        ps.Action = spec_name(&sys.action());
        if let Some(errno) = sys.errno_ret() {
            ps.set_errnoret(errno);
        }
        for a in sys.args().as_deref().unwrap_or_default() {
            let mut pa = oci::LinuxSeccompArg::new();
            pa.Index = a.index() as u64;
            pa.Value = a.value();
            pa.ValueTwo = a.value_two().unwrap_or(0);
            pa.Op = spec_name(&a.op());
            ps.Args.push(pa);
        }
        out.Syscalls.push(ps);
    }
    Ok(out)
}

pub fn resources(r: &oci_spec::runtime::LinuxResources) -> oci::LinuxResources {
    let mut out = oci::LinuxResources::new();
    if let Some(m) = r.memory() {
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = m.limit().unwrap_or(0);
        mem.Reservation = m.reservation().unwrap_or(0);
        mem.Swap = m.swap().unwrap_or(0);
        out.Memory = Some(mem).into();
    }
    if let Some(c) = r.cpu() {
        let mut cpu = oci::LinuxCPU::new();
        cpu.Shares = c.shares().unwrap_or(0);
        cpu.Quota = c.quota().unwrap_or(0);
        cpu.Period = c.period().unwrap_or(0);
        cpu.Cpus = c.cpus().clone().unwrap_or_default();
        cpu.Mems = c.mems().clone().unwrap_or_default();
        out.CPU = Some(cpu).into();
    }
    if let Some(p) = r.pids() {
        let mut pids = oci::LinuxPids::new();
        pids.Limit = p.limit();
        out.Pids = Some(pids).into();
    }
    for d in r.devices().as_deref().unwrap_or_default() {
        let mut dc = oci::LinuxDeviceCgroup::new();
        dc.Allow = d.allow();
        dc.Type = d.typ().map(|t| t.as_str().to_owned()).unwrap_or_default();
        dc.Major = d.major().unwrap_or(-1);
        dc.Minor = d.minor().unwrap_or(-1);
        dc.Access = d.access().clone().unwrap_or_default();
        out.Devices.push(dc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_seccomp(seccomp: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "linux": { "seccomp": seccomp },
        }))
        .expect("spec")
    }

    /// kata runtime's convention (`src/runtime/virtcontainers/kata_agent.go`,
    /// `constrainGRPCSpec`): the agent gets no network or cgroup namespace and no host paths;
    /// a shared PID namespace is `sandbox_pidns`. A genuine kata-agent would otherwise try
    /// to open the host's `/proc/<pid>/ns/net` in the guest.
    #[test]
    fn namespaces_reach_the_agent_as_kata_sends_them() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "linux": { "namespaces": [
                { "type": "pid", "path": "/proc/42/ns/pid" },
                { "type": "network", "path": "/proc/42/ns/net" },
                { "type": "ipc", "path": "/proc/42/ns/ipc" },
                { "type": "uts", "path": "/proc/42/ns/uts" },
                { "type": "cgroup" },
                { "type": "mount" }
            ] },
        }))
        .expect("spec");
        assert!(shares_pod_pid_namespace(&spec));
        let out = convert(&spec, "/run/contrast/shared/c/rootfs", &[]).expect("converts");
        let nss: Vec<(String, String)> =
            out.Linux.Namespaces.iter().map(|n| (n.Type.clone(), n.Path.clone())).collect();
        let want = [("pid", ""), ("ipc", ""), ("uts", ""), ("mount", "")];
        assert_eq!(nss, want.map(|(t, p)| (t.to_owned(), p.to_owned())));
        let own: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }] },
        }))
        .expect("spec");
        assert!(!shares_pod_pid_namespace(&own));
    }

    fn spec_with_annotations(annotations: serde_json::Value, memory_limit: Option<i64>) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "root": { "path": "rootfs" },
            "annotations": annotations,
            "linux": { "resources": { "memory": { "limit": memory_limit } } },
        }))
        .expect("spec")
    }

    #[test]
    fn the_pause_container_sizes_the_vm_from_the_pods_resources_not_its_own() {
        let pause = spec_with_annotations(
            serde_json::json!({
                CONTAINER_TYPE: "sandbox",
                SANDBOX_MEMORY: "268435456",
                SANDBOX_CPU_QUOTA: "150000",
                SANDBOX_CPU_PERIOD: "100000",
            }),
            Some(1 << 30),
        );
        assert_eq!(pod_resources(&pause), Ok(PodResources { memory: Some(256 << 20), vcpus: Some(2) }));
        // No pod resources on the pause spec: its own limit is ignored all the same.
        let old = spec_with_annotations(serde_json::json!({ CONTAINER_TYPE: "sandbox" }), Some(1 << 30));
        assert_eq!(pod_resources(&old), Ok(PodResources::default()));
        // Unlimited pods (quota -1, memory 0) add nothing.
        let unlimited = spec_with_annotations(
            serde_json::json!({ CONTAINER_TYPE: "sandbox", SANDBOX_MEMORY: "0", SANDBOX_CPU_QUOTA: "-1",
                                SANDBOX_CPU_PERIOD: "100000" }),
            None,
        );
        assert_eq!(pod_resources(&unlimited), Ok(PodResources::default()));
        // ctr run: the container is the pod.
        let ctr = spec_with_annotations(serde_json::json!({}), Some(64 << 20));
        assert_eq!(pod_resources(&ctr), Ok(PodResources { memory: Some(64 << 20), vcpus: None }));
        let bad = spec_with_annotations(serde_json::json!({ CONTAINER_TYPE: "sandbox", SANDBOX_MEMORY: "lots" }), None);
        assert!(pod_resources(&bad).expect_err("not a number").contains(SANDBOX_MEMORY));
    }

    #[test]
    fn propagation_from_the_host_is_refused() {
        let with_mount = |options: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.1.0",
                "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
                "root": { "path": "rootfs" },
                "mounts": [{ "destination": "/data", "source": "/host/data", "type": "bind", "options": options }],
            }))
            .expect("spec")
        };
        for p in ["rshared", "rslave", "shared", "slave"] {
            let err = refuse_host_propagation(&with_mount(serde_json::json!(["rbind", p]))).expect_err(p);
            assert!(err.contains("/data") && err.contains(p), "{err}");
        }
        refuse_host_propagation(&with_mount(serde_json::json!(["rbind", "rprivate", "ro"]))).expect("private is fine");
    }

    #[test]
    fn devices_of_the_node_are_refused() {
        let with_devices = |devices: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.1.0",
                "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
                "root": { "path": "rootfs" },
                "linux": { "devices": devices,
                           "resources": { "devices": [{ "allow": false, "access": "rwm" }] } },
            }))
            .expect("spec")
        };
        let fuse = serde_json::json!([{ "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229 }]);
        let err = refuse_host_devices(&with_devices(fuse)).expect_err("a device");
        assert!(err.contains("device /dev/fuse (c 10:229)"), "{err}");
        refuse_host_devices(&with_devices(serde_json::json!([]))).expect("no device");
    }

    #[test]
    fn seccomp_profile_is_passed_whole() {
        let spec = spec_with_seccomp(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [
                { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
                { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                  "args": [{ "index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ" }] },
                { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{ "index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ" }] },
                { "names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 },
            ],
        }));
        let out = convert(&spec, "/run/rootfs", &[]).expect("converts");
        let sc = out.Linux.Seccomp.as_ref().expect("seccomp");
        assert_eq!(sc.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(sc.Architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        assert_eq!(sc.Flags, ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
        assert_eq!(sc.Syscalls.len(), 4);
        assert_eq!(sc.Syscalls[0].Names, ["read", "write"]);
        assert_eq!(sc.Syscalls[0].Action, "SCMP_ACT_ALLOW");
        assert!(!sc.Syscalls[0].has_errnoret());
        let arg = &sc.Syscalls[1].Args[0];
        assert_eq!((arg.Index, arg.Value, arg.ValueTwo, arg.Op.as_str()), (0, 8, 0, "SCMP_CMP_EQ"));
        assert_eq!(sc.Syscalls[2].Args[0].Op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(sc.Syscalls[3].errnoret(), 13);
    }

    #[test]
    fn seccomp_settings_kata_cannot_carry_are_refused() {
        let other_errno =
            spec_with_seccomp(serde_json::json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38 }));
        let err = convert(&other_errno, "/run/rootfs", &[]).unwrap_err();
        assert!(err.contains("defaultErrnoRet 38"), "{err}");
        let listener = spec_with_seccomp(
            serde_json::json!({ "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp.sock" }),
        );
        let err = convert(&listener, "/run/rootfs", &[]).unwrap_err();
        assert!(err.contains("listenerPath"), "{err}");
    }

    #[test]
    fn the_nodes_own_network_namespace_is_refused() {
        let err = refuse_node_network_namespace(std::path::Path::new("/proc/self/ns/net")).expect_err("own");
        assert!(err.contains("is the node's own"), "{err}");
        // init's, where this process may look at it (these machines' PID 1 does not let it).
        if std::fs::metadata("/proc/1/ns/net").is_ok() {
            assert!(refuse_node_network_namespace(std::path::Path::new("/proc/1/ns/net")).is_err());
        }
        // A namespace of its own is fine (one made for the test on a thread of its own).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let keeper = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            tx.send(format!("/proc/{}/task/{}/ns/net", std::process::id(), nix::unistd::gettid())).expect("send");
            let _ = done_rx.recv();
        });
        let own = rx.recv().expect("path");
        assert_eq!(refuse_node_network_namespace(std::path::Path::new(&own)), Ok(()));
        drop(done_tx);
        keeper.join().expect("keeper");
    }
}
