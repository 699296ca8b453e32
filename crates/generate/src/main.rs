//! `contrast-generate`: from a pod's images, computes what its policy must pin and writes its
//! init data — the counterpart of `contrast generate`.
//!
//! For each image (an OCI image archive as `ctr image import` takes it, or an image in
//! containerd), every layer blob becomes the EROFS + dm-verity image the node will hand to the
//! guest (`contrast-erofs`, a pure function of the blob), and its root hash is pinned: the
//! values come from the image's bytes alone (with `--containerd`, which image a tag names is
//! that containerd's say; `NAME@sha256:…` pins the image itself). The policy (`policy.rego`,
//! kata's rule names, kata's input shape) allows a container only when its storages are
//! exactly its image's pinned layers in order under one overlay that is its root, running its
//! image's command (Entrypoint and Cmd, or `--command`) in its image's working directory (or
//! `--workdir`), with its container spec's environment (`--container-env`, each entry there with
//! its value) and none beyond its image's, the pod's (`--env`), its hostname and
//! Kubernetes' service addresses, no capability beyond containerd's defaults and `--cap-add`,
//! as the image's user (or `--user`) with no supplementary group beyond its own, the image's
//! for that user and `--groups` (the pod spec's supplementalGroups and fsGroup), with
//! `no_new_privs` and a read-only root where `--no-new-privileges` and `--read-only-root` ask
//! for them (allowPrivilegeEscalation: false, readOnlyRootFilesystem: true), the pod's emptyDir
//! volumes only where `--empty-dir` mounts them, the node's configMap, secret, projected and
//! downwardAPI volumes (copied, read-only) only where `--config-volume` mounts them, device
//! nodes only below /dev, sysctls only Kubernetes' safe ones and `--sysctl`, and no write to
//! a process's stdin unless `--stdin`; `kubectl port-forward` only to the ports `--port-forward`
//! lists; an exec only of a command given with `--exec` (an exec
//! probe's, say), none by default. The init data TOML goes to `--out`; the annotation value
//! (base64 of gzip) is printed. Same input, same bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contrast_generate::{archive_images, containerd_image, pin, policy_rego, Overrides, PodAllowances};

const USAGE: &str = "usage: contrast-generate [--image ARCHIVE.tar]... \
[--containerd SOCKET --namespace NS --image-name NAME]... [--command IMAGE=JSON]... [--workdir IMAGE=DIR]... \
[--cap-add IMAGE=CAPABILITY]... [--empty-dir IMAGE=VOLUME:PATH]... [--config-volume IMAGE=PATH]... \
[--user IMAGE=UID[:GID]]... [--groups IMAGE=GID[,GID]...]... [--no-new-privileges IMAGE]... [--read-only-root IMAGE]... \
[--container-env IMAGE=NAME=VALUE]... [--env NAME=VALUE]... [--exec JSON]... \
[--sysctl NAME]... [--stdin] [--port-forward PORT]... --out INITDATA.toml";

