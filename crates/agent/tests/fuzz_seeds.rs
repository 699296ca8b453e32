//! The committed seeds of the protobuf fuzz targets (`agent_oci_spec`, `agent_storage` in
//! fuzz/corpus) are these requests, shaped like the ones the shim sends, and the agent
//! accepts each of them. `CONTRAST_UPDATE_SEEDS=1 cargo test -p contrast-agent --test
//! fuzz_seeds` rewrites them after a protocol change.

use contrast_agent_protocol::{agent, oci};
use protobuf::Message;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn mount(destination: &str, source: &str, kind: &str, options: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = destination.into();
    m.source = source.into();
    m.type_ = kind.into();
    m.options = strings(options);
    m
}

fn namespace(kind: &str, path: &str) -> oci::LinuxNamespace {
    let mut n = oci::LinuxNamespace::new();
    n.Type = kind.into();
    n.Path = path.into();
    n
}

/// A container as containerd's CRI plugin specifies it, converted by the shim.
fn container_spec() -> oci::Spec {
    let mut s = oci::Spec::new();
    s.Version = "1.1.0".into();
    let mut p = oci::Process::new();
    p.Args = strings(&["sh", "-c", "echo hello; sleep 1000"]);
    p.Env = strings(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod"]);
    p.Cwd = "/".into();
    let mut user = oci::User::new();
    user.UID = 1000;
    user.GID = 1000;
    user.AdditionalGids = vec![10, 1000];
    p.User = Some(user).into();
    let mut caps = oci::LinuxCapabilities::new();
    caps.Bounding = strings(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    caps.Effective = caps.Bounding.clone();
    caps.Permitted = caps.Bounding.clone();
    p.Capabilities = Some(caps).into();
    let mut rlimit = oci::POSIXRlimit::new();
    rlimit.Type = "RLIMIT_NOFILE".into();
    rlimit.Hard = 1024;
    rlimit.Soft = 1024;
    p.Rlimits = vec![rlimit];
    p.NoNewPrivileges = true;
    p.OOMScoreAdj = 1000;
    s.Process = Some(p).into();
    let mut root = oci::Root::new();
    root.Path = "/run/kata-containers/shared/containers/c1/rootfs".into();
    s.Root = Some(root).into();
    s.Hostname = "pod".into();
    s.Mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
        mount("/etc/hosts", "/run/kata-containers/shared/containers/c1-hosts", "bind", &["rbind", "rprivate", "ro"]),
    ];
    s.Annotations.insert("io.kubernetes.cri.container-type".into(), "container".into());
    s.Annotations.insert("io.kubernetes.cri.sandbox-id".into(), "sandbox".into());
    let mut linux = oci::Linux::new();
    linux.Namespaces = vec![namespace("pid", ""), namespace("ipc", "/proc/7/ns/ipc"), namespace("mount", "")];
    linux.Sysctl.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    linux.CgroupsPath = "/kubepods/besteffort/pod1/c1".into();
    linux.MaskedPaths = strings(&["/proc/kcore", "/sys/firmware"]);
    linux.ReadonlyPaths = strings(&["/proc/sys", "/proc/sysrq-trigger"]);
    let mut resources = oci::LinuxResources::new();
    let mut memory = oci::LinuxMemory::new();
    memory.Limit = 64 << 20;
    resources.Memory = Some(memory).into();
    let mut cpu = oci::LinuxCPU::new();
    cpu.Shares = 2;
    cpu.Quota = 50000;
    cpu.Period = 100000;
    resources.CPU = Some(cpu).into();
    linux.Resources = Some(resources).into();
    let mut seccomp = oci::LinuxSeccomp::new();
    seccomp.DefaultAction = "SCMP_ACT_ERRNO".into();
    seccomp.Architectures = strings(&["SCMP_ARCH_X86_64"]);
    let mut allow = oci::LinuxSyscall::new();
    allow.Names = strings(&["read", "write", "exit_group"]);
    allow.Action = "SCMP_ACT_ALLOW".into();
    seccomp.Syscalls = vec![allow];
    linux.Seccomp = Some(seccomp).into();
    s.Linux = Some(linux).into();
    s
}

fn storage(driver: &str, source: &str, fstype: &str, options: &[&str], mount_point: &str) -> agent::Storage {
    let mut s = agent::Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.fstype = fstype.into();
    s.options = strings(options);
    s.mount_point = mount_point.into();
    s
}

fn corpus(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Compares a seed with its committed file, as a message (map fields encode in no fixed
/// order), or writes it with `CONTRAST_UPDATE_SEEDS=1`.
fn check_seed<M: Message + PartialEq + std::fmt::Debug>(target: &str, name: &str, seed: &M) {
    let path = corpus(target).join(name);
    if std::env::var_os("CONTRAST_UPDATE_SEEDS").is_some() {
        std::fs::create_dir_all(corpus(target)).expect("corpus dir");
        std::fs::write(&path, seed.write_to_bytes().expect("encode")).expect("seed written");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let committed = M::parse_from_bytes(&committed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        &committed == seed,
        "{} is stale: CONTRAST_UPDATE_SEEDS=1 cargo test -p contrast-agent --test fuzz_seeds",
        path.display()
    );
}

#[test]
fn oci_spec_seeds_convert() {
    let spec = container_spec();
    let mut sandbox = spec.clone();
    sandbox.Annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    if let Some(p) = sandbox.Process.as_mut() {
        p.Args = strings(&["/pause"]);
    }
    sandbox.Mounts.clear();
    for (name, s) in [("container", spec), ("sandbox", sandbox)] {
        contrast_agent::spec::convert("seed", &s).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        check_seed("agent_oci_spec", name, &s);
    }
}

#[test]
fn storage_seeds_are_accepted() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let root_hash = "cd".repeat(32);
    let layer_options = [
        format!("digest={digest}"),
        format!("root_hash={root_hash}"),
        "salt=00ff".to_owned(),
        "data_blocks=1024".to_owned(),
    ];
    let layer_options: Vec<&str> = layer_options.iter().map(String::as_str).collect();
    let seeds = [
        ("virtio-fs", storage("virtio-fs", "contrast-shared", "virtiofs", &["nodev"], "/run/kata-containers/shared")),
        ("ephemeral", storage("ephemeral", "tmpfs", "tmpfs", &["size=64m", "nosuid"], "/run/kata-containers/e/c1")),
        ("layer", storage("contrast.layer", "0:3", "erofs", &layer_options, "/run/contrast/layers/l1")),
        (
            "overlayfs",
            storage(
                "overlayfs",
                "overlay",
                "overlay",
                &[
                    "lowerdir=/run/contrast/layers/l2:/run/contrast/layers/l1",
                    "upperdir=/run/contrast/upper/c1/upper",
                    "workdir=/run/contrast/upper/c1/work",
                ],
                "/run/kata-containers/c1/rootfs",
            ),
        ),
    ];
    for (name, s) in seeds {
        contrast_agent::storage::plan(&s).unwrap_or_else(|e| panic!("seed {name}: {e}"));
        check_seed("agent_storage", name, &s);
    }
}
