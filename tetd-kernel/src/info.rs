//! The text of `/proc/tetdg_info`, rendered into a caller's buffer.
//!
//! ```text
//! TETD-G 0.1.0: 1 image, 2 agents, mode policy: per agent
//! images:
//!   IMAGE PACKAGE              VERSION    ZONE               ZONE_SIZE  SIGNER
//!   1     echo                 0.1.0      0x00007f5e1c000000 0x00016000 unsigned
//!     measurement 4e1f...(48 bytes hex)
//! agents:
//!   ID         NAME                             IMAGE MODE          FLAGS  STATE    CALLS      FAILED     FAULTS     TIMEOUTS   LAST
//!   1          echo                             1     exclusive     -      enabled  3          0          0          0          ok
//!   7          faulty                           2     exclusive     -      enabled  1          1          1          0          E5 agent faulted
//!     last fault: vector 14 error 0x7 addr 0x00007f5e1c021ff8 (stack-guard) rip +0x1a2c
//! ```
//!
//! The format is meant for people; a program should use the `LIST` ioctl.
//! Names are printed with control characters replaced by `?`.

use core::fmt::{self, Write};

use tetd::abi::{Error, AGENT_FLAG_ADMIN, AGENT_FLAG_ENCRYPTED};
use tetd::verify::Hex;

use crate::platform::Platform;
use crate::registry::Registry;

/// A `fmt::Write` over a fixed buffer that cuts at the end instead of
/// failing (and remembers it did).
pub struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> BufWriter<'a> {
    /// Write into `buf` from the start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        BufWriter {
            buf,
            len: 0,
            truncated: false,
        }
    }
    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Nothing written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Output was cut because the buffer is full.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
    /// The written text (only ever whole UTF-8 characters are written).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

/// A name with control characters (and non-printing spaces) replaced.
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0.is_empty() { "-" } else { self.0 };
        for c in s.chars() {
            f.write_char(if c.is_control() || c == ' ' { '?' } else { c })?;
        }
        Ok(())
    }
}

/// Left-aligned in a column of `w` characters (counted as chars).
struct Col<T>(T, usize);

impl<T: fmt::Display> fmt::Display for Col<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counter = Counter(0);
        let _ = write!(counter, "{}", self.0);
        write!(f, "{}", self.0)?;
        for _ in counter.0..self.1 {
            f.write_char(' ')?;
        }
        Ok(())
    }
}

struct Counter(usize);
impl Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.chars().count();
        Ok(())
    }
}

/// Describes a status code: `ok`, `-` (never called), or `E<n> <text>`.
pub struct StatusText(pub Option<u32>);

impl fmt::Display for StatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some(0) => f.write_str("ok"),
            Some(c) => match Error::try_from_code(c as u64) {
                Some(e) => write!(f, "E{} {}", c, e.description()),
                None => write!(f, "E{c} (agent-defined)"),
            },
        }
    }
}

fn flags_str(flags: u32) -> &'static str {
    match (
        flags & AGENT_FLAG_ADMIN != 0,
        flags & AGENT_FLAG_ENCRYPTED != 0,
    ) {
        (false, false) => "-",
        (true, false) => "admin",
        (false, true) => "enc",
        (true, true) => "admin,enc",
    }
}

impl<P: Platform, const IMAGES: usize, const AGENTS: usize> Registry<P, IMAGES, AGENTS> {
    /// Render the `/proc/tetdg_info` text into `out`. Returns the bytes
    /// written; the text is cut (at a character boundary) if `out` is too
    /// small — [`BufWriter::truncated`] tells, through
    /// [`Registry::write_info`].
    pub fn render_info(&self, out: &mut [u8]) -> usize {
        let mut w = BufWriter::new(out);
        let _ = self.write_info(&mut w);
        w.len()
    }

