//! `install` and `uninstall` on a node's file system.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::containerd_config::{same_meaning, Config, Handler};
use crate::payload::{Payload, QEMU, SHIM};

/// Where things are on the node, and how to restart containerd.
#[derive(Debug, Clone)]
pub struct Node {
    /// Where the installer sees the node's root file system (`/host` in the DaemonSet).
    pub host_root: PathBuf,
    /// Where containerd (and the shim) see that same root: `/` on a real node; a test that runs
    /// its own containerd against a temporary host root passes that directory.
    pub node_root: PathBuf,
    /// Node path of the directory holding one subdirectory per handler.
    pub install_base: PathBuf,
    /// Node path of the containerd config file to edit.
    pub containerd_config: PathBuf,
    /// For k3s: read the rendered config when the template does not exist yet.
    pub k3s_rendered: Option<PathBuf>,
    pub restart: Restart,
    /// QEMU to use when the payload ships none.
    pub qemu: PathBuf,
    /// `key=value` overrides of the runtime-class config (dotted TOML keys, TOML values).
    pub settings: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Restart {
    /// `sh -c <command>`.
    Command(String),
    /// systemd unit: over D-Bus, else `systemctl restart` run in PID 1's mount namespace.
    Systemd(String),
}

/// What an install or uninstall did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub files_written: usize,
    pub config_changed: bool,
    pub backup: Option<PathBuf>,
    pub restarted: bool,
}

impl Node {
    fn host(&self, node_path: &Path) -> PathBuf {
        self.host_root.join(node_path.strip_prefix("/").unwrap_or(node_path))
    }

    fn seen_by_containerd(&self, node_path: &Path) -> PathBuf {
        self.node_root.join(node_path.strip_prefix("/").unwrap_or(node_path))
    }

    fn handler_dir(&self, handler: &str) -> PathBuf {
        self.install_base.join(handler)
    }

    /// The node path of a path as containerd sees it.
    fn node_path_of(&self, seen: &Path) -> PathBuf {
        match seen.strip_prefix(&self.node_root) {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => seen.to_owned(),
        }
    }

    /// The shim (as containerd sees it) of the handler `config` lists, other than `except`,
    /// whose shim was written last (ties: the greater name): a re-run of an older release's
    /// installer, whose files are already there and so not written again, does not move
    /// containerd 1.6 back to its shim, and a directory no config names (an install undone)
    /// is not chosen.
    fn newest_shim(&self, config: &Config, except: Option<&str>) -> Result<Option<PathBuf>> {
        let mut newest: Option<(std::time::SystemTime, String)> = None;
        for handler in config.handlers() {
            if except == Some(handler.as_str()) {
                continue;
            }
            let shim = self.host(&self.handler_dir(&handler).join("bin").join(SHIM));
            let Ok(written) = std::fs::metadata(&shim).and_then(|m| m.modified()) else { continue };
            if newest.as_ref().is_none_or(|(t, name)| (written, &handler) > (*t, name)) {
                newest = Some((written, handler));
            }
        }
        Ok(newest.map(|(_, handler)| self.seen_by_containerd(&self.handler_dir(&handler).join("bin").join(SHIM))))
    }

    /// Host path of `<containerd opt dir>/bin/<shim>`.
    fn shim_link(&self, config: &Config) -> PathBuf {
        self.host(&self.node_path_of(Path::new(&config.opt_dir())).join("bin").join(SHIM))
    }
}

/// How long a systemd restart of containerd may take to end with the unit active again.
const RESTART_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The lock an install or uninstall holds from reading containerd's config until it has
/// restarted containerd (node path; on the node's `/run`, so a refused install leaves nothing
/// in the install base).
const LOCK_FILE: &str = "/run/contrast-node-installer.lock";

