//! The C helpers of `tetdg_main.c` (`tetdg_k_*`) and thin safe wrappers.
//! Every kernel service the Rust part uses goes through this module.
use core::ffi::c_void;

extern "C" {
    fn tetdg_k_log(level: u32, msg: *const u8, len: usize);
    fn tetdg_k_alloc(size: usize) -> *mut c_void;
    fn tetdg_k_free(p: *mut c_void);
    fn tetdg_k_copy_from_user(dst: *mut c_void, src: u64, n: usize) -> usize;
    fn tetdg_k_copy_to_user(dst: u64, src: *const c_void, n: usize) -> usize;
    fn tetdg_k_random(buf: *mut c_void, n: usize);
    fn tetdg_k_time_ns() -> u64;
    fn tetdg_k_tsc_khz() -> u32;
    fn tetdg_k_seq_write(seq: *mut c_void, buf: *const u8, len: usize);
    fn tetdg_k_cpu() -> u32;
    fn tetdg_k_preempt_disable();
    fn tetdg_k_preempt_enable();
    fn tetdg_k_irq_save() -> usize;
    fn tetdg_k_irq_restore(flags: usize);
    fn tetdg_k_fpu_begin();
    fn tetdg_k_fpu_end();
    fn tetdg_k_raise_nmi();
    fn tetdg_k_virt_to_phys(va: *const c_void) -> u64;
    fn tetdg_k_map_zone(gpa: u64, pages: u64) -> *mut c_void;
    fn tetdg_k_unmap_zone(va: *mut c_void);
    fn tetdg_k_set_prot(va: *mut c_void, pages: u64, prot: u32) -> i32;
    fn tetdg_k_hypercall(input: *const u64, out: *mut u64) -> u64;
}

/// Log levels of [`log`].
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Level {
    /// pr_err
    Err = 0,
    /// pr_warn
    Warn = 1,
    /// pr_info
    Info = 2,
}

/// One line to the kernel log, prefixed with "tetdg: ".
pub fn log(level: Level, msg: &str) {
    // SAFETY: pointer/length of a live &str; the helper copies at most 1024 bytes.
    unsafe { tetdg_k_log(level as u32, msg.as_ptr(), msg.len()) }
}

/// `kvmalloc(size, GFP_KERNEL)`; null on failure.
#[allow(dead_code)] // used by the image path (KBuf), see ioctl.rs
pub fn alloc(size: usize) -> *mut u8 {
    // SAFETY: plain allocation call, may sleep (process context only).
    unsafe { tetdg_k_alloc(size).cast() }
}

/// `kvfree`.
#[allow(dead_code)] // used by the image path (KBuf), see ioctl.rs
///
/// # Safety
/// `p` came from [`alloc`] and is not used afterwards.
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { tetdg_k_free(p.cast()) }
}

/// A user copy failed (the address was not readable/writable).
#[derive(Debug)]
pub struct Fault;

/// `copy_from_user` into a kernel slice.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), Fault> {
    // SAFETY: dst is a valid writable kernel buffer of dst.len() bytes; the
    // helper checks the user range (access_ok) itself.
    let left = unsafe { tetdg_k_copy_from_user(dst.as_mut_ptr().cast(), src, dst.len()) };
    if left == 0 {
        Ok(())
    } else {
        Err(Fault)
    }
}

/// `copy_to_user` from a kernel slice.
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), Fault> {
    // SAFETY: src is a valid kernel buffer; the helper checks the user range.
    let left = unsafe { tetdg_k_copy_to_user(dst, src.as_ptr().cast(), src.len()) };
    if left == 0 {
        Ok(())
    } else {
        Err(Fault)
    }
}

/// Read a `repr(C)` request struct from user space.
pub fn read_user<T: Copy>(src: u64) -> Result<T, Fault> {
    let mut v = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: a zeroed T viewed as bytes; every request struct is plain old
    // data (integers and byte arrays), valid for any bit pattern.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), core::mem::size_of::<T>())
    };
    copy_from_user(bytes, src)?;
    // SAFETY: fully initialised above (zeroed, then overwritten).
    Ok(unsafe { v.assume_init() })
}

/// Write a `repr(C)` request struct back to user space.
pub fn write_user<T: Copy>(dst: u64, v: &T) -> Result<(), Fault> {
    // SAFETY: viewing a plain-old-data request struct as bytes (no padding
    // holes: every request struct is laid out without implicit padding).
    let bytes = unsafe {
        core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>())
    };
    copy_to_user(dst, bytes)
}

/// `get_random_bytes`.
pub fn random(buf: &mut [u8]) {
    // SAFETY: valid writable buffer.
    unsafe { tetdg_k_random(buf.as_mut_ptr().cast(), buf.len()) }
}

/// `ktime_get_ns`.
pub fn time_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { tetdg_k_time_ns() }
}

