//! Container root filesystems from image layers, the confidential path's way: each layer an
//! EROFS image with its dm-verity tree (`contrast-erofs`), hot-plugged read-only over
//! virtio-scsi, opened in the guest through dm-verity with its root hash, overlaid with a
//! writable upper layer in guest memory. No virtio-fs, no network device.

use std::path::{Path, PathBuf};

use contrast_agent_protocol::agent;
use contrast_tests::images::{blob_content, three_layers};
use contrast_tests::pod::{container_spec, create_request, TestPod};
use sha2::{Digest, Sha256};

use crate::Scratch;

struct Layer {
    digest: String,
    path: PathBuf,
    image: contrast_erofs::LayerImage,
}

fn write_layers(dir: &Path, blobs: &[Vec<u8>]) -> Vec<Layer> {
    blobs
        .iter()
        .enumerate()
        .map(|(i, blob)| {
            let image = contrast_erofs::layer_image(blob).expect("layer image");
            let path = dir.join(format!("layer{i}.img"));
            std::fs::write(&path, &image.bytes).expect("write layer");
            let digest = format!("sha256:{}", hex(&Sha256::digest(blob)));
            Layer { digest, path, image }
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Storages of a container whose rootfs is `layers` (bottom first) at SCSI ids from `first`.
fn storages(id: &str, layers: &[Layer], first: u32) -> (Vec<agent::Storage>, String) {
    let mut out = Vec::new();
    let mut lower = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let mut s = agent::Storage::new();
        s.driver = "contrast.layer".into();
        s.source = format!("{}:0", first + i as u32);
        s.fstype = "erofs".into();
        s.options = vec![
            format!("digest={}", l.digest),
            format!("root_hash={}", hex(&l.image.root_hash)),
            format!("salt={}", hex(&l.image.salt)),
            format!("data_blocks={}", l.image.data_blocks),
        ];
        s.mount_point = format!("/run/contrast/layers/{id}/{i}");
        lower.insert(0, s.mount_point.clone());
        out.push(s);
    }
    let rootfs = format!("/run/contrast/rootfs/{id}");
    let mut o = agent::Storage::new();
    o.driver = "overlayfs".into();
    o.source = "overlay".into();
    o.fstype = "overlay".into();
    o.options = vec![
        format!("lowerdir={}", lower.join(":")),
        format!("upperdir=/run/contrast/upper/{id}/upper"),
        format!("workdir=/run/contrast/upper/{id}/work"),
    ];
    o.mount_point = rootfs.clone();
    out.push(o);
    (out, rootfs)
}

async fn attach(pod: &TestPod, layers: &[Layer], first: u32, tag: &str) {
    for (i, l) in layers.iter().enumerate() {
        pod.vm.qmp().attach_scsi_disk(&format!("{tag}{i}"), &l.path, first + i as u32).await.expect("hotplug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_layers_make_the_rootfs_and_a_flipped_byte_names_its_layer() {
    let scratch = Scratch::new();
    let (blobs, blob) = (three_layers("upper replaces lower"), blob_content());
    let layers = write_layers(scratch.dir.path(), &blobs);
    let pod = TestPod::start_layered(&contrast_tests::image_dir().expect("image"), "layers").await.expect("pod");
    let args = pod.vm_args();
    assert!(
        args.contains("virtio-scsi-pci") && !args.contains("vhost-user-fs") && !args.contains("virtio-net"),
        "{args}"
    );

    attach(&pod, &layers, 1, "a").await;
    let (st, rootfs) = storages("c1", &layers, 1);
    let script = "cat /etc/motd; sha256sum /data/blob; echo written > /etc/new; cat /etc/new";
    let mut req = create_request("c1", container_spec(&rootfs, &["sh", "-c", script], false));
    req.storages = st;
    pod.agent.create_container(&req).await.expect("create from layers");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "c1".into();
    pod.agent.start_container(&start).await.expect("start");
    let out = String::from_utf8(pod.read_all_stdout("c1", "").await.expect("stdout")).expect("utf-8");
    assert_eq!(pod.wait("c1", "").await.expect("wait"), 0, "{out}");
    let want = format!("upper replaces lower\n{}  /data/blob\nwritten\n", hex(&Sha256::digest(&blob)));
    assert_eq!(out, want, "the top layer's file wins, the image's bytes are read back, the upper layer is writable");
    pod.remove("c1").await.expect("remove");

    // One flipped byte in the middle layer's copy on the host: create fails naming it.
    let mut bytes = std::fs::read(&layers[1].path).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    let tampered = scratch.dir.path().join("tampered.img");
    std::fs::write(&tampered, &bytes).expect("write");
    let mut bad = write_layers(scratch.dir.path(), &blobs);
    bad[1].path = tampered;
    attach(&pod, &bad, 10, "b").await;
    let (st, rootfs) = storages("c2", &bad, 10);
    let mut req = create_request("c2", container_spec(&rootfs, &["true"], false));
    req.storages = st;
    let err = pod.agent.create_container(&req).await.expect_err("tampered layer");
    assert!(err.message.contains(&format!("layer {}", bad[1].digest)), "{err}");
    assert!(err.message.contains("does not match its pinned root hash"), "{err}");

    // The pod stays usable: the good layers again, on fresh disks.
    attach(&pod, &layers, 20, "c").await;
    let (st, rootfs) = storages("c3", &layers, 20);
    let mut req = create_request("c3", container_spec(&rootfs, &["cat", "/etc/motd"], false));
    req.storages = st;
    pod.agent.create_container(&req).await.expect("create after a refusal");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "c3".into();
    pod.agent.start_container(&start).await.expect("start");
    assert_eq!(pod.read_all_stdout("c3", "").await.expect("stdout"), b"upper replaces lower\n");
    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
}
