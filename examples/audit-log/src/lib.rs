//! Audit-log agent (id 4): an append-only log with an HMAC-SHA256 chain.
//!
//! On the first call the agent draws a 32-byte MAC key from the runtime's
//! random service; the key stays in the agent's heap region (its zone) and
//! is never output. Every entry is chained to the one before it:
//!
//! ```text
//! mac_0 = HMAC(key, "tetd-audit-log genesis")
//! mac_n = HMAC(key, mac_{n-1} ‖ seq_n (u64 LE) ‖ len_n (u32 LE) ‖ data_n)     seq_n = n
//! head  = mac_count
//! ```
//!
//! so changing, dropping, reordering or inserting any entry changes every MAC
//! after it, and nobody without the key can produce a chain that ends in the
//! agent's head.
//!
//! Input is an operation name, optionally followed by one space and data:
//!
//! | input | output |
//! |---|---|
//! | `append <data>` | `seq` (u64 LE) ‖ the entry's MAC (32 bytes) |
//! | `head` | `count` (u64 LE) ‖ head MAC (32 bytes) |
//! | `verify` | `ok <count>`: the stored chain was recomputed and matches |
//! | `export` | the log as records `seq u64 ‖ len u32 ‖ data ‖ mac[32]`, for storage outside the agent |
//! | `check <export>` | `ok <count>` if an exported log is exactly this agent's log (every MAC and the head match); `Crypto` error otherwise, with the first bad entry in the agent's log output |
//!
//! Errors: unknown operation `InvalidInput`; log full `NoMemory`; a chain
//! that does not verify `Crypto`.
#![no_std]

