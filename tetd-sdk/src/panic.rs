//! Panic handler for agent images (feature `agent`).
//!
//! A panic inside a handler logs its message through the services table and
//! aborts the call with [`Error::Panicked`]; the runtime unwinds to the call
//! boundary (no unwinding tables are needed: images are `panic = abort`).

use core::fmt::Write;

use crate::abi::Error;

struct Buf {
    data: [u8; 256],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.data.len() {
                self.data[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let frame = crate::call::current_frame();
    if !frame.is_null() {
        // SAFETY: CURRENT only ever holds the frame of the call in progress,
        // valid until `dispatch` returns (which a panic prevents).
        let services = unsafe { &*(*frame).services };
        let mut buf = Buf {
            data: [0; 256],
            len: 0,
        };
        let _ = write!(buf, "agent panicked: {}", info);
        // SAFETY: runtime-provided function pointers; buf is valid for len.
        unsafe {
            (services.log)(services.ctx, buf.data.as_ptr(), buf.len);
            (services.abort)(services.ctx, Error::Panicked.code())
        }
    }
    // No call in progress: nothing to return to. Trap.
    loop {
        // SAFETY: `ud2` raises #UD, which the runtime reports as a fault.
        unsafe { core::arch::asm!("ud2") };
    }
}
