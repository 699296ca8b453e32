//! A CRI pod's network reaches its VM, on containerd 1.6, 1.7 and 2.1 with Debian's CNI
//! plugins (bridge + host-local) in a network namespace of the test's own: pods talk to each
//! other and to that namespace over the bridge, the guest NIC is the pod veth's twin (MAC,
//! MTU, the pod IP CRI reports), and removing the pods leaves no tap or tc filter behind.
//! A `hostNetwork` pod is refused with the reason.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use contrast_cri_client::{cri, pod_config, CriClient};
use contrast_tests::containerd::{Containerd, Release, CRI_HANDLER, IMAGE};
use contrast_tests::{containerd_matrix, image_dir};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long pod A's HTTP server may take to answer the first fetch.
const SERVE_DEADLINE: Duration = Duration::from_secs(20);
const PAGE: &str = "served-by-pod-a";

fn containerd(release: Release) -> Containerd {
    Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image")).expect("containerd starts")
}

/// `nsenter --net=<netns> <args>`: stdout, or the failure.
fn in_netns(netns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter").arg(format!("--net={netns}")).args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// (MAC, MTU) of `dev` as `ip -o link show` prints it.
fn mac_and_mtu(ip_link: &str) -> (String, String) {
    let words: Vec<&str> = ip_link.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).map(|w| w.to_string());
    (after("link/ether").unwrap_or_default(), after("mtu").unwrap_or_default())
}

