//! An interactive shell in a running guest, over its serial console.
//!
//! The host often has to talk to a guest *during one boot*: an encrypted
//! agent session lives in the agent's memory, so the host-side client
//! ([`crate::session`]) must see each reply before it sends the next
//! request. [`GuestShell`] gives a test or tool that dialogue: it writes a
//! command line to the guest's console, waits for the guest to finish it,
//! and returns its output and exit status.
//!
//! # Guest side
//! A `sh` loop reading the console ([`GUEST_SHELL_LOOP`], e.g. as
//! `/tetd/shell.sh`, run by the init's `/tetd/run.sh` with the console as
//! standard input). It turns the terminal's echo off, prints
//! [`READY_MARKER`], then for each line `TETD-RUN <id> <command>` prints
//! `TETD-BEGIN <id>`, evaluates the command (`command eval`, so a syntax
//! error fails the command, not the loop; standard input `/dev/null`,
//! standard error merged into standard output) and prints
//! `TETD-END <id> <status>`. Other lines are ignored. The loop ends at the
//! end of its input.
//!
//! # Host side
//! ```no_run
//! use std::time::Duration;
//! use tetd_kvm::qemu::QemuVm;
//! use tetd_kvm::shell::GuestShell;
//! # fn demo(vm: QemuVm, h: tetd_kvm::hv::TetdHandler<tetd_kvm::hv::QemuSeam>) -> Result<(), Box<dyn std::error::Error>> {
//! let console = vm.handle();
//! let run = std::thread::spawn(move || vm.run(h));
//! let mut sh = GuestShell::attach(console.clone(), Duration::from_secs(120))?;
//! let out = sh.run("tetdctl list", Duration::from_secs(30))?;
//! assert_eq!(out.status, 0);
//! println!("{}", out.text());
//! sh.start("tetdctl exit 0")?; // ends the VM; no reply expected
//! let (outcome, handler) = run.join().unwrap()?;
//! # Ok(()) }
//! ```
//!
//! Engines: the QEMU engine's COM1 reads QEMU's standard input
//! ([`crate::qemu::QemuHandle::send_console`]); the KVM engine queues the
//! bytes and a thread of the run moves them into its vm-superio UART's FIFO
//! ([`crate::vmm::VmHandle::send_console`]; verified with a micro guest
//! that polls the UART, not with Linux, which cannot boot on this machine's
//! `/dev/kvm`).
//!
//! Limits: a command line is printable ASCII (no control characters, which
//! the guest's terminal would interpret) of at most [`MAX_COMMAND`] bytes
//! (the Linux terminal's canonical-mode line buffer holds 4095); every wait
//! has a timeout and ends early when the VM ends, so nothing waits forever.
//! The console also carries kernel messages; the guest should boot with
//! `quiet` so they do not interleave with command output.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::qemu::QemuHandle;

/// Printed by [`GUEST_SHELL_LOOP`] once it reads commands.
pub const READY_MARKER: &str = "TETD-SHELL-READY";
/// Longest command [`GuestShell::start`] sends (bytes, without the
/// `TETD-RUN <id> ` prefix).
pub const MAX_COMMAND: usize = 3800;

