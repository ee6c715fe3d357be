//! Layout of an agent zone: where an image's segments, heap, stack and call
//! area go, and which protection each page gets.
//!
//! One zone per loaded image; every agent of the image (and every entry it
//! registers at run time) shares it. Offsets are from the zone base, which is
//! also the image base the relocations are applied against:
//!
//! ```text
//! offset                     size                      protection
//! 0                          load_size                 image: each segment at its vaddr
//!                                                      with its own R / RW / RX;
//!                                                      gaps between segments: none
//! load_size                  1 page   guard            none
//! heap.offset                heap_size                 RW   (CallFrame.heap; zeroed at load,
//!                                                            kept across calls)
//! stack_guard.offset         1 page   stack guard      none (an overflowing stack faults
//!                                                            here: Error::StackOverflow)
//! stack.offset               stack_size                RW   (grows down from stack.end())
//! +                          1 page   guard            none
//! frame.offset               1 page   call frame       RW   (CallFrame at +0, Services at +256)
//! input.offset               max_input (page rounded)  RW   (the call's input, copied in)
//! output.offset              max_output (page rounded) RW   (the agent writes its result here)
//! +                          1 page   guard            none
//! total
//! ```
//!
//! Nothing of an agent call lives outside its zone: input, output, the call
//! frame and the services table are all inside, so a platform that maps the
//! zone alone (collaborative mode) gives the agent everything it needs, and
//! services can check every pointer an agent passes against this layout.
//! No page is ever writable and executable.

use tetd::abi::PAGE_SIZE;
use tetd::image::{Image, MAX_SEGMENTS, PERM_W, PERM_X};

/// Protection of a range of zone pages.
///
/// Only these four exist: writable-and-executable is not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    /// No access (guard pages, gaps).
    None,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
    /// Read and execute.
    ReadExec,
}

impl Protection {
    /// `r-x`-style string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protection::None => "---",
            Protection::Read => "r--",
            Protection::ReadWrite => "rw-",
            Protection::ReadExec => "r-x",
        }
    }
    /// Readable.
    pub const fn readable(self) -> bool {
        !matches!(self, Protection::None)
    }
    /// Writable.
    pub const fn writable(self) -> bool {
        matches!(self, Protection::ReadWrite)
    }
    /// Executable.
    pub const fn executable(self) -> bool {
        matches!(self, Protection::ReadExec)
    }

    /// The protection of an image segment's `PERM_*` bits (already checked
    /// by [`Image::parse`]: readable, never W+X).
    pub const fn from_image_perms(perms: u32) -> Protection {
        if perms & PERM_X != 0 {
            Protection::ReadExec
        } else if perms & PERM_W != 0 {
            Protection::ReadWrite
        } else {
            Protection::Read
        }
    }
}

/// What a region of the zone is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Image segment number `n` (in address order).
    Segment(u8),
    /// A hole in the image's address space between segments.
    Gap,
    /// A guard page.
    Guard,
    /// The guard page directly below the stack.
    StackGuard,
    /// The heap.
    Heap,
    /// The stack.
    Stack,
    /// The call frame and services table.
    Frame,
    /// The input area.
    Input,
    /// The output area.
    Output,
}

impl RegionKind {
    /// Short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            RegionKind::Segment(_) => "segment",
            RegionKind::Gap => "gap",
            RegionKind::Guard => "guard",
            RegionKind::StackGuard => "stack-guard",
            RegionKind::Heap => "heap",
            RegionKind::Stack => "stack",
            RegionKind::Frame => "frame",
            RegionKind::Input => "input",
            RegionKind::Output => "output",
        }
    }
}

/// A range of the zone, as an offset from the zone base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Start offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Span {
    /// End offset (exclusive).
    pub const fn end(&self) -> u64 {
        self.offset + self.len
    }
    /// `off` lies inside.
    pub const fn contains(&self, off: u64) -> bool {
        off >= self.offset && off < self.end()
    }
}

/// One region with its protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What it is.
    pub kind: RegionKind,
    /// Where.
    pub span: Span,
    /// Its page protection while loaded.
    pub prot: Protection,
}

/// Offset of the services table inside the frame page.
pub const SERVICES_OFFSET: u64 = 256;

const _: () = assert!(core::mem::size_of::<tetd::abi::CallFrame>() as u64 <= SERVICES_OFFSET);
const _: () =
    assert!(SERVICES_OFFSET + core::mem::size_of::<tetd::abi::Services>() as u64 <= PAGE_SIZE);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SegPlacement {
    span: Span,
    prot: Option<Protection>,
}

/// Why a zone layout cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The zone would not fit the address space of this machine.
    TooLarge,
}

