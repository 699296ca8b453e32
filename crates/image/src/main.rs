//! `contrast-image`: builds the pod-VM boot files from an unpacked Debian kernel package and
//! the static guest agent.
//!
//! Output directory:
//! - `vmlinuz`: the kernel as Debian ships it (bzImage);
//! - `vmlinux`: the same kernel uncompressed (ELF, boots through PVH; faster under TCG);
//! - `initrd.img`: gzip newc cpio with the agent as `/init`, the kernel modules the guest
//!   loads (decompressed, in dependency order, listed in `/etc/contrast/modules`) and busybox;
//! - `build-info.txt`: kernel package and version, SHA-256 of every output.
//!
//! The same inputs give byte-identical outputs.

mod cpio;
mod kernel;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;

/// Modules the agent needs: virtio vsock transport, and the ACPI power button with evdev so
/// that QEMU's `system_powerdown` reaches the agent.
const GUEST_MODULES: &[&str] = &["vmw_vsock_virtio_transport", "button", "evdev"];

struct Args {
    kernel_tree: PathBuf,
    agent: PathBuf,
    busybox: Option<PathBuf>,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut kernel_tree = None;
    let mut agent = None;
    let mut busybox = None;
    let mut out = None;
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().map(PathBuf::from).with_context(|| format!("{flag:?} needs a value"));
        match flag.to_str() {
            Some("--kernel-tree") => kernel_tree = Some(value()?),
            Some("--agent") => agent = Some(value()?),
            Some("--busybox") => busybox = Some(value()?),
            Some("--out") => out = Some(value()?),
            _ => bail!(
                "unknown argument {flag:?}\nusage: contrast-image --kernel-tree DIR --agent FILE [--busybox FILE] --out DIR"
            ),
        }
    }
    Ok(Args {
        kernel_tree: kernel_tree.context("--kernel-tree is required")?,
        agent: agent.context("--agent is required")?,
        busybox,
        out: out.context("--out is required")?,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let kernel = kernel::KernelTree::open(&args.kernel_tree)?;

    let bzimage = fs::read(&kernel.bzimage).with_context(|| format!("reading {}", kernel.bzimage.display()))?;
    let vmlinux = kernel::extract_vmlinux(&bzimage).context("extracting vmlinux from the bzImage")?;
    write_output(&args.out, "vmlinuz", &bzimage)?;
    write_output(&args.out, "vmlinux", &vmlinux)?;

    let modules = kernel.resolve_modules(GUEST_MODULES)?;
    let initrd = build_initrd(&args, &kernel, &modules)?;
    write_output(&args.out, "initrd.img", &initrd)?;

    let mut info = format!("kernel-package: {}\n", kernel.package);
    for name in ["vmlinuz", "vmlinux", "initrd.img"] {
        let digest = Sha256::digest(fs::read(args.out.join(name))?);
        info.push_str(&format!("sha256 {name}: {}\n", hex(&digest)));
    }
    write_output(&args.out, "build-info.txt", info.as_bytes())?;
    print!("{info}");
    Ok(())
}

fn build_initrd(args: &Args, kernel: &kernel::KernelTree, modules: &[PathBuf]) -> Result<Vec<u8>> {
    let mut cpio = CpioWriter::new(Vec::new());
    for dir in ["bin", "dev", "etc", "etc/contrast", "lib", "lib/modules", "proc", "run", "sys", "tmp"] {
        cpio.dir(dir, 0o755)?;
    }
    let agent = fs::read(&args.agent).with_context(|| format!("reading agent {}", args.agent.display()))?;
    cpio.file("init", 0o755, &agent)?;

    let mut list = String::new();
    for module in modules {
        let data = kernel.module_bytes(module)?;
        let name = module_file_name(module)?;
        cpio.file(&format!("lib/modules/{name}"), 0o644, &data)?;
        list.push_str(&format!("/lib/modules/{name}\n"));
    }
    cpio.file("etc/contrast/modules", 0o644, list.as_bytes())?;

    if let Some(busybox) = &args.busybox {
        let data = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
        cpio.file("bin/busybox", 0o755, &data)?;
        cpio.symlink("bin/sh", "busybox")?;
    }
    let raw = cpio.finish()?;
    // GzBuilder writes mtime 0 and no file name: reproducible.
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}

fn module_file_name(module: &Path) -> Result<String> {
    let name = module.file_name().and_then(|n| n.to_str()).context("module path without a name")?;
    Ok(name.trim_end_matches(".xz").trim_end_matches(".zst").to_owned())
}

fn write_output(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
