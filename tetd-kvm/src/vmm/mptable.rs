//! Intel MultiProcessor Specification 1.4 tables, so the guest finds its
//! vCPUs and the I/O APIC without ACPI.
//!
//! Layout (Linux `arch/x86/include/asm/mpspec_def.h`): a 16-byte floating
//! pointer ("_MP_") at the start of the last KiB of base memory (one of the
//! places Linux scans), followed by the configuration table ("PCMP") with one
//! processor entry per vCPU, an ISA bus, the I/O APIC, identity-routed ISA/IO-APIC
//! interrupts 0..=23 and the local-interrupt entries (LINT0 = ExtINT, LINT1 = NMI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Result, VmmError};
use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const MPC_CPU_SIZE: usize = 20;
const MPC_SMALL_ENTRY_SIZE: usize = 8;
/// Interrupt pins of the KVM in-kernel I/O APIC.
const IOAPIC_PINS: u8 = 24;
/// Room for the tables: `[EBDA_START, 0xa0000)`.
const MPTABLE_ROOM: usize = 0x400;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature (family 6) and feature flags (FPU, APIC) of processor entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const MPC_APIC_USABLE: u8 = 1;
const BUS_ISA: u8 = 0;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs,
/// placed at guest address `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>> {
    if cpus == 0 {
        return Err(VmmError::Config("MP table needs at least one CPU".into()));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.push(MP_PROCESSOR);
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // type, irqtype, irqflag (conforming polarity/trigger), bus, bus irq, dst apic, dst pin
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, BUS_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, BUS_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    debug_assert_eq!(
        entries.len(),
        cpus as usize * MPC_CPU_SIZE + (4 + IOAPIC_PINS as usize) * MPC_SMALL_ENTRY_SIZE
    );
    if MPF_SIZE + table_len > MPTABLE_ROOM {
        return Err(VmmError::Config(format!(
            "MP table for {cpus} vCPUs does not fit in {MPTABLE_ROOM} bytes"
        )));
    }

    let mut mpc = Vec::with_capacity(table_len);
    mpc.extend_from_slice(b"PCMP");
    mpc.extend_from_slice(&(table_len as u16).to_le_bytes());
    mpc.push(4); // spec revision 1.4
    mpc.push(0); // checksum, below
    mpc.extend_from_slice(b"TETD-RS ");
    mpc.extend_from_slice(b"TETD-VMM    ");
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&count.to_le_bytes());
    mpc.extend_from_slice(&APIC_ADDR.to_le_bytes());
    mpc.extend_from_slice(&0u32.to_le_bytes()); // extended table length/checksum
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    let mut out = Vec::with_capacity(MPF_SIZE + table_len);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&((base + MPF_SIZE as u64) as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(4); // spec revision 1.4
    out.push(0); // checksum, below
    out.extend_from_slice(&[0; 5]); // feature bytes: 0 = configuration table present
    out[10] = checksum(&out);
    out.extend_from_slice(&mpc);
    Ok(out)
}

/// Writes the MP tables for `cpus` vCPUs at [`EBDA_START`].
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|e| VmmError::Memory(format!("writing MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_well_formed() {
        let t = build(2, EBDA_START).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, EBDA_START + 16);
        let mpc = &t[16..];
        assert_eq!(&mpc[0..4], b"PCMP");
        let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
        assert_eq!(len, mpc.len());
        assert_eq!(mpc.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([mpc[34], mpc[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // Second processor entry: APIC id 1, enabled, not BSP.
        assert_eq!(
            &mpc[44 + 20..44 + 24],
            &[MP_PROCESSOR, 1, APIC_VERSION, CPU_ENABLED]
        );
        assert_eq!(mpc[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(build(40, EBDA_START).is_err());
        assert!(build(0, EBDA_START).is_err());
    }
}
