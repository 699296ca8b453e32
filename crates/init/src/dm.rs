//! Device-mapper ioctls (linux/dm-ioctl.h, interface version 4): create a device, load a
//! one-target table, resume it. Just what opening a dm-verity device needs.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `struct dm_ioctl` is 312 bytes; its fields at these offsets.
const DM_IOCTL_SIZE: usize = 312;
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const NAME_LEN: usize = 128;
const OFF_UUID: usize = 176;
const UUID_LEN: usize = 129;
/// `struct dm_target_spec`: sector_start u64, length u64, status i32, next u32, target_type[16].
const TARGET_SPEC_SIZE: usize = 40;

const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_READONLY_FLAG: u32 = 1 << 0;

// _IOWR(0xfd, nr, struct dm_ioctl)
const fn request(nr: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u32 = request(3);
const DM_DEV_REMOVE: u32 = request(4);
const DM_DEV_SUSPEND: u32 = request(6);
const DM_TABLE_LOAD: u32 = request(9);

pub const CONTROL: &str = "/dev/mapper/control";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening {CONTROL}: {0}")]
    Control(std::io::Error),
    #[error("device-mapper {op} of {name:?}: {source}")]
    Ioctl { op: &'static str, name: String, source: std::io::Error },
    #[error("device name or uuid too long")]
    TooLong,
}

/// One linear range of a table: `length` sectors of `target` with `params`.
pub struct Target<'a> {
    pub sectors: u64,
    pub target: &'a str,
    pub params: &'a str,
}

pub struct Control(File);

impl Control {
    pub fn open() -> Result<Self, Error> {
        File::options().read(true).write(true).open(CONTROL).map(Control).map_err(Error::Control)
    }

    /// Creates device `name`, loads `target` as its only table (read-only when asked) and
    /// activates it. Returns the new block device's (major, minor).
    pub fn create(&self, name: &str, uuid: &str, target: &Target<'_>, read_only: bool) -> Result<(u32, u32), Error> {
        let mut buf = header(name, uuid, DM_IOCTL_SIZE)?;
        self.ioctl(DM_DEV_CREATE, "create", name, &mut buf)?;
        let result = self.load_and_resume(name, target, read_only);
        if result.is_err() {
            // Best effort: leave no half-made device behind.
            if let Ok(mut b) = header(name, "", DM_IOCTL_SIZE) {
                let _ = self.ioctl(DM_DEV_REMOVE, "remove", name, &mut b);
            }
        }
        result
    }

    /// Removes device `name` (it must not be open).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let mut buf = header(name, "", DM_IOCTL_SIZE)?;
        self.ioctl(DM_DEV_REMOVE, "remove", name, &mut buf)
    }

    fn load_and_resume(&self, name: &str, target: &Target<'_>, read_only: bool) -> Result<(u32, u32), Error> {
        // Target spec, then the NUL-terminated parameter string, padded to 8 bytes.
        let spec_len = (TARGET_SPEC_SIZE + target.params.len() + 1).div_ceil(8) * 8;
        let mut buf = header(name, "", DM_IOCTL_SIZE + spec_len)?;
        put_u32(&mut buf, OFF_TARGET_COUNT, 1);
        if read_only {
            put_u32(&mut buf, OFF_FLAGS, DM_READONLY_FLAG);
        }
        let spec = &mut buf[DM_IOCTL_SIZE..];
        spec[8..16].copy_from_slice(&target.sectors.to_ne_bytes());
        spec[20..24].copy_from_slice(&(spec_len as u32).to_ne_bytes());
        let kind = target.target.as_bytes();
        if kind.len() >= 16 {
            return Err(Error::TooLong);
        }
        spec[24..24 + kind.len()].copy_from_slice(kind);
        spec[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + target.params.len()].copy_from_slice(target.params.as_bytes());
        self.ioctl(DM_TABLE_LOAD, "table load", name, &mut buf)?;

        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes, swapping in the loaded table.
        let mut buf = header(name, "", DM_IOCTL_SIZE)?;
        self.ioctl(DM_DEV_SUSPEND, "resume", name, &mut buf)?;
        let mut dev = [0u8; 8];
        dev.copy_from_slice(&buf[OFF_DEV..OFF_DEV + 8]);
        Ok(decode_dev(u64::from_ne_bytes(dev)))
    }

    fn ioctl(&self, req: u32, op: &'static str, name: &str, buf: &mut [u8]) -> Result<(), Error> {
        // SAFETY: `buf` is a dm_ioctl of at least 312 bytes whose data_size field is its
        // length, so the kernel reads and writes only inside it.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(Error::Ioctl { op, name: name.to_owned(), source: std::io::Error::last_os_error() });
        }
        Ok(())
    }
}

fn header(name: &str, uuid: &str, size: usize) -> Result<Vec<u8>, Error> {
    if name.len() >= NAME_LEN || uuid.len() >= UUID_LEN {
        return Err(Error::TooLong);
    }
    let mut buf = vec![0u8; size];
    for (i, v) in DM_VERSION.iter().enumerate() {
        put_u32(&mut buf, 4 * i, *v);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, size as u32);
    put_u32(&mut buf, OFF_DATA_START, DM_IOCTL_SIZE as u32);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    buf[OFF_UUID..OFF_UUID + uuid.len()].copy_from_slice(uuid.as_bytes());
    Ok(buf)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The kernel's `huge_encode_dev` layout of `dm_ioctl.dev`.
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff_ff00)) as u32;
    (major, minor)
}

/// The dm-verity table line (Documentation/admin-guide/device-mapper/verity.rst) for a hash
/// device that starts with a veritysetup superblock (so the tree starts at hash block 1).
pub fn verity_params(
    data_dev: (u32, u32),
    hash_dev: (u32, u32),
    sb: &contrast_verity::Superblock,
    root_hash: &[u8],
) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let salt = if sb.salt.is_empty() { "-".to_owned() } else { hex(&sb.salt) };
    let block = contrast_verity::BLOCK_SIZE;
    format!(
        "1 {}:{} {}:{} {block} {block} {} 1 sha256 {} {salt}",
        data_dev.0,
        data_dev.1,
        hash_dev.0,
        hash_dev.1,
        sb.data_blocks,
        hex(root_hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // Values of DM_DEV_CREATE and DM_TABLE_LOAD on x86_64 (sizeof(struct dm_ioctl) = 312).
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
    }

    #[test]
    fn dev_numbers_decode() {
        assert_eq!(decode_dev((254 << 8) | 3), (254, 3));
        // minor 0x1234: low byte in bits 0-7, the rest from bit 20.
        assert_eq!(decode_dev((0x12 << 20) | (253 << 8) | 0x34), (253, 0x1234));
    }

    #[test]
    fn header_layout() {
        let b = header("root", "CONTRAST-root", 400).unwrap();
        assert_eq!(&b[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(b[12..16].try_into().unwrap()), 400);
        assert_eq!(&b[48..52], b"root");
        assert_eq!(&b[176..189], b"CONTRAST-root");
        assert!(header(&"x".repeat(128), "", 312).is_err());
    }

    #[test]
    fn verity_table_line() {
        let sb = contrast_verity::Superblock { uuid: [0; 16], data_blocks: 10, salt: vec![0xab, 0xcd] };
        let line = verity_params((254, 1), (254, 2), &sb, &[0x01; 32]);
        assert_eq!(line, format!("1 254:1 254:2 4096 4096 10 1 sha256 {} abcd", "01".repeat(32)));
    }
}
