//! x86-64 page tables for an agent's private address space (collaborative
//! mode): 4 KiB leaf mappings only, 4- or 5-level (whatever the kernel runs
//! with: CR4.LA57), built inside a caller-provided array of page frames (the
//! page-table pages of the agent's zone).
//!
//! Leaf entries carry exactly the permissions asked for (R, RW or RX; never
//! W+X), are supervisor-only, not global, and have Accessed/Dirty preset (so
//! the CPU never needs to write them). Intermediate entries are P|RW (the leaf
//! decides). Pure logic: unit-tested on the host.

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_W: u64 = 1 << 1;
/// User (never set here: agents run at CPL 0).
pub const PTE_U: u64 = 1 << 2;
/// Accessed.
pub const PTE_A: u64 = 1 << 5;
/// Dirty.
pub const PTE_D: u64 = 1 << 6;
/// Large page (PS) in a directory entry.
pub const PTE_PS: u64 = 1 << 7;
/// Global.
pub const PTE_G: u64 = 1 << 8;
/// No-execute.
pub const PTE_NX: u64 = 1 << 63;
/// Physical-address bits of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const PAGE: u64 = 4096;

/// Permissions of one mapped page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Read-only, not executable.
    R,
    /// Read-write, not executable.
    RW,
    /// Read-only, executable.
    RX,
}

impl Perm {
    fn leaf_bits(self) -> u64 {
        match self {
            Perm::R => PTE_P | PTE_A | PTE_NX,
            Perm::RW => PTE_P | PTE_A | PTE_D | PTE_W | PTE_NX,
            Perm::RX => PTE_P | PTE_A,
        }
    }

    fn from_bits(e: u64) -> Perm {
        match (e & PTE_W != 0, e & PTE_NX == 0) {
            (true, _) => Perm::RW,
            (false, true) => Perm::RX,
            (false, false) => Perm::R,
        }
    }
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PtError {
    /// The page-table frames are used up.
    NoFrames,
    /// A virtual or physical address is not page-aligned or out of range.
    BadAddress,
    /// The virtual address is not canonical for the paging mode.
    NonCanonical,
    /// The virtual page is already mapped.
    AlreadyMapped,
    /// Paging levels other than 4 or 5 were asked for.
    BadLevels,
}

impl PtError {
    /// Human-readable reason.
    pub const fn describe(self) -> &'static str {
        match self {
            PtError::NoFrames => "agent page-table frames exhausted",
            PtError::BadAddress => "unaligned or out-of-range address",
            PtError::NonCanonical => "non-canonical virtual address",
            PtError::AlreadyMapped => "virtual page mapped twice",
            PtError::BadLevels => "unsupported paging depth",
        }
    }
}

/// Page tables being built in `frames` (physical address of `frames[0]` is
/// `base_pa`, the frames are physically contiguous).
pub struct PageTables<'a> {
    frames: &'a mut [[u64; 512]],
    base_pa: u64,
    used: usize,
    levels: u32,
}

impl<'a> PageTables<'a> {
    /// Start with an empty root table in `frames[0]`. `levels` is 4 or 5.
    pub fn new(frames: &'a mut [[u64; 512]], base_pa: u64, levels: u32) -> Result<Self, PtError> {
        if levels != 4 && levels != 5 {
            return Err(PtError::BadLevels);
        }
        if base_pa % PAGE != 0 || base_pa & !ADDR_MASK != 0 {
            return Err(PtError::BadAddress);
        }
        let Some(root) = frames.first_mut() else {
            return Err(PtError::NoFrames);
        };
        root.fill(0);
        Ok(PageTables {
            frames,
            base_pa,
            used: 1,
            levels,
        })
    }

    /// Physical address of the root table (the value for CR3, without PCID).
    pub fn root_pa(&self) -> u64 {
        self.base_pa
    }

    /// Frames used so far.
    pub fn frames_used(&self) -> usize {
        self.used
    }

