//! The value the launch bound for the pod's init data, read where the platform reports it:
//! - SEV-SNP: `host_data` of an attestation report (`SNP_GET_REPORT` on `/dev/sev-guest`);
//! - TDX: `mrconfigid` of a TD report (`TDX_CMD_GET_REPORT0` on `/dev/tdx_guest`);
//! - SIMULATION on the `insecure` platform: the fw_cfg item the shim sets, where hardware
//!   would report `host_data`. The host writes both sides there: it proves the code path,
//!   not confidentiality.
//!
//! Which of them applies is decided by what the CPU is, as the kernel knows it, not by which
//! device exists: the host can make a guest driver fail to come up (hide AES-NI from the CPU
//! model on SNP, refuse TDX's shared-buffer conversion), and a confidential VM whose device
//! is missing must deny, never fall back to the simulation or to no binding.
//!
//! Layouts: AMD SEV-SNP firmware ABI (MSG_REPORT_RSP, ATTESTATION_REPORT), Intel TDX module
//! ABI (TDREPORT_STRUCT, TDINFO_STRUCT), Linux `include/uapi/linux/{sev-guest,tdx-guest}.h`.

use contrast_initdata::{InitData, HOST_DATA_LEN, MRCONFIGID_LEN};

const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// The fw_cfg item of the simulated binding (`contrast_vmm::qemu_args::SIMULATED_BINDING_FW_CFG`).
const SIMULATED_BINDING: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/dev.contrast/simulated-host-data/raw";

/// MSG_REPORT_RSP: status (u32), report_size (u32), 24 reserved bytes, then the report.
const SNP_REPORT_OFFSET: usize = 0x20;
/// ATTESTATION_REPORT: HOST_DATA at 0xC0, 32 bytes.
const SNP_HOST_DATA_OFFSET: usize = 0xc0;
/// ATTESTATION_REPORT is 0x4A0 bytes.
const SNP_REPORT_LEN: usize = 0x4a0;
/// TDREPORT_STRUCT: REPORTMACSTRUCT (256) + TEE_TCB_INFO (239) + reserved (17), then
/// TDINFO_STRUCT: ATTRIBUTES (8), XFAM (8), MRTD (48), MRCONFIGID (48).
const TD_INFO_OFFSET: usize = 512;
const TD_MRCONFIGID_OFFSET: usize = TD_INFO_OFFSET + 8 + 8 + 48;
const TD_REPORT_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    Snp([u8; HOST_DATA_LEN]),
    Tdx([u8; MRCONFIGID_LEN]),
    /// SIMULATION: what the shim passed through fw_cfg.
    Simulated([u8; HOST_DATA_LEN]),
}

impl Binding {
    pub fn source(&self) -> &'static str {
        match self {
            Binding::Snp(_) => "SNP host_data (attestation report)",
            Binding::Tdx(_) => "TDX mrconfigid (TD report)",
            Binding::Simulated(_) => "SIMULATED host_data (fw_cfg, insecure platform)",
        }
    }

    /// What the init data says the binding must be, and what was bound.
    pub fn expected_and_bound(&self, init_data: &InitData) -> (Vec<u8>, Vec<u8>) {
        match self {
            Binding::Snp(v) | Binding::Simulated(v) => (init_data.host_data().to_vec(), v.to_vec()),
            Binding::Tdx(v) => (init_data.mrconfigid().to_vec(), v.to_vec()),
        }
    }
}

/// Confidential hardware under this VM, as the kernel found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardware {
    /// `/sys/devices/system/cpu/sev`: the kernel registers it only when SEV-SNP is active
    /// (`cc_platform_has(CC_ATTR_GUEST_SEV_SNP)`, from the SEV_STATUS MSR the host cannot
    /// intercept).
    Snp,
    /// The `tdx_guest` CPU flag: set when CPUID leaf 0x21 has the TDX signature, a leaf the
    /// TDX module answers, not the host.
    Tdx,
}

/// What the kernel says about the CPU below `root` (`/` in the VM; a directory in tests).
pub fn confidential_hardware(root: &std::path::Path) -> Option<Hardware> {
    if root.join("sys/devices/system/cpu/sev").is_dir() {
        return Some(Hardware::Snp);
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let tdx = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "flags"))
        .any(|l| l.split_whitespace().any(|flag| flag == "tdx_guest"));
    tdx.then_some(Hardware::Tdx)
}

