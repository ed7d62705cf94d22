//! # The guest's page tables, walked in software
//!
//! KVM lets the guest's own page tables drive the real MMU, so lg never has to
//! keep a shadow copy the way lguest did. But a developer staring at a stuck
//! kernel wants to see those tables: which virtual ranges are mapped, with
//! which permissions, and where one address really lands. This module is lg's
//! software model of the x86-64 MMU, doing in Rust what the CPU's page walker
//! does in silicon, so that `lg translate` can print one walk level by level
//! and `lg dump-pagetables` can list every mapping (see [`mappings`] and
//! [`merged_ranges`], in the submodules).
//!
//! Only long mode is modelled: 4-level paging, or 5-level when CR4.LA57 is
//! set. A guest still in real mode, protected mode or 32-bit PAE paging has no
//! [`PagingMode`] (see [`PagingMode::from_registers`]).
//!
//! The tables are guest memory, and so entirely the guest's to write: an entry
//! can point outside RAM, at itself, or at the middle of a kernel's text. The
//! rule here is the one the CPU follows: the walk is at most five levels deep,
//! every table is read through [`GuestMemory`]'s bounds checks, and every
//! entry is decoded in one place (`decode`) into a checked `Entry` before
//! anything acts on it. Whatever the guest wrote, the answer is a value: a
//! mapping or a [`WalkFault`], never a panic.
//!
//! Two simplifications, both harmless for inspection: MAXPHYADDR is taken to
//! be 52 (the architectural maximum, so no high address bits are reserved),
//! and 1 GiB pages are assumed supported. Protection keys, CR0.WP and
//! SMEP/SMAP change what an access may do, not where it goes, and are not
//! modelled; [`Flags`] reports what the entries say.

mod ranges;
mod walk;

#[cfg(test)]
mod testutil;

use std::fmt;

use crate::{GuestAddress, GuestMemory};

pub use ranges::{merged_ranges, MergeRule, Range, Ranges};
pub use walk::{mappings, BadEntry, Mapping, Walk, DEFAULT_TABLE_LIMIT};

// Bits of a paging-structure entry (Intel SDM vol. 3, 4.5).
pub(crate) const PRESENT: u64 = 1 << 0;
pub(crate) const WRITABLE: u64 = 1 << 1;
pub(crate) const USER: u64 = 1 << 2;
pub(crate) const PWT: u64 = 1 << 3;
pub(crate) const PCD: u64 = 1 << 4;
pub(crate) const ACCESSED: u64 = 1 << 5;
pub(crate) const DIRTY: u64 = 1 << 6;
/// Page size at levels 3 and 2; reserved at levels 4 and 5; PAT at level 1.
pub(crate) const PAGE_SIZE: u64 = 1 << 7;
pub(crate) const GLOBAL: u64 = 1 << 8;
/// PAT in a 2M or 1G entry: the one low address bit that is not reserved.
pub(crate) const LARGE_PAT: u64 = 1 << 12;
pub(crate) const NO_EXECUTE: u64 = 1 << 63;
/// The physical address in an entry (or CR3): bits 12 to 51. Bits 52 to 62
/// are ignored (or protection keys), and bit 63 is NX.
pub(crate) const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Entries per table: a 4 KiB table of 8-byte entries.
pub(crate) const ENTRIES: usize = 512;
/// Bytes in one table.
pub(crate) const TABLE_BYTES: u64 = 4096;

// Control-register and EFER bits that choose the paging mode.
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// What the walk needs from the vCPU: the root table (CR3), whether paging is
/// 5-level (CR4.LA57), and whether NX bits count (EFER.NXE).
///
/// Only long mode is modelled; [`PagingMode::from_registers`] says so when
/// the vCPU is in any other mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    /// CR3 as the vCPU holds it; PCID and cache bits are masked off.
    pub cr3: u64,
    /// CR4.LA57: five levels and 57-bit virtual addresses.
    pub la57: bool,
    /// EFER.NXE: bit 63 of an entry is NX; without it, bit 63 is reserved.
    pub nxe: bool,
}

/// Why a vCPU's registers give no [`PagingMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsupportedMode {
    /// CR0.PG is clear: virtual addresses are physical ones.
    PagingOff,
    /// Paging is on but not in long mode (32-bit or PAE paging).
    NotLongMode,
}

