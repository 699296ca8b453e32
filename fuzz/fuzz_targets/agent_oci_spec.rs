//! The guest agent's conversion of a `CreateContainer` OCI spec (protobuf, as the host sends
//! it) into the runtime spec it runs: refused or converted, never a panic.
#![no_main]

use contrast_agent_protocol::oci;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = oci::Spec::parse_from_bytes(data) else { return };
    let _ = contrast_agent::spec::convert("fuzz", &spec);
    if let Some(p) = spec.Process.as_ref() {
        let _ = contrast_agent::spec::convert_process(p);
    }
});
