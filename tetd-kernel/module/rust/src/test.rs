//! The TEST ioctl (module parameter `test_ioctl=1`): one complete agent
//! life cycle around a built-in machine-code blob, through exactly the
//! mechanisms real agents use: AGENT_ACCESS, zone mapping (vmap_pfn),
//! VMM_ENTER/VMM_RESUME windows, W^X page protections, the exclusive or
//! collaborative call, AGENT_FAULT, AGENT_DISABLE.
//!
//! Zone layout (pages): 0 code (RX) · 1 heap (RW) · 2 guard (unmapped) ·
//! 3..7 stack (RW) · 7 frame page (RW: CallFrame @0, Services @256,
//! collaborative context @512, log @1024..3072, input @3072, output @3584) ·
//! 8.. page tables (never mapped for the agent).
use core::fmt::Write;

use tetd::abi::ioctl::{TestRequest, TEST_READ_KERNEL};
use tetd::abi::{CallFrame, Error, Mode, ABI_VERSION, CALL_FLAG_COLLABORATIVE, PAGE_SIZE};

use crate::collab::{self, AgentSpace, ServicesArea};
use crate::excl::{self, Line};
use crate::kapi::{self, prot, Fpu, Level};
use crate::pagetable::Perm;
use crate::state;
use crate::testblob;
use crate::tramp::kind;
use crate::zone::HostZone;

/// Host-side id of the test agent.
pub const TEST_AGENT_ID: u32 = 0x7e57_0001;

const CODE: u64 = 0;
const HEAP: u64 = 1;
const GUARD: u64 = 2;
const STACK: u64 = 3;
const STACK_PAGES: u64 = 4;
const FRAME: u64 = 7;
const PT: u64 = 8;

const SERVICES_OFF: u64 = 256;
const CTX_OFF: u64 = 512;
const LOG_OFF: u64 = 1024;
const LOG_CAP: u64 = 2048;
const INPUT_OFF: u64 = 3072;
const OUTPUT_OFF: u64 = 3584;
const IO_CAP: u64 = 512;

/// A value in module memory the READ_KERNEL blob tries to read.
static KERNEL_PROBE: u64 = 0x7e7d_6b65_726e_656c;

/// Run one TEST request.
pub fn run(req: &mut TestRequest) {
    req.result = 0;
    req.fault_vector = 0;
    req.fault_addr = 0;
    req.fault_rip = 0;
    req.status = match run_inner(req) {
        Ok(status) => status,
        Err(e) => e as u32,
    };
}

fn run_inner(req: &mut TestRequest) -> Result<u32, Error> {
    if req.kind == tetd::abi::ioctl::TEST_PEEK_ZONE {
        return peek_zone(req);
    }
    if req.kind == tetd::abi::ioctl::TEST_RAW_HYPERCALL {
        return crate::attack::raw_hypercall(req);
    }
    if req.kind == tetd::abi::ioctl::TEST_ZONE_ACCESS {
        return crate::attack::zone_access(req);
    }
    let Some(mode) = Mode::from_u32(req.mode) else {
        return Err(Error::BadRequest);
    };
    let blob = testblob::blob(req.kind).ok_or(Error::BadRequest)?;
    if mode == Mode::Exclusive && testblob::faults_on_purpose(req.kind) {
        kapi::log(
            Level::Warn,
            "TEST: faulting blobs only run in collaborative mode (an exclusive agent is kernel code)",
        );
        return Err(Error::Denied);
    }
    let pt_pages = collab::pt_pages_bound(PT);
    let pages = PT + pt_pages;
    let mut zone = HostZone::create(TEST_AGENT_ID, pages, mode, 0, 0)?;
    let r = call_in_zone(&mut zone, req, mode, blob, pt_pages);
    let d = zone.destroy();
    let status = r?;
    d?;
    Ok(status)
}

/// Read the first 8 bytes of agent `req.arg`'s zone with no window open.
fn peek_zone(req: &mut TestRequest) -> Result<u32, Error> {
    let id = u32::try_from(req.arg).map_err(|_| Error::BadRequest)?;
    let img = crate::ioctl::registry()
        .image_of(id)
        .ok_or(Error::NotFound)?;
    let va = img.zone().view;
    // SAFETY: the zone mapping exists while the image is loaded (module
    // mutex held); with the zone blocked the access exits to the host, which
    // answers it (all-ones) instead of faulting the guest.
    req.result = unsafe { core::ptr::read_volatile(va as *const u64) };
    let mut l = Line::new();
    let _ = write!(
        l,
        "TEST peek-zone: read {:#x} from agent {id}'s zone outside any window",
        req.result
    );
    kapi::log(Level::Warn, l.as_str());
    Ok(0)
}

