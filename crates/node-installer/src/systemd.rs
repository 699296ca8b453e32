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

/// Why a restart over D-Bus failed.
#[derive(Debug)]
pub enum RestartError {
    /// No restart was started: no bus, no systemd on it, the call refused. Another way to
    /// restart may work.
    NotStarted(anyhow::Error),
    /// The restart ran and the unit did not come back (or it could not be told whether it
    /// did): another restart would only fail again.
    Failed(anyhow::Error),
}

pub fn restart_unit(bus_socket: &Path, unit: &str, timeout: Duration) -> std::result::Result<(), RestartError> {
    let started = || -> Result<(zbus::blocking::Connection, OwnedObjectPath)> {
        if !bus_socket.exists() {
            bail!("no system bus at {}", bus_socket.display());
        }
        let address = format!("unix:path={}", bus_socket.display());
        let conn = zbus::blocking::connection::Builder::address(address.as_str())?
            .build()
            .with_context(|| format!("connecting to {address}"))?;
        let manager = zbus::blocking::Proxy::new(&conn, SYSTEMD, MANAGER_PATH, MANAGER)?;
        let job: OwnedObjectPath =
            manager.call("RestartUnit", &(unit, "replace")).with_context(|| format!("RestartUnit {unit}"))?;
        Ok((conn, job))
    };
    let (conn, job) = started().map_err(RestartError::NotStarted)?;
    wait_active(&conn, unit, &job, timeout).map_err(RestartError::Failed)
}

/// Waits until `job` has ended, then requires `unit` to be active.
fn wait_active(conn: &zbus::blocking::Connection, unit: &str, job: &OwnedObjectPath, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while job_exists(conn, job).with_context(|| format!("the restart job of {unit}"))? {
        if Instant::now() > deadline {
            bail!("the restart of {unit} did not end within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
    let manager = zbus::blocking::Proxy::new(conn, SYSTEMD, MANAGER_PATH, MANAGER)?;
    // LoadUnit, not GetUnit: a unit that failed may have been unloaded meanwhile.
    let path: OwnedObjectPath = manager.call("LoadUnit", &(unit,)).with_context(|| format!("LoadUnit {unit}"))?;
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

/// Whether the job object is still there: systemd removes it when the job has ended, and
/// the bus then answers "unknown object". Any other error is an error.
fn job_exists(conn: &zbus::blocking::Connection, job: &OwnedObjectPath) -> Result<bool> {
    let props = zbus::blocking::Proxy::new(conn, SYSTEMD, job.as_ref(), PROPERTIES)?;
    match props.call::<_, _, OwnedValue>("Get", &("org.freedesktop.systemd1.Job", "State")) {
        Ok(_) => Ok(true),
        Err(zbus::Error::MethodError(name, _, _)) if GONE.contains(&name.as_str()) => Ok(false),
        Err(zbus::Error::FDO(e)) if matches!(*e, zbus::fdo::Error::UnknownObject(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What the bus answers for an object (or its interface) that is not there.
const GONE: [&str; 3] = [
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownMethod",
];

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

        fn load_unit(&self, _unit: &str) -> OwnedObjectPath {
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
        // The socket can be there a moment before the daemon listens on it.
        let mut fake = None;
        let mut parts = Some((FakeManager { comes_back, job_done: done.clone(), state: state.clone() }, done, state));
        while fake.is_none() && Instant::now() < deadline {
            let Ok(builder) = zbus::blocking::connection::Builder::address(address.as_str()) else { break };
            let Ok(conn) = builder.build() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let (manager, done, state) = parts.take().expect("served once");
            {
                let server = conn.object_server();
                server.at(MANAGER_PATH, manager).expect("manager");
                server.at("/org/freedesktop/systemd1/job/1", FakeJob(done)).expect("job");
                server.at("/org/freedesktop/systemd1/unit/containerd_2eservice", FakeUnit(state)).expect("unit");
            }
            conn.request_name(SYSTEMD).expect("systemd's name");
            fake = Some(conn);
        }
        assert!(fake.is_some(), "the fake systemd on the bus");
        let result = restart_unit(&socket, "containerd.service", Duration::from_secs(10));
        let _ = daemon.kill();
        let _ = daemon.wait();
        result.map_err(|e| match e {
            RestartError::NotStarted(e) | RestartError::Failed(e) => e,
        })
    }

    #[test]
    fn a_restart_waits_for_its_job_and_needs_the_unit_active() {
        restart_with(true).expect("the unit came back");
        let err = restart_with(false).expect_err("the unit did not come back");
        assert!(format!("{err:#}").contains("containerd.service is failed after its restart"), "{err:#}");
    }

    #[test]
    fn no_bus_is_a_restart_not_started() {
        let err = restart_unit(Path::new("/nonexistent/bus"), "containerd.service", Duration::from_secs(1));
        assert!(matches!(err, Err(RestartError::NotStarted(_))), "{err:?}");
    }
}
