//! A hostile agent attacks the loader core's services with pointers that are
//! not its own: into another agent's zone, into the runner's memory, null,
//! guard pages, its own code, ranges that wrap around or run past its zone,
//! and with call tokens it forged. Every service must refuse (or, for a
//! forged token, find no call) without touching the target; the victims'
//! memory is compared before and after.
//!
//! The hostile agent ("probe", id 900) is hand-assembled: its input names a
//! service, the arguments, and it returns the service's status as 8 output
//! bytes. The guest runs the same attacks with `examples/hostile`
//! (tetd-kernel/module/tests/attack.sh).

mod common;

use common::*;
use iced_x86::code_asm::*;
use tetd::abi::{Error, Mode, AGENT_FLAG_ADMIN};
use tetd::image::{encode_padded, AgentRecord, ImageBuilder, ManifestHeader, SegmentSpec};
use tetd::image::{PERM_R, PERM_W, PERM_X};
use tetd_kernel::layout::{Protection, ZoneLayout};
use tetd_kernel::{CallOptions, Registry};

const PROBE: u32 = 900;
const PROBE_ADMIN: u32 = 901;

/// Probe operations (input word 0).
mod op {
    pub const LOG: u64 = 0;
    pub const RANDOM: u64 = 1;
    pub const ADMIN: u64 = 2;
    pub const REGISTER: u64 = 3;
    /// random through a forged context token (input word 3).
    pub const RANDOM_AS: u64 = 4;
    /// Output the agent's own token.
    pub const TOKEN: u64 = 5;
}

