//! The TETD binary interface: the one definition of every number and struct
//! that crosses a boundary (agent ↔ runtime, guest ↔ host, tool ↔ image).
//!
//! * Hypercall leaves and their register convention ([`Leaf`], [`regs`]).
//! * Status / error codes ([`Error`]), used by agents, the loader, the guest
//!   module and the host alike.
//! * The agent descriptor that `#[tetd::agent]` emits ([`AgentDescriptor`]).
//! * The call frame and services table an agent entry receives
//!   ([`CallFrame`], [`Services`]).
//! * Intel TDX leaf numbers the host side models ([`tdx`]).

use core::fmt;

/// Version of the agent ABI (call frame, descriptor, services table layout).
pub const ABI_VERSION: u32 = 1;

/// Size of a page everywhere in TETD (images, zones, EPT model).
pub const PAGE_SIZE: u64 = 4096;

// ---------------------------------------------------------------------------
// Hypercalls (guest -> host)
// ---------------------------------------------------------------------------

/// Value of R10 that marks a TETD hypercall.
///
/// The TDX Guest-Hypervisor Communication Interface (GHCI) reserves
/// `R10 == 0` of `TDG.VP.VMCALL` for the standard sub-functions (R11 = exit
/// reason / GHCI function such as `0x10001 MapGPA`) and lets any non-zero R10
/// select a vendor-specific interface. TETD uses its own non-zero value, so no
/// TETD leaf can ever be confused with a standard TDVMCALL.
pub const TETD_VMCALL_VENDOR: u64 = 0x5445_5444; // "TETD"

/// I/O port of the simulated transport (KVM without TDX): the guest loads the
/// same registers as for `TDG.VP.VMCALL` and executes `out %al, $port`; the
/// VMM sees a `KVM_EXIT_IO`, reads the registers, answers and writes them back.
pub const SIM_HYPERCALL_PORT: u16 = 0x0e40;

/// I/O port the guest writes its exit status to (one byte) to end the VM.
pub const SIM_EXIT_PORT: u16 = 0x0e44;

/// Guest-physical base of the secret-zone window of the simulated host.
///
/// Zones live above the guest's RAM (and above the 32-bit PCI hole), in GPA
/// space the guest kernel has no RAM, no `struct page` and no e820 entry for.
/// The host backs a zone with its own memory slot only while the zone exists
/// and takes the slot away while the zone is blocked, so a guest access to a
/// blocked zone exits to the VMM (reported as a violation). The real-TDX path
/// uses the same window for TDH.MEM.PAGE.AUG'ed pages.
pub const ZONE_GPA_BASE: u64 = 0x1_0000_0000;
/// Size of the secret-zone window (256 MiB).
pub const ZONE_GPA_SIZE: u64 = 0x1000_0000;

/// The "uart" hypercall transport, for hosts that run the guest under QEMU
/// with software emulation (TCG), where no I/O port exit carries register
/// state to the host.
///
/// The guest sends the `TDG.VP.VMCALL` registers of [`regs`] as one byte
/// frame ([`Request`], [`REQUEST_LEN`] bytes) through a dedicated 16550 UART
/// at [`uart::IO_BASE`](IO_BASE) (not a legacy COM port, so Linux' 8250
/// driver leaves it alone as long as nothing describes it: the host's QEMU
/// engine boots the guest with `pnpacpi=off` because QEMU lists the UART in
/// its ACPI tables) and reads the answer ([`Response`], [`RESPONSE_LEN`]
/// bytes) back from it, polling the line status register with interrupts
/// off:
///
/// * set-up, once: `IER = 0` (no interrupts), `LCR = 0x03` (8N1, DLAB off),
///   `FCR = 0x07` (FIFOs on and cleared), `MCR = 0x03` (DTR, RTS; loopback
///   off); then drain stale input (read `RBR` while `LSR & LSR_DR`);
/// * send: for each byte, wait for `LSR & LSR_THRE`, write `THR`;
/// * receive: for each byte, wait for `LSR & LSR_DR`, read `RBR`.
///
/// Only one frame may be in flight: the guest serialises its hypercalls
/// (one lock around send + receive, on every vCPU) and the host answers
/// each request before it reads the next. `vcpu` in the request is the
/// guest's own claim (the CPU that holds the lock, with preemption off); the
/// host cannot check it on this transport, unlike the port transport.
///
/// Frames are little endian and end with a Fletcher-16 [`checksum`] of the
/// bytes before it. A response echoes the request's `seq`, so a guest can
/// tell a stale answer from the one it waits for. Frame layout:
///
/// | request byte | field | response byte | field |
/// |---|---|---|---|
/// | 0..2 | [`REQUEST_MAGIC`] | 0..2 | [`RESPONSE_MAGIC`] |
/// | 2..4 | seq (u16) | 2..4 | seq (u16, echoed) |
/// | 4..8 | vcpu (u32) | 4..36 | R10..R13 (4 × u64) |
/// | 8..56 | R10..R15 (6 × u64) | 36..38 | checksum (u16) |
/// | 56..58 | checksum (u16) | | |
pub mod uart {
    use super::regs::{HypercallArgs, HypercallRet};
    use super::TETD_VMCALL_VENDOR;

    /// I/O base of the hypercall UART (8 ports, `0x0e48..=0x0e4f`; next to
    /// [`super::SIM_HYPERCALL_PORT`] and [`super::SIM_EXIT_PORT`], not a
    /// legacy COM port).
    pub const IO_BASE: u16 = 0x0e48;
    /// Register offsets from [`IO_BASE`] (16550).
    pub const REG_DATA: u16 = 0; // RBR (read) / THR (write)
    /// Interrupt enable register.
    pub const REG_IER: u16 = 1;
    /// FIFO control register (write).
    pub const REG_FCR: u16 = 2;
    /// Line control register.
    pub const REG_LCR: u16 = 3;
    /// Modem control register.
    pub const REG_MCR: u16 = 4;
    /// Line status register.
    pub const REG_LSR: u16 = 5;
    /// LSR: a received byte is waiting in RBR.
    pub const LSR_DR: u8 = 0x01;
    /// LSR: THR can take a byte.
    pub const LSR_THRE: u8 = 0x20;

    /// First two bytes of a request ("TH": TETD hypercall).
    pub const REQUEST_MAGIC: [u8; 2] = *b"TH";
    /// First two bytes of a response ("TA": TETD answer).
    pub const RESPONSE_MAGIC: [u8; 2] = *b"TA";
    /// Bytes in a request frame.
    pub const REQUEST_LEN: usize = 58;
    /// Bytes in a response frame.
    pub const RESPONSE_LEN: usize = 38;

