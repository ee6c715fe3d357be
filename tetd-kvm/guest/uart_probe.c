/*
 * tetd-uart-probe: a static guest test program for the QEMU engine's uart
 * hypercall transport (built by tetd-kvm/tests/qemu_engine.rs with
 * `gcc -static`).
 *
 *   tetd-uart-probe hc LEAF [A0 A1 A2 A3 [VENDOR]]   one TETD hypercall as a
 *          uart frame; prints "hc vcpu=V seq=S R10=.. R11=.. R12=.. R13=.."
 *          An argument "@meas" is replaced by the guest-physical address of
 *          a locked buffer holding the 48-byte test pattern (byte i = i*7+1).
 *   tetd-uart-probe garbage LEAF A0      stray bytes and a frame with a bad
 *          checksum, then the real call (the host must resynchronise)
 *   tetd-uart-probe peek GPA             read a u64 at a guest-physical address (/dev/mem)
 *   tetd-uart-probe poke GPA VALUE       write a u64 there
 *   tetd-uart-probe exit N               write N to the exit port (isa-debug-exit)
 *
 * The frame format and port numbers are tetd::abi::uart (tetd-sdk/src/abi.rs):
 * request  = "TH" seq:u16 vcpu:u32 R10..R15:6*u64 fletcher16:u16   (58 bytes)
 * response = "TA" seq:u16 R10..R13:4*u64 fletcher16:u16            (38 bytes)
 * all little endian; the UART is a 16550 at IO_BASE, polled, IER = 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TETD_VMCALL_VENDOR 0x54455444ULL
#define UART_BASE 0x0e48
#define SIM_EXIT_PORT 0x0e44
#define REG_DATA 0
#define REG_IER 1
#define REG_FCR 2
#define REG_LCR 3
#define REG_MCR 4
#define REG_LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define REQUEST_LEN 58
#define RESPONSE_LEN 38

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "tetd-uart-probe: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static uint16_t fletcher16(const uint8_t *d, size_t n)
{
    uint16_t s1 = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s1 = (uint16_t)((s1 + d[i]) % 255);
        s2 = (uint16_t)((s2 + s1) % 255);
    }
    return (uint16_t)((s2 << 8) | s1);
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void uart_init(void)
{
    if (iopl(3) != 0) {
        perror("tetd-uart-probe: iopl(3)");
        exit(2);
    }
    outb(0x00, UART_BASE + REG_IER);
    outb(0x03, UART_BASE + REG_LCR);
    outb(0x07, UART_BASE + REG_FCR);
    outb(0x03, UART_BASE + REG_MCR);
    while (inb(UART_BASE + REG_LSR) & LSR_DR)
        (void)inb(UART_BASE + REG_DATA);
}

static void uart_send(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while (!(inb(UART_BASE + REG_LSR) & LSR_THRE))
            ;
        outb(d[i], UART_BASE + REG_DATA);
    }
}

static void uart_recv(uint8_t *d, size_t n)
{
    double deadline = now() + 30.0;
    for (size_t i = 0; i < n; i++) {
        while (!(inb(UART_BASE + REG_LSR) & LSR_DR)) {
            if (now() > deadline) {
                fprintf(stderr, "tetd-uart-probe: no answer (%zu of %zu bytes)\n", i, n);
                exit(3);
            }
        }
        d[i] = inb(UART_BASE + REG_DATA);
    }
}

/* GPA of a locked page holding the 48-byte test pattern (/proc/self/pagemap). */
static uint64_t meas_gpa(void)
{
    static uint64_t gpa;
    if (gpa)
        return gpa;
    long ps = sysconf(_SC_PAGESIZE);
    uint8_t *buf = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED || mlock(buf, ps) != 0) {
        perror("tetd-uart-probe: locked buffer");
        exit(2);
    }
    for (int i = 0; i < 48; i++)
        buf[i] = (uint8_t)(i * 7 + 1);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t ent = 0;
    if (fd < 0 || pread(fd, &ent, 8, (off_t)((uintptr_t)buf / ps * 8)) != 8) {
        perror("tetd-uart-probe: /proc/self/pagemap");
        exit(2);
    }
    close(fd);
    if (!(ent & (1ULL << 63)) || (ent & ((1ULL << 55) - 1)) == 0) {
        fprintf(stderr, "tetd-uart-probe: no PFN for the buffer (pagemap %#" PRIx64 ")\n", ent);
        exit(2);
    }
    gpa = (ent & ((1ULL << 55) - 1)) * (uint64_t)ps;
    return gpa;
}

