//! `contrast-node-installer`: puts one Contrast runtime class onto a Kubernetes node.
//!
//! ```text
//! contrast-node-installer check     --platform P [options]   can this node run P? what is missing
//! contrast-node-installer install   --platform P [options]   files + containerd config + restart
//! contrast-node-installer uninstall --platform P [options]   (or --handler NAME)
//! contrast-node-installer handler   --platform P [--payload DIR] [--set K=V]...
//! contrast-node-installer manifests --platform P [--payload DIR] [--set K=V]... [--image REF]
//! contrast-node-installer image-ref [--payload DIR]   the installer image's tag for this payload
//! ```

mod install;
mod manifests;
mod payload;
mod systemd;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use contrast_node_check as check;
use contrast_node_installer::containerd_config;

use crate::install::{Node, Restart};

const USAGE: &str =
    "usage: contrast-node-installer <check|install|uninstall|handler|manifests|image-ref> --platform insecure|snp|tdx
  --payload DIR            installer payload (default /contrast)
  --set KEY=VALUE          override in the runtime-class config (dotted key, TOML value); repeatable
check/install/uninstall:
  --host-root DIR          where the node's / is mounted (default /)
  --node-root DIR          where containerd sees that root (default /; tests: same as --host-root)
  --install-base PATH      node path of the install directory (default /opt/contrast)
  --containerd-config PATH node path of containerd's config (default /etc/containerd/config.toml)
  --k3s                    edit k3s' config.toml.tmpl (default path under /var/lib/rancher/k3s)
  --restart-command CMD    restart containerd with `sh -c CMD` instead of systemd
  --restart-unit UNIT      systemd unit to restart (default containerd.service; k3s: k3s-agent.service)
  --qemu PATH              node path of QEMU when the payload ships none (default /usr/bin/qemu-system-x86_64)
install:
  --force                  install even when `check` finds the node cannot run the platform
  --skip-unready           on such a node install nothing, remove the handler's node label, exit 0
                           (the DaemonSet's way: no crash loop on nodes of another platform)
uninstall:
  --handler NAME           remove this handler instead of the payload's
  --force                  remove it even while shims of it run (pods of it on the node)
manifests:
  --image REF              installer image (default: what `image-ref` prints, the tag `make installer-image` gives)
  --registry REG           (manifests, image-ref) the registry the nodes pull the installer image from:
                           REG/contrast-node-installer:<version>-<hash>
image-ref:                 contrast-node-installer:<version>-<hash of this binary and the whole payload>
  --namespace NS           DaemonSet namespace (default kube-system)
  --pause-image REF        main container (default registry.k8s.io/pause:3.9)";

const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";

#[derive(Default)]
struct Args {
    command: String,
    platform: Option<String>,
    payload: Option<PathBuf>,
    settings: Vec<String>,
    host_root: Option<PathBuf>,
    node_root: Option<PathBuf>,
    install_base: Option<PathBuf>,
    containerd_config: Option<PathBuf>,
    k3s: bool,
    restart_command: Option<String>,
    restart_unit: Option<String>,
    qemu: Option<PathBuf>,
    handler: Option<String>,
    image: Option<String>,
    namespace: Option<String>,
    pause_image: Option<String>,
    registry: Option<String>,
    force: bool,
    skip_unready: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args { command: it.next().with_context(|| USAGE.to_owned())?, ..Default::default() };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--platform" => a.platform = Some(value()?),
            "--payload" => a.payload = Some(value()?.into()),
            "--set" => a.settings.push(value()?),
            "--host-root" => a.host_root = Some(value()?.into()),
            "--node-root" => a.node_root = Some(value()?.into()),
            "--install-base" => a.install_base = Some(value()?.into()),
            "--containerd-config" => a.containerd_config = Some(value()?.into()),
            "--k3s" => a.k3s = true,
            "--force" => a.force = true,
            "--skip-unready" => a.skip_unready = true,
            "--restart-command" => a.restart_command = Some(value()?),
            "--restart-unit" => a.restart_unit = Some(value()?),
            "--qemu" => a.qemu = Some(value()?.into()),
            "--handler" => a.handler = Some(value()?),
            "--image" => a.image = Some(value()?),
            "--namespace" => a.namespace = Some(value()?),
            "--pause-image" => a.pause_image = Some(value()?),
            "--registry" => a.registry = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("contrast-node-installer: {e:#}");
        std::process::exit(1);
    }
}