fn call_in_zone(
    zone: &mut HostZone,
    req: &mut TestRequest,
    mode: Mode,
    blob: &[u8],
    pt_pages: u64,
) -> Result<u32, Error> {
    let va = zone.va;
    let gpa = zone.gpa;
    let page = |p: u64| va.wrapping_add((p * PAGE_SIZE) as usize);
    let base = va as u64;

    // Load window: copy the code, set protections, build the agent space.
    zone.open()?;
    // SAFETY: the zone is mapped RW for `pages` pages and reachable (window
    // open); blob.len() <= one page (checked).
    unsafe {
        if blob.len() > PAGE_SIZE as usize {
            return Err(Error::TooLarge);
        }
        core::ptr::copy_nonoverlapping(blob.as_ptr(), page(CODE), blob.len());
    }
    kapi::set_prot(page(CODE), 1, prot::R | prot::X).map_err(|_| Error::Internal)?;
    kapi::set_prot(page(GUARD), 1, 0).map_err(|_| Error::Internal)?;
    let mut space = if mode == Mode::Collaborative {
        let regions = [
            (CODE, 1, Perm::RX),
            (HEAP, 1, Perm::RW),
            (STACK, STACK_PAGES, Perm::RW),
            (FRAME, 1, Perm::RW),
        ];
        Some(AgentSpace::build(va, gpa, &regions, PT, pt_pages)?)
    } else {
        None
    };
    zone.close(0)?;

    // Call window.
    zone.open()?;
    let frame_va = base + FRAME * PAGE_SIZE;
    let input: u64 = if req.kind == TEST_READ_KERNEL {
        core::ptr::addr_of!(KERNEL_PROBE) as u64
    } else {
        req.arg
    };
    let area = ServicesArea {
        services: frame_va + SERVICES_OFF,
        ctx: frame_va + CTX_OFF,
        log: frame_va + LOG_OFF,
        log_cap: LOG_CAP,
        measurement: None,
    };
    // SAFETY: the frame page is mapped RW and reachable; all offsets are
    // inside it (constants above).
    unsafe {
        ((frame_va + INPUT_OFF) as *mut u64).write(input);
        if mode == Mode::Collaborative {
            collab::install_services(&area);
        } else {
            (area.services as *mut tetd::abi::Services).write(excl::services());
        }
        (frame_va as *mut CallFrame).write(CallFrame {
            abi_version: ABI_VERSION,
            agent_id: TEST_AGENT_ID,
            input: (frame_va + INPUT_OFF) as *const u8,
            input_len: 8,
            output: (frame_va + OUTPUT_OFF) as *mut u8,
            output_cap: IO_CAP,
            output_len: 0,
            services: area.services as *const tetd::abi::Services,
            heap: page(HEAP),
            heap_len: PAGE_SIZE,
            flags: if mode == Mode::Collaborative {
                CALL_FLAG_COLLABORATIVE
            } else {
                0
            },
        });
    }
    let stack_top = base + (STACK + STACK_PAGES) * PAGE_SIZE;
    let entry = base + CODE * PAGE_SIZE;
    state::stats().current_agent = TEST_AGENT_ID;
    state::stats().calls += 1;
    let t0 = kapi::time_ns();
    let word = {
        let _fpu = Fpu::begin();
        match space.as_mut() {
            // SAFETY: entry is the RX code page, frame and stack are RW pages
            // mapped by the agent space; the zone is reachable.
            Some(s) => unsafe { s.run(entry, frame_va, stack_top, 0)? },
            // SAFETY: entry is RX in the kernel mapping (set_prot above), the
            // frame and stack pages are RW; FPU claimed, preemption off.
            None => unsafe { excl::run(entry, frame_va, stack_top) },
        }
    };
    let dt = kapi::time_ns().saturating_sub(t0);
    state::stats().current_agent = 0;

    let code = word as u32;
    let status = match word >> 32 {
        kind::RETURNED => code,
        kind::ABORT => {
            if code == 0 {
                Error::Panicked as u32
            } else {
                code
            }
        }
        kind::FAULT => {
            let (vec, err, rip, cr2) = AgentSpace::last_fault();
            let cr2 = if vec == 14 { cr2 } else { 0 }; // CR2 is only meaningful for #PF
            state::stats().faults += 1;
            req.fault_vector = vec as u32;
            req.fault_addr = cr2;
            req.fault_rip = rip.wrapping_sub(entry);
            zone.report_fault(vec as u32, cr2);
            let mut l = Line::new();
            let _ = write!(
                l,
                "TEST agent faulted: vector {vec} error {err:#x} rip {rip:#x} (+{:#x}) cr2 {cr2:#x}; call ended, kernel unaffected",
                rip.wrapping_sub(entry)
            );
            kapi::log(Level::Warn, l.as_str());
            Error::Fault as u32
        }
        _ => Error::Internal as u32,
    };
    if mode == Mode::Collaborative {
        // SAFETY: frame page reachable (window still open).
        let text = unsafe { collab::take_log(&area) };
        excl::print_agent_log(TEST_AGENT_ID, text);
    }
    if status == 0 {
        // SAFETY: frame page reachable; output_len is bounded below.
        unsafe {
            let f = &*(frame_va as *const CallFrame);
            if f.output_len >= 8 && f.output_len <= IO_CAP {
                req.result = ((frame_va + OUTPUT_OFF) as *const u64).read();
            }
        }
    }
    let mut l = Line::new();
    let _ = write!(
        l,
        "TEST kind {} mode {} status {} in {} ns",
        req.kind,
        mode.name(),
        status,
        dt
    );
    kapi::log(Level::Info, l.as_str());
    zone.close(status)?;
    Ok(status)
}
