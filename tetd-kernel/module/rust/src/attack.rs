//! TEST hooks for the attack suite (`tetdctl attack`, module parameter
//! `test_ioctl=1` only): the guest kernel as the adversary of the host.
//!
//! * [`raw_hypercall`]: one TETD hypercall with any leaf and arguments,
//!   through the module's transport but outside its window bookkeeping
//!   (VMM_ENTER for agents it did not enter, replayed VMM_RESUME, DISABLE
//!   behind the registry's back, ...). The module's own state is not
//!   updated: that is the point — the host must stay consistent whatever
//!   the kernel sends.
//! * [`zone_access`]: read or write 8 bytes of an agent's zone with no
//!   window open. A host that enforces blocking answers reads with
//!   all-ones and drops writes (KVM engine); the QEMU/TCG engine does not
//!   enforce blocking, and the test then sees the data (docs/engines.md).
use core::fmt::Write;

use tetd::abi::ioctl::{
    self, RawHypercall, TestRequest, ZoneAccess, RAW_FLAG_VCPU_ARG1, ZONE_REGION_FRAME,
    ZONE_REGION_HEAP, ZONE_REGION_INPUT, ZONE_REGION_OUTPUT,
};
use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::{Error, TETD_VMCALL_VENDOR};

use crate::excl::Line;
use crate::kapi::{self, Level, NoPreempt};
use crate::state;

/// Sends `call` through the module's transport; `Err` only if nobody
/// answered.
fn send(call: HypercallArgs) -> Result<HypercallRet, Error> {
    match state::stats().transport {
        ioctl::TRANSPORT_TDCALL => {
            // SAFETY: TDG.VP.VMCALL with the TETD vendor value; this
            // transport is only selected inside a TD.
            unsafe { tetd::tdcall::vmcall(&call) }.map_err(|_| Error::Transport)
        }
        ioctl::TRANSPORT_UART => crate::uart::hypercall(call),
        _ => match kapi::hypercall(TETD_VMCALL_VENDOR, call.leaf, call.args) {
            Ok((status, results)) if status != TETD_VMCALL_VENDOR => {
                Ok(HypercallRet { status, results })
            }
            _ => Err(Error::Transport),
        },
    }
}

/// TEST_RAW_HYPERCALL: `req.arg` is the user address of a [`RawHypercall`].
pub fn raw_hypercall(req: &mut TestRequest) -> Result<u32, Error> {
    let mut h: RawHypercall = kapi::read_user(req.arg).map_err(|_| Error::BadRequest)?;
    let ret = {
        let np = NoPreempt::new();
        h.vcpu = np.cpu();
        if h.flags & RAW_FLAG_VCPU_ARG1 != 0 {
            h.args[1] = h.vcpu as u64;
        }
        send(HypercallArgs {
            leaf: h.leaf,
            args: h.args,
        })?
    };
    h.status = ret.status;
    h.results = ret.results;
    let mut l = Line::new();
    let _ = write!(
        l,
        "TEST raw hypercall leaf {:#x} args {:x?} from cpu {}: status {} results {:x?}",
        h.leaf, h.args, h.vcpu, h.status, h.results
    );
    kapi::log(Level::Warn, l.as_str());
    kapi::write_user(req.arg, &h).map_err(|_| Error::BadRequest)?;
    Ok(0)
}

/// TEST_ZONE_ACCESS: `req.arg` is the user address of a [`ZoneAccess`].
pub fn zone_access(req: &mut TestRequest) -> Result<u32, Error> {
    let mut z: ZoneAccess = kapi::read_user(req.arg).map_err(|_| Error::BadRequest)?;
    let reg = crate::ioctl::registry();
    let img = reg.image_of(z.agent_id).ok_or(Error::NotFound)?;
    let l = img.layout();
    let span = match z.region {
        ZONE_REGION_INPUT => l.input,
        ZONE_REGION_OUTPUT => l.output,
        ZONE_REGION_FRAME => l.frame,
        ZONE_REGION_HEAP => l.heap,
        _ => return Err(Error::BadRequest),
    };
    if z.reserved != 0 || z.write > 1 || z.offset.checked_add(8).is_none_or(|e| e > span.len) {
        return Err(Error::BadRequest);
    }
    let off = span.offset + z.offset;
    // Read-write regions only, so the kernel mapping never faults.
    if !l.check_access(off, 8, true) {
        return Err(Error::BadRequest);
    }
    let zone = img.zone();
    z.gpa = reg.platform().zone_gpa(zone.token).map_or(0, |g| g + off);
    // SAFETY: `off + 8` lies in a read-write region of the zone's kernel
    // mapping (checked against the layout), which exists while the image is
    // loaded (module mutex held). With the zone blocked the access exits to
    // the host, which answers it instead of faulting the guest.
    unsafe {
        let p = zone.view.add(off as usize) as *mut u64;
        if z.write == 1 {
            p.write_volatile(z.value);
        } else {
            z.value = p.read_volatile();
        }
    }
    let mut m = Line::new();
    let _ = write!(
        m,
        "TEST zone {}: agent {} gpa {:#x} value {:#x} outside any window",
        if z.write == 1 { "write" } else { "read" },
        z.agent_id,
        z.gpa,
        z.value
    );
    kapi::log(Level::Warn, m.as_str());
    kapi::write_user(req.arg, &z).map_err(|_| Error::BadRequest)?;
    Ok(0)
}
