//! The QEMU command line of a pod VM, built as an argument vector (never through a shell).
//!
//! Property names are QEMU's (`qemu-system-x86_64 -object <type>,help`, `-device <type>,help`,
//! QMP schema `qapi/qom.json`); the golden tests in `tests/golden/` hold the exact vectors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use base64::Engine;
use contrast_config::Platform;

/// Everything that decides a pod VM's command line.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub name: String,
    pub platform: Platform,
    pub kvm: bool,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot: BootSource,
    /// Read-only root disk, attached as `virtio-blk`.
    pub root_disk: Option<PathBuf>,
    pub vsock: VsockDevice,
    /// vhost-user socket of virtiofsd sharing host files under [`SHARED_FS_TAG`].
    pub virtio_fs: Option<PathBuf>,
    pub qmp_socket: PathBuf,
    /// A second QMP monitor for people debugging the pod (`debug_qmp`).
    pub debug_qmp_socket: Option<PathBuf>,
    pub console_log: PathBuf,
    /// `-cpu` model; `None` leaves QEMU's default.
    pub cpu_model: Option<String>,
    /// The pod's init data, handed to the guest as a read-only disk and bound into the launch.
    pub init_data: Option<InitDataLaunch>,
    /// A virtio-scsi controller for container image layers hot-plugged as read-only disks
    /// (the confidential path's images).
    pub scsi_controller: bool,
    /// The pod's network interfaces, one virtio-net device each.
    pub nics: Vec<NicDevice>,
    pub snp: SnpParams,
}

/// A virtio-net device on a tap the shim opened (see [`crate::net`]).
#[derive(Debug, Clone)]
pub struct NicDevice {
    /// Open tap fd QEMU inherits.
    pub tap_fd: i32,
    /// Open `/dev/vhost-net` fd QEMU inherits, when the host has vhost-net.
    pub vhost_fd: Option<i32>,
    /// The guest NIC's MAC: the pod veth's, which the CNI network knows the pod by.
    pub mac: String,
    pub mtu: u32,
}

/// How a pod's init data reaches its VM (see crate `contrast-initdata`).
#[derive(Debug, Clone)]
pub struct InitDataLaunch {
    /// The init data disk image (read-only virtio-blk, serial [`INIT_DATA_SERIAL`]).
    pub disk: PathBuf,
    /// SNP `host-data`.
    pub host_data: [u8; HOST_DATA_LEN],
    /// TDX `mrconfigid`.
    pub mrconfigid: [u8; MRCONFIGID_LEN],
    /// SIMULATION (`insecure` only): the value the guest compares its init data with, passed
    /// through fw_cfg [`SIMULATED_BINDING_FW_CFG`] where hardware would report `host-data`.
    pub simulated_host_data: Option<[u8; HOST_DATA_LEN]>,
}

#[derive(Debug, Clone)]
pub enum BootSource {
    /// Firmware (SNP/TDX; none for insecure: SeaBIOS) plus direct kernel boot.
    Kernel { firmware: Option<PathBuf>, kernel: PathBuf, initrd: Option<PathBuf>, cmdline: String },
    /// One IGVM file with firmware, kernel, initrd and command line.
    Igvm { file: PathBuf },
}

#[derive(Debug, Clone)]
pub enum VsockDevice {
    /// vhost-user-vsock through `vhost-device-vsock` listening on `socket`.
    Hybrid { socket: PathBuf },
    /// Kernel vhost-vsock; `vhostfd` is an open `/dev/vhost-vsock` with the CID already set.
    Vhost { guest_cid: u32, vhostfd: i32 },
}

#[derive(Debug, Clone, Copy)]
pub struct SnpParams {
    pub cbitpos: u32,
    pub reduced_phys_bits: u32,
    pub policy: u64,
}

/// virtio-fs tag the guest mounts the shared directory by.
pub const SHARED_FS_TAG: &str = "contrast";
/// `id=` of the hybrid vsock device (its QOM path is `/machine/peripheral/vsock`).
const VSOCK_DEVICE_ID: &str = "vsock";

/// ID of the confidential-guest object, referenced by `-machine confidential-guest-support`.
const CGS_ID: &str = "cgs0";
const MEMORY_ID: &str = "mem0";
const IGVM_ID: &str = "igvm0";
/// TDX `mrconfigid` is a SHA-384-sized field (48 bytes; TDX module ABI, TD_PARAMS).
pub const MRCONFIGID_LEN: usize = 48;
/// SNP `host-data` (32 bytes; SEV-SNP ABI, SNP_LAUNCH_FINISH).
pub const HOST_DATA_LEN: usize = 32;
/// `id=` of the virtio-scsi controller layer disks are hot-plugged on (bus `<id>.0`).
pub const SCSI_CONTROLLER_ID: &str = "scsi0";
/// Serial number the guest finds the init data disk by (kata's convention).
pub const INIT_DATA_SERIAL: &str = "initdata";
/// fw_cfg item carrying the simulated launch binding (hex of 32 bytes). The guest agent reads
/// it from `/sys/firmware/qemu_fw_cfg/by_name/<this>/raw`.
pub const SIMULATED_BINDING_FW_CFG: &str = "opt/dev.contrast/simulated-host-data";

impl QemuSpec {
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push(["-name", &format!("{},debug-threads=on", self.name)]);
        a.push(["-no-user-config", "-nodefaults", "-display", "none", "-no-reboot"]);
        a.push(["-accel", &self.accel()]);
        if let Some(model) = &self.cpu_model {
            a.push(["-cpu", model]);
        }
        a.push(["-machine", &self.machine()]);
        a.push(["-smp", &self.vcpus.to_string(), "-m", &format!("{}M", self.memory_mib)]);
        a.push(["-object", &self.memory_backend()]);
        if let Some(object) = self.confidential_object() {
            a.push(["-object", &object]);
        }
        match &self.boot {
            BootSource::Kernel { firmware, kernel, initrd, cmdline } => {
                if let Some(fw) = firmware {
                    a.push(["-bios"]).path(fw);
                }
                a.push(["-kernel"]).path(kernel);
                if let Some(initrd) = initrd {
                    a.push(["-initrd"]).path(initrd);
                }
                a.push(["-append", cmdline]);
            }
            BootSource::Igvm { file } => {
                a.push(["-object"]).joined(&format!("igvm-cfg,id={IGVM_ID},file="), file);
            }
        }
        if let Some(disk) = &self.root_disk {
            a.push(["-drive"]).joined_suffix("if=none,id=root,format=raw,readonly=on,file=", disk, "");
            a.push(["-device", "virtio-blk-pci,drive=root,disable-legacy=on"]);
        }
        if self.scsi_controller {
            a.push(["-device", &format!("virtio-scsi-pci,id={SCSI_CONTROLLER_ID},disable-legacy=on")]);
        }
        if let Some(init) = &self.init_data {
            a.push(["-drive"]).joined("if=none,id=initdata,format=raw,readonly=on,file=", &init.disk);
            a.push(["-device", &format!("virtio-blk-pci,drive=initdata,serial={INIT_DATA_SERIAL},disable-legacy=on")]);
            if let Some(value) = init.simulated_host_data {
                a.push(["-fw_cfg", &format!("name={SIMULATED_BINDING_FW_CFG},string={}", hex(&value))]);
            }
        }
        match &self.vsock {
            VsockDevice::Hybrid { socket } => {
                a.push(["-chardev"]).joined("socket,id=vsock0,path=", socket);
                a.push([
                    "-device",
                    &format!("vhost-user-vsock-pci,id={VSOCK_DEVICE_ID},chardev=vsock0,disable-legacy=on"),
                ]);
            }
            VsockDevice::Vhost { guest_cid, vhostfd } => {
                a.push([
                    "-device",
                    &format!("vhost-vsock-pci,guest-cid={guest_cid},vhostfd={vhostfd},disable-legacy=on"),
                ]);
            }
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let vhost = nic.vhost_fd.map(|fd| format!(",vhost=on,vhostfd={fd}")).unwrap_or_default();
            a.push(["-netdev", &format!("tap,id=net{i},fd={}{vhost}", nic.tap_fd)]);
            // `romfile=`: no PXE option ROM (nothing boots from the network).
            a.push([
                "-device",
                &format!(
                    "virtio-net-pci,netdev=net{i},mac={},host_mtu={},romfile=,disable-legacy=on",
                    nic.mac, nic.mtu
                ),
            ]);
        }
        if let Some(socket) = &self.virtio_fs {
            a.push(["-chardev"]).joined("socket,id=fs0,path=", socket);
            a.push(["-device", &format!("vhost-user-fs-pci,chardev=fs0,tag={SHARED_FS_TAG}")]);
        }
        a.push(["-serial"]).joined("file:", &self.console_log);
        a.push(["-qmp"]).joined_suffix("unix:", &self.qmp_socket, ",server=on,wait=off");
        if let Some(debug) = &self.debug_qmp_socket {
            a.push(["-qmp"]).joined_suffix("unix:", debug, ",server=on,wait=off");
        }
        a.0
    }

    fn machine(&self) -> String {
        let mut m = format!("q35,memory-backend={MEMORY_ID}");
        if self.platform != Platform::Insecure {
            m.push_str(&format!(",confidential-guest-support={CGS_ID}"));
        }
        if matches!(self.boot, BootSource::Igvm { .. }) {
            m.push_str(&format!(",igvm-cfg={IGVM_ID}"));
        }
        m
    }

    fn accel(&self) -> String {
        match (self.kvm, self.platform) {
            // TDX guests need the IOAPIC emulated in userspace (kvm-accel property).
            (true, Platform::Tdx) => "kvm,kernel-irqchip=split".into(),
            (true, _) => "kvm".into(),
            (false, _) => format!("tcg,tb-size={}", contrast_config::TCG_TB_SIZE_MIB),
        }
    }

    fn memory_backend(&self) -> String {
        // vhost-user devices (hybrid vsock, virtio-fs) map guest memory from a shareable fd.
        let share = matches!(self.vsock, VsockDevice::Hybrid { .. }) || self.virtio_fs.is_some();
        format!(
            "memory-backend-memfd,id={MEMORY_ID},size={}M,share={}",
            self.memory_mib,
            if share { "on" } else { "off" }
        )
    }

    fn confidential_object(&self) -> Option<String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self.platform {
            Platform::Insecure => None,
            Platform::Snp => {
                let s = self.snp;
                let mut o = format!(
                    "sev-snp-guest,id={CGS_ID},cbitpos={},reduced-phys-bits={},policy={:#x}",
                    s.cbitpos, s.reduced_phys_bits, s.policy
                );
                if matches!(self.boot, BootSource::Kernel { .. }) {
                    // Firmware measures kernel, initrd and command line into the launch digest.
                    o.push_str(",kernel-hashes=on");
                }
                if let Some(init) = &self.init_data {
                    o.push_str(&format!(",host-data={}", b64.encode(init.host_data)));
                }
                Some(o)
            }
            Platform::Tdx => {
                // tdx-guest is only accepted in JSON form when it carries binary properties.
                let mut o = serde_json::json!({ "qom-type": "tdx-guest", "id": CGS_ID });
                if let Some(init) = &self.init_data {
                    o["mrconfigid"] = b64.encode(init.mrconfigid).into();
                }
                Some(o.to_string())
            }
        }
    }
}

/// Argument vector under construction; paths are appended as `OsString` so that non-UTF-8
/// paths survive unchanged.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, items: [&str; N]) -> &mut Self {
        self.0.extend(items.iter().map(OsString::from));
        self
    }

    fn path(&mut self, p: &Path) -> &mut Self {
        self.0.push(p.as_os_str().to_owned());
        self
    }

    fn joined(&mut self, prefix: &str, p: &Path) -> &mut Self {
        self.joined_suffix(prefix, p, "")
    }

    fn joined_suffix(&mut self, prefix: &str, p: &Path, suffix: &str) -> &mut Self {
        let mut s = OsString::from(prefix);
        s.push(escape_commas(p));
        s.push(suffix);
        self.0.push(s);
        self
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// QEMU option values split at commas; a literal comma in a path is written twice.
fn escape_commas(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests;
