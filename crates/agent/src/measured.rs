//! Before the agent serves anything: the pod's init data, checked against what the launch
//! bound (SNP `host_data` of the attestation report, TDX `mrconfigid` of the TD report, or the
//! simulated binding of the `insecure` platform), decides the policy.
//!
//! Any failure on a VM with a binding — no init data disk, a bad disk, a mismatch, no report —
//! ends in a deny-all policy whose answers name the reason. Never allow-all.

use std::path::{Path, PathBuf};

use contrast_initdata::InitData;

use crate::launch::{self, Binding};
use crate::policy::Policy;

/// Where the files of the init data's `[data]` are written (read-only for later readers).
pub const MEASURED_CONFIG_DIR: &str = "/run/measured-cfg";
/// How long to look for the init data disk (virtio-blk probes in the initrd, before us).
const DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The policy this VM enforces, decided once at start.
pub fn decide_policy() -> Policy {
    let binding = launch::read_binding();
    let disk = find_init_data_disk(Path::new("/sys/block"), binding.as_ref().is_ok_and(|b| b.is_some()));
    let outcome = decide(binding, disk.map(|d| read_disk(&d)));
    match outcome {
        Decision::Enforce { init_data, verified } => {
            if let Err(e) = write_measured_files(Path::new(MEASURED_CONFIG_DIR), &init_data) {
                return deny(format!("cannot write the init data files to {MEASURED_CONFIG_DIR}: {e}"));
            }
            let Some(rego) = init_data.policy() else {
                return deny(format!("init data has no {}", contrast_initdata::POLICY_FILE));
            };
            match Policy::enforcing(rego) {
                Ok(p) => {
                    crate::log!("policy from init data ({} bytes): {verified}", rego.len());
                    p
                }
                Err(e) => deny(format!("init data {}: {e}", contrast_initdata::POLICY_FILE)),
            }
        }
        Decision::Open => {
            crate::log!("no launch binding and no init data: plain VM, no policy");
            Policy::open()
        }
        Decision::Deny(reason) => deny(reason),
    }
}

fn deny(reason: String) -> Policy {
    crate::log!("DENY ALL: {reason}");
    Policy::deny_all(reason)
}

#[derive(Debug)]
enum Decision {
    Enforce { init_data: InitData, verified: String },
    Open,
    Deny(String),
}

/// The rules, apart from the devices: `binding` as read from the platform, `disk` the init
/// data disk's contents when one was found.
fn decide(binding: Result<Option<Binding>, String>, disk: Option<Result<InitData, String>>) -> Decision {
    let binding = match binding {
        Ok(b) => b,
        Err(e) => return Decision::Deny(format!("cannot read the launch binding: {e}")),
    };
    let init_data = match disk {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return Decision::Deny(format!("init data disk: {e}")),
        None => None,
    };
    match (binding, init_data) {
        (None, None) => Decision::Open,
        (None, Some(init_data)) => Decision::Enforce {
            init_data,
            verified: "NOT verified (plain VM: nothing bound it into the launch)".into(),
        },
        (Some(b), None) => Decision::Deny(format!("no init data disk on a VM whose launch binds one ({})", b.source())),
        (Some(b), Some(init_data)) => {
            let (want, got) = b.expected_and_bound(&init_data);
            if want == got {
                Decision::Enforce { init_data, verified: format!("verified against {}", b.source()) }
            } else {
                Decision::Deny(format!(
                    "init data does not match the launch binding: {} is {}, the init data's digest gives {}",
                    b.source(),
                    contrast_initdata::hex(&got),
                    contrast_initdata::hex(&want)
                ))
            }
        }
    }
}

/// The virtio-blk disk whose serial is `initdata` (`/sys/block/<dev>/serial`). With a
/// binding, waits briefly for it to appear.
fn find_init_data_disk(sys_block: &Path, expect: bool) -> Option<PathBuf> {
    let deadline = std::time::Instant::now() + DISK_WAIT;
    loop {
        let found = std::fs::read_dir(sys_block).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let serial = std::fs::read_to_string(e.path().join("serial")).ok()?;
                (serial.trim_end() == contrast_initdata::DISK_SERIAL).then(|| Path::new("/dev").join(e.file_name()))
            })
        });
        if found.is_some() || !expect || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn read_disk(dev: &Path) -> Result<InitData, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut header = [0u8; contrast_initdata::DISK_HEADER_LEN];
    file.read_exact(&mut header).map_err(|e| format!("{}: {e}", dev.display()))?;
    let len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let cap = (contrast_initdata::MAX_DOCUMENT as u64).min(len);
    let mut disk = header.to_vec();
    file.take(cap).read_to_end(&mut disk).map_err(|e| format!("{}: {e}", dev.display()))?;
    InitData::from_disk(&disk).map_err(|e| e.to_string())
}

