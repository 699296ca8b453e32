//! Confidential pods' images under containerd's CRI, with the host as an untrusted transport
//! (simulated launch binding on `insecure`): the node's containerd holds the image; the shim
//! hands its layers to the guest as read-only disks; the guest uses them only through
//! dm-verity with the root hashes the generator pinned from the image archive.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use contrast_cri_client::{container_config, cri, pod_config, CriClient};
use contrast_tests::containerd::{Containerd, CRI_NAMESPACE, SIM_HANDLER};
use contrast_tests::images::{blob_content, kubelet_volume, tar_layer, three_layers, write_archive, write_archive_as};
use contrast_tests::{containerd_matrix, image_dir};
use sha2::{Digest, Sha256};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);
const INIT_DATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
const GOOD: &str = "docker.io/library/contrast-layered:good";
/// Pinned with the good layers; the node has another top layer under this name.
const SWAPPED: &str = "docker.io/library/contrast-layered:swapped";
/// An image whose config names a user of its own (`app`).
const USERS: &str = "docker.io/library/contrast-layered:users";

fn import(cd: &Containerd, archive: &Path) {
    let out = cd.ctr_command(CRI_NAMESPACE).args(["image", "import"]).arg(archive).output().expect("ctr");
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_args_of(pod_id: &str) -> String {
    let needle = format!("contrast-{pod_id}");
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let args: Vec<String> = raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            if args.first().is_some_and(|a| a.contains("qemu-system")) && args.iter().any(|a| a.contains(&needle)) {
                return args.join("\n");
            }
        }
    }
    panic!("no QEMU for pod {pod_id}");
}

