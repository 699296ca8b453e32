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
    /// When set, the only command a container of this image may run.
    pub command: Option<Vec<String>>,
}

/// Rules: the pod lifecycle allowed; `SetPolicy` refused; the sandbox container only as the
/// guest's own pause; other containers only from their image's pinned layers.
const RULES: &str = r#"package agent_policy

default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default ReadStreamRequest := true
default WriteStreamRequest := true
default CloseStdinRequest := true
default TtyWinResizeRequest := true
default GetOOMEventRequest := true
default StatsContainerRequest := true
default ListProcessesRequest := true
default UpdateContainerRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
default ExecProcessRequest := true
default SetPolicyRequest := false


image_name := input.OCI.Annotations["io.kubernetes.cri.image-name"]

is_sandbox if { input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox" }

# The pod's sandbox runs the guest's own pause, from no image at all.
pause_allowed if {
    is_sandbox
    input.OCI.Root.Path == "/run/contrast/pause"
    input.OCI.Process.Args == ["/pause"]
    count(input.storages) == 0
}

layer_storages := [s | some s in input.storages; s.driver == "contrast.layer"]

layer_matches(s, l) if {
    concat("=", ["digest", l.digest]) in s.options
    concat("=", ["root_hash", l.root_hash]) in s.options
    concat("=", ["salt", l.salt]) in s.options
    concat("=", ["data_blocks", format_int(l.data_blocks, 10)]) in s.options
}

# Exactly the image's layers, in order, under one overlay that is the container's root.
layers_allowed(pinned) if {
    count(layer_storages) == count(pinned.layers)
    every i, s in layer_storages { layer_matches(s, pinned.layers[i]) }
    overlays := [s | some s in input.storages; s.driver == "overlayfs"]
    count(overlays) == 1
    count(input.storages) == count(layer_storages) + 1
    overlays[0].mount_point == input.OCI.Root.Path
    n := count(layer_storages)
    lower := concat(":", [layer_storages[n - 1 - i].mount_point | some i in numbers.range(0, n - 1)])
    concat("=", ["lowerdir", lower]) in overlays[0].options
}

command_allowed(pinned) if { is_null(pinned.command) }
command_allowed(pinned) if { input.OCI.Process.Args == pinned.command }

# Bind mounts only of the files the host copied in for this container, each at its own place.
copied_files := {"/etc/hosts": "hosts", "/etc/hostname": "hostname", "/etc/resolv.conf": "resolv.conf"}
mount_allowed(m) if { m.type_ != "bind" }
mount_allowed(m) if {
    m.type_ == "bind"
    name := copied_files[m.destination]
    m.source == concat("", ["/run/kata-containers/shared/containers/", input.container_id, "-", name])
}
mounts_allowed if { every m in input.OCI.Mounts { mount_allowed(m) } }

default CreateContainerRequest := false
CreateContainerRequest if { pause_allowed }
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    layers_allowed(pinned)
    command_allowed(pinned)
    mounts_allowed
}

# Why a container was refused, in the denial.
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
    print("bind mount of", m.source, "on", m.destination, "is not allowed by the policy")
    false
}
CreateContainerRequest if {
    not is_sandbox
    pinned := policy_data.images[image_name]
    not command_allowed(pinned)
    print("command", concat(" ", input.OCI.Process.Args), "is not the one pinned for image", image_name)
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

/// The whole policy: the rules, then `policy_data` with the pinned values.
pub fn policy_rego(images: &[PinnedImage]) -> String {
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
        map.insert(image.name.clone(), serde_json::json!({ "layers": layers, "command": image.command }));
    }
    let data = serde_json::json!({ "images": map });
    format!("{RULES}{POD_NETWORK_RULES}\npolicy_data := {}\n", serde_json::to_string_pretty(&data).expect("JSON"))
}
