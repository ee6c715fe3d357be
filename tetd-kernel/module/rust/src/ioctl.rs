//! `/dev/tetdg` ioctl dispatch. The C glue passes the command and the user
//! pointer; requests are copied in and out here.
use tetd::abi::ioctl::{self, InfoRequest, LoadRequest, TestRequest};
use tetd::abi::{Error, ABI_VERSION};

use crate::kapi::{self, Level};
use crate::state;

const EFAULT: i64 = 14;
const ENOTTY: i64 = 25;

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
        ioctl::LOAD => handle::<LoadRequest>(arg, |r| {
            r.agent_count = 0;
            r.status = Error::Unsupported as u32;
            ioctl::set_detail(
                &mut r.detail,
                "image loading is not integrated yet (waiting for the tetd-kernel loader core)",
            );
        }),
        ioctl::CALL | ioctl::UNLOAD | ioctl::LIST => {
            // Same shape for all three: a status field the caller can read.
            match cmd {
                ioctl::CALL => {
                    handle::<ioctl::CallRequest>(arg, |r| r.status = Error::NotFound as u32)
                }
                ioctl::UNLOAD => {
                    handle::<ioctl::UnloadRequest>(arg, |r| r.status = Error::NotFound as u32)
                }
                _ => handle::<ioctl::ListRequest>(arg, |r| {
                    r.count = 0;
                    r.status = 0;
                }),
            }
        }
        _ => -ENOTTY,
    }
}

fn info(r: &mut InfoRequest) {
    let s = state::stats();
    r.abi_version = ABI_VERSION;
    r.transport = s.transport;
    r.images = 0;
    r.agents = 0;
    r.zone_bytes = s.zone_bytes;
    r.calls = s.calls;
    r.faults = s.faults;
    r.status = 0;
    r.test_enabled = s.test_enabled as u32;
    r.version = [0; 32];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    r.version[..v.len()].copy_from_slice(v);
}
