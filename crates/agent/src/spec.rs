//! Converts the kata protobuf OCI spec into the runtime-spec JSON libcontainer reads, and
//! rewrites what only makes sense on the host:
//!
//! - `linux.cgroupsPath` becomes `/contrast/<container id>` (guest cgroup tree);
//! - the pod's namespaces are the VM's: every container, the sandbox's pause included, runs in
//!   the VM's own network, ipc and uts namespaces (as kata-agent puts every container into
//!   the sandbox's shared ipc/uts namespaces and none into a network namespace of its own).
//!   Their sysctls are written by the agent to the VM (see [`Converted::pod_sysctls`]), the
//!   pod's hostname is the VM's (set by `CreateSandbox`); other namespaces naming a host path
//!   are dropped, and a PID namespace path means "share the sandbox's PID namespace" (see
//!   [`Converted::join_sandbox_pidns`]);
//! - AppArmor profiles and SELinux labels name host policy that does not exist in the guest;
//!   they are dropped with a log line (the VM is the isolation boundary).
//!
//! Seccomp profiles are handed to libcontainer (linked with libseccomp), which loads the
//! filter into every process of the container, exec'd ones included.
//!
//! Settings the guest cannot honour are refused, never dropped: OCI hooks and seccomp
//! notification (its listener would live outside the VM).

use std::collections::HashMap;

use contrast_agent_protocol::oci;
use libcontainer::oci_spec::runtime::{Process, Spec};
use serde_json::{json, Map, Value};

use crate::log;

/// Guest cgroup v2 directory under which every container gets its own cgroup.
pub const CGROUP_PARENT: &str = "/contrast";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("OCI spec is missing `{0}`")]
    Missing(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("OCI spec is invalid: {0}")]
    Invalid(String),
}

pub struct Converted {
    pub spec: Spec,
    /// The spec asked to share a PID namespace (a namespace path on the host).
    pub join_sandbox_pidns: bool,
    /// Sysctls of the pod's namespaces (net, ipc, uts), for the VM itself: libcontainer
    /// would refuse them for a container without those namespaces of its own.
    pub pod_sysctls: Vec<(String, String)>,
}

/// Namespaces that are the pod's, i.e. the VM's own (runtime-spec type names).
const POD_NAMESPACES: [&str; 3] = ["network", "ipc", "uts"];

/// Whether a sysctl belongs to one of [`POD_NAMESPACES`] (the namespaced sysctls runc and
/// Kubernetes know: `net.*`; IPC: `kernel.{msgmax,msgmnb,msgmni,sem,shmall,shmmax,shmmni,
/// shm_rmid_forced}`, `fs.mqueue.*`; UTS: `kernel.{hostname,domainname}`).
pub fn is_pod_sysctl(key: &str) -> bool {
    const KERNEL_IPC_UTS: [&str; 10] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.hostname",
        "kernel.domainname",
    ];
    key.starts_with("net.") || key.starts_with("fs.mqueue.") || KERNEL_IPC_UTS.contains(&key)
}

