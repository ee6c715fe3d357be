//! Secret-zone memory: a CMA-like contiguous page allocator and the mmap'ed
//! host page pool behind it.
//!
//! * [`ContigAllocator`] hands out runs of contiguous page indices from a
//!   fixed range: best fit (smallest free run that fits, lowest address
//!   among equals), free runs coalesced with both neighbours on free, exact
//!   accounting; exhaustion and fragmentation are reported, never panicked
//!   on. TETD-H uses one per TD for the GPA window
//!   `[ZONE_GPA_BASE, ZONE_GPA_BASE + ZONE_GPA_SIZE)` and one for the
//!   host-global [`HostPool`].
//! * [`HostPool`] is one anonymous, private mmap'ed region (reserved, not
//!   committed: `MAP_NORESERVE`), carved into zones. A zone's host memory is
//!   page aligned and contiguous, so a VMM can register it as one KVM memory
//!   slot (`userspace_addr` = [`HostRange::host_addr`]). Freed ranges are
//!   scrubbed with `madvise(MADV_DONTNEED)`, which drops the pages: the next
//!   user sees zeroes and the secret is gone from host memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use tetd::abi::PAGE_SIZE;

/// Why an allocation or free failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// A request for zero pages.
    ZeroSize,
    /// No free run of `requested` pages. `free` pages are free in total,
    /// the largest run has `largest` pages (`free >= requested` means the
    /// pool is fragmented).
    Exhausted {
        /// Pages asked for.
        requested: u64,
        /// Free pages in total.
        free: u64,
        /// Largest contiguous free run.
        largest: u64,
    },
    /// `free()` of a start that is not the start of a live allocation.
    NotAllocated {
        /// The page index given.
        start: u64,
    },
}

impl AllocError {
    /// True if the request failed although enough pages are free in total.
    pub fn is_fragmentation(&self) -> bool {
        matches!(self, AllocError::Exhausted { requested, free, .. } if free >= requested)
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::ZeroSize => f.write_str("zero-page allocation"),
            AllocError::Exhausted {
                requested,
                free,
                largest,
            } => {
                write!(
                    f,
                    "no run of {requested} contiguous pages ({free} free, largest run {largest})"
                )?;
                if free >= requested {
                    f.write_str(" — fragmented")?;
                }
                Ok(())
            }
            AllocError::NotAllocated { start } => {
                write!(f, "page {start} is not the start of an allocation")
            }
        }
    }
}

impl std::error::Error for AllocError {}

/// Best-fit allocator of contiguous runs of page indices in `[0, total)`.
#[derive(Debug, Clone)]
pub struct ContigAllocator {
    total: u64,
    /// Free runs: start → length. Never two adjacent runs (coalesced).
    free_by_start: BTreeMap<u64, u64>,
    /// The same runs as (length, start), for best fit.
    free_by_size: BTreeSet<(u64, u64)>,
    /// Live allocations: start → length.
    allocated: BTreeMap<u64, u64>,
    free_pages: u64,
}

impl ContigAllocator {
    /// An allocator over `total` pages, all free.
    pub fn new(total: u64) -> Self {
        let mut a = ContigAllocator {
            total,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            allocated: BTreeMap::new(),
            free_pages: total,
        };
        if total > 0 {
            a.insert_free(0, total);
        }
        a
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.free_by_start.insert(start, len);
        self.free_by_size.insert((len, start));
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        self.free_by_start.remove(&start);
        self.free_by_size.remove(&(len, start));
    }

    /// Allocate `pages` contiguous pages; returns the first page index.
    pub fn alloc(&mut self, pages: u64) -> Result<u64, AllocError> {
        if pages == 0 {
            return Err(AllocError::ZeroSize);
        }
        let Some(&(len, start)) = self.free_by_size.range((pages, 0)..).next() else {
            return Err(AllocError::Exhausted {
                requested: pages,
                free: self.free_pages,
                largest: self.largest_free(),
            });
        };
        self.remove_free(start, len);
        if len > pages {
            self.insert_free(start + pages, len - pages);
        }
        self.allocated.insert(start, pages);
        self.free_pages -= pages;
        Ok(start)
    }