    /// A hypercall as the guest sends it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Request {
        /// Sequence number chosen by the guest (echoed in the response).
        pub seq: u16,
        /// The vCPU the guest says it runs on.
        pub vcpu: u32,
        /// R10..R15 (R10 must be [`TETD_VMCALL_VENDOR`]).
        pub regs: [u64; 6],
    }

    impl Request {
        /// A TETD hypercall (R10 = [`TETD_VMCALL_VENDOR`]).
        pub const fn new(seq: u16, vcpu: u32, call: HypercallArgs) -> Request {
            let a = call.args;
            Request {
                seq,
                vcpu,
                regs: [TETD_VMCALL_VENDOR, call.leaf, a[0], a[1], a[2], a[3]],
            }
        }

        /// The call, or `None` if R10 is not [`TETD_VMCALL_VENDOR`] (the
        /// host answers `InvalidArgument` without calling TETD-H, as the
        /// port transport does).
        pub const fn args(&self) -> Option<HypercallArgs> {
            if self.regs[0] != TETD_VMCALL_VENDOR {
                return None;
            }
            let r = &self.regs;
            Some(HypercallArgs {
                leaf: r[1],
                args: [r[2], r[3], r[4], r[5]],
            })
        }

        /// The frame.
        pub fn encode(&self) -> [u8; REQUEST_LEN] {
            let mut f = [0u8; REQUEST_LEN];
            f[0..2].copy_from_slice(&REQUEST_MAGIC);
            f[2..4].copy_from_slice(&self.seq.to_le_bytes());
            f[4..8].copy_from_slice(&self.vcpu.to_le_bytes());
            for (i, r) in self.regs.iter().enumerate() {
                f[8 + 8 * i..16 + 8 * i].copy_from_slice(&r.to_le_bytes());
            }
            let c = checksum(&f[..REQUEST_LEN - 2]);
            f[REQUEST_LEN - 2..].copy_from_slice(&c.to_le_bytes());
            f
        }

        /// Parses a frame.
        pub fn decode(f: &[u8; REQUEST_LEN]) -> Result<Request, FrameError> {
            if f[0..2] != REQUEST_MAGIC {
                return Err(FrameError::BadMagic);
            }
            check(f)?;
            let mut regs = [0u64; 6];
            for (i, r) in regs.iter_mut().enumerate() {
                *r = u64_at(f, 8 + 8 * i);
            }
            Ok(Request {
                seq: u16::from_le_bytes([f[2], f[3]]),
                vcpu: u32::from_le_bytes([f[4], f[5], f[6], f[7]]),
                regs,
            })
        }
    }

    /// The host's answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Response {
        /// The request's sequence number.
        pub seq: u16,
        /// R10 (status) and R11..R13 (results).
        pub regs: [u64; 4],
    }

    impl Response {
        /// The answer to request `seq`.
        pub const fn new(seq: u16, ret: HypercallRet) -> Response {
            let r = ret.results;
            Response {
                seq,
                regs: [ret.status, r[0], r[1], r[2]],
            }
        }

        /// The answer as the port transport would leave it in R10..R13.
        pub const fn ret(&self) -> HypercallRet {
            HypercallRet {
                status: self.regs[0],
                results: [self.regs[1], self.regs[2], self.regs[3]],
            }
        }

        /// The frame.
        pub fn encode(&self) -> [u8; RESPONSE_LEN] {
            let mut f = [0u8; RESPONSE_LEN];
            f[0..2].copy_from_slice(&RESPONSE_MAGIC);
            f[2..4].copy_from_slice(&self.seq.to_le_bytes());
            for (i, r) in self.regs.iter().enumerate() {
                f[4 + 8 * i..12 + 8 * i].copy_from_slice(&r.to_le_bytes());
            }
            let c = checksum(&f[..RESPONSE_LEN - 2]);
            f[RESPONSE_LEN - 2..].copy_from_slice(&c.to_le_bytes());
            f
        }

        /// Parses a frame.
        pub fn decode(f: &[u8; RESPONSE_LEN]) -> Result<Response, FrameError> {
            if f[0..2] != RESPONSE_MAGIC {
                return Err(FrameError::BadMagic);
            }
            check(f)?;
            let mut regs = [0u64; 4];
            for (i, r) in regs.iter_mut().enumerate() {
                *r = u64_at(f, 4 + 8 * i);
            }
            Ok(Response {
                seq: u16::from_le_bytes([f[2], f[3]]),
                regs,
            })
        }
    }

    /// Why a frame was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FrameError {
        /// The first two bytes are not the magic of this frame type.
        BadMagic,
        /// The checksum field does not match the bytes before it.
        BadChecksum {
            /// Checksum of the received bytes.
            computed: u16,
            /// The frame's checksum field.
            received: u16,
        },
    }

    impl core::fmt::Display for FrameError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                FrameError::BadMagic => f.write_str("bad frame magic"),
                FrameError::BadChecksum { computed, received } => write!(
                    f,
                    "frame checksum {received:#06x}, bytes sum to {computed:#06x}"
                ),
            }
        }
    }

    /// Fletcher-16 (modulo 255) of `data`: low byte = sum of the bytes,
    /// high byte = sum of the running sums.
    pub const fn checksum(data: &[u8]) -> u16 {
        let (mut s1, mut s2) = (0u16, 0u16);
        let mut i = 0;
        while i < data.len() {
            s1 = (s1 + data[i] as u16) % 255;
            s2 = (s2 + s1) % 255;
            i += 1;
        }
        (s2 << 8) | s1
    }

    fn check(f: &[u8]) -> Result<(), FrameError> {
        let n = f.len();
        let computed = checksum(&f[..n - 2]);
        let received = u16::from_le_bytes([f[n - 2], f[n - 1]]);
        if computed == received {
            Ok(())
        } else {
            Err(FrameError::BadChecksum { computed, received })
        }
    }

    fn u64_at(f: &[u8], at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&f[at..at + 8]);
        u64::from_le_bytes(b)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn request_round_trip_and_layout() {
            let call = HypercallArgs {
                leaf: 8,
                args: [0x1122_3344_5566_7788, 2, 3, u64::MAX],
            };
            let r = Request::new(0xbeef, 3, call);
            let f = r.encode();
            assert_eq!(&f[0..2], b"TH");
            assert_eq!(&f[2..4], &[0xef, 0xbe]);
            assert_eq!(&f[4..8], &[3, 0, 0, 0]);
            assert_eq!(&f[8..16], &TETD_VMCALL_VENDOR.to_le_bytes());
            assert_eq!(&f[16..24], &8u64.to_le_bytes());
            assert_eq!(&f[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
            assert_eq!(&f[48..56], &[0xff; 8]);
            assert_eq!(Request::decode(&f), Ok(r));
            assert_eq!(r.args(), Some(call));
        }

        #[test]
        fn response_round_trip() {
            let ret = HypercallRet {
                status: 0,
                results: [0x1_0000_0000, 4, 0],
            };
            let r = Response::new(7, ret);
            let f = r.encode();
            assert_eq!(&f[0..2], b"TA");
            assert_eq!(Response::decode(&f), Ok(r));
            assert_eq!(r.ret(), ret);
        }

        #[test]
        fn corruption_is_detected() {
            let f = Request::new(1, 0, HypercallArgs::default()).encode();
            for i in 2..REQUEST_LEN {
                let mut g = f;
                g[i] ^= 0x10;
                assert!(
                    matches!(Request::decode(&g), Err(FrameError::BadChecksum { .. })),
                    "flip in byte {i} not detected"
                );
            }
            let mut g = f;
            g[0] = b'X';
            assert_eq!(Request::decode(&g), Err(FrameError::BadMagic));
            // A request is not a response and vice versa.
            let resp = Response::new(1, HypercallRet::default()).encode();
            let mut as_req = [0u8; REQUEST_LEN];
            as_req[..RESPONSE_LEN].copy_from_slice(&resp);
            assert_eq!(Request::decode(&as_req), Err(FrameError::BadMagic));
        }

        #[test]
        fn wrong_vendor_has_no_args() {
            let mut r = Request::new(1, 0, HypercallArgs::default());
            r.regs[0] = 0x1234;
            assert_eq!(Request::decode(&r.encode()).unwrap().args(), None);
        }

        #[test]
        fn fletcher16_reference_values() {
            // Published test vectors of Fletcher-16.
            assert_eq!(checksum(b"abcde"), 0xC8F0);
            assert_eq!(checksum(b"abcdef"), 0x2057);
            assert_eq!(checksum(b"abcdefgh"), 0x0627);
            assert_eq!(checksum(b""), 0);
        }
    }
}

/// The runtime measurement register the guest module extends with the
/// measurement (SHA-384, 48 bytes) of every image it loads, in load order:
/// `RTMR[3] = SHA-384(RTMR[3] || measurement)` (TDG.MR.RTMR.EXTEND, or the
/// RTMR_EXTEND leaf on the simulated host). RTMR0..2 are what TDVF and the
/// boot chain extend (firmware configuration, boot loader, kernel command
/// line and initrd); RTMR3 is left to the TD. `tetd-pack measure`
/// recomputes the value from the image files ([`crate::measure`]).
pub const AGENT_RTMR_INDEX: u64 = 3;

