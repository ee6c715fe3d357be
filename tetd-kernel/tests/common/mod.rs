//! Test images made of small hand-assembled x86-64 agents (iced-x86's code
//! assembler), wrapped by `tetd::image::ImageBuilder`. They exercise the
//! loader, relocation, the call ABI, the services and every failure path
//! without needing `tetd-pack build`.
#![allow(dead_code)]

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand, Register};
use tetd::abi::{CallFrame, Error, Mode, Services, AGENT_FLAG_ADMIN};
use tetd::image::{
    encode_padded, AgentRecord, ImageBuilder, ManifestHeader, SegmentSpec, PERM_R, PERM_W, PERM_X,
};
use tetd::verify::{Policy, Signers, UnsignedImages};
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, CallReport, LoadOptions, Registry};

// CallFrame offsets.
pub const F_INPUT: i64 = 8;
pub const F_INPUT_LEN: i64 = 16;
pub const F_OUTPUT: i64 = 24;
pub const F_OUTPUT_CAP: i64 = 32;
pub const F_OUTPUT_LEN: i64 = 40;
pub const F_SERVICES: i64 = 48;
pub const F_HEAP: i64 = 56;
pub const F_FLAGS: i64 = 72;
// Services offsets.
pub const S_CTX: i64 = 8;
pub const S_LOG: i64 = 16;
pub const S_RANDOM: i64 = 24;
pub const S_TIME: i64 = 32;
pub const S_ABORT: i64 = 40;
pub const S_REGISTER: i64 = 48;
pub const S_ADMIN: i64 = 56;

#[test]
fn offsets_match_abi() {
    use core::mem::offset_of;
    assert_eq!(offset_of!(CallFrame, input) as i64, F_INPUT);
    assert_eq!(offset_of!(CallFrame, input_len) as i64, F_INPUT_LEN);
    assert_eq!(offset_of!(CallFrame, output) as i64, F_OUTPUT);
    assert_eq!(offset_of!(CallFrame, output_cap) as i64, F_OUTPUT_CAP);
    assert_eq!(offset_of!(CallFrame, output_len) as i64, F_OUTPUT_LEN);
    assert_eq!(offset_of!(CallFrame, services) as i64, F_SERVICES);
    assert_eq!(offset_of!(CallFrame, heap) as i64, F_HEAP);
    assert_eq!(offset_of!(CallFrame, flags) as i64, F_FLAGS);
    assert_eq!(offset_of!(Services, ctx) as i64, S_CTX);
    assert_eq!(offset_of!(Services, log) as i64, S_LOG);
    assert_eq!(offset_of!(Services, random) as i64, S_RANDOM);
    assert_eq!(offset_of!(Services, time_ns) as i64, S_TIME);
    assert_eq!(offset_of!(Services, abort) as i64, S_ABORT);
    assert_eq!(offset_of!(Services, register_entry) as i64, S_REGISTER);
    assert_eq!(offset_of!(Services, admin) as i64, S_ADMIN);
}

/// Image addresses of the test image.
pub const CODE: u64 = 0x0000;
pub const CODE_MAX: u64 = 0x4000;
pub const RODATA: u64 = 0x4000;
pub const DATA: u64 = 0x5000;
pub const LOAD_SIZE: u64 = 0x6000;

/// Read-only data: the string the relocated pointer targets, and a name.
pub const RELOC_STRING: &[u8] = b"relocated!";
pub const RO_NAME_OFF: u64 = 0x20; // "dyn-echo"
pub const DYN_NAME: &[u8] = b"dyn-echo";