impl fmt::Display for UnsupportedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsupportedMode::PagingOff => write!(f, "paging is off (CR0.PG is clear)"),
            UnsupportedMode::NotLongMode => {
                write!(
                    f,
                    "the vCPU is not in long mode; only 64-bit paging is modelled"
                )
            }
        }
    }
}

impl std::error::Error for UnsupportedMode {}

impl PagingMode {
    /// The paging mode of a vCPU with these control registers, if it is one
    /// lg models (long mode, 4- or 5-level).
    pub fn from_registers(
        cr0: u64,
        cr3: u64,
        cr4: u64,
        efer: u64,
    ) -> Result<PagingMode, UnsupportedMode> {
        if cr0 & CR0_PG == 0 {
            return Err(UnsupportedMode::PagingOff);
        }
        if efer & EFER_LMA == 0 || cr4 & CR4_PAE == 0 {
            return Err(UnsupportedMode::NotLongMode);
        }
        Ok(PagingMode {
            cr3,
            la57: cr4 & CR4_LA57 != 0,
            nxe: efer & EFER_NXE != 0,
        })
    }

    /// The guest-physical address of the top-level table.
    pub fn root(&self) -> u64 {
        self.cr3 & ADDRESS_MASK
    }

    /// How many levels a walk has: 5 with LA57, else 4.
    pub fn levels(&self) -> u8 {
        if self.la57 {
            5
        } else {
            4
        }
    }

    /// Significant bits of a virtual address: 57 with LA57, else 48. The
    /// bits above must all copy the top one (the address is "canonical").
    pub fn virtual_bits(&self) -> u32 {
        if self.la57 {
            57
        } else {
            48
        }
    }

    /// Whether the CPU would accept `virt` at all.
    pub fn is_canonical(&self, virt: u64) -> bool {
        sign_extend(virt, self.virtual_bits()) == virt
    }
}

/// Copies bit `bits - 1` into all the bits above it: how a table index at
/// the top level becomes a canonical, higher-half address.
pub(crate) fn sign_extend(addr: u64, bits: u32) -> u64 {
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64
}

/// The bit position of the first address bit a level's index covers: 12 for
/// level 1 (4K), 21 for level 2, 30 for level 3, and so on.
pub(crate) fn level_shift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

/// The usual name of a level's table, as the SDM and Linux say it.
pub fn level_name(level: u8) -> &'static str {
    match level {
        5 => "PML5",
        4 => "PML4",
        3 => "PDPT",
        2 => "PD",
        1 => "PT",
        _ => "?",
    }
}

/// The size of the page a leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// A level-1 (PT) entry.
    Size4K,
    /// A level-2 (PD) entry with PS set.
    Size2M,
    /// A level-3 (PDPT) entry with PS set.
    Size1G,
}

impl PageSize {
    /// The page's length in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// The level whose entries map pages of this size.
    pub fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        };
        f.pad(name)
    }
}

/// The effective permissions and attributes of a page, combined the way the
/// CPU combines them: writable and user only if every level says so, NX if
/// any level says so (and EFER.NXE is set). The rest (global, caching,
/// accessed, dirty) are the leaf entry's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// RW at every level.
    pub writable: bool,
    /// US at every level: user mode may touch the page.
    pub user: bool,
    /// NX at some level: instructions may not be fetched from the page.
    pub nx: bool,
    /// G: the translation survives a CR3 switch.
    pub global: bool,
    /// PWT: write-through caching.
    pub pwt: bool,
    /// PCD: caching disabled.
    pub pcd: bool,
    /// A: the CPU has used the leaf entry.
    pub accessed: bool,
    /// D: the CPU has written to the page.
    pub dirty: bool,
}

/// Fixed-width columns, so that a dump lines up, in the spirit of the
/// kernel's `page_tables` file: `USR`, `RW` or `ro`, `NX` or `x` (executable),
/// `GLB`, `PWT`, `PCD`, `A`, `D`; an absent attribute is blank.
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
        write!(
            f,
            "{} {} {} {} {} {} {} {}",
            column(self.user, "USR", "   "),
            column(self.writable, "RW", "ro"),
            column(self.nx, "NX", "x "),
            column(self.global, "GLB", "   "),
            column(self.pwt, "PWT", "   "),
            column(self.pcd, "PCD", "   "),
            column(self.accessed, "A", " "),
            column(self.dirty, "D", " "),
        )
    }
}