/// Register convention, identical for `TDG.VP.VMCALL` and the simulated port
/// transport (it is the convention of Linux' `__tdx_hypercall`).
///
/// | register | in                     | out                          |
/// |----------|------------------------|------------------------------|
/// | R10      | [`TETD_VMCALL_VENDOR`] | status (0 = ok, else [`Error`] code) |
/// | R11      | leaf ([`Leaf`])        | result 0                     |
/// | R12      | argument 0             | result 1                     |
/// | R13      | argument 1             | result 2                     |
/// | R14      | argument 2             | —                            |
/// | R15      | argument 3             | —                            |
pub mod regs {
    /// Arguments of one hypercall, as the guest loads them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct HypercallArgs {
        /// R11.
        pub leaf: u64,
        /// R12..R15.
        pub args: [u64; 4],
    }

    /// What the host answers, as the guest reads it back.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct HypercallRet {
        /// R10: 0 on success, else an [`super::Error`] code.
        pub status: u64,
        /// R11..R13.
        pub results: [u64; 3],
    }

    impl HypercallRet {
        /// A successful answer with the given results.
        pub const fn ok(results: [u64; 3]) -> Self {
            Self { status: 0, results }
        }
        /// A failed answer.
        pub const fn err(e: super::Error) -> Self {
            Self {
                status: e as u64,
                results: [0; 3],
            }
        }
        /// The answer as a Rust result.
        pub fn into_result(self) -> Result<[u64; 3], super::Error> {
            if self.status == 0 {
                Ok(self.results)
            } else {
                Err(super::Error::from_code(self.status))
            }
        }
    }
}

/// TETD hypercall leaves (value of R11 when R10 == [`TETD_VMCALL_VENDOR`]).
///
/// Arguments per leaf (R12..R15) and results (R11..R13) are documented in
/// `docs/protocol.md`.
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// Register a loaded agent. args: `[agent_id, zone_pages,
    /// access::encode(mode, flags), measurement_gpa]`; results: `[zone_gpa,
    /// zone_pages, zone_flags]` (`access::ZONE_FLAG_*`). The host allocates
    /// the zone, maps it into the TD (blocked until the first VMM_ENTER) and
    /// records the agent.
    AgentAccess = 1,
    /// About to run agent `id`. args: `[agent_id, vcpu, 0, 0]`; results:
    /// `[calls, 0, 0]`. The host checks the agent and state, unblocks the zone.
    VmmEnter = 2,
    /// The call of agent `id` finished. args: `[agent_id, vcpu, status, 0]`;
    /// results: `[calls, failures, 0]`. The host blocks the zone again
    /// (BLOCK + TRACK) and notifies.
    VmmResume = 3,
    /// Remove agent `id`: the host blocks, removes and frees its zone.
    /// args: `[agent_id, 0, 0, 0]`.
    AgentDisable = 4,
    /// Re-enable an agent an admin disabled. args: `[agent_id, 0, 0, 0]`;
    /// results as AGENT_ACCESS (a fresh, zeroed zone).
    AgentEnable = 5,
    /// Extend a measurement register. args: `[rtmr_index, digest_gpa, 0, 0]`
    /// (the simulated host's model of TDG.MR.RTMR.EXTEND).
    RtmrExtend = 6,
    /// Report a fault inside an agent. args: `[agent_id, vector, address, 0]`;
    /// results: `[faults, 0, 0]`.
    AgentFault = 7,
    /// Query the host's view of an agent. args `[agent_id, ..]`, results
    /// `[state, calls, violations]`.
    AgentQuery = 8,
}

impl Leaf {
    /// All leaves, in numeric order.
    pub const ALL: [Leaf; 8] = [
        Leaf::AgentAccess,
        Leaf::VmmEnter,
        Leaf::VmmResume,
        Leaf::AgentDisable,
        Leaf::AgentEnable,
        Leaf::RtmrExtend,
        Leaf::AgentFault,
        Leaf::AgentQuery,
    ];

    /// Decode R11.
    pub fn from_u64(v: u64) -> Option<Leaf> {
        Self::ALL.iter().copied().find(|l| *l as u64 == v)
    }

    /// Upper-case name as in the original prototype (`TDCALL_FN_...`).
    pub const fn name(self) -> &'static str {
        match self {
            Leaf::AgentAccess => "AGENT_ACCESS",
            Leaf::VmmEnter => "VMM_ENTER",
            Leaf::VmmResume => "VMM_RESUME",
            Leaf::AgentDisable => "AGENT_DISABLE",
            Leaf::AgentEnable => "AGENT_ENABLE",
            Leaf::RtmrExtend => "RTMR_EXTEND",
            Leaf::AgentFault => "AGENT_FAULT",
            Leaf::AgentQuery => "AGENT_QUERY",
        }
    }
}

/// Intel TDX leaf numbers the host side models or issues.
///
/// Sources: Linux `arch/x86/include/asm/shared/tdx.h` (TDCALL leaves),
/// `arch/x86/virt/vmx/tdx/tdx.h` (SEAMCALL leaves), Intel TDX Module ABI
/// specification (leaf tables and completion status codes).
pub mod tdx {
    /// TDG.VP.VMCALL: call the host VMM.
    pub const TDG_VP_VMCALL: u64 = 0;
    /// TDG.VP.INFO.
    pub const TDG_VP_INFO: u64 = 1;
    /// TDG.MR.RTMR.EXTEND.
    pub const TDG_MR_RTMR_EXTEND: u64 = 2;
    /// TDG.MR.REPORT.
    pub const TDG_MR_REPORT: u64 = 4;
    /// TDG.MEM.PAGE.ACCEPT.
    pub const TDG_MEM_PAGE_ACCEPT: u64 = 6;

    /// TDH.MEM.PAGE.AUG.
    pub const TDH_MEM_PAGE_AUG: u64 = 6;
    /// TDH.MEM.RANGE.BLOCK.
    pub const TDH_MEM_RANGE_BLOCK: u64 = 7;
    /// TDH.MEM.PAGE.REMOVE.
    pub const TDH_MEM_PAGE_REMOVE: u64 = 29;
    /// TDH.MEM.TRACK.
    pub const TDH_MEM_TRACK: u64 = 38;
    /// TDH.MEM.RANGE.UNBLOCK.
    pub const TDH_MEM_RANGE_UNBLOCK: u64 = 39;

    /// TDH.MEM.SEPT.ADD (the kernel patch adds Secure-EPT pages for the zone
    /// window with it; Linux `arch/x86/virt/vmx/tdx/tdx.h`).
    pub const TDH_MEM_SEPT_ADD: u64 = 3;

    /// Page level in bits 2:0 of a GPA operand ("EPT mapping info"): 4 KiB.
    /// Linux `arch/x86/include/asm/shared/tdx.h` `TDX_PS_4K`; the same
    /// encoding is the Secure-EPT level of TDH.MEM.* (`pg_level_to_tdx_sept_level()`).
    pub const TDX_PS_4K: u64 = 0;
    /// Page level 2 MiB (`TDX_PS_2M`).
    pub const TDX_PS_2M: u64 = 1;
    /// Page level 1 GiB (`TDX_PS_1G`).
    pub const TDX_PS_1G: u64 = 2;
    /// Bits of a GPA operand that carry the level.
    pub const LEVEL_MASK: u64 = 0x7;

    /// Software status Linux returns when the SEAMCALL instruction itself
    /// failed (bit 63 | bits 47:40; Linux `arch/x86/include/asm/tdx.h`
    /// `TDX_SW_ERROR`).
    pub const TDX_SW_ERROR: u64 = (1 << 63) | (0xFF << 40);
    /// SEAMCALL VMfailInvalid (CF set: no TDX module loaded); Linux
    /// `TDX_SEAMCALL_VMFAILINVALID`.
    pub const TDX_SEAMCALL_VMFAILINVALID: u64 = TDX_SW_ERROR | 0xFFFF_0000;