containerd_matrix! {
    async fn confidential_pod_runs_verified_layers_from_the_node(release: Release) {
        let release_name = release.name;
        let cd = Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image")).expect("containerd");
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.tar");
        write_archive(&good, GOOD, &three_layers("upper replaces lower"), &["sleep", "1000"]).expect("archive");
        let pinned_swap = dir.path().join("swapped-pinned.tar");
        write_archive(&pinned_swap, SWAPPED, &three_layers("upper replaces lower"), &["sleep", "1000"]).expect("archive");
        let node_swap = dir.path().join("swapped-node.tar");
        write_archive(&node_swap, SWAPPED, &three_layers("not what the policy pinned"), &["sleep", "1000"]).expect("archive");
        // An image with a user of its own, and groups for it and for root in its /etc/group.
        let accounts = tar_layer(
            &[
                ("etc/passwd", b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n".to_vec(), 0o644),
                ("etc/group", b"root:x:0:\nwheel:x:10:root\nweb:x:33:app\napp:x:1000:\n".to_vec(), 0o644),
            ],
            &[],
        );
        let users = dir.path().join("users.tar");
        let mut users_layers = three_layers("users");
        users_layers.push(accounts);
        write_archive_as(&users, USERS, &users_layers, &["sleep", "1000"], "app").expect("archive");
        import(&cd, &good);
        import(&cd, &node_swap);
        import(&cd, &users);

        // The execs this test makes, and no other.
        let execs: Vec<Vec<String>> = [
            &["cat", "/etc/motd"][..],
            &["sha256sum", "/data/blob"],
            &["cat", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"],
            &["cat", "/proc/self/environ"],
            &["sh", "-c", "echo shared > /cache/note"],
            &["cat", "/cache/note"],
            &["cat", "/etc/app/greeting", "/etc/app/conf/level"],
            &["cat", "/proc/self/status"],
            &["cat", "/etc/greeting"],
            &["sh", "-c", "echo /etc/app/* /etc/empty/*; test -d /etc/empty -a -d /etc/nokey"],
        ]
        .iter()
        .map(|c| c.iter().map(|a| a.to_string()).collect())
        .collect();
        // The pod spec's environment, and no other.
        // `kubectl port-forward` only to 9001.
        let pod_env = contrast_generate::PodAllowances {
            execs,
            env: vec!["GREETING=hello".into()],
            port_forward: vec![9001],
            ..Default::default()
        };
        // The pod's emptyDir volume `cache`, mounted at /cache.
        let overrides = std::collections::BTreeMap::from([
            (
                GOOD.to_owned(),
                contrast_generate::Overrides {
                    empty_dirs: vec![("cache".into(), "/cache".into())],
                    config_volumes: vec![
                        "/etc/app".into(),
                        "/etc/greeting".into(),
                        "/etc/empty".into(),
                        "/etc/nokey".into(),
                    ],
                    // The pod spec's supplementalGroups.
                    groups: vec![4000],
                    ..Default::default()
                },
            ),
            // The users container's spec sets ROLE and APP_MODE, which its image sets too
            // (`--container-env`): each must be there, with the spec's value.
            (
                USERS.to_owned(),
                contrast_generate::Overrides {
                    env: vec!["ROLE=reader".into(), "APP_MODE=strict".into()],
                    ..Default::default()
                },
            ),
        ]);
        let init_data =
            contrast_generate::init_data_for_archives(&[&good, &pinned_swap, &users], &overrides, &pod_env)
                .expect("generator");
        // The generator reading the node's containerd pins what it pins from the archive.
        let mut client = contrast_containerd_client::Client::connect(Path::new(&cd.socket()), CRI_NAMESPACE)
            .await
            .expect("containerd's API");
        let from_node = contrast_generate::containerd_image(&mut client, GOOD).await.expect("image in containerd");
        let from_archive = contrast_generate::archive_images(&good).expect("archive").remove(0);
        assert_eq!(from_node.config.command, ["sleep", "1000"]);
        assert_eq!(
            contrast_generate::pin(&from_node, &overrides[GOOD]).expect("pin"),
            contrast_generate::pin(&from_archive, &overrides[GOOD]).expect("pin")
        );
        // A name with a digest is that image or none: the node's containerd cannot answer
        // another image under it.
        let target = client.image_manifest(GOOD).await.expect("manifest").target;
        let repo = GOOD.rsplit_once(':').expect("a tag").0;
        let wrong = format!("sha256:{}", "0".repeat(64));
        for digest in [target.as_str(), wrong.as_str()] {
            let tagged = cd.ctr_command(CRI_NAMESPACE).args(["images", "tag", GOOD, &format!("{repo}@{digest}")]).output();
            let tagged = tagged.expect("ctr images tag");
            assert!(tagged.status.success(), "{}", String::from_utf8_lossy(&tagged.stderr));
        }
        contrast_generate::containerd_image(&mut client, &format!("{repo}@{target}")).await.expect("the pinned image");
        let err = contrast_generate::containerd_image(&mut client, &format!("{repo}@{wrong}"))
            .await
            .expect_err("a name whose digest is not its image");
        assert!(format!("{err:#}").contains(&format!("is {target}, not the {wrong}")), "{err:#}");
        let empty_dir = dir.path().join("pods/uid-layered/volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&empty_dir).expect("kubelet's emptyDir");
        let volume = |destination: &str| cri::Mount {
            container_path: destination.into(),
            host_path: empty_dir.to_string_lossy().into_owned(),
            ..Default::default()
        };
        // A configMap volume `settings` as kubelet writes it, mounted read-only at /etc/app.
        let settings = dir.path().join("pods/uid-layered/volumes/kubernetes.io~configmap/settings");
        kubelet_volume(&settings, "..2026_12_05_12_00_00.1", &[("greeting", "hi\n"), ("conf/level", "1\n")]);
        let settings_mount = cri::Mount {
            container_path: "/etc/app".into(),
            host_path: settings.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        };
        // One with no keys (an optional configMap that does not exist), at /etc/empty.
        let empty = dir.path().join("pods/uid-layered/volumes/kubernetes.io~configmap/empty");
        kubelet_volume(&empty, "..2026_12_06_12_00_00.1", &[]);
        let empty_mount = cri::Mount {
            container_path: "/etc/empty".into(),
            host_path: empty.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        };
        // One key of it by subPath at /etc/greeting: kubelet binds the file for the container
        // at volume-subpaths/<volume>/<container>/<mount index> (here a copy of it).
        let subpath = dir.path().join("pods/uid-layered/volume-subpaths/settings/app/2");
        std::fs::create_dir_all(subpath.parent().expect("parent")).expect("subpath dir");
        std::fs::write(&subpath, "hi\n").expect("subpath file");
        let greeting_mount = cri::Mount {
            container_path: "/etc/greeting".into(),
            host_path: subpath.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        };
        // A key the volume does not have, by subPath at /etc/nokey: kubelet binds an empty
        // directory, which runc would mount empty.
        let nokey = dir.path().join("pods/uid-layered/volume-subpaths/settings/app/3");
        std::fs::create_dir_all(&nokey).expect("empty subpath dir");
        let nokey_mount = cri::Mount {
            container_path: "/etc/nokey".into(),
            host_path: nokey.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        };
        let annotations = HashMap::from([(INIT_DATA_ANNOTATION.to_owned(), init_data.annotation())]);
        let mut cri =
            CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects").streaming_from(cd.netns_path());
        let mut config = pod_config("layered", "default");
        config.annotations = annotations;
        config.hostname = "layered-host".into();
        config.dns_config =
            Some(cri::DnsConfig { servers: vec!["10.88.0.53".into()], searches: vec!["svc.example".into()], options: vec![] });
        let pod = cri.run_pod_config(SIM_HANDLER, config).await.unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}"));
        let qemu = qemu_args_of(&pod.id);
        // Nothing of the host's file system is shared; the pod's network is its own NIC.
        assert!(!qemu.contains("vhost-user-fs"), "{qemu}");
        assert!(qemu.contains("virtio-scsi-pci") && qemu.contains("virtio-net-pci"), "{qemu}");

        let with_env = |name: &str, key: &str, value: &str| {
            let mut config = container_config(name, GOOD, &["sleep", "1000"]);
            config.envs = vec![cri::KeyValue { key: key.into(), value: value.into() }];
            config.mounts = vec![volume("/cache"), settings_mount.clone()];
            config
        };
        let mut app = with_env("app", "GREETING", "hello");
        app.mounts.extend([greeting_mount, empty_mount, nokey_mount]);
        app.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                supplemental_groups: vec![4000],
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = cri.run_container_config(&pod, app).await.expect("pinned image runs");
        // The node reaches the pod's loopback only on the ports the policy lists: 9000 is
        // refused by the guest; 9001 is allowed (nothing listens on it in this pod).
        for (port, reason) in
            [(9000, "PortForwardRequest is blocked by policy"), (9001, "connecting to 127.0.0.1:9001 or [::1]:9001 in the pod VM")]
        {
            let forwarded = cri.port_forward(&pod.id, port, b"hello", |_| false).await.expect("PortForward session");
            assert!(forwarded.data.is_empty(), "port {port}: {forwarded:?}");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cd.log().contains(reason) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(cd.log().contains(reason), "port {port}: the shim's log names why: {reason}\n{}", cd.log());
        }
        // Its supplementary groups as containerd sets them: its primary group and the pod spec's.
        let (code, out, _) = cri.exec_sync(&c, &["cat", "/proc/self/status"]).await.expect("exec");
        let status = String::from_utf8_lossy(&out);
        let groups = status.lines().find_map(|l| l.strip_prefix("Groups:")).map(str::split_whitespace);
        assert_eq!((code, groups.map(Iterator::collect)), (0, Some(vec!["0", "4000"])), "{status}");
        // The image's, the pod spec's and containerd's own (HOSTNAME) variables.
        let (code, out, _) = cri.exec_sync(&c, &["cat", "/proc/self/environ"]).await.expect("exec");
        let env = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{env}");
        for want in ["PATH=/bin", "APP_MODE=default", "GREETING=hello", "HOSTNAME=layered-host"] {
            assert!(env.split('\0').any(|l| l == want), "{want} in {env:?}");
        }
        // A variable the pod spec does not set: BASH_ENV at a file the host copies in would run
        // the host's commands in any shell of the container.
        let err = cri
            .run_container_config(&pod, with_env("bash-env", "BASH_ENV", "/etc/resolv.conf"))
            .await
            .expect_err("an unpinned variable");
        let msg = format!("{err:#}");
        assert!(msg.contains("environment variable BASH_ENV=/etc/resolv.conf is not allowed by the policy"), "{msg}");
        // A capability the pod spec does not add (the policy allows containerd's defaults).
        let security = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() }),
            ..Default::default()
        };
        let err = cri
            .run_container_with(&pod, "sys-admin", GOOD, &["sleep", "1000"], Some(security))
            .await
            .expect_err("an unpinned capability");
        let msg = format!("{err:#}");
        assert!(msg.contains("capability CAP_SYS_ADMIN is not allowed by the policy for image"), "{msg}");
        // The image's user (root here) only: the pod spec sets no runAsUser.
        let security = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        };
        let err = cri
            .run_container_with(&pod, "run-as", GOOD, &["sleep", "1000"], Some(security))
            .await
            .expect_err("an unpinned user");
        let msg = format!("{err:#}");
        assert!(msg.contains("user 1000 group 0 is not the one pinned for image"), "{msg}");
        // An image's user gets the groups its /etc/group gives: containerd 1.6.20 looks them up
        // for root without runAsUser, 1.7.24 and 2.1.9 for the image's User. Both are pinned.
        let err = cri.run_container(&pod, "no-role", USERS, &["sleep", "1000"]).await.expect_err("ROLE left out");
        let msg = format!("{err:#}");
        assert!(msg.contains("environment variable ROLE=reader of the container's spec is missing"), "{msg}");
        let mut users = container_config("users", USERS, &["sleep", "1000"]);
        users.envs = vec![
            cri::KeyValue { key: "ROLE".into(), value: "reader".into() },
            cri::KeyValue { key: "APP_MODE".into(), value: "strict".into() },
        ];
        let u = cri.run_container_config(&pod, users).await.expect("an image's user and groups");
        // containerd lists APP_MODE twice, the image's value first: the process gets the spec's.
        let (code, out, _) = cri.exec_sync(&u, &["cat", "/proc/self/environ"]).await.expect("exec");
        let env = String::from_utf8_lossy(&out);
        let modes: Vec<_> = env.split('\0').filter(|l| l.starts_with("APP_MODE=")).collect();
        assert_eq!((code, modes), (0, vec!["APP_MODE=strict"]), "{env:?}");
        let (code, out, _) = cri.exec_sync(&u, &["cat", "/proc/self/status"]).await.expect("exec");
        let status = String::from_utf8_lossy(&out);
        let ids = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.split_whitespace().collect());
        let want = if release_name == "1.6" { vec!["10", "1000"] } else { vec!["33", "1000"] };
        assert_eq!((code, ids("Uid:"), ids("Groups:")), (0, Some(vec!["1000"; 4]), Some(want)), "{status}");
        // Supplementary groups beyond the pinned ones (wheel, here).
        let security = cri::LinuxContainerSecurityContext { supplemental_groups: vec![10], ..Default::default() };
        let err = cri
            .run_container_with(&pod, "wheel", GOOD, &["sleep", "1000"], Some(security))
            .await
            .expect_err("an unpinned group");
        let msg = format!("{err:#}");
        assert!(msg.contains("supplementary group 10 is not allowed by the policy for image"), "{msg}");
        // A device of the node's: the pod VM does not have it (the policy refuses its device
        // cgroup allowance too; unit tests).
        let mut config = container_config("device", GOOD, &["sleep", "1000"]);
        config.devices = vec![cri::Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }];
        let err = cri.run_container_config(&pod, config).await.expect_err("a device");
        let msg = format!("{err:#}");
        assert!(msg.contains("device /dev/xnull (c 1:3): the node's devices cannot be passed into the pod VM"), "{msg}");
        // The image's own command only (the pod spec gives none here).
        let err = cri.run_container(&pod, "shell", GOOD, &["sh", "-c", "cat /etc/motd"]).await.expect_err("a command");
        let msg = format!("{err:#}");
        assert!(msg.contains("command sh -c cat /etc/motd is not the one pinned for image"), "{msg}");
        let (code, out, err) = cri.exec_sync(&c, &["cat", "/etc/motd"]).await.expect("exec");
        assert_eq!((code, out.as_slice()), (0, &b"upper replaces lower\n"[..]), "{}", String::from_utf8_lossy(&err));
        let (code, out, _) = cri.exec_sync(&c, &["sha256sum", "/data/blob"]).await.expect("exec");
        let want = format!("{:x}  /data/blob\n", Sha256::digest(blob_content()));
        assert_eq!((code, String::from_utf8_lossy(&out).into_owned()), (0, want), "the image's bytes, read in the guest");
        // DNS and names as in a runc pod: containerd's files, copied in (CopyFile) and judged
        // by the generated policy.
        let (code, out, err) =
            cri.exec_sync(&c, &["cat", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]).await.expect("exec");
        let files = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{files}{}", String::from_utf8_lossy(&err));
        assert!(files.contains("nameserver 10.88.0.53") && files.contains("search svc.example"), "{files}");
        assert!(files.contains("layered-host"), "hostname and hosts: {files}");
        // The configMap's files, copied in, and kept up to date when kubelet changes them.
        let (code, out, err) = cri.exec_sync(&c, &["cat", "/etc/greeting"]).await.expect("exec");
        assert_eq!((code, out.as_slice()), (0, &b"hi\n"[..]), "the subPath: {}", String::from_utf8_lossy(&err));
        let settings_cmd = ["cat", "/etc/app/greeting", "/etc/app/conf/level"];
        let (code, out, err) = cri.exec_sync(&c, &settings_cmd).await.expect("exec");
        assert_eq!((code, out.as_slice()), (0, &b"hi\n1\n"[..]), "{}", String::from_utf8_lossy(&err));
        kubelet_volume(&settings, "..2026_12_05_12_01_00.2", &[("greeting", "bye\n"), ("conf/level", "2\n")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, out, _) = cri.exec_sync(&c, &settings_cmd).await.expect("exec");
            if out == b"bye\n2\n" {
                break;
            }
            let now = String::from_utf8_lossy(&out);
            assert!(std::time::Instant::now() < deadline, "the update never reached the guest: {now:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A key removed from the configMap leaves the container's copy too.
        kubelet_volume(&settings, "..2026_12_05_12_02_00.3", &[("greeting", "bye\n")]);
        // (sh's own glob: the image has no ls; an empty directory's glob stays as written,
        // so `test -d` says the empty ones are directories.)
        let listing = ["sh", "-c", "echo /etc/app/* /etc/empty/*; test -d /etc/empty -a -d /etc/nokey"];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out, _) = cri.exec_sync(&c, &listing).await.expect("exec");
            let now = String::from_utf8_lossy(&out).into_owned();
            if now == "/etc/app/greeting /etc/empty/*\n" {
                assert_eq!(code, 0, "the volume with no files and the empty subPath are directories");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the removed key stays in the guest: {now:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (code, out, _) = cri.exec_sync(&c, &settings_cmd).await.expect("exec");
        assert_eq!((code, out.as_slice()), (1, &b"bye\n"[..]), "conf/level is gone");
        // The subPath was copied once: Kubernetes does not update subPath mounts either.
        let (_, out, _) = cri.exec_sync(&c, &["cat", "/etc/greeting"]).await.expect("exec");
        assert_eq!(out, b"hi\n", "the subPath after the volume's update");
        // Any other exec is the node running code of its choice beside the pod's data.
        let err = cri.exec_sync(&c, &["cat", "/etc/shadow"]).await.expect_err("an unlisted exec");
        let msg = format!("{err:#}");
        assert!(msg.contains("exec of cat /etc/shadow is not allowed by the policy"), "{msg}");

        // The node's image under a pinned name has a layer the policy does not pin.
        let err = cri.run_container(&pod, "swapped", SWAPPED, &["sleep", "1000"]).await.expect_err("unpinned layer");
        let msg = format!("{err:#}");
        assert!(msg.contains("is not pinned for image") && msg.contains(SWAPPED), "{msg}");

        // One flipped byte in the node's copy of a layer: the create fails naming it.
        let cache = cd.dir.path().join("run-layers");
        let middle = std::fs::read_dir(&cache)
            .expect("layer cache")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "img"))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("the 3 MiB layer");
        let mut bytes = std::fs::read(&middle).expect("read");
        let at = bytes.len() / 3;
        bytes[at] ^= 1;
        std::fs::write(&middle, &bytes).expect("tamper");
        let digest = format!("sha256:{}", middle.file_stem().and_then(|s| s.to_str()).expect("name"));
        let err = cri.run_container(&pod, "tampered", GOOD, &["sleep", "1000"]).await.expect_err("tampered layer");
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("layer {digest}")) && msg.contains("does not match its pinned root hash"), "{msg}");

        // The pod itself stays usable, and the node rebuilt the refused layer from containerd's blob.
        let (code, out, _) = cri.exec_sync(&c, &["cat", "/etc/motd"]).await.expect("exec after the refusal");
        assert_eq!((code, out.as_slice()), (0, &b"upper replaces lower\n"[..]));
        assert!(!middle.exists(), "the refused cache entry is dropped");
        let mut config = container_config("again", GOOD, &["sleep", "1000"]);
        config.mounts = vec![volume("/cache")];
        let again = cri.run_container_config(&pod, config).await.expect("rebuilt layer runs");
        // The emptyDir is the pod's, shared by its containers, and never on the node.
        let (code, out, err) = cri.exec_sync(&c, &["sh", "-c", "echo shared > /cache/note"]).await.expect("exec");
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
        let (code, out2, _) = cri.exec_sync(&again, &["cat", "/cache/note"]).await.expect("exec");
        assert_eq!((code, out.as_slice(), out2.as_slice()), (0, &b""[..], &b"shared\n"[..]));
        assert!(std::fs::read_dir(&empty_dir).expect("node dir").next().is_none(), "written on the node");
        let mut config = container_config("volume-over-etc", GOOD, &["sleep", "1000"]);
        config.mounts = vec![volume("/etc")];
        let err = cri.run_container_config(&pod, config).await.expect_err("a volume where the pod spec has none");
        let msg = format!("{err:#}");
        assert!(msg.contains("mount of /run/contrast/volumes/cache on /etc"), "{msg}");
        let (code, out, _) = cri.exec_sync(&again, &["sha256sum", "/data/blob"]).await.expect("exec");
        assert_eq!(code, 0);
        assert_eq!(String::from_utf8_lossy(&out), format!("{:x}  /data/blob\n", Sha256::digest(blob_content())));

        cri.remove_pod(&pod.id).await.expect("remove the pod");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}