/// Takes the node's installer lock (waiting for another installer to finish): two at once —
/// two runtime classes' DaemonSets, an old and a new release's after a reboot — would each
/// write back the containerd config it read, and the last write would drop the other's
/// handler while both reported success.
fn lock_node(node: &Node) -> Result<std::fs::File> {
    let open = |path: &Path| -> Result<std::fs::File> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))
    };
    let mut path = node.host(Path::new(LOCK_FILE));
    let file = match open(&path) {
        Ok(f) => f,
        // The node's / mounted without its /run (not recursively, so a read-only /run of the
        // root file system): beside the install base instead.
        Err(e) => {
            path = node.host(&node.install_base).with_extension("installer.lock");
            open(&path).map_err(|e2| e2.context(format!("(and {e:#})")))?
        }
    };
    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
        eprintln!("waiting for another installer on this node (lock {})", path.display());
    }
    file.lock().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

pub fn install(node: &Node, payload: &Payload) -> Result<Outcome> {
    let _lock = lock_node(node)?;
    // Everything that can refuse does so before the first write.
    let dir = node.handler_dir(&payload.handler);
    let runtime_config = render_config(node, payload)?;
    let handler = Handler {
        name: payload.handler.clone(),
        runtime_path: node.seen_by_containerd(&dir.join("bin").join(SHIM)).display().to_string(),
        config_path: node.seen_by_containerd(&dir.join("etc/configuration.toml")).display().to_string(),
    };
    let (config_file, original) = read_containerd_config(node)?;
    let mut config =
        Config::parse(original.as_deref()).with_context(|| format!("containerd config {}", config_file.display()))?;
    config.set_handler(&handler)?;
    for file in imports_replacing_runtimes(node, &config, &config_file) {
        eprintln!(
            "warning: {} (imported by {}) has its own table of the CRI plugin: containerd 1.x puts it in \
             place of the main file's, without runtime {}; add the runtime there, or move that table",
            file.display(),
            config_file.display(),
            handler.name
        );
    }
    let updated = config.to_text();

    let mut out = Outcome::default();
    let host_dir = node.host(&dir);
    let mut wrote_shim = false;
    for f in &payload.files {
        let data = std::fs::read(&f.source).with_context(|| format!("reading {}", f.source.display()))?;
        if write_if_changed(&host_dir.join(&f.rel), &data, f.mode)? {
            out.files_written += 1;
            wrote_shim |= f.rel == format!("bin/{SHIM}");
        }
    }
    if write_if_changed(&host_dir.join("etc/configuration.toml"), runtime_config.as_bytes(), 0o644)? {
        out.files_written += 1;
    }
    // containerd 1.6 ignores `runtime_path` when it starts a sandbox's shim and looks the binary
    // up by name on its PATH, which includes its opt dir's bin/: link the newest installed
    // handler's shim there (1.7 and later use `runtime_path`, so each handler keeps its own).
    // Its own shim when this run wrote it (whatever the clock says of the others).
    let newest = if wrote_shim {
        PathBuf::from(&handler.runtime_path)
    } else {
        node.newest_shim(&config, None)?.unwrap_or_else(|| PathBuf::from(&handler.runtime_path))
    };
    if link_if_changed(&node.shim_link(&config), &newest)? {
        out.files_written += 1;
    }
    let target = node.host(&node.containerd_config);
    let existing = std::fs::read_to_string(&target).ok();
    if existing.as_deref().is_some_and(|e| same_meaning(e, &updated)) {
        return Ok(out);
    }
    out.backup = replace_file(&target, &updated)?;
    out.config_changed = true;
    restart_or_undo(node, &target, existing.as_deref(), out.backup.as_deref())?;
    out.restarted = true;
    Ok(out)
}

