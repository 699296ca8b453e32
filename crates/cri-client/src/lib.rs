//! A small CRI client over containerd's unix socket: the `crictl runp` / `create` / `start` /
//! `exec` / `stopp` / `rmp` workflow, for tests and debugging (crictl is not packaged here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as cri;
pub use stream::{ExecOutput, PortForwardOutput};

mod stream;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Seconds containerd may take for ExecSync before it gives up.
const EXEC_SYNC_TIMEOUT_SECS: i64 = 120;

#[derive(Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The network namespace containerd's streaming server listens in, when not ours.
    stream_netns: Option<PathBuf>,
}

/// What a pod sandbox is created with; kept to create its containers.
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl CriClient {
    pub async fn connect(socket: &Path) -> Result<Self> {
        let path: PathBuf = socket.to_owned();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            stream_netns: None,
        })
    }

    /// `crictl inspecti`: whether the CRI image service knows `image`. containerd's CRI
    /// plugin learns of an image imported with `ctr` from an event, a moment after the import.
    pub async fn image_known(&mut self, image: &str) -> Result<bool> {
        let resp = self
            .images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
                verbose: false,
            })
            .await
            .context("ImageStatus")?;
        Ok(resp.into_inner().image.is_some())
    }

    /// Streams (`Exec`) connect from network namespace `netns`: containerd's streaming
    /// server listens on 127.0.0.1 of the namespace containerd runs in.
    pub fn streaming_from(mut self, netns: Option<PathBuf>) -> Self {
        self.stream_netns = netns;
        self
    }

    /// `crictl runp`: a pod sandbox on the node's network (no CNI here) with `handler`.
    pub async fn run_pod(
        &mut self,
        name: &str,
        namespace: &str,
        handler: &str,
        annotations: HashMap<String, String>,
    ) -> Result<Pod> {
        let mut config = pod_config(name, namespace);
        config.annotations = annotations;
        self.run_pod_config(handler, config).await
    }

    /// `crictl runp` of a pod config built by the caller (see [`pod_config`]).
    pub async fn run_pod_config(&mut self, handler: &str, config: cri::PodSandboxConfig) -> Result<Pod> {
        self.run_pod_deadline(handler, config, None).await
    }

    /// `RunPodSandbox` with a deadline of `timeout` (sent as `grpc-timeout`, which containerd
    /// passes on to the runtime, as it does kubelet's).
    pub async fn run_pod_within(
        &mut self,
        handler: &str,
        config: cri::PodSandboxConfig,
        timeout: std::time::Duration,
    ) -> Result<Pod> {
        self.run_pod_deadline(handler, config, Some(timeout)).await
    }

    async fn run_pod_deadline(
        &mut self,
        handler: &str,
        config: cri::PodSandboxConfig,
        timeout: Option<std::time::Duration>,
    ) -> Result<Pod> {
        let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        });
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let resp = self.runtime.run_pod_sandbox(req).await.context("RunPodSandbox")?;
        Ok(Pod { id: resp.into_inner().pod_sandbox_id, config })
    }

    /// `crictl create` + `start`.
    pub async fn run_container(&mut self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> Result<String> {
        self.run_container_with(pod, name, image, command, None).await
    }

    /// `crictl create` + `start` with the container's Linux security context (e.g. a
    /// `RuntimeDefault` seccomp profile).
    pub async fn run_container_with(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        security: Option<cri::LinuxContainerSecurityContext>,
    ) -> Result<String> {
        let mut config = container_config(name, image, command);
        config.linux = security.map(|s| cri::LinuxContainerConfig { security_context: Some(s), ..Default::default() });
        self.run_container_config(pod, config).await
    }

    /// `crictl create` + `start` of a container config built by the caller.
    pub async fn run_container_config(&mut self, pod: &Pod, config: cri::ContainerConfig) -> Result<String> {
        let id = self.create_container(pod, config).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    /// `crictl create`: the container's id.
    pub async fn create_container(&mut self, pod: &Pod, config: cri::ContainerConfig) -> Result<String> {
        let resp = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .context("CreateContainer")?;
        Ok(resp.into_inner().container_id)
    }

    /// `crictl start`.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(cri::StartContainerRequest { container_id: id.into() })
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// `crictl exec -s`: (exit code, stdout, stderr).
    pub async fn exec_sync(&mut self, container: &str, cmd: &[&str]) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let resp = self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                timeout: EXEC_SYNC_TIMEOUT_SECS,
            })
            .await
            .context("ExecSync")?
            .into_inner();
        Ok((resp.exit_code, resp.stdout, resp.stderr))
    }

    /// `crictl inspectp`: the pod's IP (as CNI assigned it) and its network namespace path (from
    /// the verbose info's runtime spec; every containerd since 1.6 puts it there).
    pub async fn pod_network(&mut self, pod_id: &str) -> Result<(String, Option<String>)> {
        let resp = self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod_id.into(), verbose: true })
            .await
            .context("PodSandboxStatus")?
            .into_inner();
        let ip = resp.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        let netns = resp.info.get("info").and_then(|info| {
            let v: serde_json::Value = serde_json::from_str(info).ok()?;
            v["runtimeSpec"]["linux"]["namespaces"]
                .as_array()?
                .iter()
                .find(|ns| ns["type"] == "network")
                .and_then(|ns| ns["path"].as_str().map(str::to_owned))
        });
        Ok((ip, netns))
    }

    /// `crictl inspect`: the container's status (state, exit code, reason, ...).
    pub async fn container_status(&mut self, container: &str) -> Result<cri::ContainerStatus> {
        let resp = self
            .runtime
            .container_status(cri::ContainerStatusRequest { container_id: container.into(), verbose: false })
            .await
            .context("ContainerStatus")?
            .into_inner();
        resp.status.context("ContainerStatus without status")
    }

    /// `crictl exec -i [-t]`: runs `cmd` in the container through CRI `Exec` and
    /// containerd's streaming server (WebSocket, Kubernetes' `v4.channel.k8s.io`), writes
    /// `input` to its stdin, and returns what it printed and the final status document.
    pub async fn exec_stream(&mut self, container: &str, cmd: &[&str], tty: bool, input: &[u8]) -> Result<ExecOutput> {
        let resp = self
            .runtime
            .exec(cri::ExecRequest {
                container_id: container.into(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                tty,
                stdin: true,
                stdout: true,
                // With a terminal both streams are one (CRI refuses stderr with tty).
                stderr: !tty,
            })
            .await
            .context("Exec")?
            .into_inner();
        let input = input.to_vec();
        self.streaming(move || async move { stream::exec(&resp.url, &input).await }).await
    }

    /// `crictl port-forward` for one connection: sends `input` to `port` of the pod and
    /// returns what came back once `done` holds for it (or the session ended).
    pub async fn port_forward(
        &mut self,
        pod_id: &str,
        port: u16,
        input: &[u8],
        done: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> Result<PortForwardOutput> {
        let resp = self
            .runtime
            .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod_id.into(), port: vec![port.into()] })
            .await
            .context("PortForward")?
            .into_inner();
        let input = input.to_vec();
        self.streaming(move || async move { stream::port_forward(&resp.url, port, &input, done).await }).await
    }

    /// Runs a streaming session, from containerd's network namespace when one is set
    /// ([`CriClient::streaming_from`]).
    async fn streaming<T, F, Fut>(&self, session: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let Some(netns) = self.stream_netns.clone() else {
            return session().await;
        };
        // A socket belongs to the namespace of the thread that creates it: connect from a
        // thread of its own that has entered containerd's.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(session())
            })();
            let _ = tx.send(result);
        });
        rx.await.context("streaming thread")?
    }

    /// `crictl stopp` + `rmp`.
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod_id.into() })
            .await
            .context("StopPodSandbox")?;
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod_id.into() })
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }

    /// `crictl pods`: (id, name, state).
    pub async fn pods(&mut self) -> Result<Vec<(String, String, String)>> {
        let resp = self.runtime.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await?.into_inner();
        Ok(resp
            .items
            .into_iter()
            .map(|p| {
                let name = p.metadata.map(|m| m.name).unwrap_or_default();
                let state =
                    cri::PodSandboxState::try_from(p.state).map(|s| s.as_str_name().to_owned()).unwrap_or_default();
                (p.id, name, state)
            })
            .collect())
    }
}

/// A pod config as `crictl runp` would send it: the pod's own network (CNI), hostname = name.
pub fn pod_config(name: &str, namespace: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: String::new(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config running `command` in `image`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}
