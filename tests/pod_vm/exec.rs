//! Exec into running containers: terminals, window size, stdin end-of-file, and PID
//! namespace sharing between the containers of a pod.

use std::time::Duration;

use contrast_agent_protocol::agent;
use contrast_tests::image_dir;
use contrast_tests::pod::{container_spec, create_request, exec_request, TestPod};

/// How long to wait for a terminal to echo what was typed.
const TTY_TIMEOUT: Duration = Duration::from_secs(20);

async fn write_stdin(pod: &TestPod, id: &str, exec_id: &str, data: &[u8]) {
    let mut req = agent::WriteStreamRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.data = data.to_vec();
    let resp = pod.agent.write_stdin(&req).await.expect("write stdin");
    assert_eq!(resp.len as usize, data.len());
}

/// Reads terminal output until it contains `needle`.
async fn read_until(pod: &TestPod, id: &str, exec_id: &str, needle: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(needle) {
            let chunk = pod.read_stdout(id, exec_id).await.expect("tty output");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let done = tokio::time::timeout(TTY_TIMEOUT, read).await;
    assert!(done.is_ok(), "terminal never showed {needle:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tty_resize_close_stdin_and_pid_namespaces() {
    let pod = TestPod::start(&image_dir().expect("image"), "exec-c").await.expect("pod starts");
    pod.run("main", &["sleep", "1000"], false).await.expect("main container");

    // An interactive shell on a terminal echoes what is typed and runs it.
    pod.agent.exec_process(&exec_request("main", "shell", &["sh"], true)).await.expect("exec with tty");
    write_stdin(&pod, "main", "shell", b"echo typed-$((6*7))\n").await;
    read_until(&pod, "main", "shell", "typed-42").await;

    // TtyWinResize changes what stty reports.
    let mut resize = agent::TtyWinResizeRequest::new();
    resize.container_id = "main".into();
    resize.exec_id = "shell".into();
    resize.row = 33;
    resize.column = 111;
    pod.agent.tty_win_resize(&resize).await.expect("resize");
    write_stdin(&pod, "main", "shell", b"stty size\n").await;
    read_until(&pod, "main", "shell", "33 111").await;
    write_stdin(&pod, "main", "shell", b"exit 5\n").await;
    assert_eq!(pod.wait("main", "shell").await.expect("shell exit"), 5);

    // CloseStdin ends cat's input: it prints what it got and exits 0.
    pod.agent.exec_process(&exec_request("main", "cat", &["cat"], false)).await.expect("exec cat");
    write_stdin(&pod, "main", "cat", b"through the pipe\n").await;
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = "main".into();
    close.exec_id = "cat".into();
    pod.agent.close_stdin(&close).await.expect("close stdin");
    assert_eq!(pod.read_all_stdout("main", "cat").await.expect("cat output"), b"through the pipe\n");
    assert_eq!(pod.wait("main", "cat").await.expect("cat exit"), 0);

    // Exec into an unknown container / an exec id still in use.
    let err = pod.agent.exec_process(&exec_request("nope", "x", &["true"], false)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::NOT_FOUND, "{err}");
    pod.agent.exec_process(&exec_request("main", "sleeper", &["sleep", "1000"], false)).await.expect("exec sleep");
    let err = pod.agent.exec_process(&exec_request("main", "sleeper", &["true"], false)).await.unwrap_err();
    assert_eq!(err.code, ttrpc::Code::ALREADY_EXISTS, "{err}");

    // An exec whose exit was reported and whose output was read to its end is gone from
    // the agent, descriptors and all (before, every exec stayed until its container was
    // removed: exec probes ran the agent out of descriptors); its id is free again.
    assert!(pod.read_all_stderr("main", "cat").await.expect("cat's stderr").is_empty());
    let reused = async {
        loop {
            match pod.agent.exec_process(&exec_request("main", "cat", &["echo", "again"], false)).await {
                Ok(_) => return,
                Err(e) if e.code == ttrpc::Code::ALREADY_EXISTS => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("exec again: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reused).await.expect("the exec id is free once its output ended");
    assert_eq!(pod.read_all_stdout("main", "cat").await.expect("output"), b"again\n");
    assert_eq!(pod.wait("main", "cat").await.expect("exit"), 0);
    // The terminal's shell too (one output, the terminal).
    pod.read_all_stdout("main", "shell").await.expect("the rest of the terminal's output");
    let reused = async {
        while pod.agent.exec_process(&exec_request("main", "shell", &["true"], true)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reused).await.expect("the terminal exec's id is free");
    assert_eq!(pod.wait("main", "shell").await.expect("exit"), 0);
    pod.signal("main", "sleeper", 9).await.expect("kill sleeper");
    assert_eq!(pod.wait("main", "sleeper").await.expect("sleeper exit"), 137);

    // PID namespaces: a container that shares the sandbox's sees `sleep 1000` of the first
    // container (the namespace holder); one with its own does not.
    let mut shared = create_request("shared", container_spec(&pod.rootfs, &["ps"], false));
    shared.sandbox_pidns = true;
    pod.agent.create_container(&shared).await.expect("create shared");
    let mut start = agent::StartContainerRequest::new();
    start.container_id = "shared".into();
    pod.agent.start_container(&start).await.expect("start shared");
    let ps = String::from_utf8(pod.read_all_stdout("shared", "").await.expect("ps output")).expect("utf8");
    assert!(ps.contains("sleep 1000"), "shared PID namespace shows the other container:\n{ps}");

    pod.run("own", &["ps"], false).await.expect("own pidns");
    let ps = String::from_utf8(pod.read_all_stdout("own", "").await.expect("ps output")).expect("utf8");
    assert!(!ps.contains("sleep 1000"), "own PID namespace must not show other containers:\n{ps}");

    let exit = pod.stop().await;
    assert_eq!(exit.code, Some(0), "{exit}");
}