/// The permissions handed down from the upper levels of a walk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inherited {
    writable: bool,
    user: bool,
    nx: bool,
}

impl Inherited {
    /// Before the first level: nothing is restricted yet.
    pub(crate) const TOP: Inherited = Inherited {
        writable: true,
        user: true,
        nx: false,
    };

    /// Folds in one more entry on the way down.
    pub(crate) fn through(self, entry: u64, nxe: bool) -> Inherited {
        Inherited {
            writable: self.writable && entry & WRITABLE != 0,
            user: self.user && entry & USER != 0,
            nx: self.nx || (nxe && entry & NO_EXECUTE != 0),
        }
    }

    /// The effective flags of a page whose leaf entry is `leaf`.
    pub(crate) fn leaf(self, leaf: u64, nxe: bool) -> Flags {
        let combined = self.through(leaf, nxe);
        Flags {
            writable: combined.writable,
            user: combined.user,
            nx: combined.nx,
            global: leaf & GLOBAL != 0,
            pwt: leaf & PWT != 0,
            pcd: leaf & PCD != 0,
            accessed: leaf & ACCESSED != 0,
            dirty: leaf & DIRTY != 0,
        }
    }
}

/// One paging-structure entry, decoded and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// P is clear: nothing is mapped below.
    NotPresent,
    /// A bit the CPU insists be zero is set: the CPU would fault.
    Reserved,
    /// The entry points at the next level's table.
    Table(u64),
    /// The entry maps a page.
    Page { base: u64, size: PageSize },
}

/// Decodes an entry found at `level` (5 down to 1). This is the one place
/// where guest-written entry bits are interpreted.
pub(crate) fn decode(entry: u64, level: u8, nxe: bool) -> Entry {
    if entry & PRESENT == 0 {
        return Entry::NotPresent;
    }
    if !nxe && entry & NO_EXECUTE != 0 {
        return Entry::Reserved;
    }
    let size = match level {
        1 => PageSize::Size4K,
        2 if entry & PAGE_SIZE != 0 => PageSize::Size2M,
        3 if entry & PAGE_SIZE != 0 => PageSize::Size1G,
        4 | 5 if entry & PAGE_SIZE != 0 => return Entry::Reserved,
        _ => return Entry::Table(entry & ADDRESS_MASK),
    };
    // A large page's address is aligned to its size; the address bits below
    // that (except PAT, bit 12) are reserved.
    let offset_bits = (size.bytes() - 1) & ADDRESS_MASK & !LARGE_PAT;
    if size != PageSize::Size4K && entry & offset_bits != 0 {
        return Entry::Reserved;
    }
    Entry::Page {
        base: entry & ADDRESS_MASK & !(size.bytes() - 1),
        size,
    }
}

/// Why an address does not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// The entry at this level has P clear.
    NotPresent { level: u8 },
    /// The address is not canonical: the CPU faults before any walk.
    NonCanonical(u64),
    /// The entry at this level sets a bit the CPU requires to be zero.
    ReservedBit { level: u8 },
    /// The table for this level lies (at least partly) outside guest RAM.
    TableOutsideRam { level: u8, addr: u64 },
}

impl fmt::Display for WalkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalkFault::NotPresent { level } => {
                write!(f, "the {} entry is not present", level_name(level))
            }
            WalkFault::NonCanonical(virt) => write!(f, "{virt:#x} is not a canonical address"),
            WalkFault::ReservedBit { level } => {
                write!(f, "the {} entry has a reserved bit set", level_name(level))
            }
            WalkFault::TableOutsideRam { level, addr } => write!(
                f,
                "the {} table at {addr:#x} is outside guest RAM",
                level_name(level)
            ),
        }
    }
}

impl std::error::Error for WalkFault {}

