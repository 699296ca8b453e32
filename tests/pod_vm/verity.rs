//! The root disk is verified by dm-verity in the guest: one changed byte on the host's copy —
//! in a file the agent needs, in the hash tree, or in the root hash on the command line — stops
//! the pod before the agent runs, with an error that names verity, and leaves nothing behind.

use contrast_tests::{tamper, TestConfig};

use crate::{launch, Scratch};

/// Launches a pod from `config`, expects it to fail, returns the error text.
pub(crate) async fn refused(scratch: &Scratch, config: &TestConfig, id: &str) -> String {
    let config = scratch.load(config);
    let vm = launch(scratch, &config, id).await.expect("QEMU starts");
    let err = match vm.dial_agent().await {
        Ok(_) => panic!("the agent of a tampered image answered"),
        Err(e) => format!("{e:#}"),
    };
    vm.stop().await;
    drop(vm);
    scratch.assert_nothing_left(id);
    assert!(err.contains("the guest powered off"), "{err}");
    assert!(!err.contains("contrast-agent: started"), "the agent must not have run: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_agent_stops_the_pod() {
    let scratch = Scratch::new();
    let mut config = scratch.config();
    let disk = scratch.dir.path().join("root.img");
    tamper::flip_agent_byte(&config.root_disk, &disk).expect("tampered copy");
    config.root_disk = disk;
    let err = refused(&scratch, &config, "agent-byte").await;
    assert!(
        err.contains("guest's last console line: \"[")
            && err
                .contains("] contrast-init: verity: /usr/bin/contrast-agent on the root partition fails verification"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_root_hash_stops_the_pod() {
    let scratch = Scratch::new();
    let mut config = scratch.config();
    let cmdline = std::fs::read_to_string(&config.cmdline).expect("cmdline");
    let start = cmdline.find("roothash=").expect("roothash on the command line") + "roothash=".len();
    let mut wrong = cmdline.clone();
    let digit = if &cmdline[start..start + 1] == "0" { "1" } else { "0" };
    wrong.replace_range(start..start + 1, digit);
    config.cmdline = scratch.dir.path().join("cmdline");
    std::fs::write(&config.cmdline, wrong).expect("write cmdline");
    let err = refused(&scratch, &config, "root-hash").await;
    assert!(err.contains("contrast-init: verity: the root partition does not verify against roothash="), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_hash_tree_stops_the_pod() {
    let scratch = Scratch::new();
    let mut config = scratch.config();
    let disk = scratch.dir.path().join("root.img");
    // Hash block 1 follows the superblock: the top of the tree, which every read checks.
    tamper::flip_byte(&config.root_disk, &disk, |d| Ok(tamper::partition_range(d, 2)?.start + 4096 + 77))
        .expect("tampered copy");
    config.root_disk = disk;
    let err = refused(&scratch, &config, "hash-tree").await;
    assert!(err.contains("contrast-init: verity: the root partition does not verify"), "{err}");
}
