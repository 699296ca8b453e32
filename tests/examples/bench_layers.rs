//! `make bench` (image part): a container's start from verified layers (the confidential
//! path: EROFS + dm-verity disks hot-plugged over virtio-scsi, read once in full at create)
//! next to the `insecure` path (the same files shared over virtio-fs), for a small image and
//! one with a 100 MiB file; with the node's one-time layer conversion and the guest memory in
//! use once the container runs. Written to docs/performance.md between the `bench-layers`
//! markers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use contrast_agent_protocol::{agent, diagnostics, diagnostics_ttrpc};
use contrast_tests::images::tar_layer;
use contrast_tests::pod::{container_spec, create_request, TestPod};
use contrast_tests::{image_dir, write_section};
use sha2::{Digest, Sha256};

const BIG: usize = 100 << 20;

struct Figures {
    convert: Duration,
    create: Duration,
    guest_used_kib: u64,
    bytes: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn guest_used(pod: &TestPod) -> Result<u64> {
    let diag = diagnostics_ttrpc::DiagnosticsClient::new(contrast_tests::ttrpc_client(pod.vm.dial_agent().await?));
    let ctx = ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64);
    Ok(diag.agent_memory(ctx, &diagnostics::AgentMemoryRequest::new()).await.context("AgentMemory")?.guest_used_kib)
}

/// Starts `sleep` in a container whose root is `req`'s, returns the create+start time.
async fn run(pod: &TestPod, mut req: agent::CreateContainerRequest, id: &str) -> Result<Duration> {
    req.container_id = id.into();
    req.exec_id = id.into();
    let t = Instant::now();
    pod.agent.create_container(&req).await?;
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    pod.agent.start_container(&start).await?;
    Ok(t.elapsed())
}

async fn layered(image: &std::path::Path, blobs: &[Vec<u8>], tag: &str) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let mut images = Vec::new();
    for b in blobs {
        images.push(contrast_erofs::layer_image(b)?);
    }
    let convert = t.elapsed();
    let pod = TestPod::start_layered(image, &format!("bench-l-{tag}")).await?;
    let mut storages = Vec::new();
    let mut lower = Vec::new();
    let mut bytes = 0;
    for (i, (img, blob)) in images.iter().zip(blobs).enumerate() {
        let path = dir.path().join(format!("{i}.img"));
        std::fs::write(&path, &img.bytes)?;
        bytes += img.bytes.len() as u64;
        let target = i as u32 + 1;
        pod.vm.qmp().attach_scsi_disk(&format!("d{i}"), &path, target).await?;
        let mut s = agent::Storage::new();
        s.driver = "contrast.layer".into();
        s.source = format!("{target}:0");
        s.options = vec![
            format!("digest=sha256:{}", hex(&Sha256::digest(blob))),
            format!("root_hash={}", hex(&img.root_hash)),
            format!("salt={}", hex(&img.salt)),
            format!("data_blocks={}", img.data_blocks),
        ];
        s.mount_point = format!("/run/contrast/layers/b/{i}");
        lower.insert(0, s.mount_point.clone());
        storages.push(s);
    }
    let mut o = agent::Storage::new();
    o.driver = "overlayfs".into();
    o.options = vec![
        format!("lowerdir={}", lower.join(":")),
        "upperdir=/run/contrast/upper/b/upper".into(),
        "workdir=/run/contrast/upper/b/work".into(),
    ];
    o.mount_point = "/run/contrast/rootfs/b".into();
    storages.push(o);
    let mut req = create_request("b", container_spec("/run/contrast/rootfs/b", &["sleep", "1000"], false));
    req.storages = storages;
    let create = run(&pod, req, "b").await?;
    let guest_used_kib = guest_used(&pod).await?;
    pod.stop().await;
    Ok(Figures { convert, create, guest_used_kib, bytes })
}

async fn shared(image: &std::path::Path, big: Option<&[u8]>, tag: &str) -> Result<Figures> {
    let pod = TestPod::start(image, &format!("bench-s-{tag}")).await?;
    // The shared busybox tree is the pod's scratch dir; the big file goes into it.
    let host_root =
        pod.vm.state_dir().parent().and_then(|p| p.parent()).and_then(|p| p.parent()).map(|p| p.join("shared/busybox"));
    if let (Some(data), Some(root)) = (big, host_root) {
        std::fs::create_dir_all(root.join("data"))?;
        std::fs::write(root.join("data/big"), data)?;
    }
    let req = create_request("s", container_spec(&pod.rootfs, &["sleep", "1000"], false));
    let create = run(&pod, req, "s").await?;
    let guest_used_kib = guest_used(&pod).await?;
    pod.stop().await;
    Ok(Figures { convert: Duration::ZERO, create, guest_used_kib, bytes: big.map_or(0, |b| b.len() as u64) })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));
    let busybox = std::fs::read("/bin/busybox").context("busybox-static")?;
    let base = tar_layer(&[("bin/busybox", busybox, 0o755)], &[("bin/sleep", "busybox"), ("bin/sh", "busybox")]);
    let big: Vec<u8> = (0..BIG).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let big_layer = tar_layer(&[("data/big", big.clone(), 0o644)], &[]);

    let small_l = layered(&image, std::slice::from_ref(&base), "small").await?;
    let small_s = shared(&image, None, "small").await?;
    let big_l = layered(&image, &[base.clone(), big_layer], "big").await?;
    let big_s = shared(&image, Some(&big), "big").await?;

    let row = |name: &str, l: &Figures, s: &Figures| {
        format!(
            "| {name} | {:.2?} | {:.2?} | {:.2?} ({:.1}×) | {} / {} KiB | {:.1} MiB |\n",
            l.convert,
            s.create,
            l.create,
            l.create.as_secs_f64() / s.create.as_secs_f64(),
            s.guest_used_kib,
            l.guest_used_kib,
            l.bytes as f64 / f64::from(1 << 20),
        )
    };
    let section = format!(
        "Command: `make bench` (runs `target/release/examples/bench_layers build/image docs/performance.md`). \
         Pod VM under TCG, 512 MiB; one container (`sleep`) per pod, created through the agent API. \
         Baseline: the insecure path (files shared over virtio-fs); measured: the confidential path \
         (layers as EROFS + dm-verity disks over virtio-scsi, every block read and verified at create).\n\n\
         | image | node's layer conversion (once per layer) | create+start, virtio-fs | create+start, verified layers (ratio) | guest memory in use, virtio-fs / layers | layer disks |\n\
         |---|---|---|---|---|---|\n{}{}",
        row("busybox (1 layer)", &small_l, &small_s),
        row("busybox + 100 MiB file (2 layers)", &big_l, &big_s),
    );
    println!("{section}");
    write_section(&doc, "bench-layers", &section)
}
