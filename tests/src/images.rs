//! Multi-layer OCI images built in the test (no registry here): layer blobs and OCI image
//! archives as `ctr image import` takes them.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

/// Size of the file the middle layer adds (`/data/blob`).
pub const BLOB_SIZE: usize = 3 << 20;

/// A gzip'd layer tar with `files` (path, content, mode) and `symlinks` (path, target).
pub fn tar_layer(files: &[(&str, Vec<u8>, u32)], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, mode, size| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for (path, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
        b.append_data(&mut h, path, &data[..]).expect("append");
    }
    for (path, target) in symlinks {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, path, target).expect("symlink");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// The content of `/data/blob`.
pub fn blob_content() -> Vec<u8> {
    (0..BLOB_SIZE).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Three layers: busybox; a 3 MiB `/data/blob` and `/etc/motd`; then `top_motd` replacing
/// `/etc/motd`.
pub fn three_layers(top_motd: &str) -> Vec<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let links: Vec<String> =
        ["sh", "cat", "sha256sum", "echo", "sleep", "true"].iter().map(|a| format!("bin/{a}")).collect();
    let links: Vec<(&str, &str)> = links.iter().map(|p| (p.as_str(), "busybox")).collect();
    vec![
        tar_layer(&[("bin/busybox", busybox, 0o755)], &links),
        tar_layer(&[("data/blob", blob_content(), 0o644), ("etc/motd", b"lower\n".to_vec(), 0o644)], &[]),
        tar_layer(&[("etc/motd", format!("{top_motd}\n").into_bytes(), 0o644)], &[]),
    ]
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// Writes an OCI image archive of `layers` named `name` with command `cmd`.
pub fn write_archive(path: &Path, name: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Result<()> {
    write_archive_as(path, name, layers, cmd, "")
}

/// `write_archive` of an image whose config sets `User` to `user` (empty: none).
pub fn write_archive_as(path: &Path, name: &str, layers: &[Vec<u8>], cmd: &[&str], user: &str) -> Result<()> {
    let mut t = tar::Builder::new(std::fs::File::create(path)?);
    let mut add = |file: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        t.append_data(&mut h, file, data)?;
        Ok(())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = digest(l);
        add(&format!("blobs/sha256/{}", &d[7..]), l)?;
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": l.len() }));
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l[..]), &mut raw)?;
        diff_ids.push(digest(&raw));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/bin", "APP_MODE=default"], "Cmd": cmd, "User": user },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    let config_digest = digest(&config);
    add(&format!("blobs/sha256/{}", &config_digest[7..]), &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": descs,
    }))?;
    let manifest_digest = digest(&manifest);
    add(&format!("blobs/sha256/{}", &manifest_digest[7..]), &manifest)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                        "size": manifest.len(), "annotations": { "io.containerd.image.name": name } }],
    }))?;
    add("index.json", &index)?;
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    t.finish()?;
    Ok(())
}

/// Writes kubelet's layout of a configMap (secret, projected, downwardAPI) volume at `root`:
/// the files in the timestamped directory `stamp`, `..data` pointing at it, each key a
/// link through `..data`. Called again with another `stamp`, it is kubelet's update: a new
/// directory, `..data` swapped, then the links of keys no longer there and the old
/// directory removed.
pub fn kubelet_volume(root: &std::path::Path, stamp: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(root.join(stamp)).expect("dir");
    for (key, content) in files {
        let path = root.join(stamp).join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, content).expect("file");
    }
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).expect("link");
    std::fs::rename(&tmp, root.join("..data")).expect("swap");
    for (key, _) in files {
        let top = key.split('/').next().expect("key");
        if root.join(top).symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), root.join(top)).expect("key link");
        }
    }
    for entry in std::fs::read_dir(root).expect("volume").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old_stamp = name.starts_with("..") && name != "..data" && name != stamp;
        let gone_key = !name.starts_with("..") && !files.iter().any(|(key, _)| key.split('/').next() == Some(&name));
        if old_stamp {
            std::fs::remove_dir_all(entry.path()).expect("old directory");
        } else if gone_key {
            std::fs::remove_file(entry.path()).expect("removed key's link");
        }
    }
}
