//! An unpacked kernel tree shaped like a Debian `linux-image-*` package: the bzImage, its
//! loadable modules and the list of modules built into it (`modules.builtin`). Debian's cloud
//! kernel has most of what the pod VM needs as modules; our own (`scripts/build-kernel.sh`)
//! has everything built in, so nothing is left to load.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct KernelTree {
    pub bzimage: PathBuf,
    pub package: String,
    /// Module name → its file, found by walking the package's module tree.
    files: BTreeMap<String, PathBuf>,
    /// Names of the modules built into the kernel (`lib/modules/<release>/modules.builtin`).
    builtin: BTreeSet<String>,
}

impl KernelTree {
    pub fn open(root: &Path) -> Result<Self> {
        let boot = root.join("boot");
        let bzimage = fs::read_dir(&boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let release = bzimage
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("kernel file name")?
            .to_owned();
        let module_dir = root.join("lib/modules").join(&release);
        let mut files = BTreeMap::new();
        collect_modules(&module_dir, &mut files).with_context(|| format!("listing modules of {release}"))?;
        let builtin_list = module_dir.join("modules.builtin");
        let builtin = match fs::read_to_string(&builtin_list) {
            Ok(text) => builtin_names(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", builtin_list.display())),
        };
        let package = fs::read_to_string(root.join(".package"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| format!("linux-image-{release}"));
        Ok(KernelTree { bzimage, package, files, builtin })
    }

    /// The module files for `names` and everything they depend on, each after its dependencies.
    /// Dependencies come from each module's own `.modinfo` (`depends=`), since the package
    /// ships no `modules.dep` (depmod runs at install time). A module built into the kernel
    /// needs no file; one that is neither a file nor built in is an error.
    pub fn resolve_modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<PathBuf>) -> Result<()> {
        if !seen.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = self
            .files
            .get(name)
            .with_context(|| format!("kernel module {name} is neither in the package nor built into the kernel"))?;
        for dep in modinfo_depends(&self.module_bytes(path)?) {
            self.visit(&dep, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }

    /// A module's bytes, decompressed when the package ships it as `.ko.xz`.
    pub fn module_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("ko") => Ok(raw),
            Some("xz") => {
                let mut out = Vec::new();
                xz2::read::XzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .with_context(|| format!("decompressing {}", path.display()))?;
                Ok(out)
            }
            _ => bail!("unsupported module compression: {}", path.display()),
        }
    }
}

fn collect_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, out)?;
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str()) {
            if file.contains(".ko") {
                out.insert(module_name(file), path);
            }
        }
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module.windows(KEY.len()).position(|w| w == KEY) else { return Vec::new() };
    let value = &module[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")).collect()
}

/// Module names of `modules.builtin` (one path per line, `kernel/fs/erofs/erofs.ko`).
fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect()
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

// x86 boot protocol (kernel `Documentation/arch/x86/boot.rst`), setup header offsets.
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202; // "HdrS"
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Decompresses the ELF kernel (`vmlinux`) from a zstd-compressed bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |off: usize| -> Result<usize> {
        let b = bzimage.get(off..off + 4).context("bzImage too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS setup header)");
    }
    let setup_sects = match bzimage.get(SETUP_SECTS).copied().context("bzImage too short")? {
        0 => 4,
        n => n as usize,
    };
    let protected_mode = (setup_sects + 1) * 512;
    let start = protected_mode + u32_at(PAYLOAD_OFFSET)?;
    let len = u32_at(PAYLOAD_LENGTH)?;
    let payload = bzimage.get(start..start + len).context("payload outside the bzImage")?;
    if payload.get(..4) != Some(&ZSTD_MAGIC[..]) {
        bail!("bzImage payload is not zstd-compressed");
    }
    let mut out = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(payload)
        .map_err(|e| anyhow::anyhow!("zstd frame header: {e}"))?
        .read_to_end(&mut out)
        .context("decompressing the kernel payload")?;
    if out.get(..4) != Some(&ELF_MAGIC[..]) {
        bail!("decompressed payload is not an ELF kernel");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise_dashes_and_suffixes() {
        assert_eq!(module_name("kernel/net/vmw_vsock/vsock.ko.xz"), "vsock");
        assert_eq!(module_name("kernel/drivers/a/virtio-foo.ko"), "virtio_foo");
    }

    #[test]
    fn modinfo_depends_is_read() {
        let module = b"\x7fELF...\0license=GPL\0depends=vsock,virtio-ring\0vermagic=6.12\0";
        assert_eq!(modinfo_depends(module), vec!["vsock".to_owned(), "virtio_ring".to_owned()]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        assert!(modinfo_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn built_in_modules_need_no_file_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let modules = dir.path().join("lib/modules/6.12-test");
        fs::create_dir_all(&modules).expect("module dir");
        fs::create_dir_all(dir.path().join("boot")).expect("boot dir");
        fs::write(dir.path().join("boot/vmlinuz-6.12-test"), b"").expect("kernel");
        fs::write(modules.join("modules.builtin"), "kernel/fs/erofs/erofs.ko\nkernel/drivers/md/dm-verity.ko\n")
            .expect("modules.builtin");
        fs::write(modules.join("virtio-blk.ko"), b"\0depends=dm-verity\0").expect("module file");
        let tree = KernelTree::open(dir.path()).expect("tree opens");
        let order = tree.resolve_modules(&["erofs", "dm_verity", "virtio_blk"]).expect("resolved");
        assert_eq!(order, vec![modules.join("virtio-blk.ko")], "only the loadable module has a file");
        let err = tree.resolve_modules(&["bridge"]).expect_err("bridge is nowhere");
        assert!(format!("{err:#}").contains("bridge is neither in the package nor built into the kernel"), "{err:#}");
    }

    #[test]
    fn garbage_is_not_a_bzimage() {
        assert!(extract_vmlinux(&[0u8; 1024]).is_err());
    }
}
