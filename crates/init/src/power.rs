//! Ending the pod VM from inside.

use std::path::Path;

use nix::sys::reboot::{reboot, RebootMode};

/// Where the kernel lists ACPI tables; absent when the VM booted without firmware (the IGVM
/// boot path: no ACPI, so no way for the kernel to power the machine off).
const ACPI_TABLES: &str = "/sys/firmware/acpi/tables";

/// Syncs and ends the VM: ACPI power-off where the firmware gave the kernel ACPI, else a
/// reset, which ends the VM just the same because every pod VM runs with QEMU's `-no-reboot`
/// (a power-off without ACPI would only halt the CPU and leave QEMU running). Returns only
/// when the caller lacks CAP_SYS_BOOT.
pub fn power_off() {
    nix::unistd::sync();
    let mode = if Path::new(ACPI_TABLES).exists() { RebootMode::RB_POWER_OFF } else { RebootMode::RB_AUTOBOOT };
    let _ = reboot(mode);
}
