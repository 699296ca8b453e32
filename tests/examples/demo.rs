//! `make demo`: boots a pod VM from the built image (insecure platform, TCG, hybrid vsock),
//! asks the guest agent for its health and version over the kata agent protocol, stops the
//! VM and shows that nothing is left.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use contrast_tests::{agent_version, health_check, image_dir, processes_mentioning, ttrpc_client, TestConfig};
use contrast_vmm::{LaunchRequest, PodVm};

#[tokio::main]
async fn main() -> Result<()> {
    let image = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => image_dir()?,
    };
    let scratch = tempfile::Builder::new().prefix("contrast-demo").tempdir()?;
    let config = TestConfig::new(&image, &scratch.path().join("run"))
        .write_and_load(&scratch.path().join("configuration.toml"))?;
    let overrides = config.pod_overrides(&BTreeMap::new())?;
    let state_dir = scratch.path().join("run/default/demo");

    println!("booting a pod VM (insecure platform, TCG) from {} ...", image.display());
    let start = Instant::now();
    let vm = PodVm::launch(LaunchRequest {
        id: "demo",
        config: &config,
        overrides: &overrides,
        state_dir: state_dir.clone(),
        launch_digest: None,
        shared_dir: None,
    })
    .await
    .context("launching the pod VM")?;
    println!("  QEMU pid {} running (accel {}), QMP ready after {:.2?}", vm.qemu_pid(), vm.accel(), start.elapsed());
    let client = ttrpc_client(vm.dial_agent().await.context("reaching the agent")?);
    let status = health_check(&client).await?;
    let (api, agent) = agent_version(&client).await?;
    println!("  agent reachable over vsock port 1024 after {:.2?}", start.elapsed());
    println!("grpc.Health/Check   -> {status}");
    println!("grpc.Health/Version -> api {api}, {agent}");
    drop(client);

    let exit = vm.stop().await;
    println!("pod VM stopped: {exit}");
    let left = processes_mentioning(&state_dir);
    println!(
        "left behind: {} processes, state dir {}",
        left.len(),
        if state_dir.exists() { "present" } else { "removed" }
    );
    anyhow::ensure!(status == "SERVING" && left.is_empty() && !state_dir.exists(), "demo failed");
    Ok(())
}
