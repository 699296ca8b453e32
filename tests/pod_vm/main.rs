//! Pod VM integration tests: the real image booted by the real QEMU (TCG) with the real
//! agent, reached through hybrid vsock via the real vhost-device-vsock.

mod bad_input;
mod containers;
mod crash;
mod devices;
mod exec;
mod igvm;
mod layers;
mod lifecycle;
mod network;
mod policy;
mod seccomp;
mod verity;

use std::collections::BTreeMap;
use std::path::PathBuf;

use contrast_config::RuntimeClassConfig;
use contrast_tests::{image_dir, processes_mentioning, TestConfig};
use contrast_vmm::{LaunchRequest, PodVm};

/// A scratch area for one test: config file and the pods' state root.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

#[allow(clippy::new_without_default)]
impl Scratch {
    /// Short prefix: unix socket paths under it must stay below 108 bytes.
    pub fn new() -> Self {
        Scratch { dir: tempfile::Builder::new().prefix("ct").tempdir().expect("tempdir") }
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn config(&self) -> TestConfig {
        TestConfig::new(&image_dir().expect("pod-VM image"), &self.state_root())
    }

    pub fn load(&self, config: &TestConfig) -> RuntimeClassConfig {
        config.write_and_load(&self.dir.path().join("configuration.toml")).expect("test config loads")
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_root().join("default").join(id)
    }

    /// Asserts that nothing of the pod remains: no process mentions its state dir and the
    /// dir is gone.
    pub fn assert_nothing_left(&self, id: &str) {
        let dir = self.pod_dir(id);
        let procs = processes_mentioning(&dir);
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
        assert!(!dir.exists(), "state dir {} left behind", dir.display());
    }
}

pub async fn launch(scratch: &Scratch, config: &RuntimeClassConfig, id: &str) -> Result<PodVm, contrast_vmm::Error> {
    let overrides = config.pod_overrides(&BTreeMap::new()).expect("no annotations");
    PodVm::launch(LaunchRequest {
        id,
        config,
        overrides: &overrides,
        state_dir: scratch.pod_dir(id),
        init_data: None,
        shared_dir: None,
        netns: None,
    })
    .await
}
