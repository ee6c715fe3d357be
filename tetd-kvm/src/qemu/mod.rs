//! The QEMU/TCG engine: runs the guest under `qemu-system-x86_64` with
//! software emulation, for hosts whose `/dev/kvm` is missing or cannot run
//! a stock guest kernel ([`crate::vmm::kvm_emulates_guest_kernel`]), with
//! TETD-H ([`TetdHandler`]) answering the guest's hypercalls.
//!
//! # Machine
//! `qemu-system-x86_64 -accel tcg -machine q35,memory-backend=ram0 -cpu max
//! -smp N -nodefaults -no-reboot -display none` with:
//!
//! * guest RAM: `memory-backend-file` over a memfd of this process
//!   (`share=on`), so TETD-H reads guest memory (measurement and RTMR data
//!   passed by GPA) from its own mapping: GPA `x` is file offset `x`
//!   ([`MAX_MEM_MIB`] keeps RAM below the 32-bit hole, where q35 maps it 1:1);
//! * the zone window: a `pc-dimm` at [`ZONE_GPA_BASE`] over the zone pool's
//!   shared memory file ([`HostPool::new_shared`](crate::zone_alloc::HostPool::new_shared),
//!   exactly [`ZONE_GPA_SIZE`] bytes), so zone memory has one home, the
//!   pool, seen by the guest at `ZONE_GPA_BASE + pool offset`. The kernel
//!   must not use the DIMM as RAM: the engine appends `acpi_no_memhotplug`
//!   to the command line (Linux' ACPI memory-device driver then does not add
//!   it; `tests/qemu_engine.rs` checks that `/proc/iomem` has nothing there
//!   and that guest `/dev/mem` accesses and the pool are the same memory);
//! * console: COM1 (`0x3f8`, IRQ 4) on QEMU's stdout, captured like the KVM
//!   engine's console and optionally echoed; its input is QEMU's stdin, a
//!   pipe [`QemuHandle::send_console`] writes to (what
//!   [`crate::shell::GuestShell`] uses);
//! * hypercalls ("uart transport", [`tetd::abi::uart`]): a second 16550 at
//!   [`uart::IO_BASE`] (IRQ [`HC_UART_IRQ`], never raised: the guest keeps
//!   `IER = 0` and polls) whose character device is a Unix socket this
//!   process listens on; a thread decodes request frames, asks the
//!   [`TetdHandler`] and writes the response frame. QEMU describes every
//!   `isa-serial` in its ACPI tables, so the engine also appends
//!   `pnpacpi=off` ([`CMDLINE_EXTRA`]): no guest driver binds the UART;
//! * exit status: `isa-debug-exit` at [`SIM_EXIT_PORT`]: a guest write of
//!   byte `n` makes QEMU exit with `(n << 1) | 1`, decoded back to `n`
//!   (statuses 0..=127; status 0 is told apart from a QEMU failure, which
//!   also exits with 1, by QEMU's error message on stderr);
//! * a wall-clock timeout kills QEMU ([`VmExit::Timeout`]).
//!
//! The outcome has the KVM engine's shape ([`VmOutcome`]); `stats` counts
//! hypercalls only (QEMU does not report VM exits).
//!
//! # Zone blocking
//! TETD-H takes a blocked zone's pages out of the pool file QEMU maps and
//! puts them back at UNBLOCK; guest accesses to them are found afterwards
//! and reported ([`crate::hv::QemuSeam`], docs/engines.md). The engine
//! prints the backend's note on stderr at start and sweeps every zone for
//! touched pages when the guest ends ([`TetdHandler::guest_stopped`]). The
//! vCPU number in a hypercall is the guest's claim (see [`tetd::abi::uart`]).

mod guest_ram;
mod server;

pub use guest_ram::GuestRam;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tetd::abi::{uart, PAGE_SIZE, SIM_EXIT_PORT, ZONE_GPA_BASE, ZONE_GPA_SIZE};

use crate::host::lock_pool;
use crate::hv::{EngineSeam, QemuSeam, TetdHandler};
use crate::vmm::{
    scan_console, ConsoleBuffer, ConsoleVerdict, Result, StatusSource, VmConfig, VmExit, VmOutcome,
    VmStats, VmmError,
};

/// ISA interrupt line given to the hypercall UART (QEMU needs one; the
/// guest never enables the UART's interrupts).
pub const HC_UART_IRQ: u32 = 5;
/// Largest guest RAM the engine accepts (MiB): q35 maps RAM below
/// `0xb000_0000` 1:1, which [`GuestRam`] relies on.
pub const MAX_MEM_MIB: u64 = 2048;
/// Words the engine appends to the kernel command line:
/// `acpi_no_memhotplug` keeps the zone window from becoming RAM (QEMU
/// describes the `pc-dimm` as an ACPI memory device); `pnpacpi=off` keeps
/// Linux' 8250 driver away from the hypercall UART (QEMU lists every
/// `isa-serial` in the DSDT, and PnP would make it ttyS0 and move the
/// console there; without PnP the driver only probes the legacy COM ports).
pub const CMDLINE_EXTRA: &str = "acpi_no_memhotplug pnpacpi=off";
/// Environment variable naming the QEMU binary (default: `qemu-system-x86_64`
/// on `PATH`).
pub const QEMU_ENV: &str = "TETD_QEMU";