    /// Number of runtime measurement registers (RTMR0..RTMR3); TDG.MR.RTMR.EXTEND
    /// rejects `index >= NUM_RTMRS` with [`TDX_OPERAND_INVALID`]
    /// (tdx-module `src/td_dispatcher/vm_exits/tdg_mr_rtmr_extend.c`).
    pub const NUM_RTMRS: usize = 4;
    /// Size of one RTMR and of the extension data (SHA-384 digest).
    pub const RTMR_SIZE: usize = 48;

    // --- Completion status codes (RAX after SEAMCALL / TDCALL) -------------
    //
    // Bits 63:32 are the status class, bits 31:0 carry details (usually the
    // operand id, e.g. `| OPERAND_ID_RCX`); compare classes with
    // `status & STATUS_MASK`. Bit 63 set = error; a status with bit 63 clear
    // and non-zero class is a warning (e.g. TDX_GPA_RANGE_ALREADY_BLOCKED).
    // Values: Intel TDX module `include/auto_gen/tdx_error_codes_defs.h`
    // (TDX_1.5.01); the subset Linux uses is in
    // `arch/x86/kvm/vmx/tdx_errno.h` (`TDX_SEAMCALL_STATUS_MASK` etc.).

    /// Mask selecting the status class (Linux `TDX_SEAMCALL_STATUS_MASK`).
    pub const STATUS_MASK: u64 = 0xFFFF_FFFF_0000_0000;
    /// Bit 63: the status is an error.
    pub const STATUS_ERROR_BIT: u64 = 1 << 63;
    /// TDX_SUCCESS.
    pub const TDX_SUCCESS: u64 = 0x0000_0000_0000_0000;
    /// TDX_OPERAND_INVALID.
    pub const TDX_OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
    /// TDX_OPERAND_ADDR_RANGE_ERROR.
    pub const TDX_OPERAND_ADDR_RANGE_ERROR: u64 = 0xC000_0101_0000_0000;
    /// TDX_OPERAND_BUSY (a lock could not be taken; retry).
    pub const TDX_OPERAND_BUSY: u64 = 0x8000_0200_0000_0000;
    /// TDX_PREVIOUS_TLB_EPOCH_BUSY (TDH.MEM.TRACK: a vCPU still runs in the
    /// previous TLB epoch).
    pub const TDX_PREVIOUS_TLB_EPOCH_BUSY: u64 = 0x8000_0201_0000_0000;
    /// TDX_PAGE_METADATA_INCORRECT (PAMT: e.g. the HPA given to AUG is not free).
    pub const TDX_PAGE_METADATA_INCORRECT: u64 = 0xC000_0300_0000_0000;
    /// TDX_EPT_WALK_FAILED (no Secure-EPT path down to the requested level).
    pub const TDX_EPT_WALK_FAILED: u64 = 0xC000_0B00_0000_0000;
    /// TDX_EPT_ENTRY_FREE.
    pub const TDX_EPT_ENTRY_FREE: u64 = 0xC000_0B01_0000_0000;
    /// TDX_EPT_ENTRY_NOT_FREE.
    pub const TDX_EPT_ENTRY_NOT_FREE: u64 = 0xC000_0B02_0000_0000;
    /// TDX_GPA_RANGE_NOT_BLOCKED (TDH.MEM.PAGE.REMOVE of an unblocked page).
    pub const TDX_GPA_RANGE_NOT_BLOCKED: u64 = 0xC000_0B06_0000_0000;
    /// TDX_GPA_RANGE_ALREADY_BLOCKED (warning class: bit 63 clear).
    pub const TDX_GPA_RANGE_ALREADY_BLOCKED: u64 = 0x0000_0B07_0000_0000;
    /// TDX_TLB_TRACKING_NOT_DONE (REMOVE / UNBLOCK before the blocking epoch
    /// was tracked).
    pub const TDX_TLB_TRACKING_NOT_DONE: u64 = 0xC000_0B08_0000_0000;
    /// TDX_PAGE_ALREADY_ACCEPTED (warning class: TDG.MEM.PAGE.ACCEPT of a
    /// mapped page).
    pub const TDX_PAGE_ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
    /// TDX_PAGE_SIZE_MISMATCH.
    pub const TDX_PAGE_SIZE_MISMATCH: u64 = 0xC000_0B0B_0000_0000;
    /// TDX_EPT_ENTRY_STATE_INCORRECT (the Secure-EPT entry state does not
    /// allow this leaf).
    pub const TDX_EPT_ENTRY_STATE_INCORRECT: u64 = 0xC000_0B0D_0000_0000;

    /// Operand id RCX in the low bits of a status (tdx-module
    /// `OPERAND_ID_RCX`; Linux `TDX_OPERAND_ID_RCX`).
    pub const OPERAND_ID_RCX: u64 = 0x01;
    /// Operand id RDX.
    pub const OPERAND_ID_RDX: u64 = 0x02;
    /// Operand id R8.
    pub const OPERAND_ID_R8: u64 = 0x08;
    /// Operand id of the Secure-EPT tree (Linux `TDX_OPERAND_ID_SEPT`).
    pub const OPERAND_ID_SEPT: u64 = 0x92;
    /// Operand id of the TD epoch (Linux `TDX_OPERAND_ID_TD_EPOCH`).
    pub const OPERAND_ID_TD_EPOCH: u64 = 0xA9;

    /// Symbolic name of a status class (`status & STATUS_MASK`), for logs.
    pub fn status_name(status: u64) -> &'static str {
        match status & STATUS_MASK {
            TDX_SUCCESS => "TDX_SUCCESS",
            TDX_OPERAND_INVALID => "TDX_OPERAND_INVALID",
            TDX_OPERAND_ADDR_RANGE_ERROR => "TDX_OPERAND_ADDR_RANGE_ERROR",
            TDX_OPERAND_BUSY => "TDX_OPERAND_BUSY",
            TDX_PREVIOUS_TLB_EPOCH_BUSY => "TDX_PREVIOUS_TLB_EPOCH_BUSY",
            TDX_PAGE_METADATA_INCORRECT => "TDX_PAGE_METADATA_INCORRECT",
            TDX_EPT_WALK_FAILED => "TDX_EPT_WALK_FAILED",
            TDX_EPT_ENTRY_FREE => "TDX_EPT_ENTRY_FREE",
            TDX_EPT_ENTRY_NOT_FREE => "TDX_EPT_ENTRY_NOT_FREE",
            TDX_GPA_RANGE_NOT_BLOCKED => "TDX_GPA_RANGE_NOT_BLOCKED",
            TDX_GPA_RANGE_ALREADY_BLOCKED => "TDX_GPA_RANGE_ALREADY_BLOCKED",
            TDX_TLB_TRACKING_NOT_DONE => "TDX_TLB_TRACKING_NOT_DONE",
            TDX_PAGE_ALREADY_ACCEPTED => "TDX_PAGE_ALREADY_ACCEPTED",
            TDX_PAGE_SIZE_MISMATCH => "TDX_PAGE_SIZE_MISMATCH",
            TDX_EPT_ENTRY_STATE_INCORRECT => "TDX_EPT_ENTRY_STATE_INCORRECT",
            TDX_SW_ERROR => "TDX_SW_ERROR (the SEAMCALL/TDCALL instruction failed)",
            _ => "TDX_UNKNOWN_STATUS",
        }
    }
}

/// AGENT_ACCESS / AGENT_ENABLE argument 2 (R14) and result encoding.
///
/// R14 of AGENT_ACCESS carries the agent's flags and mode:
/// bits 31:0 = `AGENT_FLAG_*`, bits 39:32 = [`Mode`] as u8, bits 63:40 = 0.
/// Result 2 (R13) of AGENT_ACCESS / AGENT_ENABLE carries `ZONE_FLAG_*`.
pub mod access {
    use super::{Mode, AGENT_FLAGS_ALL};

