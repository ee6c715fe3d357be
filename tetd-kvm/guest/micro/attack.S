/*
 * Attack micro guests (tetd-kvm/tests/attack_kvm.rs): the guest kernel is
 * the adversary. Each scenario is a tiny x86-64 "kernel" (static ELF, 64-bit
 * entry, identity-mapped 0..5 GiB, as micro.S) that attacks TETD-H through
 * the port transport on /dev/kvm and reports what it saw with REPORT calls
 * (a test-only leaf the test's handler refuses and records).
 *
 * Build (the test does this): gcc -c -DSCENARIO_<NAME> attack.S && ld -Ttext=0x200000 -e _start
 * Scenarios:
 *   BLOCKED   agent 11 (2 pages): write two secrets in a call, then attack
 *             the blocked zone: 8/4/1-byte reads and writes, an alias of the
 *             zone through the guest's own page tables (PML4[1] = PML4[0]),
 *             the host as a confused deputy (RTMR_EXTEND and AGENT_ACCESS
 *             with a zone GPA as the data/measurement address); the next
 *             call checks the data is unchanged
 *   LEAVES    hypercall-level attacks: unknown agent, second AGENT_ACCESS,
 *             resume without enter, vCPU impersonation, reserved arguments,
 *             ENTER twice, ENTER inside another call, DISABLE while running,
 *             replayed RESUME, FAULT while idle, DISABLE twice, ENTER of a
 *             disabled agent, access to the removed zone, ENABLE (fresh
 *             zone, no old secret), unknown leaves, wrong vendor value,
 *             malformed AGENT_ACCESS arguments
 *   RACE      2 vCPUs (the AP is started with INIT + SIPI and switched to
 *             long mode here): ROUNDS times both vCPUs VMM_ENTER agent 7 at
 *             once; the loser also reads the zone while the winner's window
 *             is open (the documented per-TD limitation), tries to RESUME
 *             the winner's call, and reads it again after the RESUME
 *   HOLD      agent 5 (2 pages) and 6 (1 page); VMM_ENTER 5, write a secret,
 *             report, then spin with the call open (the host kills the VM)
 *   FOREIGN   another TD: every leaf on agent 5 (registered only in the TD
 *             running HOLD), a read and write at the zone window's first
 *             page, then its own agent 5 (a zone at the same GPA, its own
 *             pages: reads zero)
 *   FUZZ      FUZZ_ITERS hypercalls with pseudo-random registers (xorshift64,
 *             biased towards valid leaves and small ids; 1 in 16 with a
 *             random R10), then report the count
 */
        .intel_syntax noprefix

#define VENDOR          0x54455444      /* tetd::abi::TETD_VMCALL_VENDOR */
#define HC_PORT         0x0e40          /* tetd::abi::SIM_HYPERCALL_PORT */
#define EXIT_PORT       0x0e44          /* tetd::abi::SIM_EXIT_PORT */
#define ZONE_BASE       0x100000000     /* tetd::abi::ZONE_GPA_BASE */
#define LEAF_REPORT     0x5250          /* test-only leaf, refused and recorded */
#define AGENT_ACCESS    1               /* tetd::abi::Leaf */
#define VMM_ENTER       2
#define VMM_RESUME      3
#define AGENT_DISABLE   4
#define AGENT_ENABLE    5
#define RTMR_EXTEND     6
#define AGENT_FAULT     7
#define AGENT_QUERY     8
#define SECRET0         0x5ec2e70000000001
#define SECRET1         0x5ec2e70000000002
#define ATTACK          0xbad0bad0bad0bad0
#define ROUNDS          40
#define FUZZ_ITERS      3000
#define ALIAS_BASE      0x8000000000    /* PML4 slot 1: 512 GiB */

        .macro  HCALL
        mov     dx, HC_PORT
        out     dx, al
        .endm

        /* Report R10..R13 of the previous hypercall. */
        .macro  REPORT_RESULT
        mov     r15, r13
        mov     r14, r12
        mov     r13, r11
        mov     r12, r10
        mov     r11, LEAF_REPORT
        mov     r10, VENDOR
        HCALL
        .endm

        /* Report one value (RAX). */
        .macro  REPORT_RAX
        mov     r12, rax
        xor     r13, r13
        xor     r14, r14
        xor     r15, r15
        mov     r11, LEAF_REPORT
        mov     r10, VENDOR
        HCALL
        .endm

        /* A TETD leaf with arguments. */
        .macro  TCALL leaf, a0, a1, a2, a3
        mov     r10, VENDOR
        mov     r11, \leaf
        mov     r12, \a0
        mov     r13, \a1
        mov     r14, \a2
        mov     r15, \a3
        HCALL
        .endm

        /* TCALL and report its result. */
        .macro  TRY leaf, a0, a1, a2, a3
        TCALL   \leaf, \a0, \a1, \a2, \a3
        REPORT_RESULT
        .endm

        .macro  EXIT code
        mov     al, \code
        mov     dx, EXIT_PORT
        out     dx, al
        .endm

        /* Two vCPUs meet (RBP = own vCPU number): the n-th barrier of a
         * vCPU passes once the shared counter reached 2n. Clobbers RCX. */
        .macro  BARRIER
        mov     rcx, [phase + rbp * 8]
        inc     rcx
        mov     [phase + rbp * 8], rcx
        shl     rcx, 1
        lock inc dword ptr [barrier]
