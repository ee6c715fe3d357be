// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * tetdg.ko: the TETD-G guest module, C glue.
 *
 * Everything TETD-specific (request structs, zones, page tables, the agent
 * call trampolines, /proc text) lives in the Rust part (tetd-kernel/module/rust,
 * linked in as tetdg_rust.o). This file only binds it to the kernel:
 *
 *   - module init/exit, the misc device /dev/tetdg (ioctl = cmd + user
 *     pointer handed to Rust, which copies the request itself through the
 *     copy helpers below) and /proc/tetdg_info (text rendered by Rust);
 *   - small helpers the Rust side calls (tetdg_k_*): log, allocation, user
 *     copies, random, time, page mapping of zone memory, TLB flush, FPU,
 *     interrupt masking, and the hypercall transports.
 *
 * All Rust entry points run under tetdg_lock (a mutex), so the Rust state is
 * never entered concurrently.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <linux/random.h>
#include <linux/timekeeping.h>
#include <linux/smp.h>
#include <linux/preempt.h>
#include <linux/irqflags.h>
#include <asm/fpu/api.h>
#include <asm/cpufeature.h>
#include <asm/processor.h>
#include <asm/pgtable.h>
#include <asm/tlbflush.h>
#include <asm/apic.h>
#include <asm/tsc.h>
#include <asm/irq_vectors.h>

MODULE_LICENSE("Dual MIT/GPL");
MODULE_AUTHOR("TETD-rs");
MODULE_DESCRIPTION("TETD-G: agents in secret zones of a trust domain");
MODULE_VERSION("0.1.0");

static bool test_ioctl;
module_param(test_ioctl, bool, 0444);
MODULE_PARM_DESC(test_ioctl, "enable the TEST ioctl (built-in machine-code blobs; development and tests only)");

static unsigned int timeout_ms;
module_param(timeout_ms, uint, 0444);
MODULE_PARM_DESC(timeout_ms, "watchdog budget (ms) of collaborative calls that set none; 0 = none. Enforced when an NMI reaches the vCPU after the deadline");

static bool require_signed;
module_param(require_signed, bool, 0444);
MODULE_PARM_DESC(require_signed, "refuse unsigned images");

static char *transport = "auto";
module_param(transport, charp, 0444);
MODULE_PARM_DESC(transport, "hypercall transport: auto (TDCALL in a TD, else the hypercall UART if present, else port I/O), port, uart, tdcall, loopback (test only: no host)");

/* ---- Rust side (tetd-kernel/module/rust) -------------------------------- */
extern int tetdg_rs_init(u32 transport, u32 test_enabled, u32 require_signed, u32 timeout_ms);
extern void tetdg_rs_exit(void);
extern long tetdg_rs_ioctl(unsigned int cmd, unsigned long arg);
extern void tetdg_rs_proc_show(void *seq);

static DEFINE_MUTEX(tetdg_lock);

/* tetd::abi::ioctl::TRANSPORT_*; AUTO_NOT_TD lets Rust probe for the UART */
enum {
	TRANSPORT_PORT = 0, TRANSPORT_TDCALL = 1, TRANSPORT_LOOPBACK = 2, TRANSPORT_UART = 3,
	TRANSPORT_AUTO_NOT_TD = 255,
};
static u32 tetdg_transport = TRANSPORT_PORT;

/* ---- helpers called from Rust ------------------------------------------- */

void tetdg_k_log(u32 level, const u8 *msg, size_t len)
{
	int n = len > 1024 ? 1024 : (int)len;

	switch (level) {
	case 0:
		pr_err("tetdg: %.*s\n", n, msg);
		break;
	case 1:
		pr_warn("tetdg: %.*s\n", n, msg);
		break;
	case 2:
		pr_info("tetdg: %.*s\n", n, msg);
		break;
	default:
		pr_debug("tetdg: %.*s\n", n, msg);
		break;
	}
}

void *tetdg_k_alloc(size_t size)
{
	return kvmalloc(size, GFP_KERNEL);
}

void tetdg_k_free(void *p)
{
	kvfree(p);
}

