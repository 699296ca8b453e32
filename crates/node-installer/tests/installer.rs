//! The installer against real-world containerd configs: only our runtime table changes, a
//! second run is a no-op, bad input is refused without touching anything, uninstall restores
//! the file; and the manifests it emits are well-typed Kubernetes objects.

mod common;

use std::path::{Path, PathBuf};

use common::{backups, fake_payload, installer, ok};

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    payload: PathBuf,
    restarts: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("host");
        std::fs::create_dir_all(root.join("etc/containerd")).expect("mkdir");
        let payload = fake_payload(dir.path());
        let restarts = dir.path().join("restarts");
        common::ready_insecure_node(&root);
        Host { root, payload, restarts, _dir: dir }
    }

    fn config(&self) -> PathBuf {
        self.root.join("etc/containerd/config.toml")
    }

    fn args<'a>(&'a self, command: &'a str, restart: &'a str) -> Vec<&'a str> {
        vec![
            command,
            "--platform",
            "insecure",
            "--payload",
            self.payload.to_str().expect("utf-8 path"),
            "--host-root",
            self.root.to_str().expect("utf-8 path"),
            "--restart-command",
            restart,
        ]
    }

    fn restart_cmd(&self) -> String {
        format!("echo restart >> {}", self.restarts.display())
    }

    fn restart_count(&self) -> usize {
        std::fs::read_to_string(&self.restarts).map_or(0, |s| s.lines().count())
    }

    fn handler(&self) -> String {
        ok(&["handler", "--platform", "insecure", "--payload", self.payload.to_str().expect("utf-8 path")])
            .trim()
            .to_owned()
    }
}

/// The CRI runtime plugin's name for the config's version.
fn cri_plugin(t: &toml::Table) -> &'static str {
    match t.get("version").and_then(|v| v.as_integer()) {
        Some(3) => "io.containerd.cri.v1.runtime",
        _ => "io.containerd.grpc.v1.cri",
    }
}

fn runtimes(t: &toml::Table) -> Option<&toml::Table> {
    let cri = t.get("plugins")?.as_table()?.get(cri_plugin(t))?;
    cri.get("containerd")?.get("runtimes")?.as_table()
}

/// Every line of `original` is in `edited`, in the same order (ours are only added).
fn keeps_every_line(original: &str, edited: &str) -> bool {
    let mut rest = edited.lines();
    original.lines().all(|line| rest.any(|l| l == line))
}

/// The comment lines of a TOML text, in order.
fn comments(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| l.starts_with('#')).collect()
}

#[test]
fn real_world_configs_gain_only_our_handler() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures).expect("fixtures").flatten().map(|e| e.path()).collect();
    names.sort();
    assert!(names.len() >= 5, "fixtures: {names:?}");
    for fixture in names {
        let host = Host::new();
        let original = std::fs::read_to_string(&fixture).expect("fixture");
        std::fs::write(host.config(), &original).expect("write config");
        let restart = host.restart_cmd();
        let handler = host.handler();
        let what = fixture.display();

        ok(&host.args("install", &restart));
        let edited = std::fs::read_to_string(host.config()).expect("config");
        let mut after: toml::Table = edited.parse().unwrap_or_else(|e| panic!("{what}: output is not TOML: {e}"));
        let before: toml::Table = original.parse().expect("fixture parses");
        let ours = runtimes(&after).and_then(|r| r.get(&handler)).unwrap_or_else(|| panic!("{what}: no {handler}"));
        assert_eq!(ours["runtime_type"].as_str(), Some("io.containerd.contrast-cc.v2"), "{what}");
        assert_eq!(ours["privileged_without_host_devices"].as_bool(), Some(true), "{what}");
        assert_eq!(ours["pod_annotations"].as_array().map(|a| a.len()), Some(1), "{what}");
        let dir = format!("/opt/contrast/{handler}");
        assert_eq!(
            ours["runtime_path"].as_str(),
            Some(format!("{dir}/bin/containerd-shim-contrast-cc-v2").as_str()),
            "{what}"
        );
        assert_eq!(
            ours["options"]["ConfigPath"].as_str(),
            Some(format!("{dir}/etc/configuration.toml").as_str()),
            "{what}"
        );
        // Remove our table: what is left means exactly what the original meant.
        remove_handler(&mut after, &handler);
        assert_eq!(after, before, "{what}: something besides our handler changed");
        assert_eq!(comments(&edited), comments(&original), "{what}: comments lost or moved");
        assert!(keeps_every_line(&original, &edited), "{what}: existing text rewritten");
        assert_eq!(host.restart_count(), 1, "{what}");
        let b = backups(&host.config());
        assert_eq!(b.len(), 1, "{what}");
        assert_eq!(std::fs::read_to_string(&b[0]).expect("backup"), original, "{what}");
        assert!(host.root.join(&dir[1..]).join("etc/configuration.toml").is_file());

        // Second run: nothing to do.
        let out = ok(&host.args("install", &restart));
        assert!(out.contains("0 files written, containerd config unchanged"), "{what}: {out}");
        assert_eq!(std::fs::read_to_string(host.config()).expect("config"), edited, "{what}");
        assert_eq!(backups(&host.config()).len(), 1, "{what}: a no-op made a backup");
        assert_eq!(host.restart_count(), 1, "{what}: a no-op restarted containerd");

        ok(&host.args("uninstall", &restart));
        assert_eq!(std::fs::read_to_string(host.config()).expect("config"), original, "{what}: uninstall");
        assert!(!host.root.join(&dir[1..]).exists(), "{what}: install dir left");
        assert_eq!(host.restart_count(), 2, "{what}");
    }
}