/// The installer image this binary and the payload go into ([`payload::image_ref`]).
fn image_ref(a: &Args) -> Result<String> {
    let dir = a.payload.clone().unwrap_or_else(|| PathBuf::from("/contrast"));
    let installer = std::env::current_exe().context("finding the installer binary")?;
    let name = payload::image_ref(&dir, &installer)?;
    Ok(match a.registry.as_deref().map(|r| r.trim_end_matches('/')) {
        Some(registry) if !registry.is_empty() => format!("{registry}/{name}"),
        _ => name,
    })
}

fn run() -> Result<()> {
    let a = parse_args()?;
    let load = || -> Result<payload::Payload> {
        let platform = a.platform.as_deref().with_context(|| format!("--platform is required\n{USAGE}"))?;
        let dir = a.payload.clone().unwrap_or_else(|| PathBuf::from("/contrast"));
        payload::Payload::load(&dir, platform, &a.settings)
    };
    match a.command.as_str() {
        "handler" => println!("{}", load()?.handler),
        "image-ref" => println!("{}", image_ref(&a)?),
        "manifests" => {
            let p = load()?;
            let opts = manifests::Options {
                image: match a.image.clone() {
                    Some(image) => image,
                    None => {
                        let image = image_ref(&a)?;
                        if a.registry.is_none() {
                            eprintln!(
                                "note: the installer image {image} names no registry; kubelet pulls it as \
                                 docker.io/library/{image} unless each node has it. Push it to a registry \
                                 and pass --registry (make installer-image manifests REGISTRY=…)"
                            );
                        }
                        image
                    }
                },
                namespace: a.namespace.clone().unwrap_or_else(|| "kube-system".into()),
                pause_image: a.pause_image.clone().unwrap_or_else(|| "registry.k8s.io/pause:3.9".into()),
                settings: a.settings.clone(),
            };
            print!("{}", manifests::render(&p, &opts)?);
        }
        "check" => {
            let p = load()?;
            let report = readiness(&a, &p);
            print!("{}", report.render());
            if !report.ready() {
                std::process::exit(1);
            }
        }
        "install" => {
            let p = load()?;
            let readiness = readiness(&a, &p);
            if !readiness.ready() && !a.force && a.skip_unready {
                // A node that cannot (or no longer can) run the platform gets no pods of it.
                install::remove_node_feature(&node(&a), &p.handler)?;
                println!(
                    "{}: this node cannot run platform {}; nothing installed, not labelled {}:\n{}",
                    p.handler,
                    p.platform,
                    install::node_label(&p.handler),
                    readiness.render().trim_end()
                );
                return Ok(());
            }
            if !readiness.ready() && !a.force {
                bail!(
                    "this node cannot run platform {}; install refused (--force installs anyway):\n{}",
                    p.platform,
                    readiness.render().trim_end()
                );
            }
            let node = node(&a);
            let out = install::install(&node, &p)?;
            if readiness.ready() {
                install::write_node_feature(&node, &p.handler)?;
            } else {
                eprintln!(
                    "installed with --force on a node that fails `check`: not labelled {}",
                    install::node_label(&p.handler)
                );
            }
            report(&p.handler, "installed", &out);
        }
        "uninstall" => {
            let handler = match &a.handler {
                Some(h) => h.clone(),
                None => load()?.handler,
            };
            if !handler.starts_with("contrast-cc-") || handler.contains('/') {
                bail!("{handler:?} is not a Contrast runtime handler name");
            }
            let out = install::uninstall(&node(&a), &handler, a.force)?;
            report(&handler, "uninstalled", &out);
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

/// `check`'s probes for payload `p` on the node at `--host-root`.
fn readiness(a: &Args, p: &payload::Payload) -> check::Report {
    let root = a.host_root.clone().unwrap_or_else(|| "/".into());
    let payload_dir = a.payload.clone().unwrap_or_else(|| PathBuf::from("/contrast"));
    let qemu = if p.has(&format!("bin/{}", payload::QEMU)) {
        payload_dir.join("bin").join(payload::QEMU)
    } else {
        let node_qemu = a.qemu.clone().unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into());
        root.join(node_qemu.strip_prefix("/").unwrap_or(&node_qemu))
    };
    let source = |rel: &str| {
        p.files.iter().find(|f| f.rel == rel).map(|f| f.source.clone()).unwrap_or_else(|| payload_dir.join(rel))
    };
    // Firmware (snp/tdx) boots the bzImage; insecure's direct boot the ELF when there is one.
    let kernel = match (p.platform.as_str(), p.has("share/vmlinux")) {
        ("insecure", true) => "share/vmlinux",
        _ => "share/vmlinuz",
    };
    let mut boot_files = vec![
        ("kernel", source(kernel)),
        ("initrd", source("share/initrd.img")),
        ("root disk", source("share/root.img")),
    ];
    match p.platform.as_str() {
        "snp" => boot_files.push(("firmware", source("share/OVMF.amdsev.fd"))),
        "tdx" => boot_files.push(("firmware", source("share/OVMF.inteltdx.fd"))),
        _ => {}
    }
    let igvm = toml::from_str::<toml::Value>(&p.template)
        .ok()
        .is_some_and(|v| v.get("hypervisor").and_then(|h| h.get("qemu")).and_then(|q| q.get("igvm")).is_some());
    let probe = check::Probe { root: &root, qemu_objects: check::qemu_objects(&qemu), boot_files, igvm };
    check::check(&p.platform, &probe)
}

fn node(a: &Args) -> Node {
    let (config, rendered) = match (&a.containerd_config, a.k3s) {
        (Some(c), true) => (c.clone(), Some(c.with_file_name("config.toml"))),
        (Some(c), false) => (c.clone(), None),
        (None, true) => {
            (PathBuf::from(K3S_DIR).join("config.toml.tmpl"), Some(PathBuf::from(K3S_DIR).join("config.toml")))
        }
        (None, false) => (PathBuf::from("/etc/containerd/config.toml"), None),
    };
    let restart = match (&a.restart_command, &a.restart_unit) {
        (Some(cmd), _) => Restart::Command(cmd.clone()),
        (None, Some(unit)) => Restart::Systemd(unit.clone()),
        (None, None) if a.k3s => Restart::Systemd("k3s-agent.service".into()),
        (None, None) => Restart::Systemd("containerd.service".into()),
    };
    Node {
        host_root: a.host_root.clone().unwrap_or_else(|| "/".into()),
        node_root: a.node_root.clone().unwrap_or_else(|| "/".into()),
        install_base: a.install_base.clone().unwrap_or_else(|| "/opt/contrast".into()),
        containerd_config: config,
        k3s_rendered: rendered,
        restart,
        qemu: a.qemu.clone().unwrap_or_else(|| "/usr/bin/qemu-system-x86_64".into()),
        settings: a.settings.clone(),
    }
}

fn report(handler: &str, what: &str, out: &install::Outcome) {
    let config = if out.config_changed { "containerd config updated" } else { "containerd config unchanged" };
    let backup = out.backup.as_ref().map(|b| format!(", backup {}", b.display())).unwrap_or_default();
    let restart = if out.restarted { ", containerd restarted" } else { "" };
    println!("{handler}: {what} ({} files written, {config}{backup}{restart})", out.files_written);
}