/* Bytes NOT copied (0 = success), like copy_from_user. */
unsigned long tetdg_k_copy_from_user(void *dst, u64 src, size_t n)
{
	return copy_from_user(dst, (const void __user *)(uintptr_t)src, n);
}

unsigned long tetdg_k_copy_to_user(u64 dst, const void *src, size_t n)
{
	return copy_to_user((void __user *)(uintptr_t)dst, src, n);
}

void tetdg_k_random(void *buf, size_t n)
{
	get_random_bytes(buf, n);
}

u64 tetdg_k_time_ns(void)
{
	return ktime_get_ns();
}

u32 tetdg_k_tsc_khz(void)
{
	return tsc_khz;
}

void tetdg_k_seq_write(void *seq, const u8 *buf, size_t len)
{
	seq_write((struct seq_file *)seq, buf, len);
}

u32 tetdg_k_cpu(void)
{
	return smp_processor_id();
}

void tetdg_k_preempt_disable(void)
{
	preempt_disable();
}

void tetdg_k_preempt_enable(void)
{
	preempt_enable();
}

unsigned long tetdg_k_irq_save(void)
{
	unsigned long flags;

	local_irq_save(flags);
	return flags;
}

void tetdg_k_irq_restore(unsigned long flags)
{
	local_irq_restore(flags);
}

/* Saves the user FPU state and disables preemption (x86 kernel_fpu_begin). */
void tetdg_k_fpu_begin(void)
{
	kernel_fpu_begin();
}

void tetdg_k_fpu_end(void)
{
	kernel_fpu_end();
}

/* Re-raise an NMI that arrived while an agent ran on its own IDT. */
void tetdg_k_raise_nmi(void)
{
	apic->send_IPI_self(NMI_VECTOR);
}

/* Physical address of a kernel virtual address (direct map, vmalloc, module). */
u64 tetdg_k_virt_to_phys(const void *va)
{
	unsigned long off = (unsigned long)va & ~PAGE_MASK;

	struct page *pg;

	if (virt_addr_valid(va))
		return (u64)__pa(va);
	/* vmalloc area and module space (is_vmalloc_or_module_addr is not exported) */
	pg = vmalloc_to_page(va);
	return pg ? (u64)page_to_phys(pg) + off : 0;
}

/*
 * Loopback transport (module parameter transport=loopback): TEST ONLY, for
 * machines where the guest cannot run under the project's VMM (e.g. plain
 * QEMU/TCG). The module answers its own hypercalls: a zone is a block of
 * guest RAM pages, VMM_ENTER/VMM_RESUME only check the state (nothing is
 * blocked), AGENT_FAULT is logged. It exercises the guest mechanisms (zone
 * mapping and protections, both call modes, fault containment), never the
 * host's; /proc/tetdg_info and INFO report it.
 */
#define TETDG_LB_MAX 32
static struct tetdg_lb_zone {
	u64 id;
	struct page *pages;
	unsigned int order;
	u64 npages;
	bool running;
} tetdg_lb[TETDG_LB_MAX];

/* tetd::abi numbers used here (checked against the Rust side at build time
 * by tetdg_rs_init's assertions): leaves 1..4 and 7, errors 201..206, 14. */
enum {
	LB_ACCESS = 1, LB_ENTER = 2, LB_RESUME = 3, LB_DISABLE = 4, LB_FAULT = 7,
	LB_E_NOMEM = 14, LB_E_UNSUPPORTED = 11, LB_E_UNKNOWN = 201, LB_E_RUNNING = 203,
	LB_E_NOTRUNNING = 204, LB_E_REGISTERED = 206, LB_E_TABLEFULL = 301,
};

static struct tetdg_lb_zone *tetdg_lb_find(u64 id)
{
	int i;

	for (i = 0; i < TETDG_LB_MAX; i++)
		if (tetdg_lb[i].pages && tetdg_lb[i].id == id)
			return &tetdg_lb[i];
	return NULL;
}

