//! Collaborative mode: the agent's own address space (page tables in its
//! zone), GDT and IDT, and the run itself (see [`crate::tramp`]).
use core::arch::asm;

use tetd::abi::{Error, PAGE_SIZE};

use crate::kapi::{self, IrqOff};
use crate::pagetable::{PageTables, Perm};
use crate::tramp::{self, CollabCtx, DescPtr, DATA, FAKE_TSS, IDT, RW};

const CR4_LA57: u64 = 1 << 12;

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Paging depth the kernel runs with.
pub fn paging_levels() -> u32 {
    if read_cr4() & CR4_LA57 != 0 {
        5
    } else {
        4
    }
}

fn sgdt() -> (u64, u16) {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT stores 10 bytes into buf.
    unsafe { asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack, preserves_flags)) };
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[2..10]);
    (u64::from_le_bytes(b), limit)
}

fn kernel_cs() -> u16 {
    let cs: u16;
    // SAFETY: reading CS.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs
}

/// Linear base of the current TSS (from TR and the current GDT).
fn tss_base() -> Option<u64> {
    let sel: u16;
    // SAFETY: STR reads the task register selector.
    unsafe { asm!("str {0:x}", out(reg) sel, options(nomem, nostack, preserves_flags)) };
    let (gdt, limit) = sgdt();
    let off = (sel & !7) as u64;
    if sel & !7 == 0 || off + 15 > limit as u64 {
        return None;
    }
    // SAFETY: the kernel GDT is mapped (readable) and the 16-byte system
    // descriptor lies inside its limit (checked above).
    let (lo, hi) = unsafe {
        let p = (gdt + off) as *const u64;
        (p.read_volatile(), p.add(1).read_volatile())
    };
    Some(((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32))
}

/// Fill the agent IDT: every vector -> its stub, IST1 (IST2 for NMI),
/// interrupt gate, DPL 0. Called once at module init.
pub fn init_idt() {
    let cs = kernel_cs() as u64;
    // SAFETY: IDT is only written here (init) and read by the CPU during
    // collaborative calls; the module mutex serializes init and calls.
    let idt = unsafe { &mut *IDT.get() };
    for v in 0..256usize {
        let off = tramp::stub_addr(v);
        let ist: u64 = if v == 2 { 2 } else { 1 };
        let lo = (off & 0xffff)
            | (cs << 16)
            | (ist << 32)
            | (0x8e << 40)
            | (((off >> 16) & 0xffff) << 48);
        idt.0[2 * v] = lo;
        idt.0[2 * v + 1] = off >> 32;
    }
}

/// Where the collaborative services keep their state, inside the frame page.
#[derive(Clone, Copy)]
pub struct ServicesArea {
    /// Agent VA of the services table.
    pub services: u64,
    /// Agent VA of the [`CollabCtx`].
    pub ctx: u64,
    /// Agent VA and capacity of the log buffer.
    pub log: u64,
    /// Capacity of the log buffer.
    pub log_cap: u64,
    /// The image's measurement (`admin(OwnMeasurement)`); `None` for a TEST
    /// blob, whose `admin` then answers `Unsupported` for every operation.
    pub measurement: Option<[u8; tramp::MEASUREMENT_LEN]>,
}

/// An agent address space built in the zone's page-table pages.
pub struct AgentSpace {
    levels: u32,
    /// Kernel VA of the page-table pages.
    pt_va: *mut u8,
    /// Their physical address.
    pt_pa: u64,
    pt_pages: u64,
    used: usize,
    tss_page: u64,
}

/// Number of page-table pages [`AgentSpace::build`] needs for a zone of
/// `zone_pages` pages mapped at `zone_va` (an upper bound).
pub fn pt_pages_for(zone_va: u64, zone_pages: u64) -> u64 {
    let levels = paging_levels();
    let (ts, te) = tramp::tramp_range();
    let statics = [
        (ts, (te - ts) / PAGE_SIZE),
        (DATA.get() as u64, 1),
        (IDT.get() as u64, 1),
        (RW.get() as u64, 3),
    ];
    let mut n = 1 + PageTables::tables_for_range(levels, zone_va, zone_pages);
    for (va, pages) in statics {
        n += PageTables::tables_for_range(levels, va, pages);
    }
    // the TSS page (moves with the CPU): room for a few placements
    n + 4 * (levels as u64 - 1)
}

/// Page-table pages for an agent space over an `n`-page zone at any
/// address (plus the trampoline statics and the moving TSS page).
pub fn pt_pages_bound(n: u64) -> u64 {
    let levels = paging_levels() as u64;
    let mut zone_tables = 0;
    for l in 1..levels {
        zone_tables += (n.saturating_sub(1) >> (9 * l)) + 2;
    }
    pt_pages_for(0, 0) + zone_tables
}

fn frames<'a>(va: *mut u8, pages: u64) -> &'a mut [[u64; 512]] {
    // SAFETY: `va` is the kernel mapping of `pages` page-table pages of the
    // zone, owned by the AgentSpace and only touched with the module mutex
    // held while the zone is reachable.
    unsafe { core::slice::from_raw_parts_mut(va.cast::<[u64; 512]>(), pages as usize) }
}

impl AgentSpace {
    /// Build the tables. `regions` are `(zone offset, pages, perm)`; the
    /// rest of the zone stays unmapped for the agent. `pt_off` is the page
    /// offset of the page-table pages in the zone (`pt_pages` of them).
    /// The zone must be reachable (inside a VMM_ENTER window).
    pub fn build(
        zone_va: *mut u8,
        zone_gpa: u64,
        regions: &[(u64, u64, Perm)],
        pt_off: u64,
        pt_pages: u64,
    ) -> Result<AgentSpace, Error> {
        let levels = paging_levels();
        let pt_va = zone_va.wrapping_add((pt_off * PAGE_SIZE) as usize);
        let pt_pa = zone_gpa + pt_off * PAGE_SIZE;
        let mut pt = PageTables::new(frames(pt_va, pt_pages), pt_pa, levels).map_err(pt_err)?;
        let base = zone_va as u64;
        for &(off, pages, perm) in regions {
            if off >= pt_off && off < pt_off + pt_pages {
                return Err(Error::Internal);
            }
            pt.map_range(
                base + off * PAGE_SIZE,
                zone_gpa + off * PAGE_SIZE,
                pages,
                perm,
            )
            .map_err(pt_err)?;
        }
        let (ts, te) = tramp::tramp_range();
        map_kernel(&mut pt, ts, (te - ts) / PAGE_SIZE, Perm::RX)?;
        map_kernel(&mut pt, DATA.get() as u64, 1, Perm::R)?;
        map_kernel(&mut pt, IDT.get() as u64, 1, Perm::R)?;
        map_kernel(&mut pt, RW.get() as u64, 3, Perm::RW)?;
        let used = pt.frames_used();
        Ok(AgentSpace {
            levels,
            pt_va,
            pt_pa,
            pt_pages,
            used,
            tss_page: 0,
        })
    }

    /// Run `entry(frame)` on `stack_top` in the agent's address space.
    /// Interrupts are masked for the duration. Returns the trampoline's
    /// `kind << 32 | code` word and the NMIs that arrived.
    ///
    /// # Safety
    /// The zone is reachable (VMM_ENTER window), `entry`, `frame` and
    /// `stack_top` are agent addresses mapped by this space (code RX, frame
    /// and stack RW), preemption and the FPU are handled by the caller.
    pub unsafe fn run(
        &mut self,
        entry: u64,
        frame: u64,
        stack_top: u64,
        timeout_ns: u64,
    ) -> Result<u64, Error> {
        // TSC deadline for the NMI watchdog (0 = none, or TSC rate unknown).
        let khz = kapi::tsc_khz() as u64;
        let deadline = if timeout_ns == 0 || khz == 0 {
            0
        } else {
            let ticks = (timeout_ns as u128 * khz as u128 / 1_000_000).min(u64::MAX as u128) as u64;
            rdtsc().saturating_add(ticks.max(1))
        };
        let irq = IrqOff::new();
        // The TSS the CPU reads IST pointers from: map its page to FAKE_TSS.
        let tss = tss_base().ok_or(Error::Unsupported)?;
        let in_page = tss & (PAGE_SIZE - 1);
        if in_page + 0x34 > PAGE_SIZE {
            return Err(Error::Unsupported);
        }
        let tss_page = tss & !(PAGE_SIZE - 1);
        if tss_page != self.tss_page {
            let mut pt = PageTables::resume(
                frames(self.pt_va, self.pt_pages),
                self.pt_pa,
                self.levels,
                self.used,
            )
            .map_err(pt_err)?;
            if self.tss_page != 0 {
                pt.unmap(self.tss_page);
            }
            let pa = kapi::virt_to_phys(FAKE_TSS.get() as *const u8);
            pt.map(tss_page, pa, Perm::R).map_err(pt_err)?;
            self.used = pt.frames_used();
            self.tss_page = tss_page;
        }
        // SAFETY: module statics, written with interrupts masked and the
        // module mutex held; the CPU reads them during the call.
        unsafe {
            let rw = &mut *RW.get();
            rw.nmi_count = 0;
            let ist1 = core::ptr::addr_of!(rw.ist1) as u64 + 4096;
            let ist2 = core::ptr::addr_of!(rw.ist2) as u64 + 4096;
            let fake = &mut (*FAKE_TSS.get()).0;
            fake.fill(0);
            let at = in_page as usize;
            fake[at + 0x24..at + 0x2c].copy_from_slice(&ist1.to_le_bytes());
            fake[at + 0x2c..at + 0x34].copy_from_slice(&ist2.to_le_bytes());

            let d = &mut *DATA.get();
            let (gdt, limit) = sgdt();
            let n = (limit as usize + 1).min(d.gdt.len() * 8);
            core::ptr::copy_nonoverlapping(gdt as *const u8, d.gdt.as_mut_ptr().cast::<u8>(), n);
            d.agent_gdtr = DescPtr::new(d.gdt.as_ptr() as u64, (n - 1) as u16);
            d.agent_idtr = DescPtr::new(IDT.get() as u64, 4095);
            d.agent_cr3 = self.pt_pa; // PCID 0 (unused by Linux when PCIDs are on)
            d.agent_rsp = stack_top;
            d.entry = entry;
            d.frame = frame;
            d.fault_vector = 0;
            d.fault_error = 0;
            d.fault_rip = 0;
            d.fault_cr2 = 0;
            d.deadline_tsc = deadline;
        }
        // SAFETY: everything the trampoline reads was set up above; the
        // caller guarantees the agent addresses (see the function contract).
        let r = unsafe { tramp::tetdg_collab_enter() };
        // SAFETY: read back after the call, interrupts still masked.
        let nmis = unsafe {
            (*DATA.get()).deadline_tsc = 0;
            (*RW.get()).nmi_count
        };
        drop(irq);
        if nmis != 0 {
            let mut l = crate::excl::Line::new();
            let _ = core::fmt::Write::write_fmt(
                &mut l,
                format_args!("{nmis} NMI(s) arrived during a collaborative call; re-raising one"),
            );
            kapi::log(kapi::Level::Info, l.as_str());
            kapi::raise_nmi();
        }
        Ok(r)
    }

    /// The fault recorded by the last [`run`](Self::run) that ended with a fault:
    /// `(vector, error, rip, cr2)`.
    pub fn last_fault() -> (u64, u64, u64, u64) {
        // SAFETY: read under the module mutex after the call.
        let d = unsafe { &*DATA.get() };
        (d.fault_vector, d.fault_error, d.fault_rip, d.fault_cr2)
    }
}

fn map_kernel(pt: &mut PageTables<'_>, va: u64, pages: u64, perm: Perm) -> Result<(), Error> {
    for k in 0..pages {
        let v = va + k * PAGE_SIZE;
        let pa = kapi::virt_to_phys(v as *const u8);
        if pa == 0 {
            return Err(Error::Internal);
        }
        pt.map(v, pa & !(PAGE_SIZE - 1), perm).map_err(pt_err)?;
    }
    Ok(())
}

fn pt_err(e: crate::pagetable::PtError) -> Error {
    kapi::log(kapi::Level::Err, e.describe());
    match e {
        crate::pagetable::PtError::NoFrames => Error::NoMemory,
        _ => Error::Internal,
    }
}

/// Fill the services table and context for a collaborative call.
///
/// # Safety
/// `area` addresses lie in the agent's frame page, reachable and writable.
pub unsafe fn install_services(area: &ServicesArea) {
    let khz = kapi::tsc_khz() as u64;
    // ns per tick << 32; 0 if the TSC rate is unknown (time then reads ns0)
    let mult = (1_000_000u64 << 32).checked_div(khz).unwrap_or(0);
    let tsc0 = rdtsc();
    let ctx = CollabCtx {
        log_buf: area.log,
        log_cap: area.log_cap,
        log_len: 0,
        tsc_mult: mult,
        tsc0,
        ns0: kapi::time_ns(),
        measurement_len: if area.measurement.is_some() {
            tramp::MEASUREMENT_LEN as u64
        } else {
            0
        },
        measurement: area.measurement.unwrap_or([0; tramp::MEASUREMENT_LEN]),
    };
    let services = tetd::abi::Services {
        abi_version: tetd::abi::ABI_VERSION,
        size: core::mem::size_of::<tetd::abi::Services>() as u32,
        ctx: area.ctx as *mut core::ffi::c_void,
        log: tramp::tetdg_cs_log,
        random: if has_rdrand() {
            tramp::tetdg_cs_random
        } else {
            tramp::tetdg_cs_random_unsupported
        },
        time_ns: tramp::tetdg_cs_time,
        abort: tramp::tetdg_cs_abort,
        register_entry: tramp::tetdg_cs_register_entry,
        admin: tramp::tetdg_cs_admin,
    };
    // SAFETY: caller guarantees the addresses.
    unsafe {
        (area.ctx as *mut CollabCtx).write(ctx);
        (area.services as *mut tetd::abi::Services).write(services);
    }
}

/// Log text the agent wrote through the collaborative `log` service.
///
/// # Safety
/// `area` addresses lie in the (reachable) frame page.
pub unsafe fn take_log<'a>(area: &ServicesArea) -> &'a [u8] {
    // SAFETY: caller guarantees the addresses; the length is clamped to the
    // buffer (the agent can write the context).
    unsafe {
        let ctx = &*(area.ctx as *const CollabCtx);
        let n = ctx.log_len.min(area.log_cap);
        core::slice::from_raw_parts(area.log as *const u8, n as usize)
    }
}

fn has_rdrand() -> bool {
    // CPUID.01H:ECX.RDRAND[bit 30]
    let r = core::arch::x86_64::__cpuid(1);
    r.ecx & (1 << 30) != 0
}

fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: RDTSC has no side effects.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}
