//! The "uart" hypercall transport (`tetd::abi::uart`): for guests the host
//! runs under QEMU/TCG, where a port write cannot be answered by rewriting
//! registers. A request frame goes out through a 16550 at
//! `tetd::abi::uart::IO_BASE`, the answer frame comes back through it; the
//! module polls the line status register (the UART's interrupt stays off).
//! Frames are encoded and checked by `tetd::abi::uart` (one definition).
//! All hypercalls run under the module mutex, so one frame is in flight.
use core::arch::asm;

use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::uart::{
    Request, Response, IO_BASE, LSR_DR, LSR_THRE, REG_DATA, REG_FCR, REG_IER, REG_LCR, REG_LSR,
    REG_MCR, RESPONSE_LEN, RESPONSE_MAGIC,
};
use tetd::abi::Error;

use crate::kapi::{self, Level, NoPreempt};
use crate::tramp::Shared;

/// 16550 scratch register (probe only).
const REG_SCR: u16 = 7;
/// How long to wait for the host's answer.
const TIMEOUT_NS: u64 = 10_000_000_000;

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O on the hypercall UART's registers (CPL 0); no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as above.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Is there a 16550 at the hypercall UART's address? (scratch register
/// keeps two different values; an unclaimed port reads back 0xff)
pub fn probe() -> bool {
    for v in [0x5a, 0xa5] {
        outb(IO_BASE + REG_SCR, v);
        if inb(IO_BASE + REG_SCR) != v {
            return false;
        }
    }
    true
}

/// Program the UART as the protocol says (no interrupts, 8N1, FIFOs on,
/// DTR/RTS) and drain stale input.
pub fn init() {
    outb(IO_BASE + REG_IER, 0);
    outb(IO_BASE + REG_LCR, 0x03);
    outb(IO_BASE + REG_FCR, 0x07);
    outb(IO_BASE + REG_MCR, 0x03);
    let mut n = 0;
    while inb(IO_BASE + REG_LSR) & LSR_DR != 0 && n < 4096 {
        let _ = inb(IO_BASE + REG_DATA);
        n += 1;
    }
}

static SEQ: Shared<u16> = Shared::new(0);

fn wait_lsr(bit: u8, deadline: u64) -> Result<(), Error> {
    let mut spins = 0u32;
    while inb(IO_BASE + REG_LSR) & bit == 0 {
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 && kapi::time_ns() > deadline {
            return Err(Error::Transport);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

fn read_byte(deadline: u64) -> Result<u8, Error> {
    wait_lsr(LSR_DR, deadline)?;
    Ok(inb(IO_BASE + REG_DATA))
}

/// One hypercall over the UART.
pub fn hypercall(call: HypercallArgs) -> Result<HypercallRet, Error> {
    // SAFETY: module mutex held by every caller (single frame in flight).
    let seq = unsafe {
        let s = &mut *SEQ.get();
        *s = s.wrapping_add(1);
        *s
    };
    let np = NoPreempt::new();
    let frame = Request::new(seq, np.cpu(), call).encode();
    let deadline = kapi::time_ns().saturating_add(TIMEOUT_NS);
    for b in frame {
        wait_lsr(LSR_THRE, deadline)?;
        outb(IO_BASE + REG_DATA, b);
    }
    // Read frames until the one answering `seq` (a stale answer to an
    // earlier, timed-out request is skipped); resynchronise on the magic.
    loop {
        let mut f = [0u8; RESPONSE_LEN];
        f[0] = read_byte(deadline)?;
        if f[0] != RESPONSE_MAGIC[0] {
            continue;
        }
        f[1] = read_byte(deadline)?;
        if f[1] != RESPONSE_MAGIC[1] {
            continue;
        }
        for b in f.iter_mut().skip(2) {
            *b = read_byte(deadline)?;
        }
        match Response::decode(&f) {
            Ok(r) if r.seq == seq => {
                drop(np);
                return Ok(r.ret());
            }
            Ok(_) => continue,
            Err(_) => {
                kapi::log(Level::Warn, "uart transport: corrupt answer frame skipped");
                continue;
            }
        }
    }
}