1:      pause
        cmp     dword ptr [barrier], ecx
        jb      1b
        .endm

        .text
        .globl  _start
_start:
#if defined(SCENARIO_BLOCKED)
        TCALL   AGENT_ACCESS, 11, 2, 0, 0
        mov     rbx, r11                /* zone GPA */
        REPORT_RESULT                   /* 0: ok, gpa, 2 pages */
        TRY     VMM_ENTER, 11, 0, 0, 0  /* 1 */
        mov     rcx, SECRET0
        mov     [rbx], rcx
        mov     rcx, SECRET1
        mov     [rbx + 4096 + 8], rcx
        TRY     VMM_RESUME, 11, 0, 0, 0 /* 2 */
        /* The zone is blocked: every access traps to the host. */
        mov     rax, [rbx]
        REPORT_RAX                      /* 3: 8-byte read */
        xor     eax, eax
        mov     eax, [rbx + 4]
        REPORT_RAX                      /* 4: 4-byte read */
        movzx   eax, byte ptr [rbx + 4096 + 8]
        REPORT_RAX                      /* 5: 1-byte read */
        mov     rdx, ATTACK
        mov     [rbx], rdx              /* 8-byte write */
        mov     [rbx + 4096 + 8], edx   /* 4-byte write */
        mov     [rbx + 1], dl           /* 1-byte write */
        /* Alias the zone through the guest's own page tables: blocking is
         * on the guest-physical address, so a second virtual mapping of
         * the same GPA traps as well. */
        mov     rax, cr3
        and     rax, ~0xfff
        mov     rcx, [rax]
        mov     [rax + 8], rcx          /* PML4[1] = PML4[0] */
        mov     rcx, cr3
        mov     cr3, rcx                /* flush */
        mov     rsi, ALIAS_BASE
        add     rsi, rbx
        mov     rax, [rsi]
        REPORT_RAX                      /* 6: read through the alias */
        mov     rdx, ATTACK             /* (HCALL clobbered DX) */
        mov     [rsi + 8], rdx          /* write through the alias */
        /* The host as a confused deputy: data / measurement GPAs inside
         * the blocked zone. */
        TRY     RTMR_EXTEND, 3, rbx, 0, 0       /* 7 */
        TRY     AGENT_ACCESS, 12, 1, 0, rbx     /* 8 */
        /* The owner's next call: the data is unchanged. */
        TRY     VMM_ENTER, 11, 0, 0, 0  /* 9 */
        mov     rax, [rbx]
        REPORT_RAX                      /* 10: SECRET0 */
        mov     rax, [rbx + 8]
        REPORT_RAX                      /* 11: 0 (alias write dropped) */
        mov     rax, [rbx + 4096 + 8]
        REPORT_RAX                      /* 12: SECRET1 */
        TRY     VMM_RESUME, 11, 0, 0, 0 /* 13 */
        TRY     AGENT_QUERY, 11, 0, 0, 0        /* 14: idle, calls, violations */
        EXIT    0

