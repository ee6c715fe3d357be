//! `/dev/tetdg` ioctl dispatch. The C glue passes the command and the user
//! pointer; requests are copied in and out here. All agent state is the
//! loader core's [`Registry`] over the kernel platform.
use core::fmt::Write;

use tetd::abi::ioctl::{
    self, CallRequest, InfoRequest, ListRequest, LoadRequest, TestRequest, TrustRequest,
    UnloadRequest,
};
use tetd::abi::{AgentInfo, Error, Mode, ABI_VERSION};
use tetd::verify::{AllowList, Policy};
use tetd_kernel::{CallOptions, LoadOptions, Registry};

use crate::excl::Line;
use crate::kapi::{self, Level};
use crate::kbuf::KBuf;
use crate::kplatform::KPlatform;
use crate::state;
use crate::tramp::Shared;

const EFAULT: i64 = 14;
const ENOTTY: i64 = 25;

/// The agent registry (loader core) of the module.
static REGISTRY: Shared<Registry<KPlatform>> = Shared::new(Registry::new(KPlatform::new()));

/// The registry (module mutex held by every caller).
#[allow(clippy::mut_from_ref)]
pub fn registry() -> &'static mut Registry<KPlatform> {
    // SAFETY: every entry point runs with the module mutex held, so there is
    // exactly one user at a time, and no reference outlives the entry point.
    unsafe { &mut *REGISTRY.get() }
}

