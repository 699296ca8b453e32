//! Two builds from the same inputs give the same image, byte for byte; the disk is a valid GPT
//! (as util-linux's sfdisk reads it) whose partitions veritysetup verifies against the root
//! hash on the command line.
//!
//! Inputs are the ones `make image` uses (the Makefile exports them): `CONTRAST_KERNEL_TREE`,
//! `CONTRAST_AGENT`, `CONTRAST_RUNNER`, `CONTRAST_INIT`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn input(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| panic!("{var} is not set: run `make test`"));
    assert!(path.exists(), "{var}={} does not exist: run `make image`", path.display());
    path
}

fn build(out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_contrast-image"))
        .arg("--kernel-tree")
        .arg(input("CONTRAST_KERNEL_TREE"))
        .arg("--agent")
        .arg(input("CONTRAST_AGENT"))
        .arg("--runner")
        .arg(input("CONTRAST_RUNNER"))
        .arg("--init")
        .arg(input("CONTRAST_INIT"))
        .args(["--busybox", "/bin/busybox", "--out"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running contrast-image");
    assert!(status.success(), "contrast-image failed");
}

#[test]
fn two_builds_are_identical_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build(&a);
    build(&b);
    for name in ["reference-values.json", "root.img", "initrd.img", "initrd-agent.img", "cmdline", "vmlinux"] {
        let (x, y) = (std::fs::read(a.join(name)).expect("a"), std::fs::read(b.join(name)).expect("b"));
        assert!(x == y, "{name} differs between two builds");
    }

    let values: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("reference-values.json")).expect("read")).expect("json");
    let root_hash = values["root_hash"].as_str().expect("root_hash");
    let cmdline = std::fs::read_to_string(a.join("cmdline")).expect("cmdline");
    assert!(cmdline.contains(&format!("roothash={root_hash}")), "{cmdline}");
    assert_eq!(values["cmdline"]["value"].as_str(), Some(cmdline.as_str()));

    // sfdisk (util-linux) reads our partition table: types and UUIDs as the command line names.
    let out =
        Command::new("sfdisk").arg("--json").arg(a.join("root.img")).output().expect("sfdisk (apt-get install fdisk)");
    assert!(out.status.success(), "sfdisk: {}", String::from_utf8_lossy(&out.stderr));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk json");
    let parts = table["partitiontable"]["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[1]["type"], "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    for (part, key) in parts.iter().zip(["root_partition_uuid", "verity_partition_uuid"]) {
        let uuid = values["verity"][key].as_str().expect("uuid").to_uppercase();
        assert_eq!(part["uuid"].as_str(), Some(uuid.as_str()));
        assert!(cmdline.contains(&format!("PARTUUID={}", uuid.to_lowercase())), "{cmdline}");
    }

    // veritysetup verifies the two partitions against the root hash.
    let disk = std::fs::read(a.join("root.img")).expect("disk");
    let extract = |i: usize, name: &str| {
        let start = parts[i]["start"].as_u64().expect("start") as usize * 512;
        let size = parts[i]["size"].as_u64().expect("size") as usize * 512;
        let path = dir.path().join(name);
        std::fs::write(&path, &disk[start..start + size]).expect("write partition");
        path
    };
    let (data, hash) = (extract(0, "data"), extract(1, "hash"));
    let out =
        Command::new("veritysetup").arg("verify").arg(&data).arg(&hash).arg(root_hash).output().expect("veritysetup");
    assert!(out.status.success(), "veritysetup verify: {}", String::from_utf8_lossy(&out.stderr));
    let wrong = format!("{}{}", if root_hash.starts_with('0') { "1" } else { "0" }, &root_hash[1..]);
    let out =
        Command::new("veritysetup").arg("verify").arg(&data).arg(&hash).arg(&wrong).output().expect("veritysetup");
    assert!(!out.status.success(), "veritysetup accepted a wrong root hash");
}