/// Reads the table at `table` whole, or says it is not in RAM.
pub(crate) fn read_table(
    mem: &GuestMemory,
    table: u64,
    level: u8,
) -> Result<[u64; ENTRIES], WalkFault> {
    mem.read_obj::<[u64; ENTRIES]>(GuestAddress(table))
        .map_err(|_| WalkFault::TableOutsideRam { level, addr: table })
}

/// One level of a walk: which table was read, which entry, and what it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStep {
    /// 5, 4, 3, 2 or 1 (see [`level_name`]).
    pub level: u8,
    /// The guest-physical address of the table.
    pub table: u64,
    /// The entry's index in the table (0 to 511).
    pub index: u16,
    /// The entry, as the guest wrote it.
    pub entry: u64,
}

impl fmt::Display for WalkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {:#x}[{:>3}] = {:#018x}",
            level_name(self.level),
            self.table,
            self.index,
            self.entry
        )
    }
}

/// The walk of one virtual address, as `lg translate` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The address that was translated.
    pub virt: u64,
    /// Every entry read, top level first. Empty for a non-canonical address;
    /// a walk that faults ends with the entry that faulted (if one was read).
    pub steps: Vec<WalkStep>,
    /// Where the address lands, in how large a page, with which flags.
    pub result: Result<(u64, PageSize, Flags), WalkFault>,
}

impl fmt::Display for Translation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        match &self.result {
            Ok((phys, size, flags)) => write!(
                f,
                "{:#x} -> {phys:#x}  {size} page  {}",
                self.virt,
                flags.to_string().trim_end()
            ),
            Err(fault) => write!(f, "{:#x} does not translate: {fault}", self.virt),
        }
    }
}

/// Translates one virtual address, level by level, as the CPU would.
pub fn translate(mem: &GuestMemory, mode: &PagingMode, virt: u64) -> Translation {
    let mut steps = Vec::new();
    let result = walk_one(mem, mode, virt, &mut steps);
    Translation {
        virt,
        steps,
        result,
    }
}

fn walk_one(
    mem: &GuestMemory,
    mode: &PagingMode,
    virt: u64,
    steps: &mut Vec<WalkStep>,
) -> Result<(u64, PageSize, Flags), WalkFault> {
    if !mode.is_canonical(virt) {
        return Err(WalkFault::NonCanonical(virt));
    }
    let mut table = mode.root();
    let mut inherited = Inherited::TOP;
    // At most five levels: however the guest links its tables, this ends.
    for level in (1..=mode.levels()).rev() {
        let index = ((virt >> level_shift(level)) & (ENTRIES as u64 - 1)) as u16;
        // The whole table must be RAM, as in `mappings`, so that the two
        // always agree on what is reachable.
        if !mem.contains(GuestAddress(table), TABLE_BYTES) {
            return Err(WalkFault::TableOutsideRam { level, addr: table });
        }
        let entry = mem
            .read_obj::<u64>(GuestAddress(table + u64::from(index) * 8))
            .map_err(|_| WalkFault::TableOutsideRam { level, addr: table })?;
        steps.push(WalkStep {
            level,
            table,
            index,
            entry,
        });
        match decode(entry, level, mode.nxe) {
            Entry::NotPresent => return Err(WalkFault::NotPresent { level }),
            Entry::Reserved => return Err(WalkFault::ReservedBit { level }),
            Entry::Table(next) => {
                inherited = inherited.through(entry, mode.nxe);
                table = next;
            }
            Entry::Page { base, size } => {
                let phys = base | (virt & (size.bytes() - 1));
                return Ok((phys, size, inherited.leaf(entry, mode.nxe)));
            }
        }
    }
    // Level 1 entries are always pages or faults, so the loop returns.
    unreachable!("a walk always ends at level 1")
}

