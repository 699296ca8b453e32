//! The trust chain end to end under containerd's CRI, on the `insecure` platform's SIMULATED
//! launch binding (fw_cfg where SNP/TDX hardware would report `host_data`): a pod's init data
//! (gzip+base64 annotation, kata's format) reaches the guest as a disk, the guest checks it
//! against the binding before it serves anything, and its `policy.rego` — addressing
//! requests the way kata policies do — decides every request.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use contrast_cri_client::CriClient;
use contrast_tests::containerd::{Containerd, Release, IMAGE, SIM_HANDLER, SIM_MISMATCH_HANDLER};
use contrast_tests::{containerd_matrix, image_dir};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);
const INIT_DATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// Rules the way kata's genpolicy writes them: `input.OCI.Process.Args` for containers,
/// `input.process.Args` for execs, `print` for the reason of a denial.
const RULES: &str = r#"
default SetPolicyRequest := false

default CreateContainerRequest := false
is_sandbox if { input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox" }
CreateContainerRequest if { is_sandbox }
CreateContainerRequest if { input.OCI.Process.Args == ["sleep", "1000"] }
CreateContainerRequest if {
    not is_sandbox
    not input.OCI.Process.Args == ["sleep", "1000"]
    print("container command", concat(" ", input.OCI.Process.Args), "is not in the init data policy")
    false
}

default ExecProcessRequest := false
ExecProcessRequest if { input.process.Args == ["echo", "allowed"] }
ExecProcessRequest if {
    not input.process.Args == ["echo", "allowed"]
    print("exec of", concat(" ", input.process.Args), "is forbidden by the init data policy")
    false
}
"#;

fn policy() -> String {
    format!("{}{RULES}", contrast_tests::pod_lifecycle_rules())
}

fn containerd(release: Release) -> Containerd {
    Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image")).expect("containerd starts")
}

/// The annotation value as kata and Contrast write it: base64 of gzip of the TOML document.
fn init_data_annotation(policy: &str) -> HashMap<String, String> {
    let toml = format!("version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = '''\n{policy}'''\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(toml.as_bytes()).expect("gzip");
    let value = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    HashMap::from([(INIT_DATA_ANNOTATION.to_owned(), value)])
}

containerd_matrix! {
    async fn init_data_policy_decides_containers_and_execs(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let pod = cri.run_pod("measured", "default", SIM_HANDLER, init_data_annotation(&policy())).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("the pinned command is allowed");

        let (code, out, _) = cri.exec_sync(&c, &["echo", "allowed"]).await.expect("the allowed exec works");
        assert_eq!((code, out.as_slice()), (0, &b"allowed\n"[..]));

        let err = cri.exec_sync(&c, &["echo", "forbidden"]).await.expect_err("exec must be refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("PERMISSION_DENIED") || msg.contains("PermissionDenied"), "{msg}");
        assert!(msg.contains("exec of echo forbidden is forbidden by the init data policy"), "{msg}");

        let err = cri.run_container(&pod, "other", IMAGE, &["sh", "-c", "true"]).await.expect_err("unpinned command");
        let msg = format!("{err:#}");
        assert!(msg.contains("PERMISSION_DENIED") && msg.contains("container command sh -c true is not in the init data policy"), "{msg}");

        cri.remove_pod(&pod.id).await.expect("stop and remove the pod");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

containerd_matrix! {
    async fn binding_that_does_not_match_the_init_data_denies_everything(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let err = cri
            .run_pod("tampered", "default", SIM_MISMATCH_HANDLER, init_data_annotation(&policy()))
            .await
            .err()
            .expect("RunPodSandbox must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("PERMISSION_DENIED") || msg.contains("PermissionDenied"), "{msg}");
        // The first request the shim sends (the pod's NIC, before CreateSandbox) is refused.
        assert!(msg.contains("UpdateInterfaceRequest is blocked: init data does not match the launch binding"), "{msg}");
        assert!(msg.contains("SIMULATED host_data"), "{msg}");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

containerd_matrix! {
    async fn confidential_path_without_init_data_is_refused_before_boot(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let err = cri.run_pod("bare", "default", SIM_HANDLER, HashMap::new()).await.err().expect("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("needs the pod's init data") && msg.contains(INIT_DATA_ANNOTATION), "{msg}");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}
