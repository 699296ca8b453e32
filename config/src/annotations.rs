//! Per-pod overrides from `io.katacontainers.config.hypervisor.*` annotations.

use std::collections::BTreeMap;

use crate::{Error, QemuConfig, MIN_MEMORY_MIB};

/// Prefix of the hypervisor annotations kata defines (kata `pkg/annotations`).
pub const ANNOTATION_HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";
/// Base64 Rego policy for the agent (kata `io.katacontainers.config.agent.policy`).
pub const ANNOTATION_POLICY: &str = "io.katacontainers.config.agent.policy";

/// Annotation names (after the prefix) this runtime understands.
pub(crate) const KNOWN: &[&str] = &["default_memory", "default_vcpus", "kernel_params", "cc_init_data"];

/// What a pod's annotations change for its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOverrides {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to the configured kernel parameters.
    pub extra_kernel_params: String,
    /// The `cc_init_data` annotation as given (base64 of gzip of the init data TOML); the
    /// shim decodes it (crate `contrast-initdata`).
    pub init_data: Option<String>,
}

pub(crate) fn apply(q: &QemuConfig, annotations: &BTreeMap<String, String>) -> Result<PodOverrides, Error> {
    let mut out = PodOverrides {
        vcpus: q.default_vcpus,
        memory_mib: q.default_memory,
        extra_kernel_params: String::new(),
        init_data: None,
    };
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(ANNOTATION_HYPERVISOR_PREFIX) else { continue };
        let err = |problem: String| Error::Annotation { key: key.clone(), problem };
        if !KNOWN.contains(&name) {
            return Err(err(format!("not supported by this runtime (supported: {})", KNOWN.join(", "))));
        }
        if !q.enable_annotations.iter().any(|a| a == name) {
            return Err(err(format!(
                "not allowed by the runtime class (hypervisor.qemu.enable_annotations = {:?})",
                q.enable_annotations
            )));
        }
        match name {
            "default_memory" => {
                let mib: u32 = value.trim().parse().map_err(|_| err(format!("`{value}` is not a number of MiB")))?;
                if !(MIN_MEMORY_MIB..=q.default_maxmemory).contains(&mib) {
                    return Err(err(format!(
                        "{mib} MiB is outside {MIN_MEMORY_MIB}..={} MiB (default_maxmemory)",
                        q.default_maxmemory
                    )));
                }
                out.memory_mib = mib;
            }
            "default_vcpus" => {
                let n: u32 = value.trim().parse().map_err(|_| err(format!("`{value}` is not a number of vCPUs")))?;
                if !(1..=q.default_maxvcpus).contains(&n) {
                    return Err(err(format!("{n} vCPUs is outside 1..={} (default_maxvcpus)", q.default_maxvcpus)));
                }
                out.vcpus = n;
            }
            "kernel_params" => {
                if q.igvm.is_some() {
                    return Err(err("the runtime class boots an IGVM file, whose command line is fixed".into()));
                }
                if value.chars().any(|c| c.is_control()) {
                    return Err(err("contains control characters".into()));
                }
                out.extra_kernel_params = value.trim().to_owned();
            }
            "cc_init_data" => out.init_data = Some(value.clone()),
            _ => unreachable!("KNOWN lists every handled name"),
        }
    }
    Ok(out)
}