static void tetdg_loopback(const u64 *in, u64 *out)
{
	u64 leaf = in[1], id = in[2];
	struct tetdg_lb_zone *z = tetdg_lb_find(id);
	int i;

	out[0] = 0;
	out[1] = out[2] = out[3] = 0;
	switch (leaf) {
	case LB_ACCESS:
		if (z) {
			out[0] = LB_E_REGISTERED;
			return;
		}
		for (i = 0; i < TETDG_LB_MAX && tetdg_lb[i].pages; i++)
			;
		if (i == TETDG_LB_MAX) {
			out[0] = LB_E_TABLEFULL;
			return;
		}
		z = &tetdg_lb[i];
		z->order = get_order(in[3] << PAGE_SHIFT);
		z->pages = in[3] ? alloc_pages(GFP_KERNEL | __GFP_ZERO, z->order) : NULL;
		if (!z->pages) {
			out[0] = LB_E_NOMEM;
			return;
		}
		z->id = id;
		z->npages = in[3];
		z->running = false;
		out[1] = page_to_phys(z->pages);
		out[2] = in[3];
		return;
	case LB_ENTER:
	case LB_RESUME:
		if (!z) {
			out[0] = LB_E_UNKNOWN;
		} else if (z->running == (leaf == LB_ENTER)) {
			out[0] = leaf == LB_ENTER ? LB_E_RUNNING : LB_E_NOTRUNNING;
		} else {
			z->running = leaf == LB_ENTER;
		}
		return;
	case LB_FAULT:
		pr_info("tetdg: loopback host: AGENT_FAULT agent %#llx vector %llu address %#llx\n",
			id, in[3], in[4]);
		out[0] = z ? 0 : LB_E_UNKNOWN;
		return;
	case LB_DISABLE:
		if (!z) {
			out[0] = LB_E_UNKNOWN;
			return;
		}
		__free_pages(z->pages, z->order);
		z->pages = NULL;
		return;
	default:
		out[0] = LB_E_UNSUPPORTED;
	}
}

