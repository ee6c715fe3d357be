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
mod attack;
#[cfg(target_os = "none")]
mod collab;
#[cfg(target_os = "none")]
mod excl;
#[cfg(target_os = "none")]
mod ioctl;
#[cfg(target_os = "none")]
mod kapi;
#[cfg(target_os = "none")]
mod kbuf;
#[cfg(target_os = "none")]
mod kplatform;
#[cfg(target_os = "none")]
mod state;
#[cfg(target_os = "none")]
mod test;
#[cfg(target_os = "none")]
mod testblob;
#[cfg(target_os = "none")]
mod tramp;
#[cfg(target_os = "none")]
mod uart;
#[cfg(target_os = "none")]
mod zone;

/// Name of a `tetd::abi::ioctl::TRANSPORT_*` value.
pub fn transport_name(t: u32) -> &'static str {
    match t {
        tetd::abi::ioctl::TRANSPORT_PORT => "port-io",
        tetd::abi::ioctl::TRANSPORT_TDCALL => "tdcall",
        tetd::abi::ioctl::TRANSPORT_LOOPBACK => "loopback (test only: no host, zones in guest RAM)",
        tetd::abi::ioctl::TRANSPORT_UART => "uart",
        _ => "unknown",
    }
}

#[cfg(target_os = "none")]
mod entry {
    use core::fmt::Write;

    use crate::excl::Line;
    use crate::kapi::{self, Level};

    // Numbers tetdg_main.c uses (C cannot import tetd::abi).
    const _: () = {
        use tetd::abi::{ioctl as io, Error as E, Leaf as L};
        assert!(
            tetd::abi::SIM_HYPERCALL_PORT == 0x0e40,
            "TETDG_SIM_PORT in tetdg_main.c"
        );
        assert!(
            io::TRANSPORT_PORT == 0 && io::TRANSPORT_TDCALL == 1 && io::TRANSPORT_LOOPBACK == 2
        );
        assert!(L::AgentAccess as u64 == 1 && L::VmmEnter as u64 == 2 && L::VmmResume as u64 == 3);
        assert!(L::AgentDisable as u64 == 4 && L::AgentFault as u64 == 7);
        assert!(E::NoMemory as u32 == 14 && E::Unsupported as u32 == 11);
        assert!(E::UnknownAgent as u32 == 201 && E::AlreadyRunning as u32 == 203);
        assert!(E::NotRunning as u32 == 204 && E::AlreadyRegistered as u32 == 206);
        assert!(E::TableFull as u32 == 301);
    };

    /// `transport` value of tetdg_main.c for "auto" outside a TD.
    const TRANSPORT_AUTO_NOT_TD: u32 = 255;

    /// Module init: resolve and remember the transport, build the agent IDT.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_init(
        transport: u32,
        test_enabled: u32,
        require_signed: u32,
        timeout_ms: u32,
    ) -> i32 {
        let s = crate::state::stats();
        s.default_timeout_ms = timeout_ms as u64;
        // "auto" outside a TD: the hypercall UART if one answers, else port I/O.
        let transport = match transport {
            TRANSPORT_AUTO_NOT_TD if crate::uart::probe() => tetd::abi::ioctl::TRANSPORT_UART,
            TRANSPORT_AUTO_NOT_TD => tetd::abi::ioctl::TRANSPORT_PORT,
            t => t,
        };
        if transport == tetd::abi::ioctl::TRANSPORT_UART {
            crate::uart::init();
        }
        s.transport = transport;
        let mut l = Line::new();
        let _ = write!(
            l,
            "hypercall transport: {}",
            crate::transport_name(transport)
        );
        kapi::log(Level::Info, l.as_str());
        s.test_enabled = test_enabled != 0;
        s.require_signed = require_signed != 0;
        crate::collab::init_idt();
        0
    }

    /// Module exit: unload every image (AGENT_DISABLE, unmap).
    #[no_mangle]
    pub extern "C" fn tetdg_rs_exit() {
        crate::ioctl::registry().unload_all();
        crate::ioctl::clear_trust();
    }

    /// ioctl on /dev/tetdg.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_ioctl(cmd: u32, arg: u64) -> i64 {
        crate::ioctl::dispatch(cmd, arg)
    }

    struct Seq(*mut core::ffi::c_void);

    impl Write for Seq {
        fn write_str(&mut self, t: &str) -> core::fmt::Result {
            kapi::seq_write(self.0, t);
            Ok(())
        }
    }

    /// Render /proc/tetdg_info: the loader core's text plus the module's
    /// transport and counters.
    #[no_mangle]
    pub extern "C" fn tetdg_rs_proc_show(seq: *mut core::ffi::c_void) {
        let s = crate::state::stats();
        let mut w = Seq(seq);
        let _ = crate::ioctl::registry().write_info(&mut w);
        let _ = writeln!(
            w,
            "module: transport {}, abi {}, {} call(s), {} fault(s) caught, {} zone byte(s) mapped{}",
            crate::transport_name(s.transport),
            tetd::abi::ABI_VERSION,
            s.calls,
            s.faults,
            s.zone_bytes,
            if s.require_signed { ", signed images only" } else { "" }
        );
        // The host's ids of the image zones (the image's agent ids are
        // aliases of them in the host's table).
        for (id, va, gpa, pages) in crate::ioctl::registry().platform().host_zones() {
            let _ = writeln!(w, "  zone {id} base {va:#018x} gpa {gpa:#x} pages {pages}");
        }
        let log = crate::ioctl::registry().platform().meas_log();
        let _ = writeln!(
            w,
            "measurements (RTMR{}, load order): {}",
            tetd::abi::AGENT_RTMR_INDEX,
            log.count
        );
        for (i, e) in log.events.iter().take(log.count).enumerate() {
            let _ = write!(w, "  {:<3} ", i + 1);
            for b in e.measurement {
                let _ = write!(w, "{b:02x}");
            }
            let end = e
                .package
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(e.package.len());
            let _ = writeln!(
                w,
                "  {}  first agent {}{}",
                core::str::from_utf8(&e.package[..end]).unwrap_or("?"),
                e.first_id,
                if e.extended {
                    ""
                } else {
                    "  (not extended: loopback transport)"
                }
            );
        }
        let _ = write!(w, "rtmr{} expected: ", tetd::abi::AGENT_RTMR_INDEX);
        for b in log.rtmr {
            let _ = write!(w, "{b:02x}");
        }
        let _ = writeln!(w);
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
