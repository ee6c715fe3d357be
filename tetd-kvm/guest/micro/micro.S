/*
 * Micro guests for the VMM tests: tiny x86-64 "kernels" (static ELF, entry in
 * 64-bit mode through the VMM's 64-bit boot protocol set-up, identity-mapped
 * 0..5 GiB) that exercise one VMM feature each in a few instructions, so the
 * tests run in milliseconds even where KVM emulates guest kernel code.
 *
 * Build (the tests do this): gcc -c -DSCENARIO_<NAME> micro.S && ld -Ttext=0x200000 -e _start
 * Scenarios:
 *   EXIT      write 7 to the exit port
 *   HYPERCALL TETD hypercall with known arguments, report what came back;
 *             the same with a wrong R10; exit 0
 *   ZONE      read a mapped zone page, ask the host to block it, read and
 *             write it (violations), ask to unblock it, read again; exit 0
 *   SPIN      loop forever (timeout test)
 *   KICK      report "ready", spin until RAX != 0, then exit with status AL
 *             (the test's kick handler sets RAX)
 *   SMP       the BSP copies a real-mode trampoline to 0x10000 and starts
 *             vCPU 1 with INIT + SIPI through its local APIC; the AP writes
 *             9 to the exit port (the BSP only spins)
 *   TETD      the TETD leaf sequence against TETD-H (tests/hv_kvm.rs):
 *             AGENT_ACCESS (agent 5, 2 pages, with a measurement GPA), read
 *             the blocked zone, VMM_ENTER, write + read it, VMM_RESUME, read
 *             and write it (blocked), VMM_ENTER + read both words + VMM_RESUME,
 *             RTMR_EXTEND, AGENT_QUERY, AGENT_DISABLE, read the removed zone;
 *             every result goes to the host with a REPORT call; exit 0
 *   TETD_OPEN AGENT_ACCESS (agent 6, 3 pages), VMM_ENTER, write the zone,
 *             report its GPA and exit 0 with the call still open (the host
 *             then tears the running agent down)
 *   ECHO      console input: poll COM1's line status, echo every received
 *             byte back to COM1 until a 'q', then exit 3
 */
        .intel_syntax noprefix

#define VENDOR          0x54455444      /* tetd::abi::TETD_VMCALL_VENDOR */
#define HC_PORT         0x0e40          /* tetd::abi::SIM_HYPERCALL_PORT */
#define EXIT_PORT       0x0e44          /* tetd::abi::SIM_EXIT_PORT */
#define ZONE_BASE       0x100000000     /* tetd::abi::ZONE_GPA_BASE */
#define LEAF_REPORT     0x5250          /* test-only leaves, answered by the test handler */
#define LEAF_BLOCK      0x424c
#define LEAF_UNBLOCK    0x554e
#define AGENT_ACCESS    1               /* tetd::abi::Leaf */
#define VMM_ENTER       2
#define VMM_RESUME      3
#define AGENT_DISABLE   4
#define RTMR_EXTEND     6
#define AGENT_QUERY     8
#define AGENT           5

        /* One hypercall with R10..R15 already loaded. */
        .macro  HCALL
        mov     dx, HC_PORT
        out     dx, al
        .endm

        /* Report R10..R13 (status, results) of the previous hypercall. */
        .macro  REPORT_RESULT
        mov     r15, r13
        mov     r14, r12
        mov     r13, r11
        mov     r12, r10
        mov     r11, LEAF_REPORT
        mov     r10, VENDOR
        HCALL
        .endm

        /* Report one value (in RAX). */
        .macro  REPORT_RAX
        mov     r12, rax
        xor     r13, r13
        xor     r14, r14
        xor     r15, r15
        mov     r11, LEAF_REPORT
        mov     r10, VENDOR
        HCALL
        .endm

        .macro  LEAF n
        mov     r10, VENDOR
        mov     r11, \n
        xor     r12, r12
        xor     r13, r13
        xor     r14, r14
        xor     r15, r15
        HCALL
        .endm

        /* A TETD leaf with arguments (R12..R15 from the given operands). */
        .macro  TCALL leaf, a0, a1, a2, a3
        mov     r10, VENDOR
        mov     r11, \leaf
        mov     r12, \a0
        mov     r13, \a1
        mov     r14, \a2
        mov     r15, \a3
        HCALL
        .endm

        .macro  EXIT code
        mov     al, \code
        mov     dx, EXIT_PORT
        out     dx, al
        .endm

        .text
        .globl  _start
_start:
#if defined(SCENARIO_EXIT)
        EXIT    7

#elif defined(SCENARIO_HYPERCALL)
        mov     r10, VENDOR
        mov     r11, 0x77
        mov     r12, 0x1111111111111111
        mov     r13, 0x2222222222222222
        mov     r14, 0x3333333333333333
        mov     r15, 0x4444444444444444
        HCALL
        REPORT_RESULT
        mov     r10, 0x1234             /* not the TETD vendor value */
        mov     r11, 0x77
        HCALL
        REPORT_RESULT
        EXIT    0

