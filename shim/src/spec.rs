//! The container's OCI spec (bundle `config.json`) in the kata protobuf form the agent takes,
//! with host paths rewritten to where the guest sees them.

use contrast_agent_protocol::oci;
use oci_spec::runtime::{Mount, Process, Spec};

/// kata's CRI annotations the shim reads (containerd `pkg/cri/annotations`).
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Pod grouping of a container: the sandbox it belongs to (itself without CRI annotations).
pub fn sandbox_id(spec: &Spec, container_id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_owned())
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
        l.Type = serde_json::to_value(r.typ()).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
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
        for ns in l.namespaces().as_deref().unwrap_or_default() {
            let mut pn = oci::LinuxNamespace::new();
            pn.Type =
                serde_json::to_value(ns.typ()).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            pn.Path = ns.path().as_ref().map(|p| p.display().to_string()).unwrap_or_default();
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
            let mut s = oci::LinuxSeccomp::new();
            s.DefaultAction = format!("{:?}", sc.default_action());
            linux.Seccomp = Some(s).into();
        }
        out.Linux = Some(linux).into();
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
