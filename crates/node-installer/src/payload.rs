//! What gets installed: the files of the installer's payload directory, and the runtime
//! handler name derived from them.
//!
//! Payload layout: `bin/containerd-shim-contrast-cc-v2` (required), `bin/qemu-system-x86_64`
//! (optional: when absent the node's QEMU is used), `share/*` (the pod-VM image: kernel,
//! `initrd.img`, `root.img`, `cmdline`, `reference-values.json`),
//! `config/configuration-<platform>.toml` (the runtime-class config template).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub const SHIM: &str = "containerd-shim-contrast-cc-v2";
pub const QEMU: &str = "qemu-system-x86_64";
pub const PLATFORMS: &[&str] = &["insecure", "snp", "tdx"];
/// Image files the runtime config points at; all must be in `share/`.
const REQUIRED_SHARE: &[&str] = &["initrd.img", "root.img", "cmdline"];

/// One file to install: where it goes under the handler's directory, and its source.
#[derive(Debug, Clone)]
pub struct File {
    pub rel: String,
    pub source: PathBuf,
    pub mode: u32,
}

#[derive(Debug)]
pub struct Payload {
    pub platform: String,
    pub files: Vec<File>,
    pub template: String,
    pub handler: String,
}

impl Payload {
    /// Reads the payload for `platform`. `salt` holds whatever else shapes the installation
    /// (configuration overrides): it goes into the handler hash too.
    pub fn load(dir: &Path, platform: &str, salt: &[String]) -> Result<Payload> {
        if !PLATFORMS.contains(&platform) {
            bail!("unknown platform {platform:?} (one of {PLATFORMS:?})");
        }
        let mut files = Vec::new();
        let shim = dir.join("bin").join(SHIM);
        if !shim.is_file() {
            bail!("payload {}: no bin/{SHIM}", dir.display());
        }
        files.push(file(&shim, format!("bin/{SHIM}"))?);
        let qemu = dir.join("bin").join(QEMU);
        if qemu.is_file() {
            files.push(file(&qemu, format!("bin/{QEMU}"))?);
        }
        let share = dir.join("share");
        let mut names: Vec<String> = std::fs::read_dir(&share)
            .with_context(|| format!("payload {}: reading share/", dir.display()))?
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for required in REQUIRED_SHARE {
            if !names.iter().any(|n| n == required) {
                bail!("payload {}: no share/{required}", dir.display());
            }
        }
        if !names.iter().any(|n| n == "vmlinux" || n == "vmlinuz") {
            bail!("payload {}: no share/vmlinux or share/vmlinuz", dir.display());
        }
        for name in names {
            files.push(file(&share.join(&name), format!("share/{name}"))?);
        }
        let template_path = dir.join("config").join(format!("configuration-{platform}.toml"));
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("payload: reading {}", template_path.display()))?;

        let mut h = Sha256::new();
        for f in &files {
            let data = std::fs::read(&f.source).with_context(|| format!("reading {}", f.source.display()))?;
            h.update(f.rel.as_bytes());
            h.update(f.mode.to_le_bytes());
            h.update(Sha256::digest(&data));
        }
        h.update(b"template\0");
        h.update(template.as_bytes());
        for s in salt {
            h.update(b"\0set\0");
            h.update(s.as_bytes());
        }
        let digest = h.finalize();
        let hash8: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let handler = format!("contrast-cc-{platform}-{hash8}");
        Ok(Payload { platform: platform.to_owned(), files, template, handler })
    }

    pub fn has(&self, rel: &str) -> bool {
        self.files.iter().any(|f| f.rel == rel)
    }
}

fn file(source: &Path, rel: String) -> Result<File> {
    let mode =
        std::fs::metadata(source).with_context(|| format!("{}", source.display()))?.permissions().mode() & 0o7777;
    Ok(File { rel, source: source.to_owned(), mode })
}

/// The installer image's reference for a payload directory and installer binary:
/// `contrast-node-installer:<version>-<hash8>`, the hash over the binary and every file of
/// the payload (all platforms). `make installer-image` tags the image with it and
/// `manifests` points the DaemonSet at it by default, so a node never runs a cached image of
/// the same version whose payload (and so handler) differs from the RuntimeClass's.
pub fn image_ref(dir: &Path, installer: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let binary = std::fs::read(installer).with_context(|| format!("reading {}", installer.display()))?;
    h.update(b"installer\0");
    h.update(Sha256::digest(&binary));
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    for rel in files {
        let path = dir.join(&rel);
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        h.update(b"\0file\0");
        h.update(rel.as_bytes());
        h.update(meta.permissions().mode().to_le_bytes());
        h.update(Sha256::digest(&data));
    }
    let digest = h.finalize();
    let hash8: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("contrast-node-installer:{}-{hash8}", env!("CARGO_PKG_VERSION")))
}

/// Every regular file below `dir`, as paths relative to `root` (links followed, as the
/// image build's copy follows them).
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("payload: reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if path.is_file() {
            let rel = path.strip_prefix(root).expect("below the root");
            out.push(rel.to_str().with_context(|| format!("payload: {} is not UTF-8", path.display()))?.to_owned());
        }
    }
    Ok(())
}
