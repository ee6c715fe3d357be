//! Memory control for hypercall handlers: secret-zone memory slots inside
//! the zone window `[ZONE_GPA_BASE, ZONE_GPA_BASE + ZONE_GPA_SIZE)`, and
//! bounds-checked access to guest RAM.
//!
//! A zone is host memory ([`ZoneBacking`], an anonymous mmap) installed as a
//! KVM memory slot at a guest-physical address in the window. *Blocking* a
//! zone deletes the KVM slot: KVM zaps the EPT entries and flushes TLBs on
//! every vCPU before the ioctl returns, so from then on every guest access to
//! the range finds no memslot and exits to the VMM as `KVM_EXIT_MMIO`, which
//! the VMM reports as a [`super::Violation`] (reads see all-ones, writes are
//! dropped). *Unblocking* re-creates the slot over the same host memory, so
//! the content survives a block/unblock cycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use tetd::abi::{PAGE_SIZE, ZONE_GPA_BASE, ZONE_GPA_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, MmapRegion, VolatileMemory};

use super::error::{Result, VmmError};

/// Host memory backing one or more zones: page aligned, zero-filled, freed
/// when the last reference (including mapped slots) is dropped.
pub struct ZoneBacking {
    region: MmapRegion<()>,
}

impl std::fmt::Debug for ZoneBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneBacking")
            .field("len", &self.len())
            .finish()
    }
}

impl ZoneBacking {
    /// Allocates `len` bytes (a non-zero multiple of the page size).
    pub fn new(len: u64) -> Result<Arc<ZoneBacking>> {
        if len == 0 || len % PAGE_SIZE != 0 {
            return Err(VmmError::Zone(format!(
                "backing size {len:#x} is not a non-zero multiple of {PAGE_SIZE:#x}"
            )));
        }
        let size = usize::try_from(len)
            .map_err(|_| VmmError::Zone(format!("backing size {len:#x} too large")))?;
        let region = MmapRegion::new(size)
            .map_err(|e| VmmError::Zone(format!("mmap of {len:#x} bytes: {e}")))?;
        Ok(Arc::new(ZoneBacking { region }))
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.region.size() as u64
    }

    /// Always false (a backing is never empty); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.region.size() == 0
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len() => Ok(offset as usize),
            _ => Err(VmmError::Zone(format!(
                "access [{offset:#x}, +{len:#x}) outside backing of {:#x} bytes",
                self.len()
            ))),
        }
    }

    /// Copies bytes out of the backing.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.check(offset, buf.len())?;
        self.region
            .as_volatile_slice()
            .read_slice(buf, off)
            .map_err(|e| VmmError::Zone(format!("read at {offset:#x}: {e}")))
    }

    /// Copies bytes into the backing.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let off = self.check(offset, data.len())?;
        self.region
            .as_volatile_slice()
            .write_slice(data, off)
            .map_err(|e| VmmError::Zone(format!("write at {offset:#x}: {e}")))
    }

    /// Fills `[offset, offset + len)` with `byte` (e.g. scrubbing a freed zone).
    pub fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()> {
        let len =
            usize::try_from(len).map_err(|_| VmmError::Zone("fill length too large".into()))?;
        let off = self.check(offset, len)?;
        let slice = self
            .region
            .get_slice(off, len)
            .map_err(|e| VmmError::Zone(format!("fill at {offset:#x}: {e}")))?;
        // Write in page-sized chunks to avoid a large temporary.
        let chunk = vec![byte; len.min(PAGE_SIZE as usize * 16)];
        let mut done = 0;
        while done < len {
            let n = chunk.len().min(len - done);
            slice
                .write_slice(&chunk[..n], done)
                .map_err(|e| VmmError::Zone(format!("fill at {offset:#x}: {e}")))?;
            done += n;
        }
        Ok(())
    }

    fn host_addr(&self, offset: u64) -> u64 {
        self.region.as_ptr() as u64 + offset
    }
}

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
    backing: Arc<ZoneBacking>,
    offset: u64,
    present: bool,
}

/// What a hypercall handler uses to change the guest's memory map.
pub struct VmMemoryControl {
    vm: Arc<VmFd>,
    guest_mem: GuestMemoryMmap,
    zones: BTreeMap<u32, Zone>,
    first_slot: u32,
    max_slots: u32,
}

impl VmMemoryControl {
    pub(crate) fn new(
        vm: Arc<VmFd>,
        guest_mem: GuestMemoryMmap,
        first_slot: u32,
        max_slots: u32,
    ) -> Self {
        VmMemoryControl {
            vm,
            guest_mem,
            zones: BTreeMap::new(),
            first_slot,
            max_slots,
        }
    }

