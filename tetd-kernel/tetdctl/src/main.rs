//! `tetdctl`: the guest-side command line of TETD-G. Talks to `tetdg.ko`
//! through the `/dev/tetdg` ioctls defined in `tetd::abi::ioctl`.
//!
//! Exit status: 0 success, 1 the module or the agent reported an error
//! (the message names the `tetd::abi::Error`), 2 usage or system error.
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tetd::abi::ioctl::{
    self as io, CallRequest, InfoRequest, ListRequest, LoadRequest, TestRequest, TrustRequest,
    UnloadRequest,
};
use tetd::abi::{decode_name, AgentInfo, Error, Mode, SIM_EXIT_PORT};

mod attack;

mod bench;

#[derive(Parser)]
#[command(
    name = "tetdctl",
    version,
    about = "Drive the TETD-G guest module (/dev/tetdg)"
)]
struct Cli {
    /// Device node of the module.
    #[arg(long, default_value = io::DEVICE_PATH, global = true)]
    device: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Exclusive,
    Collaborative,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Exclusive => Mode::Exclusive,
            ModeArg::Collaborative => Mode::Collaborative,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum TestKind {
    /// output = arg * 3 + 1 (uses the log service)
    Compute,
    /// execute ud2 (#UD)
    Ud,
    /// write to its own code (#PF on a read-only page)
    WriteCode,
    /// read an unmapped address (#PF)
    ReadUnmapped,
    /// read a kernel variable (works in exclusive mode, faults in collaborative)
    ReadKernel,
    /// call the abort service with code ARG
    Abort,
    /// not a blob: the module reads agent ARG's zone outside a call window
    /// (as a compromised kernel would); prints what the read returned
    PeekZone,
}

impl TestKind {
    fn code(self) -> u32 {
        match self {
            TestKind::Compute => io::TEST_COMPUTE,
            TestKind::Ud => io::TEST_UD,
            TestKind::WriteCode => io::TEST_WRITE_CODE,
            TestKind::ReadUnmapped => io::TEST_READ_UNMAPPED,
            TestKind::ReadKernel => io::TEST_READ_KERNEL,
            TestKind::Abort => io::TEST_ABORT,
            TestKind::PeekZone => io::TEST_PEEK_ZONE,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Timing loops for `tetd-vmm bench` (one `TETD-BENCH {json}` line each).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
    /// Load a .tetd image; prints the ids of its agents.
    Load {
        /// The image file.
        image: PathBuf,
        /// Refuse the image unless it is signed by an allowed key.
        #[arg(long)]
        require_signed: bool,
    },
    /// Call an agent; the output goes to stdout (raw bytes) unless --json.
    Call {
        /// Agent id.
        id: u32,
        /// Input as a UTF-8 string.
        #[arg(long, conflicts_with_all = ["hex", "input_file"])]
        input: Option<String>,
        /// Input as hex digits.
        #[arg(long, conflicts_with = "input_file")]
        hex: Option<String>,
        /// Input from a file.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Run in this mode instead of the agent's own.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Output buffer size in bytes.
        #[arg(long, default_value_t = 65536)]
        output_max: u64,
        /// Watchdog budget in milliseconds (collaborative mode; 0 = the module's default).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        /// Print one JSON object (status, output as hex and text, timing, fault).
        #[arg(long)]
        json: bool,
    },
    /// List the loaded agents.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace the module's signer allow-list (format: docs/signing.md;
    /// an empty file trusts nobody).
    Trust {
        /// The allow-list file.
        allow_list: PathBuf,
    },
    /// Unload the image that holds agent ID (and all its agents).
    Unload {
        /// Agent id.
        id: u32,
    },
    /// Print /proc/tetdg_info (or, with --json, the INFO ioctl's facts).
    Info {
        /// JSON from the INFO ioctl.
        #[arg(long)]
        json: bool,
    },
    /// Print the measurement event log (images extended into RTMR3, in load
    /// order) and the register value the module expects.
    Measurements,
    /// End the VM with status N (simulated host: writes the exit port).
    Exit {
        /// Exit status (0..=255).
        status: u8,
    },
    /// TEST TOOL: attack the module and the host as a compromised guest
    /// kernel would (raw hypercalls, zone access outside a window, races,
    /// fuzzing, malformed ioctls). Module hooks need test_ioctl=1.
    /// See docs/threat-model.md.
    #[command(subcommand)]
    Attack(attack::AttackCmd),
    /// Run a built-in test blob through the call mechanisms (needs the module
    /// parameter test_ioctl=1).
    TestBlob {
        /// Which blob.
        #[arg(value_enum)]
        kind: TestKind,
        /// Mode.
        #[arg(long, value_enum, default_value = "exclusive")]
        mode: ModeArg,
        /// Argument of the blob.
        #[arg(long, default_value_t = 0)]
        arg: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

fn os_fail(what: &str, e: std::io::Error) -> Fail {
    Fail(2, format!("{what}: {e}"))
}

fn tetd_fail(what: &str, status: u32, detail: &str) -> Fail {
    let e = Error::from_code(status as u64);
    let known = Error::try_from_code(status as u64).is_some();
    let mut msg = if known {
        format!("{what}: {e}")
    } else {
        format!("{what}: the agent returned status {status} (its own code, not a TETD error)")
    };
    if !detail.is_empty() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    Fail(1, msg)
}

struct Dev(File);

impl Dev {
    fn open(path: &PathBuf) -> Result<Dev, Fail> {
        File::options()
            .read(true)
            .write(true)
            .open(path)
            .map(Dev)
            .map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    " (is tetdg.ko loaded?)"
                } else {
                    ""
                };
                Fail(2, format!("{}: {e}{hint}", path.display()))
            })
    }

    fn ioctl<T>(&self, cmd: u32, req: &mut T) -> Result<(), Fail> {
        // SAFETY: `req` is the repr(C) struct that `cmd` encodes (size in the
        // command number); the module reads and writes exactly that struct.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), cmd as libc::c_ulong, req as *mut T) };
        if r < 0 {
            Err(os_fail(
                "ioctl on /dev/tetdg",
                std::io::Error::last_os_error(),
            ))
        } else {
            Ok(())
        }
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, Fail> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        return Err(Fail(2, "--hex: odd number of hex digits".into()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| {
                Fail(
                    2,
                    format!("--hex: invalid hex digits {:?} at offset {i}", &s[i..i + 2]),
                )
            })
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn list(dev: &Dev) -> Result<Vec<AgentInfo>, Fail> {
    let mut cap = 64u32;
    loop {
        let mut buf = vec![
            AgentInfo {
                id: 0,
                mode: 0,
                flags: 0,
                enabled: 0,
                calls: 0,
                failures: 0,
                name: [0; 32]
            };
            cap as usize
        ];
        let mut req = ListRequest {
            buf: buf.as_mut_ptr() as u64,
            cap,
            count: 0,
            status: 0,
            reserved: 0,
        };
        dev.ioctl(io::LIST, &mut req)?;
        if req.status != 0 {
            return Err(tetd_fail("list", req.status, ""));
        }
        if req.count <= cap {
            buf.truncate(req.count as usize);
            return Ok(buf);
        }
        cap = req.count;
    }
}

fn mode_name(m: u32) -> &'static str {
    Mode::from_u32(m).map_or("?", |m| m.name())
}

/// The INFO ioctl: module state (transport, counts, version).
pub(crate) fn query_info(dev: &Dev) -> Result<InfoRequest, Fail> {
    let mut r = InfoRequest {
        abi_version: 0,
        transport: 0,
        images: 0,
        agents: 0,
        zone_bytes: 0,
        calls: 0,
        faults: 0,
        status: 0,
        test_enabled: 0,
        version: [0; 32],
    };
    dev.ioctl(io::INFO, &mut r)?;
    if r.status != 0 {
        return Err(tetd_fail("info", r.status, ""));
    }
    Ok(r)
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.cmd {
        Cmd::Bench { what } => bench::run(&cli.device, what),
        Cmd::Info { json: true } => {
            let dev = Dev::open(&cli.device)?;
            let r = query_info(&dev)?;
            println!(
                "{}",
                json!({"version": io::detail_str(&r.version), "abi_version": r.abi_version,
                    "transport": match r.transport {
                        io::TRANSPORT_TDCALL => "tdcall",
                        io::TRANSPORT_LOOPBACK => "loopback",
                        io::TRANSPORT_UART => "uart",
                        _ => "port-io",
                    },
                    "images": r.images, "agents": r.agents, "zone_bytes": r.zone_bytes,
                    "calls": r.calls, "faults": r.faults, "test_ioctl": r.test_enabled != 0})
            );
            Ok(())
        }
        Cmd::Info { json: false } => {
            let text = std::fs::read_to_string(io::PROC_INFO_PATH)
                .map_err(|e| os_fail(io::PROC_INFO_PATH, e))?;
            print!("{text}");
            Ok(())
        }
        Cmd::Exit { status } => exit_vm(status),
        Cmd::Measurements => {
            let text = std::fs::read_to_string(io::PROC_INFO_PATH)
                .map_err(|e| os_fail(io::PROC_INFO_PATH, e))?;
            let start = text.find("\nmeasurements (").ok_or_else(|| {
                Fail(
                    2,
                    format!("{}: no measurement log (old module?)", io::PROC_INFO_PATH),
                )
            })?;
            print!("{}", &text[start + 1..]);
            Ok(())
        }
        Cmd::Load {
            image,
            require_signed,
        } => {
            let dev = Dev::open(&cli.device)?;
            let bytes =
                std::fs::read(&image).map_err(|e| os_fail(&image.display().to_string(), e))?;
            if bytes.len() as u64 > io::MAX_IMAGE_SIZE {
                return Err(Fail(
                    2,
                    format!(
                        "{}: larger than {} bytes",
                        image.display(),
                        io::MAX_IMAGE_SIZE
                    ),
                ));
            }
            let mut req = LoadRequest {
                image: bytes.as_ptr() as u64,
                image_len: bytes.len() as u64,
                flags: if require_signed {
                    io::LOAD_FLAG_REQUIRE_SIGNED
                } else {
                    0
                },
                status: 0,
                agent_count: 0,
                agent_ids: [0; io::LOAD_MAX_IDS],
                detail: [0; io::DETAIL_LEN],
            };
            dev.ioctl(io::LOAD, &mut req)?;
            if req.status != 0 {
                return Err(tetd_fail(
                    &format!("load {}", image.display()),
                    req.status,
                    io::detail_str(&req.detail),
                ));
            }
            let n = (req.agent_count as usize).min(io::LOAD_MAX_IDS);
            let ids: Vec<String> = req.agent_ids[..n].iter().map(|i| i.to_string()).collect();
            println!(
                "loaded {}: {} agent(s): {}",
                image.display(),
                req.agent_count,
                ids.join(" ")
            );
            Ok(())
        }
        Cmd::Call {
            id,
            input,
            hex: hex_in,
            input_file,
            mode,
            output_max,
            timeout_ms,
            json,
        } => {
            let dev = Dev::open(&cli.device)?;
            let input = match (input, hex_in, input_file) {
                (Some(s), _, _) => s.into_bytes(),
                (_, Some(h), _) => parse_hex(&h)?,
                (_, _, Some(f)) => {
                    std::fs::read(&f).map_err(|e| os_fail(&f.display().to_string(), e))?
                }
                _ => Vec::new(),
            };
            if input.len() as u64 > io::MAX_IO_SIZE || output_max > io::MAX_IO_SIZE {
                return Err(Fail(
                    2,
                    format!("input and output are limited to {} bytes", io::MAX_IO_SIZE),
                ));
            }
            let mut out = vec![0u8; output_max as usize];
            let mut req = CallRequest {
                agent_id: id,
                mode: mode.map_or(io::MODE_AGENT_DEFAULT, |m| Mode::from(m) as u32),
                input: input.as_ptr() as u64,
                input_len: input.len() as u64,
                output: out.as_mut_ptr() as u64,
                output_cap: output_max,
                output_len: 0,
                status: 0,
                mode_used: 0,
                fault_vector: 0,
                fault_error: 0,
                fault_addr: 0,
                fault_rip: 0,
                elapsed_ns: 0,
                timeout_ns: timeout_ms.saturating_mul(1_000_000),
            };
            dev.ioctl(io::CALL, &mut req)?;
            let n = (req.output_len.min(output_max)) as usize;
            out.truncate(n);
            if json {
                let mut v = json!({
                    "agent": id,
                    "mode": mode_name(req.mode_used),
                    "status": req.status,
                    "status_name": if req.status == 0 { "ok" } else { Error::from_code(req.status as u64).name() },
                    "output_hex": hex(&out),
                    "output_text": std::str::from_utf8(&out).ok(),
                    "elapsed_ns": req.elapsed_ns,
                });
                if req.status == Error::Fault as u32 || req.status == Error::StackOverflow as u32 {
                    v["fault"] = json!({"vector": req.fault_vector, "error_code": req.fault_error,
                        "address": req.fault_addr, "rip_offset": req.fault_rip});
                }
                println!("{v}");
                return if req.status == 0 {
                    Ok(())
                } else {
                    Err(Fail(1, String::new()))
                };
            }
            if req.status != 0 {
                let detail = if req.status == Error::Fault as u32
                    || req.status == Error::StackOverflow as u32
                {
                    format!(
                        "vector {} error {:#x} address {:#x} at image offset {:#x}",
                        req.fault_vector, req.fault_error, req.fault_addr, req.fault_rip
                    )
                } else {
                    String::new()
                };
                return Err(tetd_fail(&format!("call agent {id}"), req.status, &detail));
            }
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| os_fail("stdout", e))?;
            Ok(())
        }
        Cmd::List { json } => {
            let dev = Dev::open(&cli.device)?;
            let agents = list(&dev)?;
            if json {
                let v: Vec<_> = agents
                    .iter()
                    .map(|a| {
                        json!({"id": a.id, "name": decode_name(&a.name).unwrap_or("?"),
                            "mode": mode_name(a.mode), "flags": a.flags, "enabled": a.enabled != 0,
                            "calls": a.calls, "failures": a.failures})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>6}  {:<24} {:<13} {:>8} {:>8}  state",
                    "id", "name", "mode", "calls", "failures"
                );
                for a in &agents {
                    println!(
                        "{:>6}  {:<24} {:<13} {:>8} {:>8}  {}",
                        a.id,
                        decode_name(&a.name).unwrap_or("?"),
                        mode_name(a.mode),
                        a.calls,
                        a.failures,
                        if a.enabled != 0 {
                            "enabled"
                        } else {
                            "disabled"
                        }
                    );
                }
            }
            Ok(())
        }
        Cmd::Trust { allow_list } => {
            let dev = Dev::open(&cli.device)?;
            let text = std::fs::read(&allow_list)
                .map_err(|e| os_fail(&allow_list.display().to_string(), e))?;
            let mut req = TrustRequest {
                list: text.as_ptr() as u64,
                list_len: text.len() as u64,
                status: 0,
                keys: 0,
                detail: [0; io::DETAIL_LEN],
            };
            dev.ioctl(io::TRUST, &mut req)?;
            if req.status != 0 {
                return Err(tetd_fail(
                    &format!("trust {}", allow_list.display()),
                    req.status,
                    io::detail_str(&req.detail),
                ));
            }
            println!("trusting {} signer key(s)", req.keys);
            Ok(())
        }
        Cmd::Unload { id } => {
            let dev = Dev::open(&cli.device)?;
            let mut req = UnloadRequest {
                agent_id: id,
                status: 0,
                removed: 0,
                reserved: 0,
            };
            dev.ioctl(io::UNLOAD, &mut req)?;
            if req.status != 0 {
                return Err(tetd_fail(&format!("unload agent {id}"), req.status, ""));
            }
            println!("unloaded {} agent(s)", req.removed);
            Ok(())
        }
        Cmd::Attack(cmd) => attack::run(&cli.device, cmd),
        Cmd::TestBlob {
            kind,
            mode,
            arg,
            json,
        } => {
            let dev = Dev::open(&cli.device)?;
            let mode = Mode::from(mode);
            let mut req = TestRequest {
                kind: kind.code(),
                mode: mode as u32,
                arg,
                result: 0,
                status: 0,
                fault_vector: 0,
                fault_addr: 0,
                fault_rip: 0,
            };
            dev.ioctl(io::TEST, &mut req)?;
            if json {
                println!(
                    "{}",
                    json!({"kind": kind.to_possible_value().map(|v| v.get_name().to_string()),
                        "mode": mode.name(), "status": req.status,
                        "status_name": if req.status == 0 { "ok" } else { Error::from_code(req.status as u64).name() },
                        "result": req.result, "fault_vector": req.fault_vector,
                        "fault_addr": req.fault_addr, "fault_rip": req.fault_rip})
                );
            } else if req.status == 0 && matches!(kind, TestKind::PeekZone) {
                println!("zone read {:#018x}", req.result);
            } else if req.status == 0 {
                println!("result {}", req.result);
            } else if req.status == Error::Fault as u32 {
                println!(
                    "fault vector {} address {:#x} at blob offset {:#x}",
                    req.fault_vector, req.fault_addr, req.fault_rip
                );
            }
            if req.status != 0 {
                return Err(tetd_fail(
                    &format!("test-blob ({})", mode.name()),
                    req.status,
                    "",
                ));
            }
            Ok(())
        }
    }
}

/// `exit N`: one byte to the simulated host's exit port.
fn exit_vm(status: u8) -> Result<(), Fail> {
    // SAFETY: iopl(3) only changes this process' I/O privilege level.
    if unsafe { libc::iopl(3) } != 0 {
        return Err(os_fail(
            "iopl(3) (needs root)",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a single byte write to the TETD exit port; with IOPL 3 the CPU
    // allows it; the VMM ends the VM on it (nothing else listens there).
    unsafe {
        std::arch::asm!("out dx, al", in("dx") SIM_EXIT_PORT, in("al") status, options(nomem, nostack));
    }
    Err(Fail(2, format!("the VM did not stop after writing {status} to port {SIM_EXIT_PORT:#x} (not under the TETD VMM?)")))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("tetdctl: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_parses_and_errors_name_the_offset() {
        assert_eq!(parse_hex("68 65 6c6c6f").ok(), Some(b"hello".to_vec()));
        assert_eq!(parse_hex("").ok(), Some(vec![]));
        let Err(Fail(code, msg)) = parse_hex("abc") else {
            panic!()
        };
        assert_eq!((code, msg.as_str()), (2, "--hex: odd number of hex digits"));
        let Err(Fail(_, msg)) = parse_hex("00zz") else {
            panic!()
        };
        assert!(msg.contains("\"zz\" at offset 2"), "{msg}");
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }

    #[test]
    fn status_messages_use_the_abi_descriptions() {
        let Fail(code, msg) = tetd_fail("call agent 5", Error::Fault as u32, "vector 14");
        assert_eq!(code, 1);
        assert_eq!(msg, format!("call agent 5: {}: vector 14", Error::Fault));
        let Fail(_, msg) = tetd_fail("call agent 5", 77, "");
        assert!(msg.contains("status 77 (its own code"), "{msg}");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "tetdctl",
            "call",
            "3",
            "--hex",
            "00",
            "--mode",
            "collaborative",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Call {
                id: 3,
                mode: Some(ModeArg::Collaborative),
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["tetdctl", "call", "3", "--hex", "00", "--input", "x"]).is_err()
        );
    }
}
