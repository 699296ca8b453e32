//! Policy enforcement and bad requests: the right ttrpc codes, and the agent keeps serving.

use contrast_agent_protocol::agent;
use contrast_initdata::InitData;
use contrast_tests::image_dir;
use contrast_tests::pod::{container_spec, create_request, exec_request, TestPod};

/// Allows everything except exec (kata's rule names, package `agent_policy`).
const NO_EXEC_POLICY: &str = r#"
package agent_policy

default CreateContainerRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default ReadStreamRequest := true
default SignalProcessRequest := true
default DestroySandboxRequest := true
default SetPolicyRequest := false
default ExecProcessRequest := false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_exec_and_bad_input_gets_the_right_codes() {
    let pod = TestPod::start(&image_dir().expect("image"), "policy-c").await.expect("pod starts");

    // Bad input first (no policy yet on the insecure platform: everything allowed).
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "ghost".into();
    let err = pod.agent.start_container(&start).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::NOT_FOUND, "{err}");

    let mut no_process = create_request("noproc", container_spec(&pod.rootfs, &["true"], false));
    no_process.OCI.as_mut().expect("spec").Process = None.into();
    let err = pod.agent.create_container(&no_process).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("process"), "{err}");

    let missing = create_request("noroot", container_spec("/run/contrast/shared/does-not-exist", &["true"], false));
    let err = pod.agent.create_container(&missing).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("does-not-exist"), "{err}");

    pod.run("dup", &["sleep", "1000"], false).await.expect("first dup");
    let err = pod.agent.create_container(&create_request("dup", container_spec(&pod.rootfs, &["true"], false))).await;
    assert_eq!(err.unwrap_err().code, ttrpc::Code::ALREADY_EXISTS);

    let mut garbage = agent::SetPolicyRequest::new();
    garbage.policy = "package agent_policy\nthis is { not rego".into();
    let err = pod.agent.set_policy(&garbage).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::INVALID_ARGUMENT, "{err}");

    // A policy that forbids exec: exec is denied, create/start still work.
    let mut policy = agent::SetPolicyRequest::new();
    policy.policy = NO_EXEC_POLICY.into();
    pod.agent.set_policy(&policy).await.expect("set policy");
    let err = pod.agent.exec_process(&exec_request("dup", "sh", &["true"], false)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::PERMISSION_DENIED, "{err}");
    assert!(err.message.contains("ExecProcessRequest"), "{err}");
    pod.run("allowed", &["echo", "still works"], false).await.expect("create+start allowed");
    assert_eq!(pod.read_all_stdout("allowed", "").await.expect("output"), b"still works\n");
    // The policy also forbids replacing itself.
    let err = pod.agent.set_policy(&policy).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::PERMISSION_DENIED, "{err}");

    // After all this the agent still serves.
    assert_eq!(
        pod.agent.check().await.expect("health").status.enum_value_or_default(),
        contrast_agent_protocol::health::health_check_response::ServingStatus::SERVING
    );
    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

/// The host cannot swap the measured policy: `SetPolicy` is a request like any other, judged
/// by the init data policy the launch is bound to (simulated binding, insecure platform).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_policy_from_the_host_is_refused_by_the_init_data_policy() {
    let measured = format!("{NO_EXEC_POLICY}default CreateSandboxRequest := true\n");
    let init_data = InitData::wrap_policy(&measured);
    let pod = TestPod::start_measured(&image_dir().expect("image"), "policy-m", &init_data).await.expect("pod starts");
    // The policy is asked before anything else: exec is denied whether or not "app" exists.
    let err = pod.agent.exec_process(&exec_request("app", "e1", &["true"], false)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::PERMISSION_DENIED, "{err}");

    let mut allow_all = agent::SetPolicyRequest::new();
    allow_all.policy =
        "package agent_policy\ndefault ExecProcessRequest := true\ndefault SetPolicyRequest := true\n".into();
    let err = pod.agent.set_policy(&allow_all).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::PERMISSION_DENIED, "{err}");
    assert!(err.message.contains("SetPolicyRequest is blocked by policy"), "{err}");
    // Still the measured policy.
    let err = pod.agent.exec_process(&exec_request("app", "e2", &["true"], false)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::PERMISSION_DENIED, "{err}");
    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
}
