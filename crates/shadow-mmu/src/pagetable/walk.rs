//! Every mapping in a range of virtual addresses: the walk behind
//! `lg dump-pagetables`.
//!
//! [`translate`](super::translate) follows one path down the tree; this walks
//! the whole tree, depth first, entries in index order, which is also
//! virtual-address order (the upper half's sign extension keeps it so). It
//! is an iterator with a stack of at most five tables, so a guest with
//! millions of mappings costs lg a few kilobytes, not a vector of millions.
//!
//! The trap is that the guest links the tables. Depth is no problem (five
//! levels, whatever the entries say), but breadth is: a PML4 whose 512
//! entries all point back at itself (Windows-style recursive mapping, times
//! 512) makes a tree of 512^3 page tables. So the walk counts the tables it
//! reads and stops at a limit ([`DEFAULT_TABLE_LIMIT`], or
//! [`Walk::with_table_limit`]), and [`Walk::truncated`] says it did. A table
//! reached along two paths maps two different virtual ranges, so it is read
//! once per path: that is the guest's address space, not a loop.

use std::fmt;
use std::iter::FusedIterator;

use super::{
    decode, level_shift, read_table, sign_extend, Entry, Flags, Inherited, PageSize, PagingMode,
    WalkFault, ENTRIES,
};
use crate::GuestMemory;

/// How many tables a walk reads before it gives up: 65,536 tables, 256 MiB
/// of them. An honest guest needs far fewer (one page table maps 2 MiB in 4K
/// pages, so even a 64 GiB process mapped entirely in 4K pages needs 32,768,
/// and Linux's direct map uses 2M and 1G pages). A hostile one (every PML4
/// entry pointing at the PML4) reaches the limit after about 33 million
/// entries, well under a second of lg's time in a release build.
pub const DEFAULT_TABLE_LIMIT: usize = 1 << 16;

/// How many faulty entries a walk remembers (it counts them all).
const BAD_ENTRIES_KEPT: usize = 256;

/// One page the guest has mapped: a present leaf entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The page's first virtual address, sign-extended (canonical).
    pub virt: u64,
    /// The guest-physical address it maps to.
    pub phys: u64,
    /// 4K, 2M or 1G.
    pub size: PageSize,
    /// Effective flags, combined down the levels.
    pub flags: Flags,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#018x} {} {}  -> {:#x}",
            self.virt, self.size, self.flags, self.phys
        )
    }
}

/// A present entry the walk could not follow, and the virtual addresses it
/// would have mapped (starting at `virt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEntry {
    /// The first virtual address under the entry (0 if the root table itself
    /// could not be read).
    pub virt: u64,
    /// What is wrong with it: a reserved bit, or a table outside RAM.
    pub fault: WalkFault,
}

impl fmt::Display for BadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}: {}", self.virt, self.fault)
    }
}

/// One table on the way down.
struct Frame {
    level: u8,
    /// The virtual address of entry 0, before sign extension.
    base: u64,
    entries: Box<[u64; ENTRIES]>,
    next: usize,
    inherited: Inherited,
}

/// The present mappings in a range, in virtual-address order, one per leaf
/// entry (nothing merged; see [`merged_ranges`](super::merged_ranges)).
pub struct Walk<'a> {
    mem: &'a GuestMemory,
    mode: PagingMode,
    start: u64,
    end: u64,
    stack: Vec<Frame>,
    started: bool,
    tables_read: usize,
    table_limit: usize,
    truncated: bool,
    bad_entries: Vec<BadEntry>,
    bad_entry_count: u64,
}

/// Every present mapping that overlaps `[start, end)`, in virtual-address
/// order. A large page that straddles `start` or `end` is reported whole.
/// Pass `0` and `u64::MAX` for the whole address space (the last page, at
/// `u64::MAX & !0xfff`, overlaps it).
///
/// Entries with reserved bits and tables outside RAM are skipped and kept in
/// [`Walk::bad_entries`]; nothing here panics, whatever the tables hold.
pub fn mappings<'a>(mem: &'a GuestMemory, mode: &PagingMode, start: u64, end: u64) -> Walk<'a> {
    Walk {
        mem,
        mode: *mode,
        start,
        end,
        stack: Vec::new(),
        started: false,
        tables_read: 0,
        table_limit: DEFAULT_TABLE_LIMIT,
        truncated: false,
        bad_entries: Vec::new(),
        bad_entry_count: 0,
    }
}