/// Where the binding is read: the guest device of the hardware, or, on a VM without
/// confidential hardware, the simulation (if the host set one).
#[derive(Debug, PartialEq, Eq)]
enum Source {
    SnpDevice,
    TdxDevice,
    NoHardware,
}

/// The rule: confidential hardware needs its own device; a device of the other platform, or
/// none, is an error (deny), never a reason to look for the simulation.
fn source(hardware: Option<Hardware>, sev_device: bool, tdx_device: bool) -> Result<Source, String> {
    match hardware {
        Some(Hardware::Snp) if sev_device => Ok(Source::SnpDevice),
        Some(Hardware::Snp) => Err(format!(
            "this VM runs on SEV-SNP but {SEV_GUEST_DEVICE} is missing: the guest driver did not come up \
             (it needs AES-NI in the CPU model), so no attestation report gives the launch binding"
        )),
        Some(Hardware::Tdx) if tdx_device => Ok(Source::TdxDevice),
        Some(Hardware::Tdx) => Err(format!(
            "this VM runs on TDX but {TDX_GUEST_DEVICE} is missing: the guest driver did not come up, \
             so no TD report gives the launch binding"
        )),
        // A guest device without the hardware the kernel checked: its report would be
        // refused by the firmware anyway; read it, a failure denies.
        None if sev_device => Ok(Source::SnpDevice),
        None if tdx_device => Ok(Source::TdxDevice),
        None => Ok(Source::NoHardware),
    }
}