    /// Shift of the mode byte in R14.
    pub const MODE_SHIFT: u32 = 32;
    /// R14 bit 40: register an **alias** — an agent id that names an agent
    /// inside another entry's zone (its *owner*) instead of a zone of its
    /// own. With it set, R13 (zone pages) must be 0 and R15 is the owner's
    /// id instead of a measurement GPA. Calls enter through the owner
    /// (VMM_ENTER/VMM_RESUME on an alias: [`super::Error::AliasEntry`]);
    /// AGENT_DISABLE / AGENT_ENABLE on an alias only change its admin state;
    /// releasing the owner (AGENT_DISABLE) removes its aliases.
    pub const ALIAS: u64 = 1 << 40;
    /// Bits of R14 that must be zero.
    pub const RESERVED_MASK: u64 = !0u64 << 41;

    /// Encode R14 for AGENT_ACCESS.
    pub const fn encode(mode: Mode, flags: u32) -> u64 {
        ((mode as u64) << MODE_SHIFT) | flags as u64
    }

    /// Encode R14 for AGENT_ACCESS of an alias ([`ALIAS`]).
    pub const fn encode_alias(mode: Mode, flags: u32) -> u64 {
        encode(mode, flags) | ALIAS
    }

    /// Whether R14 asks for an alias registration ([`ALIAS`]).
    pub const fn is_alias(r14: u64) -> bool {
        r14 & ALIAS != 0
    }

    /// First host id of the range the guest module (`tetdg`) registers
    /// image zones under: the zone of its image slot `n` is the host entry
    /// `IMAGE_ZONE_ID_BASE + n`, and every agent id of the image (static and
    /// dynamic) is an [`ALIAS`] of it. Agent ids in
    /// `IMAGE_ZONE_ID_BASE..=u32::MAX` are therefore refused by `tetdg` on a
    /// TETD host (a guest convention; TETD-H itself does not reserve ids).
    pub const IMAGE_ZONE_ID_BASE: u32 = 0xFFFF_FF00;

    /// Decode R14 (the [`ALIAS`] bit is ignored here; test it with
    /// [`is_alias`]); `None` if a reserved bit, an unknown flag or an
    /// unknown mode is set.
    pub fn decode(r14: u64) -> Option<(Mode, u32)> {
        if r14 & RESERVED_MASK != 0 {
            return None;
        }
        let flags = r14 as u32;
        if flags & !AGENT_FLAGS_ALL != 0 {
            return None;
        }
        let mode = Mode::from_u32(((r14 >> MODE_SHIFT) & 0xff) as u32)?;
        Some((mode, flags))
    }

    /// Zone flag (result 2): the zone pages are still PENDING in the Secure
    /// EPT; the guest must TDG.MEM.PAGE.ACCEPT each of them during its first
    /// VMM_ENTER..VMM_RESUME window (real-TDX backend). Clear when the host
    /// accepted on the guest's behalf (software model / KVM simulation).
    pub const ZONE_FLAG_ACCEPT_REQUIRED: u64 = 1 << 0;
}

/// The host's view of an agent, as AGENT_QUERY reports it in result 0.
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostAgentState {
    /// Registered; its zone is blocked (no call in progress).
    Idle = 1,
    /// Between VMM_ENTER and VMM_RESUME; its zone is mapped.
    Running = 2,
    /// Disabled; its zone was removed and freed.
    Disabled = 3,
}

impl HostAgentState {
    /// Decode.
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Idle),
            2 => Some(Self::Running),
            3 => Some(Self::Disabled),
            _ => None,
        }
    }
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Disabled => "disabled",
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