/// Finds the QEMU binary: `$TETD_QEMU`, else `qemu-system-x86_64` on `PATH`.
pub fn qemu_binary() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(QEMU_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{QEMU_ENV}={} is not a file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "qemu-system-x86_64 not found on PATH (install qemu-system-x86: scripts/setup.sh)"
                .to_string()
        })
}

/// Stops a running [`QemuVm`] from another thread, reads its console and
/// writes to it (the console's input side: [`QemuHandle::send_console`],
/// used by [`crate::shell::GuestShell`]).
#[derive(Clone, Default)]
pub struct QemuHandle {
    stop: Arc<AtomicBool>,
    console: ConsoleBuffer,
    /// QEMU's standard input = the COM1 chardev's input (`None` before the
    /// start and after the end of the run).
    input: Arc<Mutex<Option<std::process::ChildStdin>>>,
    ended: Arc<AtomicBool>,
}

impl QemuHandle {
    /// Kills QEMU ([`VmExit::Stopped`] unless the guest ended first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Console output so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// Console output from absolute byte offset `pos` on, and the offset of
    /// its end ([`ConsoleBuffer::read_from`]).
    pub fn console_from(&self, pos: u64) -> (Vec<u8>, u64) {
        self.console.read_from(pos)
    }

    /// Writes `bytes` to the guest's console (COM1 receive side): what a
    /// user typing on the serial line would send. Errors with
    /// `NotConnected` before QEMU started and after the run ended.
    pub fn send_console(&self, bytes: &[u8]) -> io::Result<()> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        match input.as_mut() {
            Some(w) if !self.ended() => {
                w.write_all(bytes)?;
                w.flush()
            }
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the VM is not running (console input unavailable)",
            )),
        }
    }

    /// True once the run is over (QEMU exited or was killed).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// A guest to run under QEMU/TCG.
pub struct QemuVm {
    config: VmConfig,
    qemu: PathBuf,
    handle: QemuHandle,
}

