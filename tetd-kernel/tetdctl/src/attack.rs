//! `tetdctl attack ...` — a TEST TOOL: the guest kernel (and root user
//! space) as the adversary of the host and of the module. Used by
//! `tetd-kernel/module/tests/attack-guest.sh` (docs/threat-model.md). The
//! hooks it uses in the module exist only with `test_ioctl=1`; the ioctl
//! and UART attacks need nothing but root.
//!
//! | command | attacks |
//! |---|---|
//! | `hypercall LEAF A0..A3` | one raw TETD hypercall through the module's transport (TEST_RAW_HYPERCALL) |
//! | `zone-read` / `zone-write` | an agent's zone outside any window (TEST_ZONE_ACCESS) |
//! | `devmem-scan GPA LEN` | guest root maps guest-physical memory through /dev/mem and reads every byte |
//! | `race ID` | two processes pinned to CPUs 0 and 1 VMM_ENTER agent ID at once, round after round |
//! | `hypercall-fuzz` | random leaves and arguments through the module's transport |
//! | `uart-fuzz` | random frames, random R10, corrupt frames and garbage straight to the hypercall UART (iopl) |
//! | `ioctls` | malformed requests to /dev/tetdg: bad pointers, lengths, sizes, commands |
//!
//! Each prints what happened; `race`, `*-fuzz` and `ioctls` also check the
//! outcome and exit 1 (with `FAIL` lines) if it is not what a correct module
//! and host must answer.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use tetd::abi::ioctl::{
    self as io, CallRequest, ListRequest, LoadRequest, RawHypercall, TestRequest, TrustRequest,
    UnloadRequest, ZoneAccess,
};
use tetd::abi::uart::{self, Request, Response, RESPONSE_LEN};
use tetd::abi::{AgentInfo, Error, Leaf, TETD_VMCALL_VENDOR};

use crate::{os_fail, Dev, Fail};

#[derive(Clone, Copy, ValueEnum)]
pub enum Region {
    /// The input area.
    Input,
    /// The output area.
    Output,
    /// The frame page.
    Frame,
    /// The heap.
    Heap,
}