macro_rules! error_codes {
    ($( $(#[$m:meta])* $name:ident = $val:literal => $text:literal, )*) => {
        /// Every status TETD reports, with a stable number.
        ///
        /// 1..=99: agent call; 100..=199: image / loader; 200..=299: host
        /// (hypercall); 300..=399: guest module / transport.
        #[repr(u32)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Error {
            $( $(#[$m])* $name = $val, )*
        }

        impl Error {
            /// Every code, in numeric order.
            pub const ALL: &'static [Error] = &[$(Error::$name,)*];

            /// One-line description.
            pub const fn description(self) -> &'static str {
                match self { $( Error::$name => $text, )* }
            }

            /// Identifier-style name (`InvalidInput`).
            pub const fn name(self) -> &'static str {
                match self { $( Error::$name => stringify!($name), )* }
            }
        }
    };
}

error_codes! {
    // --- agent call ---
    /// The input was malformed for this agent.
    InvalidInput = 1 => "invalid input",
    /// The input is larger than the agent's max_input.
    InputTooLarge = 2 => "input larger than the agent's max_input",
    /// The output does not fit the output buffer / max_output.
    OutputTooLarge = 3 => "output larger than the agent's max_output",
    /// The agent panicked; the call was aborted.
    Panicked = 4 => "agent panicked",
    /// The agent faulted (page fault, #GP, #UD, ...); the call was aborted.
    Fault = 5 => "agent faulted",
    /// The agent did not return before the watchdog fired.
    Timeout = 6 => "agent timed out (watchdog)",
    /// Permission denied (e.g. admin operation from a non-admin agent).
    Denied = 7 => "permission denied",
    /// No such agent / object.
    NotFound = 8 => "not found",
    /// An internal error of the runtime.
    Internal = 9 => "internal error",
    /// A cryptographic check failed (bad tag, replay, wrong key).
    Crypto = 10 => "cryptographic check failed",
    /// The operation is not supported here.
    Unsupported = 11 => "operation not supported",
    /// The agent is disabled.
    Disabled = 12 => "agent is disabled",
    /// The agent is busy (another call in progress).
    Busy = 13 => "agent is busy",
    /// Out of memory (heap, zone pool).
    NoMemory = 14 => "out of memory",
    /// The agent's own failure code.
    AgentFailed = 15 => "agent reported failure",
    /// The agent ran out of stack (hit the guard page).
    StackOverflow = 16 => "agent overflowed its stack",

    // --- image / loader ---
    /// The file does not start with the image magic.
    BadMagic = 100 => "not a TETD image (bad magic)",
    /// Unsupported image format version.
    BadVersion = 101 => "unsupported image format version",
    /// The file ends before a structure it declares.
    Truncated = 102 => "image truncated",
    /// A header field is invalid.
    BadHeader = 103 => "invalid image header",
    /// The manifest is invalid.
    BadManifest = 104 => "invalid manifest",
    /// A segment is invalid (alignment, overlap, bounds).
    BadSegment = 105 => "invalid segment",
    /// A segment is both writable and executable.
    WriteExecute = 106 => "segment is writable and executable",
    /// A relocation is invalid.
    BadRelocation = 107 => "invalid relocation",
    /// The measurement does not match the content.
    MeasurementMismatch = 108 => "measurement mismatch",
    /// The signature block is malformed.
    BadSignatureBlock = 109 => "malformed signature block",
    /// The signature does not verify.
    BadSignature = 110 => "signature invalid",
    /// The signer is not in the allow-list.
    SignerNotAllowed = 111 => "signer not allowed",
    /// A signature is required but the image is unsigned.
    Unsigned = 112 => "image is not signed",
    /// Two agents (in one image or across loaded images) share an id.
    DuplicateAgentId = 113 => "duplicate agent id",
    /// The image or a region is too large.
    TooLarge = 114 => "image too large",
    /// An agent entry point lies outside executable memory.
    BadEntry = 115 => "agent entry outside executable segment",

    // --- host (hypercall) ---
    /// R11 is not a TETD leaf.
    UnknownLeaf = 200 => "unknown hypercall leaf",
    /// The agent id is not registered with the host.
    UnknownAgent = 201 => "agent not registered with the host",
    /// The agent is in the wrong state for this leaf.
    BadState = 202 => "agent in wrong state for this leaf",
    /// VMM_ENTER while the agent is already running.
    AlreadyRunning = 203 => "agent already running",
    /// VMM_RESUME without a VMM_ENTER.
    NotRunning = 204 => "agent not running",
    /// An address or size is outside the allowed range.
    OutOfRange = 205 => "address or size out of range",
    /// The agent id is already registered.
    AlreadyRegistered = 206 => "agent id already registered",
    /// The caller does not own this agent (other TD / vCPU).
    NotOwner = 207 => "caller does not own this agent",
    /// A SEAM operation failed (see the host log for the TDX status).
    SeamError = 208 => "SEAM operation failed",
    /// The zone pool is exhausted.
    ZoneExhausted = 209 => "secret-zone pool exhausted",
    /// An argument of the hypercall is invalid.
    InvalidArgument = 210 => "invalid hypercall argument",
    /// The agent id is an alias registration (no zone of its own): calls
    /// enter and end through its owner's id; or an alias was named as an
    /// owner.
    AliasEntry = 211 => "agent id is an alias of another entry's zone",

    // --- guest module / transport ---
    /// The ioctl or request is malformed.
    BadRequest = 300 => "malformed request",
    /// The module has no room for another agent.
    TableFull = 301 => "agent table full",
    /// The hypercall transport failed.
    Transport = 302 => "hypercall transport failure",
}

impl Error {
    /// The numeric code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Decode a code; unknown codes map to [`Error::Internal`].
    pub fn from_code(code: u64) -> Error {
        Self::ALL
            .iter()
            .copied()
            .find(|e| e.code() as u64 == code)
            .unwrap_or(Error::Internal)
    }

    /// Decode a code, `None` for 0 (success) and unknown codes.
    pub fn try_from_code(code: u64) -> Option<Error> {
        Self::ALL.iter().copied().find(|e| e.code() as u64 == code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (E{})", self.description(), self.code())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

// ---------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------

/// How an agent runs.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// In the TD's normal kernel context; each call is bracketed by
    /// VMM_ENTER / VMM_RESUME.
    #[default]
    Exclusive = 0,
    /// In its secret zone: own page table, GDT and IDT, interrupts masked.
    Collaborative = 1,
}

impl Mode {
    /// Decode.
    pub fn from_u32(v: u32) -> Option<Mode> {
        match v {
            0 => Some(Mode::Exclusive),
            1 => Some(Mode::Collaborative),
            _ => None,
        }
    }
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Collaborative => "collaborative",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Agent flag: the agent is privileged (may use admin services).
pub const AGENT_FLAG_ADMIN: u32 = 1 << 0;
/// Agent flag: arguments and results are encrypted (session required).
pub const AGENT_FLAG_ENCRYPTED: u32 = 1 << 1;
/// All defined agent flags.
pub const AGENT_FLAGS_ALL: u32 = AGENT_FLAG_ADMIN | AGENT_FLAG_ENCRYPTED;

/// Maximum length of an agent name in bytes (UTF-8, NUL padded).
pub const AGENT_NAME_LEN: usize = 32;

/// Magic of an [`AgentDescriptor`] ("TDAG").
pub const DESCRIPTOR_MAGIC: u32 = 0x4741_4454;

/// Name of the link section holding the agent descriptors.
pub const DESCRIPTOR_SECTION: &str = ".tetd.agents";

/// The entry-point type of every agent: the trampoline `#[tetd::agent]`
/// emits. Returns 0 on success or an [`Error`] code.
pub type AgentEntry = unsafe extern "C" fn(frame: *mut CallFrame) -> u32;

/// One agent, as `#[tetd::agent]` places it in [`DESCRIPTOR_SECTION`].
/// `tetd-pack` reads these from the linked ELF to build the manifest.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AgentDescriptor {
    /// [`DESCRIPTOR_MAGIC`].
    pub magic: u32,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Agent id (non-zero).
    pub id: u32,
    /// [`Mode`] as u32, or `u32::MAX` for "from the package metadata".
    pub mode: u32,
    /// `AGENT_FLAG_*`.
    pub flags: u32,
    /// Max input in bytes, 0 = image default.
    pub max_input: u32,
    /// Max output in bytes, 0 = image default.
    pub max_output: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Name, UTF-8, NUL padded.
    pub name: [u8; AGENT_NAME_LEN],
    /// The trampoline.
    pub entry: AgentEntry,
}

/// Byte size of an [`AgentDescriptor`] in the ELF section.
pub const DESCRIPTOR_SIZE: usize = core::mem::size_of::<AgentDescriptor>();
/// Offset of [`AgentDescriptor::entry`] within a descriptor.
pub const DESCRIPTOR_ENTRY_OFFSET: usize = 64;
const _: () = assert!(DESCRIPTOR_SIZE == 72);
const _: () = assert!(core::mem::offset_of!(AgentDescriptor, entry) == DESCRIPTOR_ENTRY_OFFSET);

/// Mode value in a descriptor meaning "take the mode from the package metadata".
pub const MODE_FROM_MANIFEST: u32 = u32::MAX;

/// Encode a name into the fixed descriptor field at compile time.
pub const fn encode_name(name: &str) -> [u8; AGENT_NAME_LEN] {
    let b = name.as_bytes();
    assert!(b.len() <= AGENT_NAME_LEN, "agent name longer than 32 bytes");
    let mut out = [0u8; AGENT_NAME_LEN];
    let mut i = 0;
    while i < b.len() {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// Decode a NUL-padded name field; `None` if not UTF-8 or padding is not NUL.
pub fn decode_name(raw: &[u8; AGENT_NAME_LEN]) -> Option<&str> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(AGENT_NAME_LEN);
    if raw[end..].iter().any(|&c| c != 0) {
        return None;
    }
    core::str::from_utf8(&raw[..end]).ok()
}

/// What an agent entry receives. Filled by the runtime (simulator or guest
/// module); `output_len` is written by the agent.
#[repr(C)]
#[derive(Debug)]
pub struct CallFrame {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Id of the agent being called.
    pub agent_id: u32,
    /// Input bytes. The runtime copies the caller's input into the agent's
    /// zone; the agent may also write them (encrypted agents decrypt in
    /// place).
    pub input: *const u8,
    /// Input length.
    pub input_len: u64,
    /// Output buffer.
    pub output: *mut u8,
    /// Output buffer capacity.
    pub output_cap: u64,
    /// Bytes written to `output` (set by the agent).
    pub output_len: u64,
    /// Runtime services; never null.
    pub services: *const Services,
    /// The agent's heap region (inside its zone).
    pub heap: *mut u8,
    /// Heap length in bytes.
    pub heap_len: u64,
    /// `CALL_FLAG_*`.
    pub flags: u64,
}

/// Call flag: the call runs in collaborative mode (inside the secret zone).
pub const CALL_FLAG_COLLABORATIVE: u64 = 1 << 0;
/// Call flag: first call since load.
pub const CALL_FLAG_FIRST: u64 = 1 << 1;

/// Admin operations ([`Services::admin`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    /// List agents: output is an array of [`AgentInfo`].
    List = 1,
    /// Disable agent `arg`.
    Disable = 2,
    /// Enable agent `arg`.
    Enable = 3,
    /// Measurement of the image holding agent `arg` (48 bytes).
    Measurement = 4,
    /// Measurement of the caller's own image (48 bytes; `arg` ignored).
    /// The one operation every agent may use: an encrypted agent binds its
    /// sessions to it (`docs/encryption.md`).
    OwnMeasurement = 5,
}

impl AdminOp {
    /// Decode.
    pub fn from_u32(v: u32) -> Option<AdminOp> {
        match v {
            1 => Some(AdminOp::List),
            2 => Some(AdminOp::Disable),
            3 => Some(AdminOp::Enable),
            4 => Some(AdminOp::Measurement),
            5 => Some(AdminOp::OwnMeasurement),
            _ => None,
        }
    }
}

/// One agent as the admin `List` operation reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent id.
    pub id: u32,
    /// [`Mode`] as u32.
    pub mode: u32,
    /// `AGENT_FLAG_*`.
    pub flags: u32,
    /// 1 = enabled, 0 = disabled.
    pub enabled: u32,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Name, NUL padded.
    pub name: [u8; AGENT_NAME_LEN],
}

/// Size of one [`AgentInfo`] record.
pub const AGENT_INFO_SIZE: usize = core::mem::size_of::<AgentInfo>();
const _: () = assert!(AGENT_INFO_SIZE == 64);

/// Services the runtime offers an agent. Plain function pointers: no dynamic
/// linking, no kernel symbols. Every function gets `ctx` first.
#[repr(C)]
pub struct Services {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<Services>()` of the runtime (for forward compatibility).
    pub size: u32,
    /// Opaque runtime context.
    pub ctx: *mut core::ffi::c_void,
    /// Write a log line (UTF-8).
    pub log: unsafe extern "C" fn(ctx: *mut core::ffi::c_void, msg: *const u8, len: usize),
    /// Fill a buffer with random bytes. Returns 0 or an error code.
    pub random: unsafe extern "C" fn(ctx: *mut core::ffi::c_void, buf: *mut u8, len: usize) -> u32,
    /// Monotonic time in nanoseconds.
    pub time_ns: unsafe extern "C" fn(ctx: *mut core::ffi::c_void) -> u64,
    /// Abort the current call with `code`. Never returns.
    pub abort: unsafe extern "C" fn(ctx: *mut core::ffi::c_void, code: u32) -> !,
    /// Register an extra entry point with id `id` at run time.
    pub register_entry: unsafe extern "C" fn(
        ctx: *mut core::ffi::c_void,
        id: u32,
        name: *const u8,
        name_len: usize,
        entry: AgentEntry,
    ) -> u32,
    /// Admin operation ([`AdminOp`]); only admin agents may succeed.
    pub admin: unsafe extern "C" fn(
        ctx: *mut core::ffi::c_void,
        op: u32,
        arg: u64,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
    ) -> u32,
}

// ---------------------------------------------------------------------------
// Guest module ioctls (/dev/tetdg)
// ---------------------------------------------------------------------------

/// The `/dev/tetdg` ioctl interface between `tetdctl` (or any guest program)
/// and the guest module `tetdg.ko`.
///
/// Every request struct is `repr(C)`, 8-byte aligned and has a `status` field
/// the module fills with 0 or an [`Error`] code: an ioctl that could read and
/// write back its request returns 0 and reports TETD failures in `status`; it
/// returns `-EFAULT` only if the request itself cannot be copied, `-ENOTTY` for
/// an unknown command. The C glue of the module never looks into these
/// structs; it passes the command and the user pointer to the Rust part.
pub mod ioctl {
    use super::{AgentInfo, AGENT_INFO_SIZE};

    /// The misc device.
    pub const DEVICE_PATH: &str = "/dev/tetdg";
    /// The module's text report.
    pub const PROC_INFO_PATH: &str = "/proc/tetdg_info";

    /// ioctl "type" byte of TETD (`_IOC_TYPE`).
    pub const IOC_TYPE: u32 = 0xE7;

    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    /// `_IOWR(IOC_TYPE, nr, size)` as Linux `asm-generic/ioctl.h` encodes it.
    pub const fn iowr(nr: u32, size: usize) -> u32 {
        assert!(size < (1 << 14));
        ((IOC_READ | IOC_WRITE) << 30) | ((size as u32) << 16) | (IOC_TYPE << 8) | nr
    }

    /// Largest image `LOAD` accepts (bytes).
    pub const MAX_IMAGE_SIZE: u64 = 64 << 20;
    /// Largest input / output buffer of one `CALL` (bytes).
    pub const MAX_IO_SIZE: u64 = 1 << 20;
    /// Agent ids a `LOAD` reports back.
    pub const LOAD_MAX_IDS: usize = 16;
    /// Bytes of the human-readable detail message of a failed request.
    pub const DETAIL_LEN: usize = 160;

    /// `LOAD` flag: refuse unsigned images even if the module allows them.
    pub const LOAD_FLAG_REQUIRE_SIGNED: u64 = 1 << 0;

    /// `LOAD`: parse, verify and load an image; registers its agents.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct LoadRequest {
        /// In: user address of the image bytes.
        pub image: u64,
        /// In: image length.
        pub image_len: u64,
        /// In: `LOAD_FLAG_*`.
        pub flags: u64,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Out: number of agents the image registered.
        pub agent_count: u32,
        /// Out: their ids (first [`LOAD_MAX_IDS`]).
        pub agent_ids: [u32; LOAD_MAX_IDS],
        /// Out: NUL-terminated detail of a failure (names the field/symbol).
        pub detail: [u8; DETAIL_LEN],
    }

    /// [`CallRequest::mode`]: use the agent's own mode.
    pub const MODE_AGENT_DEFAULT: u32 = u32::MAX;

    /// `CALL`: run one agent.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CallRequest {
        /// In: agent id.
        pub agent_id: u32,
        /// In: [`super::Mode`] as u32 or [`MODE_AGENT_DEFAULT`].
        pub mode: u32,
        /// In: user address of the input.
        pub input: u64,
        /// In: input length.
        pub input_len: u64,
        /// In: user address of the output buffer.
        pub output: u64,
        /// In: output buffer capacity.
        pub output_cap: u64,
        /// Out: output bytes written.
        pub output_len: u64,
        /// Out: 0 or an [`super::Error`] code (the agent's or the runtime's).
        pub status: u32,
        /// Out: the mode the call ran in.
        pub mode_used: u32,
        /// Out: for [`super::Error::Fault`]: the exception vector.
        pub fault_vector: u32,
        /// Out: for a fault: the error code the CPU pushed (or 0).
        pub fault_error: u32,
        /// Out: for a fault: CR2 (page faults) or 0.
        pub fault_addr: u64,
        /// Out: for a fault: the faulting instruction's offset in the image.
        pub fault_rip: u64,
        /// Out: time the call took in the module (ns, including hypercalls).
        pub elapsed_ns: u64,
        /// In: watchdog budget in ns (0 = the module's default). Enforced in
        /// collaborative mode when an NMI reaches the vCPU after the
        /// deadline (see docs/kernel-module.md).
        pub timeout_ns: u64,
    }

    /// `UNLOAD`: remove the image holding an agent (all its agents).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct UnloadRequest {
        /// In: agent id.
        pub agent_id: u32,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Out: number of agents removed.
        pub removed: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// `LIST`: the loaded agents as [`AgentInfo`] records.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct ListRequest {
        /// In: user address of an array of [`AgentInfo`].
        pub buf: u64,
        /// In: capacity of that array (records).
        pub cap: u32,
        /// Out: number of loaded agents (may exceed `cap`).
        pub count: u32,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// [`InfoRequest::transport`]: simulated port-I/O transport (KVM VMM).
    pub const TRANSPORT_PORT: u32 = 0;
    /// [`InfoRequest::transport`]: TDCALL(TDG.VP.VMCALL) (a real TD).
    pub const TRANSPORT_TDCALL: u32 = 1;
    /// [`InfoRequest::transport`]: test only, the module answers its own
    /// hypercalls with zones from guest RAM (no host, nothing blocked).
    pub const TRANSPORT_LOOPBACK: u32 = 2;
    /// [`InfoRequest::transport`]: request/answer frames through the
    /// hypercall UART ([`super::uart`]; the host's QEMU/TCG engine).
    pub const TRANSPORT_UART: u32 = 3;

    /// `INFO`: facts about the module.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct InfoRequest {
        /// Out: [`super::ABI_VERSION`] of the module.
        pub abi_version: u32,
        /// Out: `TRANSPORT_*`.
        pub transport: u32,
        /// Out: loaded images.
        pub images: u32,
        /// Out: loaded agents.
        pub agents: u32,
        /// Out: zone bytes in use.
        pub zone_bytes: u64,
        /// Out: calls served since load.
        pub calls: u64,
        /// Out: faults caught since load.
        pub faults: u64,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Out: 1 if the test-only `TEST` ioctl is enabled (module parameter).
        pub test_enabled: u32,
        /// Out: module version, NUL padded.
        pub version: [u8; 32],
    }

    /// `TEST`: exercise the call mechanisms with a built-in machine-code blob
    /// (only when the module was loaded with `test_ioctl=1`).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct TestRequest {
        /// In: `TEST_*`.
        pub kind: u32,
        /// In: [`super::Mode`] as u32.
        pub mode: u32,
        /// In: a value the blob works on.
        pub arg: u64,
        /// Out: what the blob returned (e.g. `arg * 3 + 1`).
        pub result: u64,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Out: fault vector (when `status` is [`super::Error::Fault`]).
        pub fault_vector: u32,
        /// Out: fault address (CR2) or 0.
        pub fault_addr: u64,
        /// Out: faulting instruction offset within the blob.
        pub fault_rip: u64,
    }

    /// Largest signer allow-list `TRUST` accepts (bytes).
    pub const MAX_ALLOWLIST_SIZE: u64 = 64 << 10;

    /// `TRUST`: replace the module's signer allow-list (the text format of
    /// `tetd::verify::AllowList`; an empty list trusts nobody).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct TrustRequest {
        /// In: user address of the allow-list text.
        pub list: u64,
        /// In: its length.
        pub list_len: u64,
        /// Out: 0 or an [`super::Error`] code.
        pub status: u32,
        /// Out: number of keys now trusted.
        pub keys: u32,
        /// Out: NUL-terminated detail of a failure (line and column).
        pub detail: [u8; DETAIL_LEN],
    }

    /// Test blob: compute `arg * 3 + 1` and return it through the call frame.
    pub const TEST_COMPUTE: u32 = 1;
    /// Test blob: execute `ud2` (#UD).
    pub const TEST_UD: u32 = 2;
    /// Test blob: write to its own (read-only, executable) code.
    pub const TEST_WRITE_CODE: u32 = 3;
    /// Test blob: read an address that is not mapped (#PF).
    pub const TEST_READ_UNMAPPED: u32 = 4;
    /// Test blob: call the `abort` service with code `arg`.
    pub const TEST_ABORT: u32 = 5;
    /// Test blob: read kernel memory (the IDT base) — faults in collaborative mode.
    pub const TEST_READ_KERNEL: u32 = 6;
    /// Not a blob: the module reads 8 bytes at the start of the zone of agent
    /// `arg` *outside* any VMM_ENTER window, as a compromised guest kernel
    /// would; `result` is what the read returned (a host that blocks zones
    /// answers all-ones and reports a violation).
    pub const TEST_PEEK_ZONE: u32 = 7;
    /// Not a blob (attack tests, `tetdctl attack`): the module sends one
    /// TETD hypercall with the leaf and arguments of the [`RawHypercall`] at
    /// user address `arg` through its transport, outside its own window
    /// bookkeeping, and writes the answer back — the guest kernel attacking
    /// the host. `status` is 0 when the host answered.
    pub const TEST_RAW_HYPERCALL: u32 = 8;
    /// Not a blob (attack tests): the module reads or writes 8 bytes of an
    /// agent's zone outside any window, as a compromised kernel would
    /// ([`ZoneAccess`] at user address `arg`).
    pub const TEST_ZONE_ACCESS: u32 = 9;

    /// [`RawHypercall::flags`]: replace `args[1]` with the CPU the module
    /// sends the call from (what VMM_ENTER/VMM_RESUME expect there).
    pub const RAW_FLAG_VCPU_ARG1: u32 = 1;

    /// A raw hypercall of [`TEST_RAW_HYPERCALL`].
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct RawHypercall {
        /// In: the leaf (R11), any value.
        pub leaf: u64,
        /// In: R12..R15.
        pub args: [u64; 4],
        /// In: `RAW_FLAG_*`.
        pub flags: u32,
        /// Out: the CPU the call was sent from.
        pub vcpu: u32,
        /// Out: R10 (0 or an [`super::Error`] code).
        pub status: u64,
        /// Out: R11..R13.
        pub results: [u64; 3],
    }

    /// [`ZoneAccess::region`]: the input area.
    pub const ZONE_REGION_INPUT: u32 = 1;
    /// [`ZoneAccess::region`]: the output area.
    pub const ZONE_REGION_OUTPUT: u32 = 2;
    /// [`ZoneAccess::region`]: the frame page.
    pub const ZONE_REGION_FRAME: u32 = 3;
    /// [`ZoneAccess::region`]: the heap.
    pub const ZONE_REGION_HEAP: u32 = 4;

    /// A zone access of [`TEST_ZONE_ACCESS`].
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct ZoneAccess {
        /// In: an agent id of the image.
        pub agent_id: u32,
        /// In: `ZONE_REGION_*` (read-write regions only, so the access
        /// never faults the kernel).
        pub region: u32,
        /// In: byte offset in the region (8 bytes must fit).
        pub offset: u64,
        /// In: 1 = write `value`, 0 = read into `value`.
        pub write: u32,
        /// Reserved, zero.
        pub reserved: u32,
        /// In (write) / out (read).
        pub value: u64,
        /// Out: guest-physical address of the accessed bytes.
        pub gpa: u64,
    }
    const _: () = assert!(core::mem::size_of::<RawHypercall>() == 80);
    const _: () = assert!(core::mem::size_of::<ZoneAccess>() == 40);

    /// ioctl numbers.
    pub const LOAD: u32 = iowr(1, core::mem::size_of::<LoadRequest>());
    /// ioctl number of [`CallRequest`].
    pub const CALL: u32 = iowr(2, core::mem::size_of::<CallRequest>());
    /// ioctl number of [`UnloadRequest`].
    pub const UNLOAD: u32 = iowr(3, core::mem::size_of::<UnloadRequest>());
    /// ioctl number of [`ListRequest`].
    pub const LIST: u32 = iowr(4, core::mem::size_of::<ListRequest>());
    /// ioctl number of [`InfoRequest`].
    pub const INFO: u32 = iowr(5, core::mem::size_of::<InfoRequest>());
    /// ioctl number of [`TestRequest`].
    pub const TEST: u32 = iowr(6, core::mem::size_of::<TestRequest>());
    /// ioctl number of [`TrustRequest`].
    pub const TRUST: u32 = iowr(7, core::mem::size_of::<TrustRequest>());

    const _: () = assert!(core::mem::size_of::<LoadRequest>() == 256);
    const _: () = assert!(core::mem::size_of::<CallRequest>() == 96);
    const _: () = assert!(core::mem::size_of::<UnloadRequest>() == 16);
    const _: () = assert!(core::mem::size_of::<ListRequest>() == 24);
    const _: () = assert!(core::mem::size_of::<InfoRequest>() == 80);
    const _: () = assert!(core::mem::size_of::<TestRequest>() == 48);
    const _: () = assert!(core::mem::size_of::<TrustRequest>() == 184);
    const _: () = assert!(core::mem::size_of::<AgentInfo>() == AGENT_INFO_SIZE);

    /// Copy a string into a NUL-terminated fixed buffer (truncating).
    pub fn set_detail(buf: &mut [u8; DETAIL_LEN], msg: &str) {
        let n = msg.len().min(DETAIL_LEN - 1);
        buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
        buf[n..].fill(0);
    }

    /// Read a NUL-terminated fixed buffer (lossy: stops at invalid UTF-8).
    pub fn detail_str(buf: &[u8]) -> &str {
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        match core::str::from_utf8(&buf[..end]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}