#elif defined(SCENARIO_ZONE)
        mov     rbx, ZONE_BASE
        mov     rax, [rbx]              /* mapped: the host's pattern */
        REPORT_RAX
        LEAF    LEAF_BLOCK
        mov     rax, [rbx + 8]          /* blocked: violation, reads all-ones */
        REPORT_RAX
        mov     rcx, 0x5a5a5a5a5a5a5a5a
        mov     [rbx + 16], rcx         /* blocked: violation, write dropped */
        LEAF    LEAF_UNBLOCK
        mov     rax, [rbx + 16]         /* unblocked: old content */
        REPORT_RAX
        EXIT    0

#elif defined(SCENARIO_SPIN)
1:      jmp     1b

#elif defined(SCENARIO_KICK)
        xor     eax, eax
        REPORT_RAX                      /* "ready": the test kicks after this */
        xor     eax, eax
1:      test    rax, rax
        jz      1b
        mov     dx, EXIT_PORT
        out     dx, al

#elif defined(SCENARIO_SMP)
        lea     rsi, [rip + trampoline]
        mov     rdi, 0x10000
        mov     rcx, trampoline_end - trampoline
        rep movsb
        mov     rbx, 0xfee00000                 /* local APIC (xAPIC MMIO) */
        mov     dword ptr [rbx + 0x310], 0x01000000     /* ICR high: APIC id 1 */
        mov     dword ptr [rbx + 0x300], 0x00004500     /* INIT, assert */
        mov     dword ptr [rbx + 0x310], 0x01000000
        mov     dword ptr [rbx + 0x300], 0x00004610     /* SIPI, vector 0x10 = 0x10000 */
1:      pause
        jmp     1b

        .code16
trampoline:                                     /* runs on the AP in real mode */
        mov     al, 9
        mov     dx, EXIT_PORT
        out     dx, al
2:      hlt
        jmp     2b
trampoline_end:
        .code64

#elif defined(SCENARIO_TETD)
        lea     rsi, [rip + measurement]
        TCALL   AGENT_ACCESS, AGENT, 2, 0, rsi  /* exclusive, no flags */
        mov     rbx, r11                /* zone GPA */
        REPORT_RESULT                   /* 0: status, GPA, pages, zone flags */
        mov     rax, [rbx + 8]          /* blocked: violation, all-ones */
        REPORT_RAX                      /* 1 */
        TCALL   VMM_ENTER, AGENT, 0, 0, 0
        REPORT_RESULT                   /* 2: status, calls */
        mov     rcx, 0x1122334455667788
        mov     [rbx + 8], rcx
        mov     rax, [rbx + 8]          /* mapped: what was written */
        REPORT_RAX                      /* 3 */
        TCALL   VMM_RESUME, AGENT, 0, 0, 0
        REPORT_RESULT                   /* 4: status, calls, failures */
        mov     rax, [rbx + 8]          /* blocked again: violation */
        REPORT_RAX                      /* 5 */
        mov     rcx, 0x5a5a5a5a5a5a5a5a
        mov     [rbx + 16], rcx         /* blocked: violation, dropped */
        TCALL   VMM_ENTER, AGENT, 0, 0, 0
        mov     rax, [rbx + 8]          /* content kept across the block */
        REPORT_RAX                      /* 6 */
        mov     rax, [rbx + 16]         /* the blocked write did not land */
        REPORT_RAX                      /* 7 */
        TCALL   VMM_RESUME, AGENT, 0, 3, 0      /* call status 3: a failure */
        REPORT_RESULT                   /* 8 */
        lea     rsi, [rip + measurement]
        TCALL   RTMR_EXTEND, 3, rsi, 0, 0
        REPORT_RESULT                   /* 9 */
        TCALL   AGENT_QUERY, AGENT, 0, 0, 0
        REPORT_RESULT                   /* 10: status, state, calls, violations */
        TCALL   AGENT_DISABLE, AGENT, 0, 0, 0
        REPORT_RESULT                   /* 11 */
        mov     rax, [rbx]              /* removed: violation without an agent */
        REPORT_RAX                      /* 12 */
        EXIT    0

        .balign 8
measurement:                            /* 48 bytes: i * 7 + 1 */
        .set    i, 0
        .rept   48
        .byte   (i * 7 + 1) & 0xff
        .set    i, i + 1
        .endr

#elif defined(SCENARIO_TETD_OPEN)
        TCALL   AGENT_ACCESS, 6, 3, 0, 0
        mov     rbx, r11
        TCALL   VMM_ENTER, 6, 0, 0, 0
        mov     rcx, 0x600d
        mov     [rbx + 2 * 4096], rcx   /* last page of the zone */
        mov     rax, rbx
        REPORT_RAX
        EXIT    0

#elif defined(SCENARIO_ECHO)
1:      mov     dx, 0x3fd               /* COM1 LSR */
        in      al, dx
        test    al, 1                   /* DR: a byte is waiting */
        jz      1b
        mov     dx, 0x3f8               /* RBR / THR */
        in      al, dx
        mov     bl, al
        out     dx, al
        cmp     bl, 'q'
        jne     1b
        EXIT    3

#else
#error "define one SCENARIO_*"
#endif
2:      hlt
        jmp     2b