/// The files `config` imports (node paths resolved below the host root, a `*`/`?` pattern
/// in the last component expanded) that would replace the table our runtime is in.
fn imports_replacing_runtimes(node: &Node, config: &Config, config_file: &Path) -> Vec<PathBuf> {
    let dir = config_file.parent().unwrap_or(Path::new("/"));
    let mut found = Vec::new();
    for import in config.imports() {
        // Relative to the main file's directory, as containerd takes them.
        let path = if import.starts_with('/') { node.host(Path::new(&import)) } else { dir.join(&import) };
        let (Some(parent), Some(pattern)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            continue;
        };
        let files: Vec<PathBuf> = if pattern.contains(['*', '?']) {
            let Ok(entries) = std::fs::read_dir(parent) else { continue };
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard_match(pattern, n)))
                .map(|e| e.path())
                .collect();
            names.sort();
            names
        } else {
            vec![path.clone()]
        };
        for file in files {
            if std::fs::read_to_string(&file).is_ok_and(|text| config.import_replaces_runtimes(&text)) {
                found.push(file);
            }
        }
    }
    found
}

/// Shell-style `*` and `?` matching of a whole file name.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

/// Restarts containerd after `target` was changed. If that fails, the old config goes back
/// (a re-run then sees the change, and restarts, again) and containerd is restarted once more
/// with it: a restart that stopped containerd and could not start it with the new config
/// must not leave it down.
fn restart_or_undo(node: &Node, target: &Path, existing: Option<&str>, backup: Option<&Path>) -> Result<()> {
    let Err(e) = restart(node) else { return Ok(()) };
    if let Err(u) = restore(target, existing, backup) {
        return Err(e.context(format!("and restoring {} failed: {u:#}", target.display())));
    }
    match restart(node) {
        Ok(()) => Err(
            e.context(format!("containerd config {} left as it was (containerd restarted with it)", target.display()))
        ),
        Err(again) => Err(e.context(format!(
            "containerd config {} left as it was, and restarting containerd with it failed too: {again:#}",
            target.display()
        ))),
    }
}

/// node-feature-discovery's local feature directory (node path): a file there becomes node
/// labels `feature.node.kubernetes.io/<name>=<value>`.
pub const NFD_FEATURES_DIR: &str = "/etc/kubernetes/node-feature-discovery/features.d";

/// The node label saying this node can run `handler` (the RuntimeClass selects on it).
pub fn node_label(handler: &str) -> String {
    format!("feature.node.kubernetes.io/{handler}")
}

/// Writes the feature file that labels the node as able to run `handler` (only after its
/// check passed).
pub fn write_node_feature(node: &Node, handler: &str) -> Result<()> {
    let dir = node.host(Path::new(NFD_FEATURES_DIR));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(handler);
    std::fs::write(&path, format!("{handler}=true\n")).with_context(|| format!("writing {}", path.display()))
}

/// Removes the feature file that labels the node as able to run `handler` (gone already is
/// fine).
pub fn remove_node_feature(node: &Node, handler: &str) -> Result<()> {
    let feature = node.host(&Path::new(NFD_FEATURES_DIR).join(handler));
    match std::fs::remove_file(&feature) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", feature.display())),
    }
}

/// The processes started from `handler`'s directory — its shims, each serving pods of the
/// handler — as (pid, command line), from `/proc` (the node's, with `hostPID`). A process's
/// binary is read through `/proc/<pid>/exe`, which names the node's path even from the
/// installer's mount namespace (and the host path when they are one).
pub fn handler_processes(node: &Node, handler: &str) -> Vec<(i32, String)> {
    let dirs = [node.seen_by_containerd(&node.handler_dir(handler)), node.host(&node.handler_dir(handler))];
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else { continue };
        if dirs.iter().any(|d| exe.starts_with(d)) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let words: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            found.push((pid, words.join(" ")));
        }
    }
    found
}