impl Region {
    fn code(self) -> u32 {
        match self {
            Region::Input => io::ZONE_REGION_INPUT,
            Region::Output => io::ZONE_REGION_OUTPUT,
            Region::Frame => io::ZONE_REGION_FRAME,
            Region::Heap => io::ZONE_REGION_HEAP,
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Subcommand)]
pub enum AttackCmd {
    /// One raw TETD hypercall through the module's transport (test_ioctl=1).
    Hypercall {
        /// Leaf (R11), decimal or 0x hex.
        #[arg(value_parser = parse_u64)]
        leaf: u64,
        /// Up to four arguments (R12..R15).
        #[arg(value_parser = parse_u64, num_args = 0..=4)]
        args: Vec<u64>,
        /// Put the CPU the module sends from into argument 1.
        #[arg(long)]
        vcpu_arg1: bool,
    },
    /// Read 8 bytes of agent ID's zone outside any window (test_ioctl=1).
    ZoneRead {
        /// An agent id of the image.
        id: u32,
        /// Which read-write region.
        #[arg(long, value_enum, default_value = "input")]
        region: Region,
        /// Byte offset in the region.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Guest root: map LEN bytes of guest-physical memory at GPA through
    /// /dev/mem, read every byte, print how many are non-zero and how often
    /// NEEDLE occurs (no module hook needed).
    DevmemScan {
        /// Guest-physical address (page aligned), decimal or 0x hex.
        #[arg(value_parser = parse_u64)]
        gpa: u64,
        /// Bytes to read (a multiple of the page size), decimal or 0x hex.
        #[arg(value_parser = parse_u64)]
        len: u64,
        /// A byte string to look for.
        #[arg(long, default_value = "")]
        needle: String,
    },
    /// Write 8 bytes into agent ID's zone outside any window (test_ioctl=1).
    ZoneWrite {
        /// An agent id of the image.
        id: u32,
        /// The value (decimal or 0x hex).
        #[arg(value_parser = parse_u64)]
        value: u64,
        /// Which read-write region.
        #[arg(long, value_enum, default_value = "input")]
        region: Region,
        /// Byte offset in the region.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Two processes on CPUs 0 and 1 VMM_ENTER agent ID at the same moment,
    /// ROUNDS times; the loser also tries to VMM_RESUME the winner's call.
    Race {
        /// Host id of an image's zone (`zone ID` in /proc/tetdg_info; the
        /// agent ids are aliases, which VMM_ENTER refuses).
        id: u32,
        /// Rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
    },
    /// Random leaves and arguments through the module's transport.
    HypercallFuzz {
        /// Calls.
        #[arg(long, default_value_t = 300)]
        count: u32,
        /// PRNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random frames (random R10 too), corrupt frames and garbage bytes
    /// straight to the hypercall UART (uart transport; needs iopl).
    UartFuzz {
        /// Frames.
        #[arg(long, default_value_t = 200)]
        count: u32,
        /// PRNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Malformed requests to /dev/tetdg; every one must fail cleanly.
    Ioctls {
        /// A loaded agent that echoes its input (for the CALL cases).
        #[arg(long, default_value_t = 1)]
        agent: u32,
    },
}

fn status_name(s: u64) -> String {
    if s == 0 {
        "ok".into()
    } else {
        match Error::try_from_code(s) {
            Some(e) => e.name().into(),
            None => format!("unknown({s:#x})"),
        }
    }
}

fn test_ioctl<T>(dev: &Dev, kind: u32, payload: &mut T) -> Result<u32, Fail> {
    let mut req = TestRequest {
        kind,
        mode: 0,
        arg: payload as *mut T as u64,
        result: 0,
        status: 0,
        fault_vector: 0,
        fault_addr: 0,
        fault_rip: 0,
    };
    dev.ioctl(io::TEST, &mut req)?;
    Ok(req.status)
}

/// One raw hypercall; `Err` if the module refused or nobody answered.
fn raw(dev: &Dev, leaf: u64, args: [u64; 4], flags: u32) -> Result<RawHypercall, Fail> {
    let mut h = RawHypercall {
        leaf,
        args,
        flags,
        ..RawHypercall::default()
    };
    match test_ioctl(dev, io::TEST_RAW_HYPERCALL, &mut h)? {
        0 => Ok(h),
        s => Err(crate::tetd_fail("raw hypercall", s, "(test_ioctl=1?)")),
    }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random TETD registers, biased towards the leaves and small ids
/// (100..=107: never the ids of the images the tests load).
fn random_call(r: &mut Rng) -> (u64, [u64; 4]) {
    let leaf = if r.below(4) == 0 {
        r.next()
    } else {
        1 + r.below(8)
    };
    let id = if r.below(4) == 0 {
        r.next()
    } else {
        100 + r.below(8)
    };
    let a1 = match r.below(4) {
        0 => r.next(),
        1 => r.below(4),
        _ => 0,
    };
    let a2 = match r.below(4) {
        0 => r.next(),
        1 => r.below(2) << 32,
        _ => 0,
    };
    let a3 = if r.below(8) == 0 { r.next() } else { 0 };
    (leaf, [id, a1, a2, a3])
}

pub fn run(dev_path: &Path, cmd: AttackCmd) -> Result<(), Fail> {
    match cmd {
        AttackCmd::Hypercall {
            leaf,
            args,
            vcpu_arg1,
        } => {
            let dev = Dev::open(&dev_path.to_path_buf())?;
            let mut a = [0u64; 4];
            a[..args.len()].copy_from_slice(&args);
            let flags = if vcpu_arg1 { io::RAW_FLAG_VCPU_ARG1 } else { 0 };
            let h = raw(&dev, leaf, a, flags)?;
            println!(
                "status {} ({}) results {:#x} {:#x} {:#x} vcpu {}",
                h.status,
                status_name(h.status),
                h.results[0],
                h.results[1],
                h.results[2],
                h.vcpu
            );
            Ok(())
        }
        AttackCmd::ZoneRead { id, region, offset } => {
            zone_access(dev_path, id, region, offset, None)
        }
        AttackCmd::ZoneWrite {
            id,
            value,
            region,
            offset,
        } => zone_access(dev_path, id, region, offset, Some(value)),
        AttackCmd::DevmemScan { gpa, len, needle } => devmem_scan(gpa, len, needle.as_bytes()),
        AttackCmd::Race { id, rounds } => race(dev_path, id, rounds),
        AttackCmd::HypercallFuzz { count, seed } => hypercall_fuzz(dev_path, count, seed),
        AttackCmd::UartFuzz { count, seed } => uart_fuzz(dev_path, count, seed),
        AttackCmd::Ioctls { agent } => ioctls(dev_path, agent),
    }
}

fn zone_access(
    dev_path: &Path,
    id: u32,
    region: Region,
    offset: u64,
    value: Option<u64>,
) -> Result<(), Fail> {
    let dev = Dev::open(&dev_path.to_path_buf())?;
    let mut z = ZoneAccess {
        agent_id: id,
        region: region.code(),
        offset,
        write: value.is_some() as u32,
        value: value.unwrap_or(0),
        ..ZoneAccess::default()
    };
    match test_ioctl(&dev, io::TEST_ZONE_ACCESS, &mut z)? {
        0 => {
            let what = if value.is_some() { "wrote" } else { "read" };
            println!("zone {what} {:#018x} gpa {:#x}", z.value, z.gpa);
            Ok(())
        }
        s => Err(crate::tetd_fail("zone access", s, "")),
    }
}

/// `devmem-scan`: what guest root sees of guest-physical `[gpa, +len)`.
fn devmem_scan(gpa: u64, len: u64, needle: &[u8]) -> Result<(), Fail> {
    let page = tetd::abi::PAGE_SIZE;
    if gpa % page != 0 || len == 0 || len % page != 0 {
        return Err(Fail(
            2,
            format!("devmem-scan: {gpa:#x}+{len:#x} is not a whole number of pages"),
        ));
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|e| os_fail("/dev/mem", e))?;
    let n = len as usize;
    // SAFETY: a fresh shared mapping of /dev/mem at an address the kernel
    // picks; checked below, only read through a raw pointer, unmapped at
    // the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            gpa as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_fail(
            &format!("mmap /dev/mem at {gpa:#x}"),
            std::io::Error::last_os_error(),
        ));
    }
    let mut bytes = vec![0u8; n];
    // SAFETY: [p, p+n) is the mapping made above; volatile reads, one byte
    // at a time, so every byte really is loaded through the mapping.
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(i)) };
    }
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(p, n) };
    let nonzero = bytes.iter().filter(|b| **b != 0).count();
    let hits = if needle.is_empty() {
        0
    } else {
        bytes.windows(needle.len()).filter(|w| *w == needle).count()
    };
    println!(
        "devmem-scan {gpa:#x}+{len:#x}: {nonzero} non-zero byte(s), needle found {hits} time(s)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// race
// ---------------------------------------------------------------------------

fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

struct Pipe {
    r: i32,
    w: i32,
}

fn pipe() -> std::io::Result<Pipe> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Pipe {
        r: fds[0],
        w: fds[1],
    })
}