/// A device node's path: below `/dev/`, every component a plain name (no `.`, `..`, or
/// empty one).
fn device_path(p: &str) -> bool {
    p.strip_prefix("/dev/").is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// `/proc/sys` path of a sysctl key; refuses keys that could name anything else.
pub fn sysctl_path(key: &str) -> Result<std::path::PathBuf, SpecError> {
    let valid = !key.is_empty()
        && key
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    if !valid {
        return Err(SpecError::Invalid(format!("sysctl {key:?} is not a sysctl name")));
    }
    Ok(std::path::Path::new("/proc/sys").join(key.replace('.', "/")))
}

pub fn convert(container_id: &str, s: &oci::Spec) -> Result<Converted, SpecError> {
    let process = s.Process.as_ref().ok_or(SpecError::Missing("process"))?;
    let root = s.Root.as_ref().ok_or(SpecError::Missing("root"))?;
    if root.Path.is_empty() {
        return Err(SpecError::Missing("root.path"));
    }
    if let Some(h) = s.Hooks.as_ref() {
        let n = h.Prestart.len()
            + h.Poststart.len()
            + h.Poststop.len()
            + h.CreateRuntime.len()
            + h.CreateContainer.len()
            + h.StartContainer.len();
        if n > 0 {
            return Err(SpecError::Unsupported("OCI hooks are not supported in the pod VM".into()));
        }
    }
    let mut join_sandbox_pidns = false;
    let mut pod_sysctls = Vec::new();
    let mut linux = Map::new();
    if let Some(l) = s.Linux.as_ref() {
        if let Some(sc) = l.Seccomp.as_ref().filter(|sc| !sc.DefaultAction.is_empty() || !sc.Syscalls.is_empty()) {
            linux.insert("seccomp".into(), seccomp(sc)?);
        }
        let mut namespaces = Vec::new();
        for ns in &l.Namespaces {
            let kind = ns.Type.as_str();
            if POD_NAMESPACES.contains(&kind) {
                continue;
            }
            if ns.Path.is_empty() {
                namespaces.push(json!({ "type": kind }));
            } else if kind == "pid" {
                join_sandbox_pidns = true;
            }
        }
        linux.insert("namespaces".into(), Value::Array(namespaces));
        if !l.UIDMappings.is_empty() || !l.GIDMappings.is_empty() {
            linux.insert("uidMappings".into(), id_mappings(&l.UIDMappings));
            linux.insert("gidMappings".into(), id_mappings(&l.GIDMappings));
        }
        let (pod, own): (Vec<_>, Vec<_>) = l.Sysctl.iter().partition(|(k, _)| is_pod_sysctl(k));
        for (key, value) in pod {
            sysctl_path(key)?;
            pod_sysctls.push((key.clone(), value.clone()));
        }
        pod_sysctls.sort();
        if !own.is_empty() {
            linux.insert("sysctl".into(), json!(own.into_iter().collect::<HashMap<_, _>>()));
        }
        if let Some(r) = l.Resources.as_ref() {
            linux.insert("resources".into(), resources(r));
        }
        linux.insert("maskedPaths".into(), json!(l.MaskedPaths));
        linux.insert("readonlyPaths".into(), json!(l.ReadonlyPaths));
        if !l.RootfsPropagation.is_empty() {
            linux.insert("rootfsPropagation".into(), json!(l.RootfsPropagation));
        }
        let devices: Vec<Value> = l
            .Devices
            .iter()
            .map(|d| {
                // A node elsewhere would stand in for a file of the image (libcontainer
                // only checks that the path begins with /dev, so /dev/../etc/x passes).
                if !device_path(&d.Path) {
                    return Err(SpecError::Invalid(format!("device {:?}: not a canonical path below /dev/", d.Path)));
                }
                Ok(json!({ "path": d.Path, "type": d.Type, "major": d.Major, "minor": d.Minor,
                           "fileMode": d.FileMode, "uid": d.UID, "gid": d.GID }))
            })
            .collect::<Result<_, _>>()?;
        if !devices.is_empty() {
            linux.insert("devices".into(), Value::Array(devices));
        }
    } else {
        linux.insert("namespaces".into(), json!([{ "type": "pid" }, { "type": "mount" }]));
    }
    linux.insert("cgroupsPath".into(), json!(format!("{CGROUP_PARENT}/{container_id}")));

    let mounts: Vec<Value> = s
        .Mounts
        .iter()
        .map(|m| json!({ "destination": m.destination, "source": m.source, "type": m.type_, "options": m.options }))
        .collect();
    let annotations: HashMap<&String, &String> = s.Annotations.iter().collect();
    let spec = json!({
        "ociVersion": if s.Version.is_empty() { "1.1.0" } else { s.Version.as_str() },
        "process": process_json(process)?,
        "root": { "path": root.Path, "readonly": root.Readonly },
        "mounts": mounts,
        "annotations": annotations,
        "linux": Value::Object(linux),
    });
    // The container's hostname is the pod's, i.e. the VM's (`CreateSandbox`): no private UTS
    // namespace to set it in.
    let spec: Spec = serde_json::from_value(spec).map_err(|e| SpecError::Invalid(e.to_string()))?;
    // Device rules the runner could not enforce are the request's fault: refused here, before
    // anything of the container exists.
    if let Some(devices) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().as_ref())
    {
        crate::device_filter::rules(devices).map_err(|e| SpecError::Invalid(e.to_string()))?;
    }
    Ok(Converted { spec, join_sandbox_pidns, pod_sysctls })
}

