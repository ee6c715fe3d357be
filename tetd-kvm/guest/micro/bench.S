/*
 * Bench micro guest for `tetd-vmm bench` (section kvm, tetd-kvm/src/bench/kvm.rs):
 * a static ELF "kernel" entered in 64-bit mode by the project's KVM VMM
 * (identity map 0..5 GiB, 2 MiB pages, boot GDT), that runs one hypercall
 * loop back to back so the host can time consecutive VM exits.
 *
 * Build: gcc -c bench.S && ld -Ttext=0x200000 -e _start --build-id=none
 *
 * Protocol with the host's bench handler:
 *   PARAMS  (leaf 0x4250) -> R11 = scenario | USER << 8 | TOUCH << 9,
 *                            R12 = iterations, R13 = zone pages
 *   NOP     (leaf 0x424e) answered by the bench handler at once: the bare
 *                          exit round trip (VMM exit + dispatch + re-entry)
 * Scenarios:
 *   1 NOP    N x NOP
 *   2 QUERY  N x AGENT_QUERY of an unknown agent (TETD-H's cheapest leaf)
 *   3 CALL   AGENT_ACCESS (agent 7, exclusive, R13 pages), then N x
 *            { VMM_ENTER; [TOUCH: write one word in every zone page];
 *            VMM_RESUME }, AGENT_DISABLE
 *   4 MMIO   N x read of MMIO_GPA, a zone-window page no slot backs: an
 *            MMIO exit the VMM answers with all-ones (the violation path)
 * USER: set the U bit in the identity map, load a GDT with ring-3 segments
 * and IRETQ to ring 3 (IOPL 3) before the loop. On KVM's PVM backend guest
 * kernel code is emulated instruction by instruction while guest user code
 * runs natively, so only a ring-3 loop measures the exit itself; but PVM
 * does not honour IOPL (port I/O from ring 3 ends the VM), so ring 3 is
 * used with scenario MMIO only.
 * Exit status (port write; in ring 3 the MMIO loop ends with a final
 * hypercall attempt, i.e. a shutdown the host expects): 0 done;
 * 2 AGENT_ACCESS, 3 VMM_ENTER, 4 VMM_RESUME, 5 AGENT_DISABLE failed.
 */
        .intel_syntax noprefix

#define VENDOR          0x54455444      /* tetd::abi::TETD_VMCALL_VENDOR */
#define HC_PORT         0x0e40          /* tetd::abi::SIM_HYPERCALL_PORT */
#define EXIT_PORT       0x0e44          /* tetd::abi::SIM_EXIT_PORT */
#define LEAF_PARAMS     0x4250          /* bench-only leaves (the bench handler) */
#define LEAF_NOP        0x424e
#define AGENT_ACCESS    1               /* tetd::abi::Leaf */
#define VMM_ENTER       2
#define VMM_RESUME      3
#define AGENT_DISABLE   4
#define AGENT_QUERY     8
#define AGENT           7
#define UNKNOWN_AGENT   999999
#define MMIO_GPA        0x10fff0000     /* last 64 KiB of the zone window: never a zone here */

        .macro  TCALL leaf, a0, a1, a2, a3
        mov     r10, VENDOR
        mov     r11, \leaf
        mov     r12, \a0
        mov     r13, \a1
        mov     r14, \a2
        mov     r15, \a3
        mov     dx, HC_PORT
        out     dx, al
        .endm

        .macro  EXIT code
        mov     al, \code
        mov     dx, EXIT_PORT
        out     dx, al
        .endm

        .text
        .globl  _start
_start:
        TCALL   LEAF_PARAMS, 0, 0, 0, 0
        mov     r8, r11                 /* scenario and flags */
        mov     rbx, r12                /* iterations */
        mov     rbp, r13                /* zone pages */
        test    r8, 0x100
        jz      loop_start

        /* ring 3: U bit on PML4[0], PDPT[0..4] and all their PD entries */
        mov     r9, 0x000ffffffffff000
        mov     rax, cr3
        and     rax, r9
        or      qword ptr [rax], 4
        mov     rcx, [rax]
        and     rcx, r9                 /* PDPT */
        xor     edx, edx
