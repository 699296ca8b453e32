//! The node installer's edit of containerd's config: any text is refused or edited so that
//! the result parses again, holds our handler, and loses it again on removal.
#![no_main]

use contrast_node_installer::containerd_config::{Config, Handler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut config) = Config::parse(Some(text)) else { return };
    let before = config.handlers();
    let h = Handler {
        name: "contrast-cc-fuzz".into(),
        runtime_path: "/opt/contrast/bin/containerd-shim-contrast-cc-v2".into(),
        config_path: "/opt/contrast/etc/configuration-insecure.toml".into(),
    };
    if config.set_handler(&h).is_err() {
        return;
    }
    let edited = config.to_text();
    let mut again = Config::parse(Some(&edited)).expect("the edited config parses again");
    assert!(again.handlers().contains(&h.name), "handler missing after the edit:\n{edited}");
    assert!(again.remove_handler(&h.name).expect("removal"));
    let mut after = again.handlers();
    let mut before = before;
    after.retain(|n| n != &h.name);
    before.retain(|n| n != &h.name);
    assert_eq!(after, before, "other handlers changed");
});
