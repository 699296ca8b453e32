//! `contrast-generate`: from a pod's images, computes what its policy must pin and writes its
//! init data — the counterpart of `contrast generate`.
//!
//! For each image (an OCI image archive as `ctr image import` takes it, or an image in
//! containerd), every layer blob becomes the EROFS + dm-verity image the node will hand to the
//! guest (`contrast-erofs`, a pure function of the blob), and its root hash is pinned: the
//! values come from the image's bytes alone, never from a node. The policy (`policy.rego`,
//! kata's rule names, kata's input shape) allows a container only when its storages are
//! exactly its image's pinned layers in order under one overlay that is its root, and — when a
//! command is pinned — only that command; an exec only of a command given with `--exec` (an
//! exec probe's, say), none by default. The init data TOML goes to `--out`; the annotation
//! value (base64 of gzip) is printed. Same input, same bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use contrast_generate::{archive_images, pin, policy_rego};

const USAGE: &str = "usage: contrast-generate [--image ARCHIVE.tar]... \
[--containerd SOCKET --namespace NS --image-name NAME]... [--command IMAGE=JSON]... [--exec JSON]... \
--out INITDATA.toml";

struct Args {
    archives: Vec<PathBuf>,
    containerd: Option<(PathBuf, String)>,
    image_names: Vec<String>,
    commands: BTreeMap<String, Vec<String>>,
    execs: Vec<Vec<String>>,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        archives: Vec::new(),
        containerd: None,
        image_names: Vec::new(),
        commands: BTreeMap::new(),
        execs: Vec::new(),
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
                a.commands.insert(image.to_owned(), args);
            }
            "--exec" => {
                let v = value()?;
                let args: Vec<String> =
                    serde_json::from_str(&v).with_context(|| format!("--exec {v:?}: not a JSON list of strings"))?;
                if args.is_empty() {
                    bail!("--exec {v:?}: an empty command");
                }
                a.execs.push(args);
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
    let mut images = Vec::new();
    for path in &args.archives {
        for (name, blobs) in archive_images(path)? {
            images.push(pin(&name, &blobs, args.commands.get(&name))?);
        }
    }
    if let Some((socket, namespace)) = &args.containerd {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for name in &args.image_names {
            let blobs = rt.block_on(async {
                let mut c = contrast_containerd_client::Client::connect(socket, namespace).await?;
                let mut blobs = Vec::new();
                for l in c.image_layers(name).await? {
                    blobs.push(c.read_blob(&l.digest, usize::MAX).await?);
                }
                Ok::<_, anyhow::Error>(blobs)
            })?;
            images.push(pin(name, &blobs, args.commands.get(name))?);
        }
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    let init_data = contrast_initdata::InitData::wrap_policy(&policy_rego(&images, &args.execs));
    std::fs::write(&args.out, init_data.toml()).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", init_data.annotation());
    Ok(())
}
