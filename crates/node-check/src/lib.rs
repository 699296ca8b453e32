//! Whether this node can run platform P, and if not, exactly what is missing (used by
//! `contrast-node-installer check` and `install`, and by the shim before a confidential
//! pod's VM boots) — so an operator learns it here, not from a pod stuck in
//! ContainerCreating. Every probe reads below a root directory (the node's `/`, or a
//! fabricated tree in tests); QEMU's own answer (`-object help`) says which confidential-guest
//! objects it has.

use std::path::{Path, PathBuf};

/// One probed requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug)]
pub struct Report {
    pub platform: String,
    /// The accelerator a pod VM would get: `kvm`, or `tcg` (emulation) for `insecure`
    /// without a usable KVM.
    pub accelerator: &'static str,
    pub items: Vec<Item>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }

    /// One line per item, then the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            out.push_str(&format!("{:<8} {:<22} {}\n", if i.ok { "ok" } else { "MISSING" }, i.name, i.detail));
        }
        if self.ready() {
            out.push_str(&format!("platform {}: ready (accelerator {})\n", self.platform, self.accelerator));
        } else {
            let missing: Vec<&str> = self.items.iter().filter(|i| !i.ok).map(|i| i.name).collect();
            out.push_str(&format!("platform {}: NOT ready: {}\n", self.platform, missing.join(", ")));
        }
        out
    }
}

/// What is probed: the node's root, QEMU's object types (or why they could not be listed),
/// and the files the runtime class boots from (the installer payload's).
pub struct Probe<'a> {
    pub root: &'a Path,
    pub qemu_objects: Result<Vec<String>, String>,
    pub boot_files: Vec<(&'static str, PathBuf)>,
    /// Whether the runtime class boots from an IGVM file (QEMU then needs `igvm-cfg`).
    pub igvm: bool,
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A kernel module parameter that reads `Y` or `1`.
fn param_on(root: &Path, module: &str, param: &str) -> Option<bool> {
    let text = std::fs::read_to_string(under(root, &format!("/sys/module/{module}/parameters/{param}"))).ok()?;
    Some(matches!(text.trim(), "Y" | "y" | "1"))
}

fn module_loaded(root: &Path, module: &str) -> bool {
    under(root, &format!("/sys/module/{module}")).is_dir()
}

/// Usable KVM for ordinary guests: `/dev/kvm` opens read-write and the vendor module
/// (`kvm_amd` / `kvm_intel`) is loaded. A PVM host (`kvm_pvm` only) opens `/dev/kvm` but its
/// ordinary guests fail with emulation errors.
/// Whether KVM can run an ordinary guest on the node under `root`, and why (not): the
/// device opens and a vendor module drives it (a PVM host's `kvm_pvm` cannot).
pub fn kvm_usable(root: &Path) -> (bool, String) {
    let dev = under(root, "/dev/kvm");
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
        return (false, format!("/dev/kvm: {e}"));
    }
    match (module_loaded(root, "kvm_amd"), module_loaded(root, "kvm_intel"), module_loaded(root, "kvm_pvm")) {
        (true, _, _) => (true, "/dev/kvm (kvm_amd)".into()),
        (_, true, _) => (true, "/dev/kvm (kvm_intel)".into()),
        (_, _, true) => (false, "/dev/kvm is a PVM host's (kvm_pvm): ordinary guests fail under it".into()),
        _ => (false, "/dev/kvm opens but neither kvm_amd nor kvm_intel is loaded".into()),
    }
}

