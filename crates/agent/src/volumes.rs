//! Kubernetes `emptyDir` volumes of a pod whose VM has no host share (the confidential path):
//! one directory per volume below [`VOLUME_DIR`], on the guest's tmpfs (so in the pod's own
//! memory, never on the node), made when the first container that binds it is created and
//! shared by every container of the pod that binds it, for the pod's life — what kubelet's
//! emptyDir directory is for a runc pod. The shim points the container's bind mount here; the
//! policy decides which volume may be mounted where.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use libcontainer::oci_spec::runtime::Spec;

use crate::error::Error;

/// Where the pod's volumes live.
pub const VOLUME_DIR: &str = "/run/contrast/volumes";
/// kubelet's emptyDir mode: every user of every container may write.
const VOLUME_MODE: u32 = 0o777;

/// A volume's name as Kubernetes allows it (a DNS label): one path component, never `.`/`..`.
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Makes the volume directories `spec`'s mounts take as their source; a source below
/// [`VOLUME_DIR`] that is not one volume name is refused.
pub fn prepare(spec: &Spec) -> Result<(), Error> {
    prepare_in(Path::new(VOLUME_DIR), spec)
}

fn prepare_in(dir: &Path, spec: &Spec) -> Result<(), Error> {
    for m in spec.mounts().iter().flatten() {
        let Some(source) = m.source().as_ref() else { continue };
        let Ok(rest) = source.strip_prefix(dir) else { continue };
        let name = rest.to_str().unwrap_or_default();
        if !valid_name(name) {
            return Err(Error::InvalidArgument(format!(
                "mount {}: {} is not a volume of the pod (a name below {})",
                m.destination().display(),
                source.display(),
                dir.display()
            )));
        }
        let path = dir.join(name);
        if path.is_dir() {
            // Made by an earlier container of the pod, maybe changed by one since.
            continue;
        }
        let io = |e: std::io::Error| Error::Internal(format!("volume {name}: {e}"));
        std::fs::DirBuilder::new().recursive(true).mode(VOLUME_MODE).create(&path).map_err(io)?;
        // The umask narrowed what `mode` asked for.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(VOLUME_MODE)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, sources: &[&str]) -> Spec {
        let mounts: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| serde_json::json!({ "destination": "/cache", "type": "bind", "source": dir.join(s), "options": ["rbind"] }))
            .collect();
        serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "mounts": mounts })).expect("spec")
    }

    #[test]
    fn volumes_are_made_once_and_shared() {
        let dir = tempfile::tempdir().expect("dir");
        prepare_in(dir.path(), &spec(dir.path(), &["cache"])).expect("first container");
        std::fs::write(dir.path().join("cache/note"), "kept").expect("write");
        std::fs::set_permissions(dir.path().join("cache"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
        prepare_in(dir.path(), &spec(dir.path(), &["cache", "logs-0"])).expect("second container");
        assert_eq!(std::fs::read_to_string(dir.path().join("cache/note")).expect("read"), "kept");
        let mode = std::fs::metadata(dir.path().join("cache")).expect("kept").permissions().mode();
        assert_eq!(mode & 0o7777, 0o750, "a container's chmod stays");
        let mode = std::fs::metadata(dir.path().join("logs-0")).expect("made").permissions().mode();
        assert_eq!(mode & 0o7777, VOLUME_MODE);
    }

    #[test]
    fn a_source_below_the_volume_dir_is_one_volume_name() {
        let dir = tempfile::tempdir().expect("dir");
        for bad in ["..", "a/b", "../etc", "Cache", "-x", ""] {
            let spec = spec(dir.path(), &[bad]);
            // `join("")` is the directory itself.
            assert!(prepare_in(dir.path(), &spec).is_err(), "{bad:?}");
        }
        assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing made");
        let elsewhere: Spec = serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "mounts": [
            { "destination": "/etc/hosts", "type": "bind", "source": "/run/kata-containers/shared/containers/c-hosts" }] }))
        .expect("spec");
        prepare_in(dir.path(), &elsewhere).expect("other sources are not volumes");
    }
}
