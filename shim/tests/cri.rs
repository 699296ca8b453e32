//! The shim under containerd's CRI plugin, driven like kubelet (crictl runp workflow): one
//! pod sandbox with two containers boots exactly one QEMU; ExecSync works in each; a
//! `RuntimeDefault` seccomp profile is in force in the guest; removing the pod leaves nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use contrast_cri_client::{cri, CriClient};
use contrast_tests::containerd::{Containerd, Release, CRI_HANDLER, IMAGE};
use contrast_tests::{containerd_matrix, image_dir};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-contrast-cc-v2");
const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);

fn containerd(release: Release) -> Containerd {
    Containerd::start_release(release, Path::new(SHIM), &image_dir().expect("image")).expect("containerd starts")
}

containerd_matrix! {
    async fn pod_with_two_containers_runs_in_one_vm(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");

        let pod = cri.run_pod("web", "default", CRI_HANDLER, HashMap::new()).await.expect("RunPodSandbox");
        let c1 = cri.run_container(&pod, "one", IMAGE, &["sleep", "1000"]).await.expect("first container");
        // kubelet's `seccompProfile: RuntimeDefault`: containerd's default profile in the spec.
        let runtime_default = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let c2 = cri
            .run_container_with(&pod, "two", IMAGE, &["sleep", "1002"], Some(runtime_default))
            .await
            .expect("second container, RuntimeDefault seccomp");

        let qemus: Vec<_> = contrast_tests::processes_mentioning(&cd.pod_root())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .collect();
        assert_eq!(qemus.len(), 1, "exactly one QEMU for the pod: {qemus:?}");

        for (id, word) in [(&c1, "first"), (&c2, "second")] {
            let (code, out, err) =
                cri.exec_sync(id, &["sh", "-c", &format!("echo {word}; exit 0")]).await.expect("ExecSync");
            assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
            assert_eq!(String::from_utf8_lossy(&out), format!("{word}\n"));
        }
        // The filter is loaded in container two's process and in what is exec'd into it, not in
        // container one (the pod shares one PID namespace, so both are visible from either).
        let mode_of = |cmdline: &str| {
            format!(
                "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline)\" = '{cmdline} ' ] && grep Seccomp: $p/status; \
                 done; grep Seccomp: /proc/self/status"
            )
        };
        let (_, out, _) = cri.exec_sync(&c2, &["sh", "-c", &mode_of("sleep 1002")]).await.expect("ExecSync two");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("Seccomp:\t2").count(), 2, "container two and its exec are filtered:\n{out}");
        let (_, out, _) = cri.exec_sync(&c1, &["sh", "-c", &mode_of("sleep 1000")]).await.expect("ExecSync one");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("Seccomp:\t0").count(), 2, "container one is not:\n{out}");

        let (code, _, _) = cri.exec_sync(&c1, &["sh", "-c", "exit 6"]).await.expect("ExecSync with failure");
        assert_eq!(code, 6);

        cri.remove_pod(&pod.id).await.expect("stop and remove the pod");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());
    }
}

containerd_matrix! {
    async fn annotation_outside_the_allowlist_fails_the_pod_and_leaves_nothing(release: Release) {
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        // The test runtime class allows only default_memory.
        let annotations = HashMap::from([("io.katacontainers.config.hypervisor.default_vcpus".to_owned(), "2".to_owned())]);
        let err = cri.run_pod("denied", "default", CRI_HANDLER, annotations).await.err().expect("RunPodSandbox must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("default_vcpus") && msg.contains("not allowed"), "{msg}");
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// Allows what the shim needs to run a pod, forbids exec (kata rule names).
fn no_exec_policy() -> String {
    format!(
        "{}default CreateContainerRequest := true\ndefault ExecProcessRequest := false\n",
        contrast_tests::pod_lifecycle_rules()
    )
}

containerd_matrix! {
    async fn policy_annotation_is_enforced_in_the_guest(release: Release) {
        use base64::Engine;
        let cd = containerd(release);
        let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
        let policy = base64::engine::general_purpose::STANDARD.encode(no_exec_policy());
        let annotations = HashMap::from([("io.katacontainers.config.agent.policy".to_owned(), policy)]);
        let pod = cri.run_pod("guarded", "default", CRI_HANDLER, annotations).await.expect("RunPodSandbox");
        let c = cri.run_container(&pod, "app", IMAGE, &["sleep", "1000"]).await.expect("create/start allowed");
        let t = Instant::now();
        let err = cri.exec_sync(&c, &["echo", "nope"]).await.expect_err("exec must be denied");
        eprintln!("exec denied after {:?}", t.elapsed());
        let msg = format!("{err:#}");
        assert!(msg.contains("ExecProcessRequest is blocked by policy"), "{msg}");
        let t = Instant::now();
        cri.remove_pod(&pod.id).await.expect("stop and remove the pod");
        eprintln!("pod removed after {:?}", t.elapsed());
        let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}
