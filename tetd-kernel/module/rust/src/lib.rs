//! TETD-G kernel module `tetdg.ko`, Rust part.
//!
//! Linked into the module as one relocatable object (see
//! `scripts/build-module.sh` and `docs/kernel-module.md`). The C glue
//! (`tetd-kernel/module/tetdg_main.c`) calls the `tetdg_rs_*` functions with
//! the module mutex held; this crate calls back into C only through
//! [`kapi`]'s `tetdg_k_*` helpers.
//!
//! On the host the crate is an ordinary library with the target-independent
//! parts ([`pagetable`]); everything that needs the kernel is
//! `cfg(target_os = "none")`.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod pagetable;

#[cfg(target_os = "none")]
mod collab;
#[cfg(target_os = "none")]
mod excl;
#[cfg(target_os = "none")]
mod ioctl;
#[cfg(target_os = "none")]
mod kapi;
#[cfg(target_os = "none")]
#[allow(dead_code)] // used by the image path (LOAD/CALL) once the loader core is linked
mod kbuf;
#[cfg(target_os = "none")]
mod state;
#[cfg(target_os = "none")]
mod test;
#[cfg(target_os = "none")]
mod testblob;
#[cfg(target_os = "none")]
mod tramp;
#[cfg(target_os = "none")]
mod zone;

#[cfg(target_os = "none")]
mod entry {
    use core::fmt::Write;

    use crate::excl::Line;
    use crate::kapi::{self, Level};

    const _: () = assert!(
        tetd::abi::SIM_HYPERCALL_PORT == 0x0e40,
        "update TETDG_SIM_PORT in tetdg_main.c"
    );

    /// Module init: remember the transport, build the agent IDT.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_init(transport: u32, test_enabled: u32) -> i32 {
        let s = crate::state::stats();
        s.transport = transport;
        s.test_enabled = test_enabled != 0;
        crate::collab::init_idt();
        0
    }

    /// Module exit.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_exit() {}

    /// ioctl on /dev/tetdg.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_ioctl(cmd: u32, arg: u64) -> i64 {
        crate::ioctl::dispatch(cmd, arg)
    }

    /// Render /proc/tetdg_info.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_proc_show(seq: *mut core::ffi::c_void) {
        let s = crate::state::stats();
        let mut l = Line::new();
        let _ = write!(
            l,
            "tetdg {}\ntransport: {}\nabi: {}\n",
            env!("CARGO_PKG_VERSION"),
            if s.transport == tetd::abi::ioctl::TRANSPORT_TDCALL {
                "tdcall"
            } else {
                "port-io"
            },
            tetd::abi::ABI_VERSION
        );
        kapi::seq_write(seq, l.as_str());
        let mut l = Line::new();
        let _ = write!(
            l,
            "calls: {}\nfaults: {}\nzone_bytes: {}\nagents: 0\n",
            s.calls, s.faults, s.zone_bytes
        );
        kapi::seq_write(seq, l.as_str());
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let mut l = Line::new();
        let _ = write!(l, "BUG: Rust panic: {info}");
        kapi::log(Level::Err, l.as_str());
        extern "C" {
            fn tetdg_k_bug() -> !;
        }
        // SAFETY: reports the bug and never returns (BUG()).
        unsafe { tetdg_k_bug() }
    }
}
