//! PID 1 duties: mounts, kernel modules, the power button, zombie reaping, debug console.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

use crate::log;

/// Ordered list of kernel modules to load, written by the image builder.
const MODULE_LIST: &str = "/etc/contrast/modules";
/// `struct input_event` on x86_64: timeval (16) + type (2) + code (2) + value (4).
const INPUT_EVENT_SIZE: usize = 24;
/// linux/input-event-codes.h
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// What the agent reads from the (measured) kernel command line.
#[derive(Debug, Default)]
pub struct KernelCmdline {
    /// `contrast.diagnostics=1`: serve the diagnostics service (tests only).
    pub diagnostics: bool,
    /// `contrast.debug_console=1`: shell on the serial console.
    pub debug_console: bool,
}

impl KernelCmdline {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut out = KernelCmdline::default();
        for word in text.split_whitespace() {
            match word {
                "contrast.diagnostics=1" => out.diagnostics = true,
                "contrast.debug_console=1" => out.debug_console = true,
                _ => {}
            }
        }
        out
    }
}

pub fn setup_system() -> Result<KernelCmdline> {
    let mounts: [(&str, &str, &str, MsFlags); 5] = [
        ("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC),
        ("sysfs", "/sys", "sysfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
        ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
    ];
    for (source, target, fstype, flags) in mounts {
        mount(Some(source), target, Some(fstype), flags, None::<&str>)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    std::fs::create_dir_all("/dev/pts").context("creating /dev/pts")?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666"),
    )
    .context("mounting devpts")?;
    crate::cgroup::setup()?;
    contrast_init::modules::load_listed(Path::new(MODULE_LIST)).context("loading kernel modules")?;
    if let Err(e) = crate::network::loopback_up() {
        log!("loopback stays down: {e}");
    }
    watch_power_button();
    KernelCmdline::read()
}

/// Powers the VM off when the ACPI power button is pressed (QEMU `system_powerdown`).
fn watch_power_button() {
    let Ok(entries) = std::fs::read_dir("/dev/input") else {
        log!("no /dev/input: system_powerdown will not be honoured");
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("event")) {
            continue;
        }
        let Ok(mut dev) = File::open(&path) else { continue };
        std::thread::spawn(move || {
            let mut ev = [0u8; INPUT_EVENT_SIZE];
            while dev.read_exact(&mut ev).is_ok() {
                let kind = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                if kind == EV_KEY && code == KEY_POWER {
                    log!("power button pressed: powering off");
                    power_off();
                }
            }
        });
    }
}

/// An empty root with this agent bound read-only at `pause`: what a confidential pod's
/// sandbox container runs (as `/pause`), so no image is needed for it.
pub fn prepare_pause_root(root: &Path) -> Result<()> {
    let target = root.join("pause");
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(&target, b"").with_context(|| format!("creating {}", target.display()))?;
    let exe = std::fs::read_link("/proc/self/exe").context("finding this binary")?;
    mount(Some(&exe), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).context("binding the agent as pause")?;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .context("making pause read-only")?;
    Ok(())
}

pub fn power_off() {
    // Only fails without CAP_SYS_BOOT; then there is nothing better left to do.
    contrast_init::power::power_off();
}

pub fn spawn_debug_console() {
    if !Path::new("/bin/sh").exists() {
        log!("debug console requested but /bin/sh is missing");
        return;
    }
    log!("debug console enabled: shell on the serial console");
    if let Err(e) = std::process::Command::new("/bin/sh").spawn() {
        log!("debug console: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_flags_are_exact_words() {
        let c = KernelCmdline::parse("console=ttyS0 contrast.diagnostics=1 quiet");
        assert!(c.diagnostics);
        assert!(!c.debug_console);
        let c = KernelCmdline::parse("contrast.diagnostics=10 xcontrast.debug_console=1");
        assert!(!c.diagnostics && !c.debug_console);
    }
}