/// Removes `handler` from the node. Refused while shims of it run (unless `force`): their
/// pods would outlive the files containerd's cleanup of a dead shim needs (`<shim> delete`).
pub fn uninstall(node: &Node, handler: &str, force: bool) -> Result<Outcome> {
    let _lock = lock_node(node)?;
    let running = handler_processes(node, handler);
    if !running.is_empty() && !force {
        let list: Vec<String> = running.iter().map(|(pid, cmd)| format!("pid {pid}: {cmd}")).collect();
        bail!(
            "{handler} still runs on this node ({}); delete its pods first (--force removes it anyway)",
            list.join("; ")
        );
    }
    remove_node_feature(node, handler)?;
    let (config_file, original) = read_containerd_config(node)?;
    let mut out = Outcome::default();
    let mut config =
        Config::parse(original.as_deref()).with_context(|| format!("containerd config {}", config_file.display()))?;
    // k3s without a template yet: the rendered file is only read (for the opt dir), never written.
    let from_target = config_file == node.host(&node.containerd_config);
    if from_target && config.remove_handler(handler)? {
        // containerd restarted without the handler before its files go; if that fails, the
        // handler stays (config and files), and a re-run tries again.
        let existing = std::fs::read_to_string(&config_file).ok();
        out.backup = replace_file(&config_file, &config.to_text())?;
        out.config_changed = true;
        restart_or_undo(node, &config_file, existing.as_deref(), out.backup.as_deref())?;
        out.restarted = true;
    }
    let link = node.shim_link(&config);
    let ours = node.seen_by_containerd(&node.handler_dir(handler));
    // The handlers still installed keep a shim on containerd 1.6's PATH (re-pointed before
    // this one's goes, so the link never names a removed shim).
    if std::fs::read_link(&link).is_ok_and(|target| target.starts_with(&ours)) {
        match node.newest_shim(&config, Some(handler))? {
            Some(other) => link_if_changed(&link, &other)?,
            None => {
                std::fs::remove_file(&link).map(|_| true).with_context(|| format!("removing {}", link.display()))?
            }
        };
        out.files_written += 1;
    }
    let dir = node.host(&node.handler_dir(handler));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        out.files_written += 1;
    }
    Ok(out)
}