fn put(fd: i32, v: u64) {
    let b = v.to_le_bytes();
    // SAFETY: writes 8 bytes from a live buffer.
    let _ = unsafe { libc::write(fd, b.as_ptr().cast(), 8) };
}

fn get(fd: i32) -> Option<u64> {
    let mut b = [0u8; 8];
    // SAFETY: reads into a live 8-byte buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
    (n == 8).then(|| u64::from_le_bytes(b))
}

/// Commands from the parent to a racer.
const GO_ENTER: u64 = 1;
const GO_RESUME: u64 = 2;
const GO_EXIT: u64 = 3;

/// One racer (a child pinned to `cpu`): on GO_ENTER sends VMM_ENTER, on
/// GO_RESUME VMM_RESUME (both naming its CPU), reports the status.
fn racer(dev_path: &Path, id: u32, cpu: usize, cmd: &Pipe, res: &Pipe) -> i32 {
    if pin(cpu).is_err() {
        put(res.w, u64::MAX);
        return 2;
    }
    let Ok(dev) = Dev::open(&dev_path.to_path_buf()) else {
        put(res.w, u64::MAX);
        return 2;
    };
    put(res.w, 0); // ready
    while let Some(c) = get(cmd.r) {
        let leaf = match c {
            GO_ENTER => Leaf::VmmEnter,
            GO_RESUME => Leaf::VmmResume,
            _ => return 0,
        };
        let st = match raw(
            &dev,
            leaf as u64,
            [id as u64, 0, 0, 0],
            io::RAW_FLAG_VCPU_ARG1,
        ) {
            Ok(h) if h.vcpu as usize == cpu => h.status,
            _ => u64::MAX - 1,
        };
        put(res.w, st);
    }
    0
}

