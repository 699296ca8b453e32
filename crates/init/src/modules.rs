//! Loading the kernel modules an image lists, in the listed (dependency) order.

use std::fs::File;
use std::path::Path;

/// Loads every module file named in the list at `list` (one absolute path per line). A module
/// already loaded is fine.
pub fn load_listed(list: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    for path in text.lines().filter(|l| !l.is_empty()) {
        let file = File::open(path).with_context(|| format!("opening {path}"))?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            // The module is for hardware this VM does not have (tdx-guest outside a TD).
            Err(nix::errno::Errno::ENODEV) => {}
            Err(e) => return Err(e).with_context(|| format!("loading {path}")),
        }
    }
    Ok(())
}
