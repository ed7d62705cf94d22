//! The boot page tables: the smallest paging setup that lets a CPU be in
//! long mode at all.
//!
//! x86-64 cannot run 64-bit code with paging off, so before the first
//! instruction of `startup_64` something must have built page tables; on a
//! PC that is the bootloader's job, here it is lg's. The kernel only needs
//! its own image, the zero page, the command line and the initrd to be
//! reachable at their physical addresses, and it replaces these tables within
//! its first few hundred instructions. So lg identity-maps the first 4 GiB
//! with 2 MiB pages: one PML4 entry, four PDPT entries, four page directories,
//! six pages in all, and everything lg placed is below 4 GiB.

use hcall_abi::layout::{BOOT_PDPT_ADDR, BOOT_PD_ADDR, BOOT_PD_COUNT, BOOT_PML4_ADDR};
use shadow_mmu::{GuestAddress, GuestMemory, MemoryError};

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// In a page-directory entry: this maps a 2 MiB page, not a page table.
const PAGE_SIZE_2M: u64 = 1 << 7;
/// Entries in one page-table page.
const ENTRIES: usize = 512;
const TABLE_BYTES: u64 = 4096;

/// Writes the tables; their root (for CR3) is `BOOT_PML4_ADDR`.
pub(crate) fn write(mem: &GuestMemory) -> Result<(), MemoryError> {
    let mut pml4 = [0u64; ENTRIES];
    pml4[0] = BOOT_PDPT_ADDR | PRESENT | WRITABLE;
    mem.write_obj(GuestAddress(BOOT_PML4_ADDR), &pml4)?;

    let mut pdpt = [0u64; ENTRIES];
    for (gib, entry) in pdpt.iter_mut().take(BOOT_PD_COUNT as usize).enumerate() {
        *entry = (BOOT_PD_ADDR + gib as u64 * TABLE_BYTES) | PRESENT | WRITABLE;
    }
    mem.write_obj(GuestAddress(BOOT_PDPT_ADDR), &pdpt)?;

    for gib in 0..BOOT_PD_COUNT {
        let pd: [u64; ENTRIES] = std::array::from_fn(|i| {
            let page = gib * ENTRIES as u64 + i as u64;
            (page << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M
        });
        mem.write_obj(GuestAddress(BOOT_PD_ADDR + gib * TABLE_BYTES), &pd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables as the CPU would for a 2 MiB-mapped address.
    fn translate(mem: &GuestMemory, addr: u64) -> u64 {
        let read = |table: u64, index: u64| {
            mem.read_obj::<u64>(GuestAddress(table + index * 8))
                .unwrap()
        };
        let pml4e = read(BOOT_PML4_ADDR, (addr >> 39) & 511);
        assert_eq!(pml4e & PRESENT, PRESENT);
        let pdpte = read(pml4e & !0xfff, (addr >> 30) & 511);
        assert_eq!(pdpte & PRESENT, PRESENT);
        let pde = read(pdpte & !0xfff, (addr >> 21) & 511);
        assert_eq!(pde & 0xfff, 0x83);
        (pde & !0x1f_ffff) | (addr & 0x1f_ffff)
    }

    #[test]
    fn identity_maps_the_first_four_gigabytes() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        write(&mem).unwrap();
        for addr in [
            0,
            0x7000,
            0x100_0000 + 0x200,
            0xbfff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, addr), addr);
        }
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_PML4_ADDR + 8))
                .unwrap(),
            0
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_PDPT_ADDR + 4 * 8))
                .unwrap(),
            0
        );
    }
}
