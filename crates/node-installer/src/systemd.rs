//! Restarting a systemd unit over the system D-Bus (`org.freedesktop.systemd1.Manager.RestartUnit`).

use std::path::Path;

use anyhow::{Context, Result};

pub fn restart_unit(bus_socket: &Path, unit: &str) -> Result<()> {
    if !bus_socket.exists() {
        anyhow::bail!("no system bus at {}", bus_socket.display());
    }
    let address = format!("unix:path={}", bus_socket.display());
    let conn = zbus::blocking::connection::Builder::address(address.as_str())?
        .build()
        .with_context(|| format!("connecting to {address}"))?;
    let proxy = zbus::blocking::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )?;
    let _job: zbus::zvariant::OwnedObjectPath =
        proxy.call("RestartUnit", &(unit, "replace")).with_context(|| format!("RestartUnit {unit}"))?;
    Ok(())
}