fn handle<T: Copy>(arg: u64, f: impl FnOnce(&mut T)) -> i64 {
    let Ok(mut req) = kapi::read_user::<T>(arg) else {
        return -EFAULT;
    };
    f(&mut req);
    match kapi::write_user(arg, &req) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

/// Dispatch one ioctl; returns 0 or a negative errno.
pub fn dispatch(cmd: u32, arg: u64) -> i64 {
    match cmd {
        ioctl::INFO => handle::<InfoRequest>(arg, info),
        ioctl::LOAD => handle::<LoadRequest>(arg, load),
        ioctl::CALL => handle::<CallRequest>(arg, call),
        ioctl::UNLOAD => handle::<UnloadRequest>(arg, unload),
        ioctl::LIST => handle::<ListRequest>(arg, list),
        ioctl::TRUST => handle::<TrustRequest>(arg, trust),
        ioctl::TEST => handle::<TestRequest>(arg, |r| {
            if state::stats().test_enabled {
                crate::test::run(r)
            } else {
                kapi::log(
                    Level::Warn,
                    "TEST ioctl refused: load the module with test_ioctl=1",
                );
                r.status = Error::Denied as u32;
            }
        }),
        _ => -ENOTTY,
    }
}

fn load(r: &mut LoadRequest) {
    r.agent_count = 0;
    r.agent_ids = [0; ioctl::LOAD_MAX_IDS];
    r.detail = [0; ioctl::DETAIL_LEN];
    if r.image_len == 0 || r.image_len > ioctl::MAX_IMAGE_SIZE {
        r.status = Error::BadRequest as u32;
        ioctl::set_detail(&mut r.detail, "image length is 0 or larger than 64 MiB");
        return;
    }
    let Some(mut img) = KBuf::zeroed(r.image_len as usize) else {
        r.status = Error::NoMemory as u32;
        return;
    };
    if kapi::copy_from_user(img.as_mut_slice(), r.image).is_err() {
        r.status = Error::BadRequest as u32;
        ioctl::set_detail(&mut r.detail, "image buffer not readable");
        return;
    }
    let require = state::stats().require_signed || r.flags & ioctl::LOAD_FLAG_REQUIRE_SIGNED != 0;
    // The allow-list was validated by TRUST; parse it again (no allocation).
    let list = match TRUSTED.get_ref() {
        Some(b) => AllowList::parse_bytes(b.as_slice()).unwrap_or(AllowList::empty()),
        None => AllowList::empty(),
    };
    let policy = if require {
        Policy::require_signed(list)
    } else {
        Policy::allow_unsigned(list)
    };
    let reg = registry();
    let res = reg.load(img.as_slice(), &LoadOptions::new(policy));
    // The core opened the new zone's window in zone_alloc; close it (or any
    // window a failed load left behind).
    reg.platform().close_all();
    reg.platform().clear_pending();
    match res {
        Ok(image) => {
            r.status = 0;
            let mut n = 0u32;
            for a in reg.agents().filter(|a| a.image() == image) {
                if (n as usize) < ioctl::LOAD_MAX_IDS {
                    r.agent_ids[n as usize] = a.id();
                }
                n += 1;
            }
            r.agent_count = n;
            let mut l = Line::new();
            let _ = write!(l, "loaded image: {n} agent(s)");
            kapi::log(Level::Info, l.as_str());
        }
        Err(e) => {
            r.status = e.code() as u32;
            let mut l = Line::new();
            let _ = write!(l, "{e}");
            ioctl::set_detail(&mut r.detail, l.as_str());
            let mut m = Line::new();
            let _ = write!(m, "image rejected: {e} ({})", e.code());
            kapi::log(Level::Warn, m.as_str());
        }
    }
}

/// The signer allow-list text set by TRUST.
static TRUSTED: Shared<Option<KBuf>> = Shared::new(None);

impl Shared<Option<KBuf>> {
    fn get_ref(&self) -> Option<&KBuf> {
        // SAFETY: module mutex held (see registry()).
        unsafe { (*self.get()).as_ref() }
    }
}

fn trust(r: &mut TrustRequest) {
    r.keys = 0;
    r.detail = [0; ioctl::DETAIL_LEN];
    if r.list_len > ioctl::MAX_ALLOWLIST_SIZE {
        r.status = Error::TooLarge as u32;
        ioctl::set_detail(&mut r.detail, "allow-list larger than 64 KiB");
        return;
    }
    let Some(mut buf) = KBuf::zeroed(r.list_len as usize) else {
        r.status = Error::NoMemory as u32;
        return;
    };
    if r.list_len > 0 && kapi::copy_from_user(buf.as_mut_slice(), r.list).is_err() {
        r.status = Error::BadRequest as u32;
        ioctl::set_detail(&mut r.detail, "allow-list buffer not readable");
        return;
    }
    match AllowList::parse_bytes(buf.as_slice()) {
        Ok(list) => {
            r.keys = list.len() as u32;
            r.status = 0;
            let mut l = Line::new();
            let _ = write!(l, "signer allow-list replaced: {} key(s)", r.keys);
            kapi::log(Level::Info, l.as_str());
            // SAFETY: module mutex held; the old list (if any) is dropped here.
            unsafe { *TRUSTED.get() = Some(buf) };
        }
        Err(e) => {
            r.status = Error::BadRequest as u32;
            let mut l = Line::new();
            let _ = write!(l, "{e}");
            ioctl::set_detail(&mut r.detail, l.as_str());
        }
    }
}

/// Drop the allow-list (module exit).
pub fn clear_trust() {
    // SAFETY: module mutex held.
    unsafe { *TRUSTED.get() = None };
}

fn call(r: &mut CallRequest) {
    r.output_len = 0;
    r.mode_used = 0;
    r.fault_vector = 0;
    r.fault_error = 0;
    r.fault_addr = 0;
    r.fault_rip = 0;
    r.elapsed_ns = 0;
    r.status = match call_inner(r) {
        Ok(()) => 0,
        Err(e) => e,
    };
}

fn call_inner(r: &mut CallRequest) -> Result<(), u32> {
    let mode = match r.mode {
        ioctl::MODE_AGENT_DEFAULT => None,
        m => Some(Mode::from_u32(m).ok_or(Error::BadRequest as u32)?),
    };
    if r.input_len > ioctl::MAX_IO_SIZE || r.output_cap > ioctl::MAX_IO_SIZE {
        return Err(Error::BadRequest as u32);
    }
    let mut input = KBuf::zeroed(r.input_len as usize).ok_or(Error::NoMemory as u32)?;
    let mut output = KBuf::zeroed(r.output_cap as usize).ok_or(Error::NoMemory as u32)?;
    if r.input_len > 0 && kapi::copy_from_user(input.as_mut_slice(), r.input).is_err() {
        return Err(Error::BadRequest as u32);
    }
    let timeout_ns = if r.timeout_ns != 0 {
        r.timeout_ns
    } else {
        state::stats().default_timeout_ms.saturating_mul(1_000_000)
    };
    let reg = registry();
    let token = reg
        .image_of(r.agent_id)
        .map(|i| i.zone().token)
        .ok_or(Error::NotFound as u32)?;
    let t0 = kapi::time_ns();
    reg.platform().open(token).map_err(|e| e as u32)?;
    let rep = reg.call(
        r.agent_id,
        input.as_slice(),
        output.as_mut_slice(),
        &CallOptions { mode, timeout_ns },
    );
    let status = match rep.status {
        Ok(()) => 0,
        // keep the agent's own code when it returned one of its own
        Err(Error::AgentFailed) if rep.raw_status != 0 => rep.raw_status,
        Err(e) => e as u32,
    };
    reg.platform().close(token, status);
    r.elapsed_ns = kapi::time_ns().saturating_sub(t0);
    r.mode_used = rep.mode as u32;
    if let Some(f) = rep.fault {
        r.fault_vector = f.info.vector;
        r.fault_error = f.info.error_code;
        r.fault_addr = f.info.addr;
        r.fault_rip = f.rip_offset.unwrap_or(f.info.rip);
    }
    if status != 0 {
        return Err(status);
    }
    let n = rep.output_len.min(output.as_slice().len());
    if kapi::copy_to_user(r.output, &output.as_slice()[..n]).is_err() {
        return Err(Error::BadRequest as u32);
    }
    r.output_len = n as u64;
    Ok(())
}

fn unload(r: &mut UnloadRequest) {
    match registry().unload_agent(r.agent_id) {
        Ok((_, n)) => {
            r.status = 0;
            r.removed = n as u32;
        }
        Err(e) => {
            r.status = e as u32;
            r.removed = 0;
        }
    }
}

fn list(r: &mut ListRequest) {
    let reg = registry();
    let mut n = 0u32;
    let mut status = 0;
    for a in reg.agents() {
        if n < r.cap {
            let st = a.stats();
            let info = AgentInfo {
                id: a.id(),
                mode: a.mode() as u32,
                flags: a.flags(),
                enabled: a.is_enabled() as u32,
                calls: st.calls,
                failures: st.failures,
                name: *a.name_raw(),
            };
            let dst = r.buf + n as u64 * core::mem::size_of::<AgentInfo>() as u64;
            if kapi::write_user(dst, &info).is_err() {
                status = Error::BadRequest as u32;
                break;
            }
        }
        n += 1;
    }
    r.count = n;
    r.status = status;
}

fn info(r: &mut InfoRequest) {
    let s = state::stats();
    let reg = registry();
    r.abi_version = ABI_VERSION;
    r.transport = s.transport;
    r.images = reg.images().count() as u32;
    r.agents = reg.agent_count() as u32;
    r.zone_bytes = s.zone_bytes;
    r.calls = s.calls;
    r.faults = s.faults;
    r.status = 0;
    r.test_enabled = s.test_enabled as u32;
    r.version = [0; 32];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    r.version[..v.len()].copy_from_slice(v);
}
