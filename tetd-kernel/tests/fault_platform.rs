//! Fault injection into the loader core's platform: the k-th zone
//! allocation, zone protection, registration event or run fails, the random
//! source fails, and an agent exhausts its stack inside a runtime service.
//! Every failure must be a clean error naming the operation, roll the
//! registry back to its state before the request, leak no zone (every
//! `zone_alloc` gets exactly one `zone_free`) and leave the registry usable.
//!
//! `Flaky` wraps the simulator platform and fails the operation whose call
//! number is armed.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use common::*;
use tetd::abi::Error;
use tetd_kernel::layout::{Protection, RegionKind};
use tetd_kernel::platform::{AgentEvent, RunOutcome, RunRequest, ZoneMem, ZoneRequest};
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, CallReport, Platform, Registry};

/// Which call of an operation fails (1-based; 0 = none), and counters.
#[derive(Default)]
struct Arm {
    at: AtomicU32,
    calls: AtomicU32,
}

impl Arm {
    fn set(&self, k: u32) {
        self.calls.store(0, Ordering::SeqCst);
        self.at.store(k, Ordering::SeqCst);
    }
    /// Counts a call; true if this one must fail.
    fn hit(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        n == self.at.load(Ordering::SeqCst)
    }
    fn count(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Flaky {
    sim: SimPlatform,
    alloc: Arm,
    protect: Arm,
    event: Arm,
    run: Arm,
    random_fails: AtomicBool,
    /// Views of the zones allocated and not yet freed.
    live: Mutex<HashSet<usize>>,
    /// A zone_free of something not live (double free / foreign zone).
    bad_free: AtomicBool,
    events: Mutex<Vec<AgentEvent>>,
}

impl Flaky {
    fn new() -> Self {
        Flaky {
            sim: SimPlatform::new(LogTarget::Capture),
            alloc: Arm::default(),
            protect: Arm::default(),
            event: Arm::default(),
            run: Arm::default(),
            random_fails: AtomicBool::new(false),
            live: Mutex::new(HashSet::new()),
            bad_free: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
        }
    }
    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

// SAFETY: every operation either fails before doing anything or delegates to
// the simulator platform unchanged, so the simulator's guarantees hold.
unsafe impl Platform for Flaky {
    fn zone_alloc(&self, req: &ZoneRequest<'_>) -> Result<ZoneMem, Error> {
        if self.alloc.hit() {
            return Err(Error::NoMemory);
        }
        let z = self.sim.zone_alloc(req)?;
        self.live.lock().unwrap().insert(z.view as usize);
        Ok(z)
    }
    fn zone_protect(&self, zone: &ZoneMem, off: u64, len: u64, p: Protection) -> Result<(), Error> {
        if self.protect.hit() {
            return Err(Error::Internal);
        }
        self.sim.zone_protect(zone, off, len, p)
    }
    unsafe fn zone_free(&self, zone: &ZoneMem) {
        if !self.live.lock().unwrap().remove(&(zone.view as usize)) {
            self.bad_free.store(true, Ordering::SeqCst);
            return;
        }
        // SAFETY: forwarded contract; the zone came from the simulator.
        unsafe { self.sim.zone_free(zone) }
    }
    fn run(&self, req: &RunRequest<'_>) -> RunOutcome {
        if self.run.hit() {
            return RunOutcome::Refused(Error::SeamError);
        }
        self.sim.run(req)
    }
    fn random(&self, buf: &mut [u8]) -> Result<(), Error> {
        if self.random_fails.load(Ordering::SeqCst) {
            return Err(Error::Unsupported);
        }
        self.sim.random(buf)
    }
    fn time_ns(&self) -> u64 {
        self.sim.time_ns()
    }
    fn log(&self, agent_id: u32, msg: &[u8]) {
        self.sim.log(agent_id, msg)
    }
    fn agent_event(&self, event: AgentEvent) -> Result<(), Error> {
        self.events.lock().unwrap().push(event);
        if self.event.hit() {
            return Err(Error::Denied);
        }
        Ok(())
    }
}

type FReg = Registry<Flaky>;

fn flaky() -> Box<FReg> {
    Box::new(Registry::new(Flaky::new()))
}

fn fcall(reg: &mut FReg, id: u32, input: &[u8]) -> (CallReport, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let r = reg.call(id, input, &mut out, &CallOptions::default());
    out.truncate(r.output_len);
    (r, out)
}

fn image_at(offset: u32) -> Vec<u8> {
    build_image(&Spec {
        id_offset: offset,
        ..Spec::default()
    })
}

/// No zone is live, none was freed twice.
fn assert_no_leak(reg: &FReg) {
    assert_eq!(reg.platform().live(), 0, "zones leaked");
    assert!(
        !reg.platform().bad_free.load(Ordering::SeqCst),
        "bad zone_free"
    );
}

fn assert_works(reg: &mut FReg, id: u32) {
    let (r, out) = fcall(reg, id, b"still works");
    assert_eq!(r.status, Ok(()));
    assert_eq!(out, b"still works");
}

/// The k-th of four loads cannot get zone memory: exactly that load fails
/// (naming the operation), the others are unaffected.
#[test]
fn zone_alloc_failure_at_every_position() {
    for k in 1..=4u32 {
        let mut reg = flaky();
        reg.platform().alloc.set(k);
        for i in 1..=4u32 {
            let r = reg.load(&image_at(i * 100), &dev_options());
            if i == k {
                let e = r.unwrap_err();
                assert_eq!(e.code(), Error::NoMemory, "{e}");
                assert!(e.to_string().contains("zone allocation"), "{e}");
            } else {
                r.unwrap();
            }
        }
        assert_eq!(reg.agent_count(), 3 * ids::ALL.len());
        assert_eq!(reg.platform().live(), 3);
        assert!(reg.agent(k * 100 + ids::ECHO).is_none());
        let other = if k == 1 { 200 } else { 100 };
        assert_works(&mut reg, other + ids::ECHO);
        reg.unload_all();
        assert_no_leak(&reg);
    }
}

/// Every zone_protect call of a load fails in turn: the load is rolled
/// back (no agent, zone freed), and the same registry then loads the image.
#[test]
fn zone_protect_failure_rolls_back_at_every_step() {
    let mut probe = flaky();
    probe.load(&image(), &dev_options()).unwrap();
    let n = probe.platform().protect.count();
    assert!(n >= 5, "a load protects several regions ({n})");
    drop(probe);
    for k in 1..=n {
        let mut reg = flaky();
        reg.platform().protect.set(k);
        let e = reg.load(&image(), &dev_options()).unwrap_err();
        assert!(e.to_string().contains("protect"), "step {k}: {e}");
        assert_eq!(reg.agent_count(), 0);
        assert_no_leak(&reg);
        reg.platform().protect.set(0);
        reg.load(&image(), &dev_options()).unwrap();
        assert_works(&mut reg, ids::ECHO);
    }
}

/// The platform vetoes the k-th agent registration of a load: all agents
/// registered before it are unregistered again, the zone is freed.
#[test]
fn registration_veto_at_every_agent_rolls_back() {
    let n = ids::ALL.len() as u32;
    for k in 1..=n {
        let mut reg = flaky();
        reg.platform().event.set(k);
        let e = reg.load(&image(), &dev_options()).unwrap_err();
        assert_eq!(e.code(), Error::Denied, "agent {k}: {e}");
        assert_eq!(reg.agent_count(), 0);
        assert_no_leak(&reg);
        // The platform saw k registrations and the k-1 undone.
        let ev = std::mem::take(&mut *reg.platform().events.lock().unwrap());
        let reg_n = ev
            .iter()
            .filter(|e| matches!(e, AgentEvent::Registered { .. }))
            .count();
        let unreg_n = ev
            .iter()
            .filter(|e| matches!(e, AgentEvent::Unregistered { .. }))
            .count();
        assert_eq!((reg_n, unreg_n), (k as usize, k as usize - 1), "{ev:?}");
        reg.platform().event.set(0);
        reg.load(&image(), &dev_options()).unwrap();
        assert_works(&mut reg, ids::ECHO);
    }
}

/// Errors from the platform while unloading (which cannot be undone) do not
/// stop the unload: agents go, the zone is freed.
#[test]
fn unload_proceeds_when_the_platform_objects() {
    let mut reg = flaky();
    reg.load(&image(), &dev_options()).unwrap();
    reg.platform().event.set(reg.platform().event.count() + 1);
    assert_eq!(reg.unload_agent(ids::ECHO).unwrap().1, ids::ALL.len());
    assert_eq!(reg.agent_count(), 0);
    assert_no_leak(&reg);
}

/// A run the platform refuses (the host refused VMM_ENTER) is a failed call
/// that did not run; the next call runs.
#[test]
fn refused_run_is_reported_and_harmless() {
    let mut reg = flaky();
    reg.load(&image(), &dev_options()).unwrap();
    reg.platform().run.set(1);
    let (r, out) = fcall(&mut reg, ids::COUNTER, b"");
    assert_eq!(r.status, Err(Error::SeamError));
    assert!(!r.ran && out.is_empty());
    // The agent never ran: its heap counter starts at 1 in the next call.
    let (r, out) = fcall(&mut reg, ids::COUNTER, b"");
    assert_eq!(r.status, Ok(()));
    assert_eq!(out, 1u64.to_le_bytes());
    let s = reg.agent(ids::COUNTER).unwrap().stats();
    assert_eq!((s.calls, s.rejected, s.failures), (1, 1, 1));
}

/// The random source fails: the agent's service call gets the error code
/// (the agent returns it), nothing else breaks.
#[test]
fn random_failure_reaches_the_agent() {
    let mut reg = flaky();
    reg.load(&image(), &dev_options()).unwrap();
    reg.platform().random_fails.store(true, Ordering::SeqCst);
    let (r, _) = fcall(&mut reg, ids::RANDOM, b"");
    assert_eq!(r.status, Err(Error::Unsupported));
    reg.platform().random_fails.store(false, Ordering::SeqCst);
    let (r, out) = fcall(&mut reg, ids::RANDOM, b"");
    assert_eq!(r.status, Ok(()));
    assert_eq!(out.len(), 32);
}

/// The image table fills up: the 17th image is refused before any zone is
/// allocated.
#[test]
fn full_image_table_allocates_nothing() {
    let mut reg = flaky();
    // 16 images of one agent each.
    for i in 0..16u32 {
        let spec = Spec {
            ids: vec![ids::ECHO],
            admin_ids: vec![],
            id_offset: i * 1000,
            ..Spec::default()
        };
        reg.load(&build_image(&spec), &dev_options()).unwrap();
    }
    let before = reg.platform().alloc.count();
    let spec = Spec {
        ids: vec![ids::ECHO],
        admin_ids: vec![],
        id_offset: 99_000,
        ..Spec::default()
    };
    let e = reg.load(&build_image(&spec), &dev_options()).unwrap_err();
    assert!(e.to_string().contains("image"), "{e}");
    assert_eq!(reg.platform().alloc.count(), before, "no zone allocated");
    assert_eq!(reg.platform().live(), 16);
    reg.unload_all();
    assert_no_leak(&reg);
}

mod stack_in_service {
    //! An agent that calls a runtime service with almost no stack left: the
    //! service (runtime code, running on the agent's stack) overflows into
    //! the guard page. The fault is outside the agent's code but inside its
    //! call: the call must end with `StackOverflow`, and the runtime must
    //! not be left holding anything (the next calls, including ones that log,
    //! work).
    use super::*;
    use iced_x86::code_asm::*;
    use iced_x86::BlockEncoderOptions;
    use tetd::abi::Mode;
    use tetd::image::{encode_padded, AgentRecord, ImageBuilder, ManifestHeader, SegmentSpec};
    use tetd::image::{PERM_R, PERM_X};

    const STACK: u32 = 0x4000;

    /// Agent 1: log(input) with `leave` bytes of stack; agent 2: echo;
    /// agent 3: log(input) with the whole stack.
    fn image(leave: u32) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        let mut echo = a.create_label();
        let mut log = a.create_label();
        // 1: rsp = stack bottom + leave (the entry rsp is stack top - 8).
        a.mov(rbx, rdi).unwrap();
        a.lea(rsp, ptr(rsp + 8 - STACK as i32 + leave as i32))
            .unwrap();
        a.mov(rax, qword_ptr(rbx + F_SERVICES)).unwrap();
        a.mov(rdi, qword_ptr(rax + S_CTX)).unwrap();
        a.mov(rsi, qword_ptr(rbx + F_INPUT)).unwrap();
        a.mov(rdx, qword_ptr(rbx + F_INPUT_LEN)).unwrap();
        a.call(qword_ptr(rax + S_LOG)).unwrap();
        a.ud2().unwrap(); // if the service fitted: #UD here (no way back)
                          // 2: echo.
        a.set_label(&mut echo).unwrap();
        a.mov(rcx, qword_ptr(rdi + F_INPUT_LEN)).unwrap();
        a.mov(qword_ptr(rdi + F_OUTPUT_LEN), rcx).unwrap();
        a.mov(rsi, qword_ptr(rdi + F_INPUT)).unwrap();
        a.mov(rdi, qword_ptr(rdi + F_OUTPUT)).unwrap();
        a.rep().movsb().unwrap();
        a.xor(eax, eax).unwrap();
        a.ret().unwrap();
        // 3: log(input), stack untouched.
        a.set_label(&mut log).unwrap();
        a.push(rbx).unwrap();
        a.mov(rbx, rdi).unwrap();
        a.mov(rax, qword_ptr(rbx + F_SERVICES)).unwrap();
        a.mov(rdi, qword_ptr(rax + S_CTX)).unwrap();
        a.mov(rsi, qword_ptr(rbx + F_INPUT)).unwrap();
        a.mov(rdx, qword_ptr(rbx + F_INPUT_LEN)).unwrap();
        a.call(qword_ptr(rax + S_LOG)).unwrap();
        a.xor(eax, eax).unwrap();
        a.pop(rbx).unwrap();
        a.ret().unwrap();
        let r = a
            .assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .unwrap();
        let echo_ip = r.label_ip(&echo).unwrap();
        let log_ip = r.label_ip(&log).unwrap();
        let code = r.inner.code_buffer;
        let agent = |id: u32, entry: u64| AgentRecord {
            id,
            mode: Mode::Exclusive,
            flags: 0,
            max_input: 256,
            max_output: 256,
            entry,
            name: encode_padded::<32>(&format!("stack-{id}")).unwrap(),
        };
        ImageBuilder {
            manifest: ManifestHeader {
                agent_count: 0,
                flags: 0,
                stack_size: STACK,
                heap_size: 0,
                max_input: 256,
                max_output: 256,
                mode: Mode::Exclusive,
                required_services: 0,
                package: encode_padded::<32>("stack-in-service").unwrap(),
                version: encode_padded::<16>("0.1.0").unwrap(),
            },
            agents: vec![agent(1, 0), agent(2, echo_ip), agent(3, log_ip)],
            segments: vec![SegmentSpec {
                vaddr: 0,
                mem_size: 0x1000,
                perms: PERM_R | PERM_X,
                data: code,
            }],
            relocations: vec![],
            load_size: 0x1000,
        }
        .build()
        .unwrap()
    }

    #[test]
    fn stack_exhausted_inside_a_service() {
        let mut overflowed_in_service = 0;
        for leave in [16u32, 64, 256, 1024] {
            let mut reg = registry();
            reg.load(&image(leave), &dev_options()).unwrap();
            for round in 0..2 {
                let (r, _) = call(&mut reg, 1, b"a log line from the edge of the stack");
                let f = r.fault.expect("the call faulted");
                match r.status {
                    Err(Error::StackOverflow) => {
                        assert_eq!(f.addr_region, Some(RegionKind::StackGuard));
                        assert_eq!(f.rip_offset, None, "faulted in runtime code");
                        overflowed_in_service += 1;
                    }
                    // The service fitted in `leave` bytes and returned to
                    // the agent's ud2.
                    Err(Error::Fault) if leave > 64 => assert_eq!(f.info.vector, 6),
                    other => panic!("leave {leave}: {other:?} {f:?}"),
                }
                // The runtime is not stuck (no lock left held): a normal
                // call and a normal log work.
                let (r, out) = call(&mut reg, 2, b"echo");
                assert_eq!((r.status, out.as_slice()), (Ok(()), &b"echo"[..]));
                let msg = format!("log after round {round}");
                assert_eq!(call(&mut reg, 3, msg.as_bytes()).0.status, Ok(()));
                let logs = reg.platform().take_logs();
                assert_eq!(logs.last().map(|l| l.1.as_str()), Some(msg.as_str()));
            }
        }
        assert!(
            overflowed_in_service >= 4,
            "16 and 64 bytes are too few for any service"
        );
    }
}