/// Agent ids of the test image.
pub mod ids {
    pub const ECHO: u32 = 1;
    pub const RELOC: u32 = 2;
    pub const PANIC: u32 = 3;
    pub const WRITE_CODE: u32 = 4;
    pub const HANG: u32 = 5;
    pub const STACK_OVERFLOW: u32 = 6;
    pub const RANDOM: u32 = 7;
    pub const LOG: u32 = 8;
    pub const REGISTER: u32 = 9;
    pub const ADMIN_LIST: u32 = 10;
    pub const BAD_POINTERS: u32 = 11;
    pub const COUNTER: u32 = 12;
    pub const UD2: u32 = 13;
    pub const DIV0: u32 = 14;
    pub const BOGUS_ABORT: u32 = 15;
    pub const OVERSIZED_OUTPUT: u32 = 16;
    pub const FLAGS: u32 = 17;
    pub const READ_GUARD: u32 = 18;
    pub const ADMIN_DISABLE: u32 = 19;
    pub const TIME_LOOP: u32 = 20;
    pub const ALL: [u32; 20] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ];
    /// Id that `REGISTER` registers at run time.
    pub const DYNAMIC: u32 = 100;
}

fn rip_rel(target: u64) -> MemoryOperand {
    MemoryOperand::with_base_displ(Register::RIP, target as i64)
}

/// `lea reg, [rip -> target]`.
fn lea_abs(a: &mut CodeAssembler, reg: Register, target: u64) {
    a.add_instruction(Instruction::with2(Code::Lea_r64_m, reg, rip_rel(target)).unwrap())
        .unwrap();
}

/// `mov reg, qword [rip -> target]`.
fn load_abs(a: &mut CodeAssembler, reg: Register, target: u64) {
    a.add_instruction(Instruction::with2(Code::Mov_r64_rm64, reg, rip_rel(target)).unwrap())
        .unwrap();
}

/// Prologue of an agent that calls services: keeps the frame in rbx,
/// aligns the stack.
fn prologue(a: &mut CodeAssembler) {
    a.push(rbx).unwrap();
    a.mov(rbx, rdi).unwrap();
}

/// rax = services, rdi = ctx.
fn services_ctx(a: &mut CodeAssembler) {
    a.mov(rax, qword_ptr(rbx + F_SERVICES)).unwrap();
    a.mov(rdi, qword_ptr(rax + S_CTX)).unwrap();
}

fn epilogue(a: &mut CodeAssembler) {
    a.pop(rbx).unwrap();
    a.ret().unwrap();
}

/// Assemble every test agent; returns code bytes, (id, entry offset) and
/// the offset of the helper function the relocated pointer targets.
pub fn assemble() -> (Vec<u8>, Vec<(u32, u64)>, u64) {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut labels = Vec::new();
    let mut entry = |a: &mut CodeAssembler, id: u32| {
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        labels.push((id, l));
        l
    };

    // 1 echo: copy input to output.
    let echo = entry(&mut a, ids::ECHO);
    let mut too_large = a.create_label();
    a.mov(rcx, qword_ptr(rdi + F_INPUT_LEN)).unwrap();
    a.cmp(rcx, qword_ptr(rdi + F_OUTPUT_CAP)).unwrap();
    a.ja(too_large).unwrap();
    a.mov(qword_ptr(rdi + F_OUTPUT_LEN), rcx).unwrap();
    a.mov(rsi, qword_ptr(rdi + F_INPUT)).unwrap();
    a.mov(rdi, qword_ptr(rdi + F_OUTPUT)).unwrap();
    a.rep().movsb().unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();
    a.set_label(&mut too_large).unwrap();
    a.mov(eax, Error::OutputTooLarge.code()).unwrap();
    a.ret().unwrap();

    // A helper reached through a relocated function pointer: eax = 0x2a.
    let mut helper = a.create_label();
    a.set_label(&mut helper).unwrap();
    a.mov(eax, 0x2a).unwrap();
    a.ret().unwrap();

    // 2 reloc: output = 10 bytes at *DATA[0] ‖ DATA[0] ‖ DATA[8] ‖ helper()
    // (DATA[0] -> RODATA string, DATA[8] -> helper, both relocated).
    entry(&mut a, ids::RELOC);
    prologue(&mut a);
    a.mov(rdi, qword_ptr(rbx + F_OUTPUT)).unwrap();
    load_abs(&mut a, Register::RSI, DATA);
    a.mov(ecx, RELOC_STRING.len() as u32).unwrap();
    a.rep().movsb().unwrap();
    load_abs(&mut a, Register::RAX, DATA);
    a.mov(qword_ptr(rdi), rax).unwrap();
    load_abs(&mut a, Register::RAX, DATA + 8);
    a.mov(qword_ptr(rdi + 8), rax).unwrap();
    a.call(qword_ptr(rdi + 8)).unwrap();
    a.mov(rdi, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.mov(dword_ptr(rdi + RELOC_STRING.len() as i64 + 16), eax)
        .unwrap();
    a.mov(
        qword_ptr(rbx + F_OUTPUT_LEN),
        (RELOC_STRING.len() + 20) as i32,
    )
    .unwrap();
    a.xor(eax, eax).unwrap();
    epilogue(&mut a);

    // 3 panic: services.abort(ctx, Panicked).
    entry(&mut a, ids::PANIC);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(esi, Error::Panicked.code()).unwrap();
    a.call(qword_ptr(rax + S_ABORT)).unwrap();
    a.ud2().unwrap();

    // 4 write to its own code.
    let wc = entry(&mut a, ids::WRITE_CODE);
    a.lea(rax, ptr(wc)).unwrap();
    a.mov(byte_ptr(rax), 0x90).unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();

    // 5 hang.
    let hang = entry(&mut a, ids::HANG);
    a.jmp(hang).unwrap();

    // 6 stack overflow: push forever.
    let so = entry(&mut a, ids::STACK_OVERFLOW);
    a.push(rax).unwrap();
    a.jmp(so).unwrap();

    // 7 random: services.random(ctx, output, 32); output_len = 32.
    entry(&mut a, ids::RANDOM);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(rsi, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.mov(edx, 32).unwrap();
    a.call(qword_ptr(rax + S_RANDOM)).unwrap();
    a.mov(qword_ptr(rbx + F_OUTPUT_LEN), 32).unwrap();
    epilogue(&mut a); // eax = random's status

    // 8 log: services.log(ctx, input, input_len).
    entry(&mut a, ids::LOG);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(rsi, qword_ptr(rbx + F_INPUT)).unwrap();
    a.mov(rdx, qword_ptr(rbx + F_INPUT_LEN)).unwrap();
    a.call(qword_ptr(rax + S_LOG)).unwrap();
    a.xor(eax, eax).unwrap();
    epilogue(&mut a);

    // 9 register: services.register_entry(ctx, DYNAMIC, "dyn-echo", 8, echo).
    entry(&mut a, ids::REGISTER);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(esi, ids::DYNAMIC).unwrap();
    lea_abs(&mut a, Register::RDX, RODATA + RO_NAME_OFF);
    a.mov(ecx, DYN_NAME.len() as u32).unwrap();
    a.lea(r8, ptr(echo)).unwrap();
    a.call(qword_ptr(rax + S_REGISTER)).unwrap();
    epilogue(&mut a);

    // 10 admin list: services.admin(ctx, List, 0, output, output_cap,
    //    &frame.output_len).
    entry(&mut a, ids::ADMIN_LIST);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(esi, 1).unwrap();
    a.xor(edx, edx).unwrap();
    a.mov(rcx, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.mov(r8, qword_ptr(rbx + F_OUTPUT_CAP)).unwrap();
    a.lea(r9, ptr(rbx + F_OUTPUT_LEN)).unwrap();
    a.call(qword_ptr(rax + S_ADMIN)).unwrap();
    epilogue(&mut a);

    // 11 bad pointers: log from an address outside the zone, then random
    //    into its own code; returns random's status (must be InvalidInput).
    entry(&mut a, ids::BAD_POINTERS);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(esi, 0x1000).unwrap();
    a.mov(edx, 16).unwrap();
    a.call(qword_ptr(rax + S_LOG)).unwrap();
    services_ctx(&mut a);
    lea_abs(&mut a, Register::RSI, CODE);
    a.mov(edx, 16).unwrap();
    a.call(qword_ptr(rax + S_RANDOM)).unwrap();
    epilogue(&mut a);

    // 12 counter: ++heap[0]; output it (8 bytes).
    entry(&mut a, ids::COUNTER);
    a.mov(rax, qword_ptr(rdi + F_HEAP)).unwrap();
    a.inc(qword_ptr(rax)).unwrap();
    a.mov(rcx, qword_ptr(rax)).unwrap();
    a.mov(rdx, qword_ptr(rdi + F_OUTPUT)).unwrap();
    a.mov(qword_ptr(rdx), rcx).unwrap();
    a.mov(qword_ptr(rdi + F_OUTPUT_LEN), 8).unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();

    // 13 ud2.
    entry(&mut a, ids::UD2);
    a.ud2().unwrap();

    // 14 divide by zero.
    entry(&mut a, ids::DIV0);
    a.xor(ecx, ecx).unwrap();
    a.mov(eax, 1).unwrap();
    a.xor(edx, edx).unwrap();
    a.div(ecx).unwrap();
    a.ret().unwrap();

    // 15 abort with a forged ctx.
    entry(&mut a, ids::BOGUS_ABORT);
    prologue(&mut a);
    a.mov(rax, qword_ptr(rbx + F_SERVICES)).unwrap();
    a.mov(edi, 0x1234).unwrap();
    a.mov(esi, Error::Panicked.code()).unwrap();
    a.call(qword_ptr(rax + S_ABORT)).unwrap();
    epilogue(&mut a);

    // 16 claims more output than the buffer holds.
    entry(&mut a, ids::OVERSIZED_OUTPUT);
    a.mov(rax, qword_ptr(rdi + F_OUTPUT_CAP)).unwrap();
    a.inc(rax).unwrap();
    a.mov(qword_ptr(rdi + F_OUTPUT_LEN), rax).unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();

    // 17 flags: output = frame.flags (8 bytes).
    entry(&mut a, ids::FLAGS);
    a.mov(rax, qword_ptr(rdi + F_FLAGS)).unwrap();
    a.mov(rdx, qword_ptr(rdi + F_OUTPUT)).unwrap();
    a.mov(qword_ptr(rdx), rax).unwrap();
    a.mov(qword_ptr(rdi + F_OUTPUT_LEN), 8).unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();

    // 18 read the guard page after the image.
    entry(&mut a, ids::READ_GUARD);
    lea_abs(&mut a, Register::RAX, LOAD_SIZE);
    a.mov(rax, qword_ptr(rax)).unwrap();
    a.xor(eax, eax).unwrap();
    a.ret().unwrap();

    // 19 admin disable: services.admin(ctx, Disable, ECHO, output, 0, 0).
    entry(&mut a, ids::ADMIN_DISABLE);
    prologue(&mut a);
    services_ctx(&mut a);
    a.mov(esi, 2).unwrap();
    a.mov(edx, ids::ECHO).unwrap();
    a.mov(rcx, qword_ptr(rbx + F_OUTPUT)).unwrap();
    a.xor(r8d, r8d).unwrap();
    a.xor(r9d, r9d).unwrap();
    a.call(qword_ptr(rax + S_ADMIN)).unwrap();
    epilogue(&mut a);

    // 20 loop forever calling services.time_ns (the watchdog must still
    //    stop it, between service calls).
    entry(&mut a, ids::TIME_LOOP);
    prologue(&mut a);
    let mut again = a.create_label();
    a.set_label(&mut again).unwrap();
    services_ctx(&mut a);
    a.call(qword_ptr(rax + S_TIME)).unwrap();
    a.jmp(again).unwrap();

    let r = a
        .assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let entries = labels
        .iter()
        .map(|(id, l)| (*id, r.label_ip(l).unwrap()))
        .collect();
    let helper_ip = r.label_ip(&helper).unwrap();
    let code = r.inner.code_buffer;
    assert!((code.len() as u64) < CODE_MAX);
    (code, entries, helper_ip)
}

fn name(s: &str) -> [u8; 32] {
    encode_padded::<32>(s).unwrap()
}

/// Knobs for [`build_image`].
#[derive(Clone)]
pub struct Spec {
    pub ids: Vec<u32>,
    pub id_offset: u32,
    pub admin_ids: Vec<u32>,
    pub heap: u32,
    pub stack: u32,
    pub max_input: u32,
    pub max_output: u32,
    pub package: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            ids: ids::ALL.to_vec(),
            id_offset: 0,
            admin_ids: vec![ids::ADMIN_LIST, ids::ADMIN_DISABLE],
            heap: 0x2000,
            stack: 0x4000,
            max_input: 4096,
            max_output: 4096,
            package: "blobs",
        }
    }
}

/// The builder of the test image (unsigned).
pub fn builder(spec: &Spec) -> ImageBuilder {
    let (code, entries, helper) = assemble();
    let mut rodata = RELOC_STRING.to_vec();
    rodata.resize(RO_NAME_OFF as usize, 0);
    rodata.extend_from_slice(DYN_NAME);
    let mut data = Vec::new();
    data.extend_from_slice(&RODATA.to_le_bytes()); // -> "relocated!"
    data.extend_from_slice(&helper.to_le_bytes()); // -> helper()
    data.extend_from_slice(&0x1234u64.to_le_bytes()); // not relocated
    let agents = spec
        .ids
        .iter()
        .map(|&id| {
            let entry = entries.iter().find(|(i, _)| *i == id).unwrap().1;
            AgentRecord {
                id: id + spec.id_offset,
                mode: Mode::Exclusive,
                flags: if spec.admin_ids.contains(&id) {
                    AGENT_FLAG_ADMIN
                } else {
                    0
                },
                max_input: spec.max_input,
                max_output: spec.max_output,
                entry,
                name: name(&format!("blob-{id}")),
            }
        })
        .collect();
    ImageBuilder {
        manifest: ManifestHeader {
            agent_count: 0,
            flags: 0,
            stack_size: spec.stack,
            heap_size: spec.heap,
            max_input: spec.max_input,
            max_output: spec.max_output,
            mode: Mode::Exclusive,
            required_services: 0,
            package: name(spec.package),
            version: encode_padded::<16>("0.1.0").unwrap(),
        },
        agents,
        segments: vec![
            SegmentSpec {
                vaddr: CODE,
                mem_size: CODE_MAX,
                perms: PERM_R | PERM_X,
                data: code,
            },
            SegmentSpec {
                vaddr: RODATA,
                mem_size: 0x1000,
                perms: PERM_R,
                data: rodata,
            },
            SegmentSpec {
                vaddr: DATA,
                mem_size: 0x1000,
                perms: PERM_R | PERM_W,
                data,
            },
        ],
        relocations: vec![DATA as u32, DATA as u32 + 8],
        load_size: LOAD_SIZE,
    }
}

/// The test image with `spec` (unsigned).
pub fn build_image(spec: &Spec) -> Vec<u8> {
    builder(spec).build().unwrap()
}

/// The default test image.
pub fn image() -> Vec<u8> {
    build_image(&Spec::default())
}

/// Accept unsigned images (and admin agents in them).
pub fn dev_options() -> LoadOptions<'static> {
    LoadOptions {
        policy: Policy {
            signers: Signers::AnyKey,
            unsigned: UnsignedImages::Accept,
        },
        allow_untrusted_admin: true,
    }
}

pub type Reg = Registry<SimPlatform>;

/// A registry over a simulator that captures logs.
pub fn registry() -> Box<Reg> {
    Box::new(Registry::new(SimPlatform::new(LogTarget::Capture)))
}

/// Call and return (report, output bytes).
pub fn call(reg: &mut Reg, id: u32, input: &[u8]) -> (CallReport, Vec<u8>) {
    call_with(reg, id, input, &CallOptions::default())
}

pub fn call_with(
    reg: &mut Reg,
    id: u32,
    input: &[u8],
    opts: &CallOptions,
) -> (CallReport, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let r = reg.call(id, input, &mut out, opts);
    out.truncate(r.output_len);
    (r, out)
}