#elif defined(SCENARIO_LEAVES)
        TRY     VMM_ENTER, 99, 0, 0, 0          /* 0: unknown agent */
        TRY     VMM_RESUME, 99, 0, 0, 0         /* 1: unknown agent */
        TCALL   AGENT_ACCESS, 21, 1, 0, 0
        mov     rbx, r11
        REPORT_RESULT                           /* 2: ok */
        TRY     AGENT_ACCESS, 21, 1, 0, 0       /* 3: second ACCESS: AlreadyRegistered */
        TRY     VMM_RESUME, 21, 0, 0, 0         /* 4: resume without enter */
        TRY     VMM_ENTER, 21, 1, 0, 0          /* 5: claims vCPU 1 from vCPU 0 */
        TRY     VMM_ENTER, 21, 0, 1, 0          /* 6: reserved argument */
        TRY     VMM_ENTER, 21, 0, 0, 0          /* 7: ok */
        mov     rcx, SECRET0
        mov     [rbx], rcx
        TRY     VMM_ENTER, 21, 0, 0, 0          /* 8: ENTER twice */
        TRY     AGENT_ACCESS, 22, 1, 0, 0       /* 9: ok */
        TRY     VMM_ENTER, 22, 0, 0, 0          /* 10: inside agent 21's call */
        TRY     AGENT_DISABLE, 21, 0, 0, 0      /* 11: while running */
        TRY     VMM_RESUME, 21, 0, 0, 0         /* 12: ok */
        TRY     VMM_RESUME, 21, 0, 0, 0         /* 13: replayed RESUME */
        mov     rax, [rbx]
        REPORT_RAX                              /* 14: still blocked */
        TRY     AGENT_FAULT, 21, 14, 0, 0       /* 15: fault while idle */
        TRY     AGENT_DISABLE, 21, 0, 0, 0      /* 16: ok */
        TRY     AGENT_DISABLE, 21, 0, 0, 0      /* 17: twice */
        TRY     VMM_ENTER, 21, 0, 0, 0          /* 18: disabled */
        mov     rax, [rbx]
        REPORT_RAX                              /* 19: removed zone */
        TCALL   AGENT_ENABLE, 21, 0, 0, 0
        mov     rsi, r11
        REPORT_RESULT                           /* 20: ok, fresh zone */
        TCALL   VMM_ENTER, 21, 0, 0, 0
        mov     rax, [rsi]
        REPORT_RAX                              /* 21: 0, not the old secret */
        TCALL   VMM_RESUME, 21, 0, 0, 0
        TRY     0, 21, 0, 0, 0                  /* 22: leaf 0 */
        TRY     9, 21, 0, 0, 0                  /* 23: leaf 9 */
        mov     rax, -1
        TRY     rax, 21, 0, 0, 0                /* 24: leaf 2^64-1 */
        mov     r10, 0x1234                     /* not the TETD vendor value */
        mov     r11, VMM_ENTER
        mov     r12, 21
        xor     r13, r13
        xor     r14, r14
        xor     r15, r15
        HCALL
        REPORT_RESULT                           /* 25: refused by the VMM */
        TRY     AGENT_ACCESS, 0, 1, 0, 0        /* 26: id 0 */
        mov     rax, 0x100000017
        TRY     AGENT_ACCESS, rax, 1, 0, 0      /* 27: id > 32 bits */
        mov     rax, 0x10000000000
        TRY     AGENT_ACCESS, 23, rax, 0, 0     /* 28: 2^40 pages */
        mov     rax, 0x700000000
        TRY     AGENT_ACCESS, 23, 1, rax, 0     /* 29: mode 7 */
        mov     rax, 0x100000000000
        TRY     AGENT_ACCESS, 23, 1, 0, rax     /* 30: measurement GPA outside RAM */
        TRY     AGENT_QUERY, 21, 0, 0, 0        /* 31 */
        EXIT    0