1:      or      qword ptr [rcx + rdx * 8], 4
        mov     rsi, [rcx + rdx * 8]
        and     rsi, r9                 /* PD of GiB rdx */
        xor     edi, edi
2:      or      qword ptr [rsi + rdi * 8], 4
        inc     edi
        cmp     edi, 512
        jb      2b
        inc     edx
        cmp     edx, 5
        jb      1b
        mov     cr3, rax                /* flush */
        lgdt    [rip + gdtr]
        push    0x3b                    /* SS: user data | RPL 3 */
        lea     rax, [rip + ustack_top]
        push    rax
        push    0x3002                  /* RFLAGS: IOPL 3, IF 0 */
        push    0x33                    /* CS: user code64 | RPL 3 */
        lea     rax, [rip + loop_start]
        push    rax
        iretq

loop_start:
        mov     rax, r8
        and     eax, 0xff
        cmp     eax, 1
        je      nop_loop
        cmp     eax, 2
        je      query_loop
        cmp     eax, 4
        je      mmio_loop
        jmp     call_scenario

mmio_loop:
        mov     rsi, MMIO_GPA
        test    rbx, rbx
        jz      done
1:      mov     rax, [rsi]
        dec     rbx
        jnz     1b
        jmp     done

nop_loop:
        test    rbx, rbx
        jz      done
1:      TCALL   LEAF_NOP, 0, 0, 0, 0
        dec     rbx
        jnz     1b
        jmp     done

query_loop:
        test    rbx, rbx
        jz      done
1:      TCALL   AGENT_QUERY, UNKNOWN_AGENT, 0, 0, 0
        dec     rbx
        jnz     1b
        jmp     done

call_scenario:
        TCALL   AGENT_ACCESS, AGENT, rbp, 0, 0  /* exclusive, no flags */
        test    r10, r10
        jnz     fail_access
        mov     rsi, r11                /* zone GPA */
        test    rbx, rbx
        jz      call_done
1:      TCALL   VMM_ENTER, AGENT, 0, 0, 0
        test    r10, r10
        jnz     fail_enter
        test    r8, 0x200
        jz      3f
        mov     rdi, rsi
        mov     rcx, rbp
2:      mov     [rdi], rcx              /* one word per zone page */
        add     rdi, 4096
        dec     rcx
        jnz     2b
3:      TCALL   VMM_RESUME, AGENT, 0, 0, 0
        test    r10, r10
        jnz     fail_resume
        dec     rbx
        jnz     1b
call_done:
        TCALL   AGENT_DISABLE, AGENT, 0, 0, 0
        test    r10, r10
        jnz     fail_disable
done:
        EXIT    0
        jmp     halt
fail_access:
        EXIT    2
        jmp     halt
fail_enter:
        EXIT    3
        jmp     halt
fail_resume:
        EXIT    4
        jmp     halt
fail_disable:
        EXIT    5
halt:
        jmp     halt                    /* ring 3 cannot hlt; the VM has ended */

        .data
        .balign 16
gdt:
        .quad   0, 0
        .quad   0x00af9b000000ffff      /* 0x10 code64, ring 0 (the boot CS) */
        .quad   0x00cf93000000ffff      /* 0x18 data, ring 0 */
        .quad   0x00008b0000000067      /* 0x20 TSS (loaded in TR at boot) */
        .quad   0
        .quad   0x00affb000000ffff      /* 0x30 code64, ring 3 */
        .quad   0x00cff3000000ffff      /* 0x38 data, ring 3 */
gdt_end:
        .balign 8
gdtr:
        .word   gdt_end - gdt - 1
        .quad   gdt

        .bss
        .balign 16
        .skip   4096
ustack_top:
