//! `contrast-image`: builds the pod-VM image from an unpacked Debian kernel package, the static
//! guest agent, the static initrd init and busybox.
//!
//! Output directory:
//! - `vmlinuz`: the kernel as Debian ships it (bzImage); `vmlinux`: the same kernel
//!   uncompressed (ELF, boots through PVH; faster under TCG);
//! - `root.img`: GPT disk with the read-only erofs root file system (agent, busybox, the kernel
//!   modules the agent loads) and its dm-verity hash partition, typed and named per the
//!   Discoverable Partitions Specification, partition UUIDs derived from the root hash;
//! - `cmdline`: the kernel command line, with `roothash=` and both partition identities;
//! - `initrd.img`: `contrast-init` as `/init` with the modules that reach the root (virtio-blk,
//!   device-mapper, dm-verity, erofs);
//! - `initrd-agent.img`: the development layout without a disk: the whole root tree in the
//!   initrd, the agent as `/init` (kept to compare boot times; not measured, not shipped);
//! - `pod.igvm`: kernel (uncompressed), initrd and command line as one IGVM file for the native platform,
//!   booting without firmware (QEMU >= 10.2 `igvm-cfg`); `pod-snp.igvm`: the same for SEV-SNP,
//!   whose launch digest the reference values carry (`pod_igvm`);
//! - `reference-values.json`: SHA-256 of kernel, initrd, command line and root disk, the root
//!   hash and the verity parameters, and the build inputs with their package versions.
//!
//! The same inputs give byte-identical outputs.

mod cpio;
mod kernel;
mod pod_igvm;
mod tree;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use contrast_init::cmdline::VerityRoot;
use contrast_init::gpt::{self, Guid, PartitionSpec};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::tree::Tree;

/// Modules the agent loads: virtio vsock transport, and the ACPI power button with evdev so
/// that QEMU's `system_powerdown` reaches the agent.
/// `bridge`: a container with CAP_NET_ADMIN may build bridges in the pod's network (CNI
/// plugins and `brctl addbr` inside pods do). `sev_guest`, `tdx_guest`: the attestation
/// report the init data is checked against; `qemu_fw_cfg`: the simulated binding.
/// `virtio_scsi`, `sd_mod`, `overlay`: image layers as hot-plugged disks under an overlay.
/// `virtio_net`: the pod's network interfaces.
const GUEST_MODULES: &[&str] = &[
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
    "bridge",
    "sev_guest",
    "tdx_guest",
    "qemu_fw_cfg",
    "virtio_scsi",
    "sd_mod",
    "overlay",
];
/// Modules the initrd loads to reach the root.
const INITRD_MODULES: &[&str] = &["virtio_blk", "dm_verity", "erofs"];
/// Words every pod VM's command line starts with: serial console, and a panic or a reboot
/// request ends the VM (QEMU runs with `-no-reboot`). `oops=panic`: a kernel BUG/oops ends
/// the VM too — otherwise the guest may hang half-alive ("Fixing recursive fault but reboot
/// is needed!") and the pod's tasks would never exit. `no_timer_check`: the kernel does not
/// test the I/O APIC timer by counting ticks over a busy wait, a test a vCPU thread that the
/// host does not schedule in time fails with a panic ("IO-APIC + timer doesn't work!": seen
/// here with 10 TCG pods booting at once on 2 cores).
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 oops=panic no_timer_check";
/// Where the agent lives in the root file system (contrast-init executes it).
const AGENT_PATH: &str = "usr/bin/contrast-agent";
/// The agent's container runner (libcontainer); the agent runs it per container operation
/// from this path.
const RUNNER_PATH: &str = "usr/bin/contrast-runner";

struct Args {
    kernel_tree: PathBuf,
    agent: PathBuf,
    runner: PathBuf,
    init: PathBuf,
    busybox: Option<PathBuf>,
    /// `scripts/fetch-firmware.sh`'s output: OVMF.amdsev.fd, OVMF.inteltdx.fd, packages.
    firmware: Option<PathBuf>,
    out: PathBuf,
}

const USAGE: &str =
    "usage: contrast-image --kernel-tree DIR --agent FILE --runner FILE --init FILE [--busybox FILE] [--firmware DIR] --out DIR";
/// Firmware files the confidential platforms boot, as `scripts/fetch-firmware.sh` names them.
const SNP_FIRMWARE: &str = "OVMF.amdsev.fd";
const TDX_FIRMWARE: &str = "OVMF.inteltdx.fd";
/// SEV-SNP C-bit position the SNP IGVM's page tables use (EPYC Milan and Genoa; the runtime
/// class config's `cbitpos` default).
const SNP_CBITPOS: u32 = 51;
/// vCPU counts the SNP reference values cover (a verifier needs the one the pod ran with).
const SNP_VCPUS: std::ops::RangeInclusive<u32> = 1..=8;

fn parse_args() -> Result<Args> {
    let (mut kernel_tree, mut agent, mut runner, mut init, mut busybox, mut firmware, mut out) =
        (None, None, None, None, None, None, None);
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().map(PathBuf::from).with_context(|| format!("{flag:?} needs a value"));
        match flag.to_str() {
            Some("--kernel-tree") => kernel_tree = Some(value()?),
            Some("--agent") => agent = Some(value()?),
            Some("--runner") => runner = Some(value()?),
            Some("--init") => init = Some(value()?),
            Some("--busybox") => busybox = Some(value()?),
            Some("--firmware") => firmware = Some(value()?),
            Some("--out") => out = Some(value()?),
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    let need = |v: Option<PathBuf>, name: &str| v.with_context(|| format!("{name} is required\n{USAGE}"));
    Ok(Args {
        kernel_tree: need(kernel_tree, "--kernel-tree")?,
        agent: need(agent, "--agent")?,
        runner: need(runner, "--runner")?,
        init: need(init, "--init")?,
        busybox,
        firmware,
        out: need(out, "--out")?,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let kernel = kernel::KernelTree::open(&args.kernel_tree)?;
    let bzimage = fs::read(&kernel.bzimage).with_context(|| format!("reading {}", kernel.bzimage.display()))?;
    let vmlinux = kernel::extract_vmlinux(&bzimage).context("extracting vmlinux from the bzImage")?;
    write_output(&args.out, "vmlinuz", &bzimage)?;
    write_output(&args.out, "vmlinux", &vmlinux)?;

    let agent = read(&args.agent)?;
    let runner = read(&args.runner)?;
    let init = read(&args.init)?;
    let busybox = args.busybox.as_deref().map(read).transpose()?;

    let root = root_tree(&kernel, &agent, &runner, busybox.as_deref())?;
    let erofs = make_erofs(&root).context("building the root file system")?;
    let (disk, verity, formatted) = make_disk(&erofs)?;
    let cmdline = format!("{BASE_CMDLINE} {}", verity.to_cmdline());
    let initrd = initrd_tree(&kernel, &init)?.to_initrd()?;

    let mut legacy = root;
    legacy.symlink("init", AGENT_PATH);
    write_output(&args.out, "initrd-agent.img", &legacy.to_initrd()?)?;
    write_output(&args.out, "initrd.img", &initrd)?;
    write_output(&args.out, "root.img", &disk)?;
    write_output(&args.out, "cmdline", cmdline.as_bytes())?;
    let boot = pod_igvm::BootFiles { bzimage: &bzimage, vmlinux: &vmlinux, initrd: &initrd, cmdline: &cmdline };
    let (native_igvm, placement) = pod_igvm::build(&boot, pod_igvm::Platform::Native).context("building pod.igvm")?;
    let snp_platform = pod_igvm::Platform::Snp { cbitpos: SNP_CBITPOS, policy: pod_igvm::SNP_POLICY };
    let (snp_igvm, _) = pod_igvm::build(&boot, snp_platform).context("building pod-snp.igvm")?;
    let snp_igvm_digest = contrast_measure::snp_igvm::launch_digest(&snp_igvm)?;
    write_output(&args.out, "pod.igvm", &native_igvm)?;
    write_output(&args.out, "pod-snp.igvm", &snp_igvm)?;

    let sha = |b: &[u8]| hex(&Sha256::digest(b));
    let file = |name: &str, data: &[u8]| json!({ "file": name, "sha256": sha(data), "size": data.len() });
    let mut inputs = serde_json::Map::new();
    inputs.insert("kernel".into(), json!({ "package": kernel.package, "sha256_bzimage": sha(&bzimage) }));
    inputs.insert("agent".into(), json!({ "sha256": sha(&agent) }));
    inputs.insert("runner".into(), json!({ "sha256": sha(&runner) }));
    inputs.insert("init".into(), json!({ "sha256": sha(&init) }));
    if let (Some(path), Some(data)) = (&args.busybox, &busybox) {
        inputs.insert("busybox".into(), json!({ "package": debian_package_of(path), "sha256": sha(data) }));
    }
    inputs.insert("erofs-utils".into(), json!({ "package": debian_package("erofs-utils") }));
    inputs.insert("contrast-image".into(), json!({ "version": env!("CARGO_PKG_VERSION") }));
    let salt = contrast_verity::Superblock::parse(&formatted.hash_area)?.salt;
    let mut values = json!({
        "kernel": file("vmlinux", &vmlinux),
        "kernel_bzimage": file("vmlinuz", &bzimage),
        "initrd": file("initrd.img", &initrd),
        "cmdline": { "value": cmdline, "sha256": sha(cmdline.as_bytes()) },
        "root_disk": file("root.img", &disk),
        "igvm": {
            "native": file("pod.igvm", &native_igvm),
            "snp": {
                "file": "pod-snp.igvm",
                "sha256": sha(&snp_igvm),
                "cbitpos": SNP_CBITPOS,
                "policy": format!("{:#x}", pod_igvm::SNP_POLICY),
                "launch_digest": hex(&snp_igvm_digest),
                "launch_digest_covers": "every page of the file (kernel, initrd, command line, zero page, page tables, GDT, boot stub) and the boot CPU's VMSA; one vCPU",
            },
            "kernel_gpa": format!("{:#x}", placement.kernel),
            "initrd_gpa": format!("{:#x}", placement.initrd),
        },
        "root_hash": hex(&formatted.root_hash),
        "verity": {
            "format": 1,
            "hash_algorithm": "sha256",
            "data_block_size": contrast_verity::BLOCK_SIZE,
            "hash_block_size": contrast_verity::BLOCK_SIZE,
            "data_blocks": formatted.data_blocks,
            "salt": hex(&salt),
            "root_partition_uuid": verity.data_partition.to_string(),
            "verity_partition_uuid": verity.hash_partition.to_string(),
            "root_filesystem": { "type": "erofs", "sha256": sha(&erofs), "size": erofs.len() },
        },
        "inputs": inputs,
    });
    if let Some(dir) = &args.firmware {
        let (snp, tdx) = launch_measurements(&args.out, dir, &cmdline)?;
        values["snp"] = snp;
        values["tdx"] = tdx;
    }
    let text = serde_json::to_string_pretty(&values)? + "\n";
    write_output(&args.out, "reference-values.json", text.as_bytes())?;
    print!("{text}");
    Ok(())
}

/// Copies the confidential firmware next to the image and computes what `snp` and `tdx`
/// launches of this image measure: SNP launch digests of OVMF + `vmlinuz` + `initrd.img` +
/// `cmdline` (QEMU `kernel-hashes=on`) per CPU model and vCPU count, and the TDX MRTD.
fn launch_measurements(out: &Path, dir: &Path, cmdline: &str) -> Result<(serde_json::Value, serde_json::Value)> {
    let packages = fs::read_to_string(dir.join("packages")).unwrap_or_default();
    let package = |name: &str| {
        packages
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    let firmware = |name: &str| -> Result<serde_json::Value> {
        let data = read(&dir.join(name))?;
        write_output(out, name, &data)?;
        Ok(json!({ "file": name, "sha256": hex(&Sha256::digest(&data)), "package": package(name) }))
    };
    let snp_fw = firmware(SNP_FIRMWARE)?;
    let (ovmf, kernel, initrd) = (out.join(SNP_FIRMWARE), out.join("vmlinuz"), out.join("initrd.img"));
    let files = contrast_measure::snp::BootFiles { ovmf: &ovmf, kernel: &kernel, initrd: &initrd, cmdline };
    let measurer = contrast_measure::snp::Measurer::new(files)?;
    let mut digests = serde_json::Map::new();
    for cpu in contrast_measure::snp::CPU_MODELS {
        let mut per_vcpus = serde_json::Map::new();
        for vcpus in SNP_VCPUS {
            per_vcpus.insert(vcpus.to_string(), hex(&measurer.launch_digest(vcpus, cpu)?).into());
        }
        digests.insert((*cpu).to_owned(), per_vcpus.into());
    }
    let snp = json!({
        "firmware": snp_fw,
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": cmdline,
        "kernel_hashes": true,
        "vmm_type": "QEMU",
        "guest_features": format!("{:#x}", contrast_measure::snp::GUEST_FEATURES),
        "launch_digests": digests,
    });
    let tdx_fw = firmware(TDX_FIRMWARE)?;
    let mrtd = contrast_measure::tdx::mrtd(&read(&dir.join(TDX_FIRMWARE))?)?;
    let tdx = json!({
        "firmware": tdx_fw,
        "mrtd": hex(&mrtd),
        "mrtd_order": "page by page: TDH.MEM.PAGE.ADD, then TDH.MR.EXTEND of its chunks (KVM with QEMU >= 9)",
        "rtmrs": "not computed (kernel, initrd and command line are measured into RTMRs by the firmware)",
    });
    Ok((snp, tdx))
}

/// The root file system: agent and its runner, busybox (debug console), the modules the agent loads.
fn root_tree(kernel: &kernel::KernelTree, agent: &[u8], runner: &[u8], busybox: Option<&[u8]>) -> Result<Tree> {
    let mut t = Tree::default();
    for dir in
        ["bin", "dev", "etc", "etc/contrast", "lib", "lib/modules", "proc", "run", "sys", "tmp", "usr", "usr/bin"]
    {
        t.dir(dir);
    }
    t.file(AGENT_PATH, 0o755, agent.to_vec());
    t.file(RUNNER_PATH, 0o755, runner.to_vec());
    add_modules(&mut t, kernel, GUEST_MODULES, "etc/contrast/modules")?;
    if let Some(busybox) = busybox {
        t.file("bin/busybox", 0o755, busybox.to_vec());
        t.symlink("bin/sh", "busybox");
    }
    Ok(t)
}

/// The initrd: contrast-init and the modules that reach the root.
fn initrd_tree(kernel: &kernel::KernelTree, init: &[u8]) -> Result<Tree> {
    let mut t = Tree::default();
    for dir in ["dev", "etc", "etc/contrast", "lib", "lib/modules", "proc", "sys", "sysroot"] {
        t.dir(dir);
    }
    t.file("init", 0o755, init.to_vec());
    add_modules(&mut t, kernel, INITRD_MODULES, "etc/contrast/initrd-modules")?;
    Ok(t)
}

/// Adds `names` and their dependencies (decompressed, dependencies first) and the list file.
fn add_modules(t: &mut Tree, kernel: &kernel::KernelTree, names: &[&str], list_path: &str) -> Result<()> {
    let mut list = String::new();
    for module in kernel.resolve_modules(names)? {
        let name = module.file_name().and_then(|n| n.to_str()).context("module path without a name")?;
        let name = name.trim_end_matches(".xz").trim_end_matches(".zst");
        t.file(&format!("lib/modules/{name}"), 0o644, kernel.module_bytes(&module)?);
        list.push_str(&format!("/lib/modules/{name}\n"));
    }
    t.file(list_path, 0o644, list.into_bytes());
    Ok(())
}

/// `mkfs.erofs` of the tree, reproducibly: fixed timestamps, owner and UUID (derived from the
/// contents), no xattrs.
fn make_erofs(tree: &Tree) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("root");
    fs::create_dir(&src)?;
    tree.write_to(&src)?;
    let mut h = Sha256::new();
    h.update(b"contrast erofs uuid");
    tree.digest_into(&mut h);
    let uuid = Guid::from_bytes(h.finalize()[..16].try_into()?);
    let img = dir.path().join("root.erofs");
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "-T0", "--all-root", "-x-1", &format!("-U{uuid}")])
        .arg(&img)
        .arg(&src)
        .output()
        .context("running mkfs.erofs (apt-get install erofs-utils)")?;
    if !out.status.success() {
        bail!("mkfs.erofs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    read(&img)
}

/// The root disk: root partition (the erofs image) and verity partition (superblock + hash
/// tree). Salt and verity UUID are derived from the file system, partition UUIDs from the root
/// hash (first and last 128 bits), so the disk is a function of its contents.
fn make_disk(erofs: &[u8]) -> Result<(Vec<u8>, VerityRoot, contrast_verity::Formatted)> {
    let derive = |label: &[u8]| Sha256::new().chain_update(label).chain_update(erofs).finalize();
    let salt = derive(b"contrast verity salt");
    let uuid: [u8; 16] = derive(b"contrast verity uuid")[..16].try_into()?;
    let formatted = contrast_verity::format(erofs, &salt, uuid)?;
    let rh = formatted.root_hash;
    let verity = VerityRoot {
        root_hash: rh.to_vec(),
        data_partition: Guid::from_bytes(rh[..16].try_into()?),
        hash_partition: Guid::from_bytes(rh[16..].try_into()?),
    };
    let disk_guid =
        Guid::from_bytes(Sha256::new().chain_update(b"contrast disk").chain_update(rh).finalize()[..16].try_into()?);
    let disk = gpt::build_disk(
        disk_guid,
        &[
            PartitionSpec {
                type_guid: gpt::ROOT_X86_64,
                unique_guid: verity.data_partition,
                name: "root-x86-64",
                attributes: gpt::FLAG_READ_ONLY,
                data: erofs,
            },
            PartitionSpec {
                type_guid: gpt::ROOT_VERITY_X86_64,
                unique_guid: verity.hash_partition,
                name: "root-x86-64-verity",
                attributes: gpt::FLAG_READ_ONLY,
                data: &formatted.hash_area,
            },
        ],
    );
    Ok((disk, verity, formatted))
}

/// `package version` of the Debian package that installed `path`, if any.
fn debian_package_of(path: &Path) -> String {
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let out = Command::new("dpkg-query").arg("-S").arg(&canonical).output();
    let owner = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split(':').next().map(str::to_owned));
    owner.map_or_else(|| "not from a Debian package".to_owned(), |p| debian_package(&p))
}

fn debian_package(name: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}", name])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| format!("{name} (version unknown)"), |o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn write_output(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