/// Link names in a network namespace.
fn links(netns: &str) -> Vec<String> {
    in_netns(netns, &["ip", "-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

containerd_matrix! {
    /// Pod A serves HTTP on its pod IP; a container of pod B and the test's own namespace
    /// fetch from it. Inside the VM, eth0 carries the IP CRI reports and the veth's MAC and
    /// MTU. After both pods are removed, pod A's namespace (held open by the test) holds
    /// nothing but loopback, and no QEMU or helper is left.
    async fn two_pods_talk_over_the_cni_bridge(release: Release) {
        let cd = containerd(release);
        let mut cri =
            CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects").streaming_from(cd.netns_path());
        let mut config = pod_config("web", "default");
        config.hostname = "web-a".into();
        config.dns_config =
            Some(cri::DnsConfig { servers: vec!["10.88.0.53".into()], searches: vec!["svc.example".into()], options: vec![] });
        let a = match cri.run_pod_config(CRI_HANDLER, config).await {
            Ok(p) => p,
            Err(e) => panic!("RunPodSandbox: {e:#}\n{}", cd.log()),
        };
        // The page on 8080, and on 8082 on IPv6 loopback only (a server listening on
        // "localhost" that resolves it to ::1, as Node.js does).
        let serve = format!(
            "mkdir -p /www && echo {PAGE} > /www/index.html && httpd -p '[::1]:8082' -h /www && exec httpd -f -p 8080 -h /www"
        );
        let server = cri.run_container(&a, "httpd", IMAGE, &["sh", "-c", &serve]).await.expect("httpd container");
        let (ip_a, netns_a) = cri.pod_network(&a.id).await.expect("PodSandboxStatus");
        assert!(ip_a.starts_with("10.88.0."), "pod IP from the test's CNI subnet, got {ip_a:?}");
        let netns_a = netns_a.expect("the sandbox's runtime spec names its network namespace");
        // Held open so that the namespace outlives containerd's removal of it: what is left
        // in it after the pods are gone is counted below.
        let held = File::open(&netns_a).expect("open pod A's netns");
        let held_path = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());

        let (code, out, err) = cri
            .exec_sync(&server, &["sh", "-c", "ip -o -4 addr show dev eth0; ip -o link show dev eth0"])
            .await
            .expect("exec in pod A");
        let guest = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(code, 0, "{guest}{}", String::from_utf8_lossy(&err));
        // DNS and names as in a runc pod: containerd's files for the pod.
        let (_, files, _) =
            cri.exec_sync(&server, &["cat", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]).await.expect("exec");
        let files = String::from_utf8_lossy(&files);
        assert!(files.contains("nameserver 10.88.0.53") && files.contains("search svc.example"), "{files}");
        assert!(files.contains("web-a"), "hostname and hosts: {files}");
        assert!(guest.contains(&format!("inet {ip_a}/24")), "the VM's eth0 has the pod IP {ip_a}: {guest}");
        let veth = in_netns(&held_path, &["ip", "-o", "link", "show", "dev", "eth0"]).expect("pod veth");
        let (veth_mac, veth_mtu) = mac_and_mtu(&veth);
        let guest_link = guest.lines().find(|l| l.contains("link/ether")).unwrap_or_default();
        assert!(!veth_mac.is_empty() && !veth_mtu.is_empty(), "veth: {veth}");
        assert_eq!(mac_and_mtu(guest_link), (veth_mac, veth_mtu), "guest NIC vs pod veth:\n{guest_link}\n{veth}");
        // The host side as built: one tap, redirected to and from the veth.
        let taps: Vec<String> = links(&held_path).into_iter().filter(|l| l.starts_with("tap")).collect();
        assert_eq!(taps, ["tap0_contrast"], "one tap per pod interface");
        let filters = in_netns(&held_path, &["tc", "filter", "show", "dev", "eth0", "ingress"]).expect("tc filters");
        assert!(filters.contains("Egress Redirect to device tap0_contrast"), "veth → tap redirect: {filters}");

        let b = cri.run_pod("client", "default", CRI_HANDLER, HashMap::new()).await.expect("pod B");
        let client = cri.run_container(&b, "wget", IMAGE, &["sleep", "1000"]).await.expect("client container");
        let url = format!("http://{ip_a}:8080/index.html");
        // HTTP by hand over busybox nc (bookworm's static busybox wget segfaults).
        let fetch = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip_a} 8080");
        let deadline = Instant::now() + SERVE_DEADLINE;
        let fetched = loop {
            let (code, out, err) = cri.exec_sync(&client, &["sh", "-c", &fetch]).await.expect("exec in pod B");
            let out = String::from_utf8_lossy(&out).into_owned();
            if code == 0 && out.contains(PAGE) {
                break (code, out, String::new());
            }
            if Instant::now() > deadline {
                break (code, out, String::from_utf8_lossy(&err).into_owned());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert!(fetched.0 == 0 && fetched.1.contains("200 OK") && fetched.1.contains(PAGE), "pod B fetching {url}: {fetched:?}");
        let test_ns = cd.netns_path().expect("containerd runs in the test's namespace");
        let from_test = in_netns(&test_ns.to_string_lossy(), &["sh", "-c", &fetch.replace("nc ", "busybox nc ")]);
        assert!(from_test.as_ref().is_ok_and(|o| o.contains(PAGE)), "the test's own namespace fetching {url}: {from_test:?}");

        // `kubectl port-forward`: containerd connects to localhost:8080 in pod A's namespace,
        // which the shim carries into the guest. A port nothing listens on in the guest ends
        // the connection at once.
        let request = b"GET /index.html HTTP/1.0\r\n\r\n";
        let has_page = |data: &[u8]| String::from_utf8_lossy(data).contains(PAGE);
        let forwarded = tokio::time::timeout(SERVE_DEADLINE, cri.port_forward(&a.id, 8080, request, has_page)).await;
        let forwarded = forwarded.expect("port-forward within the deadline").expect("PortForward session");
        let text = String::from_utf8_lossy(&forwarded.data);
        assert!(text.contains("200 OK") && text.contains(PAGE), "port-forward to 8080: {forwarded:?}\n{}", cd.log());
        let v6 = tokio::time::timeout(SERVE_DEADLINE, cri.port_forward(&a.id, 8082, request, has_page)).await;
        let v6 = v6.expect("port-forward within the deadline").expect("PortForward session");
        assert!(String::from_utf8_lossy(&v6.data).contains(PAGE), "port-forward to [::1]:8082: {v6:?}");
        let closed = tokio::time::timeout(SERVE_DEADLINE, cri.port_forward(&a.id, 8081, request, |_| false)).await;
        let closed = closed.expect("a port nobody serves ends within the deadline").expect("PortForward session");
        assert!(closed.data.is_empty(), "nothing answers on 8081: {closed:?}");
        // Much in both directions at once: 1 MiB through an echo server (`cat` behind nc),
        // the client's end reaching it, the whole answer coming back.
        let echo = "while true; do nc -l -p 9000 -e cat; done";
        cri.run_container(&a, "echo", IMAGE, &["sh", "-c", echo]).await.expect("echo container");
        let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let want = payload.len();
        let deadline = Instant::now() + SERVE_DEADLINE;
        let echoed = loop {
            let session = cri.port_forward(&a.id, 9000, &payload, move |d| d.len() >= want);
            let echoed = tokio::time::timeout(SERVE_DEADLINE, session).await.expect("echo within the deadline");
            let echoed = echoed.expect("PortForward session");
            // The first attempt may come before nc listens.
            if !echoed.data.is_empty() || Instant::now() > deadline {
                break echoed;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert!(echoed.data == payload, "echoed {} of {} bytes, equal: {}", echoed.data.len(), want, echoed.data == payload);
        // What containerd does, by hand: any loopback port of the pod's namespace reaches the guest.
        let by_hand = in_netns(&held_path, &["sh", "-c", "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 127.0.0.1 8080"]);
        assert!(by_hand.as_ref().is_ok_and(|o| o.contains(PAGE)), "127.0.0.1:8080 in pod A's namespace: {by_hand:?}");

        for pod in [&a.id, &b.id] {
            cri.remove_pod(pod).await.expect("stopp + rmp");
        }
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());
        assert_eq!(links(&held_path), ["lo"], "pod A's namespace after removal: no tap, no veth");
        // CNI's teardown took loopback down; up again, a connection meets the kernel's refusal.
        in_netns(&held_path, &["ip", "link", "set", "lo", "up"]).expect("lo up");
        let after = in_netns(&held_path, &["busybox", "nc", "-w", "1", "127.0.0.1", "8080"]);
        assert!(after.as_ref().is_err_and(|e| e.contains("refused")), "nothing steers pod A's loopback after removal: {after:?}");
    }
}

containerd_matrix! {
    /// `hostNetwork: true` (the node's network namespace) cannot be a VM's: refused at
    /// RunPodSandbox, saying why, before any VM boots.
    async fn host_network_pod_is_refused_with_the_reason(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let mut config = pod_config("host-net", "default");
        if let Some(ns) = config.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut()) {
            ns.network = cri::NamespaceMode::Node as i32;
        }
        let err = cri.run_pod_config(CRI_HANDLER, config).await.err().expect("a hostNetwork pod must be refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("hostNetwork: true") && msg.contains("cannot share the node's"), "{msg}");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());
    }
}
