//! Guest-physical memory layout of the VMM.
//!
//! ```text
//! 0x0000_0500  boot GDT (null, null, code64 = 0x10, data = 0x18, tss = 0x20)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack top (only used until the kernel sets its own)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0x10000 five PDs: identity map of 0..5 GiB
//!              (RAM, the 32-bit MMIO hole and the zone window; Linux replaces
//!              these tables early, small test guests keep using them)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer + MP configuration table (last KiB of base memory)
//! 0x0010_0000  protected-mode kernel (bzImage payload), then free RAM
//!   top of RAM initrd (page aligned, below `initrd_addr_max`)
//! 0x1_0000_0000 .. +ZONE_GPA_SIZE  secret-zone window (tetd::abi::ZONE_GPA_BASE), no RAM
//! ```
//!
//! RAM is one KVM memory slot `[0, mem_size)`; the e820 map reports
//! `[0, 0x9fc00)` and `[1 MiB, mem_size)` as usable. RAM must end below the
//! 32-bit MMIO area (LAPIC at 0xfee0_0000, IOAPIC at 0xfec0_0000), so the
//! VMM accepts at most [`MAX_MEM_MIB`] MiB.

/// Boot GDT.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of [`IDENTITY_MAP_GIB`] page directories (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// GiB identity-mapped for the 64-bit entry (covers the zone window at 4 GiB).
pub const IDENTITY_MAP_GIB: u64 = 5;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line accepted (the kernel's own limit, `cmdline_size`, may be smaller).
pub const CMDLINE_MAX: usize = 4096;
/// Start of the Extended BIOS Data Area: MP table lives here; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// TSS address KVM needs on Intel (three pages, must not overlap RAM or MMIO).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Identity-map page KVM needs on Intel for real mode (one page before the TSS).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Smallest RAM size accepted (the Debian kernel's `init_size` alone is ~64 MiB).
pub const MIN_MEM_MIB: u64 = 96;
/// Largest RAM size accepted (RAM must stay below the 32-bit MMIO hole).
pub const MAX_MEM_MIB: u64 = 3072;

/// First COM port (ttyS0).
pub const COM1_BASE: u16 = 0x3f8;
/// Interrupt line of COM1.
pub const COM1_GSI: u32 = 4;
