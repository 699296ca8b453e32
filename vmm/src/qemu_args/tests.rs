//! Golden tests: the exact argument vector for each platform × boot source, and a check that
//! every object/device/machine property we pass exists in the installed QEMU and in the one the
//! project builds (QEMU 10.2 with IGVM and TDX).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const QEMU: &str = "qemu-system-x86_64";

fn spec(platform: Platform, igvm: bool) -> QemuSpec {
    let dir = PathBuf::from("/run/contrast/k8s.io/pod1");
    let firmware = match platform {
        Platform::Snp => Some(PathBuf::from("/opt/contrast/share/OVMF.amdsev.fd")),
        Platform::Tdx => Some(PathBuf::from("/opt/contrast/share/OVMF.inteltdx.fd")),
        Platform::Insecure => None,
    };
    let boot = if igvm {
        BootSource::Igvm { file: PathBuf::from("/opt/contrast/share/contrast.igvm") }
    } else {
        BootSource::Kernel {
            firmware,
            // OVMF boots the bzImage; only the insecure platform's direct boot takes the ELF.
            kernel: PathBuf::from(if platform == Platform::Insecure {
                "/opt/contrast/share/vmlinux"
            } else {
                "/opt/contrast/share/vmlinuz"
            }),
            initrd: Some(PathBuf::from("/opt/contrast/share/initrd.img")),
            cmdline: "console=ttyS0 panic=-1 quiet".into(),
        }
    };
    let confidential = platform != Platform::Insecure;
    QemuSpec {
        name: "contrast-pod1".into(),
        platform,
        kvm: confidential,
        vcpus: 2,
        memory_mib: 1024,
        boot,
        root_disk: Some(PathBuf::from("/opt/contrast/share/root,1.img")),
        vsock: if confidential {
            VsockDevice::Vhost { guest_cid: 17, vhostfd: 3 }
        } else {
            VsockDevice::Hybrid { socket: dir.join("vhost.sock") }
        },
        virtio_fs: (!confidential).then(|| dir.join("virtiofsd.sock")),
        qmp_socket: dir.join("qmp.sock"),
        debug_qmp_socket: None,
        console_log: dir.join("console.log"),
        cpu_model: match platform {
            Platform::Snp => Some("EPYC-v4".into()),
            Platform::Tdx => Some("host".into()),
            Platform::Insecure => None,
        },
        scsi_controller: confidential,
        nics: vec![NicDevice {
            tap_fd: 4,
            vhost_fd: confidential.then_some(5),
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1450,
        }],
        init_data: confidential.then(|| InitDataLaunch {
            disk: dir.join("initdata.img"),
            host_data: [0xab; 32],
            mrconfigid: [0xcd; 48],
            simulated_host_data: None,
        }),
        snp: SnpParams { cbitpos: 51, reduced_phys_bits: 1, policy: 0x30000 },
    }
}

fn cases() -> Vec<(String, QemuSpec)> {
    let mut out = Vec::new();
    for platform in [Platform::Insecure, Platform::Snp, Platform::Tdx] {
        for igvm in [false, true] {
            let boot = if igvm { "igvm" } else { "kernel" };
            out.push((format!("{platform}-{boot}"), spec(platform, igvm)));
        }
    }
    out
}

fn render(spec: &QemuSpec) -> String {
    spec.args().iter().map(|a| format!("{}\n", a.to_string_lossy())).collect()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn six_golden_vectors() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, spec) in cases() {
        let path = golden_dir().join(format!("{name}.args"));
        let got = render(&spec);
        if update {
            std::fs::write(&path, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got, want, "{name}: argument vector differs from {} (UPDATE_GOLDEN=1 to accept)", path.display());
    }
}

#[test]
fn confidential_objects_carry_the_launch_digest() {
    let snp = render(&spec(Platform::Snp, false));
    // base64 of 32 × 0xab
    assert!(snp.contains(",host-data=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="), "{snp}");
    let tdx = render(&spec(Platform::Tdx, false));
    let json = tdx.lines().find(|l| l.starts_with('{')).expect("tdx-guest JSON object");
    let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let field = base64::engine::general_purpose::STANDARD
        .decode(v["mrconfigid"].as_str().expect("mrconfigid"))
        .expect("base64");
    assert_eq!(field, [0xcd; MRCONFIGID_LEN]);
    for args in [&snp, &tdx] {
        assert!(args.contains("file=/run/contrast/k8s.io/pod1/initdata.img\n"), "{args}");
        assert!(args.contains("virtio-blk-pci,drive=initdata,serial=initdata,disable-legacy=on"), "{args}");
        assert!(!args.contains("fw_cfg"), "no simulation on real platforms: {args}");
    }
}

#[test]
fn simulated_binding_goes_through_fw_cfg() {
    let mut s = spec(Platform::Insecure, false);
    s.init_data = Some(InitDataLaunch {
        disk: PathBuf::from("/run/i.img"),
        host_data: [1; 32],
        mrconfigid: [1; 48],
        simulated_host_data: Some([0x5a; 32]),
    });
    let args = render(&s);
    assert!(
        args.contains(&format!("-fw_cfg\nname=opt/dev.contrast/simulated-host-data,string={}\n", "5a".repeat(32))),
        "{args}"
    );
    assert!(!args.contains("host-data="), "insecure has no hardware binding: {args}");
}

#[test]
fn paths_with_commas_are_escaped() {
    let args = render(&spec(Platform::Insecure, false));
    assert!(args.contains("file=/opt/contrast/share/root,,1.img"), "{args}");
}