static void *tetdg_loopback_map(u64 gpa, u64 npages)
{
	struct page **pages;
	void *va;
	u64 i;
	int k;

	for (k = 0; k < TETDG_LB_MAX; k++) {
		struct tetdg_lb_zone *z = &tetdg_lb[k];

		if (z->pages && page_to_phys(z->pages) == gpa && z->npages == npages)
			break;
	}
	if (k == TETDG_LB_MAX)
		return NULL;
	pages = kvmalloc_array(npages, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return NULL;
	for (i = 0; i < npages; i++)
		pages[i] = tetdg_lb[k].pages + i;
	va = vmap(pages, (unsigned int)npages, VM_MAP, PAGE_KERNEL);
	kvfree(pages);
	return va;
}

static void tetdg_loopback_exit(void)
{
	int i;

	for (i = 0; i < TETDG_LB_MAX; i++) {
		if (tetdg_lb[i].pages) {
			__free_pages(tetdg_lb[i].pages, tetdg_lb[i].order);
			tetdg_lb[i].pages = NULL;
		}
	}
}

/*
 * Zone memory: guest-physical pages above RAM with no struct page. vmap_pfn()
 * (mm/vmalloc.c, CONFIG_VMAP_PFN, EXPORT_SYMBOL_GPL) maps such PFNs and
 * refuses pfn_valid() ones; it forces NX, so the mapping starts RW+NX and
 * tetdg_k_set_prot() later makes code pages RO+X (never W+X).
 */
void *tetdg_k_map_zone(u64 gpa, u64 pages)
{
	unsigned long *pfns;
	void *va;
	u64 i;

	if (!pages || pages > (1u << 20) || (gpa & ~PAGE_MASK))
		return NULL;
	if (tetdg_transport == TRANSPORT_LOOPBACK)
		return tetdg_loopback_map(gpa, pages);
	pfns = kvmalloc_array(pages, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return NULL;
	for (i = 0; i < pages; i++)
		pfns[i] = (unsigned long)(gpa >> PAGE_SHIFT) + i;
	va = vmap_pfn(pfns, (unsigned int)pages, PAGE_KERNEL);
	kvfree(pfns);
	return va;
}

void tetdg_k_unmap_zone(void *va)
{
	vunmap(va);
}

static void tetdg_flush_all(void *unused)
{
	__flush_tlb_all();
}

enum { PROT_R = 1, PROT_W = 2, PROT_X = 4 };

/*
 * Set the permissions of `pages` 4 KiB pages of a zone mapping made by
 * tetdg_k_map_zone(): PROT_R|PROT_W -> RW+NX, PROT_R|PROT_X -> RO+X,
 * PROT_R -> RO+NX, 0 -> not present (a guard page). One PTE write changes
 * both W and X, so no PTE is ever W+X. Then every CPU flushes its TLB.
 * Returns 0 or -EINVAL (not a 4 KiB PTE of a present page, or W+X asked).
 */
int tetdg_k_set_prot(void *va, u64 pages, u32 prot)
{
	unsigned long addr = (unsigned long)va;
	u64 i;
	int ret = 0;

	if ((prot & PROT_W) && (prot & PROT_X))
		return -EINVAL;
	if ((addr & ~PAGE_MASK) || !is_vmalloc_addr(va))
		return -EINVAL;
	for (i = 0; i < pages; i++, addr += PAGE_SIZE) {
		unsigned int level;
		pte_t *ptep = lookup_address(addr, &level);
		pte_t pte;

		if (!ptep || level != PG_LEVEL_4K) {
			ret = -EINVAL;
			break;
		}
		pte = *ptep;
		if (!prot) {
			pte_clear(&init_mm, addr, ptep);
			continue;
		}
		if (!pte_present(pte) && pte_none(pte)) {
			ret = -EINVAL;
			break;
		}
		pte = pte_set_flags(pte, _PAGE_PRESENT);
		pte = (prot & PROT_W) ? pte_mkwrite(pte) : pte_wrprotect(pte);
		pte = (prot & PROT_X) ? pte_mkexec(pte) : pte_set_flags(pte, _PAGE_NX);
		set_pte(ptep, pte);
	}
	on_each_cpu(tetdg_flush_all, NULL, 1);
	return ret;
}

/* A Rust panic: a bug in the module. */
void __noreturn tetdg_k_bug(void)
{
	BUG();
}

/* ---- hypercall transports ------------------------------------------------ */

/*
 * Register convention (tetd::abi::regs): R10 = TETD_VMCALL_VENDOR (in) /
 * status (out), R11 = leaf (in) / result 0, R12..R15 = args, R12/R13 =
 * results 1/2. The Rust side passes the vendor value, leaf and arguments.
 */
struct tetdg_hc {
	u64 r10, r11, r12, r13, r14, r15;
};

#define TETDG_SIM_PORT 0x0e40 /* tetd::abi::SIM_HYPERCALL_PORT (checked by Rust) */

/* Simulated transport: KVM exits on the port write and rewrites the registers. */
static void tetdg_hc_port(struct tetdg_hc *h)
{
	register u64 r10 asm("r10") = h->r10;
	register u64 r11 asm("r11") = h->r11;
	register u64 r12 asm("r12") = h->r12;
	register u64 r13 asm("r13") = h->r13;
	register u64 r14 asm("r14") = h->r14;
	register u64 r15 asm("r15") = h->r15;

	asm volatile("outb %%al, %%dx"
		     : "+r"(r10), "+r"(r11), "+r"(r12), "+r"(r13), "+r"(r14), "+r"(r15)
		     : "a"(0), "d"(TETDG_SIM_PORT)
		     : "memory");
	h->r10 = r10;
	h->r11 = r11;
	h->r12 = r12;
	h->r13 = r13;
	h->r14 = r14;
	h->r15 = r15;
}

/*
 * One hypercall (port I/O or loopback; TDCALL is done in Rust with
 * tetd::tdcall, which also marshals TDG.MEM.PAGE.ACCEPT and
 * TDG.MR.RTMR.EXTEND). in[0] = vendor (R10), in[1] = leaf, in[2..6] = args;
 * out[0] = status (R10), out[1..4] = results (R11..R13). Returns 0, or
 * non-zero if the transport itself failed (TDCALL completion status).
 */
u64 tetdg_k_hypercall(const u64 *in, u64 *out)
{
	struct tetdg_hc h = {
		.r10 = in[0], .r11 = in[1], .r12 = in[2],
		.r13 = in[3], .r14 = in[4], .r15 = in[5],
	};
	u64 ret = 0;

	if (tetdg_transport == TRANSPORT_LOOPBACK) {
		tetdg_loopback(in, out);
		return 0;
	}
	if (tetdg_transport == TRANSPORT_TDCALL)
		return ~0ULL; /* the TDCALL transport is in Rust (tetd::tdcall) */
	tetdg_hc_port(&h);
	out[0] = h.r10;
	out[1] = h.r11;
	out[2] = h.r12;
	out[3] = h.r13;
	return ret;
}

/* A TD: the kernel says so, or CPUID leaf 0x21 reads "IntelTDX    ". */
static bool tetdg_in_td(void)
{
	u32 eax, sig[3];

	if (cpu_feature_enabled(X86_FEATURE_TDX_GUEST))
		return true;
	if (boot_cpu_data.cpuid_level < 0x21)
		return false;
	cpuid_count(0x21, 0, &eax, &sig[0], &sig[1], &sig[2]);
	return !memcmp("IntelTDX    ", sig, 12);
}

/* ---- device and /proc ---------------------------------------------------- */

static long tetdg_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	long ret;

	if (mutex_lock_interruptible(&tetdg_lock))
		return -ERESTARTSYS;
	ret = tetdg_rs_ioctl(cmd, arg);
	mutex_unlock(&tetdg_lock);
	return ret;
}

static const struct file_operations tetdg_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = tetdg_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice tetdg_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "tetdg",
	.fops = &tetdg_fops,
	.mode = 0600,
};

