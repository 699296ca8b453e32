//! Containers in the pod VM through the agent API: exit statuses, signals, output, stats,
//! pause/resume, bulk stdout.

use std::time::Duration;

use contrast_agent_protocol::agent;
use contrast_tests::image_dir;
use contrast_tests::pod::TestPod;

/// Bytes of container stdout the bulk test moves (≥ 8 MiB, issue acceptance).
const BULK_LINES: u32 = 1_200_000;
/// How long a paused container is watched for output that must not come.
const PAUSE_OBSERVATION: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_signals_output_stats_and_pause() {
    let pod = TestPod::start(&image_dir().expect("image"), "lifecycle-c").await.expect("pod starts");

    pod.run("echo", &["echo", "hello"], false).await.expect("echo runs");
    assert_eq!(pod.read_all_stdout("echo", "").await.expect("stdout"), b"hello\n");
    assert_eq!(pod.wait("echo", "").await.expect("wait"), 0);
    pod.remove("echo").await.expect("remove echo");

    pod.run("exit7", &["sh", "-c", "exit 7"], false).await.expect("exit7 runs");
    assert_eq!(pod.wait("exit7", "").await.expect("wait"), 7);

    pod.run("sleeper", &["sleep", "1000"], false).await.expect("sleep runs");
    let mut stats_req = agent::StatsContainerRequest::new();
    stats_req.container_id = "sleeper".into();
    let stats = pod.agent.stats_container(&stats_req).await.expect("stats");
    let memory = stats.cgroup_stats.memory_stats.usage.usage;
    assert!(memory > 0, "running container uses memory: {stats:?}");
    assert!(stats.cgroup_stats.pids_stats.current >= 1, "{stats:?}");
    pod.signal("sleeper", "", 9).await.expect("SIGKILL");
    assert_eq!(pod.wait("sleeper", "").await.expect("wait"), 137);
    // Signalling an exited process is not an error (kill is idempotent).
    pod.signal("sleeper", "", 9).await.expect("second SIGKILL");

    // Pause freezes output; resume thaws it.
    pod.run("ticker", &["sh", "-c", "while true; do echo tick; sleep 0.1; done"], false).await.expect("ticker");
    assert!(!pod.read_stdout("ticker", "").await.expect("ticks").is_empty());
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = "ticker".into();
    pod.agent.pause_container(&pause).await.expect("pause");
    // Drain what was written before the freeze, then expect silence.
    while tokio::time::timeout(Duration::from_millis(300), pod.read_stdout("ticker", "")).await.is_ok() {}
    let quiet = tokio::time::timeout(PAUSE_OBSERVATION, pod.read_stdout("ticker", "")).await;
    assert!(quiet.is_err(), "paused container produced output: {quiet:?}");
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = "ticker".into();
    pod.agent.resume_container(&resume).await.expect("resume");
    let after = tokio::time::timeout(Duration::from_secs(10), pod.read_stdout("ticker", "")).await;
    assert!(after.is_ok_and(|r| r.is_ok_and(|d| !d.is_empty())), "resumed container writes again");
    pod.remove("ticker").await.expect("remove running container");

    // ≥ 8 MiB of stdout, every byte checked.
    let n = BULK_LINES.to_string();
    pod.run("bulk", &["seq", "1", &n], false).await.expect("bulk runs");
    let got = pod.read_all_stdout("bulk", "").await.expect("bulk stdout");
    let want: String = (1..=BULK_LINES).map(|i| format!("{i}\n")).collect();
    assert!(want.len() >= 8 << 20, "test moves {} bytes", want.len());
    assert_eq!(got.len(), want.len(), "byte count");
    assert!(got == want.as_bytes(), "content differs");
    assert_eq!(pod.wait("bulk", "").await.expect("wait"), 0);

    let state = pod.state_dir();
    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(contrast_tests::processes_mentioning(&state).is_empty());
}