/// The guest side: a POSIX `sh` (busybox `ash`) loop over the console.
pub const GUEST_SHELL_LOOP: &str = r#"# tetd_kvm::shell: run "TETD-RUN <id> <command>" lines from the console
stty -echo 2>/dev/null
echo TETD-SHELL-READY
while IFS= read -r line; do
    case "$line" in
    "TETD-RUN "*)
        rest=${line#TETD-RUN }
        id=${rest%% *}
        cmd=${rest#"$id"}
        cmd=${cmd# }
        echo "TETD-BEGIN $id"
        command eval "$cmd" </dev/null 2>&1
        echo "TETD-END $id $?"
        ;;
    esac
done
echo TETD-SHELL-EOF
"#;

/// A console the shell talks through.
pub trait ConsoleLink {
    /// Writes bytes to the guest's console input.
    fn send(&self, bytes: &[u8]) -> io::Result<()>;
    /// Console output from absolute offset `pos`, and the new end offset.
    fn read_from(&self, pos: u64) -> (Vec<u8>, u64);
    /// True once the VM is gone (nothing more will arrive).
    fn ended(&self) -> bool;
}

impl ConsoleLink for crate::vmm::VmHandle {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.send_console(bytes)
    }
    fn read_from(&self, pos: u64) -> (Vec<u8>, u64) {
        self.console_from(pos)
    }
    fn ended(&self) -> bool {
        crate::vmm::VmHandle::ended(self)
    }
}

impl ConsoleLink for QemuHandle {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.send_console(bytes)
    }
    fn read_from(&self, pos: u64) -> (Vec<u8>, u64) {
        self.console_from(pos)
    }
    fn ended(&self) -> bool {
        QemuHandle::ended(self)
    }
}

/// Why a shell step failed.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The command cannot be sent as one console line.
    #[error("invalid command: {0}")]
    BadCommand(String),
    /// Nothing matching came within the timeout.
    #[error("timed out after {timeout:?} waiting for {waiting_for}; last console lines: {tail:?}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// The timeout.
        timeout: Duration,
        /// The last console lines seen.
        tail: Vec<String>,
    },
    /// The VM ended first.
    #[error("the VM ended while waiting for {waiting_for}; last console lines: {tail:?}")]
    Ended {
        /// What was awaited.
        waiting_for: String,
        /// The last console lines seen.
        tail: Vec<String>,
    },
    /// Writing to the console failed.
    #[error("console input: {0}")]
    Io(#[from] io::Error),
}

/// What a command printed and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The command's id (as in `TETD-RUN <id>`).
    pub id: u64,
    /// Its exit status (`$?`).
    pub status: i32,
    /// Its output lines (standard output and error, `\r` removed).
    pub lines: Vec<String>,
}

impl Output {
    /// The lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The first line starting with `prefix`.
    pub fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .find(|l| l.starts_with(prefix))
    }
}

/// Console lines kept for error messages.
const TAIL_LINES: usize = 12;
/// How often the console is polled while waiting.
const POLL: Duration = Duration::from_millis(3);

/// A shell in the guest, driven over a [`ConsoleLink`].
pub struct GuestShell<L: ConsoleLink> {
    link: L,
    pos: u64,
    partial: Vec<u8>,
    lines: VecDeque<String>,
    tail: VecDeque<String>,
    next_id: u64,
    sent: Vec<String>,
}