/// The environment a process gets: the last entry of each name (what comes before the first
/// `=`, all of an entry without one), in the order of those entries — as runc does, and as
/// the generated policy judges it; containerd lists the image's variables before the
/// container spec's, so the spec's value of a name the image sets too is the one kept.
fn effective_env(env: &[String]) -> Vec<String> {
    fn name(e: &str) -> &str {
        e.split_once('=').map_or(e, |(n, _)| n)
    }
    let last: HashMap<&str, usize> = env.iter().enumerate().map(|(i, e)| (name(e), i)).collect();
    env.iter().enumerate().filter(|(i, e)| last[name(e)] == *i).map(|(_, e)| e.clone()).collect()
}

/// An exec'd process: the same rules as a container's process.
pub fn convert_process(p: &oci::Process) -> Result<Process, SpecError> {
    serde_json::from_value(process_json(p)?).map_err(|e| SpecError::Invalid(e.to_string()))
}

fn process_json(p: &oci::Process) -> Result<Value, SpecError> {
    if p.Args.is_empty() {
        return Err(SpecError::Missing("process.args"));
    }
    if !p.ApparmorProfile.is_empty() || !p.SelinuxLabel.is_empty() {
        log!("ignoring host AppArmor profile / SELinux label (no such policy in the pod VM)");
    }
    let user = p.User.as_ref();
    let mut v = json!({
        "terminal": p.Terminal,
        "user": {
            "uid": user.map_or(0, |u| u.UID),
            "gid": user.map_or(0, |u| u.GID),
            "additionalGids": user.map(|u| u.AdditionalGids.clone()).unwrap_or_default(),
        },
        "args": p.Args,
        "env": effective_env(&p.Env),
        "cwd": if p.Cwd.is_empty() { "/" } else { p.Cwd.as_str() },
        "rlimits": p.Rlimits.iter().map(|r| json!({ "type": r.Type, "hard": r.Hard, "soft": r.Soft })).collect::<Vec<_>>(),
    });
    // Only `true` is passed on: libcontainer loads a seccomp filter while the process is still
    // privileged when the field is absent, but after dropping capabilities (where loading
    // without no_new_privs fails) whenever the field is present, even as `false`.
    if p.NoNewPrivileges {
        v["noNewPrivileges"] = json!(true);
    }
    if let Some(b) = p.ConsoleSize.as_ref() {
        v["consoleSize"] = json!({ "height": b.Height, "width": b.Width });
    }
    if let Some(c) = p.Capabilities.as_ref() {
        v["capabilities"] = json!({
            "bounding": c.Bounding, "effective": c.Effective, "inheritable": c.Inheritable,
            "permitted": c.Permitted, "ambient": c.Ambient,
        });
    }
    if p.OOMScoreAdj != 0 {
        v["oomScoreAdj"] = json!(p.OOMScoreAdj);
    }
    Ok(v)
}