impl QemuVm {
    /// Checks the configuration and finds QEMU.
    pub fn new(config: VmConfig) -> Result<QemuVm> {
        config.validate()?;
        if config.mem_mib > MAX_MEM_MIB {
            return Err(VmmError::Config(format!(
                "mem_mib = {}: the QEMU engine accepts at most {MAX_MEM_MIB}",
                config.mem_mib
            )));
        }
        let qemu = qemu_binary().map_err(VmmError::Config)?;
        Ok(QemuVm {
            config,
            qemu,
            handle: QemuHandle::default(),
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> QemuHandle {
        self.handle.clone()
    }

    /// The kernel command line QEMU gets.
    pub fn cmdline(&self) -> String {
        let mut c = self.config.cmdline.clone();
        for w in CMDLINE_EXTRA.split_whitespace() {
            if !c.split_whitespace().any(|x| x == w) {
                c.push(' ');
                c.push_str(w);
            }
        }
        c
    }

    /// Boots the guest with `handler` answering its hypercalls and waits for
    /// the end. Returns the outcome and the handler.
    pub fn run(
        self,
        mut handler: TetdHandler<QemuSeam>,
    ) -> Result<(VmOutcome, TetdHandler<QemuSeam>)> {
        let os = |op: &'static str| move |source: io::Error| VmmError::Os { op, source };
        let mem_bytes = self.config.mem_mib << 20;
        let ram = Arc::new(GuestRam::new(mem_bytes).map_err(os("guest RAM memfd"))?);
        let pool_fd = {
            let pool = lock_pool(handler.td().pool());
            if pool.pages() * PAGE_SIZE != ZONE_GPA_SIZE {
                return Err(VmmError::Config(format!(
                    "the zone pool has {} pages; the QEMU engine needs exactly the zone window ({} pages)",
                    pool.pages(),
                    ZONE_GPA_SIZE / PAGE_SIZE
                )));
            }
            let fd = pool.shared_fd().ok_or_else(|| {
                VmmError::Config(
                    "the zone pool is not a shared memory file (HostPool::new_shared)".into(),
                )
            })?;
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        };
        let reader = Arc::clone(&ram);
        handler
            .td_mut()
            .set_guest_reader(Box::new(move |gpa: u64, buf: &mut [u8]| {
                reader.read(gpa, buf)
            }));

        let dir = TempDir::new().map_err(os("temporary directory"))?;
        let sock = dir.0.join("hc.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&sock).map_err(|source| VmmError::Io {
                path: sock.clone(),
                source,
            })?;

        let args = self.args(&sock, ram.raw_fd(), pool_fd);
        log::debug!("qemu: {} {}", self.qemu.display(), args.join(" "));
        eprintln!(
            "tetd-vmm: QEMU/TCG engine: {}",
            handler.td().seam().blocking_note()
        );
        let vcpus = u32::from(self.config.vcpus);
        handler.vcpus_started(vcpus);
        let handler = Arc::new(Mutex::new(handler));
        let done = Arc::new(AtomicBool::new(false));
        let hypercalls = Arc::new(AtomicU64::new(0));

        let start = Instant::now();
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&args)
            // COM1's input (`-chardev stdio`): QemuHandle::send_console.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // QEMU must not outlive this thread (e.g. a test process that
        // panicked and exited while the VM ran): the kernel kills it when
        // the thread that spawned it, which waits for it below, is gone.
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| VmmError::Io {
            path: self.qemu.clone(),
            source,
        })?;
        *self.handle.input.lock().unwrap_or_else(|p| p.into_inner()) = child.stdin.take();
        let console = self.handle.console.clone();
        let echo = self.config.echo_console;
        let stdout = child.stdout.take().expect("piped stdout");
        let out_thread = std::thread::spawn(move || pump_console(stdout, console, echo));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let srv = server::Server {
            listener,
            handler: Arc::clone(&handler),
            done: Arc::clone(&done),
            hypercalls: Arc::clone(&hypercalls),
        };
        let srv_thread = std::thread::spawn(move || srv.serve());

        let end = self.wait(&mut child, start + self.config.timeout);
        self.handle.ended.store(true, Ordering::SeqCst);
        drop(
            self.handle
                .input
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        done.store(true, Ordering::SeqCst);
        let elapsed = start.elapsed();
        let _ = out_thread.join();
        let stderr_text = err_thread.join().unwrap_or_default();
        if let Err(e) = srv_thread.join().unwrap_or(Ok(())) {
            log::warn!("qemu hypercall server: {e}");
        }
        drop(dir);

        let mut handler = Arc::try_unwrap(handler)
            .map_err(|_| VmmError::Config("hypercall server still holds the handler".into()))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        handler.vcpus_stopped(vcpus);
        handler.guest_stopped();
        let console = self.handle.console.text();
        let exit = decode_end(end, &stderr_text, &console);
        Ok((
            VmOutcome {
                exit,
                console,
                elapsed,
                stats: VmStats {
                    hypercalls: hypercalls.load(Ordering::Relaxed),
                    ..VmStats::default()
                },
            },
            handler,
        ))
    }

    fn args(&self, sock: &Path, ram_fd: i32, pool_fd: i32) -> Vec<String> {
        let pid = std::process::id();
        let c = &self.config;
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-accel", "tcg", "-machine", "q35,memory-backend=ram0"]);
        push(&[
            "-cpu",
            "max",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ]);
        push(&["-smp", &c.vcpus.to_string()]);
        push(&[
            "-m",
            &format!(
                "{}M,slots=1,maxmem={}M",
                c.mem_mib,
                c.mem_mib + (ZONE_GPA_SIZE >> 20)
            ),
        ]);
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=ram0,mem-path=/proc/{pid}/fd/{ram_fd},size={}M,share=on",
                c.mem_mib
            ),
        ]);
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=zones,mem-path=/proc/{pid}/fd/{pool_fd},size={ZONE_GPA_SIZE},share=on"
            ),
        ]);
        push(&[
            "-device",
            &format!("pc-dimm,id=zonewin,memdev=zones,addr={ZONE_GPA_BASE:#x}"),
        ]);
        push(&["-chardev", "stdio,id=con,signal=off"]);
        push(&["-serial", "chardev:con"]);
        push(&["-chardev", &format!("socket,id=hc,path={}", sock.display())]);
        push(&[
            "-device",
            &format!(
                "isa-serial,chardev=hc,iobase={:#x},irq={HC_UART_IRQ}",
                uart::IO_BASE
            ),
        ]);
        push(&[
            "-device",
            &format!("isa-debug-exit,iobase={SIM_EXIT_PORT:#x},iosize=1"),
        ]);
        push(&["-kernel", &c.kernel.display().to_string()]);
        if let Some(i) = &c.initrd {
            push(&["-initrd", &i.display().to_string()]);
        }
        push(&["-append", &self.cmdline()]);
        a
    }

    fn wait(&self, child: &mut Child, deadline: Instant) -> End {
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return End::Exited(st),
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return End::Error(format!("waiting for QEMU: {e}"));
                }
            }
            let stopped = self.handle.stop.load(Ordering::SeqCst);
            if stopped || Instant::now() >= deadline {
                // Our own child: SIGKILL, then reap it.
                let _ = child.kill();
                let _ = child.wait();
                return if stopped { End::Stopped } else { End::Timeout };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Boots `config` under QEMU/TCG with `handler` and waits for the end.
pub fn run_qemu(
    config: VmConfig,
    handler: TetdHandler<QemuSeam>,
) -> Result<(VmOutcome, TetdHandler<QemuSeam>)> {
    QemuVm::new(config)?.run(handler)
}

enum End {
    Exited(std::process::ExitStatus),
    Timeout,
    Stopped,
    Error(String),
}

/// QEMU's complaints on stderr, without its warnings.
fn qemu_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("warning:"))
        .collect()
}