fn race(dev_path: &Path, id: u32, rounds: u32) -> Result<(), Fail> {
    let os = |e| os_fail("race set-up", e);
    let mut kids = Vec::new();
    for cpu in 0..2usize {
        let cmd = pipe().map_err(os)?;
        let res = pipe().map_err(os)?;
        // SAFETY: fork in a single-threaded process; the child only uses
        // async-signal-safe calls and its own copies of the descriptors.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let code = racer(dev_path, id, cpu, &cmd, &res);
            // SAFETY: leave the child without running the parent's exit path.
            unsafe { libc::_exit(code) };
        }
        kids.push((pid, cmd, res));
    }
    for (_, _, res) in &kids {
        if get(res.r) != Some(0) {
            return Err(Fail(
                2,
                "race: a racer could not start (pinning to CPU 0/1?)".into(),
            ));
        }
    }
    let busy = Error::AlreadyRunning.code() as u64;
    let not_owner = Error::NotOwner.code() as u64;
    let (mut one_winner, mut busy_n, mut not_owner_n, mut resumed, mut other) = (0, 0, 0, 0, 0);
    let mut wins = [0u32; 2];
    for _ in 0..rounds {
        for (_, cmd, _) in &kids {
            put(cmd.w, GO_ENTER);
        }
        let st: Vec<u64> = kids
            .iter()
            .map(|k| get(k.2.r).unwrap_or(u64::MAX))
            .collect();
        let winner = match (st[0], st[1]) {
            (0, s) if s == busy => Some(0),
            (s, 0) if s == busy => Some(1),
            _ => None,
        };
        let Some(w) = winner else {
            println!(
                "FAIL race round: ENTER statuses {} / {}",
                status_name(st[0]),
                status_name(st[1])
            );
            other += 1;
            // Leave no call open behind us.
            for (i, s) in st.iter().enumerate() {
                if *s == 0 {
                    put(kids[i].1.w, GO_RESUME);
                    let _ = get(kids[i].2.r);
                }
            }
            continue;
        };
        one_winner += 1;
        busy_n += 1;
        wins[w] += 1;
        let l = 1 - w;
        put(kids[l].1.w, GO_RESUME);
        match get(kids[l].2.r) {
            Some(s) if s == not_owner => not_owner_n += 1,
            s => {
                println!(
                    "FAIL race: the loser's RESUME answered {}",
                    status_name(s.unwrap_or(u64::MAX))
                );
                other += 1;
            }
        }
        put(kids[w].1.w, GO_RESUME);
        match get(kids[w].2.r) {
            Some(0) => resumed += 1,
            s => {
                println!(
                    "FAIL race: the winner's RESUME answered {}",
                    status_name(s.unwrap_or(u64::MAX))
                );
                other += 1;
            }
        }
    }
    for (pid, cmd, _) in &kids {
        put(cmd.w, GO_EXIT);
        let mut st = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(*pid, &mut st, 0) };
    }
    println!(
        "race: rounds {rounds} one-winner {one_winner} busy {busy_n} not-owner {not_owner_n} resumed {resumed} other {other} (cpu0 won {}, cpu1 won {})",
        wins[0], wins[1]
    );
    if other == 0 && one_winner == rounds && not_owner_n == rounds && resumed == rounds {
        Ok(())
    } else {
        Err(Fail(1, String::new()))
    }
}

// ---------------------------------------------------------------------------
// fuzzing the host through the guest
// ---------------------------------------------------------------------------