    /// Free the allocation starting at `start`; returns its length.
    pub fn free(&mut self, start: u64) -> Result<u64, AllocError> {
        let len = self
            .allocated
            .remove(&start)
            .ok_or(AllocError::NotAllocated { start })?;
        let mut new_start = start;
        let mut new_len = len;
        // Coalesce with the run ending right before.
        if let Some((&ps, &pl)) = self.free_by_start.range(..start).next_back() {
            if ps + pl == start {
                self.remove_free(ps, pl);
                new_start = ps;
                new_len += pl;
            }
        }
        // ... and with the run starting right after.
        let end = start + len;
        if let Some(&nl) = self.free_by_start.get(&end) {
            self.remove_free(end, nl);
            new_len += nl;
        }
        self.insert_free(new_start, new_len);
        self.free_pages += len;
        Ok(len)
    }

    /// Pages managed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Free pages in total.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Largest contiguous free run.
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.iter().next_back().map_or(0, |&(l, _)| l)
    }

    /// Number of free runs (1 = not fragmented).
    pub fn free_runs(&self) -> usize {
        self.free_by_start.len()
    }

    /// Live allocations (start, length), ascending.
    pub fn allocations(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.allocated.iter().map(|(s, l)| (*s, *l))
    }

    /// Free runs (start, length), ascending.
    pub fn free_list(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free_by_start.iter().map(|(s, l)| (*s, *l))
    }

    /// External fragmentation in [0, 1]: `1 - largest_free / free_pages`.
    pub fn fragmentation(&self) -> f64 {
        if self.free_pages == 0 {
            0.0
        } else {
            1.0 - self.largest_free() as f64 / self.free_pages as f64
        }
    }

    /// Check every internal invariant (for tests): runs and allocations
    /// tile `[0, total)` exactly, no two free runs touch, indices agree.
    pub fn check(&self) -> Result<(), String> {
        let mut spans: Vec<(u64, u64, bool)> = self
            .free_by_start
            .iter()
            .map(|(s, l)| (*s, *l, true))
            .chain(self.allocated.iter().map(|(s, l)| (*s, *l, false)))
            .collect();
        spans.sort_unstable();
        let mut at = 0;
        let mut prev_free = false;
        for (s, l, is_free) in spans {
            if s != at {
                return Err(format!(
                    "gap or overlap at page {at} (next span starts at {s})"
                ));
            }
            if l == 0 {
                return Err(format!("empty span at {s}"));
            }
            if is_free && prev_free {
                return Err(format!("uncoalesced free runs at {s}"));
            }
            prev_free = is_free;
            at = s + l;
        }
        if at != self.total {
            return Err(format!("spans end at {at}, total {}", self.total));
        }
        if self.free_by_size.len() != self.free_by_start.len()
            || self
                .free_by_size
                .iter()
                .any(|(l, s)| self.free_by_start.get(s) != Some(l))
        {
            return Err("size index disagrees with start index".into());
        }
        let free: u64 = self.free_by_start.values().sum();
        if free != self.free_pages {
            return Err(format!(
                "free count {} but runs sum to {free}",
                self.free_pages
            ));
        }
        Ok(())
    }
}

/// A contiguous run of pool pages handed to one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostRange {
    /// First page index in the pool.
    pub first_page: u64,
    /// Number of pages.
    pub pages: u64,
    /// Host virtual address of the first page (page aligned): the
    /// `userspace_addr` of a KVM memory slot, and the "HPA" the SEAM layer
    /// sees in the simulation.
    pub host_addr: u64,
}

impl HostRange {
    /// Size in bytes.
    pub const fn len(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    /// True if the range has no pages.
    pub const fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// The host's secret-zone page pool: one mmap'ed region plus a
/// [`ContigAllocator`] over its pages.
pub struct HostPool {
    base: NonNull<u8>,
    pages: u64,
    alloc: ContigAllocator,
    /// `Some` for a pool in a shared memory file ([`HostPool::new_shared`]).
    file: Option<OwnedFd>,
}

// SAFETY: the pool owns its mapping; the raw base pointer is only turned
// into accesses inside `read`/`write`/`scrub`, which bounds-check and need
// `&self`/`&mut self`. Moving the pool between threads moves that ownership.
unsafe impl Send for HostPool {}
// SAFETY: `&HostPool` only allows `read` (a copy out of the mapping) and the
// accessors; mutation of the allocator needs `&mut`.
unsafe impl Sync for HostPool {}

impl fmt::Debug for HostPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostPool")
            .field("base", &self.base)
            .field("pages", &self.pages)
            .field("free", &self.alloc.free_pages())
            .finish()
    }
}

