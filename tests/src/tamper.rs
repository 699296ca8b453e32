//! Copies of the root disk with one byte changed, for the tests that prove the guest refuses
//! them.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use contrast_init::gpt;

/// Byte range of partition `number` (1-based) of a GPT disk.
pub fn partition_range(disk: &[u8], number: u32) -> Result<std::ops::Range<usize>> {
    let parts = gpt::parse(disk.get(..gpt::TABLE_BYTES).context("disk too small")?)?;
    let p = parts.iter().find(|p| p.number == number).with_context(|| format!("no partition {number}"))?;
    Ok((p.first_lba * gpt::SECTOR) as usize..((p.last_lba + 1) * gpt::SECTOR) as usize)
}

/// Offset in the disk of the first byte of `path`'s data in the root file system, from
/// `dump.erofs -e` (erofs-utils) of the root partition.
pub fn file_offset(disk: &[u8], path: &str) -> Result<usize> {
    let root = partition_range(disk, 1)?;
    let scratch = tempfile::NamedTempFile::new()?;
    std::fs::write(scratch.path(), &disk[root.clone()])?;
    let out = Command::new("dump.erofs").args(["-e", "--path", path]).arg(scratch.path()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "   0:        0.. 8122368 | 8122368 :    2371584..  10493952 | 8122368"
    let physical = text
        .lines()
        .find(|l| l.trim_start().starts_with("0:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|f| f.split("..").next())
        .and_then(|n| n.trim().parse::<usize>().ok());
    match physical {
        Some(p) => Ok(root.start + p),
        None => bail!("no extent for {path} in dump.erofs output: {text}"),
    }
}

/// Writes `src` to `dst` with the byte at `offset` inverted.
pub fn flip_byte(src: &Path, dst: &Path, offset: impl FnOnce(&[u8]) -> Result<usize>) -> Result<()> {
    let mut disk = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let at = offset(&disk)?;
    *disk.get_mut(at).context("offset beyond the disk")? ^= 0xff;
    std::fs::write(dst, disk).with_context(|| format!("writing {}", dst.display()))
}

/// A copy of the root disk whose agent binary has one byte changed, 1 MiB into the file: a page
/// exec itself would not read, so only verifying the whole file catches it before it runs.
pub fn flip_agent_byte(src: &Path, dst: &Path) -> Result<()> {
    flip_byte(src, dst, |disk| Ok(file_offset(disk, "/usr/bin/contrast-agent")? + (1 << 20) + 100))
}