/// The platform's binding: `Ok(None)` on a plain VM (no confidential hardware, no
/// simulation).
pub fn read_binding() -> Result<Option<Binding>, String> {
    let hardware = confidential_hardware(std::path::Path::new("/"));
    let exists = |p: &str| std::path::Path::new(p).exists();
    match source(hardware, exists(SEV_GUEST_DEVICE), exists(TDX_GUEST_DEVICE))? {
        Source::SnpDevice => return snp_report().and_then(|r| snp_host_data(&r)).map(|v| Some(Binding::Snp(v))),
        Source::TdxDevice => return td_report().and_then(|r| td_mrconfigid(&r)).map(|v| Some(Binding::Tdx(v))),
        Source::NoHardware => {}
    }
    match std::fs::read(SIMULATED_BINDING) {
        Ok(raw) => {
            crate::log!("SIMULATED launch binding (fw_cfg): this VM is NOT confidential");
            simulated(&raw).map(|v| Some(Binding::Simulated(v)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{SIMULATED_BINDING}: {e}")),
    }
}

/// `host_data` from an SNP_GET_REPORT response buffer.
fn snp_host_data(resp: &[u8]) -> Result<[u8; HOST_DATA_LEN], String> {
    let u32_at = |off: usize| resp.get(off..off + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let status = u32_at(0).ok_or("SNP report response too short")?;
    if status != 0 {
        return Err(format!("SNP report request failed with status {status:#x}"));
    }
    let size = u32_at(4).ok_or("SNP report response too short")? as usize;
    if size < SNP_HOST_DATA_OFFSET + HOST_DATA_LEN || resp.len() < SNP_REPORT_OFFSET + size {
        return Err(format!("SNP report of {size} bytes is too short"));
    }
    let at = SNP_REPORT_OFFSET + SNP_HOST_DATA_OFFSET;
    Ok(resp[at..at + HOST_DATA_LEN].try_into().expect("32 bytes"))
}

/// `mrconfigid` from a TDREPORT_STRUCT.
fn td_mrconfigid(report: &[u8]) -> Result<[u8; MRCONFIGID_LEN], String> {
    report
        .get(TD_MRCONFIGID_OFFSET..TD_MRCONFIGID_OFFSET + MRCONFIGID_LEN)
        .map(|b| b.try_into().expect("48 bytes"))
        .ok_or_else(|| format!("TD report of {} bytes is too short", report.len()))
}

fn simulated(raw: &[u8]) -> Result<[u8; HOST_DATA_LEN], String> {
    let text = std::str::from_utf8(raw).map_err(|_| "simulated binding is not hex".to_owned())?.trim();
    if text.len() != HOST_DATA_LEN * 2 {
        return Err(format!("simulated binding has {} hex digits, not {}", text.len(), HOST_DATA_LEN * 2));
    }
    let mut out = [0u8; HOST_DATA_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| "simulated binding is not hex")?;
    }
    Ok(out)
}

/// `struct snp_report_req` (sev-guest.h).
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_guest_request_ioctl` (sev-guest.h).
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

/// `struct tdx_report_req` (tdx-guest.h).
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; 64],
    tdreport: [u8; TD_REPORT_LEN],
}

nix::ioctl_readwrite!(snp_get_report_ioctl, b'S', 0x0, SnpGuestRequestIoctl);
nix::ioctl_readwrite!(tdx_get_report0_ioctl, b'T', 1, TdxReportReq);

fn snp_report() -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(SEV_GUEST_DEVICE)
        .map_err(|e| format!("{SEV_GUEST_DEVICE}: {e}"))?;
    let req = SnpReportReq { user_data: [0; 64], vmpl: 0, rsvd: [0; 28] };
    let mut resp = vec![0u8; 4000];
    let mut ioc = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: &req as *const SnpReportReq as u64,
        resp_data: resp.as_mut_ptr() as u64,
        exitinfo2: 0,
    };
    // SAFETY: `ioc` points at `req` and a 4000-byte `resp` (struct snp_report_resp), both
    // alive for the call; the kernel writes only within them.
    unsafe { snp_get_report_ioctl(dev.as_raw_fd(), &mut ioc) }
        .map_err(|e| format!("SNP_GET_REPORT: {e} (firmware/VMM error {:#x})", ioc.exitinfo2))?;
    resp.truncate(SNP_REPORT_OFFSET + SNP_REPORT_LEN);
    Ok(resp)
}

fn td_report() -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TDX_GUEST_DEVICE)
        .map_err(|e| format!("{TDX_GUEST_DEVICE}: {e}"))?;
    let mut req = Box::new(TdxReportReq { reportdata: [0; 64], tdreport: [0; TD_REPORT_LEN] });
    // SAFETY: `req` is a `struct tdx_report_req` the kernel fills in place.
    unsafe { tdx_get_report0_ioctl(dev.as_raw_fd(), &mut *req) }.map_err(|e| format!("TDX_CMD_GET_REPORT0: {e}"))?;
    Ok(req.tdreport.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SNP_GET_REPORT response, byte by byte per the firmware ABI: MSG_REPORT_RSP header
    /// and an ATTESTATION_REPORT with distinct values around HOST_DATA.
    fn snp_response(status: u32, host_data: [u8; 32]) -> Vec<u8> {
        let mut r = vec![0u8; 4000];
        r[0..4].copy_from_slice(&status.to_le_bytes());
        r[4..8].copy_from_slice(&(SNP_REPORT_LEN as u32).to_le_bytes());
        let report = &mut r[0x20..0x20 + SNP_REPORT_LEN];
        report[0..4].copy_from_slice(&2u32.to_le_bytes()); // VERSION
        report[0x08..0x10].copy_from_slice(&0x30000u64.to_le_bytes()); // POLICY
        report[0x50..0x90].fill(0x11); // REPORT_DATA
        report[0x90..0xc0].fill(0x22); // MEASUREMENT
        report[0xc0..0xe0].copy_from_slice(&host_data); // HOST_DATA
        report[0xe0..0x110].fill(0x33); // ID_KEY_DIGEST
        r
    }

    #[test]
    fn snp_host_data_is_read_from_its_abi_offset() {
        let hd: [u8; 32] = std::array::from_fn(|i| i as u8 + 0x40);
        assert_eq!(snp_host_data(&snp_response(0, hd)), Ok(hd));
        let e = snp_host_data(&snp_response(0x16, hd)).expect_err("status");
        assert!(e.contains("0x16"), "{e}");
        assert!(snp_host_data(&[0u8; 8]).is_err());
        let mut short = snp_response(0, hd);
        short[4..8].copy_from_slice(&0x40u32.to_le_bytes());
        assert!(snp_host_data(&short).is_err());
    }

    #[test]
    fn td_mrconfigid_is_read_from_its_abi_offset() {
        let mut report = vec![0u8; TD_REPORT_LEN];
        report[..256].fill(0xaa); // REPORTMACSTRUCT
        report[512..520].fill(0x01); // ATTRIBUTES
        report[520..528].fill(0x02); // XFAM
        report[528..576].fill(0x03); // MRTD
        let id: [u8; 48] = std::array::from_fn(|i| 0x80 + i as u8);
        report[576..624].copy_from_slice(&id); // MRCONFIGID
        report[624..672].fill(0x04); // MROWNER
        assert_eq!(td_mrconfigid(&report), Ok(id));
        assert!(td_mrconfigid(&report[..600]).is_err());
    }

    #[test]
    fn ioctl_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<SnpReportReq>(), 96);
        assert_eq!(std::mem::size_of::<SnpGuestRequestIoctl>(), 32);
        assert_eq!(std::mem::size_of::<TdxReportReq>(), 64 + 1024);
        // _IOWR('S', 0, 32 bytes) and _IOWR('T', 1, 1088 bytes), as the headers define them.
        assert_eq!(nix::request_code_readwrite!(b'S', 0x0, 32), 0xc020_5300);
        assert_eq!(nix::request_code_readwrite!(b'T', 1, 1088), 0xc440_5401);
    }

    #[test]
    fn confidential_hardware_is_what_the_kernel_reports() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(confidential_hardware(root.path()), None, "nothing there");
        std::fs::create_dir_all(root.path().join("proc")).expect("mkdir");
        let cpuinfo = |flags: &str| {
            format!("processor\t: 0\nmodel name\t: QEMU Virtual CPU\nflags\t\t: fpu vme {flags} pse\nbogomips\t: 1\n\n")
        };
        std::fs::write(root.path().join("proc/cpuinfo"), cpuinfo("hypervisor")).expect("write");
        assert_eq!(confidential_hardware(root.path()), None, "a plain VM");
        std::fs::write(root.path().join("proc/cpuinfo"), cpuinfo("tdx_guest_x")).expect("write");
        assert_eq!(confidential_hardware(root.path()), None, "a flag is a whole word");
        std::fs::write(root.path().join("proc/cpuinfo"), "model name\t: tdx_guest\n").expect("write");
        assert_eq!(confidential_hardware(root.path()), None, "only the flags line counts");
        std::fs::write(root.path().join("proc/cpuinfo"), cpuinfo("tdx_guest")).expect("write");
        assert_eq!(confidential_hardware(root.path()), Some(Hardware::Tdx));
        std::fs::create_dir_all(root.path().join("sys/devices/system/cpu/sev")).expect("mkdir");
        assert_eq!(confidential_hardware(root.path()), Some(Hardware::Snp));
    }

    #[test]
    fn confidential_hardware_without_its_device_is_an_error_not_a_fallback() {
        use Hardware::{Snp, Tdx};
        assert_eq!(source(Some(Snp), true, false), Ok(Source::SnpDevice));
        assert_eq!(source(Some(Tdx), false, true), Ok(Source::TdxDevice));
        // The device missing (its driver made to fail by the host): never the simulation
        // or a plain VM's "no binding".
        let e = source(Some(Snp), false, false).expect_err("SNP without /dev/sev-guest");
        assert!(e.contains("SEV-SNP") && e.contains(SEV_GUEST_DEVICE), "{e}");
        let e = source(Some(Tdx), false, false).expect_err("TDX without /dev/tdx_guest");
        assert!(e.contains("TDX") && e.contains(TDX_GUEST_DEVICE), "{e}");
        assert!(source(Some(Snp), false, true).is_err(), "the other platform's device");
        assert!(source(Some(Tdx), true, false).is_err(), "the other platform's device");
        assert_eq!(source(None, false, false), Ok(Source::NoHardware));
        assert_eq!(source(None, true, false), Ok(Source::SnpDevice));
    }

    #[test]
    fn simulated_binding_is_hex() {
        let v = simulated(format!("{}\n", "ab".repeat(32)).as_bytes()).expect("hex");
        assert_eq!(v, [0xab; 32]);
        assert!(simulated(b"abcd").is_err());
        assert!(simulated("zz".repeat(32).as_bytes()).is_err());
    }
}