/// The computed layout of one image's zone. `Copy`, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneLayout {
    image_size: u64,
    segs: [SegPlacement; MAX_SEGMENTS as usize],
    seg_count: usize,
    /// The heap.
    pub heap: Span,
    /// The guard page below the stack.
    pub stack_guard: Span,
    /// The stack (top = `stack.end()`).
    pub stack: Span,
    /// The frame page (CallFrame at +0, Services at +[`SERVICES_OFFSET`]).
    pub frame: Span,
    /// Input area.
    pub input: Span,
    /// Output area.
    pub output: Span,
    total: u64,
}

fn round_up_page(v: u64) -> Option<u64> {
    v.checked_add(PAGE_SIZE - 1).map(|x| x & !(PAGE_SIZE - 1))
}

impl ZoneLayout {
    /// Lay out the zone of a parsed image. Input/output areas are sized for
    /// the largest `max_input` / `max_output` of the image's agents.
    pub fn for_image(img: &Image<'_>) -> Result<ZoneLayout, LayoutError> {
        let mut segs = [SegPlacement::default(); MAX_SEGMENTS as usize];
        let mut seg_count = 0;
        for s in img.segments() {
            // Image::parse checked count <= MAX_SEGMENTS, order, alignment,
            // bounds and W^X.
            if seg_count >= segs.len() {
                return Err(LayoutError::TooLarge);
            }
            segs[seg_count] = SegPlacement {
                span: Span {
                    offset: s.vaddr,
                    len: s.mem_size,
                },
                prot: Some(Protection::from_image_perms(s.perms)),
            };
            seg_count += 1;
        }
        let (max_in, max_out) = img.agents().fold((0u32, 0u32), |(i, o), a| {
            (i.max(a.max_input), o.max(a.max_output))
        });
        let m = img.manifest();
        Self::compute(
            img.header().load_size,
            &segs[..seg_count],
            m.heap_size as u64,
            m.stack_size as u64,
            max_in as u64,
            max_out as u64,
        )
    }

    fn compute(
        image_size: u64,
        seg_list: &[SegPlacement],
        heap: u64,
        stack: u64,
        max_in: u64,
        max_out: u64,
    ) -> Result<ZoneLayout, LayoutError> {
        let mut segs = [SegPlacement::default(); MAX_SEGMENTS as usize];
        segs[..seg_list.len()].copy_from_slice(seg_list);
        let mut off = round_up_page(image_size).ok_or(LayoutError::TooLarge)?;
        let mut take = |len: u64| -> Result<Span, LayoutError> {
            let len = round_up_page(len).ok_or(LayoutError::TooLarge)?;
            let s = Span { offset: off, len };
            off = off.checked_add(len).ok_or(LayoutError::TooLarge)?;
            Ok(s)
        };
        take(PAGE_SIZE)?; // guard after the image
        let heap = take(heap)?;
        let stack_guard = take(PAGE_SIZE)?;
        let stack = take(stack)?;
        take(PAGE_SIZE)?; // guard above the stack
        let frame = take(PAGE_SIZE)?;
        let input = take(max_in)?;
        let output = take(max_out)?;
        take(PAGE_SIZE)?; // trailing guard
        if off > isize::MAX as u64 {
            return Err(LayoutError::TooLarge);
        }
        Ok(ZoneLayout {
            image_size,
            segs,
            seg_count: seg_list.len(),
            heap,
            stack_guard,
            stack,
            frame,
            input,
            output,
            total: off,
        })
    }

    /// Total zone size in bytes (page multiple).
    pub const fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of address space the image itself takes (its `load_size`).
    pub const fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Offset of the services table.
    pub const fn services_offset(&self) -> u64 {
        self.frame.offset + SERVICES_OFFSET
    }

    /// Call `f` for every region, in address order, covering the whole zone
    /// without holes or overlaps. Stops at the first error.
    pub fn for_each_region<E>(&self, mut f: impl FnMut(Region) -> Result<(), E>) -> Result<(), E> {
        let mut at = 0u64;
        for (i, s) in self.segs[..self.seg_count].iter().enumerate() {
            if s.span.offset > at {
                f(Region {
                    kind: RegionKind::Gap,
                    span: Span {
                        offset: at,
                        len: s.span.offset - at,
                    },
                    prot: Protection::None,
                })?;
            }
            f(Region {
                kind: RegionKind::Segment(i as u8),
                span: s.span,
                prot: s.prot.unwrap_or(Protection::None),
            })?;
            at = s.span.end();
        }
        let image_end = self.heap.offset - PAGE_SIZE;
        if image_end > at {
            f(Region {
                kind: RegionKind::Gap,
                span: Span {
                    offset: at,
                    len: image_end - at,
                },
                prot: Protection::None,
            })?;
        }
        let guard = |offset| Region {
            kind: RegionKind::Guard,
            span: Span {
                offset,
                len: PAGE_SIZE,
            },
            prot: Protection::None,
        };
        let rw = |kind, span| Region {
            kind,
            span,
            prot: Protection::ReadWrite,
        };
        f(guard(image_end))?;
        if self.heap.len > 0 {
            f(rw(RegionKind::Heap, self.heap))?;
        }
        f(Region {
            kind: RegionKind::StackGuard,
            span: self.stack_guard,
            prot: Protection::None,
        })?;
        f(rw(RegionKind::Stack, self.stack))?;
        f(guard(self.stack.end()))?;
        f(rw(RegionKind::Frame, self.frame))?;
        if self.input.len > 0 {
            f(rw(RegionKind::Input, self.input))?;
        }
        if self.output.len > 0 {
            f(rw(RegionKind::Output, self.output))?;
        }
        f(guard(self.output.end()))
    }