/// A length as a human reads it, as the kernel's dump writes it: in the
/// largest of K, M, G, T, P, E that divides `bytes` exactly.
pub(crate) fn human_size(bytes: u128) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("E", 60),
        ("P", 50),
        ("T", 40),
        ("G", 30),
        ("M", 20),
        ("K", 10),
    ];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes & ((1 << shift) - 1) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn identity_mapped_2m_page_translates_through_three_levels() {
        let t = Tables::standard();
        let tr = translate(&t.mem, &t.mode(), 0x1234_5678);
        let (phys, size, flags) = tr.result.unwrap();
        assert_eq!(phys, 0x1234_5678);
        assert_eq!(size, PageSize::Size2M);
        assert!(flags.writable && flags.nx && !flags.user);
        let levels: Vec<u8> = tr.steps.iter().map(|s| s.level).collect();
        assert_eq!(levels, [4, 3, 2]);
        assert_eq!(tr.steps[0].table, t.root);
        assert_eq!(tr.steps[0].index, 0);
        assert_eq!(tr.steps[2].index, (0x1234_5678u64 >> 21) as u16);
        assert_eq!(tr.steps[2].entry & ADDRESS_MASK, 0x1220_0000);
    }

    #[test]
    fn kernel_text_data_and_rodata_have_their_own_flags() {
        let t = Tables::standard();
        let mode = t.mode();
        let text = translate(&t.mem, &mode, KERNEL_TEXT + 0x123);
        assert_eq!(text.steps.len(), 4);
        assert_eq!(
            text.steps.iter().map(|s| s.index).collect::<Vec<_>>(),
            [511, 510, 0, 0]
        );
        let (phys, size, flags) = text.result.unwrap();
        assert_eq!((phys, size), (KERNEL_PHYS + 0x123, PageSize::Size4K));
        assert!(!flags.writable && !flags.nx && flags.global && !flags.user);

        let (phys, _, rodata) = translate(&t.mem, &mode, KERNEL_RODATA).result.unwrap();
        assert_eq!(phys, KERNEL_PHYS + (KERNEL_RODATA - KERNEL_TEXT));
        assert!(!rodata.writable && rodata.nx);

        let (_, _, data) = translate(&t.mem, &mode, KERNEL_DATA + 8).result.unwrap();
        assert!(data.writable && data.nx && data.dirty && data.accessed);
    }

    #[test]
    fn one_gig_page_and_user_pages() {
        let t = Tables::standard();
        let (phys, size, flags) = translate(&t.mem, &t.mode(), GIG_PAGE_VIRT + 0x3456_789a)
            .result
            .unwrap();
        assert_eq!(
            (phys, size),
            (GIG_PAGE_PHYS + 0x3456_789a, PageSize::Size1G)
        );
        assert!(!flags.user && flags.writable);

        let (phys, size, flags) = translate(&t.mem, &t.mode(), USER_VIRT + 0x1008)
            .result
            .unwrap();
        assert_eq!((phys, size), (USER_PHYS_2 + 8, PageSize::Size4K));
        assert!(flags.user && flags.writable && flags.nx);
    }

    #[test]
    fn upper_levels_restrict_the_leaf() {
        let mut t = Tables::standard();
        // A read-only, supervisor-only, NX PDPT entry above RW user leaves.
        let virt = 0x0000_4000_0000_0000;
        t.map_with_tables(
            virt,
            0x30_0000,
            PageSize::Size4K,
            PRESENT | WRITABLE | USER,
            PRESENT | NO_EXECUTE,
        );
        let (_, _, flags) = translate(&t.mem, &t.mode(), virt).result.unwrap();
        assert!(!flags.writable && !flags.user && flags.nx);
    }

    #[test]
    fn nx_counts_only_with_efer_nxe_and_is_reserved_without_it() {
        let t = Tables::standard();
        let mut mode = t.mode();
        mode.nxe = false;
        // Every path to the kernel data sets NX somewhere.
        let tr = translate(&t.mem, &mode, KERNEL_DATA);
        assert!(matches!(tr.result, Err(WalkFault::ReservedBit { .. })));
        // Kernel text has no NX bit anywhere on its path.
        let (_, _, flags) = translate(&t.mem, &mode, KERNEL_TEXT).result.unwrap();
        assert!(!flags.nx);
    }

    #[test]
    fn a_missing_entry_at_each_level_says_which() {
        let t = Tables::standard();
        let mode = t.mode();
        // PML4 slot 1 is empty.
        let tr = translate(&t.mem, &mode, 1 << 39);
        assert_eq!(tr.result, Err(WalkFault::NotPresent { level: 4 }));
        assert_eq!(tr.steps.len(), 1);
        // Slot 0's PDPT maps only the first GiB and the 1G page at 4 GiB.
        let tr = translate(&t.mem, &mode, 3 << 30);
        assert_eq!(tr.result, Err(WalkFault::NotPresent { level: 3 }));
        // The kernel's PD has only its first PT.
        let tr = translate(&t.mem, &mode, KERNEL_TEXT + (4 << 21));
        assert_eq!(tr.result, Err(WalkFault::NotPresent { level: 2 }));
        // The kernel's PT holds only the kernel image.
        let tr = translate(&t.mem, &mode, KERNEL_TEXT + 0x10_0000);
        assert_eq!(tr.result, Err(WalkFault::NotPresent { level: 1 }));
        assert_eq!(tr.steps.len(), 4);
    }

    #[test]
    fn non_canonical_addresses_fault_before_the_walk() {
        let t = Tables::standard();
        let tr = translate(&t.mem, &t.mode(), 0x0000_8000_0000_0000);
        assert_eq!(
            tr.result,
            Err(WalkFault::NonCanonical(0x0000_8000_0000_0000))
        );
        assert!(tr.steps.is_empty());
        assert!(t.mode().is_canonical(0xffff_8000_0000_0000));
        assert!(!t.mode().is_canonical(0xff00_0000_0000_0000));
    }

    #[test]
    fn a_table_outside_ram_is_a_fault_not_a_panic() {
        let t = Tables::standard();
        t.set(t.root, 7, (1 << 40) | PRESENT | WRITABLE);
        let tr = translate(&t.mem, &t.mode(), 7 << 39);
        assert_eq!(
            tr.result,
            Err(WalkFault::TableOutsideRam {
                level: 3,
                addr: 1 << 40
            })
        );
        let mode = PagingMode {
            cr3: 0xffff_f000,
            ..t.mode()
        };
        let tr = translate(&t.mem, &mode, 0);
        assert_eq!(
            tr.result,
            Err(WalkFault::TableOutsideRam {
                level: 4,
                addr: 0xffff_f000
            })
        );
    }

    #[test]
    fn reserved_bits_in_entries_fault() {
        let mut t = Tables::standard();
        // PS in a PML4 entry.
        t.set(t.root, 8, 0x1000 | PRESENT | PAGE_SIZE);
        let tr = translate(&t.mem, &t.mode(), 8 << 39);
        assert_eq!(tr.result, Err(WalkFault::ReservedBit { level: 4 }));
        // A 2M page whose address is not 2M-aligned.
        let pd = t.table_for(0, 2);
        t.set(pd, 3, 0x30_1000 | PRESENT | PAGE_SIZE);
        let tr = translate(&t.mem, &t.mode(), 3 << 21);
        assert_eq!(tr.result, Err(WalkFault::ReservedBit { level: 2 }));
        // ... but PAT (bit 12) is allowed there.
        t.set(pd, 3, 0x60_0000 | LARGE_PAT | PRESENT | PAGE_SIZE);
        let (phys, _, _) = translate(&t.mem, &t.mode(), 3 << 21).result.unwrap();
        assert_eq!(phys, 0x60_0000);
    }

    #[test]
    fn five_level_walk() {
        let mut t = Tables::new(true);
        let virt = 0xff12_3456_7890_1000u64; // canonical only with LA57
        t.map(virt, 0x40_0000, PageSize::Size4K, PRESENT | WRITABLE | USER);
        let mode = t.mode();
        let tr = translate(&t.mem, &mode, virt + 5);
        assert_eq!(tr.steps.len(), 5);
        assert_eq!(tr.steps[0].level, 5);
        assert_eq!(tr.steps[0].index, ((virt >> 48) & 0x1ff) as u16);
        assert_eq!(tr.result.unwrap().0, 0x40_0005);
        let four = PagingMode {
            la57: false,
            ..mode
        };
        assert_eq!(
            translate(&t.mem, &four, virt).result,
            Err(WalkFault::NonCanonical(virt))
        );
    }

    #[test]
    fn mode_from_registers() {
        let cr0 = CR0_PG | 1;
        let mode = PagingMode::from_registers(cr0, 0x1000 | 0x18, CR4_PAE, EFER_LMA).unwrap();
        assert_eq!(mode.root(), 0x1000);
        assert!(!mode.la57 && !mode.nxe);
        let mode =
            PagingMode::from_registers(cr0, 0, CR4_PAE | CR4_LA57, EFER_LMA | EFER_NXE).unwrap();
        assert!(mode.la57 && mode.nxe && mode.levels() == 5);
        assert_eq!(
            PagingMode::from_registers(1, 0, 0, 0),
            Err(UnsupportedMode::PagingOff)
        );
        assert_eq!(
            PagingMode::from_registers(cr0, 0, CR4_PAE, 0),
            Err(UnsupportedMode::NotLongMode)
        );
    }

    #[test]
    fn translation_prints_one_line_per_level() {
        let t = Tables::standard();
        let text = translate(&t.mem, &t.mode(), KERNEL_TEXT).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("PML4 "), "{text}");
        assert!(lines[0].contains("[511]"), "{text}");
        assert!(lines[3].starts_with("PT "), "{text}");
        assert_eq!(
            lines[4],
            "0xffffffff80000000 -> 0x1000000  4K page      ro x  GLB"
        );
        let missing = translate(&t.mem, &t.mode(), 1 << 39).to_string();
        assert!(missing.ends_with("0x8000000000 does not translate: the PML4 entry is not present"));
    }

    /// Random bytes as page tables, mostly pointing back into a small RAM so
    /// that walks go deep and loop: nothing panics, every walk ends, and
    /// `translate` and `mappings` always agree.
    #[test]
    fn random_tables_never_panic_and_always_end() {
        const RAM: u64 = 256 << 10;
        let mem = GuestMemory::new(RAM).unwrap();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut bytes = vec![0u8; RAM as usize];
        for _ in 0..60 {
            for entry in bytes.chunks_exact_mut(8) {
                let mut e = rng.next();
                if !rng.one_in(4) {
                    e = (e & !ADDRESS_MASK) | ((rng.next() % (RAM / TABLE_BYTES)) << 12);
                }
                if rng.one_in(2) {
                    e &= !(0x7ff << 52);
                }
                entry.copy_from_slice(&e.to_le_bytes());
            }
            mem.write(GuestAddress(0), &bytes).unwrap();
            let mode = PagingMode {
                cr3: rng.next() % (RAM + RAM / 8),
                la57: rng.one_in(2),
                nxe: !rng.one_in(4),
            };
            for _ in 0..200 {
                let mut virt = rng.next();
                if !rng.one_in(8) {
                    virt = sign_extend(virt, mode.virtual_bits());
                }
                let tr = translate(&mem, &mode, virt);
                assert!(tr.steps.len() <= usize::from(mode.levels()));
                if let Ok((phys, size, _)) = tr.result {
                    assert_eq!(phys & (size.bytes() - 1), virt & (size.bytes() - 1));
                }
            }
            let (start, end) = if rng.one_in(2) {
                (0, u64::MAX)
            } else {
                let a = rng.next();
                let b = rng.next();
                (a.min(b), a.max(b))
            };
            let mut walk = mappings(&mem, &mode, start, end).with_table_limit(300);
            let maps: Vec<Mapping> = walk.by_ref().collect();
            assert!(walk.tables_read() <= 300);
            assert!(maps.len() <= 300 * ENTRIES);
            assert!(maps.windows(2).all(|w| w[0].virt < w[1].virt));
            for m in maps.iter().step_by(97) {
                let tr = translate(&mem, &mode, m.virt);
                assert_eq!(tr.result, Ok((m.phys, m.size, m.flags)), "{m}");
            }
            let merged = merged_ranges(maps.iter().copied(), MergeRule::Physical).count();
            assert!(merged <= maps.len());
            assert_eq!(maps.is_empty(), merged == 0);
        }
    }

    #[test]
    fn sizes_read_as_a_human_would() {
        assert_eq!(human_size(4096), "4K");
        assert_eq!(human_size(1 << 30), "1G");
        assert_eq!(human_size(3 << 20), "3M");
        assert_eq!(human_size((3 << 20) + 4096), "3076K");
        assert_eq!(human_size(1 << 64), "16E");
        assert_eq!(human_size(100), "100B");
    }
}
