//! Runs of pages, merged into ranges: what `lg dump-pagetables` prints.
//!
//! A kernel's direct map is hundreds of thousands of identical pages; nobody
//! wants them one per line. The kernel's own `/sys/kernel/debug/page_tables`
//! merges neighbours whose flags and level agree, whatever they map to. lg
//! does the same, and says which rule it used:
//!
//! - neighbours merge when their *virtual* addresses continue and their page
//!   size and effective flags are equal ([`MergeRule::Virtual`], the kernel's
//!   rule, best for reading a layout: a user heap of scattered 4K pages is one
//!   line);
//! - [`MergeRule::Physical`] also asks that the physical addresses continue,
//!   so that every range is one contiguous block of guest RAM (best for
//!   finding where something lives).
//!
//! Either way a [`Range`] says whether its physical side is contiguous, so
//! its `phys_start` is never mistaken for more than it is.

use std::fmt;
use std::iter::FusedIterator;

use super::{human_size, Flags, Mapping, PageSize};

/// When two neighbouring mappings become one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeRule {
    /// Virtual addresses continue; same page size and flags.
    Virtual,
    /// As [`MergeRule::Virtual`], and physical addresses continue too.
    Physical,
}

/// A run of same-sized, same-flagged pages at consecutive virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The first virtual address.
    pub start: u64,
    /// The first virtual address after the range. It wraps to 0 for a range
    /// that ends at the very top of the address space; [`Range::len`] does
    /// not.
    pub end: u64,
    /// The physical address of the first page.
    pub phys_start: u64,
    /// Whether every page follows the one before it in physical memory too,
    /// so that the range maps `[phys_start, phys_start + len)`.
    pub phys_contiguous: bool,
    /// The size of each page.
    pub size: PageSize,
    /// The flags every page has.
    pub flags: Flags,
    /// How many pages.
    pub pages: u64,
}

impl Range {
    fn new(m: Mapping) -> Range {
        Range {
            start: m.virt,
            end: m.virt.wrapping_add(m.size.bytes()),
            phys_start: m.phys,
            phys_contiguous: true,
            size: m.size,
            flags: m.flags,
            pages: 1,
        }
    }

    /// The range's length in bytes. A range never spans the non-canonical
    /// hole, so this is at most half the address space and always fits.
    pub fn len(&self) -> u64 {
        self.pages * self.size.bytes()
    }

    /// Never true: a range has at least one page.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Adds `m` to the end of the range if `rule` allows it.
    fn extend(&mut self, m: &Mapping, rule: MergeRule) -> bool {
        let phys_follows =
            self.phys_contiguous && self.phys_start.wrapping_add(self.len()) == m.phys;
        let fits = m.size == self.size
            && m.flags == self.flags
            && m.virt == self.end
            && self.end != 0
            && (rule == MergeRule::Virtual || phys_follows);
        if fits {
            self.end = self.end.wrapping_add(m.size.bytes());
            self.pages += 1;
            self.phys_contiguous = phys_follows;
        }
        fits
    }
}

/// Kernel-dump style: `start-end  length  page size  flags  -> phys`, where a
/// physical side that is not contiguous reads `-> phys...` (its first page).
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = u128::from(self.start) + u128::from(self.len());
        write!(
            f,
            "{:#018x}-{:#018x} {:>6} {} {}  -> {:#x}{}",
            self.start,
            end,
            human_size(u128::from(self.len())),
            self.size,
            self.flags,
            self.phys_start,
            if self.phys_contiguous { "" } else { "..." }
        )
    }
}

/// The ranges of a stream of mappings, merged as they come.
pub struct Ranges<I> {
    mappings: I,
    rule: MergeRule,
    pending: Option<Range>,
}

/// Merges `mappings` (in virtual-address order, as
/// [`mappings`](super::mappings) yields them) into ranges by `rule`.
///
/// Lazy, like the walk: to see whether a walk was truncated, merge
/// `walk.by_ref()` and ask the walk afterwards.
pub fn merged_ranges<I: IntoIterator<Item = Mapping>>(
    mappings: I,
    rule: MergeRule,
) -> Ranges<I::IntoIter> {
    Ranges {
        mappings: mappings.into_iter(),
        rule,
        pending: None,
    }
}

impl<I: Iterator<Item = Mapping>> Iterator for Ranges<I> {
    type Item = Range;

