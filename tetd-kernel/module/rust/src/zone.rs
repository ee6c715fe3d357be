//! Secret zones in the guest: registration with the host (AGENT_ACCESS),
//! the kernel mapping of the zone's guest-physical pages, the
//! VMM_ENTER..VMM_RESUME window, and removal (AGENT_DISABLE); and the
//! host's table of agent ids inside a zone ([`register_alias`],
//! [`set_alias_enabled`]).
use tetd::abi::{access, regs::HypercallRet, Error, Leaf, Mode, PAGE_SIZE, TETD_VMCALL_VENDOR};
use tetd::abi::{ZONE_GPA_BASE, ZONE_GPA_SIZE};

use crate::kapi::{self, Level, NoPreempt};
use crate::state;

/// One hypercall; transport failures become [`Error::Transport`].
pub fn hypercall(leaf: Leaf, args: [u64; 4]) -> Result<[u64; 3], Error> {
    if state::stats().transport == tetd::abi::ioctl::TRANSPORT_TDCALL {
        let a = tetd::abi::regs::HypercallArgs {
            leaf: leaf as u64,
            args,
        };
        // SAFETY: TDG.VP.VMCALL with the TETD vendor value; the module only
        // selects this transport inside a TD (tetdg_main.c checks CPUID).
        return match unsafe { tetd::tdcall::vmcall(&a) } {
            Ok(ret) => ret.into_result(),
            Err(_) => Err(Error::Transport),
        };
    }
    if state::stats().transport == tetd::abi::ioctl::TRANSPORT_UART {
        let a = tetd::abi::regs::HypercallArgs {
            leaf: leaf as u64,
            args,
        };
        return crate::uart::hypercall(a)?.into_result();
    }
    match kapi::hypercall(TETD_VMCALL_VENDOR, leaf as u64, args) {
        Ok((status, results)) => {
            if status == TETD_VMCALL_VENDOR {
                // Nobody answered: R10 still holds the vendor value.
                return Err(Error::Transport);
            }
            HypercallRet { status, results }.into_result()
        }
        Err(_) => Err(Error::Transport),
    }
}

/// Register agent `id` (living in the zone of host entry `owner`) with the
/// host: AGENT_ACCESS with `access::ALIAS`. The host refuses an id it
/// already knows (`AlreadyRegistered`).
pub fn register_alias(id: u32, owner: u32, mode: Mode, flags: u32) -> Result<(), Error> {
    hypercall(
        Leaf::AgentAccess,
        [
            id as u64,
            0,
            access::encode_alias(mode, flags),
            owner as u64,
        ],
    )
    .map(|_| ())
}

/// Tell the host an admin disabled (AGENT_DISABLE) or re-enabled
/// (AGENT_ENABLE) agent `id` (an alias: the zone is not affected).
pub fn set_alias_enabled(id: u32, enabled: bool) -> Result<(), Error> {
    let leaf = if enabled {
        Leaf::AgentEnable
    } else {
        Leaf::AgentDisable
    };
    hypercall(leaf, [id as u64, 0, 0, 0]).map(|_| ())
}

/// A zone registered with the host and mapped into the kernel.
pub struct HostZone {
    /// Host-side id of the zone (`access::IMAGE_ZONE_ID_BASE` + image slot
    /// for images; the image's agent ids are aliases of it).
    pub host_id: u32,
    /// Guest-physical base.
    pub gpa: u64,
    /// Pages.
    pub pages: u64,
    /// Kernel (and agent) virtual address of the mapping.
    pub va: *mut u8,
    /// The host wants TDG.MEM.PAGE.ACCEPT of every page in the first window.
    accept_pending: bool,
    /// Open window: the vCPU and the preemption guard.
    open: Option<(u32, NoPreempt)>,
}