    /// The region holding offset `off`, if inside the zone.
    pub fn region_at(&self, off: u64) -> Option<Region> {
        let mut found = None;
        let _ = self.for_each_region(|r| {
            if r.span.contains(off) {
                found = Some(r);
                Err(())
            } else {
                Ok(())
            }
        });
        found
    }

    /// May the agent read (or, with `write`, write) `len` bytes at offset
    /// `off`? Every byte must lie in the zone, in pages with that access.
    /// An empty range is always allowed (nothing is accessed).
    pub fn check_access(&self, off: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        if end > self.total {
            return false;
        }
        let mut ok = true;
        let _ = self.for_each_region(|r| {
            if r.span.offset < end && off < r.span.end() {
                let allowed = if write {
                    r.prot.writable()
                } else {
                    r.prot.readable()
                };
                if !allowed {
                    ok = false;
                    return Err(());
                }
            }
            Ok(())
        });
        ok
    }

    /// Offset `off` lies in an executable segment.
    pub fn is_executable(&self, off: u64) -> bool {
        self.segs[..self.seg_count]
            .iter()
            .any(|s| s.span.contains(off) && s.prot.is_some_and(|p| p.executable()))
    }

    /// Offset `off` lies in the guard page below the stack (a fault there is
    /// a stack overflow).
    pub fn is_stack_guard(&self, off: u64) -> bool {
        self.stack_guard.contains(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ZoneLayout {
        let segs = [
            SegPlacement {
                span: Span {
                    offset: 0,
                    len: 0x2000,
                },
                prot: Some(Protection::ReadExec),
            },
            SegPlacement {
                span: Span {
                    offset: 0x3000,
                    len: 0x1000,
                },
                prot: Some(Protection::ReadWrite),
            },
        ];
        ZoneLayout::compute(0x5000, &segs, 0x2000, 0x4000, 100, 5000).unwrap()
    }

    #[test]
    fn regions_cover_zone_in_order_without_wx() {
        let l = layout();
        let mut at = 0;
        let mut kinds = [RegionKind::Gap; 32];
        let mut n = 0;
        l.for_each_region(|r| {
            assert_eq!(r.span.offset, at, "{r:?}");
            assert!(r.span.len > 0 && r.span.len % PAGE_SIZE == 0);
            at = r.span.end();
            kinds[n] = r.kind;
            n += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(at, l.total());
        use RegionKind::*;
        assert_eq!(
            &kinds[..n],
            &[
                Segment(0),
                Gap,
                Segment(1),
                Gap,
                Guard,
                Heap,
                StackGuard,
                Stack,
                Guard,
                Frame,
                Input,
                Output,
                Guard
            ]
        );
        assert_eq!(l.input.len, PAGE_SIZE);
        assert_eq!(l.output.len, 2 * PAGE_SIZE);
        assert_eq!(l.stack_guard.end(), l.stack.offset);
    }

    #[test]
    fn access_checks() {
        let l = layout();
        assert!(l.check_access(0, 16, false));
        assert!(!l.check_access(0, 16, true), "code is not writable");
        assert!(!l.check_access(0x1ff0, 0x20, false), "runs into a gap");
        assert!(l.check_access(0x3000, 0x1000, true));
        assert!(!l.check_access(0x3000, 0x1001, true));
        assert!(l.check_access(l.input.offset, l.input.len + l.output.len, true));
        assert!(!l.check_access(l.stack_guard.offset, 1, false));
        assert!(!l.check_access(u64::MAX, 2, false));
        assert!(!l.check_access(l.total() - 1, 1, false));
        assert!(l.check_access(12345678, 0, true));
        assert!(l.is_executable(0x1fff));
        assert!(!l.is_executable(0x3000));
        assert!(l.is_stack_guard(l.stack.offset - 1));
        assert!(!l.is_stack_guard(l.stack.offset));
    }
}