impl Walk<'_> {
    /// Reads at most `limit` tables (the root included) instead of
    /// [`DEFAULT_TABLE_LIMIT`].
    pub fn with_table_limit(mut self, limit: usize) -> Self {
        self.table_limit = limit;
        self
    }

    /// Whether the walk stopped at the table limit, so that mappings at
    /// higher addresses than the last one returned were not looked at.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The tables read so far, the root included.
    pub fn tables_read(&self) -> usize {
        self.tables_read
    }

    /// The first few entries the walk could not follow, in address order.
    pub fn bad_entries(&self) -> &[BadEntry] {
        &self.bad_entries
    }

    /// How many entries the walk could not follow (it keeps only the first
    /// few in [`Walk::bad_entries`]).
    pub fn bad_entry_count(&self) -> u64 {
        self.bad_entry_count
    }

    fn note_bad(&mut self, virt: u64, fault: WalkFault) {
        self.bad_entry_count += 1;
        if self.bad_entries.len() < BAD_ENTRIES_KEPT {
            self.bad_entries.push(BadEntry { virt, fault });
        }
    }

    /// Reads one more table, within the limit; `None` ends the walk.
    fn enter(&mut self, level: u8, table: u64, base: u64, inherited: Inherited) -> Option<()> {
        if self.tables_read >= self.table_limit {
            self.truncated = true;
            self.stack.clear();
            return None;
        }
        self.tables_read += 1;
        match read_table(self.mem, table, level) {
            Ok(entries) => self.stack.push(Frame {
                level,
                base,
                entries: Box::new(entries),
                next: 0,
                inherited,
            }),
            Err(fault) => {
                let virt = sign_extend(base, self.mode.virtual_bits());
                self.note_bad(virt, fault);
            }
        }
        Some(())
    }
}

impl Iterator for Walk<'_> {
    type Item = Mapping;

    fn next(&mut self) -> Option<Mapping> {
        if !self.started {
            self.started = true;
            if self.start >= self.end {
                return None;
            }
            let (levels, root) = (self.mode.levels(), self.mode.root());
            self.enter(levels, root, 0, Inherited::TOP)?;
        }
        let (bits, nxe) = (self.mode.virtual_bits(), self.mode.nxe);
        loop {
            let frame = self.stack.last_mut()?;
            if frame.next == ENTRIES {
                self.stack.pop();
                continue;
            }
            let index = frame.next;
            frame.next += 1;
            let (level, inherited) = (frame.level, frame.inherited);
            let entry = frame.entries[index];
            let raw = frame.base + ((index as u64) << level_shift(level));
            let virt = sign_extend(raw, bits);
            let last = virt + ((1u64 << level_shift(level)) - 1);
            if last < self.start {
                continue;
            }
            if virt >= self.end {
                // Everything after this is at higher addresses still.
                self.stack.clear();
                return None;
            }
            match decode(entry, level, nxe) {
                Entry::NotPresent => {}
                Entry::Reserved => self.note_bad(virt, WalkFault::ReservedBit { level }),
                Entry::Page { base, size } => {
                    return Some(Mapping {
                        virt,
                        phys: base,
                        size,
                        flags: inherited.leaf(entry, nxe),
                    })
                }
                Entry::Table(next) => {
                    self.enter(level - 1, next, raw, inherited.through(entry, nxe))?;
                }
            }
        }
    }
}