/// The config file to edit (host path) and its text: the file itself, or for k3s the rendered
/// config when the template does not exist yet; `None` when neither exists.
fn read_containerd_config(node: &Node) -> Result<(PathBuf, Option<String>)> {
    let target = node.host(&node.containerd_config);
    let mut candidates = vec![target.clone()];
    if let Some(rendered) = &node.k3s_rendered {
        candidates.push(node.host(rendered));
    }
    for path in candidates {
        // A link (NixOS keeps /etc files as links into its store): seen from the installer's
        // container an absolute one dangles and would read as "no config", and the new file
        // would replace the link, dropping every setting. The file it names is to be edited.
        if let Ok(target) = std::fs::read_link(&path) {
            bail!(
                "containerd config {} is a symbolic link (to {}); name the file itself with --containerd-config",
                path.display(),
                target.display()
            );
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((path, Some(text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok((target, None))
}

/// The runtime-class config: the payload's template with every file path pointing into the
/// handler's directory (as the shim will see it), then the overrides; validated.
fn render_config(node: &Node, payload: &Payload) -> Result<String> {
    let dir = node.seen_by_containerd(&node.handler_dir(&payload.handler));
    let share = |name: &str| dir.join("share").join(name).display().to_string();
    let mut doc: toml_edit::DocumentMut = payload.template.parse().context("payload config template")?;
    let qemu = &mut doc["hypervisor"]["qemu"];
    let qemu_path = if payload.has(&format!("bin/{QEMU}")) {
        dir.join("bin").join(QEMU).display().to_string()
    } else {
        node.qemu.display().to_string()
    };
    qemu["path"] = toml_edit::value(qemu_path);
    // OVMF (snp, tdx) boots only the bzImage; the insecure platform's direct boot prefers the
    // ELF kernel (faster under TCG).
    let confidential = payload.platform != "insecure";
    let kernel = if !confidential && payload.has("share/vmlinux") { "vmlinux" } else { "vmlinuz" };
    if !payload.has(&format!("share/{kernel}")) {
        anyhow::bail!("payload has no share/{kernel} for platform {}", payload.platform);
    }
    qemu["kernel"] = toml_edit::value(share(kernel));
    if let Some(firmware) = firmware_of(&payload.platform) {
        if !payload.has(&format!("share/{firmware}")) {
            anyhow::bail!("payload has no share/{firmware}, the firmware platform {} boots", payload.platform);
        }
        qemu["firmware"] = toml_edit::value(share(firmware));
    }
    qemu["initrd"] = toml_edit::value(share("initrd.img"));
    qemu["image"] = toml_edit::value(share("root.img"));
    qemu["kernel_params_file"] = toml_edit::value(share("cmdline"));
    for setting in &node.settings {
        apply_setting(&mut doc, setting)?;
    }
    let text = doc.to_string();
    contrast_config::RuntimeClassConfig::parse(&text, Path::new("configuration.toml"))
        .context("the runtime-class config the installer would write is invalid")?;
    Ok(text)
}

/// The firmware file a confidential platform boots (`scripts/fetch-firmware.sh` names).
fn firmware_of(platform: &str) -> Option<&'static str> {
    match platform {
        "snp" => Some("OVMF.amdsev.fd"),
        "tdx" => Some("OVMF.inteltdx.fd"),
        _ => None,
    }
}

/// `a.b.c=value`: value as TOML (`"tcg"`, `512`, `true`), or a bare string.
pub fn apply_setting(doc: &mut toml_edit::DocumentMut, setting: &str) -> Result<()> {
    let (key, raw) = setting.split_once('=').with_context(|| format!("--set {setting:?}: expected KEY=VALUE"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {setting:?}: bad key");
    }
    let value: toml_edit::Value = raw.trim().parse().unwrap_or_else(|_| toml_edit::Value::from(raw.trim().to_owned()));
    let mut item = doc.as_item_mut();
    for part in &parts[..parts.len() - 1] {
        let table = item.as_table_like_mut().with_context(|| format!("--set {key}: {part} is not a table"))?;
        if table.get(part).is_none() {
            table.insert(part, toml_edit::Item::Table(toml_edit::Table::new()));
        }
        item = table.get_mut(part).context("just inserted")?;
    }
    let last = parts[parts.len() - 1];
    item.as_table_like_mut()
        .with_context(|| format!("--set {key}: not under a table"))?
        .insert(last, toml_edit::value(value));
    Ok(())
}

/// Writes `data` to `path` (temp file in the same directory, then rename) unless it already
/// holds exactly that with that mode. Returns whether it wrote.
fn write_if_changed(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o7777 == mode && std::fs::read(path).is_ok_and(|d| d == data) {
            return Ok(false);
        }
    }
    let dir = path.parent().context("path without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = write_temp(dir, path, data)?;
    let done = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("installing {}", path.display()));
    }
    Ok(true)
}

/// Points the symlink `link` at `target` (replacing what is there) unless it already does.
fn link_if_changed(link: &Path, target: &Path) -> Result<bool> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let dir = link.parent().context("link without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{SHIM}.contrast-tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("installing {}", link.display()));
    }
    Ok(true)
}

fn write_temp(dir: &Path, path: &Path, data: &[u8]) -> Result<PathBuf> {
    let name = path.file_name().context("path without a name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.contrast-tmp-{}", std::process::id()));
    // Readable by its owner only until its mode is set: a config with registry credentials
    // (0600) must not be world-readable for a moment, nor stay so after a crash.
    let created = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp);
    let result = created.and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    Ok(tmp)
}