/// Writes each `[data]` file (names are plain file names, checked by the parser) mode 0444.
fn write_measured_files(dir: &Path, init_data: &InitData) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let write = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        use std::io::Write;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(&path)?;
        f.write_all(bytes)
    };
    write("initdata.toml", init_data.toml())?;
    for (name, content) in &init_data.data {
        write(name, content.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGO: &str = "package agent_policy\ndefault CreateContainerRequest := true\n";

    fn sim(init_data: &InitData) -> Binding {
        Binding::Simulated(init_data.host_data())
    }

    #[test]
    fn matching_binding_enforces_the_init_data_policy() {
        let d = InitData::wrap_policy(REGO);
        for b in [sim(&d), Binding::Snp(d.host_data()), Binding::Tdx(d.mrconfigid())] {
            let decision = decide(Ok(Some(b)), Some(Ok(d.clone())));
            assert!(matches!(&decision, Decision::Enforce { verified, .. } if verified.starts_with("verified")));
        }
    }

    #[test]
    fn every_failure_denies_with_its_reason() {
        let d = InitData::wrap_policy(REGO);
        let mut wrong = d.host_data();
        wrong[0] ^= 1;
        let reason = |decision: Decision| match decision {
            Decision::Deny(r) => r,
            other => panic!("not denied: {other:?}"),
        };
        let r = reason(decide(Ok(Some(Binding::Simulated(wrong))), Some(Ok(d.clone()))));
        assert!(r.contains("does not match the launch binding") && r.contains(&contrast_initdata::hex(&wrong)), "{r}");
        let r = reason(decide(Ok(Some(Binding::Snp(wrong))), Some(Ok(d.clone()))));
        assert!(r.contains("SNP host_data"), "{r}");
        let mut tdx = d.mrconfigid();
        tdx[47] ^= 1;
        assert!(reason(decide(Ok(Some(Binding::Tdx(tdx))), Some(Ok(d.clone())))).contains("mrconfigid"));
        let r = reason(decide(Ok(Some(sim(&d))), None));
        assert!(r.contains("no init data disk"), "{r}");
        let r = reason(decide(Ok(Some(sim(&d))), Some(Err("bad magic".into()))));
        assert!(r.contains("bad magic"), "{r}");
        let r = reason(decide(Err("SNP_GET_REPORT: EIO".into()), Some(Ok(d.clone()))));
        assert!(r.contains("cannot read the launch binding"), "{r}");
        // A bad disk on a plain VM is bad input too, not "no policy".
        assert!(matches!(decide(Ok(None), Some(Err("bad".into()))), Decision::Deny(_)));
    }

    #[test]
    fn plain_vm_without_init_data_is_open_and_with_it_enforces_unverified() {
        assert!(matches!(decide(Ok(None), None), Decision::Open));
        let d = InitData::wrap_policy(REGO);
        assert!(
            matches!(decide(Ok(None), Some(Ok(d))), Decision::Enforce { verified, .. } if verified.contains("NOT"))
        );
    }

    #[test]
    fn disk_is_found_by_serial_and_files_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path().join("block");
        for (dev, serial) in [("vda", ""), ("vdb", "initdata\n")] {
            std::fs::create_dir_all(sys.join(dev)).expect("mkdir");
            std::fs::write(sys.join(dev).join("serial"), serial).expect("write");
        }
        assert_eq!(find_init_data_disk(&sys, false), Some(PathBuf::from("/dev/vdb")));
        std::fs::write(sys.join("vdb/serial"), "other").expect("write");
        assert_eq!(find_init_data_disk(&sys, false), None);

        let d = InitData::wrap_policy(REGO);
        let img = dir.path().join("initdata.img");
        std::fs::write(&img, d.to_disk()).expect("write");
        let back = read_disk(&img).expect("reads");
        assert_eq!(back.toml(), d.toml());
        let out = dir.path().join("measured");
        write_measured_files(&out, &back).expect("writes");
        assert_eq!(std::fs::read_to_string(out.join("policy.rego")).expect("policy"), REGO);
        assert_eq!(std::fs::read(out.join("initdata.toml")).expect("doc"), d.toml());
    }
}
