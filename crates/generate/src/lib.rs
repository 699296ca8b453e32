//! What a pod's policy must pin for its images, computed from the images alone (see the
//! `contrast-generate` binary).

mod policy;
mod user;

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};

pub use policy::{policy_rego, PinnedImage, PinnedLayer, PodAllowances, POD_NETWORK_RULES};
pub use user::ProcessUser;

/// The files of an OCI image archive (`index.json`, `blobs/sha256/...`).
pub fn read_archive(path: &std::path::Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(file).entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    Ok(files)
}

fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> Result<&'a [u8]> {
    let hex = digest.strip_prefix("sha256:").with_context(|| format!("digest {digest} is not sha256"))?;
    files.get(&format!("blobs/sha256/{hex}")).map(Vec::as_slice).with_context(|| format!("archive lacks blob {digest}"))
}

/// What an image's config (`config` of the OCI image configuration) says its containers run
/// with, as containerd builds a container's process from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Env`, each `NAME=VALUE`.
    pub env: Vec<String>,
    /// `Entrypoint` then `Cmd`: the command when the pod spec gives none.
    pub command: Vec<String>,
    /// `WorkingDir`, `/` when the image sets none (containerd's default).
    pub working_dir: String,
    /// `User` (`name`, `uid`, `name:group`, `uid:gid`; empty is root).
    pub user: String,
}

impl ImageConfig {
    /// Parses an image configuration blob.
    pub fn parse(blob: &[u8]) -> Result<ImageConfig> {
        let doc: serde_json::Value = serde_json::from_slice(blob).context("image config is not JSON")?;
        let config = &doc["config"];
        let strings = |key: &str| -> Result<Vec<String>> {
            match &config[key] {
                serde_json::Value::Null => Ok(Vec::new()),
                v => serde_json::from_value(v.clone())
                    .with_context(|| format!("image config: {key} is not a list of strings")),
            }
        };
        let mut command = strings("Entrypoint")?;
        command.extend(strings("Cmd")?);
        let working_dir = match &config["WorkingDir"] {
            serde_json::Value::Null => String::new(),
            v => v.as_str().context("image config: WorkingDir is not a string")?.to_owned(),
        };
        let working_dir = if working_dir.is_empty() { "/".to_owned() } else { working_dir };
        let user = match &config["User"] {
            serde_json::Value::Null => String::new(),
            v => v.as_str().context("image config: User is not a string")?.to_owned(),
        };
        Ok(ImageConfig { env: strings("Env")?, command, working_dir, user })
    }
}

/// An image as the generator reads it: its name, config and layer blobs (bottom first).
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub name: String,
    pub config: ImageConfig,
    pub layers: Vec<Vec<u8>>,
}

/// Every image an archive names.
pub fn archive_images(path: &std::path::Path) -> Result<Vec<SourceImage>> {
    let files = read_archive(path)?;
    let index: serde_json::Value =
        serde_json::from_slice(files.get("index.json").context("no index.json: not an OCI image archive")?)?;
    let mut out = Vec::new();
    for m in index["manifests"].as_array().context("index.json without manifests")? {
        let name = m["annotations"]["io.containerd.image.name"]
            .as_str()
            .or_else(|| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .context("a manifest without an image name annotation")?;
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(&files, m["digest"].as_str().context("manifest digest")?)?)?;
        let config = manifest["config"]["digest"]
            .as_str()
            .with_context(|| format!("image {name}: manifest without a config"))?;
        let config = ImageConfig::parse(blob(&files, config)?).with_context(|| format!("image {name}"))?;
        let layers = manifest["layers"]
            .as_array()
            .context("manifest without layers (an index inside the archive is not supported)")?
            .iter()
            .map(|l| Ok(blob(&files, l["digest"].as_str().context("layer digest")?)?.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        out.push(SourceImage { name: name.to_owned(), config, layers });
    }
    Ok(out)
}

/// An image as the node's containerd has it (`client`'s namespace): config and layer blobs,
/// each checked against its digest.
pub async fn containerd_image(client: &mut contrast_containerd_client::Client, name: &str) -> Result<SourceImage> {
    let manifest = client.image_manifest(name).await?;
    if !name.contains('@') {
        // What a tag names is that containerd's say: the pins below follow whatever image it
        // has under the name (a node's containerd would choose what the policy allows).
        eprintln!(
            "contrast-generate: {name} is {} in this containerd; name it {}@{} to pin that image \
             regardless of who runs the containerd",
            manifest.target, name, manifest.target
        );
    }
    let config = client.read_blob(&manifest.config, usize::MAX).await?;
    let config = ImageConfig::parse(&config).with_context(|| format!("image {name}"))?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        layers.push(client.read_blob(&l.digest, usize::MAX).await?);
    }
    Ok(SourceImage { name: name.to_owned(), config, layers })
}

/// A Kubernetes volume name (a DNS label: lowercase letters, digits, `-` inside, ≤ 63).
pub fn volume_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What the pod spec changes for one image's containers (`--command`, `--workdir`,
/// `--cap-add`, `--empty-dir`, `--config-volume`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// Capability names as the kernel's (`CAP_NET_ADMIN`).
    pub capabilities_added: Vec<String>,
    /// `emptyDir` volumes: (volume name, mount path).
    pub empty_dirs: Vec<(String, String)>,
    /// Mount paths of configMap, secret, projected or downwardAPI volumes (files the node
    /// writes, copied in, read-only).
    pub config_volumes: Vec<String>,
    /// The pod spec's `runAsUser` and `runAsGroup` (without a group: the user's primary
    /// group in the image's `/etc/passwd`, as containerd takes it, or 0).
    pub user: Option<(u32, Option<u32>)>,
    /// The pod spec's `supplementalGroups` and `fsGroup` (kubelet passes both to the runtime
    /// as supplementary groups).
    pub groups: Vec<u32>,
    /// The container's `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// The container's `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
    /// The container spec's `env` (`NAME=VALUE`, values as kubelet resolves them): each must
    /// be there, with exactly this value. A later entry of a name replaces an earlier one, as
    /// in Kubernetes.
    pub env: Vec<String>,
}

