//! `make bench` (network part): round-trip time and TCP throughput pod↔host and pod↔pod for
//! pods in VMs (virtio-net on a tap, joined to the pod's veth by tc redirects) next to
//! runc-style pods on the same CNI bridge in the same run: network namespaces that the same
//! CNI plugins (bridge + host-local) attach, which is all the data path a runc pod has.
//! Written to docs/performance.md between the `bench-network` markers.
//!
//! "Host" is the network namespace containerd and the bridge live in (the test's own).
//! Tools are busybox's: `ping` for RTT, `dd | nc` into `nc -ll -e dd of=/dev/null` for
//! throughput, timed by the sender from /proc/uptime (10 ms resolution; each transfer runs
//! for seconds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{ensure, Context, Result};
use contrast_cri_client::CriClient;
use contrast_tests::containerd::{Containerd, CRI_HANDLER, IMAGE};
use contrast_tests::{image_dir, write_section};

const PORT: u16 = 5201;
/// Bytes per transfer: 64 KiB blocks.
const BLOCKS: u32 = 512;
const RUNS: usize = 3;
const PINGS: &str = "20";

/// Where a command runs: in a VM pod's container, or in a network namespace on the host.
enum End {
    Vm(String),
    Netns(String),
}

struct Bench {
    cri: CriClient,
}

impl Bench {
    async fn sh(&mut self, at: &End, script: &str) -> Result<String> {
        match at {
            End::Vm(container) => {
                let (code, out, err) = self.cri.exec_sync(container, &["sh", "-c", script]).await?;
                let text = format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
                ensure!(code == 0, "{script} in the VM exited {code}: {text}");
                Ok(text)
            }
            End::Netns(ns) => {
                let out = Command::new("nsenter").arg(format!("--net={ns}")).args(["sh", "-c", script]).output()?;
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                ensure!(out.status.success(), "{script} in {ns}: {text}");
                Ok(text)
            }
        }
    }

    /// Median average RTT in ms of `ping` from `from` to `ip`.
    async fn rtt_ms(&mut self, from: &End, ip: &str) -> Result<f64> {
        let out = self.sh(from, &format!("busybox ping -q -c {PINGS} -i 0.2 {ip}")).await?;
        // "round-trip min/avg/max = 0.062/0.091/0.130 ms"
        let stats = out.lines().find(|l| l.contains("min/avg/max")).context("ping summary")?;
        let nums = stats.split('=').nth(1).context("ping numbers")?.trim();
        nums.split('/').nth(1).context("avg")?.trim().parse().context("avg number")
    }

    /// Median MB/s of `BLOCKS` × 64 KiB from `from` to `ip`'s sink.
    async fn throughput(&mut self, from: &End, ip: &str) -> Result<f64> {
        let script = format!(
            "read t0 x < /proc/uptime; busybox dd if=/dev/zero bs=64k count={BLOCKS} 2>/dev/null | busybox nc {ip} {PORT}; \
             read t1 x < /proc/uptime; echo elapsed $t0 $t1"
        );
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let out = self.sh(from, &script).await?;
            let line = out.lines().find(|l| l.starts_with("elapsed")).context("elapsed line")?;
            let t: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            ensure!(t.len() == 2 && t[1] > t[0], "bad timing {line:?}");
            rates.push(f64::from(BLOCKS) * 65536.0 / 1e6 / (t[1] - t[0]));
        }
        rates.sort_by(f64::total_cmp);
        Ok(rates[RUNS / 2])
    }
}

/// A runc-style pod network: a namespace the CNI bridge plugin attaches to containerd's
/// bridge, as containerd does for a runc pod; with a throughput sink on `PORT`.
struct PlainPod {
    name: String,
    host_ns: String,
    conf: String,
    ip: String,
    sink: Child,
}

impl PlainPod {
    fn cni(&self, command: &str) -> Result<String> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.host_ns))
            .arg("/usr/lib/cni/bridge")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_NETNS", format!("/run/netns/{}", self.name))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(self.conf.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "CNI {command}: {}", String::from_utf8_lossy(&out.stdout));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn create(name: &str, host_ns: &str, cni_dir: &Path) -> Result<PlainPod> {
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cni_dir.join("net.d/10-contrast-test.conflist"))?)?;
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        let status = Command::new("ip").args(["netns", "add", name]).status()?;
        ensure!(status.success(), "ip netns add {name}");
        let mut pod = PlainPod {
            name: name.into(),
            host_ns: host_ns.into(),
            conf: conf.to_string(),
            ip: String::new(),
            sink: Command::new("true").spawn()?,
        };
        let result: serde_json::Value = serde_json::from_str(&pod.cni("ADD")?)?;
        let cidr = result["ips"][0]["address"].as_str().context("CNI result without an IP")?;
        pod.ip = cidr.split('/').next().unwrap_or_default().to_owned();
        let _ = Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]).status();
        pod.sink = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["busybox", "nc", "-ll", "-p", &PORT.to_string(), "-e", "busybox", "dd", "of=/dev/null", "bs=64k"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(pod)
    }

    fn ns(&self) -> End {
        End::Netns(format!("/run/netns/{}", self.name))
    }
}

