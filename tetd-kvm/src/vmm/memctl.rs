//! Memory control for hypercall handlers: secret-zone memory slots inside
//! the zone window `[ZONE_GPA_BASE, ZONE_GPA_BASE + ZONE_GPA_SIZE)`, and
//! bounds-checked access to guest RAM.
//!
//! A zone is a page-aligned range of a TETD-H zone pool
//! ([`crate::zone_alloc::HostPool`], the one home of zone memory; a
//! [`crate::host::Zone`]'s `host_addr()`), installed as a KVM memory slot
//! at a guest-physical address in the window. The slot keeps a reference to
//! the pool, so the pool's mapping outlives every slot that points into it.
//! *Blocking* a zone deletes the KVM slot: KVM zaps the EPT (or shadow)
//! entries and flushes the TLBs of every vCPU before the ioctl returns, so
//! from then on every guest access to the range finds no memslot and exits
//! to the VMM as `KVM_EXIT_MMIO`, which the VMM reports as a
//! [`super::Violation`] (reads see all-ones, writes are dropped).
//! *Unblocking* re-creates the slot over the same pool memory, so the
//! content survives a block/unblock cycle.
//!
//! [`VmMemoryControl`] is a cheap handle (clones share one state), so a
//! SEAM backend can keep one (e.g. `tetd_kvm::hv::KvmSeam`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use tetd::abi::{PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Result, VmmError};
use crate::host::lock_pool;
use crate::zone_alloc::HostPool;

/// A zone pool shared between TETD-H and the VMM.
pub type ZonePool = Arc<Mutex<HostPool>>;

/// Handle of a zone registered with [`VmMemoryControl::map_zone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneSlot(u32);

impl ZoneSlot {
    /// The KVM memory-slot number.
    pub fn kvm_slot(self) -> u32 {
        self.0
    }
}

/// Public view of one registered zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneInfo {
    /// The slot.
    pub slot: ZoneSlot,
    /// Guest-physical base.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Whether the guest can currently access it (slot installed).
    pub present: bool,
}

struct Zone {
    gpa: u64,
    len: u64,
    /// Keeps the pool's mapping alive while the slot may point into it.
    _pool: ZonePool,
    host_addr: u64,
    present: bool,
}

struct Inner {
    vm: Arc<VmFd>,
    zones: BTreeMap<u32, Zone>,
    first_slot: u32,
    max_slots: u32,
}

/// What a hypercall handler uses to change the guest's memory map. Clones
/// share the same state.
#[derive(Clone)]
pub struct VmMemoryControl {
    inner: Arc<Mutex<Inner>>,
    guest_mem: GuestMemoryMmap,
    vcpus: u32,
}

impl std::fmt::Debug for VmMemoryControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmMemoryControl")
            .field("zones", &self.zones())
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

