//! `contrast-init`: PID 1 of the pod VM's initrd.
//!
//! Opens the root partition of the root disk through dm-verity (root hash and partition
//! identities from the measured kernel command line, hash tree layout from the verity
//! partition's superblock), mounts it read-only, reads the agent through it once so that a
//! corrupted agent is caught here, frees the initrd, switches root and executes the agent.
//! Any failure prints one line on the console and powers the VM off: nothing unverified runs.

use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use contrast_init::cmdline::VerityRoot;
use contrast_init::{dm, gpt};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Modules needed to reach the root (virtio-blk, device-mapper, dm-verity, erofs), in order.
const MODULE_LIST: &str = "/etc/contrast/initrd-modules";
const SYSROOT: &str = "/sysroot";
/// The agent inside the root file system.
const AGENT: &str = "/usr/bin/contrast-agent";
const ROOT_NODE: &str = "/dev/contrast-root";
const DM_NAME: &str = "contrast-root";
/// How long the disk's partitions may take to appear after virtio-blk is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Logs one line to the serial console, prefixed with seconds since boot like the agent's.
macro_rules! log {
    ($($arg:tt)*) => {{
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9);
        eprintln!("[{t:>8.3}] contrast-init: {}", format_args!($($arg)*))
    }};
}

fn main() {
    let Err(e) = run();
    log!("{e:#}; powering off");
    contrast_init::power::power_off();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn run() -> Result<Infallible> {
    let mounts = [("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("devtmpfs", "/dev", "devtmpfs")];
    for (source, target, fstype) in mounts {
        std::fs::create_dir_all(target)?;
        mount(Some(source), target, Some(fstype), MsFlags::MS_NOSUID, None::<&str>)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let root = VerityRoot::parse(&cmdline).context("verity root")?;
    contrast_init::modules::load_listed(Path::new(MODULE_LIST)).context("loading kernel modules")?;

    let (data, hash) = find_partitions(&root)?;
    let sb = read_superblock(&hash.node)?;
    let data_bytes = sb.data_blocks * contrast_verity::BLOCK_SIZE as u64;
    if data.sectors * gpt::SECTOR < data_bytes {
        bail!(
            "verity: superblock on {} covers {data_bytes} bytes, root partition {} has only {}",
            hash.node.display(),
            data.node.display(),
            data.sectors * gpt::SECTOR
        );
    }
    let params = dm::verity_params(data.dev, hash.dev, &sb, &root.root_hash);
    let target = dm::Target { sectors: data_bytes / gpt::SECTOR, target: "verity", params: &params };
    let control = dm::Control::open().context("verity")?;
    let dev = control.create(DM_NAME, "CONTRAST-VERITY-root", &target, true).context("verity: opening the root")?;
    let node = nix::sys::stat::makedev(dev.0.into(), dev.1.into());
    nix::sys::stat::mknod(
        ROOT_NODE,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        node,
    )
    .with_context(|| format!("creating {ROOT_NODE}"))?;

    let hex: String = root.root_hash.iter().map(|b| format!("{b:02x}")).collect();
    log!("opened {} ({} blocks) as {DM_NAME} with roothash={hex}", data.node.display(), sb.data_blocks);
    std::fs::create_dir_all(SYSROOT)?;
    mount(Some(ROOT_NODE), SYSROOT, Some("erofs"), MsFlags::MS_RDONLY | MsFlags::MS_NODEV, None::<&str>).with_context(
        || format!("verity: the root partition does not verify against roothash={hex} (mounting it failed)"),
    )?;
    // Exec reads the agent lazily; reading it whole now turns a corrupted block into this
    // message instead of a crash later.
    let agent = Path::new(SYSROOT).join(AGENT.trim_start_matches('/'));
    let mut buf = vec![0u8; 1 << 20];
    let mut file = std::fs::File::open(&agent).with_context(|| format!("opening {AGENT} on the root"))?;
    while file.read(&mut buf).with_context(|| format!("verity: {AGENT} on the root partition fails verification"))? > 0
    {
    }
    drop(file);

    log!("{AGENT} read and verified; starting it");
    for dir in ["/dev", "/sys", "/proc"] {
        umount2(dir, MntFlags::MNT_DETACH).with_context(|| format!("unmounting {dir}"))?;
    }
    free_initramfs()?;
    std::env::set_current_dir(SYSROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("moving the root to /")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/")?;
    let err = nix::unistd::execv(c"/usr/bin/contrast-agent", &[c"/usr/bin/contrast-agent"]).unwrap_err();
    Err(err).context("executing the agent")
}

struct Part {
    node: PathBuf,
    dev: (u32, u32),
    sectors: u64,
}

/// The data and hash partitions the command line names, found on any virtio disk's GPT.
fn find_partitions(root: &VerityRoot) -> Result<(Part, Part)> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        let mut seen = Vec::new();
        for entry in std::fs::read_dir("/sys/block")?.flatten() {
            let disk = entry.file_name().to_string_lossy().into_owned();
            if !disk.starts_with("vd") {
                continue;
            }
            let Ok(parts) = read_table(&disk) else { continue };
            seen.push(disk.clone());
            let find = |guid: gpt::Guid, kind: gpt::Guid| -> Result<Option<Part>> {
                let Some(p) = parts.iter().find(|p| p.unique_guid == guid) else { return Ok(None) };
                if p.type_guid != kind {
                    bail!("verity: partition {guid} on /dev/{disk} has type {}, expected {kind}", p.type_guid);
                }
                partition(&disk, p.number).map(Some)
            };
            if let (Some(d), Some(h)) =
                (find(root.data_partition, gpt::ROOT_X86_64)?, find(root.hash_partition, gpt::ROOT_VERITY_X86_64)?)
            {
                return Ok((d, h));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "verity: no disk has partitions {} (root) and {} (verity); disks with a partition table: {seen:?}",
                root.data_partition,
                root.hash_partition
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_table(disk: &str) -> Result<Vec<gpt::Partition>> {
    let mut head = vec![0u8; gpt::TABLE_BYTES];
    std::fs::File::open(format!("/dev/{disk}"))?.read_exact(&mut head)?;
    Ok(gpt::parse(&head)?)
}

fn partition(disk: &str, number: u32) -> Result<Part> {
    let name = format!("{disk}{number}");
    let sys = Path::new("/sys/block").join(disk).join(&name);
    let read = |f: &str| std::fs::read_to_string(sys.join(f)).with_context(|| format!("reading {}/{f}", sys.display()));
    let dev = read("dev")?;
    let (major, minor) = dev.trim().split_once(':').context("malformed dev number")?;
    let sectors = read("size")?.trim().parse().context("malformed partition size")?;
    let node = Path::new("/dev").join(&name);
    Ok(Part { node, dev: (major.parse()?, minor.parse()?), sectors })
}

fn read_superblock(node: &Path) -> Result<contrast_verity::Superblock> {
    let mut b = vec![0u8; contrast_verity::SUPERBLOCK_SIZE];
    std::fs::File::open(node)
        .and_then(|mut f| f.read_exact(&mut b))
        .with_context(|| format!("reading the verity superblock from {}", node.display()))?;
    contrast_verity::Superblock::parse(&b).with_context(|| format!("verity: superblock on {}", node.display()))
}

/// Deletes the initrd's files (their memory is freed), keeping the new root's mount point.
fn free_initramfs() -> Result<()> {
    for entry in std::fs::read_dir("/")?.flatten() {
        let path = entry.path();
        if path == Path::new(SYSROOT) {
            continue;
        }
        let kind = entry.file_type()?;
        let result = if kind.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        result.with_context(|| format!("removing {} from the initrd", path.display()))?;
    }
    Ok(())
}