#elif defined(SCENARIO_RACE)
        TCALL   AGENT_ACCESS, 7, 1, 0, 0
        mov     [rip + zone_gpa], r11
        REPORT_RESULT                   /* BSP 0 */
        /* Start the AP: copy its trampoline to 0x10000, give it our CR3,
         * INIT + SIPI. */
        lea     rsi, [rip + ap_tramp]
        mov     rdi, 0x10000
        mov     rcx, ap_tramp_end - ap_tramp
        rep movsb
        mov     rax, cr3
        mov     dword ptr [0x10000 + (ap_cr3 - ap_tramp)], eax
        mov     rbx, 0xfee00000
        mov     dword ptr [rbx + 0x310], 0x01000000
        mov     dword ptr [rbx + 0x300], 0x00004500
        mov     dword ptr [rbx + 0x310], 0x01000000
        mov     dword ptr [rbx + 0x300], 0x00004610
        xor     ebp, ebp                /* vCPU 0 */
        call    race
        BARRIER
        EXIT    0

        /* Both vCPUs; RBP = own vCPU number. Uses r8 (round), r9 (wins),
         * rdi (losses), rsi (other statuses). */
race:
        mov     rbx, [rip + zone_gpa]
        xor     r8d, r8d
        xor     r9d, r9d
        xor     edi, edi
        xor     esi, esi
race_round:
        BARRIER
        TCALL   VMM_ENTER, 7, rbp, 0, 0
        mov     rax, r10                /* my status */
        mov     [status0 + rbp * 8], rax
        BARRIER
        test    rax, rax
        jnz     race_lost
        inc     r9
        mov     rcx, SECRET0
        add     rcx, r8
        mov     [rbx], rcx              /* the winner writes this round's secret */
        BARRIER
        BARRIER
        TCALL   VMM_RESUME, 7, rbp, 0, 0
        mov     [resume_status + rbp * 8], r10
        BARRIER
        jmp     race_next
race_lost:
        cmp     rax, 203                /* tetd::abi::Error::AlreadyRunning */
        je      1f
        inc     rsi
        jmp     2f
1:      inc     rdi
2:      BARRIER
        test    r8, r8
        jnz     3f
        /* Round 0 only: what the other vCPU can do inside the window. */
        mov     rax, [rbx]
        REPORT_RAX                      /* the winner's secret: the zone is mapped TD-wide */
        TCALL   VMM_RESUME, 7, rbp, 0, 0
        REPORT_RESULT                   /* NotOwner */
3:      BARRIER
        BARRIER
        test    r8, r8
        jnz     4f
        mov     rax, [rbx]
        REPORT_RAX                      /* after RESUME: trapped */
4:
race_next:
        inc     r8
        cmp     r8, ROUNDS
        jb      race_round
        mov     rax, r9
        mov     r12, rax
        mov     r13, rdi
        mov     r14, rsi
        mov     r15, rbp
        mov     r11, LEAF_REPORT
        mov     r10, VENDOR
        HCALL                           /* [wins, lost with AlreadyRunning, other, vcpu] */
        ret

        /* The AP, after the trampoline: long mode, our GDT, a stack. */
ap_main64:
        mov     ax, 0x18
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        lea     rsp, [rip + ap_stack_top]
        mov     ebp, 1
        call    race
        BARRIER
5:      hlt
        jmp     5b

        .code16
ap_tramp:                               /* at 0x10000, CS = 0x1000, real mode */
        cli
        mov     ax, cs
        mov     ds, ax
        lgdt    [ap_gdtr - ap_tramp]
        mov     eax, cr4
        or      eax, 0x20               /* PAE */
        mov     cr4, eax
        mov     eax, [ap_cr3 - ap_tramp]
        mov     cr3, eax
        mov     ecx, 0xc0000080         /* EFER */
        rdmsr
        or      eax, 0x100              /* LME */
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000001         /* PG | PE */
        mov     cr0, eax
        .byte   0x66, 0xea              /* ljmpl 0x10:ap_main64 */
        .long   ap_main64
        .word   0x10
        .balign 8
ap_gdt:
        .quad   0, 0
        .quad   0x00af9a000000ffff      /* 0x10: 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x18: data */
ap_gdtr:
        .word   31
        .long   0x10000 + (ap_gdt - ap_tramp)
ap_cr3:
        .long   0
ap_tramp_end:
        .code64

#elif defined(SCENARIO_HOLD)
        TCALL   AGENT_ACCESS, 5, 2, 0, 0
        mov     rbx, r11
        REPORT_RESULT                   /* 0 */
        TRY     AGENT_ACCESS, 6, 1, 0, 0        /* 1: idle bystander */
        TRY     VMM_ENTER, 5, 0, 0, 0   /* 2 */
        mov     rcx, SECRET0
        mov     [rbx], rcx
        mov     [rbx + 4096], rcx
        mov     rax, rbx
        REPORT_RAX                      /* 3: "inside the call now" */
