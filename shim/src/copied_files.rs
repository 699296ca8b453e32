//! On the confidential path (no host share) the files containerd bind-mounts into a CRI
//! container — `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, the pod's DNS and names —
//! are copied into the guest with kata's `CopyFile` and the container bind-mounts the copy,
//! as kata does without a shared file system. Each copy is judged by the guest's policy.
//! A Kubernetes `emptyDir` volume becomes a directory of the pod's own in the guest
//! ([`GUEST_VOLUME_DIR`], shared by the pod's containers that mount it; the agent makes
//! it). Any other host bind mount cannot reach such a guest and is left out.

use contrast_agent_protocol::{agent, AgentClient};
use oci_spec::runtime::Mount;

use crate::error::ShimError;

/// The guest directory copied files go to (kata's).
pub const GUEST_DIR: &str = "/run/kata-containers/shared/containers";
/// Mount destinations whose source is copied: what containerd's CRI writes per pod.
const COPIED: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// The guest directory of the pod's `emptyDir` volumes, one directory per volume name.
pub const GUEST_VOLUME_DIR: &str = "/run/contrast/volumes";
/// Larger files are not configuration files; they are refused.
const MAX_SIZE: u64 = 64 * 1024;

/// The container's mounts for the guest: non-bind mounts as they are, the copied files
/// pointing at their guest copies (sent now), other bind mounts dropped (logged).
pub async fn guest_mounts(agent: &AgentClient, container: &str, mounts: &[Mount]) -> Result<Vec<Mount>, ShimError> {
    let mut out = Vec::new();
    for m in mounts {
        if !crate::rootfs::is_bind(m) {
            out.push(m.clone());
            continue;
        }
        if let Some(volume) = m.source().as_deref().and_then(empty_dir_volume) {
            let mut guest = m.clone();
            guest.set_source(Some(format!("{GUEST_VOLUME_DIR}/{volume}").into()));
            out.push(guest);
            continue;
        }
        let destination = m.destination().to_string_lossy().into_owned();
        let Some(name) = COPIED.iter().find(|d| **d == destination).and_then(|d| d.rsplit('/').next()) else {
            tracing::info!(container, %destination, "host bind mount left out on the confidential path");
            continue;
        };
        let Some(source) = m.source().as_ref() else { continue };
        let meta = std::fs::metadata(source).map_err(|e| {
            ShimError::InvalidArgument(format!("mount {destination}: source {}: {e}", source.display()))
        })?;
        if !meta.is_file() || meta.len() > MAX_SIZE {
            return Err(ShimError::InvalidArgument(format!(
                "mount {destination}: source {} is not a regular file of at most {MAX_SIZE} bytes",
                source.display()
            )));
        }
        let data = std::fs::read(source).map_err(|e| {
            ShimError::InvalidArgument(format!("mount {destination}: reading {}: {e}", source.display()))
        })?;
        let guest = format!("{GUEST_DIR}/{container}-{name}");
        let mut req = agent::CopyFileRequest::new();
        req.path = guest.clone();
        req.file_size = data.len() as i64;
        req.file_mode = 0o100_644;
        req.dir_mode = 0o755;
        req.data = data;
        agent.copy_file(&req).await?;
        let mut copy = m.clone();
        copy.set_source(Some(guest.into()));
        out.push(copy);
    }
    Ok(out)
}

/// The volume name of a kubelet `emptyDir` directory
/// (`<kubelet root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>`).
fn empty_dir_volume(source: &std::path::Path) -> Option<&str> {
    let name = source.file_name()?.to_str()?;
    let plugin = source.parent()?;
    // Whether the name is a volume name (a DNS label) the agent decides, with a clear error.
    (plugin.file_name()? == "kubernetes.io~empty-dir" && plugin.parent()?.file_name()? == "volumes").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_empty_dirs_by_their_path() {
        fn volume(p: &str) -> Option<&str> {
            empty_dir_volume(std::path::Path::new(p))
        }
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir/cache"), Some("cache"));
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~secret/token"), None);
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir"), None);
        assert_eq!(volume("/tmp/kubernetes.io~empty-dir/cache"), None);
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir/../x"), None);
    }
}
