//! Linux 64-bit boot protocol: load the bzImage and initrd, write the zero
//! page (with the e820 map and command line), the boot GDT and identity page
//! tables, and compute the BSP's initial register state.
//!
//! Reference: Documentation/arch/x86/boot.rst ("64-bit boot protocol"): the
//! CPU is in long mode with paging on, the loaded range is identity-mapped,
//! a GDT provides flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), interrupts
//! are off, `%rsi` holds the zero page, and execution starts at the
//! protected-mode kernel's load address + 0x200.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Result, VmmError};
use super::layout::*;

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// `setup_header.xloadflags` bit: the kernel has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Boot protocol version that introduced `xloadflags` (2.12).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the protected-mode kernel start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader` value for "undefined / other" boot loaders.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selectors of the boot GDT (the values the boot protocol requires).
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

/// What loading the kernel produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Guest-physical address of the 64-bit entry point.
    pub entry: u64,
    /// First guest-physical address after the loaded image.
    pub end: u64,
    /// The kernel's setup header (copied into the zero page).
    pub header: setup_header,
}

/// Allocates guest RAM `[0, mem_size)`.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let size = usize::try_from(mem_size)
        .map_err(|_| VmmError::Config(format!("memory size {mem_size} too large")))?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| {
        VmmError::Memory(format!(
            "cannot allocate {mem_size} bytes of guest RAM: {e}"
        ))
    })
}

/// Loads a kernel: a bzImage (protected-mode part at 1 MiB, entry +0x200)
/// or an uncompressed ELF `vmlinux` (segments at their physical addresses,
/// entry = `startup_64`). Checks the kernel supports the 64-bit boot protocol.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let kerr = |msg: String| VmmError::Kernel {
        path: path.to_path_buf(),
        msg,
    };
    let mut file = File::open(path).map_err(|source| VmmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == b"\x7fELF";
    if is_elf {
        let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| kerr(format!("not a loadable x86-64 ELF kernel: {e}")))?;
        // An ELF vmlinux has no setup header; provide the fields the kernel reads.
        let header = setup_header {
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: MIN_BOOT_PROTOCOL,
            kernel_alignment: 0x20_0000,
            xloadflags: XLF_KERNEL_64,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: (CMDLINE_MAX - 1) as u32,
            ..Default::default()
        };
        return Ok(LoadedKernel {
            entry: loaded.kernel_load.raw_value(),
            end: loaded.kernel_end,
            header,
        });
    }
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| kerr(format!("not a loadable bzImage or ELF kernel: {e}")))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| kerr("bzImage has no setup header".into()))?;
    let version = header.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(kerr(format!(
            "boot protocol {}.{} is too old (need 2.12+ for the 64-bit entry)",
            version >> 8,
            version & 0xff
        )));
    }
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(kerr(
            "kernel has no 64-bit entry point (XLF_KERNEL_64 unset)".into(),
        ));
    }
    let load = loaded.kernel_load.raw_value();
    Ok(LoadedKernel {
        entry: load + ENTRY_64_OFFSET,
        end: loaded.kernel_end,
        header,
    })
}

/// Loads the initrd at the top of RAM (page aligned, below the kernel's
/// `initrd_addr_max`, above the kernel). Returns `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<(u64, u64)> {
    let data = std::fs::read(path).map_err(|source| VmmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let size = data.len() as u64;
    let max = u64::from(kernel.header.initrd_addr_max).min(mem_size - 1);
    // The decompressor needs `init_size` bytes from the preferred address
    // (16 MiB for Debian); keep the initrd clear of that range.
    let kernel_reserved_end = kernel
        .end
        .max(u64::from(kernel.header.init_size) + kernel.header.pref_address.max(HIMEM_START));
    let addr = (max + 1)
        .checked_sub(size)
        .map(|a| a & !(tetd::abi::PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_reserved_end)
        .ok_or_else(|| {
            VmmError::Config(format!(
                "initrd {} ({} bytes) does not fit in guest RAM above the kernel (RAM {} MiB, kernel needs up to {:#x}); use more memory",
                path.display(),
                size,
                mem_size >> 20,
                kernel_reserved_end
            ))
        })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| VmmError::Memory(format!("writing initrd at {addr:#x}: {e}")))?;
    Ok((addr, size))
}

