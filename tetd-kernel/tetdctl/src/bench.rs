//! `tetdctl bench`: timing loops inside the guest for `tetd-vmm bench`
//! (`docs/performance.md`). Each prints one machine-readable line,
//!
//! ```text
//! TETD-BENCH {"kind":"call","label":"...","n":500,"min_ns":..,"median_ns":..,"p99_ns":..,"mean_ns":..,"start_ns":..,"end_ns":..}
//! ```
//!
//! (`start_ns`/`end_ns`: CLOCK_MONOTONIC around the whole loop, so several
//! concurrent loops can be combined into a rate). Kinds:
//!
//! * `call`: the CALL ioctl on an agent (what `tetdctl call` does, without
//!   process start-up), one sample per call;
//! * `ioctl`: the INFO ioctl: a plain round trip into the module;
//! * `hypercall`: a bare TETD hypercall from user space (AGENT_QUERY of an
//!   unknown agent; the host must answer `UnknownAgent`) through the
//!   module's transport (uart frames or the port), with `iopl(3)`: the
//!   exit cost without the module. Nothing else may use the transport
//!   meanwhile (run it while no call is in flight).
use std::arch::asm;
use std::path::Path;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::json;
use tetd::abi::ioctl::{self as io, CallRequest};
use tetd::abi::regs::{HypercallArgs, HypercallRet};
use tetd::abi::uart::{
    Request, Response, IO_BASE, LSR_DR, LSR_THRE, REG_DATA, REG_LSR, RESPONSE_LEN, RESPONSE_MAGIC,
};
use tetd::abi::{Error, Leaf, Mode, SIM_HYPERCALL_PORT, TETD_VMCALL_VENDOR};

use super::{os_fail, tetd_fail, Dev, Fail, ModeArg};

