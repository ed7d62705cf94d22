//! Page tables built by hand in guest memory, for the tests of the walker.
//!
//! [`Tables::standard`] is a small kernel-like address space:
//!
//! - the first 1 GiB identity-mapped with 2M pages (RW, NX, global), as
//!   Linux's early direct map is;
//! - a 1G page at 4 GiB;
//! - two user pages at `USER_VIRT`, adjacent virtually (the last entry of one
//!   page table and the first of the next) but not physically;
//! - a kernel image at `KERNEL_TEXT` = 0xffffffff80000000, mapped with 4K
//!   pages to `KERNEL_PHYS`: four pages of text (RX), two of rodata (RO,
//!   NX), two of data (RW, NX, dirty).

use super::*;

pub const KERNEL_TEXT: u64 = 0xffff_ffff_8000_0000;
pub const KERNEL_RODATA: u64 = KERNEL_TEXT + 0x4000;
pub const KERNEL_DATA: u64 = KERNEL_TEXT + 0x6000;
pub const KERNEL_PHYS: u64 = 0x100_0000;
pub const GIG_PAGE_VIRT: u64 = 4 << 30;
pub const GIG_PAGE_PHYS: u64 = 4 << 30;
pub const USER_VIRT: u64 = 0x7f00_001f_f000;
pub const USER_PHYS: u64 = 0x80_0000;
pub const USER_PHYS_2: u64 = 0x90_0000;

/// Where the root table goes; the others follow it.
const FIRST_TABLE: u64 = 0x20_0000;

pub struct Tables {
    pub mem: GuestMemory,
    pub root: u64,
    la57: bool,
    next_table: u64,
}

impl Tables {
    /// An empty root table in 64 MiB of RAM.
    pub fn new(la57: bool) -> Tables {
        Tables {
            mem: GuestMemory::new(64 << 20).unwrap(),
            root: FIRST_TABLE,
            la57,
            next_table: FIRST_TABLE + TABLE_BYTES,
        }
    }

    pub fn standard() -> Tables {
        let mut t = Tables::new(false);
        let direct = PRESENT | WRITABLE | NO_EXECUTE | GLOBAL | ACCESSED | DIRTY;
        let kernel_tables = PRESENT | WRITABLE;
        for page in 0..512u64 {
            let addr = page << 21;
            t.map_with_tables(addr, addr, PageSize::Size2M, direct, kernel_tables);
        }
        t.map_with_tables(
            GIG_PAGE_VIRT,
            GIG_PAGE_PHYS,
            PageSize::Size1G,
            PRESENT | WRITABLE,
            kernel_tables,
        );
        let user = PRESENT | WRITABLE | USER | NO_EXECUTE | ACCESSED;
        t.map(USER_VIRT, USER_PHYS, PageSize::Size4K, user);
        t.map(USER_VIRT + 0x1000, USER_PHYS_2, PageSize::Size4K, user);
        let sections = [
            (KERNEL_TEXT, 4, PRESENT | GLOBAL),
            (KERNEL_RODATA, 2, PRESENT | NO_EXECUTE | GLOBAL),
            (
                KERNEL_DATA,
                2,
                PRESENT | WRITABLE | NO_EXECUTE | GLOBAL | ACCESSED | DIRTY,
            ),
        ];
        for (start, pages, bits) in sections {
            for page in 0..pages {
                let virt = start + page * 0x1000;
                let phys = KERNEL_PHYS + (virt - KERNEL_TEXT);
                t.map_with_tables(virt, phys, PageSize::Size4K, bits, kernel_tables);
            }
        }
        t
    }

    pub fn mode(&self) -> PagingMode {
        PagingMode {
            cr3: self.root,
            la57: self.la57,
            nxe: true,
        }
    }

    pub fn set(&self, table: u64, index: u64, entry: u64) {
        self.mem
            .write_obj(GuestAddress(table + index * 8), &entry)
            .unwrap();
    }

    pub fn get(&self, table: u64, index: u64) -> u64 {
        self.mem
            .read_obj::<u64>(GuestAddress(table + index * 8))
            .unwrap()
    }

    /// The table at `level` on the path to `virt`, created (with
    /// `table_bits` in the entries that point at new tables) if missing.
    pub fn table_with(&mut self, virt: u64, level: u8, table_bits: u64) -> u64 {
        let top = if self.la57 { 5 } else { 4 };
        let mut table = self.root;
        for upper in (level + 1..=top).rev() {
            let index = (virt >> level_shift(upper)) & 511;
            let entry = self.get(table, index);
            table = if entry & PRESENT != 0 {
                entry & ADDRESS_MASK
            } else {
                let new = self.next_table;
                self.next_table += TABLE_BYTES;
                self.set(table, index, new | table_bits);
                new
            };
        }
        table
    }

    /// The table at `level` on the path to `virt`, created if missing.
    pub fn table_for(&mut self, virt: u64, level: u8) -> u64 {
        self.table_with(virt, level, PRESENT | WRITABLE | USER)
    }

    /// Maps one page, creating permissive (P, RW, US) tables on the way.
    pub fn map(&mut self, virt: u64, phys: u64, size: PageSize, leaf_bits: u64) {
        self.map_with_tables(virt, phys, size, leaf_bits, PRESENT | WRITABLE | USER);
    }

    /// Maps one page, creating tables with `table_bits` on the way.
    pub fn map_with_tables(
        &mut self,
        virt: u64,
        phys: u64,
        size: PageSize,
        leaf_bits: u64,
        table_bits: u64,
    ) {
        let level = size.level();
        let table = self.table_with(virt, level, table_bits);
        let ps = if level > 1 { PAGE_SIZE } else { 0 };
        let index = (virt >> level_shift(level)) & 511;
        self.set(table, index, phys | leaf_bits | ps);
    }
}

/// Marsaglia's xorshift64: random enough for fuzzing, and no dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True one time in `n`, a power of two.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next() & (n - 1) == 0
    }
}