/// libseccomp's name of the notify action (runtime spec `SCMP_ACT_NOTIFY`).
const SECCOMP_NOTIFY: &str = "SCMP_ACT_NOTIFY";
/// The errno action: the syscall is not made and returns `-errnoRet`.
const SECCOMP_ERRNO: &str = "SCMP_ACT_ERRNO";
/// The largest errno the kernel returns as such (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// The runtime spec's `linux.seccomp`; names are kept as given, so libcontainer rejects unknown
/// actions, architectures, flags and operators as a malformed spec.
fn seccomp(sc: &oci::LinuxSeccomp) -> Result<Value, SpecError> {
    if sc.DefaultAction == SECCOMP_NOTIFY || sc.Syscalls.iter().any(|s| s.Action == SECCOMP_NOTIFY) {
        return Err(SpecError::Unsupported(
            "seccomp notification (SCMP_ACT_NOTIFY) needs a listener outside the pod VM; not supported".into(),
        ));
    }
    // A rule that answers a syscall with success without making it (errno 0; libseccomp keeps
    // the low 16 bits, so 65536 is 0 too) would let the node's profile turn the runner's own
    // capset/prctl/setuid calls into silent no-ops: the process would keep the capabilities
    // and the user the policy judged away. Only real errors may be faked.
    for sys in &sc.Syscalls {
        if sys.Action == SECCOMP_ERRNO && sys.has_errnoret() && !(1..=MAX_ERRNO).contains(&sys.errnoret()) {
            return Err(SpecError::Invalid(format!(
                "seccomp rule for {:?}: errnoRet {} is not an error (1..={MAX_ERRNO}); a rule may not fake a \
                 syscall's success",
                sys.Names,
                sys.errnoret()
            )));
        }
    }
    let syscalls: Vec<Value> = sc
        .Syscalls
        .iter()
        .map(|sys| {
            let args: Vec<Value> = sys
                .Args
                .iter()
                .map(|a| json!({ "index": a.Index, "value": a.Value, "valueTwo": a.ValueTwo, "op": a.Op }))
                .collect();
            let mut v = json!({ "names": sys.Names, "action": sys.Action });
            if !args.is_empty() {
                v["args"] = Value::Array(args);
            }
            if sys.has_errnoret() {
                v["errnoRet"] = json!(sys.errnoret());
            }
            v
        })
        .collect();
    let mut v = json!({ "defaultAction": sc.DefaultAction, "syscalls": syscalls });
    if !sc.Architectures.is_empty() {
        v["architectures"] = json!(sc.Architectures);
    }
    if !sc.Flags.is_empty() {
        v["flags"] = json!(sc.Flags);
    }
    Ok(v)
}

fn id_mappings(m: &[oci::LinuxIDMapping]) -> Value {
    m.iter().map(|m| json!({ "hostID": m.HostID, "containerID": m.ContainerID, "size": m.Size })).collect()
}

