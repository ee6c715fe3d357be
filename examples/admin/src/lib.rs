//! Admin agents: manage the other loaded agents through the runtime's admin
//! services (`Services.admin`), which only agents flagged `admin` may use.
//!
//! `admin` (id 5, flagged admin). Input is a command:
//!
//! | input | output |
//! |---|---|
//! | `list` | one line per loaded agent: `<id> <name> <mode> <enabled\|disabled> calls=<n> failures=<n>[ admin]` |
//! | `disable <id>` / `enable <id>` | `ok` |
//! | `measure <id>` | the SHA-384 measurement of the image holding agent `<id>`, 96 hex digits |
//!
//! `admin-probe` (id 6, *not* flagged admin) runs the same `list` and so
//! fails with `Denied`: the runtime, not the agent, enforces the privilege.
#![no_std]

use core::fmt::Write;

use tetd::abi::{AdminOp, Mode, AGENT_FLAG_ADMIN, AGENT_INFO_SIZE, AGENT_NAME_LEN};
use tetd::{Call, Error, Result};

/// Most agents `list` reports.
const MAX_AGENTS: usize = 128;

/// Formats into the call's output buffer.
struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// `list`: decode the `AgentInfo` records the runtime returns.
fn list(ctx: &mut Call<'_>) -> Result<()> {
    let mut records = [0u8; MAX_AGENTS * AGENT_INFO_SIZE];
    let n = ctx.admin(AdminOp::List, 0, &mut records)?;
    let mut o = Out {
        buf: ctx.output_buffer(),
        len: 0,
    };
    for r in records[..n].chunks_exact(AGENT_INFO_SIZE) {
        let mut name = [0u8; AGENT_NAME_LEN];
        name.copy_from_slice(&r[32..32 + AGENT_NAME_LEN]);
        let mode = Mode::from_u32(le32(r, 4)).map_or("?", |m| m.name());
        writeln!(
            o,
            "{} {} {} {} calls={} failures={}{}",
            le32(r, 0),
            tetd::abi::decode_name(&name).unwrap_or("?"),
            mode,
            if le32(r, 12) == 1 {
                "enabled"
            } else {
                "disabled"
            },
            le64(r, 16),
            le64(r, 24),
            if le32(r, 8) & AGENT_FLAG_ADMIN != 0 {
                " admin"
            } else {
                ""
            },
        )
        .map_err(|_| Error::OutputTooLarge)?;
    }
    let len = o.len;
    ctx.set_output_len(len)
}

fn parse_id(arg: &[u8]) -> Result<u64> {
    core::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(u64::from)
        .ok_or(Error::InvalidInput)
}

#[tetd::agent(id = 5, name = "admin", admin)]
fn admin(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    let (op, arg) = match input.iter().position(|&b| b == b' ') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &input[input.len()..]),
    };
    match op {
        b"list" if arg.is_empty() => list(ctx),
        b"disable" | b"enable" => {
            let id = parse_id(arg)?;
            let op = if op == b"disable" {
                AdminOp::Disable
            } else {
                AdminOp::Enable
            };
            ctx.admin(op, id, &mut [])?;
            ctx.output(b"ok")
        }
        b"measure" => {
            let id = parse_id(arg)?;
            let mut m = [0u8; 48];
            ctx.admin(AdminOp::Measurement, id, &mut m)?;
            let mut o = Out {
                buf: ctx.output_buffer(),
                len: 0,
            };
            for b in m {
                write!(o, "{b:02x}").map_err(|_| Error::OutputTooLarge)?;
            }
            let len = o.len;
            ctx.set_output_len(len)
        }
        _ => Err(Error::InvalidInput),
    }
}

/// The same `list`, from an agent without the admin flag: the runtime
/// answers `Denied`.
#[tetd::agent(id = 6, name = "admin-probe")]
fn admin_probe(ctx: &mut Call) -> Result<()> {
    list(ctx)
}