static uint64_t arg(const char *s)
{
    return strcmp(s, "@meas") == 0 ? meas_gpa() : num(s);
}

static void encode(uint8_t *f, uint16_t seq, uint32_t vcpu, const uint64_t regs[6])
{
    f[0] = 'T';
    f[1] = 'H';
    put_le(f + 2, seq, 2);
    put_le(f + 4, vcpu, 4);
    for (int i = 0; i < 6; i++)
        put_le(f + 8 + 8 * i, regs[i], 8);
    put_le(f + 56, fletcher16(f, 56), 2);
}

static int hypercall(const uint64_t regs[6], int garbage)
{
    uint8_t req[REQUEST_LEN], resp[RESPONSE_LEN];
    uint16_t seq = (uint16_t)getpid();
    int cpu = sched_getcpu();
    encode(req, seq, (uint32_t)cpu, regs);
    uart_init();
    if (garbage) {
        static const uint8_t junk[] = { 0x00, 'T', 'x', 0xff, 'H', 'T' };
        uint8_t bad[REQUEST_LEN];
        memcpy(bad, req, sizeof bad);
        bad[20] ^= 0x40; /* checksum no longer matches */
        uart_send(junk, sizeof junk);
        uart_send(bad, sizeof bad);
    }
    double t0 = now();
    uart_send(req, sizeof req);
    uart_recv(resp, sizeof resp);
    double t1 = now();
    if (resp[0] != 'T' || resp[1] != 'A' || get_le(resp + 36, 2) != fletcher16(resp, 36)) {
        fprintf(stderr, "tetd-uart-probe: bad response frame\n");
        return 3;
    }
    if (get_le(resp + 2, 2) != seq) {
        fprintf(stderr, "tetd-uart-probe: response to seq %u, expected %u\n",
                (unsigned)get_le(resp + 2, 2), (unsigned)seq);
        return 3;
    }
    printf("tetd-uart-probe: hc vcpu=%d seq=%u R10=%#" PRIx64 " R11=%#" PRIx64 " R12=%#" PRIx64
           " R13=%#" PRIx64 " us=%.0f\n",
           cpu, (unsigned)seq, get_le(resp + 4, 8), get_le(resp + 12, 8), get_le(resp + 20, 8),
           get_le(resp + 28, 8), (t1 - t0) * 1e6);
    return 0;
}

static volatile uint64_t *map_phys(uint64_t gpa, int *fd_out)
{
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        perror("tetd-uart-probe: open /dev/mem");
        exit(2);
    }
    uint64_t page = gpa & ~0xfffULL;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)page);
    if (p == MAP_FAILED) {
        perror("tetd-uart-probe: mmap /dev/mem");
        exit(2);
    }
    *fd_out = fd;
    return (volatile uint64_t *)((char *)p + (gpa - page));
}

int main(int argc, char **argv)
{
    if (argc >= 3 && (strcmp(argv[1], "hc") == 0 || strcmp(argv[1], "garbage") == 0)) {
        uint64_t regs[6] = { TETD_VMCALL_VENDOR, arg(argv[2]), 0, 0, 0, 0 };
        for (int i = 3; i < argc && i < 7; i++)
            regs[i - 1] = arg(argv[i]);
        if (argc >= 8)
            regs[0] = num(argv[7]);
        return hypercall(regs, argv[1][0] == 'g');
    }
    if (argc == 3 && strcmp(argv[1], "peek") == 0) {
        int fd;
        uint64_t gpa = num(argv[2]);
        volatile uint64_t *p = map_phys(gpa, &fd);
        printf("tetd-uart-probe: peek %#" PRIx64 " = %#" PRIx64 "\n", gpa, *p);
        close(fd);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "poke") == 0) {
        int fd;
        uint64_t gpa = num(argv[2]);
        volatile uint64_t *p = map_phys(gpa, &fd);
        *p = num(argv[3]);
        printf("tetd-uart-probe: poke %#" PRIx64 " done\n", gpa);
        close(fd);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "exit") == 0) {
        if (iopl(3) != 0) {
            perror("tetd-uart-probe: iopl(3)");
            return 2;
        }
        outb((unsigned char)num(argv[2]), SIM_EXIT_PORT);
        return 0;
    }
    fprintf(stderr, "usage: tetd-uart-probe hc|garbage LEAF [A0 A1 A2 A3 [VENDOR]] | peek GPA | "
                    "poke GPA VALUE | exit N\n");
    return 2;
}