    fn canonical(&self, va: u64) -> bool {
        let bits = if self.levels == 5 { 57 } else { 48 };
        let top = (va as i64) >> (bits - 1);
        top == 0 || top == -1
    }

    fn index(&self, va: u64, level: u32) -> usize {
        ((va >> (12 + 9 * (level - 1))) & 511) as usize
    }

    fn frame_of(&self, pa: u64) -> Option<usize> {
        let off = pa.checked_sub(self.base_pa)?;
        let i = usize::try_from(off / PAGE).ok()?;
        (i < self.used).then_some(i)
    }

    /// Map one 4 KiB page `va -> pa` with `perm`.
    pub fn map(&mut self, va: u64, pa: u64, perm: Perm) -> Result<(), PtError> {
        if va % PAGE != 0 || pa % PAGE != 0 || pa & !ADDR_MASK != 0 {
            return Err(PtError::BadAddress);
        }
        if !self.canonical(va) {
            return Err(PtError::NonCanonical);
        }
        let mut table = 0usize;
        let mut level = self.levels;
        while level > 1 {
            let i = self.index(va, level);
            let e = self.frames[table][i];
            table = if e & PTE_P != 0 {
                if e & PTE_PS != 0 {
                    return Err(PtError::AlreadyMapped);
                }
                self.frame_of(e & ADDR_MASK).ok_or(PtError::BadAddress)?
            } else {
                if self.used >= self.frames.len() {
                    return Err(PtError::NoFrames);
                }
                let n = self.used;
                self.used += 1;
                self.frames[n].fill(0);
                let pa_n = self.base_pa + n as u64 * PAGE;
                self.frames[table][i] = pa_n | PTE_P | PTE_W | PTE_A;
                n
            };
            level -= 1;
        }
        let i = self.index(va, 1);
        if self.frames[table][i] & PTE_P != 0 {
            return Err(PtError::AlreadyMapped);
        }
        self.frames[table][i] = pa | perm.leaf_bits();
        Ok(())
    }

    /// Map `pages` consecutive pages.
    pub fn map_range(&mut self, va: u64, pa: u64, pages: u64, perm: Perm) -> Result<(), PtError> {
        for k in 0..pages {
            let off = k.checked_mul(PAGE).ok_or(PtError::BadAddress)?;
            let v = va.checked_add(off).ok_or(PtError::BadAddress)?;
            let p = pa.checked_add(off).ok_or(PtError::BadAddress)?;
            self.map(v, p, perm)?;
        }
        Ok(())
    }

    /// Walk the tables like the MMU: `(pa, perm)` of a mapped address.
    pub fn translate(&self, va: u64) -> Option<(u64, Perm)> {
        if !self.canonical(va) {
            return None;
        }
        let mut table = 0usize;
        let mut level = self.levels;
        loop {
            let e = self.frames[table][self.index(va, level)];
            if e & PTE_P == 0 {
                return None;
            }
            if level == 1 {
                return Some(((e & ADDR_MASK) | (va & (PAGE - 1)), Perm::from_bits(e)));
            }
            if e & PTE_PS != 0 {
                return None;
            }
            table = self.frame_of(e & ADDR_MASK)?;
            level -= 1;
        }
    }

    /// Continue building tables made earlier in the same frames (`used`
    /// frames already in use, root in `frames[0]`).
    pub fn resume(
        frames: &'a mut [[u64; 512]],
        base_pa: u64,
        levels: u32,
        used: usize,
    ) -> Result<Self, PtError> {
        if levels != 4 && levels != 5 {
            return Err(PtError::BadLevels);
        }
        if used == 0 || used > frames.len() || base_pa % PAGE != 0 {
            return Err(PtError::BadAddress);
        }
        Ok(PageTables {
            frames,
            base_pa,
            used,
            levels,
        })
    }