/// Writes the command line, the zero page (setup header, initrd, e820 map),
/// the boot GDT and the identity page tables.
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<()> {
    // Command line: bounded by the kernel's cmdline_size (excluding the NUL).
    let kernel_max = kernel.header.cmdline_size as usize;
    let capacity = CMDLINE_MAX.min(if kernel_max == 0 { 255 } else { kernel_max }) + 1;
    let cl = Cmdline::try_from(cmdline, capacity).map_err(|e| {
        VmmError::Config(format!(
            "kernel command line ({} bytes, kernel accepts {}): {e}",
            cmdline.len(),
            capacity - 1
        ))
    })?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| VmmError::Memory(format!("writing command line: {e}")))?;

    let mut params = boot_params {
        hdr: kernel.header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let e820 = [
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: HIMEM_START,
            size: mem_size - HIMEM_START,
            r#type: E820_RAM,
        },
    ];
    params.e820_table[..e820.len()].copy_from_slice(&e820);
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| VmmError::Memory(format!("writing zero page: {e}")))?;

    write_gdt(mem)?;
    write_identity_page_tables(mem)?;
    Ok(())
}

/// One GDT descriptor from (flags, base, limit), as in the kernel's `GDT_ENTRY`.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of a descriptor written by [`gdt_entry`].
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    } as u32;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// The boot GDT: null, null, code64 (0x10), data (0x18), 64-bit TSS (0x20).
fn boot_gdt() -> [u64; 5] {
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, ring 0, execute/read, accessed, L, G
        gdt_entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, accessed, D/B, G
        gdt_entry(0x008b, 0, 0x67),    // TSS: present, busy 64-bit TSS (only to satisfy VM entry)
    ]
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(|e| VmmError::Memory(format!("writing GDT: {e}")))?;
    }
    Ok(())
}

/// Identity-maps `[0, IDENTITY_MAP_GIB GiB)` with 2 MiB pages.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let werr =
        |e: vm_memory::GuestMemoryError| VmmError::Memory(format!("writing page tables: {e}"));
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))
        .map_err(werr)?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT_ADDR + gib * 8))
            .map_err(werr)?;
        for i in 0..512u64 {
            let phys = ((gib << 30) | (i << 21)) | PRESENT_RW | HUGE;
            mem.write_obj(phys, GuestAddress(pd + i * 8))
                .map_err(werr)?;
        }
    }
    Ok(())
}

/// Special registers of the BSP at the 64-bit entry (`base` = current sregs).
pub fn boot_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[2], BOOT_CS);
    let data = segment_from_gdt(gdt[3], BOOT_DS);
    let tss = segment_from_gdt(gdt[4], BOOT_TSS);
    s.gdt.base = BOOT_GDT_ADDR;
    s.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.cr0 =
        (s.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    s.cr3 = PML4_ADDR;
    s.cr4 |= X86_CR4_PAE;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// General registers of the BSP at the 64-bit entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// x87/SSE state at reset (FCW 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u64(mem: &GuestMemoryMmap, gpa: u64) -> Option<u64> {
        mem.read_obj(GuestAddress(gpa)).ok()
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let gdt = boot_gdt();
        let cs = segment_from_gdt(gdt[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.g, cs.s, cs.type_, cs.present),
            (0, 0xffff_ffff, 1, 0, 1, 1, 0xb, 1)
        );
        let ds = segment_from_gdt(gdt[3], BOOT_DS);
        assert_eq!(
            (ds.base, ds.limit, ds.l, ds.db, ds.type_),
            (0, 0xffff_ffff, 0, 1, 0x3)
        );
        let tr = segment_from_gdt(gdt[4], BOOT_TSS);
        assert_eq!((tr.s, tr.type_, tr.limit, tr.present), (0, 0xb, 0x67, 1));
        // Linux' own encoding of a flat 64-bit kernel code segment.
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn identity_map_covers_zone_window() {
        let mem = create_guest_memory(128 << 20).unwrap();
        write_identity_page_tables(&mem).unwrap();
        assert_eq!(read_u64(&mem, PML4_ADDR), Some(PDPT_ADDR | 3));
        assert_eq!(
            read_u64(&mem, PDPT_ADDR + 3 * 8),
            Some((PD_ADDR + 0x3000) | 3)
        );
        // Last 2 MiB page below 4 GiB, first page of the zone window.
        assert_eq!(
            read_u64(&mem, PD_ADDR + 0x3000 + 511 * 8),
            Some(0xffe0_0000 | 0x83)
        );
        assert_eq!(
            read_u64(&mem, PD_ADDR + 0x4000),
            Some(tetd::abi::ZONE_GPA_BASE | 0x83)
        );
        const { assert!(PD_ADDR + IDENTITY_MAP_GIB * 0x1000 <= CMDLINE_ADDR) };
        const { assert!(tetd::abi::ZONE_GPA_BASE + tetd::abi::ZONE_GPA_SIZE <= IDENTITY_MAP_GIB << 30) };
    }
}
