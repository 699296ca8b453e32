//! Byte-for-byte comparison with cryptsetup's `veritysetup format` (cryptsetup-bin), and
//! `veritysetup verify` accepting our hash area.

use std::path::Path;
use std::process::Command;

use super::*;

const SALT: &str = "5d2b1c4e8f7a6b3c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
const UUID: &str = "3c8f2b1a-4d5e-4f60-8a7b-9c0d1e2f3a4b";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn uuid_bytes() -> [u8; 16] {
    let b = unhex(&UUID.replace('-', ""));
    let mut u = [0u8; 16];
    u.copy_from_slice(&b);
    u
}

/// Deterministic, incompressible-looking test data.
fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn veritysetup_format(dir: &Path, data: &[u8]) -> (Vec<u8>, String) {
    let (d, h) = (dir.join("data"), dir.join("hash"));
    std::fs::write(&d, data).expect("write data");
    let out = Command::new("veritysetup")
        .args(["format", &format!("--salt={SALT}"), &format!("--uuid={UUID}")])
        .arg(&d)
        .arg(&h)
        .output()
        .expect("veritysetup (apt-get install cryptsetup-bin)");
    assert!(out.status.success(), "veritysetup: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let root = text.lines().find_map(|l| l.strip_prefix("Root hash:")).expect("root hash line").trim().to_owned();
    (std::fs::read(&h).expect("hash file"), root)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn compare(len: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = data(len);
    let (their_area, their_root) = veritysetup_format(dir.path(), &input);
    let ours = format(&input, &unhex(SALT), uuid_bytes()).expect("format");
    assert_eq!(hex(&ours.root_hash), their_root, "root hash for {len} bytes");
    assert_eq!(ours.hash_area.len(), their_area.len(), "hash area length for {len} bytes");
    assert!(ours.hash_area == their_area, "hash area bytes differ for {len} bytes");
    verify(&input, &ours.hash_area, &ours.root_hash).expect("our verify accepts our tree");

    // veritysetup verify accepts our hash area.
    std::fs::write(dir.path().join("ours"), &ours.hash_area).expect("write");
    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(dir.path().join("data"))
        .arg(dir.path().join("ours"))
        .arg(hex(&ours.root_hash))
        .output()
        .expect("veritysetup verify");
    assert!(out.status.success(), "veritysetup verify: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn one_block() {
    compare(BLOCK_SIZE);
}

#[test]
fn few_blocks() {
    compare(3 * BLOCK_SIZE);
}

#[test]
fn exactly_one_full_hash_block() {
    compare(HASHES_PER_BLOCK * BLOCK_SIZE);
}

#[test]
fn two_levels() {
    compare((HASHES_PER_BLOCK + 1) * BLOCK_SIZE);
}

#[test]
fn three_levels() {
    compare((HASHES_PER_BLOCK * HASHES_PER_BLOCK + 5) * BLOCK_SIZE);
}

#[test]
fn tamper_is_detected() {
    let mut input = data(40 * BLOCK_SIZE);
    let f = format(&input, &unhex(SALT), uuid_bytes()).expect("format");
    input[17 * BLOCK_SIZE + 99] ^= 1;
    assert!(matches!(verify(&input, &f.hash_area, &f.root_hash), Err(Error::DataMismatch(17))));
    input[17 * BLOCK_SIZE + 99] ^= 1;
    let mut area = f.hash_area.clone();
    area[BLOCK_SIZE + 5] ^= 1;
    assert!(verify(&input, &area, &f.root_hash).is_err());
    let mut root = f.root_hash;
    root[0] ^= 1;
    assert!(matches!(verify(&input, &f.hash_area, &root), Err(Error::RootMismatch)));
}

#[test]
fn superblock_round_trips() {
    let sb = Superblock { uuid: uuid_bytes(), data_blocks: 77, salt: unhex(SALT) };
    assert_eq!(Superblock::parse(&sb.to_bytes()).expect("parses"), sb);
    assert!(Superblock::parse(&[0u8; 512]).is_err());
}

#[test]
fn size_not_a_multiple_of_the_block_size() {
    // veritysetup protects whole blocks only; the partial tail is not covered.
    compare(3 * BLOCK_SIZE + 100);
    compare((HASHES_PER_BLOCK + 1) * BLOCK_SIZE + 4000);
}