/// cgroup limits as the runtime spec names them; zero means "not set" in kata's encoding.
pub fn resources(r: &oci::LinuxResources) -> Value {
    let mut v = Map::new();
    if let Some(m) = r.Memory.as_ref() {
        let mut mem = Map::new();
        for (k, val) in [("limit", m.Limit), ("reservation", m.Reservation), ("swap", m.Swap)] {
            if val != 0 {
                mem.insert(k.into(), json!(val));
            }
        }
        v.insert("memory".into(), Value::Object(mem));
    }
    if let Some(c) = r.CPU.as_ref() {
        let mut cpu = Map::new();
        if c.Shares != 0 {
            cpu.insert("shares".into(), json!(c.Shares));
        }
        if c.Quota != 0 {
            cpu.insert("quota".into(), json!(c.Quota));
        }
        if c.Period != 0 {
            cpu.insert("period".into(), json!(c.Period));
        }
        if !c.Cpus.is_empty() {
            cpu.insert("cpus".into(), json!(c.Cpus));
        }
        if !c.Mems.is_empty() {
            cpu.insert("mems".into(), json!(c.Mems));
        }
        v.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = r.Pids.as_ref() {
        if p.Limit != 0 {
            v.insert("pids".into(), json!({ "limit": p.Limit }));
        }
    }
    let devices: Vec<Value> = r
        .Devices
        .iter()
        .map(|d| {
            let mut o = json!({ "allow": d.Allow, "access": d.Access });
            if !d.Type.is_empty() {
                o["type"] = json!(d.Type);
            }
            if d.Major >= 0 && (d.Major != 0 || d.Minor != 0) {
                o["major"] = json!(d.Major);
                o["minor"] = json!(d.Minor);
            }
            o
        })
        .collect();
    if !devices.is_empty() {
        v.insert("devices".into(), Value::Array(devices));
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gets_the_last_entry_of_each_name() {
        let env = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let given = env(&["PATH=/bin", "MODE=default", "A=1=2", "LD_PRELOAD", "MODE=strict", "LD_PRELOAD=x", "B="]);
        assert_eq!(effective_env(&given), env(&["PATH=/bin", "A=1=2", "MODE=strict", "LD_PRELOAD=x", "B="]));
        assert_eq!(effective_env(&env(&["X=1", "X"])), env(&["X"]));
        assert!(effective_env(&[]).is_empty());
    }

    fn minimal() -> oci::Spec {
        let mut s = oci::Spec::new();
        let mut p = oci::Process::new();
        p.Args = vec!["echo".into(), "hello".into()];
        p.Env = vec!["PATH=/bin".into()];
        s.Process = Some(p).into();
        let mut r = oci::Root::new();
        r.Path = "/run/contrast/shared/c1/rootfs".into();
        s.Root = Some(r).into();
        s
    }

    #[test]
    fn minimal_spec_converts_with_guest_cgroup() {
        let c = convert("c1", &minimal()).expect("converts");
        let linux = c.spec.linux().as_ref().expect("linux");
        assert_eq!(linux.cgroups_path().as_deref(), Some(std::path::Path::new("/contrast/c1")));
        assert_eq!(c.spec.process().as_ref().expect("process").args().as_ref().expect("args")[1], "hello");
        assert!(!c.join_sandbox_pidns);
    }

    #[test]
    fn device_rules_pass_through_and_bad_ones_are_refused() {
        let mut s = minimal();
        let mut linux = oci::Linux::new();
        let mut resources = oci::LinuxResources::new();
        let mut rule = oci::LinuxDeviceCgroup::new();
        (rule.Allow, rule.Type, rule.Major, rule.Minor, rule.Access) = (true, "b".into(), 254, 0, "r".into());
        resources.Devices = vec![rule.clone()];
        linux.Resources = Some(resources.clone()).into();
        s.Linux = Some(linux.clone()).into();
        let c = convert("c1", &s).expect("converts");
        let r = c.spec.linux().as_ref().and_then(|l| l.resources().as_ref()).expect("resources");
        let d = &r.devices().as_ref().expect("devices")[0];
        assert_eq!((d.allow(), d.major(), d.minor(), d.access().as_deref()), (true, Some(254), Some(0), Some("r")));

        rule.Access = "rx".into();
        resources.Devices = vec![rule];
        linux.Resources = Some(resources).into();
        s.Linux = Some(linux).into();
        let Err(err) = convert("c1", &s) else { panic!("a rule with access x converted") };
        assert!(matches!(&err, SpecError::Invalid(m) if m.contains("device rule 0")), "{err}");
    }

    #[test]
    fn missing_process_is_named() {
        let mut s = minimal();
        s.Process = None.into();
        assert!(matches!(convert("c1", &s), Err(SpecError::Missing("process"))));
    }

    fn seccomp_profile() -> oci::LinuxSeccomp {
        let mut sc = oci::LinuxSeccomp::new();
        sc.DefaultAction = "SCMP_ACT_ALLOW".into();
        sc.Architectures = vec!["SCMP_ARCH_X86_64".into()];
        sc.Flags = vec!["SECCOMP_FILTER_FLAG_LOG".into()];
        let mut deny = oci::LinuxSyscall::new();
        deny.Names = vec!["mkdir".into(), "mkdirat".into()];
        deny.Action = "SCMP_ACT_ERRNO".into();
        deny.set_errnoret(13);
        let mut personality = oci::LinuxSyscall::new();
        personality.Names = vec!["personality".into()];
        personality.Action = "SCMP_ACT_KILL_PROCESS".into();
        let mut arg = oci::LinuxSeccompArg::new();
        arg.Index = 0;
        arg.Value = 0xffff_ffff;
        arg.ValueTwo = 0;
        arg.Op = "SCMP_CMP_NE".into();
        personality.Args.push(arg);
        sc.Syscalls = vec![deny, personality];
        sc
    }

    fn with_seccomp(sc: oci::LinuxSeccomp) -> oci::Spec {
        let mut s = minimal();
        let mut l = oci::Linux::new();
        l.Seccomp = Some(sc).into();
        s.Linux = Some(l).into();
        s
    }

    #[test]
    fn seccomp_rules_faking_success_are_refused() {
        for errno in [0, 65536, 4096] {
            let mut sc = seccomp_profile();
            let mut fake = oci::LinuxSyscall::new();
            fake.Names = vec!["capset".into()];
            fake.Action = "SCMP_ACT_ERRNO".into();
            fake.set_errnoret(errno);
            sc.Syscalls.push(fake);
            let Err(err) = convert("c1", &with_seccomp(sc)) else { panic!("errnoRet {errno} converted") };
            assert!(
                matches!(&err, SpecError::Invalid(m) if m.contains("capset") && m.contains("not an error")),
                "{errno}: {err}"
            );
        }
        // Real errors pass, and an errno rule without errnoRet is EPERM (libcontainer's default).
        let mut sc = seccomp_profile();
        let mut eperm = oci::LinuxSyscall::new();
        eperm.Names = vec!["capset".into()];
        eperm.Action = "SCMP_ACT_ERRNO".into();
        sc.Syscalls.push(eperm);
        let mut enosys = oci::LinuxSyscall::new();
        enosys.Names = vec!["clone3".into()];
        enosys.Action = "SCMP_ACT_ERRNO".into();
        enosys.set_errnoret(38);
        sc.Syscalls.push(enosys);
        convert("c1", &with_seccomp(sc)).expect("EPERM and ENOSYS rules convert");
    }

    #[test]
    fn seccomp_profile_reaches_libcontainer_whole() {
        let converted = convert("c1", &with_seccomp(seccomp_profile())).expect("converts");
        let sc = converted.spec.linux().as_ref().and_then(|l| l.seccomp().clone()).expect("seccomp kept");
        let v = serde_json::to_value(&sc).expect("json");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(v["flags"], json!(["SECCOMP_FILTER_FLAG_LOG"]));
        assert_eq!(v["syscalls"][0]["names"], json!(["mkdir", "mkdirat"]));
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(v["syscalls"][0]["errnoRet"], 13);
        assert_eq!(v["syscalls"][1]["action"], "SCMP_ACT_KILL_PROCESS");
        assert!(v["syscalls"][1].get("errnoRet").is_none_or(Value::is_null), "{v}");
        assert_eq!(
            v["syscalls"][1]["args"][0],
            json!({ "index": 0, "value": 0xffff_ffffu64, "valueTwo": 0, "op": "SCMP_CMP_NE" })
        );
    }

    #[test]
    fn malformed_seccomp_and_notify_are_refused() {
        let mut bad = seccomp_profile();
        bad.DefaultAction = "SCMP_ACT_MAYBE".into();
        assert!(matches!(convert("c1", &with_seccomp(bad)), Err(SpecError::Invalid(_))));
        let mut bad_op = seccomp_profile();
        bad_op.Syscalls[1].Args[0].Op = "SCMP_CMP_SOMETIMES".into();
        assert!(matches!(convert("c1", &with_seccomp(bad_op)), Err(SpecError::Invalid(_))));
        let mut notify = seccomp_profile();
        notify.Syscalls[0].Action = "SCMP_ACT_NOTIFY".into();
        let err = convert("c1", &with_seccomp(notify)).err().expect("refused");
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
        // An empty message (what kata sends for "no profile") means no filter.
        let converted = convert("c1", &with_seccomp(oci::LinuxSeccomp::new())).expect("converts");
        assert!(converted.spec.linux().as_ref().and_then(|l| l.seccomp().clone()).is_none());
    }

    fn with_namespaces(list: &[(&str, &str)]) -> oci::Spec {
        let mut s = minimal();
        let mut l = oci::Linux::new();
        for (t, p) in list {
            let mut ns = oci::LinuxNamespace::new();
            ns.Type = (*t).into();
            ns.Path = (*p).into();
            l.Namespaces.push(ns);
        }
        s.Linux = Some(l).into();
        s
    }

    fn namespace_types(c: &Converted) -> Vec<String> {
        let nss = c.spec.linux().as_ref().expect("linux").namespaces().clone().unwrap_or_default();
        nss.iter().map(|n| format!("{:?}", n.typ())).collect()
    }

    #[test]
    fn host_namespace_paths_are_dropped_and_pid_path_means_sharing() {
        let s = with_namespaces(&[("pid", "/proc/77/ns/pid"), ("network", "/proc/77/ns/net"), ("mount", "")]);
        let c = convert("c1", &s).expect("converts");
        assert!(c.join_sandbox_pidns);
        assert_eq!(namespace_types(&c), ["Mount"], "only the mount namespace is left");
    }

    #[test]
    fn the_pods_namespaces_are_the_vms_also_for_the_pause_container() {
        // containerd's pause spec: everything new, the network namespace at the CNI netns.
        let mut s = with_namespaces(&[
            ("pid", ""),
            ("ipc", ""),
            ("uts", ""),
            ("mount", ""),
            ("network", "/var/run/netns/cni-1234"),
        ]);
        s.Hostname = "web-0".into();
        let c = convert("pause", &s).expect("converts");
        assert_eq!(namespace_types(&c), ["Pid", "Mount"]);
        assert!(c.spec.hostname().is_none(), "the pod's hostname is the VM's, set by CreateSandbox");
        assert!(!c.join_sandbox_pidns);
    }

    #[test]
    fn sysctls_of_the_pods_namespaces_go_to_the_vm() {
        let mut s = with_namespaces(&[("ipc", ""), ("mount", "")]);
        let mut l = s.Linux.take().expect("linux");
        for (k, v) in [
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "100"),
            ("vm.overcommit_memory", "1"),
        ] {
            l.Sysctl.insert(k.into(), v.into());
        }
        s.Linux = Some(l).into();
        let c = convert("pause", &s).expect("converts");
        let keys: Vec<&str> = c.pod_sysctls.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fs.mqueue.msg_max",
                "kernel.shm_rmid_forced",
                "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.ping_group_range"
            ]
        );
        // What is not the pod's stays with libcontainer, which judges it as runc would.
        let own = c.spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default();
        assert_eq!(own.keys().collect::<Vec<_>>(), ["vm.overcommit_memory"]);
    }

    #[test]
    fn device_nodes_only_below_dev() {
        for ok in ["/dev/fuse", "/dev/net/tun"] {
            assert!(device_path(ok), "{ok}");
        }
        for bad in ["/dev/../etc/app.conf", "/dev/./x", "/dev//x", "/dev/", "/dev", "/etc/x", "dev/x", "/dev/x/.."] {
            assert!(!device_path(bad), "{bad}");
        }
        let mut s = minimal();
        let mut d = oci::LinuxDevice::new();
        d.Path = "/dev/../usr/lib/python3/site-packages/x.pth".into();
        d.Type = "b".into();
        s.Linux.mut_or_insert_default().Devices.push(d);
        let err = convert("c", &s).err().expect("a device node outside /dev").to_string();
        assert!(err.contains("not a canonical path below /dev/"), "{err}");
    }

    #[test]
    fn a_sysctl_name_cannot_leave_proc_sys() {
        use std::path::Path;
        assert_eq!(
            sysctl_path("net.ipv4.ping_group_range").expect("valid"),
            Path::new("/proc/sys/net/ipv4/ping_group_range")
        );
        for bad in ["net..ipv4", "net.ipv4/../../etc/passwd", "net.", "", "fs.mqueue.msg max"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
        let mut s = with_namespaces(&[("mount", "")]);
        let mut l = s.Linux.take().expect("linux");
        l.Sysctl.insert("net.ipv4/../../../etc/x".into(), "1".into());
        s.Linux = Some(l).into();
        assert!(matches!(convert("c", &s), Err(SpecError::Invalid(_))));
    }
}