6:      pause
        jmp     6b

#elif defined(SCENARIO_FOREIGN)
        TRY     VMM_ENTER, 5, 0, 0, 0   /* 0 */
        TRY     VMM_RESUME, 5, 0, 0, 0  /* 1 */
        TRY     AGENT_DISABLE, 5, 0, 0, 0       /* 2 */
        TRY     AGENT_ENABLE, 5, 0, 0, 0        /* 3 */
        TRY     AGENT_FAULT, 5, 14, 0, 0        /* 4 */
        TRY     AGENT_QUERY, 5, 0, 0, 0 /* 5 */
        mov     rbx, ZONE_BASE
        mov     rax, [rbx]
        REPORT_RAX                      /* 6: nothing mapped here in this TD */
        mov     rcx, ATTACK
        mov     [rbx], rcx
        TCALL   AGENT_ACCESS, 5, 2, 0, 0
        mov     rsi, r11
        REPORT_RESULT                   /* 7: its own agent 5 */
        TRY     VMM_ENTER, 5, 0, 0, 0   /* 8 */
        mov     rax, [rsi]
        REPORT_RAX                      /* 9: 0 */
        TRY     VMM_RESUME, 5, 0, 0, 0  /* 10 */
        TRY     AGENT_DISABLE, 5, 0, 0, 0       /* 11 */
        EXIT    0

#elif defined(SCENARIO_FUZZ)
        mov     rbx, 0x9e3779b97f4a7c15 /* xorshift64 state */
        xor     ebp, ebp                /* iteration */
fuzz_loop:
        /* rbx = next(rbx); r8..r9 scratch */
        .macro  NEXT dst
        mov     r8, rbx
        shl     r8, 13
        xor     rbx, r8
        mov     r8, rbx
        shr     r8, 7
        xor     rbx, r8
        mov     r8, rbx
        shl     r8, 17
        xor     rbx, r8
        mov     \dst, rbx
        .endm
        NEXT    rax                     /* shape selector */
        mov     [rip + fuzz_sel], rax
        NEXT    r11                     /* leaf: 3/4 a real leaf 1..8 */
        test    al, 0x3
        jz      1f
        and     r11, 7
        inc     r11
1:      NEXT    r12                     /* arg0: 3/4 agent id 1..8 */
        test    al, 0xc
        jz      1f
        and     r12, 7
        inc     r12
1:      NEXT    r13                     /* arg1: pages / vCPU / vector */
        test    al, 0x30
        jz      2f                      /* 1/4 random */
        and     r13, 3
        test    al, 0x20
        jz      2f                      /* 1/4 0..3 */
        xor     r13, r13                /* 1/2 zero (vCPU 0) */
2:      NEXT    r14                     /* arg2: access word / status */
        test    al, 0xc0
        jz      2f                      /* 1/4 random */
        mov     r8, 0x100000000
        and     r14, r8                 /* mode 0 or 1 (collaborative) */
        test    al, 0x80
        jz      2f
        xor     r14, r14                /* 1/2 zero */
2:      NEXT    r15                     /* arg3: 1/8 a random GPA */
        test    ax, 0x700
        jz      1f
        xor     r15, r15
1:      mov     r10, VENDOR
        test    ax, 0x7800
        jnz     1f
        NEXT    r10                     /* 1 in 16: a random R10 */
1:      mov     dx, HC_PORT
        out     dx, al
        inc     rbp
        cmp     rbp, FUZZ_ITERS
        jb      fuzz_loop
        mov     rax, rbp
        REPORT_RAX
        EXIT    0

#else
#error "define one SCENARIO_*"
#endif
7:      hlt
        jmp     7b

        .data
        .balign 64
barrier:        .long   0
        .balign 8
zone_gpa:       .quad   0
status0:        .quad   0, 0
phase:          .quad   0, 0
resume_status:  .quad   0, 0
fuzz_sel:       .quad   0
        .balign 16
ap_stack:       .space  4096
ap_stack_top:
