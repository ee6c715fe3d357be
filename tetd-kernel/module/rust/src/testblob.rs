//! Hand-written machine-code agents for the `TEST` ioctl: they prove the call
//! mechanisms (exclusive and collaborative, services, fault containment)
//! without an image. Position-independent, no relocations: the assembler
//! resolves every reference inside a blob. Each follows the agent ABI
//! (`extern "C" fn(*mut CallFrame) -> u32`).
use core::mem::offset_of;

use tetd::abi::ioctl::{
    TEST_ABORT, TEST_COMPUTE, TEST_READ_KERNEL, TEST_READ_UNMAPPED, TEST_UD, TEST_WRITE_CODE,
};
use tetd::abi::{CallFrame, Services};

core::arch::global_asm!(
    ".pushsection .rodata.tetdg_blobs,\"a\",@progbits",
    // compute: log a line, output = input_u64 * 3 + 1
    ".globl tetdg_blob_compute", "tetdg_blob_compute:",
    "    push %rbx",
    "    mov %rdi, %rbx",
    "    mov {f_services}(%rbx), %rax",
    "    mov {s_ctx}(%rax), %rdi",
    "    lea .Ltetdg_msg(%rip), %rsi",
    "    mov $(.Ltetdg_msg_end - .Ltetdg_msg), %edx",
    "    call *{s_log}(%rax)",
    "    cmpq $8, {f_input_len}(%rbx)",
    "    jne .Ltetdg_bad_in",
    "    cmpq $8, {f_output_cap}(%rbx)",
    "    jb .Ltetdg_bad_out",
    "    mov {f_input}(%rbx), %rax",
    "    mov (%rax), %rax",
    "    lea 1(%rax,%rax,2), %rax",
    "    mov {f_output}(%rbx), %rcx",
    "    mov %rax, (%rcx)",
    "    movq $8, {f_output_len}(%rbx)",
    "    xor %eax, %eax",
    "    pop %rbx",
    "    ret",
    ".Ltetdg_bad_in:",
    "    mov ${e_input}, %eax",
    "    pop %rbx",
    "    ret",
    ".Ltetdg_bad_out:",
    "    mov ${e_output}, %eax",
    "    pop %rbx",
    "    ret",
    ".Ltetdg_msg: .ascii \"test blob: computing arg*3+1\"",
    ".Ltetdg_msg_end:",
    ".globl tetdg_blob_compute_end", "tetdg_blob_compute_end:",
    // ud: invalid opcode
    ".globl tetdg_blob_ud", "tetdg_blob_ud:",
    "    ud2",
    ".globl tetdg_blob_ud_end", "tetdg_blob_ud_end:",
    // write_code: store into its own (read-only) code
    ".globl tetdg_blob_wc", "tetdg_blob_wc:",
    ".Ltetdg_wc:",
    "    lea .Ltetdg_wc(%rip), %rax",
    "    movb $0xcc, (%rax)",
    "    xor %eax, %eax",
    "    ret",
    ".globl tetdg_blob_wc_end", "tetdg_blob_wc_end:",
    // read_unmapped: load from an address nobody maps
    ".globl tetdg_blob_ru", "tetdg_blob_ru:",
    "    movabs $0x00007ff000000000, %rax",
    "    mov (%rax), %rax",
    "    xor %eax, %eax",
    "    ret",
    ".globl tetdg_blob_ru_end", "tetdg_blob_ru_end:",
    // read_kernel: output = *(u64 *)input_u64 (a kernel address)
    ".globl tetdg_blob_rk", "tetdg_blob_rk:",
    "    mov {f_input}(%rdi), %rax",
    "    mov (%rax), %rax",
    "    mov (%rax), %rax",
    "    mov {f_output}(%rdi), %rcx",
    "    mov %rax, (%rcx)",
    "    movq $8, {f_output_len}(%rdi)",
    "    xor %eax, %eax",
    "    ret",
    ".globl tetdg_blob_rk_end", "tetdg_blob_rk_end:",
    // abort: services->abort(ctx, input_u64 as u32)
    ".globl tetdg_blob_abort", "tetdg_blob_abort:",
    "    push %rbx",
    "    mov {f_services}(%rdi), %rax",
    "    mov {f_input}(%rdi), %rsi",
    "    mov (%rsi), %esi",
    "    mov {s_ctx}(%rax), %rdi",
    "    call *{s_abort}(%rax)",
    "    ud2",
    ".globl tetdg_blob_abort_end", "tetdg_blob_abort_end:",
    ".popsection",
    f_input = const offset_of!(CallFrame, input),
    f_input_len = const offset_of!(CallFrame, input_len),
    f_output = const offset_of!(CallFrame, output),
    f_output_cap = const offset_of!(CallFrame, output_cap),
    f_output_len = const offset_of!(CallFrame, output_len),
    f_services = const offset_of!(CallFrame, services),
    s_ctx = const offset_of!(Services, ctx),
    s_log = const offset_of!(Services, log),
    s_abort = const offset_of!(Services, abort),
    e_input = const tetd::abi::Error::InvalidInput as u32,
    e_output = const tetd::abi::Error::OutputTooLarge as u32,
    options(att_syntax)
);

extern "C" {
    static tetdg_blob_compute: u8;
    static tetdg_blob_compute_end: u8;
    static tetdg_blob_ud: u8;
    static tetdg_blob_ud_end: u8;
    static tetdg_blob_wc: u8;
    static tetdg_blob_wc_end: u8;
    static tetdg_blob_ru: u8;
    static tetdg_blob_ru_end: u8;
    static tetdg_blob_rk: u8;
    static tetdg_blob_rk_end: u8;
    static tetdg_blob_abort: u8;
    static tetdg_blob_abort_end: u8;
}

fn span(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: both are labels of one blob in .rodata, end >= start.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// The blob of a `TEST_*` kind.
pub fn blob(kind: u32) -> Option<&'static [u8]> {
    use core::ptr::addr_of;
    {
        Some(match kind {
            TEST_COMPUTE => span(
                addr_of!(tetdg_blob_compute),
                addr_of!(tetdg_blob_compute_end),
            ),
            TEST_UD => span(addr_of!(tetdg_blob_ud), addr_of!(tetdg_blob_ud_end)),
            TEST_WRITE_CODE => span(addr_of!(tetdg_blob_wc), addr_of!(tetdg_blob_wc_end)),
            TEST_READ_UNMAPPED => span(addr_of!(tetdg_blob_ru), addr_of!(tetdg_blob_ru_end)),
            TEST_READ_KERNEL => span(addr_of!(tetdg_blob_rk), addr_of!(tetdg_blob_rk_end)),
            TEST_ABORT => span(addr_of!(tetdg_blob_abort), addr_of!(tetdg_blob_abort_end)),
            _ => return None,
        })
    }
}

/// Kinds that fault on purpose: refused in exclusive mode, where the agent
/// is kernel code and a fault would be a kernel oops.
pub fn faults_on_purpose(kind: u32) -> bool {
    matches!(kind, TEST_UD | TEST_WRITE_CODE | TEST_READ_UNMAPPED)
}