/// Replaces the containerd config: temp file beside it, backup `<file>.<unix-seconds>.bak` of
/// the old one (if any), rename. On failure nothing new is left behind.
fn replace_file(path: &Path, text: &str) -> Result<Option<PathBuf>> {
    let dir = path.parent().context("config path without a parent")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let old = std::fs::metadata(path).ok();
    let tmp = write_temp(dir, path, text.as_bytes())?;
    let mode = old.as_ref().map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut backup = None;
    let result = (|| -> Result<()> {
        if let Some(m) = &old {
            std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if old.is_some() {
            let b = backup_name(path);
            std::fs::copy(path, &b).with_context(|| format!("backing up to {}", b.display()))?;
            backup = Some(b.clone());
            // `copy` keeps the mode; the owner too, as the config's.
            if let Some(m) = &old {
                std::os::unix::fs::chown(&b, Some(m.uid()), Some(m.gid()))?;
            }
        }
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        if let Some(b) = &backup {
            let _ = std::fs::remove_file(b);
        }
        return Err(e);
    }
    Ok(backup)
}

/// Puts `old` back at `path` (or removes `path` if there was no file) and drops `backup`.
fn restore(path: &Path, old: Option<&str>, backup: Option<&Path>) -> Result<()> {
    match old {
        Some(text) => {
            if let Some(extra) = replace_file(path, text)? {
                std::fs::remove_file(extra)?;
            }
        }
        None => std::fs::remove_file(path)?,
    }
    if let Some(b) = backup {
        std::fs::remove_file(b)?;
    }
    Ok(())
}

fn backup_name(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = path.display().to_string();
    let first = PathBuf::from(format!("{base}.{secs}.bak"));
    if !first.exists() {
        return first;
    }
    (1..).map(|n| PathBuf::from(format!("{base}.{secs}-{n}.bak"))).find(|p| !p.exists()).unwrap_or(first)
}

fn restart(node: &Node) -> Result<()> {
    match &node.restart {
        Restart::Command(cmd) => {
            let status = Command::new("sh").args(["-c", cmd]).status().context("running the restart command")?;
            if !status.success() {
                bail!("restart command {cmd:?} failed ({status})");
            }
            Ok(())
        }
        Restart::Systemd(unit) => {
            let bus = node.host(Path::new("/run/dbus/system_bus_socket"));
            match crate::systemd::restart_unit(&bus, unit, RESTART_TIMEOUT) {
                Ok(()) => Ok(()),
                // The restart ran and containerd did not come back: restarting it again the
                // other way would only fail again (and count towards systemd's start limit).
                Err(crate::systemd::RestartError::Failed(e)) => Err(e.context(format!("restarting {unit} over D-Bus"))),
                Err(crate::systemd::RestartError::NotStarted(dbus)) => {
                    let fallback = match systemctl_in_pid1_mount_namespace(&["restart", unit]) {
                        Ok(out) if out.status.success() => return Ok(()),
                        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!("restarting {unit}: over D-Bus: {dbus:#}; with systemctl in PID 1's mount namespace: {fallback}")
                }
            }
        }
    }
}

/// Runs the node's `systemctl` (what `nsenter -t 1 -m systemctl` does): the child joins PID 1's
/// mount namespace before exec, so the binary and its libraries are the node's. Needs the host
/// PID namespace (`hostPID: true` in the DaemonSet) and CAP_SYS_ADMIN.
fn systemctl_in_pid1_mount_namespace(args: &[&str]) -> Result<std::process::Output> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open("/proc/1/ns/mnt").context("opening /proc/1/ns/mnt")?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("systemctl");
    cmd.args(args);
    // SAFETY: setns is async-signal-safe and the forked child is single-threaded.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().context("running systemctl in PID 1's mount namespace")
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn import_patterns_match_whole_names() {
        for (pattern, name) in [("*.toml", "99-nvidia.toml"), ("*", "x"), ("a?c.toml", "abc.toml"), ("x*y*z", "xaybz")]
        {
            assert!(wildcard_match(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [("*.toml", "a.toml.bak"), ("a?c", "ac"), ("abc", "abcd"), ("x*y", "xz")] {
            assert!(!wildcard_match(pattern, name), "{pattern} {name}");
        }
    }
}
