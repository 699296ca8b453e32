//! Shared helpers of the installer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_contrast-node-installer");

/// Runs the installer binary.
pub fn installer(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running contrast-node-installer")
}

pub fn ok(args: &[&str]) -> String {
    let out = installer(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A payload whose image files are placeholders (the installer copies them, never reads them),
/// with the repository's config templates.
pub fn fake_payload(dir: &Path) -> PathBuf {
    let p = dir.join("payload");
    for sub in ["bin", "share", "config"] {
        std::fs::create_dir_all(p.join(sub)).expect("mkdir");
    }
    std::fs::write(p.join("bin/containerd-shim-contrast-cc-v2"), "#!/bin/sh\nexit 1\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.join("bin/containerd-shim-contrast-cc-v2"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    for f in ["vmlinux", "vmlinuz", "initrd.img", "root.img", "cmdline", "OVMF.amdsev.fd", "OVMF.inteltdx.fd"] {
        std::fs::write(p.join("share").join(f), format!("placeholder {f}\n")).expect("write");
    }
    copy_templates(&p);
    p
}

pub fn copy_templates(payload: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/config");
    for platform in ["insecure", "snp", "tdx"] {
        let name = format!("configuration-{platform}.toml");
        std::fs::copy(src.join(&name), payload.join("config").join(&name)).expect("copy template");
    }
}

/// Backup files next to `config`.
pub fn backups(config: &Path) -> Vec<PathBuf> {
    let name = config.file_name().expect("path").to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = std::fs::read_dir(config.parent().expect("path"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().expect("path").to_string_lossy();
                    n.starts_with(&format!("{name}.")) && n.ends_with(".bak")
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Makes the fabricated host root `root` a node that `check --platform insecure` passes: a
/// vhost-device-vsock and a QEMU that answers `-object help` (a script: these tests never
/// boot a VM).
pub fn ready_insecure_node(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join("usr/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for (name, text) in [
        ("vhost-device-vsock", "#!/bin/sh\nexit 0\n"),
        ("qemu-system-x86_64", "#!/bin/sh\necho 'List of user creatable objects:'\necho '  memory-backend-memfd'\n"),
    ] {
        std::fs::write(bin.join(name), text).expect("write");
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// Makes the fabricated host root an SNP- or TDX-capable node as the kernel shows one
/// (`/dev/kvm`, the vendor module with its parameter on, `/dev/sev` for SNP) with a QEMU
/// that lists both confidential-guest objects.
pub fn ready_confidential_node(root: &Path, platform: &str) {
    use std::os::unix::fs::PermissionsExt;
    ready_insecure_node(root);
    let files: &[(&str, &str)] = match platform {
        "snp" => &[("dev/kvm", ""), ("dev/sev", ""), ("sys/module/kvm_amd/parameters/sev_snp", "Y\n")],
        _ => &[("dev/kvm", ""), ("sys/module/kvm_intel/parameters/tdx", "Y\n")],
    };
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let qemu = root.join("usr/bin/qemu-system-x86_64");
    std::fs::write(
        &qemu,
        "#!/bin/sh\necho 'List of user creatable objects:'\necho '  sev-snp-guest'\necho '  tdx-guest'\n",
    )
    .expect("write");
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