fn remove_handler(t: &mut toml::Table, handler: &str) {
    let key = cri_plugin(t);
    let plugins = t.get_mut("plugins").and_then(|p| p.as_table_mut()).expect("plugins");
    let cri = plugins.get_mut(key).and_then(|c| c.as_table_mut()).expect("cri");
    let containerd = cri.get_mut("containerd").and_then(|c| c.as_table_mut()).expect("containerd");
    let runtimes = containerd.get_mut("runtimes").and_then(|r| r.as_table_mut()).expect("runtimes");
    runtimes.remove(handler);
    // Tables the installer had to create for its entry were not there before.
    if runtimes.is_empty() {
        containerd.remove("runtimes");
        if containerd.is_empty() {
            cri.remove("containerd");
        }
    }
}

#[test]
fn bad_configs_are_refused_and_nothing_is_touched() {
    for (text, expect) in [
        ("version = [\n", "not valid TOML"),
        ("version = 99\n[plugins]\n", "version 99 is not supported"),
        ("[plugins.cri.containerd]\nsnapshotter = \"overlayfs\"\n", "version 1"),
    ] {
        let host = Host::new();
        std::fs::write(host.config(), text).expect("write");
        let restart = host.restart_cmd();
        let out = installer(&host.args("install", &restart));
        assert!(!out.status.success(), "{text:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect) && err.contains("config.toml"), "{text:?}: {err}");
        assert_eq!(std::fs::read_to_string(host.config()).expect("config"), text);
        assert!(backups(&host.config()).is_empty(), "backup left behind");
        assert!(!host.root.join("opt").exists(), "files installed for a refused config");
        assert_eq!(host.restart_count(), 0);
    }
}

#[test]
fn unwritable_config_directory_fails_cleanly() {
    let host = Host::new();
    let original = "version = 2\n";
    std::fs::write(host.config(), original).expect("write");
    let etc = host.root.join("etc/containerd");
    // Root ignores permission bits: a read-only bind mount makes the directory unwritable.
    nix::mount::mount(Some(&etc), &etc, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).expect("bind");
    let ro = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
    let remounted = nix::mount::mount(None::<&str>, &etc, None::<&str>, ro, None::<&str>);
    let restart = host.restart_cmd();
    let out = installer(&host.args("install", &restart));
    nix::mount::umount(&etc).expect("umount");
    remounted.expect("read-only remount");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system") && err.contains("etc/containerd"), "{err}");
    assert_eq!(std::fs::read_to_string(host.config()).expect("config"), original);
    let left: Vec<_> = std::fs::read_dir(&etc).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "only config.toml: {left:?}");
    assert_eq!(host.restart_count(), 0);
}

#[test]
fn missing_config_starts_from_a_minimal_one() {
    let host = Host::new();
    let restart = host.restart_cmd();
    ok(&host.args("install", &restart));
    let text = std::fs::read_to_string(host.config()).expect("config");
    assert!(text.starts_with("version = 2\n"), "{text}");
    let t: toml::Table = text.parse().expect("toml");
    assert!(runtimes(&t).expect("runtimes").contains_key(&host.handler()));
    assert!(backups(&host.config()).is_empty(), "nothing to back up");
}