fn hypercall_fuzz(dev_path: &Path, count: u32, seed: u64) -> Result<(), Fail> {
    let dev = Dev::open(&dev_path.to_path_buf())?;
    // One CPU for the whole run: the clean-up's RESUMEs must come from the
    // CPU that made the fuzzed ENTERs (else NotOwner leaves a call open).
    pin(0).map_err(|e| os_fail("pinning to CPU 0", e))?;
    let mut rng = Rng(seed | 1);
    let mut hist = std::collections::BTreeMap::<String, u32>::new();
    let mut bad = 0;
    for _ in 0..count {
        let (leaf, args) = random_call(&mut rng);
        let h = raw(&dev, leaf, args, 0)?;
        if h.status != 0 && Error::try_from_code(h.status).is_none() {
            println!(
                "FAIL hypercall-fuzz: unknown status {:#x} for leaf {leaf:#x} {args:#x?}",
                h.status
            );
            bad += 1;
        }
        if h.status != 0 && h.results != [0; 3] {
            println!(
                "FAIL hypercall-fuzz: results {:#x?} with status {}",
                h.results, h.status
            );
            bad += 1;
        }
        *hist.entry(status_name(h.status)).or_default() += 1;
    }
    // Leave no zone of the fuzzer open or registered: close and disable
    // what it may have entered or created (ids 100..=107).
    for id in 100..108u64 {
        let _ = raw(
            &dev,
            Leaf::VmmResume as u64,
            [id, 0, 0, 0],
            io::RAW_FLAG_VCPU_ARG1,
        );
    }
    let h: Vec<String> = hist.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "hypercall-fuzz: {count} sent, {count} answered; {}",
        h.join(" ")
    );
    if bad == 0 {
        Ok(())
    } else {
        Err(Fail(1, String::new()))
    }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O on the hypercall UART (iopl(3) granted); no memory.
    unsafe { std::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

fn outb(port: u16, v: u8) {
    // SAFETY: as inb.
    unsafe { std::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

fn uart_send(bytes: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    for &b in bytes {
        while inb(uart::IO_BASE + uart::REG_LSR) & uart::LSR_THRE == 0 {
            if Instant::now() > deadline {
                return false;
            }
        }
        outb(uart::IO_BASE + uart::REG_DATA, b);
    }
    true
}

/// Reads bytes until a response frame for `seq` decodes (or the deadline).
fn uart_answer(seq: u16, wait: Duration) -> Option<Response> {
    let deadline = Instant::now() + wait;
    let mut buf: Vec<u8> = Vec::new();
    while Instant::now() < deadline {
        if inb(uart::IO_BASE + uart::REG_LSR) & uart::LSR_DR == 0 {
            std::hint::spin_loop();
            continue;
        }
        buf.push(inb(uart::IO_BASE + uart::REG_DATA));
        if buf.len() >= RESPONSE_LEN {
            let mut f = [0u8; RESPONSE_LEN];
            f.copy_from_slice(&buf[buf.len() - RESPONSE_LEN..]);
            if let Ok(r) = Response::decode(&f) {
                if r.seq == seq {
                    return Some(r);
                }
            }
        }
    }
    None
}

fn uart_fuzz(dev_path: &Path, count: u32, seed: u64) -> Result<(), Fail> {
    let dev = Dev::open(&dev_path.to_path_buf())?;
    let info = crate::query_info(&dev)?;
    if info.transport != io::TRANSPORT_UART {
        return Err(Fail(
            2,
            "uart-fuzz: the module does not use the uart transport".into(),
        ));
    }
    // SAFETY: iopl(3) only changes this process' I/O privilege level.
    if unsafe { libc::iopl(3) } != 0 {
        return Err(os_fail("iopl(3)", std::io::Error::last_os_error()));
    }
    let mut rng = Rng(seed | 1);
    let (mut frames, mut answered, mut refused_vendor, mut garbage, mut corrupt) = (0, 0, 0, 0, 0);
    let mut bad = 0;
    for i in 0..count {
        // Garbage and corrupt frames first, sometimes: the host must skip
        // them and still answer the next valid frame.
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(80) as usize;
                let g: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                garbage += n;
                uart_send(&g);
            }
            1 => {
                let (leaf, args) = random_call(&mut rng);
                let mut f = Request::new(
                    0xf000 | i as u16,
                    0,
                    tetd::abi::regs::HypercallArgs { leaf, args },
                )
                .encode();
                let at = 2 + rng.below(f.len() as u64 - 2) as usize;
                f[at] ^= 1 + rng.below(255) as u8;
                corrupt += 1;
                uart_send(&f);
            }
            _ => {}
        }
        let (leaf, args) = random_call(&mut rng);
        let seq = (i as u16) & 0x7fff;
        let mut req = Request::new(
            seq,
            rng.below(4) as u32,
            tetd::abi::regs::HypercallArgs { leaf, args },
        );
        let wrong_vendor = rng.below(8) == 0;
        if wrong_vendor {
            req.regs[0] = rng.next();
        }
        frames += 1;
        if !uart_send(&req.encode()) {
            return Err(Fail(2, "uart-fuzz: the UART does not take bytes".into()));
        }
        match uart_answer(seq, Duration::from_secs(3)) {
            Some(r) => {
                answered += 1;
                let st = r.regs[0];
                if wrong_vendor && req.regs[0] != TETD_VMCALL_VENDOR {
                    if st != Error::InvalidArgument.code() as u64 {
                        println!("FAIL uart-fuzz: wrong R10 answered {}", status_name(st));
                        bad += 1;
                    }
                    refused_vendor += 1;
                } else if st != 0 && Error::try_from_code(st).is_none() {
                    println!("FAIL uart-fuzz: unknown status {st:#x}");
                    bad += 1;
                }
            }
            None => {
                println!("FAIL uart-fuzz: no answer to frame seq {seq}");
                bad += 1;
            }
        }
    }
    // Close any call a fuzzed frame opened (ids 100..=107, claimed vCPUs
    // 0..=3), so the checks after this one start from idle agents.
    let mut seq = 0x7f00u16;
    for id in 100..108u64 {
        for vcpu in 0..4u64 {
            seq = seq.wrapping_add(1) & 0x7fff;
            let req = Request::new(
                seq,
                vcpu as u32,
                tetd::abi::regs::HypercallArgs {
                    leaf: Leaf::VmmResume as u64,
                    args: [id, vcpu, 0, 0],
                },
            );
            if uart_send(&req.encode()) {
                let _ = uart_answer(seq, Duration::from_secs(3));
            }
        }
    }
    // Drain whatever is left for the module.
    while inb(uart::IO_BASE + uart::REG_LSR) & uart::LSR_DR != 0 {
        let _ = inb(uart::IO_BASE + uart::REG_DATA);
    }
    println!(
        "uart-fuzz: frames {frames} answered {answered} (wrong R10 refused {refused_vendor}), corrupt frames {corrupt}, garbage bytes {garbage}"
    );
    if bad == 0 && answered == frames {
        Ok(())
    } else {
        Err(Fail(1, String::new()))
    }
}

// ---------------------------------------------------------------------------
// malformed ioctls
// ---------------------------------------------------------------------------

/// An address no user pointer may name.
const KERNEL_ADDR: u64 = 0xffff_ffff_8100_0000;

/// `mmap` of `pages` pages with protection `prot` (anonymous, private).
struct Map {
    p: *mut u8,
    len: usize,
}

impl Map {
    fn new(pages: usize, prot: i32) -> Map {
        let len = pages * 4096;
        // SAFETY: anonymous private mapping of a fresh range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Map { p: p.cast(), len }
    }
    fn addr(&self) -> u64 {
        self.p as u64
    }
    fn protect(&self, off_pages: usize, prot: i32) {
        // SAFETY: a page range inside our own mapping.
        unsafe { libc::mprotect(self.p.add(off_pages * 4096).cast(), 4096, prot) };
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.p.cast(), self.len) };
    }
}