impl FusedIterator for Walk<'_> {}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    fn all(t: &Tables) -> Vec<Mapping> {
        mappings(&t.mem, &t.mode(), 0, u64::MAX).collect()
    }

    #[test]
    fn lists_every_page_in_address_order() {
        let t = Tables::standard();
        let maps = all(&t);
        // 512 identity 2M pages, one 1G page, 2 user pages, 8 kernel pages.
        assert_eq!(maps.len(), 512 + 1 + 2 + 8);
        assert!(maps.windows(2).all(|w| w[0].virt < w[1].virt));
        assert_eq!(maps[0].virt, 0);
        assert_eq!(maps[1].phys, 2 << 20);
        assert_eq!(maps.last().unwrap().virt, KERNEL_DATA + 0x1000);
        let text = maps.iter().find(|m| m.virt == KERNEL_TEXT).unwrap();
        assert_eq!(text.phys, KERNEL_PHYS);
        assert!(!text.flags.writable && !text.flags.nx);
    }

    #[test]
    fn agrees_with_translate() {
        let t = Tables::standard();
        let mode = t.mode();
        for m in all(&t) {
            let tr = translate(&t.mem, &mode, m.virt);
            assert_eq!(tr.result, Ok((m.phys, m.size, m.flags)), "{m}");
        }
    }

    #[test]
    fn a_range_selects_overlapping_pages_only() {
        let t = Tables::standard();
        let mode = t.mode();
        let kernel: Vec<Mapping> =
            mappings(&t.mem, &mode, KERNEL_TEXT, KERNEL_TEXT + 0x3000).collect();
        assert_eq!(kernel.len(), 3);
        // A range starting inside a 2M page includes that page whole.
        let one: Vec<Mapping> = mappings(&t.mem, &mode, 0x30_0000, 0x30_0001).collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].virt, 0x20_0000);
        assert_eq!(mappings(&t.mem, &mode, 5, 5).count(), 0);
        assert_eq!(mappings(&t.mem, &mode, 9, 3).count(), 0);
    }

    #[test]
    fn bad_entries_are_skipped_and_reported() {
        let t = Tables::standard();
        t.set(t.root, 7, (1 << 40) | PRESENT);
        t.set(t.root, 8, 0x1000 | PRESENT | PAGE_SIZE);
        let mut walk = mappings(&t.mem, &t.mode(), 0, u64::MAX);
        assert_eq!(walk.by_ref().count(), 523);
        assert!(!walk.truncated());
        assert_eq!(walk.bad_entry_count(), 2);
        assert_eq!(
            walk.bad_entries()[0],
            BadEntry {
                virt: 7 << 39,
                fault: WalkFault::TableOutsideRam {
                    level: 3,
                    addr: 1 << 40
                }
            }
        );
        assert_eq!(
            walk.bad_entries()[1].fault,
            WalkFault::ReservedBit { level: 4 }
        );

        let mode = PagingMode {
            cr3: 1 << 45,
            ..t.mode()
        };
        let mut walk = mappings(&t.mem, &mode, 0, u64::MAX);
        assert_eq!(walk.next(), None);
        assert_eq!(walk.bad_entry_count(), 1);
    }

    #[test]
    fn a_recursive_pml4_entry_terminates() {
        let t = Tables::standard();
        // Slot 510 points at the PML4 itself, as Windows does.
        t.set(t.root, 510, t.root | PRESENT | WRITABLE);
        let mut walk = mappings(&t.mem, &t.mode(), 0, u64::MAX);
        let maps: Vec<Mapping> = walk.by_ref().collect();
        assert!(!walk.truncated());
        // Through the window the tables themselves appear as 4K pages.
        let window = sign_extend(510 << 39, 48);
        assert!(maps.iter().any(|m| m.virt >= window && m.phys == t.root));
        let pml4_as_page = sign_extend((510 << 39) | (510 << 30) | (510 << 21) | (510 << 12), 48);
        let m = maps.iter().find(|m| m.virt == pml4_as_page).unwrap();
        assert_eq!((m.phys, m.size), (t.root, PageSize::Size4K));
        assert_eq!(
            translate(&t.mem, &t.mode(), pml4_as_page).result.unwrap().0,
            t.root
        );
    }

    #[test]
    fn a_pml4_pointing_at_itself_everywhere_is_cut_off_at_the_limit() {
        let t = Tables::new(false);
        for i in 0..512 {
            t.set(t.root, i, t.root | PRESENT);
        }
        let mut walk = mappings(&t.mem, &t.mode(), 0, u64::MAX).with_table_limit(2000);
        let n = walk.by_ref().count();
        assert!(walk.truncated());
        assert_eq!(walk.tables_read(), 2000);
        // Only level-1 tables yield pages, at most 512 each.
        assert!(n <= 2000 * 512);
        assert!(n > 0);
        assert_eq!(walk.next(), None);
    }
}
