//! On the confidential path (no host share) the files containerd bind-mounts into a CRI
//! container — `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, the pod's DNS and names —
//! are copied into the guest with kata's `CopyFile` and the container bind-mounts the copy,
//! as kata does without a shared file system. Each copy is judged by the guest's policy. Any
//! other host bind mount cannot reach such a guest and is left out.

use contrast_agent_protocol::{agent, AgentClient};
use oci_spec::runtime::Mount;

use crate::error::ShimError;

/// The guest directory copied files go to (kata's).
pub const GUEST_DIR: &str = "/run/kata-containers/shared/containers";
/// Mount destinations whose source is copied: what containerd's CRI writes per pod.
const COPIED: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
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
