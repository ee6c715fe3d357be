//! The host end of the uart transport: reads request frames from QEMU's
//! hypercall UART socket, answers them with TETD-H, writes response frames.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetd::abi::regs::HypercallRet;
use tetd::abi::uart::{self, FrameError, Request, Response, REQUEST_LEN};
use tetd::abi::Error as AbiError;

use crate::hv::{QemuSeam, TetdHandler};

/// How often blocked reads/accepts look at the `done` flag.
const POLL: Duration = Duration::from_millis(50);

pub(super) struct Server {
    pub listener: UnixListener,
    pub handler: Arc<Mutex<TetdHandler<QemuSeam>>>,
    pub done: Arc<AtomicBool>,
    pub hypercalls: Arc<AtomicU64>,
}

/// Splits a byte stream into request frames, skipping garbage: a frame
/// starts at the request magic; a frame with a bad checksum is dropped one
/// byte at a time until the next magic.
#[derive(Default)]
pub(crate) struct Deframer {
    buf: Vec<u8>,
    /// Bytes skipped while looking for a valid frame.
    pub skipped: u64,
    /// Frames refused (bad checksum).
    pub bad: u64,
}

impl Deframer {
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete, valid request, if any.
    pub(crate) fn next(&mut self) -> Option<Request> {
        loop {
            let start = self.buf.windows(2).position(|w| w == uart::REQUEST_MAGIC);
            let Some(start) = start else {
                // Keep a possible first magic byte at the end.
                let keep = usize::from(self.buf.last() == Some(&uart::REQUEST_MAGIC[0]));
                let drop = self.buf.len() - keep;
                self.skipped += drop as u64;
                self.buf.drain(..drop);
                return None;
            };
            if start > 0 {
                self.skipped += start as u64;
                self.buf.drain(..start);
            }
            if self.buf.len() < REQUEST_LEN {
                return None;
            }
            let mut frame = [0u8; REQUEST_LEN];
            frame.copy_from_slice(&self.buf[..REQUEST_LEN]);
            match Request::decode(&frame) {
                Ok(r) => {
                    self.buf.drain(..REQUEST_LEN);
                    return Some(r);
                }
                Err(e) => {
                    if matches!(e, FrameError::BadChecksum { .. }) {
                        self.bad += 1;
                        log::warn!("uart transport: request dropped: {e}");
                    }
                    self.skipped += 1;
                    self.buf.drain(..1);
                }
            }
        }
    }
}

/// The answer to one request.
pub(crate) fn answer(handler: &Mutex<TetdHandler<QemuSeam>>, req: &Request) -> Response {
    let ret = match req.args() {
        Some(call) => handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle(req.vcpu, call),
        // Not a TETD call: refused without TETD-H, as on the port transport.
        None => HypercallRet::err(AbiError::InvalidArgument),
    };
    Response::new(req.seq, ret)
}

impl Server {
    pub(super) fn serve(self) -> io::Result<()> {
        let Some(mut stream) = self.accept()? else {
            return Ok(());
        };
        stream.set_read_timeout(Some(POLL))?;
        let mut deframer = Deframer::default();
        let mut buf = [0u8; 512];
        while !self.done.load(Ordering::SeqCst) {
            let n = match stream.read(&mut buf) {
                Ok(0) => break, // QEMU closed the socket (it exited)
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            deframer.push(&buf[..n]);
            while let Some(req) = deframer.next() {
                let resp = answer(&self.handler, &req);
                self.hypercalls.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = stream.write_all(&resp.encode()) {
                    // QEMU went away between request and answer.
                    log::debug!("uart transport: answer not delivered: {e}");
                    return Ok(());
                }
            }
        }
        if deframer.skipped > 0 {
            log::warn!(
                "uart transport: {} stray byte(s) skipped, {} frame(s) with a bad checksum",
                deframer.skipped,
                deframer.bad
            );
        }
        Ok(())
    }

    /// Waits for QEMU to connect (it does so at start-up); `None` if the run
    /// ended first.
    fn accept(&self) -> io::Result<Option<UnixStream>> {
        self.listener.set_nonblocking(true)?;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    return Ok(Some(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.done.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tetd::abi::regs::HypercallArgs;

    fn req(seq: u16) -> Request {
        Request::new(
            seq,
            1,
            HypercallArgs {
                leaf: 8,
                args: [seq as u64, 0, 0, 0],
            },
        )
    }

    #[test]
    fn frames_are_split_and_garbage_skipped() {
        let mut d = Deframer::default();
        let mut bytes = b"\x00garbageT".to_vec();
        bytes.extend_from_slice(&req(1).encode());
        let mut bad = req(2).encode();
        bad[20] ^= 1;
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&req(3).encode());
        // Byte by byte, as a UART delivers them.
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(r) = d.next() {
                got.push(r.seq);
            }
        }
        assert_eq!(got, [1, 3]);
        assert_eq!(d.bad, 1);
        assert_eq!(d.skipped, 9 + REQUEST_LEN as u64);
        assert!(d.next().is_none());
    }

    #[test]
    fn a_split_magic_is_kept() {
        let mut d = Deframer::default();
        let f = req(9).encode();
        d.push(b"xxT");
        assert!(d.next().is_none());
        d.push(&f[1..]);
        assert_eq!(d.next().map(|r| r.seq), Some(9));
    }
}
