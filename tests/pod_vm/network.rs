//! The agent's network calls over ttrpc on a VM without a NIC (the CRI tests give VMs one):
//! loopback is up, reads answer kata's messages, and bad requests get InvalidArgument or
//! NotFound with a reason.

use contrast_agent_protocol::{agent, types};
use contrast_tests::image_dir;
use contrast_tests::pod::{container_spec, create_request, mount, TestPod};

/// Where `CopyFile` writes in the guest (kata's directory).
const COPY_DIR: &str = "/run/kata-containers/shared/containers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_up_and_bad_network_requests_are_refused_clearly() {
    let pod = TestPod::start(&image_dir().expect("image"), "network-c").await.expect("pod starts");
    let ifaces = pod.agent.list_interfaces(&agent::ListInterfacesRequest::new()).await.expect("ListInterfaces");
    let lo = ifaces.Interfaces.iter().find(|i| i.name == "lo").expect("lo listed");
    assert!(lo.IPAddresses.iter().any(|a| a.address == "127.0.0.1" && a.mask == "8"), "{lo:?}");
    // A container in the VM's network namespace reaches loopback (the agent raised it).
    pod.run("lo", &["sh", "-c", "ip -o link show lo"], false).await.expect("runs");
    let out = String::from_utf8_lossy(&pod.read_all_stdout("lo", "").await.expect("stdout")).into_owned();
    assert!(out.contains("UP"), "lo is up: {out}");
    assert_eq!(pod.wait("lo", "").await.expect("wait"), 0);
    let routes = pod.agent.list_routes(&agent::ListRoutesRequest::new()).await.expect("ListRoutes");
    assert!(routes.Routes.iter().all(|r| r.device != "eth0"), "no NIC, no routes through one: {routes:?}");

    let mut iface = types::Interface::new();
    iface.name = "eth0".into();
    iface.mtu = 1500;
    iface.hwAddr = "0a:58:0a:58:00:99".into();
    let mut req = agent::UpdateInterfaceRequest::new();
    req.interface = Some(iface).into();
    let err = pod.agent.update_interface(&req).await.expect_err("no such NIC");
    assert_eq!(err.code, ttrpc::Code::NOT_FOUND, "{err}");
    assert!(err.message.contains("0a:58:0a:58:00:99"), "{err}");

    let mut route = types::Route::new();
    route.dest = "10.1.0.0/16".into();
    route.device = "nope0".into();
    let mut list = agent::Routes::new();
    list.Routes = vec![route];
    let mut req = agent::UpdateRoutesRequest::new();
    req.routes = Some(list).into();
    let err = pod.agent.update_routes(&req).await.expect_err("no such device");
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("nope0"), "{err}");

    let mut copy = agent::CopyFileRequest::new();
    copy.path = "/etc/passwd".into();
    copy.file_size = 1;
    copy.data = b"x".to_vec();
    let err = pod.agent.copy_file(&copy).await.expect_err("outside the copy dir");
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");

    // A copied file is what the container that binds it sees, and goes with that container.
    let copied = format!("{COPY_DIR}/copier-hosts");
    let hosts = b"10.0.0.7 copied-in\n";
    let mut copy = agent::CopyFileRequest::new();
    copy.path = copied.clone();
    copy.file_size = hosts.len() as i64;
    copy.file_mode = 0o100_644;
    copy.data = hosts.to_vec();
    pod.agent.copy_file(&copy).await.expect("CopyFile");
    let ls = |id: &str| {
        let mut spec = container_spec(&pod.rootfs, &["ls", "/copies"], false);
        spec.Mounts.push(mount("/copies", "bind", COPY_DIR, &["rbind", "ro"]));
        create_request(id, spec)
    };
    let listing = |id: &'static str| {
        let pod = &pod;
        async move {
            pod.agent.create_container(&ls(id)).await.expect("create ls");
            let mut start = agent::StartContainerRequest::new();
            start.container_id = id.into();
            pod.agent.start_container(&start).await.expect("start ls");
            let out = String::from_utf8_lossy(&pod.read_all_stdout(id, "").await.expect("ls")).into_owned();
            assert_eq!(pod.wait(id, "").await.expect("wait"), 0, "{out}");
            pod.remove(id).await.expect("remove ls");
            out
        }
    };
    assert!(listing("ls1").await.contains("copier-hosts"), "the copy is there");
    let mut spec = container_spec(&pod.rootfs, &["cat", "/etc/hosts"], false);
    spec.Mounts.push(mount("/etc/hosts", "bind", &copied, &["rbind", "ro"]));
    pod.agent.create_container(&create_request("copier", spec)).await.expect("create copier");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "copier".into();
    pod.agent.start_container(&start).await.expect("start copier");
    assert_eq!(pod.read_all_stdout("copier", "").await.expect("cat"), hosts);
    assert_eq!(pod.wait("copier", "").await.expect("wait"), 0);
    pod.remove("copier").await.expect("remove copier");
    let after = listing("ls2").await;
    assert!(!after.contains("copier-hosts"), "the copy went with its container: {after}");
    let exit = pod.stop().await;
    assert!(exit.expected, "{exit}");
}
