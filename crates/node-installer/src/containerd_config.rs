//! Adding and removing our runtime handler in a containerd configuration, keeping everything
//! else — comments, order, formatting, other runtimes — as it was (`toml_edit`).

use anyhow::{bail, Context, Result};
use toml_edit::{value, Array, DocumentMut, Item, Table};

/// The shim's runtime type (containerd derives the binary name from it).
pub const RUNTIME_TYPE: &str = "io.containerd.contrast-cc.v2";

/// What our handler's table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    /// Absolute path of the shim binary as containerd sees it.
    pub runtime_path: String,
    /// Absolute path of the runtime-class config as the shim sees it.
    pub config_path: String,
}

/// The runtimes table's path for a config `version`.
fn runtimes_path(version: i64) -> Result<[&'static str; 4]> {
    match version {
        2 => Ok(["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"]),
        3 => Ok(["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"]),
        v => bail!("containerd config version {v} is not supported (supported: 2, 3)"),
    }
}

/// A config as text: parsed, with its version checked.
pub struct Config {
    doc: DocumentMut,
    version: i64,
}

impl Config {
    /// Parses `text`; `None` (no file) starts from a minimal version 2 config. A file without
    /// `version` is containerd's version 1 format unless it is empty.
    pub fn parse(text: Option<&str>) -> Result<Config> {
        let Some(text) = text else {
            let doc: DocumentMut = "version = 2\n".parse()?;
            return Ok(Config { doc, version: 2 });
        };
        let mut doc: DocumentMut = text.parse().context("not valid TOML")?;
        let version = match doc.get("version") {
            Some(v) => v.as_integer().context("`version` is not an integer")?,
            None if doc.iter().next().is_none() => {
                doc.insert("version", value(2));
                2
            }
            None => bail!(
                "no `version` key: this is a version 1 config, which is not supported; \
                 convert it with `containerd config migrate` (2.x) or add the version 2 layout"
            ),
        };
        runtimes_path(version)?;
        Ok(Config { doc, version })
    }

    /// The `imports` entries: drop-in files, the last component possibly a `*`/`?` pattern.
    pub fn imports(&self) -> Vec<String> {
        let Some(list) = self.doc.get("imports").and_then(Item::as_array) else { return Vec::new() };
        list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    }

    /// Whether an imported file's `text` has a table of the CRI plugin our runtime lives under:
    /// containerd 1.x puts each plugin table of an import in place of the main file's (it does
    /// not merge them), so our runtime would be gone.
    pub fn import_replaces_runtimes(&self, text: &str) -> bool {
        let plugin = runtimes_path(self.version).map_or("io.containerd.grpc.v1.cri", |p| p[1]);
        text.parse::<DocumentMut>().ok().is_some_and(|d| d.get("plugins").and_then(|p| p.get(plugin)).is_some())
    }

    pub fn to_text(&self) -> String {
        self.doc.to_string()
    }

    /// Adds or replaces our handler's table.
    pub fn set_handler(&mut self, h: &Handler) -> Result<()> {
        // Our tables go after everything that is there, so the existing text stays as it was.
        let end = max_position(self.doc.as_table()) + 1;
        let runtimes = self.runtimes_mut(true)?.context("runtimes table")?;
        let mut t = Table::new();
        t.set_position(end);
        t.decor_mut().set_prefix("\n");
        t.insert("runtime_type", value(RUNTIME_TYPE));
        t.insert("runtime_path", value(&h.runtime_path));
        let mut annotations = Array::new();
        annotations.push("io.katacontainers.*");
        t.insert("pod_annotations", value(annotations));
        t.insert("privileged_without_host_devices", value(true));
        let mut options = Table::new();
        options.set_position(end + 1);
        options.insert("ConfigPath", value(&h.config_path));
        t.insert("options", Item::Table(options));
        runtimes.insert(&h.name, Item::Table(t));
        Ok(())
    }

    /// containerd's `opt` directory as it sees it: containerd puts its `bin/` on the PATH it
    /// resolves shims with (the `io.containerd.internal.v1.opt` plugin, default `/opt/containerd`).
    pub fn opt_dir(&self) -> String {
        self.doc
            .get("plugins")
            .and_then(|p| p.get("io.containerd.internal.v1.opt"))
            .and_then(|o| o.get("path"))
            .and_then(|p| p.as_str())
            .unwrap_or("/opt/containerd")
            .to_owned()
    }

    /// Removes the handler's table; true if it was there.
    pub fn remove_handler(&mut self, name: &str) -> Result<bool> {
        Ok(self.runtimes_mut(false)?.is_some_and(|r| r.remove(name).is_some()))
    }