static int tetdg_proc_show(struct seq_file *m, void *v)
{
	mutex_lock(&tetdg_lock);
	tetdg_rs_proc_show(m);
	mutex_unlock(&tetdg_lock);
	return 0;
}

static struct proc_dir_entry *tetdg_proc;

static int __init tetdg_init(void)
{
	int ret;
	bool td = tetdg_in_td();

	if (!strcmp(transport, "tdcall"))
		tetdg_transport = TRANSPORT_TDCALL;
	else if (!strcmp(transport, "port"))
		tetdg_transport = TRANSPORT_PORT;
	else if (!strcmp(transport, "loopback"))
		tetdg_transport = TRANSPORT_LOOPBACK;
	else if (!strcmp(transport, "uart"))
		tetdg_transport = TRANSPORT_UART;
	else if (!strcmp(transport, "auto"))
		tetdg_transport = td ? TRANSPORT_TDCALL : TRANSPORT_AUTO_NOT_TD;
	else {
		pr_err("tetdg: transport=%s: expected auto, port, uart, tdcall or loopback\n", transport);
		return -EINVAL;
	}
	if (tetdg_transport == TRANSPORT_TDCALL && !td) {
		pr_err("tetdg: transport=tdcall but this guest is not a TDX trust domain\n");
		return -EINVAL;
	}

	ret = tetdg_rs_init(tetdg_transport, test_ioctl, require_signed, timeout_ms);
	if (ret)
		return ret;
	ret = misc_register(&tetdg_misc);
	if (ret) {
		tetdg_rs_exit();
		return ret;
	}
	tetdg_proc = proc_create_single("tetdg_info", 0444, NULL, tetdg_proc_show);
	if (!tetdg_proc) {
		misc_deregister(&tetdg_misc);
		tetdg_rs_exit();
		return -ENOMEM;
	}
	pr_info("tetdg: loaded%s\n", test_ioctl ? " (TEST ioctl enabled)" : "");
	return 0;
}

static void __exit tetdg_exit(void)
{
	proc_remove(tetdg_proc);
	misc_deregister(&tetdg_misc);
	mutex_lock(&tetdg_lock);
	tetdg_rs_exit();
	mutex_unlock(&tetdg_lock);
	tetdg_loopback_exit();
	pr_info("tetdg: unloaded\n");
}

module_init(tetdg_init);
module_exit(tetdg_exit);