    /// Remove the leaf mapping of `va`; returns whether it was mapped. The
    /// intermediate tables stay (they are reused by later mappings).
    pub fn unmap(&mut self, va: u64) -> bool {
        if !self.canonical(va) {
            return false;
        }
        let mut table = 0usize;
        let mut level = self.levels;
        while level > 1 {
            let e = self.frames[table][self.index(va, level)];
            if e & PTE_P == 0 || e & PTE_PS != 0 {
                return false;
            }
            match self.frame_of(e & ADDR_MASK) {
                Some(t) => table = t,
                None => return false,
            }
            level -= 1;
        }
        let i = self.index(va, 1);
        let was = self.frames[table][i] & PTE_P != 0;
        self.frames[table][i] = 0;
        was
    }

    /// Tables (below the root) that mapping `pages` pages from `va` may
    /// need: for every level, the number of distinct table-sized spans the
    /// range touches. Summed over all ranges plus one root, an upper bound.
    pub const fn tables_for_range(levels: u32, va: u64, pages: u64) -> u64 {
        if pages == 0 {
            return 0;
        }
        let first = va >> 12;
        let last = first + pages - 1;
        let mut total = 0;
        let mut level = 1;
        while level < levels {
            let shift = 9 * level;
            total += (last >> shift) - (first >> shift) + 1;
            level += 1;
        }
        total
    }