    fn next(&mut self) -> Option<Range> {
        for m in self.mappings.by_ref() {
            if let Some(range) = &mut self.pending {
                if range.extend(&m, self.rule) {
                    continue;
                }
            }
            if let Some(done) = self.pending.replace(Range::new(m)) {
                return Some(done);
            }
        }
        self.pending.take()
    }
}

impl<I: FusedIterator<Item = Mapping>> FusedIterator for Ranges<I> {}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    fn ranges(t: &Tables, rule: MergeRule) -> Vec<Range> {
        merged_ranges(mappings(&t.mem, &t.mode(), 0, u64::MAX), rule).collect()
    }

    #[test]
    fn the_identity_map_is_one_range_and_flag_changes_split() {
        let t = Tables::standard();
        for rule in [MergeRule::Virtual, MergeRule::Physical] {
            let r = ranges(&t, rule);
            // 512 2M pages: one range, contiguous both ways.
            assert_eq!((r[0].start, r[0].end), (0, 1 << 30), "{rule:?}: {r:#?}");
            assert_eq!((r[0].pages, r[0].size), (512, PageSize::Size2M));
            assert!(r[0].phys_contiguous);
            // The 1G page is a range of its own, as are the kernel's text,
            // rodata and data (each with its own flags).
            assert_eq!((r[1].start, r[1].size), (GIG_PAGE_VIRT, PageSize::Size1G));
            let kernel = &r[r.len() - 3..];
            assert_eq!((kernel[0].start, kernel[0].pages), (KERNEL_TEXT, 4));
            assert_eq!((kernel[1].start, kernel[1].pages), (KERNEL_RODATA, 2));
            assert_eq!(
                (kernel[2].start, kernel[2].end),
                (KERNEL_DATA, KERNEL_DATA + 0x2000)
            );
            assert_eq!(kernel[2].phys_start, KERNEL_PHYS + 0x6000);
        }
    }

    #[test]
    fn scattered_physical_pages_merge_only_by_the_virtual_rule() {
        let t = Tables::standard();
        let user = |rule| {
            ranges(&t, rule)
                .into_iter()
                .filter(|r| r.flags.user)
                .collect::<Vec<_>>()
        };
        // The two user pages are adjacent virtually (across two page
        // tables), apart physically.
        let merged = user(MergeRule::Virtual);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].start, merged[0].pages), (USER_VIRT, 2));
        assert_eq!(merged[0].phys_start, USER_PHYS);
        assert!(!merged[0].phys_contiguous);
        let split = user(MergeRule::Physical);
        assert_eq!(split.len(), 2);
        assert!(split.iter().all(|r| r.phys_contiguous));
    }

    #[test]
    fn ranges_print_like_the_kernel_dump() {
        let t = Tables::standard();
        let lines: Vec<String> = ranges(&t, MergeRule::Virtual)
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected = [
            "0x0000000000000000-0x0000000040000000     1G 2M     RW NX GLB         A D  -> 0x0",
            "0x0000000100000000-0x0000000140000000     1G 1G     RW x                   -> 0x100000000",
            "0x00007f00001ff000-0x00007f0000201000     8K 4K USR RW NX             A    -> 0x800000...",
            "0xffffffff80000000-0xffffffff80004000    16K 4K     ro x  GLB              -> 0x1000000",
            "0xffffffff80004000-0xffffffff80006000     8K 4K     ro NX GLB              -> 0x1004000",
            "0xffffffff80006000-0xffffffff80008000     8K 4K     RW NX GLB         A D  -> 0x1006000",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_page_at_the_top_of_the_address_space() {
        let mut t = Tables::new(false);
        let top = !0xfffu64;
        t.map(top - 0x1000, 0x10_0000, PageSize::Size4K, PRESENT);
        t.map(top, 0x10_1000, PageSize::Size4K, PRESENT);
        let r = ranges(&t, MergeRule::Physical);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].start, r[0].end, r[0].len()),
            (top - 0x1000, 0, 0x2000)
        );
        assert!(r[0]
            .to_string()
            .starts_with("0xffffffffffffe000-0x10000000000000000 "));
        assert!(!r[0].is_empty());
    }

    #[test]
    fn flags_print_in_fixed_columns() {
        let all = Flags {
            writable: true,
            user: true,
            nx: true,
            global: true,
            pwt: true,
            pcd: true,
            accessed: true,
            dirty: true,
        };
        assert_eq!(all.to_string(), "USR RW NX GLB PWT PCD A D");
        assert_eq!(Flags::default().to_string().len(), all.to_string().len());
    }
}