fn decode_end(end: End, stderr: &str, console: &str) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    let st = match end {
        End::Timeout => return VmExit::Timeout,
        End::Stopped => return VmExit::Stopped,
        End::Error(e) => return VmExit::Error(e),
        End::Exited(st) => st,
    };
    let errors = qemu_errors(stderr);
    match st.code() {
        // isa-debug-exit: (n << 1) | 1. QEMU's own failures exit with 1 too,
        // but say why on stderr.
        Some(c) if c & 1 == 1 && errors.is_empty() => VmExit::Status {
            code: (c >> 1) as u8,
            via: StatusSource::Port,
        },
        // The guest powered off or rebooted (-no-reboot): ask the console.
        Some(0) => match scan_console(console) {
            ConsoleVerdict::Status(code) => VmExit::Status {
                code,
                via: StatusSource::Sentinel,
            },
            ConsoleVerdict::Panic(line) => VmExit::Panic(line),
            ConsoleVerdict::None => VmExit::Shutdown,
        },
        Some(c) => VmExit::Error(format!(
            "QEMU exited with status {c}: {}",
            if errors.is_empty() {
                "(no message)".to_string()
            } else {
                errors.join(" | ")
            }
        )),
        None => VmExit::Error(format!(
            "QEMU killed by signal {}",
            st.signal().unwrap_or_default()
        )),
    }
}

fn pump_console(mut from: impl Read, console: ConsoleBuffer, echo: bool) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                console.push(&buf[..n]);
                if echo {
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// A private temporary directory (for the hypercall socket), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let p = base.join(format!(
                "tetd-qemu-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(TempDir(p));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(code: i32) -> End {
        End::Exited(std::process::ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn exit_codes_decode() {
        let port = |c| VmExit::Status {
            code: c,
            via: StatusSource::Port,
        };
        assert_eq!(decode_end(exited(1), "", ""), port(0));
        assert_eq!(decode_end(exited(15), "", ""), port(7));
        assert_eq!(decode_end(exited(255), "", ""), port(127));
        assert_eq!(
            decode_end(exited(15), "qemu-system-x86_64: warning: x\n", ""),
            port(7),
            "warnings are not failures"
        );
        assert!(matches!(
            decode_end(exited(1), "qemu-system-x86_64: -device foo: not found\n", ""),
            VmExit::Error(m) if m.contains("not found")
        ));
        assert_eq!(
            decode_end(exited(0), "", "x\nTETD-EXIT: 3\r\n"),
            VmExit::Status {
                code: 3,
                via: StatusSource::Sentinel
            }
        );
        assert!(matches!(
            decode_end(exited(0), "", "Kernel panic - not syncing: boom\n"),
            VmExit::Panic(_)
        ));
        assert_eq!(decode_end(exited(0), "", "bye\n"), VmExit::Shutdown);
        assert!(matches!(decode_end(exited(2), "", ""), VmExit::Error(_)));
        assert!(matches!(
            decode_end(End::Exited(std::process::ExitStatus::from_raw(9)), "", ""),
            VmExit::Error(m) if m.contains("signal 9")
        ));
        assert_eq!(decode_end(End::Timeout, "", ""), VmExit::Timeout);
        assert_eq!(decode_end(End::Stopped, "", ""), VmExit::Stopped);
    }

    #[test]
    fn cmdline_gets_the_extra_switches_once() {
        let dir = std::env::temp_dir();
        let mut c = VmConfig::new(dir.join("k"), None);
        c.cmdline = "console=ttyS0".into();
        let vm = QemuVm {
            config: c.clone(),
            qemu: "qemu".into(),
            handle: QemuHandle::default(),
        };
        assert_eq!(vm.cmdline(), "console=ttyS0 acpi_no_memhotplug pnpacpi=off");
        c.cmdline = "acpi_no_memhotplug console=ttyS0".into();
        let vm = QemuVm {
            config: c,
            qemu: "qemu".into(),
            handle: QemuHandle::default(),
        };
        assert_eq!(vm.cmdline(), "acpi_no_memhotplug console=ttyS0 pnpacpi=off");
    }
}