impl VmMemoryControl {
    pub(crate) fn new(
        vm: Arc<VmFd>,
        guest_mem: GuestMemoryMmap,
        first_slot: u32,
        max_slots: u32,
        vcpus: u32,
    ) -> Self {
        VmMemoryControl {
            inner: Arc::new(Mutex::new(Inner {
                vm,
                zones: BTreeMap::new(),
                first_slot,
                max_slots,
            })),
            guest_mem,
            vcpus,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of vCPUs of the VM.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// Installs pool memory `[host_addr, host_addr + len)` at guest-physical
    /// `gpa` and makes it accessible to the guest.
    ///
    /// `gpa`, `host_addr` and `len` must be page aligned, `len` non-zero,
    /// the guest range must lie in the zone window and not overlap another
    /// registered zone, and the host range must lie inside `pool`.
    pub fn map_zone(
        &self,
        gpa: u64,
        pool: &ZonePool,
        host_addr: u64,
        len: u64,
    ) -> Result<ZoneSlot> {
        self.register_zone(gpa, pool, host_addr, len, true)
    }

    /// As [`Self::map_zone`], but the zone starts blocked unless `present`
    /// (no KVM slot until [`Self::unblock_zone`]).
    pub fn register_zone(
        &self,
        gpa: u64,
        pool: &ZonePool,
        host_addr: u64,
        len: u64,
        present: bool,
    ) -> Result<ZoneSlot> {
        let zerr = |m: String| Err(VmmError::Zone(m));
        if gpa % PAGE_SIZE != 0 || host_addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return zerr(format!(
                "gpa {gpa:#x}, host address {host_addr:#x}, len {len:#x} must be page aligned and len non-zero"
            ));
        }
        let end = gpa.checked_add(len);
        if gpa < ZONE_GPA_BASE || end.is_none_or(|e| e > ZONE_GPA_BASE + ZONE_GPA_SIZE) {
            return zerr(format!(
                "[{gpa:#x}, +{len:#x}) is outside the zone window [{ZONE_GPA_BASE:#x}, {:#x})",
                ZONE_GPA_BASE + ZONE_GPA_SIZE
            ));
        }
        {
            let p = lock_pool(pool);
            if !p.contains(host_addr, len) {
                return zerr(format!(
                    "host range [{host_addr:#x}, +{len:#x}) is outside the zone pool [{:#x}, +{:#x})",
                    p.base_addr(),
                    p.len()
                ));
            }
        }
        let mut inner = self.lock();
        if let Some((slot, z)) = inner
            .zones
            .iter()
            .find(|(_, z)| gpa < z.gpa + z.len && z.gpa < gpa + len)
        {
            return zerr(format!(
                "[{gpa:#x}, +{len:#x}) overlaps zone slot {slot} at [{:#x}, +{:#x})",
                z.gpa, z.len
            ));
        }
        let slot = (inner.first_slot..inner.max_slots)
            .find(|s| !inner.zones.contains_key(s))
            .ok_or_else(|| {
                VmmError::Zone(format!("all {} KVM memory slots in use", inner.max_slots))
            })?;
        let zone = Zone {
            gpa,
            len,
            _pool: Arc::clone(pool),
            host_addr,
            present,
        };
        if present {
            inner.set_region(slot, gpa, len, host_addr)?;
        }
        inner.zones.insert(slot, zone);
        Ok(ZoneSlot(slot))
    }

    /// Takes the zone away from the guest (deletes the KVM slot). Guest
    /// accesses then exit to the VMM and are reported as violations.
    /// Blocking a blocked zone is a no-op.
    pub fn block_zone(&self, slot: ZoneSlot) -> Result<()> {
        let mut inner = self.lock();
        let (gpa, present) = {
            let z = inner.zone(slot)?;
            (z.gpa, z.present)
        };
        if present {
            inner.set_region(slot.0, gpa, 0, 0)?;
            inner.zone_mut(slot)?.present = false;
        }
        Ok(())
    }

    /// Gives a blocked zone back to the guest (same host memory, same content).
    /// Unblocking a present zone is a no-op.
    pub fn unblock_zone(&self, slot: ZoneSlot) -> Result<()> {
        let mut inner = self.lock();
        let (gpa, len, host, present) = {
            let z = inner.zone(slot)?;
            (z.gpa, z.len, z.host_addr, z.present)
        };
        if !present {
            inner.set_region(slot.0, gpa, len, host)?;
            inner.zone_mut(slot)?.present = true;
        }
        Ok(())
    }

    /// Removes the zone entirely (blocking it first) and drops its
    /// reference on the pool.
    pub fn unmap_zone(&self, slot: ZoneSlot) -> Result<ZoneInfo> {
        let mut inner = self.lock();
        let z = inner.zone(slot)?;
        let info = z.info(slot);
        if z.present {
            inner.set_region(slot.0, info.gpa, 0, 0)?;
        }
        inner.zones.remove(&slot.0);
        Ok(ZoneInfo {
            present: false,
            ..info
        })
    }

    /// State of one zone.
    pub fn zone_info(&self, slot: ZoneSlot) -> Result<ZoneInfo> {
        Ok(self.lock().zone(slot)?.info(slot))
    }

    /// All registered zones, by slot.
    pub fn zones(&self) -> Vec<ZoneInfo> {
        self.lock()
            .zones
            .iter()
            .map(|(s, z)| z.info(ZoneSlot(*s)))
            .collect()
    }

    /// The zone containing `gpa`, if any.
    pub fn zone_at(&self, gpa: u64) -> Option<ZoneInfo> {
        self.lock()
            .zones
            .iter()
            .find(|(_, z)| gpa >= z.gpa && gpa < z.gpa + z.len)
            .map(|(s, z)| z.info(ZoneSlot(*s)))
    }

    /// Reads guest RAM (not zone memory) at `gpa`.
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.guest_mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| VmmError::Memory(format!("guest read [{gpa:#x}, +{:#x}): {e}", buf.len())))
    }

    /// Writes guest RAM (not zone memory) at `gpa`.
    pub fn write_guest(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.guest_mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| {
                VmmError::Memory(format!("guest write [{gpa:#x}, +{:#x}): {e}", data.len()))
            })
    }
}

impl Zone {
    fn info(&self, slot: ZoneSlot) -> ZoneInfo {
        ZoneInfo {
            slot,
            gpa: self.gpa,
            len: self.len,
            present: self.present,
        }
    }
}

impl Inner {
    fn zone(&self, slot: ZoneSlot) -> Result<&Zone> {
        self.zones
            .get(&slot.0)
            .ok_or_else(|| VmmError::Zone(format!("no zone in slot {}", slot.0)))
    }

    fn zone_mut(&mut self, slot: ZoneSlot) -> Result<&mut Zone> {
        self.zones
            .get_mut(&slot.0)
            .ok_or_else(|| VmmError::Zone(format!("no zone in slot {}", slot.0)))
    }

    fn set_region(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: for len > 0, `host..host+len` lies inside a zone pool's
        // mapping (checked in `map_zone`), and the slot's `Zone` entry holds
        // a reference on that pool for as long as the slot exists: a slot is
        // always deleted (len 0) before its entry is removed, so the pool
        // cannot be unmapped while KVM may access it. The guest range is
        // inside the zone window, disjoint from RAM and every other zone.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| {
            VmmError::Zone(format!(
                "KVM_SET_USER_MEMORY_REGION slot {slot} gpa {gpa:#x} len {len:#x}: {e}"
            ))
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Delete every slot before the pool references go.
        let slots: Vec<(u32, u64)> = self
            .zones
            .iter()
            .filter(|(_, z)| z.present)
            .map(|(s, z)| (*s, z.gpa))
            .collect();
        for (s, gpa) in slots {
            let _ = self.set_region(s, gpa, 0, 0);
        }
    }
}