#[test]
fn k3s_template_is_seeded_from_the_rendered_config() {
    let host = Host::new();
    let dir = host.root.join("var/lib/rancher/k3s/agent/etc/containerd");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rendered =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k3s-rendered.toml"))
            .expect("fixture");
    std::fs::write(dir.join("config.toml"), &rendered).expect("write");
    let restart = host.restart_cmd();
    let mut args = host.args("install", &restart);
    args.push("--k3s");
    ok(&args);
    assert_eq!(std::fs::read_to_string(dir.join("config.toml")).expect("rendered"), rendered, "k3s owns config.toml");
    let tmpl = std::fs::read_to_string(dir.join("config.toml.tmpl")).expect("template written");
    assert!(keeps_every_line(&rendered, &tmpl));
    assert!(tmpl.contains(&host.handler()));
}

#[test]
fn handler_name_follows_the_payload() {
    let host = Host::new();
    let first = host.handler();
    assert!(first.starts_with("contrast-cc-insecure-") && first.len() == "contrast-cc-insecure-".len() + 8, "{first}");
    std::fs::write(host.payload.join("share/root.img"), "another release\n").expect("write");
    assert_ne!(host.handler(), first, "a new image must give a new handler");
    let with_set = ok(&[
        "handler",
        "--platform",
        "insecure",
        "--payload",
        host.payload.to_str().unwrap(),
        "--set",
        "hypervisor.qemu.default_memory=1024",
    ]);
    assert_ne!(with_set.trim(), host.handler());
    let out = installer(&["handler", "--platform", "sgx", "--payload", host.payload.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown platform"));
}

#[test]
fn manifests_are_kubernetes_objects_with_matching_names() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::node::v1::RuntimeClass;
    use serde::Deserialize;

    let host = Host::new();
    let handler = host.handler();
    let text = ok(&["manifests", "--platform", "insecure", "--payload", host.payload.to_str().unwrap()]);
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).expect("yaml")).collect();
    assert_eq!(docs.len(), 2, "{text}");
    let rc: RuntimeClass = serde_yaml::from_value(docs[0].clone()).expect("a RuntimeClass");
    assert_eq!(rc.metadata.name.as_deref(), Some(handler.as_str()));
    assert_eq!(rc.handler, handler);
    let memory = &rc.overhead.expect("overhead").pod_fixed.expect("podFixed")["memory"];
    // 512 MiB guest + the measured idle pod (packaging/pod-overhead.toml) + the TCG cache bound.
    let measured: toml::Table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/pod-overhead.toml"))
            .expect("pod-overhead.toml")
            .parse()
            .expect("toml");
    let idle_kib: i64 =
        ["shim_kib", "qemu_kib", "helpers_kib"].iter().map(|k| measured[*k].as_integer().expect(k)).sum();
    let mib: i64 = memory.0.strip_suffix("Mi").expect("Mi").parse().expect("number");
    let floor = 512 + idle_kib / 1024 + i64::from(contrast_config::TCG_TB_SIZE_MIB);
    assert!(mib > floor && mib < floor + idle_kib / 1024, "{mib} MiB: 512 guest + {idle_kib} KiB measured + TCG");
    assert_eq!(docs[0]["kind"], "RuntimeClass");
    assert_eq!(docs[0]["apiVersion"], "node.k8s.io/v1");

    let ds: DaemonSet = serde_yaml::from_value(docs[1].clone()).expect("a DaemonSet");
    assert_eq!(docs[1]["kind"], "DaemonSet");
    assert_eq!(ds.metadata.name.as_deref(), Some(format!("{handler}-installer").as_str()));
    let spec = ds.spec.expect("spec").template.spec.expect("pod spec");
    let init = &spec.init_containers.expect("init containers")[0];
    let args = init.args.clone().expect("args");
    assert_eq!(args[..3], ["install", "--platform", "insecure"]);
    assert_eq!(init.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    assert_eq!(init.volume_mounts.as_ref().expect("mounts")[0].mount_path, "/host");
    assert_eq!(spec.volumes.expect("volumes")[0].host_path.as_ref().expect("hostPath").path, "/");
    assert_eq!(spec.containers[0].name, "pause");
    assert!(args.iter().any(|a| a == "--skip-unready"), "{args:?}");
    assert_eq!(spec.automount_service_account_token, Some(false));
    let tolerations = spec.tolerations.expect("tolerations");
    assert!(tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()), "{tolerations:?}");
}