/// `tsc_khz` (0 if unknown).
pub fn tsc_khz() -> u32 {
    // SAFETY: no arguments.
    unsafe { tetdg_k_tsc_khz() }
}

/// `seq_write` on the /proc file being shown.
pub fn seq_write(seq: *mut c_void, s: &str) {
    // SAFETY: `seq` is the seq_file the C show callback handed us.
    unsafe { tetdg_k_seq_write(seq, s.as_ptr(), s.len()) }
}

/// Preemption disabled while alive; the CPU number is stable.
pub struct NoPreempt(());

impl NoPreempt {
    /// `preempt_disable()`.
    pub fn new() -> Self {
        // SAFETY: balanced by Drop.
        unsafe { tetdg_k_preempt_disable() };
        NoPreempt(())
    }

    /// `smp_processor_id()` (stable while preemption is off).
    pub fn cpu(&self) -> u32 {
        // SAFETY: preemption is disabled.
        unsafe { tetdg_k_cpu() }
    }
}

impl Drop for NoPreempt {
    fn drop(&mut self) {
        // SAFETY: balances new().
        unsafe { tetdg_k_preempt_enable() }
    }
}

/// `kernel_fpu_begin()` .. `kernel_fpu_end()` (also disables preemption).
pub struct Fpu(());

impl Fpu {
    /// Begin.
    pub fn begin() -> Self {
        // SAFETY: balanced by Drop; process context.
        unsafe { tetdg_k_fpu_begin() };
        Fpu(())
    }
}

impl Drop for Fpu {
    fn drop(&mut self) {
        // SAFETY: balances begin().
        unsafe { tetdg_k_fpu_end() }
    }
}

/// Interrupts masked while alive (`local_irq_save`/`restore`).
pub struct IrqOff(usize);

impl IrqOff {
    /// Mask.
    pub fn new() -> Self {
        // SAFETY: balanced by Drop.
        IrqOff(unsafe { tetdg_k_irq_save() })
    }
}

impl Drop for IrqOff {
    fn drop(&mut self) {
        // SAFETY: restores the flags saved by new().
        unsafe { tetdg_k_irq_restore(self.0) }
    }
}

/// Send this CPU an NMI (re-raise one that arrived inside an agent).
pub fn raise_nmi() {
    // SAFETY: apic->send_IPI_self(NMI_VECTOR); the kernel's NMI handler runs.
    unsafe { tetdg_k_raise_nmi() }
}

/// Physical address of a kernel virtual address (0 if it has none).
pub fn virt_to_phys(va: *const u8) -> u64 {
    // SAFETY: the helper only looks the address up.
    unsafe { tetdg_k_virt_to_phys(va.cast()) }
}

/// Map zone pages (GPA above RAM, no struct page) RW+NX into the vmalloc area.
pub fn map_zone(gpa: u64, pages: u64) -> *mut u8 {
    // SAFETY: the helper validates its arguments; vmap_pfn refuses RAM pfns.
    unsafe { tetdg_k_map_zone(gpa, pages).cast() }
}

/// Undo [`map_zone`].
///
/// # Safety
/// `va` came from [`map_zone`] and nothing uses the mapping any more.
pub unsafe fn unmap_zone(va: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { tetdg_k_unmap_zone(va.cast()) }
}

/// Page permission bits of [`set_prot`].
pub mod prot {
    /// Readable.
    pub const R: u32 = 1;
    /// Writable.
    #[allow(dead_code)] // documents the C helper's bit
    pub const W: u32 = 2;
    /// Executable.
    pub const X: u32 = 4;
}

/// Change the kernel PTEs of `pages` pages of a zone mapping (W+X refused;
/// 0 = not present). Flushes the TLBs of all CPUs.
pub fn set_prot(va: *mut u8, pages: u64, prot: u32) -> Result<(), ()> {
    // SAFETY: the helper checks that va is a vmalloc-area 4 KiB mapping and
    // refuses W+X; callers pass ranges of their own zone mapping.
    let r = unsafe { tetdg_k_set_prot(va.cast(), pages, prot) };
    if r == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// One hypercall through the C transports (port I/O or loopback):
/// `(status, results)`, or `Err` if the transport itself failed. The TDCALL
/// transport is `tetd::tdcall` (see `zone::hypercall`).
pub fn hypercall(vendor: u64, leaf: u64, args: [u64; 4]) -> Result<(u64, [u64; 3]), u64> {
    let input = [vendor, leaf, args[0], args[1], args[2], args[3]];
    let mut out = [0u64; 4];
    // SAFETY: input has 6 and out 4 elements, as the helper reads/writes.
    let r = unsafe { tetdg_k_hypercall(input.as_ptr(), out.as_mut_ptr()) };
    if r != 0 {
        return Err(r);
    }
    Ok((out[0], [out[1], out[2], out[3]]))
}