impl<L: ConsoleLink> std::fmt::Debug for GuestShell<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestShell")
            .field("pos", &self.pos)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl<L: ConsoleLink> GuestShell<L> {
    /// Waits (at most `timeout`) until the guest's loop prints
    /// [`READY_MARKER`] (console output from its start is searched).
    pub fn attach(link: L, timeout: Duration) -> Result<Self, ShellError> {
        let mut sh = GuestShell {
            link,
            pos: 0,
            partial: Vec::new(),
            lines: VecDeque::new(),
            tail: VecDeque::new(),
            next_id: 1,
            sent: Vec::new(),
        };
        sh.wait_line(|l| l == READY_MARKER, READY_MARKER, timeout)?;
        Ok(sh)
    }

    /// Every line sent to the guest so far (what crossed the console into
    /// the guest), oldest first.
    pub fn sent(&self) -> &[String] {
        &self.sent
    }

    /// The link (e.g. to read the whole console).
    pub fn link(&self) -> &L {
        &self.link
    }

    /// Sends `cmd` to the guest without waiting; returns its id for
    /// [`GuestShell::finish`]. Use it alone for commands that do not come
    /// back (e.g. ending the VM).
    pub fn start(&mut self, cmd: &str) -> Result<u64, ShellError> {
        check_command(cmd)?;
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("TETD-RUN {id} {cmd}");
        self.link.send(format!("{line}\n").as_bytes())?;
        self.sent.push(line);
        Ok(id)
    }

    /// Waits (at most `timeout`) for command `id` to end; returns its
    /// output and status.
    pub fn finish(&mut self, id: u64, timeout: Duration) -> Result<Output, ShellError> {
        let begin = format!("TETD-BEGIN {id}");
        self.wait_line(|l| l == begin, &begin, timeout)?;
        let end = format!("TETD-END {id} ");
        let mut status = None;
        let lines = self.wait_line(
            |l| match l.rfind(&end) {
                Some(at) => {
                    status = l[at + end.len()..].trim().parse::<i32>().ok();
                    status.is_some()
                }
                None => false,
            },
            &format!("the end of command {id}"),
            timeout,
        )?;
        let mut lines = lines;
        // The marker line itself; output without a final newline precedes
        // the marker on the same line.
        if let Some(last) = lines.pop() {
            let at = last.rfind(&end).unwrap_or(0);
            if at > 0 {
                lines.push(last[..at].to_string());
            }
        }
        Ok(Output {
            id,
            status: status.unwrap_or(-1),
            lines,
        })
    }

    /// Runs `cmd` in the guest and waits (at most `timeout`) for it.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<Output, ShellError> {
        let id = self.start(cmd)?;
        self.finish(id, timeout)
    }

    /// Consumes console lines until one satisfies `pred`; returns the lines
    /// before it and the line itself (last).
    pub fn wait_line(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        waiting_for: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, ShellError> {
        let deadline = Instant::now() + timeout;
        let mut taken = Vec::new();
        loop {
            while let Some(l) = self.lines.pop_front() {
                let hit = pred(&l);
                taken.push(l);
                if hit {
                    return Ok(taken);
                }
            }
            // Read what the guest printed since; the end flag first, so
            // output that arrived just before the end is still seen.
            let ended = self.link.ended();
            let (bytes, end) = self.link.read_from(self.pos);
            self.pos = end;
            if !bytes.is_empty() {
                self.push(&bytes);
                continue;
            }
            if ended {
                return Err(ShellError::Ended {
                    waiting_for: waiting_for.to_string(),
                    tail: self.tail.iter().cloned().collect(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ShellError::Timeout {
                    waiting_for: waiting_for.to_string(),
                    timeout,
                    tail: self.tail.iter().cloned().collect(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw[..nl])
                .replace('\r', "")
                .to_string();
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
            self.lines.push_back(line);
        }
    }
}

fn check_command(cmd: &str) -> Result<(), ShellError> {
    if cmd.len() > MAX_COMMAND {
        return Err(ShellError::BadCommand(format!(
            "{} bytes, at most {MAX_COMMAND} fit a console line",
            cmd.len()
        )));
    }
    if let Some((i, c)) = cmd
        .char_indices()
        .find(|&(_, c)| !(c == ' ' || c.is_ascii_graphic()))
    {
        return Err(ShellError::BadCommand(format!(
            "character {c:?} at byte {i}: only printable ASCII is sent (the terminal interprets control characters)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::ConsoleBuffer;
    use std::io::{Read, Write};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// The guest loop under the host's `sh`, its output captured like a
    /// console.
    struct HostSh {
        child: Mutex<Child>,
        stdin: Mutex<Option<ChildStdin>>,
        out: ConsoleBuffer,
        ended: Arc<AtomicBool>,
    }

    impl HostSh {
        fn start() -> Arc<HostSh> {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(GUEST_SHELL_LOOP)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("sh");
            let stdin = child.stdin.take();
            let mut stdout = child.stdout.take().unwrap();
            let out = ConsoleBuffer::default();
            let ended = Arc::new(AtomicBool::new(false));
            let (o, e) = (out.clone(), ended.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    // As a serial console delivers it: CR LF.
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\n', "\r\n");
                    o.push(text.as_bytes());
                }
                e.store(true, Ordering::SeqCst);
            });
            Arc::new(HostSh {
                child: Mutex::new(child),
                stdin: Mutex::new(stdin),
                out,
                ended,
            })
        }
    }

    impl ConsoleLink for Arc<HostSh> {
        fn send(&self, bytes: &[u8]) -> io::Result<()> {
            match self.stdin.lock().unwrap().as_mut() {
                Some(w) => w.write_all(bytes).and_then(|()| w.flush()),
                None => Err(io::ErrorKind::NotConnected.into()),
            }
        }
        fn read_from(&self, pos: u64) -> (Vec<u8>, u64) {
            self.out.read_from(pos)
        }
        fn ended(&self) -> bool {
            self.ended.load(Ordering::SeqCst)
        }
    }

    impl Drop for HostSh {
        fn drop(&mut self) {
            let mut c = self.child.lock().unwrap();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn commands_run_with_output_and_status() {
        let host = HostSh::start();
        let mut sh = GuestShell::attach(host.clone(), T).unwrap();
        let o = sh.run("echo one; echo two >&2", T).unwrap();
        assert_eq!(
            (o.status, o.lines.clone()),
            (0, vec!["one".into(), "two".into()])
        );
        let o = sh.run(
            "printf 'no newline'; exit_code() { return 3; }; exit_code",
            T,
        );
        let o = o.unwrap();
        assert_eq!((o.status, o.text()), (3, "no newline".into()));
        // Syntax errors and failing commands come back with their status.
        let o = sh.run("if then", T).unwrap();
        assert_ne!(o.status, 0);
        let o = sh.run("false", T).unwrap();
        assert_eq!((o.status, o.lines.len()), (1, 0));
        // State persists between commands; stdin is not the console.
        sh.run("X=kept", T).unwrap();
        assert_eq!(sh.run("echo $X; cat", T).unwrap().text(), "kept");
        assert_eq!(
            sh.run("echo 'TETD-END 99 0'", T).unwrap().text(),
            "TETD-END 99 0",
            "another command's marker is output"
        );
        assert_eq!(sh.sent().len(), 7);
        assert!(sh.sent()[0].starts_with("TETD-RUN 1 echo one"));
    }

    #[test]
    fn bad_commands_are_refused_before_sending() {
        let host = HostSh::start();
        let mut sh = GuestShell::attach(host.clone(), T).unwrap();
        for bad in ["a\nb", "x\u{3}", "tab\there", "é"] {
            assert!(
                matches!(sh.start(bad), Err(ShellError::BadCommand(_))),
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_COMMAND + 1);
        assert!(matches!(sh.start(&long), Err(ShellError::BadCommand(m)) if m.contains("bytes")));
        assert!(sh.sent().is_empty());
        assert_eq!(sh.run("echo ok", T).unwrap().text(), "ok");
    }

    #[test]
    fn waits_are_bounded() {
        let host = HostSh::start();
        let mut sh = GuestShell::attach(host.clone(), T).unwrap();
        let t0 = Instant::now();
        let e = sh.run("sleep 2", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ShellError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(1500));
        // The guest side ends (end of input): waiting stops at once.
        drop(host.stdin.lock().unwrap().take());
        let e = sh.finish(99, T).unwrap_err();
        assert!(matches!(e, ShellError::Ended { .. }), "{e}");
        assert!(host.out.text().contains("TETD-SHELL-EOF"));
    }

    #[test]
    fn attach_times_out_without_the_marker() {
        struct Silent;
        impl ConsoleLink for Silent {
            fn send(&self, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
            fn read_from(&self, pos: u64) -> (Vec<u8>, u64) {
                (Vec::new(), pos)
            }
            fn ended(&self) -> bool {
                false
            }
        }
        let e = GuestShell::attach(Silent, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains(READY_MARKER), "{e}");
    }
}