/// The DaemonSet's image by default is the one `make installer-image` tags (`image-ref`):
/// named after the payload's contents, every platform's, so a node cannot run a cached
/// installer image whose payload differs from the RuntimeClass's.
#[test]
fn the_default_installer_image_is_named_after_the_payload() {
    let host = Host::new();
    let payload = host.payload.to_str().expect("utf-8");
    let reference = ok(&["image-ref", "--payload", payload]).trim().to_owned();
    let (name, tag) = reference.split_once(':').expect("name:tag");
    assert_eq!(name, "contrast-node-installer");
    let hash = tag.strip_prefix(concat!(env!("CARGO_PKG_VERSION"), "-")).expect("version-hash");
    assert!(hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{reference}");
    let manifests = ok(&["manifests", "--platform", "insecure", "--payload", payload]);
    assert!(manifests.contains(&format!("image: {reference}\n")), "{manifests}");
    // The same for every platform's manifests, and stable while nothing changes.
    let snp = ok(&["manifests", "--platform", "snp", "--payload", payload]);
    assert!(snp.contains(&format!("image: {reference}\n")), "{snp}");
    assert_eq!(ok(&["image-ref", "--payload", payload]).trim(), reference);
    // Another platform's template changed: another image.
    let tdx = host.payload.join("config/configuration-tdx.toml");
    let mut template = std::fs::read_to_string(&tdx).expect("template");
    template.push_str("\n# changed\n");
    std::fs::write(&tdx, template).expect("write");
    let changed = ok(&["image-ref", "--payload", payload]).trim().to_owned();
    assert_ne!(changed, reference);
    // --image still wins.
    let given = ok(&["manifests", "--platform", "insecure", "--payload", payload, "--image", "registry.example/i:1"]);
    assert!(given.contains("image: registry.example/i:1\n"), "{given}");
    // With the registry the nodes pull from: the same content-addressed name under it, for
    // `make installer-image` and the manifests alike.
    let under = ok(&["image-ref", "--payload", payload, "--registry", "registry.example/contrast/"]).trim().to_owned();
    assert_eq!(under, format!("registry.example/contrast/{changed}"));
    let pulled =
        ok(&["manifests", "--platform", "insecure", "--payload", payload, "--registry", "registry.example/contrast"]);
    assert!(pulled.contains(&format!("image: {under}\n")), "{pulled}");
}

#[test]
fn failed_restart_leaves_the_config_as_it_was() {
    let host = Host::new();
    let original = "version = 2\n# mine\n";
    std::fs::write(host.config(), original).expect("write");
    let out = installer(&host.args("install", "exit 3"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restart command") && err.contains("left as it was"), "{err}");
    assert_eq!(std::fs::read_to_string(host.config()).expect("config"), original);
    assert!(backups(&host.config()).is_empty(), "backup left behind");
    // Without a restart command and without systemd, both systemd routes fail and say why.
    let mut args = host.args("install", "");
    args.truncate(args.len() - 2);
    // A unit no node has: on a machine with systemd the fallback must not restart its containerd.
    args.extend(["--restart-unit", "contrast-test-no-such-unit.service"]);
    let out = installer(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over D-Bus") && err.contains("PID 1's mount namespace"), "{err}");
    assert_eq!(std::fs::read_to_string(host.config()).expect("config"), original);
    // A restart that stopped containerd and could not start it with the new config: the old
    // config goes back, and containerd is restarted with it (this command fails its first
    // run only).
    let flaky = format!("echo restart >> {0}; [ $(wc -l < {0}) -ge 2 ]", host.restarts.display());
    let out = installer(&host.args("install", &flaky));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left as it was (containerd restarted with it)"), "{err}");
    assert_eq!(std::fs::read_to_string(host.config()).expect("config"), original);
    assert_eq!(host.restart_count(), 2, "the failed restart, then the one with the old config");
    std::fs::remove_file(&host.restarts).expect("reset the count");
    // A working restart afterwards does the whole change.
    let restart = host.restart_cmd();
    ok(&host.args("install", &restart));
    assert_eq!(host.restart_count(), 1);
}

/// A config only its owner may read (registry credentials) keeps its mode and owner, and so
/// does its backup.
#[test]
fn the_config_keeps_its_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let host = Host::new();
    std::fs::write(host.config(), "version = 2\n").expect("write");
    std::fs::set_permissions(host.config(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(host.config(), Some(1234), Some(5678)).expect("chown");
    let restart = host.restart_cmd();
    ok(&host.args("install", &restart));
    let [backup] = &backups(&host.config())[..] else { panic!("one backup") };
    for file in [host.config(), backup.clone()] {
        let m = std::fs::metadata(&file).expect("metadata");
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1234, 5678), "{}", file.display());
    }
}

/// A config that is a link (NixOS's /etc) is refused, not replaced by a fresh file.
#[test]
fn a_linked_config_is_refused_and_left_alone() {
    let host = Host::new();
    let real = host.root.join("etc/static-containerd.toml");
    std::fs::write(&real, "version = 2\n# managed elsewhere\n").expect("write");
    std::os::unix::fs::symlink("/etc/static-containerd.toml", host.config()).expect("link");
    let out = installer(&host.args("install", &host.restart_cmd()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a symbolic link") && err.contains("--containerd-config"), "{err}");
    assert!(std::fs::symlink_metadata(host.config()).expect("still there").file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&real).expect("real"), "version = 2\n# managed elsewhere\n");
    assert!(!host.root.join("opt").exists(), "files installed for a refused config");
    assert_eq!(host.restart_count(), 0);
}

/// containerd 1.6 finds the shim by name in its opt dir's bin/: the link there names the
/// shim written last, a re-run of an older install does not move it back, and removing the
/// handler it names moves it to one still installed.
#[test]
fn the_opt_dir_shim_link_follows_the_installed_handlers() {
    let host = Host::new();
    std::fs::write(host.config(), "version = 2\n").expect("write");
    let restart = host.restart_cmd();
    let payload = host.payload.to_str().expect("utf-8 path");
    let install = |memory: &str| {
        let set = format!("hypervisor.qemu.default_memory={memory}");
        let mut args = host.args("install", &restart);
        args.extend(["--set", &set]);
        ok(&args);
        ok(&["handler", "--platform", "insecure", "--payload", payload, "--set", &set]).trim().to_owned()
    };
    let uninstall = |handler: &str| {
        let mut args = host.args("uninstall", &restart);
        args.extend(["--handler", handler]);
        ok(&args);
    };
    let link = host.root.join("opt/containerd/bin/containerd-shim-contrast-cc-v2");
    let shim_of =
        |handler: &str| Some(PathBuf::from(format!("/opt/contrast/{handler}/bin/containerd-shim-contrast-cc-v2")));
    let older = install("1024");
    // Modification times are the order: apart by more than their resolution.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let newer = install("2048");
    assert_eq!(std::fs::read_link(&link).ok(), shim_of(&newer));
    install("1024");
    assert_eq!(std::fs::read_link(&link).ok(), shim_of(&newer), "a re-run of the older one moved it back");
    uninstall(&newer);
    assert_eq!(std::fs::read_link(&link).ok(), shim_of(&older), "the handler still installed lost its shim");
    uninstall(&older);
    assert!(std::fs::symlink_metadata(&link).is_err(), "the link outlived every handler");
}

/// A drop-in with its own CRI plugin table (containerd 1.x puts it in place of the main
/// file's, our runtime with it): the install goes on and says so, naming the file.
#[test]
fn an_import_that_replaces_the_cri_plugin_is_named() {
    let host = Host::new();
    std::fs::write(host.config(), "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n").expect("write");
    let drop_ins = host.root.join("etc/containerd/conf.d");
    std::fs::create_dir_all(&drop_ins).expect("conf.d");
    std::fs::write(
        drop_ins.join("99-gpu.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"gpu\"\n",
    )
    .expect("drop-in");
    std::fs::write(drop_ins.join("10-registry.toml"), "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n")
        .expect("drop-in");
    std::fs::write(drop_ins.join("20-other.toml"), "version = 2\n[plugins.\"io.containerd.internal.v1.opt\"]\n")
        .expect("drop-in");
    let out = installer(&host.args("install", &host.restart_cmd()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conf.d/99-gpu.toml (imported by") && err.contains("conf.d/10-registry.toml"), "{err}");
    assert!(!err.contains("20-other.toml"), "{err}");
}

/// Uninstall while a shim of the handler runs (a pod of it on the node) is refused, naming
/// it: the pod would outlive the files containerd's cleanup of a dead shim needs.
#[test]
fn uninstall_waits_for_the_handler_s_pods() {
    let host = Host::new();
    std::fs::write(host.config(), "version = 2\n").expect("write");
    let restart = host.restart_cmd();
    ok(&host.args("install", &restart));
    let shim = host.root.join("opt/contrast").join(host.handler()).join("bin/containerd-shim-contrast-cc-v2");
    std::fs::copy("/bin/sleep", &shim).expect("a long-running stand-in for the shim");
    let mut running = std::process::Command::new(&shim).arg("60").spawn().expect("start it");
    let out = installer(&host.args("uninstall", &restart));
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = running.kill();
    let _ = running.wait();
    assert!(!out.status.success(), "uninstalled under a running shim");
    assert!(err.contains("still runs on this node") && err.contains(&format!("pid {}", running.id())), "{err}");
    assert!(shim.exists() && std::fs::read_to_string(host.config()).expect("config").contains(&host.handler()));
    assert_eq!(host.restart_count(), 1, "only the install's restart");
    ok(&host.args("uninstall", &restart));
    assert!(!shim.exists());
}

/// Two installers at once (two runtime classes' DaemonSets): each reads, changes and writes
/// containerd's config and restarts it; they take turns, and neither handler is lost.
#[test]
fn installers_at_once_keep_each_other_s_handler() {
    let host = Host::new();
    std::fs::write(host.config(), "version = 2\n").expect("write");
    let restart = host.restart_cmd();
    // The lock they take turns on, held here first: neither may finish while it is held.
    let lock_path = host.root.join("run/contrast-node-installer.lock");
    std::fs::create_dir_all(lock_path.parent().expect("run")).expect("run dir");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).expect("lock");
    lock.lock().expect("taken");
    let settings: Vec<String> =
        ["1024", "2048"].iter().map(|m| format!("hypervisor.qemu.default_memory={m}")).collect();
    let runs: Vec<_> = settings
        .iter()
        .map(|set| {
            let mut args: Vec<String> = host.args("install", &restart).iter().map(|a| a.to_string()).collect();
            args.extend(["--set".to_owned(), set.clone()]);
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                installer(&args)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(runs.iter().all(|r| !r.is_finished()), "an installer went on while the lock was held");
    assert_eq!(host.restart_count(), 0);
    lock.unlock().expect("released");
    for run in runs {
        let out = run.join().expect("installer thread");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let config = std::fs::read_to_string(host.config()).expect("config");
    for set in &settings {
        let payload = host.payload.to_str().expect("utf-8 path");
        let handler = ok(&["handler", "--platform", "insecure", "--payload", payload, "--set", set]).trim().to_owned();
        assert!(config.contains(&format!("runtimes.{handler}]")), "{handler} lost:\n{config}");
    }
    assert_eq!(host.restart_count(), 2);
}

/// Confidential platforms boot the bzImage through the firmware the payload ships; the
/// installed config names both at their installed paths.
#[test]
fn confidential_platforms_get_their_firmware_and_the_bzimage() {
    for (platform, firmware) in [("snp", "OVMF.amdsev.fd"), ("tdx", "OVMF.inteltdx.fd")] {
        let host = Host::new();
        common::ready_confidential_node(&host.root, platform);
        let restart = host.restart_cmd();
        let mut args = host.args("install", &restart);
        args[2] = platform;
        ok(&args);
        let payload = host.payload.to_str().expect("utf-8 path");
        let handler = ok(&["handler", "--platform", platform, "--payload", payload]).trim().to_owned();
        let dir = host.root.join("opt/contrast").join(&handler);
        let text = std::fs::read_to_string(dir.join("etc/configuration.toml")).expect("installed config");
        let t: toml::Table = text.parse().expect("toml");
        let q = &t["hypervisor"]["qemu"];
        let share = format!("/opt/contrast/{handler}/share");
        assert_eq!(q["firmware"].as_str(), Some(format!("{share}/{firmware}").as_str()), "{platform}");
        assert_eq!(
            q["kernel"].as_str(),
            Some(format!("{share}/vmlinuz").as_str()),
            "{platform}: OVMF boots the bzImage"
        );
        assert!(dir.join("share").join(firmware).is_file(), "{platform}: firmware installed");

        // A payload without the firmware cannot install that platform.
        std::fs::remove_file(host.payload.join("share").join(firmware)).expect("rm");
        let out = installer(&args);
        assert!(!out.status.success(), "{platform}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(firmware), "{platform}");
    }
}

/// A node that cannot run the platform is refused at install, naming what is missing, and
/// nothing is written; `--force` installs anyway. `check` says the same.
#[test]
fn install_refuses_a_node_that_fails_check_unless_forced() {
    let host = Host::new();
    std::fs::remove_file(host.root.join("usr/bin/vhost-device-vsock")).expect("rm");
    let before = std::fs::read_dir(&host.root).expect("root").count();
    let restart = host.restart_cmd();
    let out = installer(&host.args("install", &restart));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot run platform insecure") && err.contains("MISSING  vsock"), "{err}");
    assert_eq!(std::fs::read_dir(&host.root).expect("root").count(), before, "nothing written");
    assert_eq!(host.restart_count(), 0);
    let mut check = host.args("check", &restart);
    check.truncate(7);
    let out = installer(&check);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("platform insecure: NOT ready: vsock"));
    // The DaemonSet's way: nothing installed, the label of an earlier install removed, exit 0.
    let features = host.root.join("etc/kubernetes/node-feature-discovery/features.d");
    std::fs::create_dir_all(&features).expect("features dir");
    std::fs::write(features.join(host.handler()), "from before\n").expect("stale label");
    let mut skipping = host.args("install", &restart);
    skipping.push("--skip-unready");
    let said = ok(&skipping);
    assert!(said.contains("cannot run platform insecure") && said.contains("MISSING  vsock"), "{said}");
    assert!(!features.join(host.handler()).exists(), "the stale label stays");
    assert!(!host.root.join("opt/contrast").exists(), "installed on a node that fails check");
    assert_eq!(host.restart_count(), 0);
    let mut forced = host.args("install", &restart);
    forced.push("--force");
    ok(&forced);
    assert_eq!(host.restart_count(), 1);
    assert!(!features.join(host.handler()).exists(), "a node that fails check is not labelled");
}

/// A node that passes check is labelled through node-feature-discovery's local feature file,
/// the RuntimeClass selects that label, and uninstall removes the file.
#[test]
fn a_ready_node_is_labelled_and_the_runtime_class_selects_the_label() {
    let host = Host::new();
    let restart = host.restart_cmd();
    ok(&host.args("install", &restart));
    let handler = host.handler();
    let file = host.root.join("etc/kubernetes/node-feature-discovery/features.d").join(&handler);
    assert_eq!(std::fs::read_to_string(&file).expect("feature file"), format!("{handler}=true\n"));
    let yaml = ok(&["manifests", "--platform", "insecure", "--payload", host.payload.to_str().expect("utf-8")]);
    let rc: serde_yaml::Value =
        serde_yaml::from_str(yaml.split("\n---\n").next().expect("RuntimeClass")).expect("yaml");
    assert_eq!(rc["scheduling"]["nodeSelector"][format!("feature.node.kubernetes.io/{handler}")], "true", "{yaml}");
    ok(&host.args("uninstall", &restart));
    assert!(!file.exists(), "uninstall removes the label's file");
}

/// `check` on this machine: `insecure` is ready (and names its accelerator); `snp` and `tdx`
/// are refused exactly when the kernel lacks them, naming the module parameter.
#[test]
fn check_on_this_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = fake_payload(dir.path());
    let run = |platform: &str| {
        let out = installer(&["check", "--platform", platform, "--payload", payload.to_str().expect("utf-8")]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = run("insecure");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("platform insecure: ready (accelerator "), "{text}");
    let kvm_vendor = Path::new("/sys/module/kvm_amd").is_dir() || Path::new("/sys/module/kvm_intel").is_dir();
    if !kvm_vendor {
        assert!(text.contains("accelerator tcg"), "no kvm_amd/kvm_intel here: {text}");
    }
    let param = |p: &str| std::fs::read_to_string(p).is_ok_and(|t| matches!(t.trim(), "Y" | "1"));
    for (platform, enabled, piece) in [
        ("snp", param("/sys/module/kvm_amd/parameters/sev_snp"), "kvm_amd sev_snp"),
        ("tdx", param("/sys/module/kvm_intel/parameters/tdx"), "kvm_intel tdx"),
    ] {
        let (code, text) = run(platform);
        if !enabled {
            assert_eq!(code, Some(1), "{text}");
            assert!(text.contains(&format!("MISSING  {piece}")), "{text}");
        }
    }
}