    /// Write the `/proc/tetdg_info` text to any `fmt::Write`.
    pub fn write_info(&self, w: &mut dyn Write) -> fmt::Result {
        let nimg = self.images().count();
        let nag = self.agent_count();
        writeln!(
            w,
            "TETD-G {}: {} image{}, {} agent{}",
            env!("CARGO_PKG_VERSION"),
            nimg,
            if nimg == 1 { "" } else { "s" },
            nag,
            if nag == 1 { "" } else { "s" },
        )?;
        writeln!(w, "images:")?;
        writeln!(
            w,
            "  {}{}{}{}{}SIGNER",
            Col("IMAGE", 6),
            Col("PACKAGE", 21),
            Col("VERSION", 11),
            Col("ZONE", 19),
            Col("ZONE_SIZE", 11)
        )?;
        for img in self.images() {
            write!(
                w,
                "  {}{}{}{}{}",
                Col(img.id().0, 6),
                Col(Clean(img.package()), 21),
                Col(Clean(img.version()), 11),
                Col(format_args!("{:#018x}", img.zone().base), 19),
                Col(format_args!("{:#010x}", img.layout().total()), 11),
            )?;
            match img.signer() {
                None => writeln!(w, "unsigned")?,
                Some(s) => writeln!(
                    w,
                    "{}{}",
                    Hex(&s.key_id),
                    if !s.trusted {
                        " (untrusted)"
                    } else if s.admin {
                        " (trusted, admin)"
                    } else {
                        " (trusted)"
                    }
                )?,
            }
            writeln!(w, "    measurement {}", Hex(img.measurement()))?;
        }
        writeln!(w, "agents:")?;
        writeln!(
            w,
            "  {}{}{}{}{}{}{}{}{}{}LAST",
            Col("ID", 11),
            Col("NAME", 33),
            Col("IMAGE", 6),
            Col("MODE", 14),
            Col("FLAGS", 10),
            Col("STATE", 9),
            Col("CALLS", 11),
            Col("FAILED", 11),
            Col("FAULTS", 11),
            Col("TIMEOUTS", 11),
        )?;
        for a in self.agents() {
            let s = a.stats();
            writeln!(
                w,
                "  {}{}{}{}{}{}{}{}{}{}{}",
                Col(a.id(), 11),
                Col(Clean(a.name()), 33),
                Col(a.image().0, 6),
                Col(a.mode().name(), 14),
                Col(
                    format_args!(
                        "{}{}",
                        flags_str(a.flags()),
                        if a.is_dynamic() { ",dyn" } else { "" }
                    ),
                    10
                ),
                Col(
                    if a.is_enabled() {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    9
                ),
                Col(s.calls, 11),
                Col(s.failures, 11),
                Col(s.faults, 11),
                Col(s.timeouts, 11),
                StatusText(s.last_status),
            )?;
            if let Some(f) = s.last_fault {
                write!(
                    w,
                    "    last fault: vector {} error {:#x} addr {:#018x}",
                    f.info.vector, f.info.error_code, f.info.addr
                )?;
                if let Some(r) = f.addr_region {
                    write!(w, " ({})", r.name())?;
                }
                match f.rip_offset {
                    Some(o) => writeln!(w, " rip +{o:#x}")?,
                    None => writeln!(w, " rip {:#018x} (outside the zone)", f.info.rip)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bufwriter_cuts_at_char_boundary() {
        let mut b = [0u8; 5];
        let mut w = BufWriter::new(&mut b);
        write!(w, "ab\u{e9}\u{e9}").unwrap(); // 2 + 2 + 2 bytes
        assert_eq!(w.as_str(), "ab\u{e9}");
        assert!(w.truncated());
    }

    #[test]
    fn clean_and_columns() {
        let mut b = [0u8; 64];
        let mut w = BufWriter::new(&mut b);
        write!(w, "{}|{}|", Col(Clean("a\nb c"), 7), StatusText(Some(4))).unwrap();
        assert_eq!(w.as_str(), "a?b?c  |E4 agent panicked|");
    }
}