impl HostZone {
    /// AGENT_ACCESS, then map the zone RW+NX.
    /// `measurement_gpa`: guest-physical address of the image's 48-byte
    /// measurement (0: none), recorded by the host with the zone.
    pub fn create(
        host_id: u32,
        pages: u64,
        mode: Mode,
        flags: u32,
        measurement_gpa: u64,
    ) -> Result<HostZone, Error> {
        let r = hypercall(
            Leaf::AgentAccess,
            [
                host_id as u64,
                pages,
                access::encode(mode, flags),
                measurement_gpa,
            ],
        )?;
        let (gpa, got_pages, zflags) = (r[0], r[1], r[2]);
        let loopback = state::stats().transport == tetd::abi::ioctl::TRANSPORT_LOOPBACK;
        let in_window = (loopback || gpa >= ZONE_GPA_BASE)
            && got_pages == pages
            && gpa % PAGE_SIZE == 0
            && gpa
                .checked_add(pages * PAGE_SIZE)
                .is_some_and(|end| loopback || end <= ZONE_GPA_BASE + ZONE_GPA_SIZE);
        if !in_window {
            kapi::log(
                Level::Err,
                "AGENT_ACCESS returned a zone outside the zone window",
            );
            let _ = hypercall(Leaf::AgentDisable, [host_id as u64, 0, 0, 0]);
            return Err(Error::Transport);
        }
        let va = kapi::map_zone(gpa, pages);
        if va.is_null() {
            kapi::log(Level::Err, "vmap_pfn of the zone failed");
            let _ = hypercall(Leaf::AgentDisable, [host_id as u64, 0, 0, 0]);
            return Err(Error::NoMemory);
        }
        state::stats().zone_bytes += pages * PAGE_SIZE;
        Ok(HostZone {
            host_id,
            gpa,
            pages,
            va,
            accept_pending: zflags & access::ZONE_FLAG_ACCEPT_REQUIRED != 0,
            open: None,
        })
    }

    /// Open the window (VMM_ENTER) on this CPU: the zone is reachable
    /// until [`close`](Self::close). Preemption stays disabled for the whole
    /// window (the host checks that VMM_RESUME comes from the same vCPU).
    pub fn open(&mut self) -> Result<(), Error> {
        if self.open.is_some() {
            return Err(Error::AlreadyRunning);
        }
        let np = NoPreempt::new();
        let cpu = np.cpu();
        hypercall(Leaf::VmmEnter, [self.host_id as u64, cpu as u64, 0, 0])?;
        if self.accept_pending {
            for p in 0..self.pages {
                // SAFETY: TDG.MEM.PAGE.ACCEPT of a page the host just added
                // for this zone (the flag is only set by a TDX host).
                if unsafe { tetd::tdcall::accept_page(self.gpa + p * PAGE_SIZE) }.is_err() {
                    kapi::log(Level::Err, "TDG.MEM.PAGE.ACCEPT of a zone page failed");
                    let _ = hypercall(
                        Leaf::VmmResume,
                        [self.host_id as u64, cpu as u64, Error::SeamError as u64, 0],
                    );
                    return Err(Error::SeamError);
                }
            }
            self.accept_pending = false;
        }
        self.open = Some((cpu, np));
        Ok(())
    }

    /// Whether a window is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Report a fault of the running agent (AGENT_FAULT); window open.
    pub fn report_fault(&self, vector: u32, addr: u64) {
        if vector < 32
            && hypercall(
                Leaf::AgentFault,
                [self.host_id as u64, vector as u64, addr, 0],
            )
            .is_err()
        {
            kapi::log(Level::Warn, "AGENT_FAULT hypercall failed");
        }
    }

    /// Close the window (VMM_RESUME with the call's status); a no-op if
    /// none is open.
    pub fn close(&mut self, status: u32) -> Result<(), Error> {
        match self.open.take() {
            Some((cpu, np)) => {
                let r = hypercall(
                    Leaf::VmmResume,
                    [self.host_id as u64, cpu as u64, status as u64, 0],
                );
                drop(np);
                r.map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Close any window, unmap and AGENT_DISABLE.
    pub fn destroy(mut self) -> Result<(), Error> {
        let _ = self.close(0);
        // SAFETY: the mapping is ours and nothing references it any more.
        unsafe { kapi::unmap_zone(self.va) };
        state::stats().zone_bytes -= self.pages * PAGE_SIZE;
        hypercall(Leaf::AgentDisable, [self.host_id as u64, 0, 0, 0]).map(|_| ())
    }
}