/// An agent id no TD registers (AGENT_QUERY answers `UnknownAgent`).
const UNKNOWN_AGENT: u64 = 0xffff_fff0;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Call agent ID N times (CALL ioctl).
    Call {
        /// Agent id.
        id: u32,
        /// Input size in bytes (a pattern).
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Mode (default: the agent's own).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        #[command(flatten)]
        common: Common,
    },
    /// The INFO ioctl N times.
    Ioctl {
        #[command(flatten)]
        common: Common,
    },
    /// A bare hypercall (AGENT_QUERY of an unknown agent) from user space N times.
    Hypercall {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub struct Common {
    /// Iterations (after 3 untimed warm-up rounds).
    #[arg(long, short = 'n', default_value_t = 1000)]
    iterations: usize,
    /// Pin this process to CPU K first.
    #[arg(long)]
    cpu: Option<usize>,
    /// Label copied into the output line.
    #[arg(long, default_value = "")]
    label: String,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin(cpu: Option<usize>) -> Result<(), Fail> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it;
    // sched_setaffinity reads it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(os_fail(
            &format!("sched_setaffinity(cpu {cpu})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Run `f` 3 + n times; n samples; print the line.
fn measure(
    kind: &str,
    c: &Common,
    extra: serde_json::Value,
    mut f: impl FnMut() -> Result<(), Fail>,
) -> Result<(), Fail> {
    pin(c.cpu)?;
    for _ in 0..3 {
        f()?;
    }
    let mut v = Vec::with_capacity(c.iterations);
    let start = now_ns();
    for _ in 0..c.iterations {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_nanos() as u64);
    }
    let end = now_ns();
    if v.is_empty() {
        return Err(Fail(2, "--iterations must be at least 1".into()));
    }
    v.sort_unstable();
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let mean = v.iter().sum::<u64>() / v.len() as u64;
    let mut line = json!({
        "kind": kind, "label": c.label, "n": v.len(), "min_ns": v[0], "median_ns": rank(0.5),
        "p99_ns": rank(0.99), "mean_ns": mean, "start_ns": start, "end_ns": end,
        "cpu": c.cpu,
    });
    if let (Some(l), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
    println!("TETD-BENCH {line}");
    Ok(())
}

/// `tetdctl bench ...`.
pub fn run(device: &Path, cmd: BenchCmd) -> Result<(), Fail> {
    let dev = Dev::open(&device.to_path_buf())?;
    match cmd {
        BenchCmd::Call {
            id,
            size,
            mode,
            common,
        } => {
            if size as u64 > io::MAX_IO_SIZE {
                return Err(Fail(
                    2,
                    format!("--size: at most {} bytes", io::MAX_IO_SIZE),
                ));
            }
            let input: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut out = vec![0u8; size.max(64)];
            let mode_code = mode.map_or(io::MODE_AGENT_DEFAULT, |m| Mode::from(m) as u32);
            let extra = json!({"agent": id, "size": size});
            measure("call", &common, extra, || {
                let mut req = CallRequest {
                    agent_id: id,
                    mode: mode_code,
                    input: input.as_ptr() as u64,
                    input_len: input.len() as u64,
                    output: out.as_mut_ptr() as u64,
                    output_cap: out.len() as u64,
                    output_len: 0,
                    status: 0,
                    mode_used: 0,
                    fault_vector: 0,
                    fault_error: 0,
                    fault_addr: 0,
                    fault_rip: 0,
                    elapsed_ns: 0,
                    timeout_ns: 0,
                };
                dev.ioctl(io::CALL, &mut req)?;
                if req.status != 0 {
                    return Err(tetd_fail(&format!("call agent {id}"), req.status, ""));
                }
                Ok(())
            })
        }
        BenchCmd::Ioctl { common } => measure("ioctl", &common, json!({}), || {
            crate::query_info(&dev).map(|_| ())
        }),
        BenchCmd::Hypercall { common } => {
            let transport = crate::query_info(&dev)?.transport;
            let hc: fn(HypercallArgs) -> Result<HypercallRet, Fail> = match transport {
                io::TRANSPORT_UART => uart_hypercall,
                io::TRANSPORT_PORT => port_hypercall,
                t => {
                    return Err(Fail(
                        2,
                        format!(
                            "the module uses transport {t} (loopback or tdcall): no host to call from user space"
                        ),
                    ))
                }
            };
            // SAFETY: iopl(3) only changes this process' I/O privilege level.
            if unsafe { libc::iopl(3) } != 0 {
                return Err(os_fail(
                    "iopl(3) (needs root)",
                    std::io::Error::last_os_error(),
                ));
            }
            let name = if transport == io::TRANSPORT_UART {
                "uart"
            } else {
                "port"
            };
            measure("hypercall", &common, json!({"transport": name}), || {
                let r = hc(HypercallArgs {
                    leaf: Leaf::AgentQuery as u64,
                    args: [UNKNOWN_AGENT, 0, 0, 0],
                })?;
                if r.status != Error::UnknownAgent as u64 {
                    return Err(Fail(
                        1,
                        format!(
                            "AGENT_QUERY of unknown agent: status {} (want UnknownAgent)",
                            r.status
                        ),
                    ));
                }
                Ok(())
            })
        }
    }
}

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O after iopl(3); the hypercall UART's registers only.
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

fn wait_lsr(bit: u8, deadline: Instant) -> Result<(), Fail> {
    let mut spins = 0u32;
    while inb(IO_BASE + REG_LSR) & bit == 0 {
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 && Instant::now() > deadline {
            return Err(Fail(1, "uart transport: no answer from the host".into()));
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// One hypercall over the uart transport (`tetd::abi::uart`), as the
/// module's `uart.rs` sends it (the module programmed the UART at load).
fn uart_hypercall(call: HypercallArgs) -> Result<HypercallRet, Fail> {
    static SEQ: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0x8000);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() }.max(0) as u32;
    let frame = Request::new(seq, cpu, call).encode();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    for b in frame {
        wait_lsr(LSR_THRE, deadline)?;
        outb(IO_BASE + REG_DATA, b);
    }
    let read = || -> Result<u8, Fail> {
        wait_lsr(LSR_DR, deadline)?;
        Ok(inb(IO_BASE + REG_DATA))
    };
    loop {
        let mut f = [0u8; RESPONSE_LEN];
        f[0] = read()?;
        if f[0] != RESPONSE_MAGIC[0] {
            continue;
        }
        f[1] = read()?;
        if f[1] != RESPONSE_MAGIC[1] {
            continue;
        }
        for b in f.iter_mut().skip(2) {
            *b = read()?;
        }
        match Response::decode(&f) {
            Ok(r) if r.seq == seq => return Ok(r.ret()),
            _ => continue,
        }
    }
}

/// One hypercall over the port transport (KVM engine: the VMM reads and
/// writes the registers at the port exit).
fn port_hypercall(call: HypercallArgs) -> Result<HypercallRet, Fail> {
    let (r10, r11, r12, r13): (u64, u64, u64, u64);
    // SAFETY: a port write after iopl(3); the VMM answers in R10..R13 and
    // changes no memory of this process.
    unsafe {
        asm!("out dx, al",
            inout("r10") TETD_VMCALL_VENDOR => r10,
            inout("r11") call.leaf => r11,
            inout("r12") call.args[0] => r12,
            inout("r13") call.args[1] => r13,
            in("r14") call.args[2],
            in("r15") call.args[3],
            in("dx") SIM_HYPERCALL_PORT,
            in("al") 0u8,
            options(nostack));
    }
    Ok(HypercallRet {
        status: r10,
        results: [r11, r12, r13],
    })
}