impl HostPool {
    /// Map a pool of `pages` pages (anonymous, private, `MAP_NORESERVE`:
    /// memory is committed only when touched).
    pub fn new(pages: u64) -> io::Result<HostPool> {
        let len = Self::byte_len(pages)?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // no existing memory is affected. The result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::from_mapping(p, pages, None)
    }

    /// A pool of `pages` pages in a shared memory file (`memfd_create`,
    /// mapped `MAP_SHARED`), for engines that run the guest in another
    /// process: that process maps the same file ([`Self::shared_fd`]), so
    /// pool page `i` is the same memory on both sides. Freed ranges are
    /// scrubbed with `fallocate(PUNCH_HOLE)`, which zeroes them for every
    /// mapping of the file.
    pub fn new_shared(pages: u64) -> io::Result<HostPool> {
        let len = Self::byte_len(pages)?;
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"tetd-zone-pool".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by
        // nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain ftruncate on the fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole (sparse) file at an
        // address the kernel picks; the result is checked in from_mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        Self::from_mapping(p, pages, Some(fd))
    }

    fn byte_len(pages: u64) -> io::Result<usize> {
        if pages == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zone pool of 0 pages",
            ));
        }
        pages
            .checked_mul(PAGE_SIZE)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "zone pool too large"))
    }

    fn from_mapping(
        p: *mut libc::c_void,
        pages: u64,
        file: Option<OwnedFd>,
    ) -> io::Result<HostPool> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(HostPool {
            base,
            pages,
            alloc: ContigAllocator::new(pages),
            file,
        })
    }

    /// The shared memory file of a [`Self::new_shared`] pool (offset
    /// `host_addr - base_addr()` in the file is pool address `host_addr`);
    /// `None` for an anonymous pool.
    pub fn shared_fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// Size of the pool in bytes.
    pub fn len(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    /// Always false (a pool has at least one page).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// True if `[host_addr, host_addr + len)` lies inside the pool's mapping.
    pub fn contains(&self, host_addr: u64, len: u64) -> bool {
        let base = self.base_addr();
        host_addr >= base
            && host_addr
                .checked_add(len)
                .is_some_and(|e| e <= base + self.len())
    }

    /// Host address of the pool's first byte.
    pub fn base_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Pages in the pool.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The allocator (read-only view, for statistics).
    pub fn allocator(&self) -> &ContigAllocator {
        &self.alloc
    }

    /// Allocate `pages` contiguous pages.
    pub fn alloc(&mut self, pages: u64) -> Result<HostRange, AllocError> {
        let first_page = self.alloc.alloc(pages)?;
        Ok(HostRange {
            first_page,
            pages,
            host_addr: self.base_addr() + first_page * PAGE_SIZE,
        })
    }

    /// Scrub and free a range returned by [`Self::alloc`].
    pub fn free(&mut self, range: HostRange) -> Result<(), AllocError> {
        let live = self
            .alloc
            .allocations()
            .any(|(s, l)| s == range.first_page && l == range.pages);
        if !live || range.host_addr != self.base_addr() + range.first_page * PAGE_SIZE {
            return Err(AllocError::NotAllocated {
                start: range.first_page,
            });
        }
        self.scrub(range.first_page, range.pages);
        self.alloc.free(range.first_page)?;
        Ok(())
    }

    fn scrub(&mut self, first_page: u64, pages: u64) {
        let off = (first_page * PAGE_SIZE) as usize;
        let len = (pages * PAGE_SIZE) as usize;
        let rc = match &self.file {
            // SAFETY: plain fallocate on the pool's own file; the range is
            // inside it (a live allocation). Punching a hole frees the pages:
            // every mapping of the file then reads zeroes there.
            Some(fd) => unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            },
            // SAFETY: [off, off+len) lies inside the mapping (it was a live
            // allocation). MADV_DONTNEED on a private anonymous mapping drops
            // the pages; later reads see zero-filled pages.
            None => unsafe {
                libc::madvise(self.base.as_ptr().add(off).cast(), len, libc::MADV_DONTNEED)
            },
        };
        if rc != 0 {
            // Cannot fail for a valid range of a private anonymous mapping
            // or a memfd; if it does, zero explicitly so no secret survives.
            // SAFETY: same range as above, exclusively ours (`&mut self`).
            unsafe { std::ptr::write_bytes(self.base.as_ptr().add(off), 0, len) };
        }
    }

    fn check_bounds(&self, host_addr: u64, len: usize) -> io::Result<usize> {
        let base = self.base_addr();
        let end = base + self.pages * PAGE_SIZE;
        match host_addr.checked_add(len as u64) {
            Some(e) if host_addr >= base && e <= end => Ok((host_addr - base) as usize),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host range {host_addr:#x}+{len:#x} outside the zone pool"),
            )),
        }
    }

    /// Take pool memory at `host_addr..+len` (page aligned) out of a shared
    /// pool's file: `fallocate(PUNCH_HOLE)` frees the pages, so every mapping
    /// of the file (the guest's, through QEMU, included) reads zeroes there
    /// until something touches the range again. Only for [`Self::new_shared`]
    /// pools (an anonymous pool has no file other processes map).
    pub fn punch(&mut self, host_addr: u64, len: u64) -> io::Result<()> {
        let off = self.check_page_range(host_addr, len)?;
        let Some(fd) = &self.file else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "punching pages needs a shared (memfd) pool",
            ));
        };
        // SAFETY: plain fallocate on the pool's own file, inside its size.
        let rc = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Host addresses of the pages in `host_addr..+len` (page aligned) that
    /// are present in a shared pool's file (`lseek(SEEK_DATA/SEEK_HOLE)`).
    /// After [`Self::punch`], a page is present again only if some mapping
    /// touched it: a shmem read fault allocates a page as a write does.
    pub fn present_pages(&self, host_addr: u64, len: u64) -> io::Result<Vec<u64>> {
        let off = self.check_page_range(host_addr, len)? as u64;
        let Some(fd) = &self.file else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "page presence needs a shared (memfd) pool",
            ));
        };
        let (end, mut pos, mut out) = (off + len, off, Vec::new());
        while pos < end {
            // SAFETY: lseek on the pool's own file; no memory is involved.
            let data = unsafe { libc::lseek(fd.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break; // no data at or after `pos`
                }
                return Err(e);
            }
            let data = data as u64;
            if data >= end {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io::Error::last_os_error());
            }
            let stop = (hole as u64).min(end);
            let mut p = data & !(PAGE_SIZE - 1);
            while p < stop {
                out.push(self.base_addr() + p);
                p += PAGE_SIZE;
            }
            pos = stop;
        }
        Ok(out)
    }

    fn check_page_range(&self, host_addr: u64, len: u64) -> io::Result<usize> {
        if host_addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host range {host_addr:#x}+{len:#x} is not page aligned"),
            ));
        }
        self.check_bounds(host_addr, len as usize)
    }

    /// Copy pool memory at `host_addr` into `buf`.
    pub fn read(&self, host_addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = self.check_bounds(host_addr, buf.len())?;
        // SAFETY: bounds checked above; the source is mapped readable memory
        // that may be written concurrently by a guest (through KVM), so it is
        // copied byte-wise without creating a reference to it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copy `data` into pool memory at `host_addr`.
    pub fn write(&mut self, host_addr: u64, data: &[u8]) -> io::Result<()> {
        let off = self.check_bounds(host_addr, data.len())?;
        // SAFETY: bounds checked above; the mapping is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len())
        };
        Ok(())
    }
}