    /// Upper bound of the frames needed to map `regions` separate runs of
    /// pages, each no longer than `max_pages` pages.
    pub const fn frames_needed(levels: u32, regions: u64, max_pages: u64) -> u64 {
        // Root + per region: one table per level below the root for every
        // 512^k-page span it may straddle.
        let mut total = 1;
        let mut level = 1;
        while level < levels {
            // tables at `level` spanning 512^level pages
            let span = 1u64 << (9 * level);
            total += regions * (max_pages / span + 2);
            level += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1_0000_0000;

    fn frames(n: usize) -> Vec<[u64; 512]> {
        vec![[0xdead_beefu64; 512]; n]
    }

    #[test]
    fn maps_and_translates_with_permissions() {
        let mut f = frames(16);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        let va = 0xffff_c900_0123_4000u64;
        pt.map(va, 0x1_0020_0000, Perm::RX).unwrap();
        pt.map(va + 0x1000, 0x1_0020_1000, Perm::RW).unwrap();
        pt.map(va + 0x2000, 0x1_0020_2000, Perm::R).unwrap();
        assert_eq!(pt.translate(va + 0x10), Some((0x1_0020_0010, Perm::RX)));
        assert_eq!(pt.translate(va + 0x1fff), Some((0x1_0020_1fff, Perm::RW)));
        assert_eq!(pt.translate(va + 0x2000), Some((0x1_0020_2000, Perm::R)));
        assert_eq!(pt.translate(va + 0x3000), None);
        assert_eq!(pt.translate(0xffff_8880_0000_0000), None);
        // root + PDPT + PD + PT
        assert_eq!(pt.frames_used(), 4);
    }

    #[test]
    fn leaf_bits_never_write_execute_and_never_user_or_global() {
        let mut f = frames(8);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        pt.map(0x40_0000, 0x5000, Perm::RX).unwrap();
        pt.map(0x40_1000, 0x6000, Perm::RW).unwrap();
        pt.map(0x40_2000, 0x7000, Perm::R).unwrap();
        let leaves: Vec<u64> = f[3].iter().copied().filter(|e| e & PTE_P != 0).collect();
        assert_eq!(leaves.len(), 3);
        for e in leaves {
            assert!(e & PTE_W == 0 || e & PTE_NX != 0, "W+X leaf {e:#x}");
            assert_eq!(e & (PTE_U | PTE_G), 0);
            assert_ne!(e & PTE_A, 0);
        }
    }

    #[test]
    fn intermediate_tables_are_cleared_before_use() {
        // frames start as garbage: a stale entry must never become a mapping
        let mut f = frames(8);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        pt.map(0x20_0000, 0x3000, Perm::R).unwrap();
        for k in 1..512u64 {
            assert_eq!(pt.translate(0x20_0000 + k * 4096), None);
        }
    }

    #[test]
    fn five_level_tables() {
        let mut f = frames(8);
        let mut pt = PageTables::new(&mut f, BASE, 5).unwrap();
        let va = 0xff11_0000_0000_0000u64; // canonical only with LA57
        pt.map(va, 0x9000, Perm::RW).unwrap();
        assert_eq!(pt.translate(va + 8), Some((0x9008, Perm::RW)));
        assert_eq!(pt.frames_used(), 5);
        let mut f4 = frames(8);
        let mut pt4 = PageTables::new(&mut f4, BASE, 4).unwrap();
        assert_eq!(pt4.map(va, 0x9000, Perm::RW), Err(PtError::NonCanonical));
    }

    #[test]
    fn errors() {
        let mut f = frames(3);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        assert_eq!(pt.map(0x1001, 0x1000, Perm::R), Err(PtError::BadAddress));
        assert_eq!(pt.map(0x1000, 0x1001, Perm::R), Err(PtError::BadAddress));
        assert_eq!(
            pt.map(0x0000_8000_0000_0000, 0, Perm::R),
            Err(PtError::NonCanonical)
        );
        // needs root + 3 tables, only 3 frames
        assert_eq!(pt.map(0x1000, 0x1000, Perm::R), Err(PtError::NoFrames));
        let mut f = frames(4);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        pt.map(0x1000, 0x1000, Perm::R).unwrap();
        assert_eq!(
            pt.map(0x1000, 0x2000, Perm::RW),
            Err(PtError::AlreadyMapped)
        );
        assert_eq!(
            PageTables::new(&mut [], BASE, 4).err(),
            Some(PtError::NoFrames)
        );
        assert_eq!(
            PageTables::new(&mut f, BASE, 3).err(),
            Some(PtError::BadLevels)
        );
    }

    #[test]
    fn resume_unmap_and_exact_table_count() {
        let va = 0xffff_c900_001f_e000u64; // 4 pages straddling a 2 MiB boundary
        let need = 1 + PageTables::tables_for_range(4, va, 4) as usize;
        assert_eq!(need, 1 + 2 + 1 + 1);
        let mut f = frames(need);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        pt.map_range(va, 0x8000, 4, Perm::RW).unwrap();
        assert_eq!(pt.frames_used(), need);
        let used = pt.frames_used();
        let mut pt = PageTables::resume(&mut f, BASE, 4, used).unwrap();
        assert_eq!(pt.translate(va + 0x3000), Some((0xb000, Perm::RW)));
        assert!(pt.unmap(va + 0x3000));
        assert!(!pt.unmap(va + 0x3000));
        assert_eq!(pt.translate(va + 0x3000), None);
        pt.map(va + 0x3000, 0xc000, Perm::R).unwrap();
        assert_eq!(pt.translate(va + 0x3000), Some((0xc000, Perm::R)));
        assert_eq!(pt.frames_used(), used);
        assert!(PageTables::resume(&mut f, BASE, 4, 0).is_err());
    }

    #[test]
    fn frames_needed_is_an_upper_bound() {
        // 6 regions: one of 300 pages straddling a 2 MiB boundary, 5 single pages
        let need = PageTables::frames_needed(4, 6, 300) as usize;
        let mut f = frames(need);
        let mut pt = PageTables::new(&mut f, BASE, 4).unwrap();
        pt.map_range(0xffff_c900_001f_0000, 0x2_0000_0000, 300, Perm::RW)
            .unwrap();
        for (k, va) in [
            0xffff_ffff_c000_0000u64,
            0xffff_fe00_0000_0000,
            0xffff_8880_0000_1000,
            0x1000,
            0x7fff_ffff_f000,
        ]
        .into_iter()
        .enumerate()
        {
            pt.map(va, 0x1000 * (k as u64 + 1), Perm::R).unwrap();
        }
        assert!(pt.frames_used() <= need);
    }
}
