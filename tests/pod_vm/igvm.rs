//! Booting from the IGVM file: the image's `pod.igvm` (kernel, initrd and command line inside,
//! no firmware) loaded by the project-built QEMU (`scripts/build-qemu-igvm.sh`); the agent
//! answers, the memory map is the one QEMU wrote at launch, and the root disk is still
//! verified against the root hash on the file's command line.

use contrast_tests::{health_check, image_dir, tamper, ttrpc_client, TestConfig};

use crate::verity::refused;
use crate::{launch, Scratch};

fn igvm_config(scratch: &Scratch) -> TestConfig {
    TestConfig::igvm(&image_dir().expect("pod-VM image"), &scratch.state_root()).expect("the IGVM-capable QEMU")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_boots_from_the_igvm_file_and_stops() {
    let scratch = Scratch::new();
    let test_config = igvm_config(&scratch);
    let cmdline = std::fs::read_to_string(&test_config.cmdline).expect("the image's cmdline");
    let config = scratch.load(&test_config);
    let vm = launch(&scratch, &config, "igvm").await.expect("pod VM launches from pod.igvm");
    let client = ttrpc_client(vm.dial_agent().await.expect("agent reachable over hybrid vsock"));
    assert_eq!(health_check(&client).await.expect("Health/Check"), "SERVING");
    drop(client);

    let console = std::fs::read_to_string(vm.state_dir().join("console.log")).expect("console log");
    // The command line the kernel got is the one built into the file, root hash included.
    assert!(console.contains(&format!("Command line: {}", cmdline.trim())), "{console}");
    // The e820 map is QEMU's for this VM's size (512 MiB), not a constant in the file.
    assert!(console.contains("BIOS-e820: [mem 0x0000000000000000-0x000000001fffffff] usable"), "{console}");
    assert!(console.contains("contrast-init: opened /dev/vda1"), "{console}");

    let exit = vm.stop().await;
    assert!(exit.expected, "{exit}");
    scratch.assert_nothing_left("igvm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_root_disk_stops_an_igvm_pod() {
    let scratch = Scratch::new();
    let mut config = igvm_config(&scratch);
    let disk = scratch.dir.path().join("root.img");
    tamper::flip_agent_byte(&config.root_disk, &disk).expect("tampered copy");
    config.root_disk = disk;
    let err = refused(&scratch, &config, "igvm-agent-byte").await;
    assert!(
        err.contains("contrast-init: verity: /usr/bin/contrast-agent on the root partition fails verification"),
        "{err}"
    );
}

/// The config check that `igvm` on snp keeps the file's guest policy and C-bit knows them: a
/// config repeating what the built `pod-snp.igvm` carries (its reference values) loads, and
/// one that differs in either is refused.
#[test]
fn snp_igvm_policy_and_c_bit_are_the_ones_the_config_expects() {
    let image = image_dir().expect("pod-VM image");
    let refs = std::fs::read_to_string(image.join("reference-values.json")).expect("reference values");
    let refs: serde_json::Value = serde_json::from_str(&refs).expect("reference values are JSON");
    let snp = &refs["igvm"]["snp"];
    let policy = snp["policy"].as_str().and_then(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).ok());
    let (policy, cbitpos) = (policy.expect("the file's policy"), snp["cbitpos"].as_u64().expect("the file's C-bit"));
    let config = |policy: u64, cbitpos: u64| {
        format!(
            "[hypervisor.qemu]\nplatform = \"snp\"\npath = \"/q\"\nigvm = \"{}\"\ncpu_model = \"EPYC-v4\"\n\
             default_maxvcpus = 1\nsnp_guest_policy = {policy}\ncbitpos = {cbitpos}\n",
            image.join("pod-snp.igvm").display()
        )
    };
    let origin = image.join("configuration.toml");
    contrast_config::RuntimeClassConfig::parse(&config(policy, cbitpos), &origin).expect("the file's own values");
    for (p, c) in [(policy ^ 1, cbitpos), (policy, cbitpos - 4)] {
        let err = contrast_config::RuntimeClassConfig::parse(&config(p, c), &origin).expect_err("another value");
        assert!(err.to_string().contains(&format!("{policy:#x}")), "{err}");
    }
}
