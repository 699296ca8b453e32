//! Restarting a systemd unit over the system D-Bus (`org.freedesktop.systemd1.Manager.RestartUnit`).
//!
//! `RestartUnit` only queues the restart job and returns; `systemctl restart` waits for that
//! job and fails if the unit did not come back. So does [`restart_unit`]: it waits until the
//! job has ended (its object is gone) and then requires the unit to be `active` — a
//! containerd that does not start with the new config is a failed restart, not a success.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// How often the job and the unit are looked at.
const POLL: Duration = Duration::from_millis(200);

pub fn restart_unit(bus_socket: &Path, unit: &str, timeout: Duration) -> Result<()> {
    if !bus_socket.exists() {
        bail!("no system bus at {}", bus_socket.display());
    }
    let address = format!("unix:path={}", bus_socket.display());
    let conn = zbus::blocking::connection::Builder::address(address.as_str())?
        .build()
        .with_context(|| format!("connecting to {address}"))?;
    restart_on(&conn, unit, timeout)
}

fn restart_on(conn: &zbus::blocking::Connection, unit: &str, timeout: Duration) -> Result<()> {
    let manager = zbus::blocking::Proxy::new(conn, SYSTEMD, MANAGER_PATH, MANAGER)?;
    let job: OwnedObjectPath =
        manager.call("RestartUnit", &(unit, "replace")).with_context(|| format!("RestartUnit {unit}"))?;
    let deadline = Instant::now() + timeout;
    while job_exists(conn, &job) {
        if Instant::now() > deadline {
            bail!("the restart of {unit} did not end within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
    let path: OwnedObjectPath = manager.call("GetUnit", &(unit,)).with_context(|| format!("GetUnit {unit}"))?;
    let unit_props = zbus::blocking::Proxy::new(conn, SYSTEMD, path.as_ref(), PROPERTIES)?;
    let state: OwnedValue = unit_props
        .call("Get", &("org.freedesktop.systemd1.Unit", "ActiveState"))
        .with_context(|| format!("the state of {unit}"))?;
    let state = String::try_from(state).with_context(|| format!("the state of {unit}"))?;
    if state != "active" {
        bail!("{unit} is {state} after its restart (its journal says why)");
    }
    Ok(())
}

/// Whether the job object is still there (systemd removes it when the job has ended).
fn job_exists(conn: &zbus::blocking::Connection, job: &OwnedObjectPath) -> bool {
    let Ok(props) = zbus::blocking::Proxy::new(conn, SYSTEMD, job.as_ref(), PROPERTIES) else { return false };
    props.call::<_, _, OwnedValue>("Get", &("org.freedesktop.systemd1.Job", "State")).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// systemd's side of a restart, as far as [`restart_on`] uses it: `RestartUnit` returns a
    /// job that ends a little later, leaving the unit `active` or `failed`.
    struct FakeManager {
        comes_back: bool,
        job_done: Arc<AtomicBool>,
        state: Arc<std::sync::Mutex<String>>,
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl FakeManager {
        fn restart_unit(&self, _unit: &str, _mode: &str) -> OwnedObjectPath {
            let (done, state, comes_back) = (self.job_done.clone(), self.state.clone(), self.comes_back);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                *state.lock().expect("state") = if comes_back { "active" } else { "failed" }.into();
                done.store(true, Ordering::SeqCst);
            });
            OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").expect("path")
        }

        fn get_unit(&self, _unit: &str) -> OwnedObjectPath {
            OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/containerd_2eservice").expect("path")
        }
    }

    struct FakeJob(Arc<AtomicBool>);

    #[zbus::interface(name = "org.freedesktop.systemd1.Job")]
    impl FakeJob {
        #[zbus(property)]
        fn state(&self) -> zbus::fdo::Result<String> {
            if self.0.load(Ordering::SeqCst) {
                // What a removed object answers.
                return Err(zbus::fdo::Error::UnknownObject("no such job".into()));
            }
            Ok("running".into())
        }
    }

    struct FakeUnit(Arc<std::sync::Mutex<String>>);

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl FakeUnit {
        #[zbus(property)]
        fn active_state(&self) -> String {
            self.0.lock().expect("state").clone()
        }
    }

    /// A private bus (dbus-daemon) with the fake systemd on it; the restart's outcome.
    fn restart_with(comes_back: bool) -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("bus");
        let mut daemon = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", &format!("--address=unix:path={}", socket.display())])
            .spawn()
            .expect("dbus-daemon (Debian's dbus-daemon package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let address = format!("unix:path={}", socket.display());
        let (done, state) = (Arc::new(AtomicBool::new(false)), Arc::new(std::sync::Mutex::new("active".to_owned())));
        let manager = FakeManager { comes_back, job_done: done.clone(), state: state.clone() };
        let _systemd = zbus::blocking::connection::Builder::address(address.as_str())
            .and_then(|b| b.name(SYSTEMD))
            .and_then(|b| b.serve_at(MANAGER_PATH, manager))
            .and_then(|b| b.serve_at("/org/freedesktop/systemd1/job/1", FakeJob(done)))
            .and_then(|b| b.serve_at("/org/freedesktop/systemd1/unit/containerd_2eservice", FakeUnit(state)))
            .and_then(|b| b.build())
            .expect("the fake systemd on the bus");
        let result = restart_unit(&socket, "containerd.service", Duration::from_secs(10));
        let _ = daemon.kill();
        let _ = daemon.wait();
        result
    }

    #[test]
    fn a_restart_waits_for_its_job_and_needs_the_unit_active() {
        restart_with(true).expect("the unit came back");
        let err = restart_with(false).expect_err("the unit did not come back");
        assert!(format!("{err:#}").contains("containerd.service is failed after its restart"), "{err:#}");
    }
}