/// The probe image: the probe (plain and admin) and 4 KiB of RW data.
fn probe_image() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut ops: Vec<CodeLabel> = (0..6).map(|_| a.create_label()).collect();
    let mut done = a.create_label();
    let mut bad = a.create_label();
    a.push(rbx).unwrap();
    a.push(r12).unwrap();
    a.push(r13).unwrap(); // 3 pushes: the stack is 16-byte aligned for calls
    a.mov(rbx, rdi).unwrap();
    a.mov(r12, qword_ptr(rbx + F_INPUT)).unwrap();
    a.mov(r13, qword_ptr(rbx + F_SERVICES)).unwrap();
    a.mov(rdi, qword_ptr(r13 + S_CTX)).unwrap();
    a.mov(rcx, qword_ptr(r12)).unwrap();
    for (i, l) in ops.iter().enumerate() {
        a.cmp(rcx, i as i32).unwrap();
        a.je(*l).unwrap();
    }
    a.jmp(bad).unwrap();
    // log(ctx, ptr, len)
    a.set_label(&mut ops[0]).unwrap();
    a.mov(rsi, qword_ptr(r12 + 8)).unwrap();
    a.mov(rdx, qword_ptr(r12 + 16)).unwrap();
    a.call(qword_ptr(r13 + S_LOG)).unwrap();
    a.xor(eax, eax).unwrap();
    a.jmp(done).unwrap();
    // random(ctx, ptr, len)
    a.set_label(&mut ops[1]).unwrap();
    a.mov(rsi, qword_ptr(r12 + 8)).unwrap();
    a.mov(rdx, qword_ptr(r12 + 16)).unwrap();
    a.call(qword_ptr(r13 + S_RANDOM)).unwrap();
    a.jmp(done).unwrap();
    // admin(ctx, op = word 3, 0, out = ptr, cap = len, out_len = word 4)
    a.set_label(&mut ops[2]).unwrap();
    a.mov(esi, dword_ptr(r12 + 24)).unwrap();
    a.xor(edx, edx).unwrap();
    a.mov(rcx, qword_ptr(r12 + 8)).unwrap();
    a.mov(r8, qword_ptr(r12 + 16)).unwrap();
    a.mov(r9, qword_ptr(r12 + 32)).unwrap();
    a.call(qword_ptr(r13 + S_ADMIN)).unwrap();
    a.jmp(done).unwrap();
    // register_entry(ctx, id = word 3, name = ptr, name_len = len, entry = word 4)
    a.set_label(&mut ops[3]).unwrap();
    a.mov(esi, dword_ptr(r12 + 24)).unwrap();
    a.mov(rdx, qword_ptr(r12 + 8)).unwrap();
    a.mov(rcx, qword_ptr(r12 + 16)).unwrap();
    a.mov(r8, qword_ptr(r12 + 32)).unwrap();
    a.call(qword_ptr(r13 + S_REGISTER)).unwrap();
    a.jmp(done).unwrap();
    // random(forged ctx = word 3, ptr, len)
    a.set_label(&mut ops[4]).unwrap();
    a.mov(rdi, qword_ptr(r12 + 24)).unwrap();
    a.mov(rsi, qword_ptr(r12 + 8)).unwrap();
    a.mov(rdx, qword_ptr(r12 + 16)).unwrap();
    a.call(qword_ptr(r13 + S_RANDOM)).unwrap();
    a.jmp(done).unwrap();
    // own token
    a.set_label(&mut ops[5]).unwrap();
    a.mov(rax, rdi).unwrap();
    a.mov(rdx, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.mov(qword_ptr(rdx), rax).unwrap();
    a.mov(qword_ptr(rbx + F_OUTPUT_LEN), 8).unwrap();
    a.xor(eax, eax).unwrap();
    a.pop(r13).unwrap();
    a.pop(r12).unwrap();
    a.pop(rbx).unwrap();
    a.ret().unwrap();
    a.set_label(&mut bad).unwrap();
    a.mov(eax, u32::MAX).unwrap();
    // output = status (eax, zero-extended)
    a.set_label(&mut done).unwrap();
    a.mov(eax, eax).unwrap();
    a.mov(rdx, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.mov(qword_ptr(rdx), rax).unwrap();
    a.mov(qword_ptr(rbx + F_OUTPUT_LEN), 8).unwrap();
    a.xor(eax, eax).unwrap();
    a.pop(r13).unwrap();
    a.pop(r12).unwrap();
    a.pop(rbx).unwrap();
    a.ret().unwrap();
    let code = a.assemble(0).unwrap();
    let agent = |id: u32, flags: u32| AgentRecord {
        id,
        mode: Mode::Exclusive,
        flags,
        max_input: 64,
        max_output: 4096,
        entry: 0,
        name: encode_padded::<32>(&format!("probe-{id}")).unwrap(),
    };
    ImageBuilder {
        manifest: ManifestHeader {
            agent_count: 0,
            flags: 0,
            stack_size: 0x4000,
            heap_size: 0x1000,
            max_input: 64,
            max_output: 4096,
            mode: Mode::Exclusive,
            required_services: 0,
            package: encode_padded::<32>("hostile-probe").unwrap(),
            version: encode_padded::<16>("0.1.0").unwrap(),
        },
        agents: vec![agent(PROBE, 0), agent(PROBE_ADMIN, AGENT_FLAG_ADMIN)],
        segments: vec![
            SegmentSpec {
                vaddr: 0,
                mem_size: 0x1000,
                perms: PERM_R | PERM_X,
                data: code,
            },
            SegmentSpec {
                vaddr: 0x1000,
                mem_size: 0x1000,
                perms: PERM_R | PERM_W,
                data: b"probe-name".to_vec(),
            },
        ],
        relocations: vec![],
        load_size: 0x2000,
    }
    .build()
    .unwrap()
}

fn input(words: [u64; 5]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Runs the probe; returns the service status it saw.
fn probe(reg: &mut Reg, agent: u32, words: [u64; 5]) -> u64 {
    let (r, out) = call(reg, agent, &input(words));
    assert_eq!(r.status, Ok(()), "probe {words:x?}: {r:?}");
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

fn code(e: Error) -> u64 {
    e.code() as u64
}

/// What the runner holds that no agent may read or write.
static RUNNER_SECRET: [u8; 64] =
    *b"runner secret: the services must never copy this to an agent!!!!";
static mut RUNNER_TARGET: [u8; 64] = [0x11; 64];

struct Setup {
    reg: Box<Reg>,
    /// The victim image's zone (view = agent address in the simulator) and
    /// layout.
    victim: (u64, usize, ZoneLayout),
    /// The probe's zone base and layout.
    own: (u64, ZoneLayout),
}

fn setup() -> Setup {
    let mut reg = registry();
    let v = reg.load(&image(), &dev_options()).unwrap();
    let p = reg.load(&probe_image(), &dev_options()).unwrap();
    let vi = reg.image(v).unwrap();
    let victim = (vi.zone().base, vi.zone().len, *vi.layout());
    let pi = reg.image(p).unwrap();
    let own = (pi.zone().base, *pi.layout());
    Setup { reg, victim, own }
}

fn snapshot(base: u64, len: usize, layout: &ZoneLayout) -> Vec<(u64, Vec<u8>)> {
    // Every readable region of the zone, as the core sees it.
    let mut out = Vec::new();
    layout
        .for_each_region(|r| {
            if r.prot != Protection::None {
                let (off, n) = (r.span.offset, r.span.len);
                assert!(off + n <= len as u64);
                // SAFETY: a readable region of a loaded zone (view == base
                // in the simulator).
                let bytes =
                    unsafe { std::slice::from_raw_parts((base + off) as *const u8, n as usize) };
                out.push((off, bytes.to_vec()));
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    out
}

#[test]
fn services_refuse_foreign_pointers() {
    let Setup {
        mut reg,
        victim,
        own,
    } = setup();
    let (vbase, vlen, vlayout) = victim;
    let (obase, olayout) = own;
    let before = snapshot(vbase, vlen, &vlayout);
    let secret = RUNNER_SECRET.as_ptr() as u64;
    let target = std::ptr::addr_of_mut!(RUNNER_TARGET) as u64;
    let own_heap = obase + olayout.heap.offset;
    let own_out = obase + olayout.output.offset;
    let own_stack_guard = obase + olayout.stack_guard.offset;
    let own_end = obase + olayout.total();
    let vdata = vbase + DATA;
    let vheap = vbase + vlayout.heap.offset;
    let vframe = vbase + vlayout.frame.offset;
    let bad_ptrs: [(u64, u64, &str); 12] = [
        (vdata, 16, "victim's data segment"),
        (vheap, 8, "victim's heap"),
        (vframe, 64, "victim's call frame"),
        (vbase, 16, "victim's code"),
        (secret, 16, "runner memory"),
        (target, 16, "runner memory (writable)"),
        (0, 16, "null"),
        (0x1000, 16, "low address"),
        (own_stack_guard, 8, "own stack guard page"),
        (own_end - 8, 16, "runs past its own zone"),
        (own_heap, u64::MAX - 0x800, "wraps around"),
        (own_heap, 1 << 40, "huge length"),
    ];
    for (ptr, len, what) in bad_ptrs {
        assert_eq!(
            probe(&mut reg, PROBE, [op::RANDOM, ptr, len, 0, 0]),
            code(Error::InvalidInput),
            "random into {what}"
        );
        // The length attacks start in its own heap: log (which cuts the
        // length to 1024) and a 16-byte name would be legitimate there.
        let foreign_ptr = !matches!(what, "wraps around" | "huge length");
        if foreign_ptr {
            assert_eq!(probe(&mut reg, PROBE, [op::LOG, ptr, len.min(64), 0, 0]), 0);
            assert!(reg.platform().take_logs().is_empty(), "log read {what}");
        } else {
            assert_eq!(probe(&mut reg, PROBE, [op::LOG, ptr, len, 0, 0]), 0);
            assert_eq!(reg.platform().take_logs().len(), 1, "cut to 1024 bytes");
        }
        assert_eq!(
            probe(&mut reg, PROBE_ADMIN, [op::ADMIN, ptr, len, 1, 0]),
            code(Error::InvalidInput),
            "admin list into {what}"
        );
        if ptr != 0 && foreign_ptr {
            // (a null out_len means "do not report the length")
            assert_eq!(
                probe(&mut reg, PROBE_ADMIN, [op::ADMIN, own_out, 4096, 1, ptr]),
                code(Error::InvalidInput),
                "admin out_len into {what}"
            );
        }
        assert_eq!(
            probe(&mut reg, PROBE, [op::REGISTER, ptr, len, 77, obase]),
            code(Error::InvalidInput),
            "register_entry name in {what}"
        );
        if foreign_ptr {
            assert_eq!(
                probe(&mut reg, PROBE, [op::REGISTER, ptr, 8, 77, obase]),
                code(Error::InvalidInput),
                "register_entry 8-byte name in {what}"
            );
        }
    }
    // Own memory: writing its own code through a service is refused too;
    // a readable own range is fine for log, an empty range needs no pointer.
    assert_eq!(
        probe(&mut reg, PROBE, [op::RANDOM, obase, 8, 0, 0]),
        code(Error::InvalidInput),
        "random into its own code"
    );
    assert_eq!(probe(&mut reg, PROBE, [op::RANDOM, secret, 0, 0, 0]), 0);
    assert_eq!(probe(&mut reg, PROBE, [op::RANDOM, own_heap, 8, 0, 0]), 0);
    assert_eq!(
        probe(&mut reg, PROBE, [op::LOG, obase + 0x1000, 10, 0, 0]),
        0
    );
    assert_eq!(
        reg.platform().take_logs(),
        [(PROBE, "probe-name".to_string())]
    );
    // Entry points outside its zone or in a non-executable segment.
    let name = obase + 0x1000;
    for (entry, what) in [
        (vbase, "victim's code"),
        (secret, "runner memory"),
        (obase + 0x1000, "own data segment"),
        (own_heap, "own heap"),
    ] {
        assert_eq!(
            probe(&mut reg, PROBE, [op::REGISTER, name, 10, 77, entry]),
            code(Error::BadEntry),
            "entry in {what}"
        );
    }
    assert!(reg.agent(77).is_none());
    // Admin operations need the admin flag.
    assert_eq!(
        probe(&mut reg, PROBE, [op::ADMIN, own_out, 4096, 1, 0]),
        code(Error::Denied)
    );
    // Nothing of the victim or the runner changed, and the victim works.
    assert_eq!(snapshot(vbase, vlen, &vlayout), before);
    // SAFETY: plain read of a static no agent could write (checked here).
    assert_eq!(
        unsafe { std::ptr::read_volatile(target as *const [u8; 64]) },
        [0x11; 64]
    );
    let (r, out) = call(&mut reg, ids::ECHO, b"victim fine");
    assert_eq!((r.status, out.as_slice()), (Ok(()), &b"victim fine"[..]));
}

/// A context token names a call in progress; an agent that forges one
/// (its own token plus or minus anything, the tokens of calls that ended)
/// reaches nothing: the services answer `BadRequest` and touch nothing.
#[test]
fn forged_tokens_find_no_call() {
    let Setup { mut reg, own, .. } = setup();
    let own_heap = own.0 + own.1.heap.offset;
    let t1 = probe(&mut reg, PROBE, [op::TOKEN, 0, 0, 0, 0]);
    let t2 = probe(&mut reg, PROBE, [op::TOKEN, 0, 0, 0, 0]);
    assert_ne!(t1, t2, "each call has its own token");
    for forged in [t1, t2, t2 + 64, t2 + 1, t2 ^ 1, 0, u64::MAX, own_heap] {
        assert_eq!(
            probe(&mut reg, PROBE, [op::RANDOM_AS, own_heap, 8, forged, 0]),
            code(Error::BadRequest),
            "token {forged:#x}"
        );
    }
}

/// Two registries on two threads: while a victim call runs (its agent spins
/// until the watchdog stops it), a hostile agent on the other thread tries
/// to guess the victim call's token and make the random service write into
/// the victim's heap in the victim's name. Tokens carry random bits, so the
/// guesses (every slot, the generations around its own) find nothing.
#[test]
fn concurrent_call_tokens_cannot_be_guessed() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel();
    let victim = std::thread::spawn(move || {
        let mut reg = registry();
        reg.load(&image(), &dev_options()).unwrap();
        let img = reg.image_of(ids::HANG).unwrap();
        let heap = img.zone().base + img.layout().heap.offset;
        tx.send(heap).unwrap();
        let mut out = [0u8; 16];
        let r = reg.call(
            ids::HANG,
            b"",
            &mut out,
            &CallOptions {
                mode: None,
                timeout_ns: 1_500_000_000,
            },
        );
        assert_eq!(r.status, Err(Error::Timeout));
        // SAFETY: the heap is mapped RW while the image is loaded.
        unsafe { std::ptr::read_volatile(heap as *const u64) }
    });
    let heap = rx.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100)); // victim inside its call
    let mut reg: Box<Registry<_>> = registry();
    reg.load(&probe_image(), &dev_options()).unwrap();
    let mine = probe(&mut reg, PROBE, [op::TOKEN, 0, 0, 0, 0]);
    let mut hits = 0;
    let gen = mine >> 6;
    for g in gen.saturating_sub(64)..gen + 64 {
        for slot in 0..64u64 {
            let forged = (g << 6) | slot;
            let st = probe(&mut reg, PROBE, [op::RANDOM_AS, heap, 8, forged, 0]);
            if st != code(Error::BadRequest) {
                hits += 1;
            }
        }
    }
    assert!(
        !victim.is_finished(),
        "the guesses ran while the victim's call was in progress"
    );
    assert_eq!(hits, 0, "a guessed token reached the victim's call");
    assert_eq!(victim.join().unwrap(), 0, "victim heap untouched");
}
