/*
 * tetd-probe: a static guest test program for the VMM (built by
 * tetd-kvm/tests/vmm_boot.rs with `gcc -static`).
 *
 *   tetd-probe hc LEAF [A0 A1 A2 A3 [VENDOR]]  TETD hypercall through the port
 *                                              transport; prints R10..R13 after it
 *   tetd-probe peek GPA                        read a u64 at a guest-physical address (/dev/mem)
 *   tetd-probe poke GPA VALUE                  write a u64 there
 *   tetd-probe exit N                          write N to the exit port (ends the VM)
 *
 * Numbers may be decimal or 0x-hex. Port numbers and the vendor value are
 * tetd::abi's SIM_HYPERCALL_PORT, SIM_EXIT_PORT and TETD_VMCALL_VENDOR.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <unistd.h>

#define TETD_VMCALL_VENDOR 0x54455444ULL
#define SIM_HYPERCALL_PORT 0x0e40
#define SIM_EXIT_PORT 0x0e44

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "tetd-probe: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static void need_io(void)
{
    if (iopl(3) != 0) {
        perror("tetd-probe: iopl(3)");
        exit(2);
    }
}

static volatile uint64_t *map_phys(uint64_t gpa, int *fd_out)
{
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        perror("tetd-probe: open /dev/mem");
        exit(2);
    }
    uint64_t page = gpa & ~0xfffULL;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)page);
    if (p == MAP_FAILED) {
        perror("tetd-probe: mmap /dev/mem");
        exit(2);
    }
    *fd_out = fd;
    return (volatile uint64_t *)((char *)p + (gpa - page));
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "hc") == 0) {
        uint64_t vendor = argc >= 8 ? num(argv[7]) : TETD_VMCALL_VENDOR;
        register uint64_t r10 __asm__("r10") = vendor;
        register uint64_t r11 __asm__("r11") = num(argv[2]);
        register uint64_t r12 __asm__("r12") = argc > 3 ? num(argv[3]) : 0;
        register uint64_t r13 __asm__("r13") = argc > 4 ? num(argv[4]) : 0;
        register uint64_t r14 __asm__("r14") = argc > 5 ? num(argv[5]) : 0;
        register uint64_t r15 __asm__("r15") = argc > 6 ? num(argv[6]) : 0;
        need_io();
        __asm__ volatile("outb %%al, %%dx"
                         : "+r"(r10), "+r"(r11), "+r"(r12), "+r"(r13)
                         : "r"(r14), "r"(r15), "a"(0), "d"(SIM_HYPERCALL_PORT)
                         : "memory");
        printf("tetd-probe: hc R10=%#" PRIx64 " R11=%#" PRIx64 " R12=%#" PRIx64 " R13=%#" PRIx64 "\n",
               r10, r11, r12, r13);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "peek") == 0) {
        int fd;
        uint64_t gpa = num(argv[2]);
        volatile uint64_t *p = map_phys(gpa, &fd);
        printf("tetd-probe: peek %#" PRIx64 " = %#" PRIx64 "\n", gpa, *p);
        close(fd);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "poke") == 0) {
        int fd;
        uint64_t gpa = num(argv[2]);
        volatile uint64_t *p = map_phys(gpa, &fd);
        *p = num(argv[3]);
        printf("tetd-probe: poke %#" PRIx64 " done\n", gpa);
        close(fd);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "exit") == 0) {
        need_io();
        outb((unsigned char)num(argv[2]), SIM_EXIT_PORT);
        return 0;
    }
    fprintf(stderr, "usage: tetd-probe hc LEAF [A0 A1 A2 A3 [VENDOR]] | peek GPA | poke GPA VALUE | exit N\n");
    return 2;
}
