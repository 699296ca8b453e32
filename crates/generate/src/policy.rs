//! The generated `policy.rego`: kata's rule names over kata's input shape (the guest agent
//! builds the same input), rules fixed, pinned values as `policy_data`.

/// One layer as the policy pins it (what the guest's dm-verity needs, from the blob alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLayer {
    pub digest: String,
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImage {
    /// The image name containerd knows it by (CRI annotation `io.kubernetes.cri.image-name`).
    pub name: String,
    /// Bottom first, as the manifest lists them.
    pub layers: Vec<PinnedLayer>,
    /// The only command a container of this image may run: its Entrypoint and Cmd, or what
    /// the pod spec gives instead.
    pub command: Vec<String>,
    /// The image's own environment (`NAME=VALUE`).
    pub env: Vec<String>,
    /// The only working directory a process of this image's containers may start in.
    pub working_dir: String,
    /// Capabilities the pod spec adds beyond containerd's defaults (`CAP_NET_ADMIN`, …).
    pub capabilities_added: Vec<String>,
    /// The pod's `emptyDir` volumes this image's containers mount: (volume name, where).
    pub empty_dirs: Vec<(String, String)>,
    /// Where this image's containers mount a configMap, secret, projected or downwardAPI
    /// volume: files the node writes (and may change), copied into the guest, read-only.
    pub config_volumes: Vec<String>,
    /// The user and group its containers' processes run as.
    pub user: crate::ProcessUser,
    /// The only supplementary groups its containers' processes may have (sorted).
    pub groups: Vec<u32>,
    /// Its containers must run with `no_new_privs` (the pod spec's
    /// `allowPrivilegeEscalation: false`).
    pub no_new_privileges: bool,
    /// Its containers' root file system must be read-only (`readOnlyRootFilesystem: true`).
    pub read_only_root: bool,
    /// The container spec's environment (`NAME=VALUE`): each entry must be there, exactly.
    pub container_env: Vec<String>,
}

/// What the pod adds for all of its containers: the commands an exec may run, the
/// environment variables (`NAME=VALUE`) its spec sets, sysctls, stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAllowances {
    pub execs: Vec<Vec<String>>,
    pub env: Vec<String>,
    /// Sysctls beyond those Kubernetes calls safe (the pod spec's `securityContext.sysctls`).
    pub sysctls: Vec<String>,
    /// Whether the host may write to a process's stdin (the pod spec's `stdin: true`).
    pub stdin: bool,
    /// Ports of the pod's loopback the node may connect to (CRI `PortForward`,
    /// `kubectl port-forward`).
    pub port_forward: Vec<u16>,
}

/// Rules: the pod lifecycle allowed; `SetPolicy` refused; the sandbox container only as the
/// guest's own pause; other containers only from their image's pinned layers, with their
/// pinned command, working directory, environment, user and groups (and `no_new_privs` and a
/// read-only root where the pod spec asks for them); execs only of the commands the policy
/// lists (none unless asked: an exec is the host running code of its choice next to the
/// pod's data), each judged by the image its container was allowed from (kept in the
/// policy's state).
const RULES: &str = r#"package agent_policy

default DestroySandboxRequest := true
default StartContainerRequest := true
# A removed container's image leaves the policy's state (a later container under its id
# must not be judged by it).
default RemoveContainerRequest := true
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": state_path}]} if {
    plain_id(input.container_id)
    _ = data.pstate[input.container_id]
}
default WaitProcessRequest := true
default SignalProcessRequest := true
default ReadStreamRequest := true
# A process's stdin is the host's input: a pinned command that reads it (a shell, an
# interpreter) would run what the host writes. Only when the pod spec asks for stdin.
default WriteStreamRequest := false
WriteStreamRequest if { policy_data.stdin == true }
# `kubectl port-forward` reaches what listens on the pod's loopback, which the pod network
# never exposes to the node: only the ports the policy lists.
default PortForwardRequest := false
PortForwardRequest if { input.port in policy_data.port_forward }
default CloseStdinRequest := true
default TtyWinResizeRequest := true
default GetOOMEventRequest := true
default StatsContainerRequest := true
default ListProcessesRequest := true
default UpdateContainerRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
default SetPolicyRequest := false

# The sandbox mounts nothing: every storage is judged with the container it is for.
default CreateSandboxRequest := false
CreateSandboxRequest if { count(input.storages) == 0 }


image_name := input.OCI.Annotations["io.kubernetes.cri.image-name"]

is_sandbox if { input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox" }

# The pod's sandbox runs the guest's own pause, from no image at all.
pause_allowed if {
    is_sandbox
    input.OCI.Root.Path == "/run/contrast/pause"
    input.OCI.Process.Args == ["/pause"]
    count(input.storages) == 0
    mounts_allowed
}

layer_storages := [s | some s in input.storages; s.driver == "contrast.layer"]

# Each guest path a container's storages use, from its id alone.
layer_dir(i) := concat("", ["/run/contrast/layers/", input.container_id, "/", format_int(i, 10)])
upper_dir := concat("", ["/run/contrast/upper/", input.container_id])
rootfs_dir := concat("", ["/run/contrast/rootfs/", input.container_id])

# The four options and nothing else: a second `root_hash=` must not hide behind the pinned one.
layer_matches(s, l) if {
    count(s.options) == 4
    concat("=", ["digest", l.digest]) in s.options
    concat("=", ["root_hash", l.root_hash]) in s.options
    concat("=", ["salt", l.salt]) in s.options
    concat("=", ["data_blocks", format_int(l.data_blocks, 10)]) in s.options
}

# Exactly the image's layers, in order, each at its own place, then one overlay of them that
# is the container's root, with a fresh upper layer of its own.
layers_allowed(pinned) if {
    n := count(pinned.layers)
    n > 0
    count(input.storages) == n + 1
    every i in numbers.range(0, n - 1) {
        s := input.storages[i]
        s.driver == "contrast.layer"
        s.mount_point == layer_dir(i)
        layer_matches(s, pinned.layers[i])
    }
    overlay := input.storages[n]
    overlay.driver == "overlayfs"
    overlay.mount_point == rootfs_dir
    input.OCI.Root.Path == rootfs_dir
    lower := concat(":", [layer_dir(n - 1 - i) | some i in numbers.range(0, n - 1)])
    want := {
        concat("=", ["lowerdir", lower]),
        concat("", ["upperdir=", upper_dir, "/upper"]),
        concat("", ["workdir=", upper_dir, "/work"]),
    }
    count(overlay.options) == count(want)
    {o | some o in overlay.options} == want
}

command_allowed(pinned) if { input.OCI.Process.Args == pinned.command }

# The image's user and group (or the pod spec's `runAsUser`/`runAsGroup`): as root, a
# program the image runs unprivileged could write where it should not, or behave otherwise.
user_allowed(pinned, process) if {
    user_ids_allowed(pinned, process)
    count(groups_denied(pinned, process)) == 0
}
user_ids_allowed(pinned, process) if {
    process.User.UID == pinned.user.uid
    process.User.GID == pinned.user.gid
}
# Supplementary groups only from the pinned ones: the user's primary group, the image's
# /etc/group memberships containerd adds, the pod spec's `supplementalGroups` and `fsGroup`.
# A group the node adds (0, say) would open files the pod keeps from its processes.
groups_denied(pinned, process) := {g | some g in process.User.AdditionalGids; not g in pinned.groups}

# What the pod spec makes stricter, the node must not loosen: `allowPrivilegeEscalation:
# false` (without `no_new_privs` a setuid program of the image raises a process's
# privileges again) and `readOnlyRootFilesystem`.
privileges_allowed(pinned, _) if { not pinned.no_new_privileges }
privileges_allowed(pinned, process) if { process.NoNewPrivileges == true }
root_allowed(pinned) if { not pinned.read_only_root }
root_allowed(_) if { input.OCI.Root.Readonly == true }

# Environment: what the image's config sets, what the pod's spec sets (`policy_data.env`), the
# pod's hostname, a terminal's TERM, and what Kubernetes derives from the services of the
# pod's namespace (addresses, ports, protocols only). Nothing else: a variable such as
# LD_PRELOAD or BASH_ENV would make a program of the image run code of the host's choice.
env_allowed(pinned, e) if { e in pinned.env }
env_allowed(pinned, e) if { e in pinned.container_env }
env_allowed(_, e) if { e in policy_data.env }
# containerd's default PATH, when the image sets none.
env_allowed(pinned, e) if {
    e == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    not "PATH" in pinned_env_names(pinned)
}
pinned_env_names(pinned) := {env_name(x) | some x in pinned.env}
# A variable the image sets keeps the image's value or takes the pod spec's, never one that
# only has the shape of a hostname or a service address.
env_value_denied(pinned, e) if {
    env_name(e) in pinned_env_names(pinned)
    not e in pinned.env
    not e in pinned.container_env
    not e in policy_data.env
}
env_allowed(_, e) if { e == "TERM=xterm" }
env_allowed(_, e) if {
    startswith(e, "HOSTNAME=")
    value := substring(e, count("HOSTNAME="), -1)
    count(value) > 0
    trim(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == ""
}
env_allowed(_, e) if {
    i := indexof(e, "=")
    i > 0
    service_env(substring(e, 0, i), substring(e, i + 1, -1))
}
# Kubernetes' service links, exactly as the kubelet writes them for a service S with port P of
# protocol PROTO (and port name N): S_SERVICE_HOST=<ip>, S_SERVICE_PORT=<P>,
# S_SERVICE_PORT_N=<P>, S_PORT=<proto>://<ip>:<P>, S_PORT_P_PROTO=<proto>://<ip>:<P>,
# S_PORT_P_PROTO_PROTO=<proto>, S_PORT_P_PROTO_PORT=<P>, S_PORT_P_PROTO_ADDR=<ip>. Nothing
# looser: a `JMX_PORT=9999` has the name of a link but is an application's switch.
service_env(n, v) if { service_name(n, "_SERVICE_HOST"); ip_value(v) }
service_env(n, v) if { service_name(n, "_SERVICE_PORT"); port_value(v) }
service_env(n, v) if {
    some i in indexof_n(n, "_SERVICE_PORT_")
    upper_name(substring(n, 0, i))
    upper_name(substring(n, i + count("_SERVICE_PORT_"), -1))
    port_value(v)
}
service_env(n, v) if { service_name(n, "_PORT"); url_value(v) }
service_env(n, v) if { port_link(n, []); url_value(v) }
service_env(n, v) if { port_link(n, ["PROTO"]); v in {"tcp", "udp", "sctp"} }
service_env(n, v) if { port_link(n, ["PORT"]); port_value(v) }
service_env(n, v) if { port_link(n, ["ADDR"]); ip_value(v) }
service_name(n, suffix) if {
    endswith(n, suffix)
    upper_name(substring(n, 0, count(n) - count(suffix)))
}
# S_PORT_<P>_<PROTO> followed by `tail`. The service's own name may contain `_PORT_` (a
# service `db-port`): every occurrence is tried as the one after the name.
port_link(n, tail) if {
    some i in indexof_n(n, "_PORT_")
    upper_name(substring(n, 0, i))
    rest := split(substring(n, i + count("_PORT_"), -1), "_")
    count(rest) == 2 + count(tail)
    port_value(rest[0])
    rest[1] in {"TCP", "UDP", "SCTP"}
    array.slice(rest, 2, count(rest)) == tail
}
upper_name(s) if {
    count(s) > 0
    trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == ""
}
port_value(v) if {
    count(v) > 0
    count(v) <= 5
    trim(v, "0123456789") == ""
}
ip_value(v) if {
    count(v) > 0
    trim(v, "0123456789abcdefABCDEF.:") == ""
}
url_value(v) if {
    some scheme in {"tcp://", "udp://", "sctp://"}
    startswith(v, scheme)
    host_port(substring(v, count(scheme), -1))
}
host_port(hp) if {
    parts := split(hp, ":")
    count(parts) == 2
    ip_value(parts[0])
    port_value(parts[1])
}
host_port(hp) if {
    startswith(hp, "[")
    j := indexof(hp, "]:")
    j > 1
    ip_value(substring(hp, 1, j - 1))
    port_value(substring(hp, j + 2, -1))
}
# What a process gets is judged: the last entry of each name (the agent drops the earlier
# ones, as runc does). containerd lists the image's variables before the container spec's, so
# a spec's value of a name the image sets comes last.
# (Sorted by name, then position, the last of each name is the one before another name:
# Kubernetes' service variables can make the list long, and it is the node's, before any
# dropping, so no comparing every entry with every other.) In name order; the rules below
# take this effective list.
effective_env(env) := [env[pair[1]] |
    sorted := sort([[env_name(e), i] | some i, e in env])
    some k, pair in sorted
    not same_name_next(sorted, k)
]
same_name_next(sorted, k) if { sorted[k + 1][0] == sorted[k][0] }
env_denied(pinned, effective) := {e | some e in effective; not env_allowed(pinned, e)} | {e |
    some e in effective
    env_value_denied(pinned, e)
}

# Every variable of the image's there (with its own value, the container spec's or the pod
# spec's): without one, a program may fall back to an unsafe default (no password, no
# authentication). (A name is what comes before the first `=`, all of an entry without one,
# as the agent takes it.)
env_name(e) := substring(e, 0, indexof(e, "=")) if { contains(e, "=") } else := e
image_env_missing(pinned, env) := {n |
    some n in pinned_env_names(pinned)
    not n in {env_name(f) | some f in env}
}
# The container spec's own variables (`--container-env`), each with its value: leaving one
# out, or changing it, can change what the program does as much as any other input. In a
# container and in an exec (containerd gives it the container's), each is what the process
# gets: no other value of its name (not the pod-wide `--env`'s, not one of a service
# variable's shape, not the image's) follows it.
container_env_missing(pinned, effective) := {e | some e in pinned.container_env; not e in effective}

# Capabilities: in every set, at most containerd's defaults for an unprivileged container
# (containerd's `pkg/oci` default capability list)
# and what the pod spec adds for the image; a container the host made privileged (every
# capability) is refused.
default_capabilities := {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
}
capability_sets := ["Bounding", "Effective", "Inheritable", "Permitted", "Ambient"]
capability_allowed(_, c) if { c in default_capabilities }
capability_allowed(pinned, c) if { c in pinned.capabilities_added }
capabilities_denied(pinned, process) := {c |
    some set in capability_sets
    some c in process.Capabilities[set]
    not capability_allowed(pinned, c)
}

# Kernel file systems, which carry no bytes of the host's, only at or below /proc, /sys and
# /dev (none of which shows the image's files): one over a directory of the image would
# hide what the policy pinned there (an application's configuration, say, for its
# defaults); and bind mounts only of the files the host copied in for this container, each
# at its own place. A mount is a bind by its options as much as by its type (`none` with
# `rbind` binds a guest path).
kernel_file_systems := {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"}
kernel_path(p) if {
    some d in {"/proc", "/sys", "/dev"}
    p == d
}
kernel_path(p) if {
    some d in {"/proc/", "/sys/", "/dev/"}
    startswith(p, d)
    canonical(p)
}
# Every component a plain name: no `..`, `.` or empty one.
canonical(p) if {
    startswith(p, "/")
    parts := split(p, "/")
    every i, c in parts {
        plain_component(i, c)
    }
}
plain_component(0, _) := true
plain_component(i, c) if {
    i > 0
    not c in {"", ".", ".."}
}
# /proc/self, /proc/thread-self and /proc/<pid> lead (through `root`, `cwd`, `fd`) back into
# the container's own files.
proc_magic(p) if {
    startswith(p, "/proc/")
    split(p, "/")[2] in {"self", "thread-self"}
}
proc_magic(p) if {
    startswith(p, "/proc/")
    trim(split(p, "/")[2], "0123456789") == ""
}
hidden_path_allowed(p) if {
    some d in {"/proc/", "/sys/"}
    startswith(p, d)
    canonical(p)
    not proc_magic(p)
}
is_bind(m) if { m.type_ == "bind" }
is_bind(m) if {
    some o in m.options
    o in {"bind", "rbind"}
}
copied_files := {"/etc/hosts": "hosts", "/etc/hostname": "hostname", "/etc/resolv.conf": "resolv.conf"}
mount_allowed(m) if {
    not is_bind(m)
    m.type_ in kernel_file_systems
    kernel_path(m.destination)
    not proc_magic(m.destination)
}
mount_allowed(m) if {
    is_bind(m)
    name := copied_files[m.destination]
    m.source == concat("", ["/run/kata-containers/shared/containers/", input.container_id, "-", name])
    copied_file_options_allowed(m)
}
# With a read-only root (the pod spec's readOnlyRootFilesystem) containerd mounts them
# read-only too.
copied_file_options_allowed(_) if { not policy_data.images[image_name].read_only_root }
copied_file_options_allowed(m) if read_only(m)
# The pod's emptyDir volumes (a directory of the pod's own in the guest, shared by its
# containers), each only where the pod spec mounts it: anywhere else it would hide the
# image's files.
default image_empty_dirs := []
image_empty_dirs := v if { v := policy_data.images[image_name].empty_dirs }
mount_allowed(m) if {
    is_bind(m)
    some v in image_empty_dirs
    m.destination == v.destination
    m.source == concat("/", ["/run/contrast/volumes", v.name])
}
# The node's configMap, secret, projected and downwardAPI volumes: files the node writes
# (a service account token, configuration) and the pod reads, copied for this container
# (`<container id>.volumes/<name>`), read-only, only where the pod spec mounts one. What
# they hold is the node's: the policy pins where they appear, not what they say.
default image_config_volumes := []
image_config_volumes := v if { v := policy_data.images[image_name].config_volumes }
config_volume_dir := "/run/kata-containers/shared/containers/"
# A subPath of such a volume (a file or a directory of it) is copied once for this container
# and mount (`<container id>.subpaths/<mount index>`) and allowed alike (`--config-volume`
# names the subPath mount's path).
mount_allowed(m) if {
    is_bind(m)
    m.destination in image_config_volumes
    own_config_copy(m.source)
    read_only(m)
}
own_config_copy(source) if volume_label(own_copy_name(source, ".volumes/"))
own_config_copy(source) if mount_index(own_copy_name(source, ".subpaths/"))
# What follows this container's `<id><kind>` in the copies' directory.
own_copy_name(source, kind) := substring(source, count(prefix), -1) if {
    prefix := concat("", [config_volume_dir, input.container_id, kind])
    startswith(source, prefix)
}
read_only(m) if {
    "ro" in m.options
    not "rw" in m.options
}
mount_index(i) if {
    count(i) > 0
    count(i) <= 4
    trim(i, "0123456789") == ""
}
# Their files: <dir>/<container id>.volumes/<volume name>/<path in the volume> and
# <dir>/<container id>.subpaths/<mount index>[/<path in a directory>] (the agent takes only
# canonical paths); mounted only as above.
CopyFileRequest if {
    startswith(input.path, config_volume_dir)
    own_copy_path(split(substring(input.path, count(config_volume_dir), -1), "/"))
}
own_copy_path(parts) if {
    count(parts) > 2
    endswith(parts[0], ".volumes")
    plain_id(trim_suffix(parts[0], ".volumes"))
    volume_label(parts[1])
}
# A volume's own directory as a directory (S_IFDIR): the list of the files it keeps (the
# agent removes the rest — a key removed from a configMap — and makes it if it is not there).
own_copy_path(parts) if {
    count(parts) == 2
    endswith(parts[0], ".volumes")
    plain_id(trim_suffix(parts[0], ".volumes"))
    volume_label(parts[1])
    bits.and(input.file_mode, 61440) == 16384
}
own_copy_path(parts) if {
    count(parts) > 1
    endswith(parts[0], ".subpaths")
    plain_id(trim_suffix(parts[0], ".subpaths"))
    mount_index(parts[1])
}
# A Kubernetes volume name: a DNS label.
volume_label(n) if {
    count(n) > 0
    count(n) <= 63
    trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
    not startswith(n, "-")
    not endswith(n, "-")
}
mounts_allowed if {
    every m in input.OCI.Mounts { mount_allowed(m) }
    count(hidden_paths_denied) == 0
    count(devices_denied) == 0
    count(device_rules_denied) == 0
    count(sysctls_denied) == 0
    namespaces_allowed
}

# Masked and read-only paths only of the kernel's own files below /proc and /sys, never
# through a /proc link back into the container's: a masked path is an empty file system
# over it.
hidden_paths_denied := {p |
    some list in ["MaskedPaths", "ReadonlyPaths"]
    some p in input.OCI.Linux[list]
    not hidden_path_allowed(p)
}

# No device nodes beyond the runtime's defaults (containerd adds none to an unprivileged
# container): one can also replace a default, /dev/urandom as /dev/zero's numbers. (The agent
# refuses a path outside /dev itself.)
devices_denied := {d.Path | some d in input.OCI.Linux.Devices}
# Device cgroup rules only take access away (CRI gives an unprivileged container one rule,
# deny everything) or allow what every container may use anyway (the runtime's defaults, which
# `ctr run` lists): another allowance would let the container create and use a node of a guest
# device (its disks, the attestation device) with the CAP_MKNOD containerd gives it.
device_rules_denied := {r |
    some r in input.OCI.Linux.Resources.Devices
    r.Allow != false
    not default_device_rule(r)
}
default_device_rule(r) if {
    r.Type == "c"
    [r.Major, r.Minor] in {[1, 3], [1, 5], [1, 7], [1, 8], [1, 9], [5, 0], [5, 1], [5, 2], [10, 200], [136, -1]}
    count(r.Access) > 0
    trim(r.Access, "rwm") == ""
}

# The container's own mount and PID namespaces: without them it would share the guest's
# mounts or see the agent's processes.
# (A mount namespace with a path would be dropped by the agent, as the pod's network, IPC
# and UTS ones are; a PID namespace with a path is the pod's shared one.)
# No user namespace, no ID mappings: a mapping would make the pinned user another one in
# the guest (1000 in the container, root outside).
namespaces_allowed if {
    "mount" in {n.Type | some n in input.OCI.Linux.Namespaces; n.Path == ""}
    "pid" in {n.Type | some n in input.OCI.Linux.Namespaces}
    not "user" in {n.Type | some n in input.OCI.Linux.Namespaces}
    count(object.get(input.OCI.Linux, "UIDMappings", [])) == 0
    count(object.get(input.OCI.Linux, "GIDMappings", [])) == 0
}

# Sysctls: only those Kubernetes calls safe (kubelet's list of safe sysctls: namespaced, and
# harmless to the pod's neighbours and to itself), and what the policy lists for the pod
# (`--sysctl`).
safe_sysctls := {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
sysctls_denied := {k |
    some k, _ in input.OCI.Linux.Sysctl
    not k in safe_sysctls
    not k in policy_data.sysctls
}

default CreateContainerRequest := false
# An allowed container's image is kept in the policy's state (`data.pstate`, by container id)
# for the execs into it; the pause container's as "" (no image: no exec), so that nothing
# an earlier container of its id left there stays.
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": state_path, "value": ""}]} if {
    plain_id(input.container_id)
    pause_allowed
}
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": state_path, "value": image_name}]} if {
    not is_sandbox
    plain_id(input.container_id)
    pinned := policy_data.images[image_name]
    layers_allowed(pinned)
    command_allowed(pinned)
    user_allowed(pinned, input.OCI.Process)
    privileges_allowed(pinned, input.OCI.Process)
    root_allowed(pinned)
    input.OCI.Process.Cwd == pinned.working_dir
    env := effective_env(input.OCI.Process.Env)
    count(env_denied(pinned, env)) == 0
    count(image_env_missing(pinned, env)) == 0
    count(container_env_missing(pinned, env)) == 0
    is_object(input.OCI.Process.Capabilities)
    count(capabilities_denied(pinned, input.OCI.Process)) == 0
    mounts_allowed
}

# containerd's identifiers (letters, digits, `.`, `_`, `-`): one can name a key of the state.
plain_id(id) if {
    count(id) > 0
    trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == ""
}
state_path := concat("/", ["", "pstate", input.container_id])

# Why a container was refused, in the denial.
CreateContainerRequest if {
    not plain_id(input.container_id)
    print("container id", input.container_id, "is not a containerd identifier")
    false
}
CreateContainerRequest if {
    not is_sandbox
    not policy_data.images[image_name]
    print("image", image_name, "is not pinned by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some s in layer_storages
    not pinned_layer(pinned, s)
    print("layer", layer_digest(s), "is not pinned for image", image_name)
    false
}
CreateContainerRequest if {
    not is_sandbox
    some m in input.OCI.Mounts
    not mount_allowed(m)
    print("mount of", m.source, "on", m.destination, "( type", m.type_, ") is not allowed by the policy")
    false
}
CreateContainerRequest if {
    some p in hidden_paths_denied
    print("masked or read-only path", p, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    some p in devices_denied
    print("device", p, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    some r in device_rules_denied
    print("device cgroup rule allowing", r.Access, "of type", r.Type, "major", r.Major, "minor", r.Minor, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    some k in sysctls_denied
    print("sysctl", k, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    not namespaces_allowed
    print("a container without its own mount and PID namespaces, or with a user namespace or ID mappings, is not allowed by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    not is_object(input.OCI.Process.Capabilities)
    print("a container without capability sets (so with every capability) is not allowed by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    not command_allowed(pinned)
    print("command", concat(" ", input.OCI.Process.Args), "is not the one pinned for image", image_name)
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    not user_ids_allowed(pinned, input.OCI.Process)
    print("user", input.OCI.Process.User.UID, "group", input.OCI.Process.User.GID, "is not the one pinned for image", image_name)
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some g in groups_denied(pinned, input.OCI.Process)
    print("supplementary group", g, "is not allowed by the policy for image", image_name)
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    not privileges_allowed(pinned, input.OCI.Process)
    print("image", image_name, "runs with no_new_privs (allowPrivilegeEscalation: false) by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    not root_allowed(pinned)
    print("image", image_name, "runs with a read-only root file system by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    input.OCI.Process.Cwd != pinned.working_dir
    print("working directory", input.OCI.Process.Cwd, "is not the one pinned for image", image_name)
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some e in env_denied(pinned, effective_env(input.OCI.Process.Env))
    print("environment variable", e, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some n in image_env_missing(pinned, effective_env(input.OCI.Process.Env))
    print("environment variable", n, "of image", image_name, "is missing")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some e in container_env_missing(pinned, effective_env(input.OCI.Process.Env))
    print("environment variable", e, "of the container's spec is missing")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    some c in capabilities_denied(pinned, input.OCI.Process)
    print("capability", c, "is not allowed by the policy for image", image_name)
    false
}

# An exec only of a command the policy lists, argument for argument, into a container the
# policy allowed, with the environment, capabilities and working directory its image's
# containers may have (containerd gives an exec its container's).
exec_image := policy_data.images[data.pstate[input.container_id]]
default ExecProcessRequest := false
ExecProcessRequest if {
    input.process.Args in policy_data.execs
    pinned := exec_image
    env := effective_env(input.process.Env)
    count(env_denied(pinned, env)) == 0
    count(image_env_missing(pinned, env)) == 0
    count(container_env_missing(pinned, env)) == 0
    is_object(input.process.Capabilities)
    count(capabilities_denied(pinned, input.process)) == 0
    input.process.Cwd == pinned.working_dir
    user_allowed(pinned, input.process)
    privileges_allowed(pinned, input.process)
}
ExecProcessRequest if {
    not input.process.Args in policy_data.execs
    print("exec of", concat(" ", input.process.Args), "is not allowed by the policy")
    false
}
ExecProcessRequest if {
    not exec_image
    print("exec into container", input.container_id, "which the policy did not allow from a pinned image")
    false
}
ExecProcessRequest if {
    some e in env_denied(exec_image, effective_env(input.process.Env))
    print("environment variable", e, "is not allowed by the policy")
    false
}
ExecProcessRequest if {
    some n in image_env_missing(exec_image, effective_env(input.process.Env))
    print("environment variable", n, "of image", data.pstate[input.container_id], "is missing")
    false
}
ExecProcessRequest if {
    some e in container_env_missing(exec_image, effective_env(input.process.Env))
    print("environment variable", e, "of the container's spec is missing")
    false
}
ExecProcessRequest if {
    not is_object(input.process.Capabilities)
    print("an exec without capability sets (so with every capability) is not allowed by the policy")
    false
}
ExecProcessRequest if {
    some c in capabilities_denied(exec_image, input.process)
    print("capability", c, "is not allowed by the policy for image", data.pstate[input.container_id])
    false
}
ExecProcessRequest if {
    pinned := exec_image
    not user_ids_allowed(pinned, input.process)
    print("user", input.process.User.UID, "group", input.process.User.GID, "is not the one pinned for image", data.pstate[input.container_id])
    false
}
ExecProcessRequest if {
    some g in groups_denied(exec_image, input.process)
    print("supplementary group", g, "is not allowed by the policy for image", data.pstate[input.container_id])
    false
}
ExecProcessRequest if {
    not privileges_allowed(exec_image, input.process)
    print("image", data.pstate[input.container_id], "runs with no_new_privs (allowPrivilegeEscalation: false) by the policy")
    false
}
ExecProcessRequest if {
    pinned := exec_image
    input.process.Cwd != pinned.working_dir
    print("working directory", input.process.Cwd, "is not the one pinned for image", data.pstate[input.container_id])
    false
}

pinned_layer(pinned, s) if {
    some l in pinned.layers
    layer_matches(s, l)
}

layer_digest(s) := trim_prefix(d, "digest=") if {
    some d in s.options
    startswith(d, "digest=")
}
"#;

/// The pod's network and the files copied in for its containers (DNS, names), as the host
/// sends them; shared with the test policies.
pub const POD_NETWORK_RULES: &str = r#"
# The pod's network, as the host found it in the pod's network namespace: a NIC named by its
# MAC only (no device path), no raw interface flags, no route through loopback.
default UpdateInterfaceRequest := false
UpdateInterfaceRequest if {
    input.interface.devicePath == ""
    input.interface.raw_flags == 0
}
default UpdateRoutesRequest := false
UpdateRoutesRequest if {
    every r in input.routes.Routes { r.device != "lo" }
}
default AddARPNeighborsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true

# The pod's hosts, hostname and resolv.conf, copied in by the host (no host share):
# <dir>/<container id>-<name>, nothing else.
copied_file_dir := "/run/kata-containers/shared/containers/"
default CopyFileRequest := false
CopyFileRequest if {
    startswith(input.path, copied_file_dir)
    rest := substring(input.path, count(copied_file_dir), -1)
    not contains(rest, "/")
    some name in {"hosts", "hostname", "resolv.conf"}
    endswith(rest, concat("", ["-", name]))
    count(rest) > count(name) + 1
}

"#;

/// The whole policy: the rules, then `policy_data` with the pinned values: the images, and
/// what the pod allows all of its containers (execs, environment).
pub fn policy_rego(images: &[PinnedImage], pod: &PodAllowances) -> String {
    let mut map = serde_json::Map::new();
    for image in images {
        let layers: Vec<serde_json::Value> = image
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "digest": l.digest, "root_hash": l.root_hash, "salt": l.salt, "data_blocks": l.data_blocks,
                })
            })
            .collect();
        map.insert(
            image.name.clone(),
            serde_json::json!({
                "layers": layers, "command": image.command, "env": image.env, "working_dir": image.working_dir,
                "capabilities_added": image.capabilities_added,
                "empty_dirs": image.empty_dirs.iter().map(|(name, destination)| {
                    serde_json::json!({ "name": name, "destination": destination })
                }).collect::<Vec<_>>(),
                "config_volumes": image.config_volumes,
                "user": { "uid": image.user.uid, "gid": image.user.gid },
                "groups": image.groups,
                "no_new_privileges": image.no_new_privileges,
                "read_only_root": image.read_only_root,
                "container_env": image.container_env,
            }),
        );
    }
    let data = serde_json::json!({
        "images": map, "execs": pod.execs, "env": pod.env, "sysctls": pod.sysctls, "stdin": pod.stdin,
        "port_forward": pod.port_forward,
    });
    format!("{RULES}{POD_NETWORK_RULES}\npolicy_data := {}\n", serde_json::to_string_pretty(&data).expect("JSON"))
}