impl Drop for PlainPod {
    fn drop(&mut self) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
        let _ = self.cni("DEL");
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let shim = PathBuf::from(args.next().context("usage: bench_network <shim> [image dir] [doc]")?);
    let image = args.next().map(PathBuf::from).map_or_else(image_dir, Ok)?;
    let doc = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/performance.md"));
    let cd = Containerd::start(&shim, &image)?;
    let host_ns = cd.netns_path().context("containerd in its own namespace")?.display().to_string();
    let cri = CriClient::connect(Path::new(&cd.socket())).await?;
    let mut b = Bench { cri };

    let sink = format!("nc -ll -p {PORT} -e dd of=/dev/null bs=64k");
    let mut vms = Vec::new();
    for name in ["bench-net-a", "bench-net-b"] {
        let pod = b.cri.run_pod(name, "default", CRI_HANDLER, HashMap::new()).await.context("RunPodSandbox")?;
        let sinker = b.cri.run_container(&pod, "sink", IMAGE, &["sh", "-c", &sink]).await?;
        let (ip, _) = b.cri.pod_network(&pod.id).await?;
        vms.push((pod, sinker, ip));
    }
    let suffix = std::process::id();
    let plain_a = PlainPod::create(&format!("contrast-bench-a{suffix}"), &host_ns, &cd.dir.path().join("cni"))?;
    let plain_b = PlainPod::create(&format!("contrast-bench-b{suffix}"), &host_ns, &cd.dir.path().join("cni"))?;
    let host = End::Netns(host_ns.clone());
    let (vm_a, vm_b) = (End::Vm(vms[0].1.clone()), End::Vm(vms[1].1.clone()));
    let ip_vm_a = vms[0].2.clone();
    // The bridge's address: the host end of pod → host transfers.
    let gateway = "10.88.0.1";
    let host_sink = Command::new("nsenter")
        .arg(format!("--net={host_ns}"))
        .args(["busybox", "nc", "-ll", "-p", &PORT.to_string(), "-e", "busybox", "dd", "of=/dev/null", "bs=64k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let host_sink = Guard(host_sink);
    // Warm-up: ARP and the first connection of each path.
    for (from, ip) in [(&host, &ip_vm_a), (&vm_b, &ip_vm_a), (&host, &plain_a.ip), (&plain_b.ns(), &plain_a.ip)] {
        b.sh(from, &format!("busybox ping -q -c 2 {ip}")).await?;
    }

    let mut rows = Vec::new();
    let ratio = |vm: f64, plain: f64| if plain > 0.0 { vm / plain } else { f64::NAN };
    let rtt = [
        ("RTT host → pod (ms, lower is better)", b.rtt_ms(&host, &ip_vm_a).await?, b.rtt_ms(&host, &plain_a.ip).await?),
        ("RTT pod → pod (ms)", b.rtt_ms(&vm_b, &ip_vm_a).await?, b.rtt_ms(&plain_b.ns(), &plain_a.ip).await?),
    ];
    for (what, vm, plain) in rtt {
        rows.push(format!("| {what} | {vm:.3} | {plain:.3} | {:.1}× |", ratio(vm, plain)));
    }
    let tput = [
        (
            "TCP host → pod (MB/s, higher is better)",
            b.throughput(&host, &ip_vm_a).await?,
            b.throughput(&host, &plain_a.ip).await?,
        ),
        ("TCP pod → host (MB/s)", b.throughput(&vm_a, gateway).await?, b.throughput(&plain_a.ns(), gateway).await?),
        ("TCP pod → pod (MB/s)", b.throughput(&vm_b, &ip_vm_a).await?, b.throughput(&plain_b.ns(), &plain_a.ip).await?),
    ];
    for (what, vm, plain) in tput {
        rows.push(format!("| {what} | {vm:.1} | {plain:.1} | {:.2}× |", ratio(vm, plain)));
    }
    drop(host_sink);
    for (pod, _, _) in &vms {
        b.cri.remove_pod(&pod.id).await?;
    }
    let body = format!(
        "Command: `make bench` (runs `target/release/examples/bench_network <shim> build/image docs/performance.md`): \
         two pods of runtime class `contrast-cc` (insecure platform, TCG, virtio-net userspace — no vhost-net here) \
         and two runc-style pods (network namespaces the same CNI bridge plugin attaches, busybox run in them with \
         `nsenter`), all on one CNI bridge (Debian's bridge + host-local plugins) in the benchmark's own network \
         namespace, measured in the same run. RTT: average of {PINGS} busybox `ping`s at 0.2 s. Throughput: median \
         of {RUNS} transfers of {} MiB (`dd | nc` into `nc -ll -e dd of=/dev/null`), timed by the sender. \
         Ratio: VM pod ÷ runc-style pod.\n\n\
         | path | VM pod | runc-style pod | ratio |\n|---|---|---|---|\n{}\n",
        u64::from(BLOCKS) * 64 / 1024,
        rows.join("\n")
    );
    print!("{body}");
    write_section(&doc, "bench-network", &body)?;
    drop(plain_a);
    drop(plain_b);
    Ok(())
}

/// Kills the child on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