/// Splits `type,key=value,...` (QEMU keyval, `,,` escapes a comma) into type and keys.
fn keyval(arg: &str) -> (String, Vec<String>) {
    if arg.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(arg).expect("JSON object");
        let obj = v.as_object().expect("object");
        let ty = obj["qom-type"].as_str().expect("qom-type").to_owned();
        return (ty, obj.keys().filter(|k| *k != "qom-type" && *k != "id").cloned().collect());
    }
    let unescaped = arg.replace(",,", "\u{0}");
    let mut parts = unescaped.split(',');
    let ty = parts.next().unwrap_or_default().to_owned();
    let keys = parts.filter_map(|p| p.split_once('=').map(|(k, _)| k.to_owned())).filter(|k| k != "id").collect();
    (ty, keys)
}

/// Properties QEMU lists for `-<option> <type>,help`, or None when QEMU does not know the type.
fn qemu_properties(qemu: &str, option: &str, ty: &str) -> Option<Vec<String>> {
    match option {
        "-accel" => return qom_properties(qemu, &format!("{ty}-accel")),
        "-object" | "-device" => return qom_properties(qemu, ty),
        _ => {}
    }
    let out = Command::new(qemu).args([option, &format!("{ty},help")]).output().expect("run qemu-system-x86_64");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || text.contains("not found") || text.contains("invalid object type") {
        return None;
    }
    Some(
        text.lines()
            .filter_map(|l| l.trim().split(['=', ' ']).next())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Properties of a QOM type, inherited ones included, through QMP `qom-list-properties`
/// (`-object <type>,help` lists only the type's own).
fn qom_properties(qemu: &str, typename: &str) -> Option<Vec<String>> {
    use std::io::Write;
    let mut child = Command::new(qemu)
        .args(["-M", "none", "-accel", "tcg", "-display", "none", "-qmp", "stdio"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run qemu-system-x86_64");
    let mut stdin = child.stdin.take().expect("stdin");
    let cmds = format!(
        r#"{{"execute":"qmp_capabilities"}}{{"execute":"qom-list-properties","arguments":{{"typename":"{typename}"}}}}{{"execute":"quit"}}"#
    );
    stdin.write_all(cmds.as_bytes()).expect("write QMP");
    drop(stdin);
    let out = child.wait_with_output().expect("qemu output");
    let text = String::from_utf8_lossy(&out.stdout);
    // Second reply: the property list, or an error for an unknown type.
    let line = text.lines().filter(|l| l.contains("\"return\"") || l.contains("\"error\"")).nth(1)?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(v["return"].as_array()?.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
}

/// Checks every `-object`/`-device`/`-machine`/`-accel` property of every golden case against
/// `qemu`; returns the types it does not know (with the first case using each).
fn unknown_types_in(qemu: &str) -> BTreeMap<String, String> {
    let mut unknown_types = BTreeMap::new();
    let mut checked = 0;
    for (name, spec) in cases() {
        let args: Vec<String> = spec.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        for pair in args.windows(2) {
            let option = match pair[0].as_str() {
                "-object" => "-object",
                "-device" => "-device",
                "-machine" => "-machine",
                "-accel" => "-accel",
                _ => continue,
            };
            let (ty, keys) = keyval(&pair[1]);
            let Some(known) = qemu_properties(qemu, option, &ty) else {
                unknown_types.entry(ty).or_insert(name.clone());
                continue;
            };
            for key in keys {
                if key == "igvm-cfg" && qemu_properties(qemu, "-object", "igvm-cfg").is_none() {
                    unknown_types.entry("igvm-cfg".to_owned()).or_insert(name.clone());
                    continue;
                }
                assert!(known.contains(&key), "{name}: {qemu}'s {ty} has no property `{key}` (has: {known:?})");
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} properties checked");
    unknown_types
}

#[test]
fn every_property_exists_in_the_installed_qemu() {
    let unknown_types = unknown_types_in(QEMU);
    // This QEMU (Debian 10.0) lacks IGVM and TDX; say so rather than pretend. The QEMU the
    // project builds knows both (the next test).
    for (ty, first) in &unknown_types {
        eprintln!("note: installed QEMU does not know `{ty}` (first used by {first}); the next test checks it");
    }
    for ty in unknown_types.keys() {
        assert!(ty == "igvm-cfg" || ty == "tdx-guest", "installed QEMU does not know {ty}");
    }
}

/// The QEMU 10.2 `scripts/build-qemu-igvm.sh` builds (`make test` passes its path) knows
/// every type and property of every golden case, `igvm-cfg` and `tdx-guest` included.
#[test]
fn every_property_exists_in_the_project_built_qemu() {
    let qemu = std::env::var("CONTRAST_IGVM_QEMU")
        .expect("CONTRAST_IGVM_QEMU is not set: run `make test` (it builds that QEMU once per machine)");
    let unknown_types = unknown_types_in(&qemu);
    assert!(unknown_types.is_empty(), "{qemu} does not know {unknown_types:?}");
}

#[test]
fn debug_qmp_is_a_second_monitor_only_when_asked_for() {
    let mut s = spec(Platform::Insecure, false);
    let monitors = |s: &QemuSpec| {
        let args: Vec<String> = s.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        args.windows(2).filter(|w| w[0] == "-qmp").map(|w| w[1].clone()).collect::<Vec<_>>()
    };
    assert_eq!(monitors(&s).len(), 1, "one monitor, the shim's");
    s.debug_qmp_socket = Some(PathBuf::from("/run/contrast/ns/pod1/qmp-debug.sock"));
    let m = monitors(&s);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[1], "unix:/run/contrast/ns/pod1/qmp-debug.sock,server=on,wait=off");
}
