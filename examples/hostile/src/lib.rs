//! A hostile agent: it hands the runtime's services pointers that are not
//! its own and reads foreign memory directly. Used by the attack suite
//! (`tetd-kernel/module/tests/attack.sh`, docs/threat-model.md).
//!
//! Input (ASCII): `OP PTR LEN ARG` — `PTR` in hex (`0x` optional), `LEN`
//! and `ARG` in decimal. Output: `status N` (0 or the `tetd::Error` code the
//! service answered), `value 0x...` (direct read) or the agent's own
//! addresses (`w`).
//!
//! | op | does | a correct runtime |
//! |---|---|---|
//! | `w` | prints its own input, output and heap addresses | — |
//! | `l` | `log` of `LEN` bytes at `PTR` | logs nothing unless the range is its own (exclusive); faults (collaborative) |
//! | `r` | `random` into `LEN` bytes at `PTR` | `InvalidInput` unless its own writable memory; faults (collaborative) |
//! | `n` | `register_entry(ARG, name at PTR/LEN, its own entry)` | `InvalidInput` for a foreign name |
//! | `e` | `register_entry(ARG, "hostile-dyn", entry = PTR)` | `BadEntry` outside its code |
//! | `a` | `admin(List)` into `LEN` bytes at `PTR` | `InvalidInput` (foreign) / `Denied` (not an admin) |
//! | `d` | reads 8 bytes at `PTR` itself | exclusive: works (the agent is kernel code); collaborative: page fault |
#![no_std]

use core::fmt::Write;

use tetd::abi::{AdminOp, AgentEntry, CallFrame};
use tetd::{Call, Error, Result};

/// A small formatter into a fixed buffer.
struct Out {
    buf: [u8; 200],
    len: usize,
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let end = self.len.checked_add(b.len()).ok_or(core::fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

fn code(r: Result<()>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// A registered entry point (the `n` op registers it under a foreign name).
unsafe extern "C" fn dyn_entry(_frame: *mut CallFrame) -> u32 {
    0
}

#[tetd::agent(id = 40, name = "hostile")]
fn hostile(ctx: &mut Call) -> Result<()> {
    let input = core::str::from_utf8(ctx.input()).map_err(|_| Error::InvalidInput)?;
    let mut it = input.split_ascii_whitespace();
    let op = it.next().ok_or(Error::InvalidInput)?;
    let ptr = it
        .next()
        .map_or(Some(0), parse_hex)
        .ok_or(Error::InvalidInput)?;
    let len: usize = it
        .next()
        .map_or(Ok(0), str::parse)
        .map_err(|_| Error::InvalidInput)?;
    let arg: u64 = it
        .next()
        .map_or(Ok(0), str::parse)
        .map_err(|_| Error::InvalidInput)?;
    // The pointers are opaque to the compiler: whatever the runtime does
    // with them is what is tested.
    let ptr = core::hint::black_box(ptr);
    let mut out = Out {
        buf: [0; 200],
        len: 0,
    };
    // SAFETY (all blocks below): none intended. This agent is hostile on
    // purpose: it builds slices over memory that is not its own and hands
    // them to the runtime, whose services must check them before any access.
    let status = match op {
        "w" => {
            let i = ctx.input().as_ptr() as u64;
            let h = ctx.heap().as_mut_ptr() as u64;
            let o = ctx.output_buffer().as_mut_ptr() as u64;
            let _ = write!(out, "input {i:#x} output {o:#x} heap {h:#x}");
            return ctx.output(&out.buf[..out.len]);
        }
        "l" => {
            let s = unsafe {
                core::str::from_utf8_unchecked(core::slice::from_raw_parts(ptr as *const u8, len))
            };
            ctx.log(s);
            0
        }
        "r" => code(ctx.random(unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len) })),
        "n" => {
            let name = unsafe {
                core::str::from_utf8_unchecked(core::slice::from_raw_parts(ptr as *const u8, len))
            };
            code(ctx.register_entry(arg as u32, name, dyn_entry))
        }
        "e" => {
            if ptr == 0 {
                return Err(Error::InvalidInput); // a null fn pointer cannot exist
            }
            let entry: AgentEntry =
                unsafe { core::mem::transmute::<usize, AgentEntry>(ptr as usize) };
            code(ctx.register_entry(arg as u32, "hostile-dyn", entry))
        }
        "a" => {
            let buf = unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len) };
            code(ctx.admin(AdminOp::List, 0, buf).map(|_| ()))
        }
        "d" => {
            let v = unsafe { core::ptr::read_volatile(ptr as *const u64) };
            let _ = write!(out, "value {v:#x}");
            return ctx.output(&out.buf[..out.len]);
        }
        _ => return Err(Error::InvalidInput),
    };
    let _ = write!(out, "status {status}");
    ctx.output(&out.buf[..out.len])
}