/// ioctl with an arbitrary argument; Ok(()) or the errno.
fn raw_ioctl(f: &File, cmd: u32, arg: u64) -> Result<(), i32> {
    // SAFETY: the module validates every user address it is given; the
    // point of these calls is to hand it bad ones.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as libc::c_ulong, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

struct Checker {
    failed: u32,
}

impl Checker {
    fn check(&mut self, name: &str, got: String, want: &str) {
        if got == want {
            println!("PASS ioctl-{name}");
        } else {
            println!("FAIL ioctl-{name}: got {got} want {want}");
            self.failed += 1;
        }
    }
}

fn errno_name(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(libc::EFAULT) => "EFAULT".into(),
        Err(libc::ENOTTY) => "ENOTTY".into(),
        Err(e) => format!("errno {e}"),
    }
}

fn st(s: u32) -> String {
    status_name(s as u64)
}

fn load_req(image: u64, len: u64) -> LoadRequest {
    LoadRequest {
        image,
        image_len: len,
        flags: 0,
        status: 0,
        agent_count: 0,
        agent_ids: [0; io::LOAD_MAX_IDS],
        detail: [0; io::DETAIL_LEN],
    }
}

fn call_req(agent: u32, input: u64, input_len: u64, output: u64, output_cap: u64) -> CallRequest {
    CallRequest {
        agent_id: agent,
        mode: io::MODE_AGENT_DEFAULT,
        input,
        input_len,
        output,
        output_cap,
        output_len: 0,
        status: 0,
        mode_used: 0,
        fault_vector: 0,
        fault_error: 0,
        fault_addr: 0,
        fault_rip: 0,
        elapsed_ns: 0,
        timeout_ns: 0,
    }
}