pub fn pin(image: &SourceImage, overrides: &Overrides) -> Result<PinnedImage> {
    use sha2::Digest;
    let name = &image.name;
    let layers = image
        .layers
        .iter()
        .map(|b| {
            let erofs = contrast_erofs::layer_image(b).with_context(|| format!("image {name}: a layer"))?;
            let hex = |x: &[u8]| x.iter().map(|v| format!("{v:02x}")).collect::<String>();
            Ok(PinnedLayer {
                digest: format!("sha256:{}", hex(&sha2::Sha256::digest(b))),
                root_hash: hex(&erofs.root_hash),
                salt: hex(&erofs.salt),
                data_blocks: erofs.data_blocks,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let user = match overrides.user {
        None => user::resolve(&image.config.user, &image.layers)
            .with_context(|| format!("image {name}: its User {:?}", image.config.user))?,
        Some((uid, Some(gid))) => ProcessUser { uid, gid },
        Some((uid, None)) => user::by_uid(uid, &image.layers).with_context(|| format!("image {name}: --user"))?,
    };
    // Supplementary groups a process may have: its primary group (containerd lists it too),
    // the image's for the user CRI looks up, and the pod spec's.
    let mut groups = vec![user.gid];
    for lookup in user::group_lookups(overrides.user.map(|u| u.0), &image.config.user) {
        groups.extend(
            user::image_groups(&lookup, &image.layers).with_context(|| format!("image {name}: its /etc/group"))?,
        );
    }
    groups.extend(&overrides.groups);
    groups.sort_unstable();
    groups.dedup();
    if let Some(e) = overrides.env.iter().find(|e| e.split_once('=').is_none_or(|(var, _)| var.is_empty())) {
        bail!("image {name}: environment entry {e:?} is not NAME=VALUE");
    }
    // A name given twice has its later value (Kubernetes' rule for a container spec; what the
    // process gets for the image's own), and only that one is pinned.
    let container_env = last_of_each_name(&overrides.env);
    let env = last_of_each_name(&image.config.env);
    let command = overrides.command.clone().unwrap_or_else(|| image.config.command.clone());
    if command.is_empty() {
        bail!("image {name} has neither Entrypoint nor Cmd: give its command with --command {name}=JSON");
    }
    Ok(PinnedImage {
        name: name.clone(),
        layers,
        command,
        env,
        working_dir: overrides.working_dir.clone().unwrap_or_else(|| image.config.working_dir.clone()),
        capabilities_added: overrides.capabilities_added.clone(),
        empty_dirs: overrides.empty_dirs.clone(),
        config_volumes: overrides.config_volumes.clone(),
        user,
        groups,
        no_new_privileges: overrides.no_new_privileges,
        read_only_root: overrides.read_only_root,
        container_env,
    })
}

/// `NAME=VALUE` entries with only the last of each name (all of an entry without `=` is its
/// name), in the order of those last entries.
fn last_of_each_name(entries: &[String]) -> Vec<String> {
    let name = |e: &str| e.split_once('=').map_or(e, |(n, _)| n).to_owned();
    let mut out: Vec<String> = Vec::new();
    for e in entries {
        out.retain(|f| name(f) != name(e));
        out.push(e.clone());
    }
    out
}

/// The init data of a pod whose containers run `images` (each archive's images pinned, with
/// what the pod spec changes for them in `overrides` by image name), allowing what `pod`
/// adds (execs, environment).
pub fn init_data_for_archives(
    archives: &[&std::path::Path],
    overrides: &BTreeMap<String, Overrides>,
    pod: &PodAllowances,
) -> Result<contrast_initdata::InitData> {
    let mut images = Vec::new();
    for path in archives {
        for image in archive_images(path)? {
            images.push(pin(&image, overrides.get(&image.name).unwrap_or(&Overrides::default()))?);
        }
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(contrast_initdata::InitData::wrap_policy(&policy_rego(&images, pod)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> PinnedImage {
        PinnedImage {
            name: "docker.io/library/app:1".into(),
            layers: vec![PinnedLayer {
                digest: format!("sha256:{}", "ab".repeat(32)),
                root_hash: "cd".repeat(32),
                salt: "ef".repeat(32),
                data_blocks: 7,
            }],
            command: vec!["sleep".into(), "1000".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/srv".into(),
            capabilities_added: vec![],
            empty_dirs: vec![("cache".into(), "/var/cache/app".into())],
            config_volumes: vec!["/var/run/secrets/kubernetes.io/serviceaccount".into()],
            user: ProcessUser { uid: 1000, gid: 1000 },
            groups: vec![1000, 2000],
            no_new_privileges: false,
            read_only_root: false,
            container_env: vec![],
        }
    }

    fn no_pod() -> PodAllowances {
        PodAllowances::default()
    }

    fn eval(rego: &str, input: serde_json::Value) -> regorus::Value {
        eval_rule(rego, "CreateContainerRequest", input)
    }

    /// A rule's verdict as `true`/`false` (an allowed create answers with the state it keeps),
    /// with container `c` created from `image()` before.
    fn eval_rule(rego: &str, rule: &str, input: serde_json::Value) -> regorus::Value {
        let state = serde_json::json!({ "c": image().name });
        match eval_with_state(rego, rule, input, &state) {
            v @ regorus::Value::Object(_) => regorus::Value::Bool(v["allowed"] == regorus::Value::Bool(true)),
            v => v,
        }
    }

    /// A rule's answer with `state` as the policy's state (`data.pstate`), as the agent keeps it.
    fn eval_with_state(rego: &str, rule: &str, input: serde_json::Value, state: &serde_json::Value) -> regorus::Value {
        let mut e = regorus::Engine::new();
        e.add_policy("policy.rego".into(), rego.into()).expect("the generated policy compiles");
        e.add_data_json(&serde_json::json!({ "pstate": state }).to_string()).expect("state");
        e.set_input_json(&input.to_string()).expect("input");
        e.eval_rule(format!("data.agent_policy.{rule}")).expect("eval")
    }

    /// Whether `rego` allows a create of `image()`'s layers and command with `env` in `cwd`.
    fn creates_with(rego: &str, env: &[&str], cwd: &str) -> bool {
        let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
        r["OCI"]["Process"]["Env"] = serde_json::json!(env);
        r["OCI"]["Process"]["Cwd"] = cwd.into();
        eval(rego, r) == regorus::Value::Bool(true)
    }

    /// Whether `rego` allows the exec of `env` (the command) into container `c` (of
    /// `image()`'s image) with `env` in `cwd`.
    fn execs_with(rego: &str, env: &[&str], cwd: &str) -> bool {
        let input = serde_json::json!({ "container_id": "c",
            "process": { "User": { "UID": 1000, "GID": 1000 }, "Args": ["env"], "Env": env, "Cwd": cwd, "Capabilities": { "Bounding": [] } } });
        eval_rule(rego, "ExecProcessRequest", input) == regorus::Value::Bool(true)
    }

    #[test]
    fn copied_files_network_and_their_bind_mounts() {
        let rego = policy_rego(&[image()], &no_pod());
        let dir = "/run/kata-containers/shared/containers";
        let copy = |path: &str| eval_rule(&rego, "CopyFileRequest", serde_json::json!({ "path": path }));
        assert_eq!(copy(&format!("{dir}/c-resolv.conf")), regorus::Value::Bool(true));
        for bad in [format!("{dir}/c-passwd"), format!("{dir}/x/c-hosts"), format!("{dir}/-hosts"), "/etc/hosts".into()]
        {
            assert_eq!(copy(&bad), regorus::Value::Bool(false), "{bad}");
        }
        let routes = |dev: &str| {
            eval_rule(&rego, "UpdateRoutesRequest", serde_json::json!({ "routes": { "Routes": [{ "device": dev }] } }))
        };
        assert_eq!(routes("eth0"), regorus::Value::Bool(true));
        assert_eq!(routes("lo"), regorus::Value::Bool(false));
        let nic = |flags: u32| {
            eval_rule(
                &rego,
                "UpdateInterfaceRequest",
                serde_json::json!({ "interface": { "devicePath": "", "raw_flags": flags } }),
            )
        };
        assert_eq!((nic(0), nic(0x80)), (regorus::Value::Bool(true), regorus::Value::Bool(false)));
        // stdin only when the pod spec asks for it: a shell or interpreter would run it.
        let write = |rego: &str| {
            eval_rule(rego, "WriteStreamRequest", serde_json::json!({ "container_id": "c", "exec_id": "", "data": [] }))
        };
        assert_eq!(write(&rego), regorus::Value::Bool(false));
        let with_stdin = policy_rego(&[image()], &PodAllowances { stdin: true, ..Default::default() });
        assert_eq!(write(&with_stdin), regorus::Value::Bool(true));
        // The node reaches the pod's loopback only on the ports the policy lists.
        let forward =
            |rego: &str, port: u16| eval_rule(rego, "PortForwardRequest", serde_json::json!({ "port": port }));
        assert_eq!(forward(&rego, 8080), regorus::Value::Bool(false));
        let with_forward = policy_rego(&[image()], &PodAllowances { port_forward: vec![8080], ..Default::default() });
        assert_eq!(
            (forward(&with_forward, 8080), forward(&with_forward, 8081)),
            (regorus::Value::Bool(true), regorus::Value::Bool(false))
        );
        // A bind mount only of the container's own copy, at its own place.
        let with_mount = |source: &str, destination: &str| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            r["OCI"]["Mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!({ "destination": destination, "type_": "bind", "source": source, "options": ["rbind"] }));
            eval(&rego, r)
        };
        assert_eq!(with_mount(&format!("{dir}/c-resolv.conf"), "/etc/resolv.conf"), regorus::Value::Bool(true));
        assert_eq!(with_mount(&format!("{dir}/c-hosts"), "/etc/resolv.conf"), regorus::Value::Bool(false));
        assert_eq!(with_mount(&format!("{dir}/other-resolv.conf"), "/etc/resolv.conf"), regorus::Value::Bool(false));
        assert_eq!(with_mount("/var/lib/secret", "/etc/resolv.conf"), regorus::Value::Bool(false));
        // The pod's emptyDir volume, only where the pod spec mounts it.
        let volume = "/run/contrast/volumes/cache";
        assert_eq!(with_mount(volume, "/var/cache/app"), regorus::Value::Bool(true));
        assert_eq!(with_mount(volume, "/etc"), regorus::Value::Bool(false), "over the image's files");
        assert_eq!(with_mount("/run/contrast/volumes/other", "/var/cache/app"), regorus::Value::Bool(false));
        assert_eq!(with_mount("/run/contrast/volumes/cache/..", "/var/cache/app"), regorus::Value::Bool(false));
        // The node's configMap, secret, projected and downwardAPI volumes: this container's
        // copy, read-only, only where the pod spec mounts one.
        let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
        let config_volume = |source: &str, destination: &str, options: &[&str]| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            let m = serde_json::json!({ "destination": destination, "type_": "bind", "source": source, "options": options });
            r["OCI"]["Mounts"].as_array_mut().expect("mounts").push(m);
            eval(&rego, r) == regorus::Value::Bool(true)
        };
        let token = format!("{dir}/c.volumes/kube-api-access-x7k2p");
        assert!(config_volume(&token, sa, &["rbind", "ro"]));
        assert!(!config_volume(&token, sa, &["rbind", "rw"]), "writable");
        assert!(!config_volume(&token, sa, &["rbind", "ro", "rw"]), "writable after all");
        assert!(!config_volume(&token, "/etc", &["rbind", "ro"]), "over the image's files");
        for other in [
            format!("{dir}/other.volumes/kube-api-access-x7k2p"),
            format!("{dir}/c.volumes/x/.."),
            format!("{dir}/c.volumes/config/sub"),
            format!("{dir}/c.volumes/-x"),
            format!("{dir}/c-resolv.conf"),
        ] {
            assert!(!config_volume(&other, sa, &["rbind", "ro"]), "{other}");
        }
        assert_eq!(copy(&format!("{dir}/c.volumes/config/app.yaml")), regorus::Value::Bool(true));
        assert_eq!(copy(&format!("{dir}/c.volumes/config/conf/extra.ini")), regorus::Value::Bool(true));
        for bad in [
            format!("{dir}/c.volumes/config"),
            format!("{dir}/c.volumes/-x/y"),
            format!("{dir}/c.volumes/A/x"),
            format!("{dir}/.volumes/config/x"),
            format!("{dir}/c~.volumes/config/x"),
        ] {
            assert_eq!(copy(&bad), regorus::Value::Bool(false), "{bad}");
        }
        // The volume's own directory only as a directory: the list of the files it keeps.
        let copy_mode = |path: &str, mode: u32| {
            eval_rule(&rego, "CopyFileRequest", serde_json::json!({ "path": path, "file_mode": mode }))
        };
        assert_eq!(copy_mode(&format!("{dir}/c.volumes/config"), 0o040_755), regorus::Value::Bool(true));
        assert_eq!(copy_mode(&format!("{dir}/c.volumes/config"), 0o100_644), regorus::Value::Bool(false), "a file");
        assert_eq!(copy_mode(&format!("{dir}/c.volumes/-x"), 0o040_755), regorus::Value::Bool(false));
        assert_eq!(copy_mode(&format!("{dir}/c.volumes"), 0o040_755), regorus::Value::Bool(false));
        // A subPath of one: copied once to its own place, mounted like the volume.
        let subpath = format!("{dir}/c.subpaths/2");
        assert!(config_volume(&subpath, sa, &["rbind", "ro"]));
        assert!(!config_volume(&subpath, sa, &["rbind"]), "writable");
        assert!(!config_volume(&subpath, sa, &["rbind", "ro", "rw"]), "writable after all");
        assert!(!config_volume(&subpath, "/etc/passwd", &["rbind", "ro"]), "over the image's files");
        for other in [
            format!("{dir}/other.subpaths/2"),
            format!("{dir}/c.subpaths/2/x"),
            format!("{dir}/c.subpaths/x"),
            format!("{dir}/c.subpaths/"),
            format!("{dir}/c.subpaths/12345"),
            format!("{dir}/c.subpaths/2/.."),
        ] {
            assert!(!config_volume(&other, sa, &["rbind", "ro"]), "{other}");
        }
        assert_eq!(copy(&format!("{dir}/c.subpaths/2")), regorus::Value::Bool(true), "a file");
        assert_eq!(copy_mode(&format!("{dir}/c.subpaths/2"), 0o040_755), regorus::Value::Bool(true), "an empty one");
        assert_eq!(copy(&format!("{dir}/c.subpaths/2/conf/extra.ini")), regorus::Value::Bool(true), "a directory's");
        for bad in [format!("{dir}/c.subpaths"), format!("{dir}/c.subpaths/x"), format!("{dir}/.subpaths/0")] {
            assert_eq!(copy(&bad), regorus::Value::Bool(false), "{bad}");
        }
    }

    fn request(root_hash: &str, args: &[&str]) -> serde_json::Value {
        let layer = serde_json::json!({
            "driver": "contrast.layer", "source": "1:0", "fstype": "erofs", "mount_point": "/run/contrast/layers/c/0",
            "options": [format!("digest=sha256:{}", "ab".repeat(32)), format!("root_hash={root_hash}"),
                        format!("salt={}", "ef".repeat(32)), "data_blocks=7"],
        });
        let overlay = serde_json::json!({
            "driver": "overlayfs", "source": "overlay", "fstype": "overlay", "mount_point": "/run/contrast/rootfs/c",
            "options": ["lowerdir=/run/contrast/layers/c/0", "upperdir=/run/contrast/upper/c/upper",
                        "workdir=/run/contrast/upper/c/work"],
        });
        serde_json::json!({
            "container_id": "c", "storages": [layer, overlay],
            "OCI": { "Root": { "Path": "/run/contrast/rootfs/c", "Readonly": false },
                     "Process": { "Args": args, "Env": ["PATH=/bin", "HOSTNAME=pod-1"], "Cwd": "/srv",
                                  "User": { "UID": 1000, "GID": 1000, "AdditionalGids": [1000] },
                                  "Capabilities": { "Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"],
                                                    "Inheritable": [], "Permitted": ["CAP_KILL"], "Ambient": [] } },
                     "Linux": { "Namespaces": [{ "Type": "pid", "Path": "" }, { "Type": "mount", "Path": "" },
                                               { "Type": "network", "Path": "/proc/1/ns/net" }],
                                "MaskedPaths": ["/proc/kcore"], "ReadonlyPaths": ["/proc/sys"], "Devices": [],
                                "Sysctl": {} },
                     "Mounts": [{ "destination": "/proc", "type_": "proc", "source": "proc", "options": [] }],
                     "Annotations": { "io.kubernetes.cri.image-name": "docker.io/library/app:1",
                                      "io.kubernetes.cri.container-type": "container" } },
        })
    }

    #[test]
    fn pinned_layers_and_command_are_what_the_policy_allows() {
        let rego = policy_rego(&[image()], &no_pod());
        assert_eq!(eval(&rego, request(&"cd".repeat(32), &["sleep", "1000"])), regorus::Value::Bool(true));
        assert_eq!(
            eval(&rego, request(&"00".repeat(32), &["sleep", "1000"])),
            regorus::Value::Bool(false),
            "root hash"
        );
        assert_eq!(eval(&rego, request(&"cd".repeat(32), &["sh"])), regorus::Value::Bool(false), "command");
        assert_eq!(policy_rego(&[image()], &no_pod()), rego, "deterministic");
    }

    #[test]
    fn execs_only_of_the_listed_commands() {
        let exec = |rego: &str, args: &[&str]| {
            eval_rule(
                rego,
                "ExecProcessRequest",
                serde_json::json!({ "container_id": "c",
                                    "process": { "User": { "UID": 1000, "GID": 1000 }, "Args": args, "Env": ["PATH=/bin"], "Cwd": "/srv",
                                                 "Capabilities": { "Bounding": [] } } }),
            )
        };
        let none = policy_rego(&[image()], &no_pod());
        assert_eq!(exec(&none, &["sh"]), regorus::Value::Bool(false), "no exec unless listed");
        let probe = vec!["cat".to_owned(), "/tmp/healthy".to_owned()];
        let rego = policy_rego(&[image()], &PodAllowances { execs: vec![probe], ..Default::default() });
        assert_eq!(exec(&rego, &["cat", "/tmp/healthy"]), regorus::Value::Bool(true));
        for other in [&["cat"][..], &["cat", "/tmp/healthy", "/etc/shadow"], &["cat", "/tmp/other"], &["sh"]] {
            assert_eq!(exec(&rego, other), regorus::Value::Bool(false), "{other:?}");
        }
    }

    #[test]
    fn an_exec_is_judged_by_its_own_containers_image() {
        let mut other = image();
        other.name = "docker.io/library/tool:1".into();
        other.working_dir = "/".into();
        other.env = vec!["PATH=/bin".into(), "MODE=tool".into()];
        other.capabilities_added = vec!["CAP_SYS_PTRACE".into()];
        other.user = ProcessUser { uid: 0, gid: 0 };
        let pod = PodAllowances { execs: vec![vec!["env".into()]], ..Default::default() };
        let rego = policy_rego(&[image(), other.clone()], &pod);

        // An allowed create keeps its container's image in the state, under its id.
        let answer = eval_with_state(
            &rego,
            "CreateContainerRequest",
            request(&"cd".repeat(32), &["sleep", "1000"]),
            &serde_json::json!({}),
        );
        let ops: serde_json::Value = serde_json::to_value(&answer["ops"]).expect("ops");
        assert_eq!(answer["allowed"], regorus::Value::Bool(true));
        assert_eq!(ops, serde_json::json!([{ "op": "add", "path": "/pstate/c", "value": image().name }]));
        let mut odd_id = request(&"cd".repeat(32), &["sleep", "1000"]);
        odd_id["container_id"] = "c/../x".into();
        assert_eq!(eval(&rego, odd_id), regorus::Value::Bool(false), "an id that is no containerd identifier");

        let exec = |container: &str, env: &[&str], cwd: &str, caps: &[&str]| {
            let state = serde_json::json!({ "c": image().name, "t": other.name });
            let uid = if container == "t" { 0 } else { 1000 };
            let input = serde_json::json!({ "container_id": container, "process": { "User": { "UID": uid, "GID": uid },
                "Args": ["env"], "Env": env, "Cwd": cwd, "Capabilities": { "Bounding": caps } } });
            eval_with_state(&rego, "ExecProcessRequest", input, &state) == regorus::Value::Bool(true)
        };
        assert!(exec("c", &["PATH=/bin"], "/srv", &["CAP_KILL"]));
        assert!(exec("t", &["PATH=/bin", "MODE=tool"], "/", &["CAP_SYS_PTRACE"]));
        assert!(!exec("c", &["PATH=/bin"], "/", &[]), "the other image's working directory");
        assert!(!exec("c", &["PATH=/bin"], "/srv", &["CAP_SYS_PTRACE"]), "a capability added for the other image");
        assert!(!exec("c", &["PATH=/bin", "MODE=tool"], "/srv", &[]), "the other image's variable");
        assert!(!exec("t", &["PATH=/bin", "MODE=other"], "/", &[]), "the image's variable with another value");
        assert!(!exec("p", &["PATH=/bin"], "/srv", &[]), "a container the policy did not create");
        let as_root = serde_json::json!({ "container_id": "c", "process": { "User": { "UID": 0, "GID": 0 },
            "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": { "Bounding": [] } } });
        let state = serde_json::json!({ "c": image().name, "t": other.name });
        assert_eq!(
            eval_with_state(&rego, "ExecProcessRequest", as_root, &state),
            regorus::Value::Bool(false),
            "the other image's user"
        );

        // The pause container's id names no image, whatever an earlier container of its id left.
        let pause = serde_json::json!({
            "container_id": "c", "storages": [],
            "OCI": { "Root": { "Path": "/run/contrast/pause", "Readonly": true }, "Process": { "Args": ["/pause"] },
                     "Mounts": [], "Linux": { "Namespaces": [{ "Type": "pid", "Path": "" }, { "Type": "mount", "Path": "" }] },
                     "Annotations": { "io.kubernetes.cri.container-type": "sandbox" } },
        });
        let answer = eval_with_state(&rego, "CreateContainerRequest", pause, &serde_json::json!({ "c": image().name }));
        let ops: serde_json::Value = serde_json::to_value(&answer["ops"]).expect("ops");
        assert_eq!(ops, serde_json::json!([{ "op": "add", "path": "/pstate/c", "value": "" }]));
        let state = serde_json::json!({ "c": "" });
        let input = serde_json::json!({ "container_id": "c", "process": { "User": { "UID": 1000, "GID": 1000 },
            "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": { "Bounding": [] } } });
        assert_eq!(eval_with_state(&rego, "ExecProcessRequest", input, &state), regorus::Value::Bool(false));
        // A removed container's image leaves the state; a container never allowed has none.
        let remove = |state: serde_json::Value| {
            let answer =
                eval_with_state(&rego, "RemoveContainerRequest", serde_json::json!({ "container_id": "c" }), &state);
            serde_json::to_value(&answer).expect("answer")
        };
        let removed = serde_json::json!({ "allowed": true, "ops": [{ "op": "remove", "path": "/pstate/c" }] });
        assert_eq!(remove(serde_json::json!({ "c": image().name })), removed);
        assert_eq!(remove(serde_json::json!({ "c": "" })), removed);
        assert_eq!(remove(serde_json::json!({})), serde_json::json!(true));
    }

    #[test]
    fn the_images_user_is_pinned() {
        let pod = PodAllowances { execs: vec![vec!["env".into()]], ..Default::default() };
        let rego = policy_rego(&[image()], &pod);
        let create = |uid: u32, gid: u32| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            r["OCI"]["Process"]["User"] = serde_json::json!({ "UID": uid, "GID": gid, "AdditionalGids": [] });
            eval(&rego, r) == regorus::Value::Bool(true)
        };
        assert!(create(1000, 1000));
        assert!(!create(0, 1000), "root");
        assert!(!create(1000, 0), "another group");
        let exec = |uid: u32| {
            let input = serde_json::json!({ "container_id": "c", "process": { "User": { "UID": uid, "GID": 1000 },
                "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": { "Bounding": [] } } });
            eval_rule(&rego, "ExecProcessRequest", input) == regorus::Value::Bool(true)
        };
        assert!(exec(1000));
        assert!(!exec(0), "an exec as root");
        // Another user in the container than the one pinned in the guest.
        let mut userns = request(&"cd".repeat(32), &["sleep", "1000"]);
        userns["OCI"]["Linux"]["Namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(serde_json::json!({ "Type": "user", "Path": "" }));
        assert_eq!(eval(&rego, userns), regorus::Value::Bool(false), "a user namespace");
        let mut mapped = request(&"cd".repeat(32), &["sleep", "1000"]);
        mapped["OCI"]["Linux"]["UIDMappings"] = serde_json::json!([{ "ContainerID": 1000, "HostID": 0, "Size": 1 }]);
        assert_eq!(eval(&rego, mapped), regorus::Value::Bool(false), "an ID mapping");
        let mut none = request(&"cd".repeat(32), &["sleep", "1000"]);
        none["OCI"]["Linux"]["UIDMappings"] = serde_json::json!([]);
        none["OCI"]["Linux"]["GIDMappings"] = serde_json::json!([]);
        assert_eq!(eval(&rego, none), regorus::Value::Bool(true), "empty mappings, as the agent's input has them");
    }

    #[test]
    fn environment_and_working_directory_are_pinned() {
        let pod =
            PodAllowances { execs: vec![vec!["env".into()]], env: vec!["GREETING=hi".into()], ..Default::default() };
        let rego = policy_rego(&[image()], &pod);
        let create = |env: &[&str], cwd: &str| creates_with(&rego, env, cwd);
        let allowed = [
            "PATH=/bin",
            "GREETING=hi",
            "HOSTNAME=web-0.example",
            "TERM=xterm",
            "KUBERNETES_SERVICE_HOST=10.96.0.1",
            "KUBERNETES_SERVICE_PORT=443",
            "KUBERNETES_SERVICE_PORT_HTTPS=443",
            "KUBERNETES_PORT=tcp://10.96.0.1:443",
            "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
            "KUBERNETES_PORT_443_TCP_PROTO=tcp",
            "KUBERNETES_PORT_443_TCP_PORT=443",
            "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
            "DB_SERVICE_HOST=fd00::a",
            "DB_PORT=tcp://[fd00::a]:5432",
            "DB_PORT_5432_TCP=tcp://[fd00::a]:5432",
            "MY_PORT_SVC_PORT_53_UDP_PROTO=udp",
            "MY_PORT_SVC_SERVICE_PORT_DNS_TCP=53",
            // Services whose own names hold the markers (`db-port`, `a-service-port-b`).
            "DB_PORT_PORT=tcp://10.0.0.1:5432",
            "DB_PORT_PORT_5432_TCP=tcp://10.0.0.1:5432",
            "DB_PORT_PORT_5432_TCP_ADDR=10.0.0.1",
            "DB_PORT_SERVICE_PORT=5432",
            "A_SERVICE_PORT_B_SERVICE_PORT_HTTP=80",
            "A_SERVICE_PORT_B_PORT_80_TCP_PROTO=tcp",
        ];
        assert!(create(&allowed, "/srv"), "everything containerd and Kubernetes set");
        assert!(!create(&[], "/srv"), "the image's PATH left out");
        for bad in [
            "LD_PRELOAD=/etc/resolv.conf",
            "BASH_ENV=/etc/resolv.conf",
            "PATH=/run/kata-containers/shared/containers",
            "GREETING=bye",
            "HOSTNAME=/etc/hosts",
            "HOSTNAME=",
            "DB_SERVICE_HOST=/etc/hosts",
            "DB_PORT=tcp://$(sh)",
            "db_service_host=10.0.0.1",
            "LD_PRELOAD_SERVICE_HOST=10.0.0.1=x",
            "no-equals-sign",
            // Names of a service link with another shape of value: an application's switch.
            "JMX_PORT=9999",
            "DEBUG_PORT=5005",
            "DB_SERVICE_PORT=10.0.0.1",
            "DB_SERVICE_HOST=443x",
            "DB_PORT=tcp://10.0.0.1",
            "DB_PORT=tcp://10.0.0.1:5432:1",
            "DB_PORT_5432_TCP=5432",
            "DB_PORT_5432_TCP_PROTO=sh",
            "DB_PORT_5432_TCP_PORT=tcp",
            "DB_PORT_5432_HTTP=tcp://10.0.0.1:5432",
            "DB_PORT_5432_TCP_EXTRA=1",
            "_SERVICE_HOST=10.0.0.1",
            "APP_PORT_ENABLED=1",
        ] {
            assert!(!create(&["PATH=/bin", bad], "/srv"), "{bad}");
        }
        assert!(!create(&["PATH=/bin"], "/"), "another working directory");
        // A name twice: the last entry is what the process gets (the agent drops the others).
        assert!(create(&["PATH=/bin", "GREETING=bye", "GREETING=hi"], "/srv"), "the allowed value last");
        assert!(!create(&["PATH=/bin", "GREETING=hi", "GREETING=bye"], "/srv"), "another value last");
        assert!(create(&["PATH=/run/x", "PATH=/bin"], "/srv"), "the image's PATH last");
        assert!(!create(&["PATH=/bin", "PATH=/run/x"], "/srv"), "another PATH last");
        assert!(!create(&["PATH=/bin", "LD_PRELOAD", "LD_PRELOAD=/etc/hosts"], "/srv"));
        assert!(!create(&["PATH=/bin", "LD_PRELOAD=/etc/hosts", "LD_PRELOAD"], "/srv"), "an entry without =");
        // An entry without `=` is all name: it and `NAME=…` are one name.
        assert!(create(&["PATH=/bin", "GREETING", "GREETING=hi"], "/srv"), "the bare entry dropped");
        assert!(!create(&["PATH=/bin", "GREETING=hi", "GREETING"], "/srv"), "the bare entry last");
        // The image's variables: each there, each with its value.
        let with_env = |var: &str, env: &[&str]| {
            let mut pinned = image();
            pinned.env.push(var.into());
            creates_with(&policy_rego(&[pinned], &pod), env, "/srv")
        };
        assert!(with_env("DB_PASSWORD=s3cret", &["PATH=/bin", "DB_PASSWORD=s3cret"]));
        assert!(!with_env("DB_PASSWORD=s3cret", &["PATH=/bin"]), "the image's variable left out");
        // … even where another value has a service variable's shape.
        assert!(with_env("METRICS_PORT=9090", &["PATH=/bin", "METRICS_PORT=9090"]));
        let other = ["PATH=/bin", "METRICS_PORT=1"];
        assert!(!with_env("METRICS_PORT=9090", &other), "another value of the image's variable");
        // containerd's own PATH for an image that sets none.
        let mut no_path = image();
        no_path.env.clear();
        let rego_no_path = policy_rego(&[no_path], &pod);
        let default_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
        r["OCI"]["Process"]["Env"] = serde_json::json!([default_path]);
        assert_eq!(eval(&rego_no_path, r), regorus::Value::Bool(true), "containerd's default PATH");
        assert!(!create(&[default_path], "/srv"), "not where the image sets its own");
        let exec = |env: &[&str], cwd: &str| execs_with(&rego, env, cwd);
        assert!(exec(&["PATH=/bin", "GREETING=hi", "HOSTNAME=web-0"], "/srv"));
        assert!(!exec(&["PATH=/bin", "LD_PRELOAD=/etc/hosts"], "/srv"), "an exec's environment");
        assert!(!exec(&["PATH=/bin"], "/tmp"), "an exec's working directory");
        assert!(exec(&["PATH=/bin", "GREETING=bye", "GREETING=hi"], "/srv"), "an exec's allowed value last");
        assert!(!exec(&["PATH=/bin", "GREETING=hi", "GREETING=bye"], "/srv"), "an exec's other value last");
    }

    #[test]
    fn the_container_specs_environment_is_there_with_its_values() {
        let pod =
            PodAllowances { execs: vec![vec!["env".into()]], env: vec!["MODE=open".into()], ..Default::default() };
        let mut pinned = image();
        pinned.container_env = vec!["MODE=strict".into(), "TLS=on".into(), "PATH=/opt/bin".into()];
        let rego = policy_rego(&[pinned], &pod);
        let create = |env: &[&str]| creates_with(&rego, env, "/srv");
        // The container's PATH replaces the image's, as containerd merges them.
        assert!(create(&["PATH=/opt/bin", "MODE=strict", "TLS=on"]));
        // containerd lists a variable the image sets too twice, the image's value first.
        assert!(create(&["PATH=/bin", "MODE=strict", "TLS=on", "PATH=/opt/bin"]), "the container's value last");
        assert!(!create(&["PATH=/opt/bin", "MODE=strict", "TLS=on", "PATH=/bin"]), "the image's value last");
        assert!(create(&["TLS=on", "HOSTNAME=web-0", "MODE=strict", "PATH=/opt/bin"]), "in any order");
        assert!(!create(&["PATH=/opt/bin", "MODE=strict"]), "one left out: TLS");
        assert!(!create(&["PATH=/opt/bin", "MODE=strict", "TLS=off"]), "another value");
        assert!(!create(&["PATH=/opt/bin", "MODE=open", "TLS=on"]), "the pod-wide --env's value instead");
        assert!(!create(&["PATH=/bin", "MODE=strict", "TLS=on"]), "the image's PATH instead of the container's");
        assert!(!create(&["PATH=/opt/bin", "MODE=strict", "TLS=on", "TLS=off"]), "a second value after it");
        // An exec may carry them (containerd gives it the container's environment).
        let exec = |env: &[&str]| execs_with(&rego, env, "/srv");
        let all = ["PATH=/opt/bin", "MODE=strict", "TLS=on"];
        assert!(exec(&all));
        assert!(!exec(&["PATH=/opt/bin", "MODE=strict"]), "an exec without one: TLS");
        for (i, other) in ["PATH=/bin", "MODE=open", "TLS=off"].iter().enumerate() {
            let mut env = all;
            env[i] = other;
            assert!(!exec(&env), "an exec with {other}: the image's or the pod-wide value instead");
        }
        let mut service = image();
        service.container_env = vec!["REDIS_PORT=6379".into(), "HOSTNAME=db-0".into()];
        let rego = policy_rego(&[service], &pod);
        let create = |env: &[&str]| creates_with(&rego, env, "/srv");
        assert!(create(&["PATH=/bin", "REDIS_PORT=6379", "HOSTNAME=db-0"]));
        let exec = |env: &[&str]| execs_with(&rego, env, "/srv");
        assert!(exec(&["PATH=/bin", "REDIS_PORT=6379", "HOSTNAME=db-0"]));
        // Values another rule would allow by their shape: not for a pinned name.
        assert!(!exec(&["PATH=/bin", "REDIS_PORT=tcp://10.0.0.9:6379", "HOSTNAME=db-0"]), "a service address instead");
        assert!(!exec(&["PATH=/bin", "REDIS_PORT=6379", "HOSTNAME=evil"]), "another host name");
        // As Kubernetes takes a name given twice: the later entry.
        let source = SourceImage {
            name: "app".into(),
            layers: vec![],
            config: ImageConfig { command: vec!["true".into()], ..Default::default() },
        };
        let env =
            |entries: &[&str]| Overrides { env: entries.iter().map(|e| e.to_string()).collect(), ..Default::default() };
        let pinned = pin(&source, &env(&["A=1", "B=2", "A=3"])).expect("pin");
        assert_eq!(pinned.container_env, ["B=2", "A=3"]);
        let twice = SourceImage {
            config: ImageConfig { env: vec!["A=x".into(), "PATH=/bin".into(), "A=y".into()], ..source.config.clone() },
            ..source.clone()
        };
        assert_eq!(pin(&twice, &Overrides::default()).expect("pin").env, ["PATH=/bin", "A=y"], "the image's later A");
        for bad in ["A", "=1"] {
            let err = pin(&source, &env(&[bad])).expect_err("not NAME=VALUE");
            assert!(format!("{err:#}").contains("is not NAME=VALUE"), "{err:#}");
        }
    }

    #[test]
    fn capabilities_beyond_containerds_defaults_only_when_added() {
        let defaults = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        let create = |rego: &str, caps: serde_json::Value| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            r["OCI"]["Process"]["Capabilities"] = caps;
            eval(rego, r) == regorus::Value::Bool(true)
        };
        let sets = |caps: &[&str]| serde_json::json!({ "Bounding": caps, "Effective": caps, "Inheritable": [], "Permitted": caps, "Ambient": [] });
        let rego = policy_rego(&[image()], &no_pod());
        assert!(create(&rego, sets(&defaults)), "containerd's defaults");
        assert!(create(&rego, sets(&["CAP_KILL"])), "fewer");
        assert!(!create(&rego, serde_json::Value::Null), "no sets at all: the process keeps every capability");
        assert!(create(&rego, sets(&[])), "none");
        let mut more = defaults.to_vec();
        more.push("CAP_SYS_ADMIN");
        assert!(!create(&rego, sets(&more)), "one more");
        let mut only_bounding = sets(&defaults);
        only_bounding["Bounding"] = serde_json::json!(more);
        assert!(!create(&rego, only_bounding), "one more, in the bounding set only");
        let mut added = image();
        added.capabilities_added = vec!["CAP_SYS_ADMIN".into()];
        let pod = PodAllowances { execs: vec![vec!["env".into()]], ..Default::default() };
        let rego = policy_rego(&[added], &pod);
        assert!(create(&rego, sets(&more)), "added for the image");
        let exec = |caps: &[&str]| {
            let input = serde_json::json!({ "container_id": "c", "process": { "User": { "UID": 1000, "GID": 1000 },
                "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": sets(caps) } });
            eval_rule(&rego, "ExecProcessRequest", input) == regorus::Value::Bool(true)
        };
        assert!(exec(&more));
        assert!(!exec(&["CAP_SYS_PTRACE"]), "an exec's capabilities");
        let input = serde_json::json!({ "container_id": "c",
            "process": { "User": { "UID": 1000, "GID": 1000 }, "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": null } });
        assert_eq!(
            eval_rule(&rego, "ExecProcessRequest", input),
            regorus::Value::Bool(false),
            "an exec with every capability"
        );
    }

    #[test]
    fn image_config_gives_command_environment_and_working_directory() {
        let config = ImageConfig::parse(
            br#"{"config":{"Env":["PATH=/bin","A=1"],"Entrypoint":["/bin/app"],"Cmd":["--port","80"]}}"#,
        )
        .expect("config");
        assert_eq!(config.command, ["/bin/app", "--port", "80"]);
        assert_eq!(config.env, ["PATH=/bin", "A=1"]);
        assert_eq!(config.working_dir, "/", "containerd's default");
        let config =
            ImageConfig::parse(br#"{"config":{"Cmd":["sh"],"WorkingDir":"/app","Entrypoint":null}}"#).expect("config");
        assert_eq!((config.command, config.working_dir), (vec!["sh".to_owned()], "/app".to_owned()));
        assert!(ImageConfig::parse(br#"{"config":{"Env":"PATH=/bin"}}"#).is_err(), "Env not a list");

        let source =
            SourceImage { name: "x:1".into(), config: ImageConfig::parse(b"{}").expect("empty"), layers: vec![] };
        let err = pin(&source, &Overrides::default()).expect_err("no command");
        assert!(format!("{err:#}").contains("--command x:1=JSON"), "{err:#}");
        let overrides =
            Overrides { command: Some(vec!["true".into()]), working_dir: Some("/w".into()), ..Default::default() };
        let pinned = pin(&source, &overrides).expect("pinned");
        assert_eq!((pinned.command, pinned.working_dir), (vec!["true".to_owned()], "/w".to_owned()));
        assert_eq!(pinned.user, ProcessUser { uid: 0, gid: 0 }, "no User: root");
        let overrides = Overrides { user: Some((1000, Some(3000))), ..overrides };
        assert_eq!(pin(&source, &overrides).expect("pinned").user, ProcessUser { uid: 1000, gid: 3000 });
        let overrides = Overrides { user: Some((1000, None)), ..overrides };
        assert_eq!(pin(&source, &overrides).expect("pinned").user, ProcessUser { uid: 1000, gid: 0 }, "no passwd");
        let named = ImageConfig::parse(br#"{"config":{"Cmd":["sh"],"User":"app"}}"#).expect("config");
        assert_eq!(named.user, "app");
        let source = SourceImage { name: "x:1".into(), config: named, layers: vec![] };
        let err = pin(&source, &Overrides::default()).expect_err("a name without /etc/passwd");
        assert!(format!("{err:#}").contains("not in the image's /etc/passwd"), "{err:#}");
    }

    #[test]
    fn supplementary_groups_are_the_users_the_images_and_the_pod_specs() {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, content) in [
            ("etc/passwd", "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"),
            ("etc/group", "wheel:x:10:root\nweb:x:33:app\n"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, path, content.as_bytes()).expect("entry");
        }
        let config = ImageConfig::parse(br#"{"config":{"Cmd":["sh"],"User":"app"}}"#).expect("config");
        let source = SourceImage { name: "x:1".into(), config, layers: vec![tar.into_inner().expect("tar")] };
        let pinned = pin(&source, &Overrides::default()).expect("pinned");
        assert_eq!(pinned.user, ProcessUser { uid: 1000, gid: 1000 });
        // Without runAsUser, containerd 1.6.20 looks up uid 0's groups, later ones the image's User's.
        assert_eq!(pinned.groups, [10, 33, 1000]);
        let overrides = Overrides { user: Some((1000, None)), groups: vec![4000, 33], ..Default::default() };
        assert_eq!(pin(&source, &overrides).expect("pinned").groups, [33, 1000, 4000]);
    }

    #[test]
    fn groups_no_new_privileges_and_a_read_only_root_are_pinned() {
        let pod = PodAllowances { execs: vec![vec!["env".into()]], ..Default::default() };
        let create = |image: &PinnedImage, gids: &[u32], no_new_privileges: bool, read_only: bool| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            r["OCI"]["Process"]["User"]["AdditionalGids"] = serde_json::json!(gids);
            r["OCI"]["Process"]["NoNewPrivileges"] = no_new_privileges.into();
            r["OCI"]["Root"]["Readonly"] = read_only.into();
            eval(&policy_rego(std::slice::from_ref(image), &pod), r) == regorus::Value::Bool(true)
        };
        let exec = |image: &PinnedImage, gids: &[u32], no_new_privileges: bool| {
            let input = serde_json::json!({ "container_id": "c", "process": {
                "User": { "UID": 1000, "GID": 1000, "AdditionalGids": gids }, "NoNewPrivileges": no_new_privileges,
                "Args": ["env"], "Env": ["PATH=/bin"], "Cwd": "/srv", "Capabilities": { "Bounding": [] } } });
            eval_rule(&policy_rego(std::slice::from_ref(image), &pod), "ExecProcessRequest", input)
                == regorus::Value::Bool(true)
        };
        let plain = image();
        assert!(create(&plain, &[1000, 2000], false, false));
        assert!(create(&plain, &[], false, false), "fewer groups than pinned");
        assert!(!create(&plain, &[1000, 0], false, false), "the node adds group 0");
        assert!(create(&plain, &[1000], true, true), "stricter than the pod spec: the node's choice");
        assert!(exec(&plain, &[2000], false));
        assert!(!exec(&plain, &[1000, 0], false), "an exec with group 0");
        let strict = PinnedImage { no_new_privileges: true, read_only_root: true, ..image() };
        assert!(create(&strict, &[1000], true, true));
        assert!(!create(&strict, &[1000], false, true), "no_new_privs dropped");
        assert!(!create(&strict, &[1000], true, false), "a writable root");
        // … and, as containerd mounts them then, read-only copies of hosts, hostname, resolv.conf.
        let with_hosts = |image: &PinnedImage, options: &[&str]| {
            let mut r = request(&"cd".repeat(32), &["sleep", "1000"]);
            r["OCI"]["Process"]["NoNewPrivileges"] = true.into();
            r["OCI"]["Root"]["Readonly"] = true.into();
            r["OCI"]["Mounts"].as_array_mut().expect("mounts").push(serde_json::json!({
                "destination": "/etc/hosts", "type_": "bind", "source": "/run/kata-containers/shared/containers/c-hosts",
                "options": options }));
            eval(&policy_rego(std::slice::from_ref(image), &pod), r) == regorus::Value::Bool(true)
        };
        assert!(with_hosts(&strict, &["rbind", "rprivate", "ro"]));
        assert!(!with_hosts(&strict, &["rbind", "rprivate"]), "a writable /etc/hosts");
        assert!(!with_hosts(&strict, &["rbind", "ro", "rw"]), "rw after ro");
        assert!(with_hosts(&plain, &["rbind", "rprivate"]), "writable where the root is");
        assert!(exec(&strict, &[1000], true));
        assert!(!exec(&strict, &[1000], false), "an exec without no_new_privs");
    }

    /// Each way a host could bring unpinned bytes in next to pinned layers: refused.
    #[test]
    fn storages_and_mounts_beyond_the_pinned_ones_are_refused() {
        let rego = policy_rego(&[image()], &no_pod());
        let pinned = || request(&"cd".repeat(32), &["sleep", "1000"]);
        let refused = |what: &str, r: serde_json::Value| {
            assert_eq!(eval(&rego, r), regorus::Value::Bool(false), "{what}");
        };
        // The host's own root hash in front of the pinned one: the agent would use the first.
        let mut r = pinned();
        r["storages"][0]["options"]
            .as_array_mut()
            .expect("options")
            .insert(1, format!("root_hash={}", "00".repeat(32)).into());
        refused("a second root_hash", r);
        let mut r = pinned();
        r["storages"][0]["mount_point"] = "/usr/bin".into();
        refused("a layer mounted over the guest's programs", r);
        let mut r = pinned();
        r["storages"][1]["options"]
            .as_array_mut()
            .expect("options")
            .push("lowerdir=/run/kata-containers/shared/containers".into());
        refused("a second lowerdir (overlayfs takes the last)", r);
        let mut r = pinned();
        r["storages"][1]["options"][1] = "upperdir=/run/kata-containers/shared/containers".into();
        refused("the copied files as the upper layer", r);
        let mut r = pinned();
        let storages = r["storages"].as_array_mut().expect("storages");
        storages.reverse();
        refused("the overlay before its layers", r);
        let mut r = pinned();
        r["OCI"]["Root"]["Path"] = "/run/contrast/rootfs/other".into();
        r["storages"][1]["mount_point"] = "/run/contrast/rootfs/other".into();
        refused("another container's root", r);

        let with_mount = |m: serde_json::Value| {
            let mut r = pinned();
            r["OCI"]["Mounts"].as_array_mut().expect("mounts").push(m);
            eval(&rego, r)
        };
        let kernel =
            serde_json::json!({ "destination": "/dev/mqueue", "type_": "mqueue", "source": "mqueue", "options": [] });
        assert_eq!(with_mount(kernel), regorus::Value::Bool(true));
        let hidden = |list: &str, path: &str| {
            let mut r = pinned();
            r["OCI"]["Linux"][list].as_array_mut().expect("paths").push(path.into());
            eval(&rego, r)
        };
        assert_eq!(hidden("MaskedPaths", "/sys/firmware"), regorus::Value::Bool(true));
        assert_eq!(hidden("ReadonlyPaths", "/proc/bus"), regorus::Value::Bool(true));
        assert_eq!(hidden("MaskedPaths", "/etc/app"), regorus::Value::Bool(false), "a masked image directory");
        assert_eq!(hidden("ReadonlyPaths", "/data"), regorus::Value::Bool(false), "a read-only image directory");
        assert_eq!(hidden("MaskedPaths", "/proc/../etc"), regorus::Value::Bool(false), "a masked parent");
        for magic in ["/proc/self/root/etc/app", "/proc/thread-self/cwd", "/proc/1/root/etc", "/proc/self"] {
            assert_eq!(hidden("MaskedPaths", magic), regorus::Value::Bool(false), "{magic}: back into the container");
        }
        assert_eq!(hidden("ReadonlyPaths", "/dev/fd/3"), regorus::Value::Bool(false), "a /dev link to /proc/self");
        assert_eq!(hidden("ReadonlyPaths", "/sys//fs"), regorus::Value::Bool(false), "not canonical");
        let linux = |key: &str, value: serde_json::Value| {
            let mut r = pinned();
            r["OCI"]["Linux"][key] = value;
            eval(&rego, r)
        };
        let device = |path: &str| serde_json::json!([{ "Path": path, "Type": "c", "Major": 10, "Minor": 229 }]);
        assert_eq!(linux("Devices", serde_json::json!([])), regorus::Value::Bool(true));
        for bad in ["/dev/urandom", "/dev/fuse", "/dev/../usr/lib/python3/site-packages/x.pth", "/etc/x"] {
            assert_eq!(linux("Devices", device(bad)), regorus::Value::Bool(false), "device {bad}");
        }
        // Device cgroup rules: containerd's deny-all, more denials, none; never an allowance.
        let rule = |allow: bool, kind: &str, major: i64, access: &str| serde_json::json!({ "Allow": allow, "Type": kind, "Major": major, "Minor": -1, "Access": access });
        let rules = |list: Vec<serde_json::Value>| linux("Resources", serde_json::json!({ "Devices": list }));
        assert_eq!(rules(vec![rule(false, "a", -1, "rwm")]), regorus::Value::Bool(true), "containerd's deny-all");
        assert_eq!(rules(vec![rule(false, "a", -1, "rwm"), rule(false, "b", 8, "r")]), regorus::Value::Bool(true));
        assert_eq!(rules(vec![]), regorus::Value::Bool(true));
        assert_eq!(linux("Resources", serde_json::Value::Null), regorus::Value::Bool(true), "no resources");
        for bad in [rule(true, "b", 254, "r"), rule(true, "a", -1, "rwm"), rule(true, "c", 10, "m")] {
            let list = vec![rule(false, "a", -1, "rwm"), bad.clone()];
            assert_eq!(rules(list), regorus::Value::Bool(false), "{bad}");
        }
        // The runtime's defaults, as `ctr run` lists them, allow nothing more.
        let with_minor = |kind: &str, major: i64, minor: i64, access: &str| serde_json::json!({ "Allow": true, "Type": kind, "Major": major, "Minor": minor, "Access": access });
        let defaults = vec![with_minor("c", 1, 3, "rwm"), with_minor("c", 5, 2, "rw"), with_minor("c", 136, -1, "rwm")];
        assert_eq!(rules(defaults), regorus::Value::Bool(true), "the runtime's defaults");
        for bad in [with_minor("c", 0, 0, "rwm"), with_minor("b", 1, 3, "rwm"), with_minor("c", 1, 3, "rwmx")] {
            assert_eq!(rules(vec![bad.clone()]), regorus::Value::Bool(false), "{bad}");
        }
        assert_eq!(
            linux("Sysctl", serde_json::json!({ "net.ipv4.ping_group_range": "0 1" })),
            regorus::Value::Bool(true)
        );
        let sysctl = serde_json::json!({ "net.ipv4.conf.all.route_localnet": "1" });
        assert_eq!(linux("Sysctl", sysctl), regorus::Value::Bool(false), "an unsafe sysctl");
        let own = |types: &[&str]| {
            serde_json::Value::Array(types.iter().map(|t| serde_json::json!({ "Type": t, "Path": "" })).collect())
        };
        assert_eq!(linux("Namespaces", own(&["mount", "pid"])), regorus::Value::Bool(true));
        assert_eq!(linux("Namespaces", own(&["pid"])), regorus::Value::Bool(false), "the guest's mounts");
        assert_eq!(linux("Namespaces", own(&["mount"])), regorus::Value::Bool(false), "the guest's processes");
        let guests = serde_json::json!([{ "Type": "mount", "Path": "/proc/1/ns/mnt" }, { "Type": "pid", "Path": "" }]);
        assert_eq!(linux("Namespaces", guests), regorus::Value::Bool(false), "the guest's mount namespace by path");
        let pods = serde_json::json!([{ "Type": "mount", "Path": "" }, { "Type": "pid", "Path": "/proc/7/ns/pid" }]);
        assert_eq!(linux("Namespaces", pods), regorus::Value::Bool(true), "the pod's shared PID namespace");
        let mut r = pinned();
        r["OCI"]["Process"]["Capabilities"] = serde_json::Value::Null;
        assert_eq!(eval(&rego, r), regorus::Value::Bool(false), "no capability sets: every capability");
        for (what, m) in [
            (
                "a bind by its options",
                serde_json::json!({ "destination": "/data", "type_": "none", "source": "/usr", "options": ["rbind"] }),
            ),
            (
                "a host share",
                serde_json::json!({ "destination": "/data", "type_": "virtiofs", "source": "contrast", "options": [] }),
            ),
            (
                "a raw disk",
                serde_json::json!({ "destination": "/data", "type_": "erofs", "source": "/dev/sda", "options": [] }),
            ),
            (
                "a kernel file system over the image's files",
                serde_json::json!({ "destination": "/etc/app", "type_": "tmpfs", "source": "tmpfs", "options": [] }),
            ),
            (
                "… through a parent directory",
                serde_json::json!({ "destination": "/dev/../etc", "type_": "tmpfs", "source": "tmpfs", "options": [] }),
            ),
            (
                "… beside a kernel directory",
                serde_json::json!({ "destination": "/device", "type_": "tmpfs", "source": "tmpfs", "options": [] }),
            ),
            (
                "proc as a bind",
                serde_json::json!({ "destination": "/data", "type_": "proc", "source": "/etc", "options": ["bind"] }),
            ),
            (
                "… through /proc back into the container's own files",
                serde_json::json!({ "destination": "/proc/self/root/etc", "type_": "tmpfs", "source": "tmpfs", "options": [] }),
            ),
            (
                "… through a process's /proc directory",
                serde_json::json!({ "destination": "/proc/1/cwd", "type_": "tmpfs", "source": "tmpfs", "options": [] }),
            ),
        ] {
            assert_eq!(with_mount(m), regorus::Value::Bool(false), "{what}");
        }

        // The pause container runs the guest's own binary: nothing may be mounted over it.
        let pause = |mounts: serde_json::Value| {
            let r = serde_json::json!({
                "container_id": "p", "storages": [],
                "OCI": { "Root": { "Path": "/run/contrast/pause", "Readonly": true },
                         "Process": { "Args": ["/pause"] }, "Mounts": mounts,
                         "Linux": { "Namespaces": [{ "Type": "pid", "Path": "" }, { "Type": "mount", "Path": "" }] },
                         "Annotations": { "io.kubernetes.cri.container-type": "sandbox" } },
            });
            eval(&rego, r)
        };
        let proc_ = serde_json::json!({ "destination": "/proc", "type_": "proc", "source": "proc", "options": [] });
        assert_eq!(pause(serde_json::json!([proc_])), regorus::Value::Bool(true));
        let over = serde_json::json!({ "destination": "/pause", "type_": "bind",
            "source": "/run/kata-containers/shared/containers/p-hosts", "options": ["rbind"] });
        assert_eq!(pause(serde_json::json!([proc_, over])), regorus::Value::Bool(false), "a copied file over /pause");

        let sandbox = |storages: serde_json::Value| {
            eval_rule(&rego, "CreateSandboxRequest", serde_json::json!({ "hostname": "pod", "storages": storages }))
        };
        assert_eq!(sandbox(serde_json::json!([])), regorus::Value::Bool(true));
        let share = serde_json::json!([{ "driver": "virtio-fs", "source": "contrast", "mount_point": "/usr/bin", "options": [] }]);
        assert_eq!(sandbox(share), regorus::Value::Bool(false), "a sandbox storage nobody judges");
    }

    #[test]
    fn archives_give_the_same_init_data_every_time() {
        let dir = std::env::temp_dir().join(format!("contrast-generate-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("img.tar");
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        layer.append_data(&mut h, "hi", &b"hi"[..]).expect("layer");
        let layer = layer.into_inner().expect("layer");
        use sha2::Digest;
        let hex = |b: &[u8]| sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
        let config = serde_json::to_vec(&serde_json::json!({ "config": { "Cmd": ["/hi"] } })).expect("json");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "config": { "digest": format!("sha256:{}", hex(&config)) },
            "layers": [{ "digest": format!("sha256:{}", hex(&layer)) }] }))
        .expect("json");
        let index = serde_json::to_vec(&serde_json::json!({ "manifests": [{
            "digest": format!("sha256:{}", hex(&manifest)), "annotations": { "io.containerd.image.name": "x:1" } }] }))
        .expect("json");
        let mut t = tar::Builder::new(std::fs::File::create(&path).expect("create"));
        for (name, data) in [
            (format!("blobs/sha256/{}", hex(&layer)), layer.clone()),
            (format!("blobs/sha256/{}", hex(&manifest)), manifest.clone()),
            (format!("blobs/sha256/{}", hex(&config)), config.clone()),
            ("index.json".to_owned(), index),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            t.append_data(&mut h, name, &data[..]).expect("append");
        }
        t.finish().expect("tar");
        drop(t);
        let a = init_data_for_archives(&[&path], &BTreeMap::new(), &no_pod()).expect("init data");
        let b = init_data_for_archives(&[&path], &BTreeMap::new(), &no_pod()).expect("init data");
        assert_eq!(a.toml(), b.toml());
        assert_eq!(a.annotation(), b.annotation());
        let policy = a.policy().expect("policy");
        assert!(policy.contains("\"x:1\"") && policy.contains("\"/hi\""), "{policy}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