struct Args {
    archives: Vec<PathBuf>,
    containerd: Option<(PathBuf, String)>,
    image_names: Vec<String>,
    overrides: BTreeMap<String, Overrides>,
    pod: PodAllowances,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        archives: Vec::new(),
        containerd: None,
        image_names: Vec::new(),
        overrides: BTreeMap::new(),
        pod: PodAllowances::default(),
        out: PathBuf::new(),
    };
    let (mut socket, mut namespace) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--image" => a.archives.push(value()?.into()),
            "--containerd" => socket = Some(PathBuf::from(value()?)),
            "--namespace" => namespace = Some(value()?),
            "--image-name" => a.image_names.push(value()?),
            "--command" => {
                let v = value()?;
                let (image, json) = v.split_once('=').with_context(|| format!("--command {v:?}: IMAGE=JSON"))?;
                let args: Vec<String> =
                    serde_json::from_str(json).with_context(|| format!("--command {v:?}: not a JSON list"))?;
                if args.is_empty() {
                    bail!("--command {v:?}: an empty command");
                }
                let command = &mut a.overrides.entry(image.to_owned()).or_default().command;
                if command.is_some() {
                    bail!("--command {v:?}: a second command for {image}");
                }
                *command = Some(args);
            }
            "--workdir" => {
                let v = value()?;
                let (image, dir) = v.split_once('=').with_context(|| format!("--workdir {v:?}: IMAGE=DIR"))?;
                if !dir.starts_with('/') {
                    bail!("--workdir {v:?}: not an absolute path");
                }
                a.overrides.entry(image.to_owned()).or_default().working_dir = Some(dir.to_owned());
            }
            "--cap-add" => {
                let v = value()?;
                let (image, cap) = v.split_once('=').with_context(|| format!("--cap-add {v:?}: IMAGE=CAPABILITY"))?;
                // Kubernetes writes NET_ADMIN, the kernel and the OCI spec CAP_NET_ADMIN.
                let cap = cap.to_ascii_uppercase();
                let cap = if cap.starts_with("CAP_") { cap } else { format!("CAP_{cap}") };
                if cap == "CAP_ALL" {
                    bail!("--cap-add {v:?}: name the capabilities (ALL would be a privileged container)");
                }
                if cap.len() <= 4 || !cap.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                    bail!("--cap-add {v:?}: not a capability name");
                }
                a.overrides.entry(image.to_owned()).or_default().capabilities_added.push(cap);
            }
            "--empty-dir" => {
                let v = value()?;
                let (image, volume) =
                    v.split_once('=').with_context(|| format!("--empty-dir {v:?}: IMAGE=VOLUME:PATH"))?;
                let (name, path) =
                    volume.split_once(':').with_context(|| format!("--empty-dir {v:?}: IMAGE=VOLUME:PATH"))?;
                if !contrast_generate::volume_name(name) || !path.starts_with('/') {
                    bail!("--empty-dir {v:?}: a volume name (a DNS label) and an absolute path");
                }
                // As kubelet passes it: no trailing slash.
                let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
                a.overrides.entry(image.to_owned()).or_default().empty_dirs.push((name.to_owned(), path.to_owned()));
            }
            "--config-volume" => {
                let v = value()?;
                let (image, path) = v.split_once('=').with_context(|| format!("--config-volume {v:?}: IMAGE=PATH"))?;
                // As kubelet passes it: no trailing slash.
                let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
                if !path.starts_with('/') || path.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
                    bail!("--config-volume {v:?}: a canonical absolute path, not / (where the container reads the volume)");
                }
                a.overrides.entry(image.to_owned()).or_default().config_volumes.push(path.to_owned());
            }
            "--user" => {
                let v = value()?;
                let bad = || anyhow::anyhow!("--user {v:?}: IMAGE=UID or IMAGE=UID:GID (runAsUser, runAsGroup)");
                let (image, ids) = v.split_once('=').ok_or_else(bad)?;
                let (uid, gid) = match ids.split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (ids, None),
                };
                let uid: u32 = uid.parse().map_err(|_| bad())?;
                let gid = gid.map(|g| g.parse::<u32>().map_err(|_| bad())).transpose()?;
                let user = &mut a.overrides.entry(image.to_owned()).or_default().user;
                if user.is_some() {
                    bail!("--user {v:?}: a second user for {image}");
                }
                *user = Some((uid, gid));
            }
            "--groups" => {
                let v = value()?;
                let bad = || anyhow::anyhow!("--groups {v:?}: IMAGE=GID[,GID]... (supplementalGroups, fsGroup)");
                let (image, gids) = v.split_once('=').ok_or_else(bad)?;
                let gids = gids.split(',').map(|g| g.parse::<u32>().map_err(|_| bad())).collect::<Result<Vec<_>>>()?;
                a.overrides.entry(image.to_owned()).or_default().groups.extend(gids);
            }
            "--no-new-privileges" => a.overrides.entry(value()?).or_default().no_new_privileges = true,
            "--read-only-root" => a.overrides.entry(value()?).or_default().read_only_root = true,
            "--sysctl" => {
                let v = value()?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)) {
                    bail!("--sysctl {v:?}: a sysctl name (net.ipv4.tcp_rmem)");
                }
                a.pod.sysctls.push(v.replace('/', "."));
            }
            "--stdin" => a.pod.stdin = true,
            "--port-forward" => {
                let v = value()?;
                match v.parse::<u16>() {
                    Ok(port) if port > 0 => a.pod.port_forward.push(port),
                    _ => bail!("--port-forward {v:?}: a TCP port (1-65535)"),
                }
            }
            "--container-env" => {
                let v = value()?;
                let bad = || anyhow::anyhow!("--container-env {v:?}: IMAGE=NAME=VALUE");
                let (image, entry) = v.split_once('=').ok_or_else(bad)?;
                if image.is_empty() || entry.split_once('=').is_none_or(|(name, _)| name.is_empty()) {
                    return Err(bad());
                }
                a.overrides.entry(image.to_owned()).or_default().env.push(entry.to_owned());
            }
            "--env" => {
                let v = value()?;
                if v.split_once('=').is_none_or(|(name, _)| name.is_empty()) {
                    bail!("--env {v:?}: NAME=VALUE");
                }
                a.pod.env.push(v);
            }
            "--exec" => {
                let v = value()?;
                let args: Vec<String> =
                    serde_json::from_str(&v).with_context(|| format!("--exec {v:?}: not a JSON list of strings"))?;
                if args.is_empty() {
                    bail!("--exec {v:?}: an empty command");
                }
                a.pod.execs.push(args);
            }
            "--out" => a.out = value()?.into(),
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    if !a.image_names.is_empty() {
        a.containerd = Some((
            socket.context("--image-name needs --containerd")?,
            namespace.unwrap_or_else(|| "k8s.io".to_owned()),
        ));
    }
    if a.archives.is_empty() && a.image_names.is_empty() {
        bail!("no image given\n{USAGE}");
    }
    if a.out.as_os_str().is_empty() {
        bail!("--out is required\n{USAGE}");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut sources = Vec::new();
    for path in &args.archives {
        sources.extend(archive_images(path)?);
    }
    if let Some((socket, namespace)) = &args.containerd {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for name in &args.image_names {
            sources.push(rt.block_on(async {
                let mut c = contrast_containerd_client::Client::connect(socket, namespace).await?;
                containerd_image(&mut c, name).await
            })?);
        }
    }
    for image in args.overrides.keys() {
        if !sources.iter().any(|s| &s.name == image) {
            bail!(
                "--command, --workdir, --cap-add, --empty-dir, --config-volume, --user, --groups, --no-new-privileges, --read-only-root or --container-env for {image:?}, which no given image is named"
            );
        }
    }
    let mut images = Vec::new();
    for source in &sources {
        images.push(pin(source, args.overrides.get(&source.name).unwrap_or(&Overrides::default()))?);
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    let init_data = contrast_initdata::InitData::wrap_policy(&policy_rego(&images, &args.pod));
    std::fs::write(&args.out, init_data.toml()).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", init_data.annotation());
    Ok(())
}