fn ioctls(dev_path: &Path, agent: u32) -> Result<(), Fail> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(dev_path)
        .map_err(|e| os_fail(&dev_path.display().to_string(), e))?;
    let mut c = Checker { failed: 0 };
    let cmds = [
        ("load", io::LOAD),
        ("call", io::CALL),
        ("unload", io::UNLOAD),
        ("list", io::LIST),
        ("info", io::INFO),
        ("test", io::TEST),
        ("trust", io::TRUST),
    ];
    let none = Map::new(1, libc::PROT_NONE);
    let ro = Map::new(1, libc::PROT_READ);
    // The request struct itself at a bad address.
    for (name, cmd) in cmds {
        c.check(
            &format!("{name}-null-request"),
            errno_name(raw_ioctl(&f, cmd, 0)),
            "EFAULT",
        );
        c.check(
            &format!("{name}-kernel-request"),
            errno_name(raw_ioctl(&f, cmd, KERNEL_ADDR)),
            "EFAULT",
        );
        c.check(
            &format!("{name}-unmapped-request"),
            errno_name(raw_ioctl(&f, cmd, none.addr())),
            "EFAULT",
        );
    }
    // A read-only request: read, handled, the answer cannot be written back.
    c.check(
        "info-readonly-request",
        errno_name(raw_ioctl(&f, io::INFO, ro.addr())),
        "EFAULT",
    );
    // Commands the module does not know.
    c.check(
        "unknown-nr",
        errno_name(raw_ioctl(&f, io::iowr(99, 16), ro.addr())),
        "ENOTTY",
    );
    c.check(
        "wrong-size",
        errno_name(raw_ioctl(&f, io::iowr(1, 8), ro.addr())),
        "ENOTTY",
    );
    c.check("zero-cmd", errno_name(raw_ioctl(&f, 0, 0)), "ENOTTY");

    let ioc = |name: &str, cmd: u32, req: u64| -> Result<(), i32> {
        let r = raw_ioctl(&f, cmd, req);
        if r.is_err() {
            println!(
                "FAIL ioctl-{name}: the ioctl itself failed: {}",
                errno_name(r)
            );
        }
        r
    };
    // LOAD: bad image buffers and lengths.
    let half = Map::new(2, libc::PROT_READ | libc::PROT_WRITE);
    half.protect(1, libc::PROT_NONE);
    let zeros = Map::new(4096, libc::PROT_READ); // 16 MiB of zero pages
    for (name, image, len, want) in [
        ("load-null-image", 0, 100, "BadRequest"),
        ("load-kernel-image", KERNEL_ADDR, 100, "BadRequest"),
        ("load-unmapped-image", none.addr(), 100, "BadRequest"),
        ("load-half-mapped-image", half.addr(), 8192, "BadRequest"),
        ("load-zero-length", half.addr(), 0, "BadRequest"),
        (
            "load-over-64mib",
            half.addr(),
            io::MAX_IMAGE_SIZE + 1,
            "BadRequest",
        ),
        ("load-length-max", half.addr(), u64::MAX, "BadRequest"),
        ("load-16mib-of-zeros", zeros.addr(), 16 << 20, "BadMagic"),
    ] {
        let mut r = load_req(image, len);
        if ioc(name, io::LOAD, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), want);
        }
    }
    // CALL: bad input/output buffers, sizes, modes, ids.
    let mut buf = [0u8; 64];
    let inp = b"0123456789abcdef";
    let out = buf.as_mut_ptr() as u64;
    let i = inp.as_ptr() as u64;
    let cases: [(&str, CallRequest, &str); 11] = [
        (
            "call-null-input",
            call_req(agent, 0, 16, out, 64),
            "BadRequest",
        ),
        (
            "call-kernel-input",
            call_req(agent, KERNEL_ADDR, 16, out, 64),
            "BadRequest",
        ),
        (
            "call-kernel-output",
            call_req(agent, i, 16, KERNEL_ADDR, 64),
            "BadRequest",
        ),
        (
            "call-readonly-output",
            call_req(agent, i, 16, ro.addr(), 64),
            "BadRequest",
        ),
        (
            "call-unmapped-output",
            call_req(agent, i, 16, none.addr(), 64),
            "BadRequest",
        ),
        (
            "call-input-too-large",
            call_req(agent, i, io::MAX_IO_SIZE + 1, out, 64),
            "BadRequest",
        ),
        (
            "call-output-cap-max",
            call_req(agent, i, 16, out, u64::MAX),
            "BadRequest",
        ),
        ("call-agent-0", call_req(0, i, 16, out, 64), "NotFound"),
        (
            "call-agent-max",
            call_req(u32::MAX, i, 16, out, 64),
            "NotFound",
        ),
        (
            "call-mode-7",
            CallRequest {
                mode: 7,
                ..call_req(agent, i, 16, out, 64)
            },
            "BadRequest",
        ),
        ("call-ok", call_req(agent, i, 16, out, 64), "ok"),
    ];
    for (name, mut r, want) in cases {
        if ioc(name, io::CALL, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), want);
        }
    }
    c.check(
        "call-ok-output",
        String::from_utf8_lossy(&buf[..16]).into_owned(),
        "0123456789abcdef",
    );
    // LIST into bad buffers.
    let list_tail = Map::new(2, libc::PROT_READ | libc::PROT_WRITE);
    list_tail.protect(1, libc::PROT_NONE);
    let last = list_tail.addr() + 4096 - std::mem::size_of::<AgentInfo>() as u64;
    for (name, b, cap) in [
        ("list-null-buffer", 0, 4),
        ("list-kernel-buffer", KERNEL_ADDR, 4),
        ("list-cap-beyond-buffer", last, u32::MAX),
    ] {
        let mut r = ListRequest {
            buf: b,
            cap,
            count: 0,
            status: 0,
            reserved: 0,
        };
        // (two or more agents must be loaded, so the second record of
        // `list-cap-beyond-buffer` falls on the unmapped page)
        if ioc(name, io::LIST, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), "BadRequest");
        }
    }
    // TRUST: bad lists (a failed TRUST keeps the old list).
    for (name, l, len, want) in [
        ("trust-null-list", 0, 10, "BadRequest"),
        ("trust-kernel-list", KERNEL_ADDR, 10, "BadRequest"),
        (
            "trust-too-large",
            half.addr(),
            io::MAX_ALLOWLIST_SIZE + 1,
            "TooLarge",
        ),
    ] {
        let mut r = TrustRequest {
            list: l,
            list_len: len,
            status: 0,
            keys: 0,
            detail: [0; io::DETAIL_LEN],
        };
        if ioc(name, io::TRUST, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), want);
        }
    }
    // UNLOAD of ids nobody has.
    for (name, id) in [("unload-0", 0), ("unload-max", u32::MAX)] {
        let mut r = UnloadRequest {
            agent_id: id,
            status: 0,
            removed: 0,
            reserved: 0,
        };
        if ioc(name, io::UNLOAD, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), "NotFound");
        }
    }
    // TEST: unknown kinds and bad hook arguments.
    let mut za = ZoneAccess {
        agent_id: agent,
        region: 9,
        ..ZoneAccess::default()
    };
    let za_bad_region = &mut za as *mut _ as u64;
    let mut zb = ZoneAccess {
        agent_id: agent,
        region: io::ZONE_REGION_INPUT,
        offset: u64::MAX - 3,
        ..ZoneAccess::default()
    };
    let zb_bad_offset = &mut zb as *mut _ as u64;
    let mut zc = ZoneAccess {
        agent_id: 0x7fff_0000,
        region: io::ZONE_REGION_INPUT,
        ..ZoneAccess::default()
    };
    let zc_unknown = &mut zc as *mut _ as u64;
    for (name, kind, arg, want) in [
        ("test-unknown-kind", 999, 0, "BadRequest"),
        (
            "test-raw-hypercall-null",
            io::TEST_RAW_HYPERCALL,
            0,
            "BadRequest",
        ),
        (
            "test-raw-hypercall-kernel",
            io::TEST_RAW_HYPERCALL,
            KERNEL_ADDR,
            "BadRequest",
        ),
        (
            "test-zone-access-region",
            io::TEST_ZONE_ACCESS,
            za_bad_region,
            "BadRequest",
        ),
        (
            "test-zone-access-offset",
            io::TEST_ZONE_ACCESS,
            zb_bad_offset,
            "BadRequest",
        ),
        (
            "test-zone-access-unknown-agent",
            io::TEST_ZONE_ACCESS,
            zc_unknown,
            "NotFound",
        ),
        (
            "test-zone-access-readonly",
            io::TEST_ZONE_ACCESS,
            ro.addr(),
            "NotFound",
        ),
    ] {
        let mut r = TestRequest {
            kind,
            mode: 0,
            arg,
            result: 0,
            status: 0,
            fault_vector: 0,
            fault_addr: 0,
            fault_rip: 0,
        };
        if ioc(name, io::TEST, &mut r as *mut _ as u64).is_ok() {
            c.check(name, st(r.status), want);
        }
    }
    println!("ioctls: {} failed", c.failed);
    if c.failed == 0 {
        Ok(())
    } else {
        Err(Fail(1, String::new()))
    }
}
