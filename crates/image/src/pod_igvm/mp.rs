//! MP configuration tables (Intel MultiProcessor Specification 1.4, chapter 4): how a kernel
//! booted without firmware (no ACPI MADT) learns its CPUs, the I/O APIC and the ISA IRQs'
//! pins on it. One table per vCPU
//! count, since the count is only known at launch (the boot stub picks one).

use zerocopy::{Immutable, IntoBytes};

/// Tables for 1..=MAX_CPUS vCPUs (the pod-VM kernel's NR_CPUS).
pub const MAX_CPUS: u32 = 64;
/// Local APIC and I/O APIC addresses and versions of QEMU's `pc`/`q35` (as its ACPI MADT
/// reports them): integrated local APICs, the ICH9 I/O APIC with ID 0.
const LOCAL_APIC: u32 = 0xFEE0_0000;
const LOCAL_APIC_VERSION: u8 = 0x14;
const IO_APIC: u32 = 0xFEC0_0000;
const IO_APIC_VERSION: u8 = 0x20;
const IO_APIC_ID: u8 = 0;
const SPEC_REVISION: u8 = 4;

/// MP floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct FloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    /// In 16-byte units.
    length: u8,
    revision: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    features: [u8; 5],
}

/// MP configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct ConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    revision: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    local_apic: u32,
    extended_length: u16,
    extended_checksum: u8,
    reserved: u8,
}

/// Processor entry (MP spec 4.3.1).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct Processor {
    entry_type: u8,
    local_apic_id: u8,
    local_apic_version: u8,
    /// Bit 0 enabled, bit 1 bootstrap processor.
    flags: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

/// Bus entry (MP spec 4.3.2).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct Bus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (MP spec 4.3.3).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct IoApic {
    entry_type: u8,
    id: u8,
    version: u8,
    /// Bit 0 usable.
    flags: u8,
    address: u32,
}

/// I/O interrupt assignment entry (MP spec 4.3.4).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable)]
struct IoInterrupt {
    entry_type: u8,
    /// 0: vectored interrupt.
    interrupt_type: u8,
    /// 0: polarity and trigger as the source bus defines them (ISA: active high, edge).
    flags: u16,
    source_bus: u8,
    source_irq: u8,
    io_apic: u8,
    io_apic_pin: u8,
}

/// ISA IRQs and the I/O APIC pin each reaches on QEMU's `pc`/`q35`: the PIT's IRQ 0 on pin 2
/// (the override QEMU's MADT declares), every other IRQ on its own pin; IRQ 2 is the cascade.
fn isa_routes() -> impl Iterator<Item = (u8, u8)> {
    (0..16u8).filter(|irq| *irq != 2).map(|irq| (irq, if irq == 0 { 2 } else { irq }))
}

const _: () = assert!(
    size_of::<IoInterrupt>() == 8
        && size_of::<FloatingPointer>() == 16
        && size_of::<ConfigHeader>() == 44
        && size_of::<Processor>() == 20
        && size_of::<Bus>() == 8
        && size_of::<IoApic>() == 8
);

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The configuration table for `cpus` vCPUs with local APIC IDs 0..cpus (QEMU's numbering
/// for one socket, one thread per core).
fn config_table(cpus: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    for id in 0..cpus {
        let bsp = if id == 0 { 2 } else { 0 };
        let cpu = Processor {
            entry_type: 0,
            local_apic_id: id as u8,
            local_apic_version: LOCAL_APIC_VERSION,
            flags: 1 | bsp,
            signature: 0,
            features: 0,
            reserved: [0; 2],
        };
        entries.extend_from_slice(cpu.as_bytes());
    }
    entries.extend_from_slice(Bus { entry_type: 1, bus_id: 0, bus_type: *b"ISA   " }.as_bytes());
    let io_apic = IoApic { entry_type: 2, id: IO_APIC_ID, version: IO_APIC_VERSION, flags: 1, address: IO_APIC };
    entries.extend_from_slice(io_apic.as_bytes());
    let mut routes = 0;
    for (irq, pin) in isa_routes() {
        let route = IoInterrupt {
            entry_type: 3,
            interrupt_type: 0,
            flags: 0,
            source_bus: 0,
            source_irq: irq,
            io_apic: IO_APIC_ID,
            io_apic_pin: pin,
        };
        entries.extend_from_slice(route.as_bytes());
        routes += 1;
    }
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        base_length: (size_of::<ConfigHeader>() + entries.len()) as u16,
        revision: SPEC_REVISION,
        checksum: 0,
        oem_id: *b"CONTRAST",
        product_id: *b"POD VM      ",
        oem_table: 0,
        oem_table_size: 0,
        entry_count: (cpus + 2 + routes) as u16,
        local_apic: LOCAL_APIC,
        extended_length: 0,
        extended_checksum: 0,
        reserved: 0,
    };
    let mut table = header.as_bytes().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..size_of::<ConfigHeader>()].copy_from_slice(header.as_bytes());
    table
}

/// The floating pointers (16 bytes each, the one for `n` vCPUs at `(n - 1) * 16`) and the
/// configuration tables they point at, laid out from `tables_gpa`.
pub fn tables(tables_gpa: u64) -> (Vec<u8>, Vec<u8>) {
    let (mut pointers, mut tables) = (Vec::new(), Vec::new());
    for cpus in 1..=MAX_CPUS {
        let at = u32::try_from(tables_gpa + tables.len() as u64).expect("MP tables lie below 1 MiB");
        let mut pointer = FloatingPointer {
            signature: *b"_MP_",
            config_table: at,
            length: 1,
            revision: SPEC_REVISION,
            checksum: 0,
            features: [0; 5],
        };
        pointer.checksum = checksum(pointer.as_bytes());
        pointers.extend_from_slice(pointer.as_bytes());
        tables.extend_from_slice(&config_table(cpus));
        // Tables on 16-byte boundaries.
        tables.resize(tables.len().next_multiple_of(16), 0);
    }
    (pointers, tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_structure_sums_to_zero_and_names_its_cpus() {
        let (pointers, tables) = tables(0x20000);
        assert_eq!(pointers.len(), 16 * MAX_CPUS as usize);
        for (i, p) in pointers.chunks(16).enumerate() {
            assert_eq!(&p[..4], b"_MP_");
            assert_eq!(p.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "floating pointer {i}");
            let at = (u32::from_le_bytes(p[4..8].try_into().unwrap()) - 0x20000) as usize;
            let table = &tables[at..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, 44 + 20 * (i + 1) + 16 + 15 * 8);
            assert_eq!(table[..len].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "table for {} cpus", i + 1);
            let cpus: Vec<(u8, u8)> = table[44..44 + 20 * (i + 1)].chunks(20).map(|e| (e[1], e[3])).collect();
            assert_eq!(cpus[0], (0, 3), "CPU 0 is the enabled BSP");
            assert!(cpus.iter().enumerate().skip(1).all(|(n, c)| *c == (n as u8, 1)));
        }
    }
}