    /// Registers zone memory `backing[offset..offset+len]` at guest-physical
    /// `gpa` and makes it accessible to the guest.
    ///
    /// `gpa`, `offset` and `len` must be page aligned, the range must lie in
    /// the zone window and not overlap another registered zone, and the
    /// backing range must exist.
    pub fn map_zone(
        &mut self,
        gpa: u64,
        backing: &Arc<ZoneBacking>,
        offset: u64,
        len: u64,
    ) -> Result<ZoneSlot> {
        let zerr = |m: String| Err(VmmError::Zone(m));
        if gpa % PAGE_SIZE != 0 || offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return zerr(format!("gpa {gpa:#x}, offset {offset:#x}, len {len:#x} must be page aligned and len non-zero"));
        }
        let end = gpa.checked_add(len);
        if gpa < ZONE_GPA_BASE || end.is_none_or(|e| e > ZONE_GPA_BASE + ZONE_GPA_SIZE) {
            return zerr(format!(
                "[{gpa:#x}, +{len:#x}) is outside the zone window [{ZONE_GPA_BASE:#x}, {:#x})",
                ZONE_GPA_BASE + ZONE_GPA_SIZE
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > backing.len()) {
            return zerr(format!(
                "backing range [{offset:#x}, +{len:#x}) exceeds backing of {:#x} bytes",
                backing.len()
            ));
        }
        if let Some((slot, z)) = self
            .zones
            .iter()
            .find(|(_, z)| gpa < z.gpa + z.len && z.gpa < gpa + len)
        {
            return zerr(format!(
                "[{gpa:#x}, +{len:#x}) overlaps zone slot {slot} at [{:#x}, +{:#x})",
                z.gpa, z.len
            ));
        }
        let slot = (self.first_slot..self.max_slots)
            .find(|s| !self.zones.contains_key(s))
            .ok_or_else(|| {
                VmmError::Zone(format!("all {} KVM memory slots in use", self.max_slots))
            })?;
        let zone = Zone {
            gpa,
            len,
            backing: Arc::clone(backing),
            offset,
            present: false,
        };
        self.install(slot, &zone)?;
        self.zones.insert(
            slot,
            Zone {
                present: true,
                ..zone
            },
        );
        Ok(ZoneSlot(slot))
    }

    /// Takes the zone away from the guest (deletes the KVM slot). Guest
    /// accesses then exit to the VMM and are reported as violations.
    /// Blocking a blocked zone is a no-op.
    pub fn block_zone(&mut self, slot: ZoneSlot) -> Result<()> {
        let zone = self.zone(slot)?;
        if zone.present {
            self.set_region(slot.0, zone.gpa, 0, 0)?;
            self.zones.get_mut(&slot.0).expect("checked").present = false;
        }
        Ok(())
    }

    /// Gives a blocked zone back to the guest (same host memory, same content).
    /// Unblocking a present zone is a no-op.
    pub fn unblock_zone(&mut self, slot: ZoneSlot) -> Result<()> {
        let zone = self.zone(slot)?;
        if !zone.present {
            let (gpa, len, host) = (zone.gpa, zone.len, zone.backing.host_addr(zone.offset));
            self.set_region(slot.0, gpa, len, host)?;
            self.zones.get_mut(&slot.0).expect("checked").present = true;
        }
        Ok(())
    }

    /// Removes the zone entirely (blocking it first) and releases the
    /// reference on its backing.
    pub fn unmap_zone(&mut self, slot: ZoneSlot) -> Result<ZoneInfo> {
        self.block_zone(slot)?;
        let info = self.zone_info(slot)?;
        self.zones.remove(&slot.0);
        Ok(info)
    }

    /// State of one zone.
    pub fn zone_info(&self, slot: ZoneSlot) -> Result<ZoneInfo> {
        let z = self.zone(slot)?;
        Ok(ZoneInfo {
            slot,
            gpa: z.gpa,
            len: z.len,
            present: z.present,
        })
    }

    /// All registered zones, by slot.
    pub fn zones(&self) -> Vec<ZoneInfo> {
        self.zones
            .iter()
            .map(|(s, z)| ZoneInfo {
                slot: ZoneSlot(*s),
                gpa: z.gpa,
                len: z.len,
                present: z.present,
            })
            .collect()
    }

    /// The zone containing `gpa`, if any.
    pub fn zone_at(&self, gpa: u64) -> Option<ZoneInfo> {
        self.zones
            .iter()
            .find(|(_, z)| gpa >= z.gpa && gpa < z.gpa + z.len)
            .map(|(s, z)| ZoneInfo {
                slot: ZoneSlot(*s),
                gpa: z.gpa,
                len: z.len,
                present: z.present,
            })
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

    fn zone(&self, slot: ZoneSlot) -> Result<&Zone> {
        self.zones
            .get(&slot.0)
            .ok_or_else(|| VmmError::Zone(format!("no zone in slot {}", slot.0)))
    }

    fn install(&self, slot: u32, z: &Zone) -> Result<()> {
        self.set_region(slot, z.gpa, z.len, z.backing.host_addr(z.offset))
    }

    fn set_region(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host..host+len` lies inside a live `ZoneBacking` mapping
        // (checked in `map_zone`) that `self.zones` keeps alive through its
        // `Arc` for as long as the slot exists; a slot is always deleted
        // (len 0) before its zone entry, and so before the mapping can be
        // freed. The guest range is inside the zone window, disjoint from RAM
        // and from every other zone.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| {
            VmmError::Zone(format!(
                "KVM_SET_USER_MEMORY_REGION slot {slot} gpa {gpa:#x} len {len:#x}: {e}"
            ))
        })
    }
}

impl Drop for VmMemoryControl {
    fn drop(&mut self) {
        // Delete every slot before the backings can be freed.
        let slots: Vec<u32> = self
            .zones
            .iter()
            .filter(|(_, z)| z.present)
            .map(|(s, _)| *s)
            .collect();
        for s in slots {
            let gpa = self.zones[&s].gpa;
            let _ = self.set_region(s, gpa, 0, 0);
        }
    }
}