use core::fmt::Write;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tetd::{Call, Error, Result};

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 8] = b"AUDITLG1";
const GENESIS: &[u8] = b"tetd-audit-log genesis";
/// Heap layout.
const OFF_MAGIC: usize = 0;
const OFF_KEY: usize = 8;
const OFF_COUNT: usize = 40;
const OFF_HEAD: usize = 48;
const OFF_USED: usize = 80;
const OFF_ENTRIES: usize = 88;
/// Record header: seq (8) + len (4); then data; then the MAC (32).
const REC_HDR: usize = 12;
const MAC_LEN: usize = 32;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn mac_key(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn genesis(key: &[u8]) -> [u8; MAC_LEN] {
    let mut m = mac_key(key);
    m.update(GENESIS);
    m.finalize().into_bytes().into()
}

fn chain(key: &[u8], prev: &[u8; MAC_LEN], seq: u64, data: &[u8]) -> [u8; MAC_LEN] {
    let mut m = mac_key(key);
    m.update(prev);
    m.update(&seq.to_le_bytes());
    m.update(&(data.len() as u32).to_le_bytes());
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Initialise the log on first use.
fn state(ctx: &mut Call<'_>) -> Result<()> {
    if ctx.heap().len() < OFF_ENTRIES {
        return Err(Error::NoMemory);
    }
    if &ctx.heap()[OFF_MAGIC..OFF_MAGIC + 8] == MAGIC {
        return Ok(());
    }
    let mut key = [0u8; 32];
    ctx.random(&mut key)?;
    let g = genesis(&key);
    let h = ctx.heap();
    h[OFF_KEY..OFF_KEY + 32].copy_from_slice(&key);
    h[OFF_COUNT..OFF_COUNT + 8].copy_from_slice(&0u64.to_le_bytes());
    h[OFF_HEAD..OFF_HEAD + MAC_LEN].copy_from_slice(&g);
    h[OFF_USED..OFF_USED + 8].copy_from_slice(&0u64.to_le_bytes());
    h[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(MAGIC);
    key.fill(0);
    ctx.log("audit-log: new log, MAC key generated inside the agent");
    Ok(())
}

/// Walk `records` (the export format) recomputing the chain. Returns the
/// count and final MAC, or the index of the first entry that does not
/// verify (or is malformed).
fn walk(key: &[u8], records: &[u8]) -> core::result::Result<(u64, [u8; MAC_LEN]), u64> {
    let mut prev = genesis(key);
    let mut at = 0usize;
    let mut n = 0u64;
    while at < records.len() {
        if records.len() - at < REC_HDR {
            return Err(n);
        }
        let seq = u64_at(records, at);
        let len = u32_at(records, at + 8) as usize;
        let data_end = at + REC_HDR + len;
        if seq != n || records.len() < data_end || records.len() - data_end < MAC_LEN {
            return Err(n);
        }
        let data = &records[at + REC_HDR..data_end];
        let want = chain(key, &prev, seq, data);
        if !same(&want, &records[data_end..data_end + MAC_LEN]) {
            return Err(n);
        }
        prev = want;
        at = data_end + MAC_LEN;
        n += 1;
    }
    Ok((n, prev))
}

/// Writes formatted text into the output buffer.
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

fn reply_ok(ctx: &mut Call<'_>, count: u64) -> Result<()> {
    let mut o = Out {
        buf: ctx.output_buffer(),
        len: 0,
    };
    write!(o, "ok {count}").map_err(|_| Error::OutputTooLarge)?;
    let n = o.len;
    ctx.set_output_len(n)
}

/// Compare a walked chain with the stored head; log and fail on mismatch.
fn judge(
    ctx: &mut Call<'_>,
    what: &str,
    walked: core::result::Result<(u64, [u8; MAC_LEN]), u64>,
) -> Result<()> {
    let h = ctx.heap();
    let count = u64_at(h, OFF_COUNT);
    let mut head = [0u8; MAC_LEN];
    head.copy_from_slice(&h[OFF_HEAD..OFF_HEAD + MAC_LEN]);
    let mut msg = [0u8; 96];
    let mut o = Out {
        buf: &mut msg,
        len: 0,
    };
    match walked {
        Ok((n, last)) if n == count && same(&last, &head) => return reply_ok(ctx, n),
        Ok((n, _)) => {
            let _ = write!(
                o,
                "audit-log: {what}: {n} entries do not end in the head ({count} entries)"
            );
        }
        Err(i) => {
            let _ = write!(o, "audit-log: {what}: entry {i} does not verify");
        }
    }
    let n = o.len;
    ctx.log(core::str::from_utf8(&msg[..n]).unwrap_or("audit-log: chain broken"));
    Err(Error::Crypto)
}

#[tetd::agent(id = 4, name = "audit-log")]
fn audit_log(ctx: &mut Call) -> Result<()> {
    let input = ctx.input();
    let (op, arg) = match input.iter().position(|&b| b == b' ') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &input[input.len()..]),
    };
    state(ctx)?;
    match op {
        b"append" => {
            let h = ctx.heap();
            let count = u64_at(h, OFF_COUNT);
            let used = u64_at(h, OFF_USED) as usize;
            let rec = REC_HDR + arg.len() + MAC_LEN;
            let at = OFF_ENTRIES + used;
            if arg.len() > u32::MAX as usize || h.len() - at < rec {
                return Err(Error::NoMemory);
            }
            let mut prev = [0u8; MAC_LEN];
            prev.copy_from_slice(&h[OFF_HEAD..OFF_HEAD + MAC_LEN]);
            let mac = chain(&h[OFF_KEY..OFF_KEY + 32], &prev, count, arg);
            h[at..at + 8].copy_from_slice(&count.to_le_bytes());
            h[at + 8..at + 12].copy_from_slice(&(arg.len() as u32).to_le_bytes());
            h[at + REC_HDR..at + REC_HDR + arg.len()].copy_from_slice(arg);
            h[at + REC_HDR + arg.len()..at + rec].copy_from_slice(&mac);
            h[OFF_USED..OFF_USED + 8].copy_from_slice(&((used + rec) as u64).to_le_bytes());
            h[OFF_COUNT..OFF_COUNT + 8].copy_from_slice(&(count + 1).to_le_bytes());
            h[OFF_HEAD..OFF_HEAD + MAC_LEN].copy_from_slice(&mac);
            let mut out = [0u8; 8 + MAC_LEN];
            out[..8].copy_from_slice(&count.to_le_bytes());
            out[8..].copy_from_slice(&mac);
            ctx.output(&out)
        }
        b"head" if arg.is_empty() => {
            let h = ctx.heap();
            let mut out = [0u8; 8 + MAC_LEN];
            out[..8].copy_from_slice(&h[OFF_COUNT..OFF_COUNT + 8]);
            out[8..].copy_from_slice(&h[OFF_HEAD..OFF_HEAD + MAC_LEN]);
            ctx.output(&out)
        }
        b"verify" if arg.is_empty() => {
            let h = ctx.heap();
            let used = u64_at(h, OFF_USED) as usize;
            let walked = walk(
                &h[OFF_KEY..OFF_KEY + 32],
                &h[OFF_ENTRIES..OFF_ENTRIES + used],
            );
            judge(ctx, "stored log", walked)
        }
        b"export" if arg.is_empty() => {
            let used = u64_at(ctx.heap(), OFF_USED) as usize;
            if used > ctx.output_capacity() {
                return Err(Error::OutputTooLarge);
            }
            // Copy through a bounce-free split: the heap and the output
            // buffer are different regions, but both borrow `ctx`.
            let mut done = 0;
            let mut chunk = [0u8; 512];
            while done < used {
                let n = (used - done).min(chunk.len());
                chunk[..n].copy_from_slice(&ctx.heap()[OFF_ENTRIES + done..OFF_ENTRIES + done + n]);
                ctx.output_buffer()[done..done + n].copy_from_slice(&chunk[..n]);
                done += n;
            }
            ctx.set_output_len(used)
        }
        b"check" => {
            let walked = walk(&ctx.heap()[OFF_KEY..OFF_KEY + 32], arg);
            judge(ctx, "exported log", walked)
        }
        _ => Err(Error::InvalidInput),
    }
}
