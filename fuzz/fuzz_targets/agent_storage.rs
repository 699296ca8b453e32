//! The guest agent's reading of a storage (protobuf `Storage`, as the host sends it): what it
//! would mount is decided without touching the system, and anything it accepts stays where
//! it must: an absolute mount point without `..`, one mount option per option given.
#![no_main]

use std::path::{Component, Path};

use contrast_agent::storage::{plan, Plan};
use contrast_agent_protocol::agent::Storage;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn clean(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = Storage::parse_from_bytes(data) else { return };
    let Ok(planned) = plan(&s) else { return };
    assert!(clean(&planned.target), "mount point {:?}", planned.target);
    if let Plan::Mount { data, dirs, .. } = &planned.plan {
        let items = if data.is_empty() { 0 } else { data.split(',').count() };
        assert!(items <= s.options.len(), "options {:?} became mount data {data:?}", s.options);
        for d in dirs {
            assert!(clean(d), "creates {d:?}");
        }
    }
});