/// `name` in the usual binary directories under `root`, and on this process's PATH when
/// `root` is `/` (the node itself).
fn on_path(root: &Path, name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/libexec", "/opt/contrast/bin"]
        .iter()
        .map(|d| under(root, d))
        .collect();
    if root == Path::new("/") {
        dirs.extend(
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default(),
        );
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub fn check(platform: &str, probe: &Probe) -> Report {
    let root = probe.root;
    let mut items = Vec::new();
    let mut item = |name: &'static str, ok: bool, detail: String| items.push(Item { name, ok, detail });
    let (kvm_ok, kvm_detail) = kvm_usable(root);
    let confidential = platform != "insecure";
    let accelerator = if kvm_ok { "kvm" } else { "tcg" };
    if confidential {
        item("kvm", kvm_ok, kvm_detail);
    } else {
        // insecure runs under emulation without KVM: ready, and saying so.
        let detail = if kvm_ok { kvm_detail } else { format!("{kvm_detail} → accelerator tcg (emulation, slow)") };
        item("kvm", true, detail);
    }
    match platform {
        "snp" => {
            let snp = param_on(root, "kvm_amd", "sev_snp");
            item(
                "kvm_amd sev_snp",
                snp == Some(true),
                match snp {
                    Some(true) => "/sys/module/kvm_amd/parameters/sev_snp = Y".into(),
                    Some(false) => {
                        "kvm_amd loaded with sev_snp off (BIOS/firmware SNP support, kvm_amd sev_snp=1)".into()
                    }
                    None => "kvm_amd is not loaded, or has no sev_snp parameter (host kernel without SNP)".into(),
                },
            );
            let sev = under(root, "/dev/sev");
            item(
                "/dev/sev",
                sev.exists(),
                if sev.exists() { "present".into() } else { "missing (ccp/psp driver)".into() },
            );
        }
        "tdx" => {
            let tdx = param_on(root, "kvm_intel", "tdx");
            item(
                "kvm_intel tdx",
                tdx == Some(true),
                match tdx {
                    Some(true) => "/sys/module/kvm_intel/parameters/tdx = Y".into(),
                    Some(false) => "kvm_intel loaded with tdx off (BIOS TDX, kvm_intel tdx=1)".into(),
                    None => "kvm_intel is not loaded, or has no tdx parameter (host kernel without TDX)".into(),
                },
            );
        }
        _ => {}
    }
    let mut wanted: Vec<&str> = Vec::new();
    match platform {
        "snp" => wanted.push("sev-snp-guest"),
        "tdx" => wanted.push("tdx-guest"),
        _ => {}
    }
    if probe.igvm {
        wanted.push("igvm-cfg");
    }
    match &probe.qemu_objects {
        Err(why) => item("qemu", false, why.clone()),
        Ok(objects) => {
            let missing: Vec<&str> = wanted.iter().copied().filter(|w| !objects.iter().any(|o| o == w)).collect();
            let detail = if missing.is_empty() {
                if wanted.is_empty() {
                    "runs".into()
                } else {
                    format!("has {}", wanted.join(", "))
                }
            } else {
                format!("lacks {} (`qemu-system-x86_64 -object help`)", missing.join(", "))
            };
            item("qemu", missing.is_empty(), detail);
        }
    }
    let vhost = under(root, "/dev/vhost-vsock");
    let vsock = if vhost.exists() {
        (true, "/dev/vhost-vsock".to_owned())
    } else if let Some(p) = on_path(root, "vhost-device-vsock") {
        (true, format!("no /dev/vhost-vsock; hybrid vsock through {}", p.display()))
    } else {
        (false, "neither /dev/vhost-vsock (vhost_vsock module) nor vhost-device-vsock".to_owned())
    };
    item("vsock", vsock.0, vsock.1);
    for (what, path) in &probe.boot_files {
        let ok = path.is_file();
        item(what, ok, if ok { path.display().to_string() } else { format!("{} missing", path.display()) });
    }
    Report { platform: platform.to_owned(), accelerator, items }
}

/// QEMU's creatable object types, from `<qemu> -object help`.
pub fn qemu_objects(qemu: &Path) -> Result<Vec<String>, String> {
    let out = std::process::Command::new(qemu)
        .args(["-object", "help"])
        .output()
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    if !out.status.success() {
        return Err(format!("{} -object help failed: {}", qemu.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn probe<'a>(root: &'a Path, objects: &[&str]) -> Probe<'a> {
        Probe {
            root,
            qemu_objects: Ok(objects.iter().map(|s| s.to_string()).collect()),
            boot_files: vec![("firmware", root.join("opt/contrast/share/OVMF.fd"))],
            igvm: false,
        }
    }

    /// An SNP host as the kernel shows it: /dev/kvm, kvm_amd with sev_snp=Y, /dev/sev,
    /// /dev/vhost-vsock, the firmware.
    fn snp_host() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        for (p, text) in [
            ("/dev/kvm", ""),
            ("/dev/sev", ""),
            ("/dev/vhost-vsock", ""),
            ("/sys/module/kvm_amd/parameters/sev_snp", "Y\n"),
            ("/opt/contrast/share/OVMF.fd", "fw"),
        ] {
            write(t.path(), p, text);
        }
        t
    }

    #[test]
    fn an_snp_capable_node_is_ready_and_each_missing_piece_is_named() {
        let t = snp_host();
        let r = check("snp", &probe(t.path(), &["sev-guest", "sev-snp-guest"]));
        assert!(r.ready(), "{}", r.render());
        assert_eq!(r.accelerator, "kvm");
        write(t.path(), "/sys/module/kvm_amd/parameters/sev_snp", "N\n");
        std::fs::remove_file(under(t.path(), "/dev/sev")).expect("rm");
        let r = check("snp", &probe(t.path(), &["sev-guest"]));
        let missing: Vec<&str> = r.items.iter().filter(|i| !i.ok).map(|i| i.name).collect();
        assert_eq!(missing, ["kvm_amd sev_snp", "/dev/sev", "qemu"], "{}", r.render());
        assert!(r.render().contains("lacks sev-snp-guest"), "{}", r.render());
        assert!(r.render().contains("NOT ready: kvm_amd sev_snp, /dev/sev, qemu"), "{}", r.render());
    }

    #[test]
    fn a_tdx_capable_node_is_ready_and_tdx_off_is_named() {
        let t = tempfile::tempdir().expect("tempdir");
        for (p, text) in [
            ("/dev/kvm", ""),
            ("/dev/vhost-vsock", ""),
            ("/sys/module/kvm_intel/parameters/tdx", "Y\n"),
            ("/opt/contrast/share/OVMF.fd", "fw"),
        ] {
            write(t.path(), p, text);
        }
        assert!(check("tdx", &probe(t.path(), &["tdx-guest"])).ready());
        write(t.path(), "/sys/module/kvm_intel/parameters/tdx", "N\n");
        let r = check("tdx", &probe(t.path(), &["tdx-guest"]));
        assert!(!r.ready() && r.render().contains("kvm_intel loaded with tdx off"), "{}", r.render());
    }

    #[test]
    fn insecure_without_kvm_is_ready_on_tcg_and_a_pvm_host_is_no_kvm() {
        let t = tempfile::tempdir().expect("tempdir");
        write(t.path(), "/usr/bin/vhost-device-vsock", "");
        write(t.path(), "/opt/contrast/share/OVMF.fd", "fw");
        let r = check("insecure", &probe(t.path(), &[]));
        assert!(r.ready(), "{}", r.render());
        assert_eq!(r.accelerator, "tcg");
        write(t.path(), "/dev/kvm", "");
        std::fs::create_dir_all(under(t.path(), "/sys/module/kvm_pvm")).expect("mkdir");
        let r = check("insecure", &probe(t.path(), &[]));
        assert_eq!(r.accelerator, "tcg", "{}", r.render());
        assert!(r.render().contains("PVM"), "{}", r.render());
        let r = check("snp", &probe(t.path(), &["sev-snp-guest"]));
        assert!(!r.ready() && r.items[0].name == "kvm" && !r.items[0].ok, "{}", r.render());
    }

    #[test]
    fn igvm_boot_needs_igvm_cfg_and_missing_files_and_vsock_are_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut p = probe(t.path(), &["sev-snp-guest"]);
        p.igvm = true;
        let r = check("insecure", &p);
        let text = r.render();
        assert!(text.contains("lacks igvm-cfg"), "{text}");
        assert!(text.contains("/opt/contrast/share/OVMF.fd missing"), "{text}");
        assert!(text.contains("neither /dev/vhost-vsock"), "{text}");
        p.qemu_objects = Err("qemu-system-x86_64: not found".into());
        assert!(check("insecure", &p).render().contains("MISSING  qemu"));
    }
}