impl Drop for HostPool {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`; no reference
        // into it outlives the pool (accessors copy).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), (self.pages * PAGE_SIZE) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_coalescing() {
        let mut a = ContigAllocator::new(100);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(20).unwrap();
        let z = a.alloc(30).unwrap();
        assert_eq!((x, y, z), (0, 10, 30));
        a.free(y).unwrap(); // hole of 20 at 10
                            // Best fit: a 15-page request goes into the 20-page hole, not the
                            // 40-page tail.
        assert_eq!(a.alloc(15).unwrap(), 10);
        a.check().unwrap();
        a.free(10).unwrap();
        a.free(x).unwrap();
        a.free(z).unwrap();
        assert_eq!(a.free_runs(), 1);
        assert_eq!(a.largest_free(), 100);
        a.check().unwrap();
    }

    #[test]
    fn exhaustion_and_fragmentation_are_errors() {
        let mut a = ContigAllocator::new(8);
        let starts: Vec<u64> = (0..8).map(|_| a.alloc(1).unwrap()).collect();
        assert_eq!(
            a.alloc(1),
            Err(AllocError::Exhausted {
                requested: 1,
                free: 0,
                largest: 0
            })
        );
        for s in starts.iter().step_by(2) {
            a.free(*s).unwrap();
        }
        let e = a.alloc(2).unwrap_err();
        assert_eq!(
            e,
            AllocError::Exhausted {
                requested: 2,
                free: 4,
                largest: 1
            }
        );
        assert!(e.is_fragmentation());
        assert!(a.fragmentation() > 0.7);
        assert_eq!(a.alloc(0), Err(AllocError::ZeroSize));
        assert_eq!(a.free(100), Err(AllocError::NotAllocated { start: 100 }));
        // A page inside (not at the start of) an allocation.
        let mut b = ContigAllocator::new(8);
        b.alloc(3).unwrap();
        assert_eq!(b.free(1), Err(AllocError::NotAllocated { start: 1 }));
        assert_eq!(
            a.free(0),
            Err(AllocError::NotAllocated { start: 0 }),
            "double free"
        );
        a.check().unwrap();
    }

    #[test]
    fn pool_memory_is_usable_and_scrubbed() {
        let mut p = HostPool::new(16).unwrap();
        let r = p.alloc(4).unwrap();
        assert_eq!(r.host_addr % PAGE_SIZE, 0);
        p.write(r.host_addr + 100, b"secret").unwrap();
        let mut buf = [0u8; 6];
        p.read(r.host_addr + 100, &mut buf).unwrap();
        assert_eq!(&buf, b"secret");
        p.free(r).unwrap();
        let r2 = p.alloc(4).unwrap();
        assert_eq!(r2.host_addr, r.host_addr, "best fit reuses the range");
        p.read(r2.host_addr + 100, &mut buf).unwrap();
        assert_eq!(buf, [0; 6], "freed zone memory must be scrubbed");
        assert!(p.free(r).is_ok());
        assert!(p.free(r).is_err(), "double free");
        assert!(p.read(p.base_addr() + 16 * PAGE_SIZE, &mut buf).is_err());
        assert!(p.read(p.base_addr() - 1, &mut buf).is_err());
        assert!(p.shared_fd().is_none());
    }

    #[test]
    fn shared_pool_is_one_memory_with_its_file_and_scrubbed_for_all() {
        let mut p = HostPool::new_shared(8).unwrap();
        let fd = p.shared_fd().unwrap().as_raw_fd();
        // A second, independent mapping of the file (as another process
        // would have).
        // SAFETY: maps the pool's own memfd read-only; unmapped below.
        let other = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * PAGE_SIZE as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(other, libc::MAP_FAILED);
        let peek = |off: usize| {
            let mut b = [0u8; 6];
            // SAFETY: off + 6 is inside the 8-page mapping above.
            unsafe {
                std::ptr::copy_nonoverlapping(other.cast::<u8>().add(off), b.as_mut_ptr(), 6)
            };
            b
        };
        let _a = p.alloc(2).unwrap();
        let r = p.alloc(3).unwrap();
        let off = (r.host_addr - p.base_addr()) as usize;
        assert_eq!(off, 2 * PAGE_SIZE as usize);
        p.write(r.host_addr + 8, b"secret").unwrap();
        assert_eq!(&peek(off + 8), b"secret", "the file sees pool writes");
        p.free(r).unwrap();
        assert_eq!(peek(off + 8), [0; 6], "scrubbed for the other mapping too");
        let mut buf = [1u8; 6];
        p.read(r.host_addr + 8, &mut buf).unwrap();
        assert_eq!(buf, [0; 6]);
        assert!(p.contains(p.base_addr(), 8 * PAGE_SIZE));
        assert!(!p.contains(p.base_addr(), 8 * PAGE_SIZE + 1));
        assert!(!p.contains(p.base_addr() - 1, 1));
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(other, 8 * PAGE_SIZE as usize) };
    }
}