    /// Names of the configured runtimes.
    pub fn handlers(&self) -> Vec<String> {
        let Ok(path) = runtimes_path(self.version) else { return Vec::new() };
        let mut item = self.doc.as_item();
        for key in path {
            match item.get(key) {
                Some(i) => item = i,
                None => return Vec::new(),
            }
        }
        item.as_table_like().map(|t| t.iter().map(|(k, _)| k.to_owned()).collect()).unwrap_or_default()
    }

    /// The runtimes table, created (as implicit tables, which print no header of their own) when
    /// `create` is set.
    fn runtimes_mut(&mut self, create: bool) -> Result<Option<&mut dyn toml_edit::TableLike>> {
        let path = runtimes_path(self.version)?;
        let mut table: &mut dyn toml_edit::TableLike = self.doc.as_table_mut();
        for key in path {
            if table.get(key).is_none() {
                if !create {
                    return Ok(None);
                }
                let mut t = Table::new();
                t.set_implicit(true);
                table.insert(key, Item::Table(t));
            }
            let item = table.get_mut(key).context("just inserted")?;
            table =
                item.as_table_like_mut().with_context(|| format!("`{key}` in the containerd config is not a table"))?;
        }
        Ok(Some(table))
    }
}

/// The largest document position of any table under `t`.
fn max_position(t: &Table) -> usize {
    let mut max = t.position().unwrap_or(0);
    for (_, item) in t.iter() {
        match item {
            Item::Table(sub) => max = max.max(max_position(sub)),
            Item::ArrayOfTables(a) => {
                for sub in a.iter() {
                    max = max.max(max_position(sub));
                }
            }
            _ => {}
        }
    }
    max
}

/// True when two config texts mean the same (TOML values equal, formatting aside).
pub fn same_meaning(a: &str, b: &str) -> bool {
    match (a.parse::<toml::Table>(), b.parse::<toml::Table>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> Handler {
        Handler {
            name: "contrast-cc-insecure-0123abcd".into(),
            runtime_path: "/opt/contrast/contrast-cc-insecure-0123abcd/bin/containerd-shim-contrast-cc-v2".into(),
            config_path: "/opt/contrast/contrast-cc-insecure-0123abcd/etc/configuration.toml".into(),
        }
    }

    #[test]
    fn missing_file_starts_from_version_2() {
        let mut c = Config::parse(None).unwrap();
        c.set_handler(&handler()).unwrap();
        let text = c.to_text();
        let t: toml::Table = text.parse().unwrap();
        let r = &t["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["contrast-cc-insecure-0123abcd"];
        assert_eq!(r["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(r["privileged_without_host_devices"].as_bool(), Some(true));
        assert_eq!(r["options"]["ConfigPath"].as_str(), Some(handler().config_path.as_str()));
        assert!(text.starts_with("version = 2\n"), "{text}");
        assert!(!text.contains("[plugins]\n"), "intermediate tables stay implicit: {text}");
    }

    #[test]
    fn version_3_uses_the_runtime_plugin() {
        let mut c = Config::parse(Some("version = 3\n")).unwrap();
        c.set_handler(&handler()).unwrap();
        let t: toml::Table = c.to_text().parse().unwrap();
        assert!(t["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
            .get("contrast-cc-insecure-0123abcd")
            .is_some());
    }

    #[test]
    fn bad_configs_are_refused() {
        let err = |t: &str| Config::parse(Some(t)).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err("version = 99\n").contains("version 99 is not supported"));
        assert!(err("version = [\n").contains("not valid TOML"));
        assert!(err("[plugins.cri]\nx = 1\n").contains("version 1"));
        assert!(err("version = \"2\"\n").contains("not an integer"));
        assert!(Config::parse(Some("# nothing yet\n")).is_ok());
    }

    #[test]
    fn remove_restores_the_text() {
        let original = "version = 2\n# keep me\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let mut c = Config::parse(Some(original)).unwrap();
        c.set_handler(&handler()).unwrap();
        assert_eq!(c.handlers(), ["runc", "contrast-cc-insecure-0123abcd"]);
        assert!(c.remove_handler("contrast-cc-insecure-0123abcd").unwrap());
        assert_eq!(c.to_text(), original);
        assert!(!c.remove_handler("contrast-cc-insecure-0123abcd").unwrap());
    }

    #[test]
    fn same_meaning_ignores_formatting() {
        assert!(same_meaning("a = 1\n[b]\nc = 2\n", "a=1\nb.c = 2 # x\n"));
        assert!(!same_meaning("a = 1\n", "a = 2\n"));
    }
}
