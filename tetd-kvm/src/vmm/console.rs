//! Serial console: a 16550A UART (vm-superio) on COM1 whose interrupt is an
//! eventfd bound to GSI 4 with KVM_IRQFD, and whose output is captured (and
//! optionally echoed to the host's stdout).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Bytes of console output kept in memory; older output is dropped first.
pub const CAPTURE_LIMIT: usize = 16 << 20;

/// Sentinel line a guest init prints before `reboot -f` to report its exit
/// status (`TETD-EXIT: <0..=255>`).
pub const EXIT_SENTINEL: &str = "TETD-EXIT: ";

/// Interrupt line of the UART: an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Captured console output, shared between the UART and whoever reads it.
#[derive(Clone, Default)]
pub struct ConsoleBuffer {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

impl ConsoleBuffer {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything captured so far (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Number of bytes dropped because output exceeded [`CAPTURE_LIMIT`].
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The bytes from absolute offset `pos` (counting dropped bytes) to the
    /// end, and the end's offset: a reader that passes the returned offset
    /// back sees every byte once. Bytes already dropped are skipped.
    pub fn read_from(&self, pos: u64) -> (Vec<u8>, u64) {
        let c = self.lock();
        let end = c.dropped + c.bytes.len() as u64;
        let start = pos.clamp(c.dropped, end);
        let from = (start - c.dropped) as usize;
        (c.bytes[from..].to_vec(), end)
    }

    pub(crate) fn push(&self, data: &[u8]) {
        let mut c = self.lock();
        c.bytes.extend_from_slice(data);
        if c.bytes.len() > CAPTURE_LIMIT {
            let cut = c.bytes.len() - CAPTURE_LIMIT / 2;
            c.bytes.drain(..cut);
            c.dropped += cut as u64;
        }
    }
}

/// The UART's output sink: capture buffer plus optional echo to stdout.
pub struct ConsoleWriter {
    buffer: ConsoleBuffer,
    echo: bool,
}

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.push(data);
        if self.echo {
            // The guest must not stall on a closed stdout; echo is best effort.
            let _ = io::stdout().write_all(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.echo {
            let _ = io::stdout().flush();
        }
        Ok(())
    }
}

/// The COM1 UART.
pub type SerialDevice = Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>;

/// Creates the UART writing into `buffer` (and stdout when `echo`).
pub fn new_serial(irq: EventFd, buffer: ConsoleBuffer, echo: bool) -> SerialDevice {
    Serial::new(IrqTrigger(irq), ConsoleWriter { buffer, echo })
}

/// What the console says about how the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleVerdict {
    /// The last `TETD-EXIT: n` line.
    Status(u8),
    /// A kernel panic line (`Kernel panic - not syncing: ...`).
    Panic(String),
    /// Nothing conclusive.
    None,
}

/// Scans console text for the exit sentinel (last one wins) and kernel panics.
/// A panic after the last sentinel wins over it.
pub fn scan(text: &str) -> ConsoleVerdict {
    let mut verdict = ConsoleVerdict::None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(pos) = line.find(EXIT_SENTINEL) {
            let rest = line[pos + EXIT_SENTINEL.len()..].trim();
            if let Ok(n) = rest.parse::<u8>() {
                verdict = ConsoleVerdict::Status(n);
            }
        } else if let Some(pos) = line.find("Kernel panic - not syncing") {
            verdict = ConsoleVerdict::Panic(line[pos..].to_string());
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_sentinel_and_panic() {
        assert_eq!(scan("boot\nTETD-EXIT: 7\r\n"), ConsoleVerdict::Status(7));
        assert_eq!(
            scan("TETD-EXIT: 1\nTETD-EXIT: 3\n"),
            ConsoleVerdict::Status(3)
        );
        assert_eq!(scan("TETD-EXIT: 300\n"), ConsoleVerdict::None);
        assert_eq!(scan("echo TETD-EXIT: x\n"), ConsoleVerdict::None);
        assert_eq!(
            scan("[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n"),
            ConsoleVerdict::Panic("Kernel panic - not syncing: Attempted to kill init!".into())
        );
    }

    #[test]
    fn read_from_sees_each_byte_once() {
        let b = ConsoleBuffer::default();
        assert_eq!(b.read_from(0), (vec![], 0));
        b.push(b"abc");
        let (d, end) = b.read_from(0);
        assert_eq!((d.as_slice(), end), (&b"abc"[..], 3));
        b.push(b"de");
        assert_eq!(b.read_from(end), (b"de".to_vec(), 5));
        assert_eq!(b.read_from(99), (vec![], 5));
    }

    #[test]
    fn capture_is_bounded() {
        let b = ConsoleBuffer::default();
        b.push(&vec![b'a'; CAPTURE_LIMIT]);
        b.push(b"tail");
        assert!(b.text().ends_with("tail"));
        assert!(b.dropped() > 0);
        assert!(b.text().len() <= CAPTURE_LIMIT);
    }
}
