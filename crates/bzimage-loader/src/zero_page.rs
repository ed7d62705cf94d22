//! The zero page: the one page through which lg tells the kernel everything
//! a BIOS and a bootloader would have told it.
//!
//! It starts as zeros (Linux checks, see `BootParams`), receives the
//! kernel's own setup header, and then the loader's answers to it: who loaded
//! the kernel, where the command line and the initrd are, where the ACPI
//! tables start, and the e820 map, which is the only description of RAM the
//! kernel gets. A real BIOS fills that map from the chipset; lg writes down
//! the RAM it mapped and fences off the low-memory areas PC firmware owns.

use hcall_abi::boot::{
    BootParams, E820Entry, SetupHeader, BOOT_FLAG_MAGIC, CAN_USE_HEAP, E820_RAM, E820_RESERVED,
    HDRS_MAGIC, LOADED_HIGH, LOADER_TYPE_UNDEFINED, VID_MODE_NORMAL,
};
use hcall_abi::layout::{
    ACPI_END, ACPI_START, CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START,
};
use shadow_mmu::{GuestAddress, MemoryRegion};
use zerocopy::FromZeros;

use crate::initrd::PlacedInitrd;

/// The protocol version lg claims on behalf of a vmlinux, which has no
/// header of its own: 2.15, the current one.
const ELF_PROTOCOL: u16 = 0x020f;
/// The real-mode heap's end, as an offset from the setup code: the value
/// boot.rst recommends. lg never runs the real-mode code that would use it,
/// but it says so the way every loader does.
const HEAP_END_PTR: u16 = 0xfe00;
/// The alignment lg declares for a vmlinux: what x86-64 kernels use.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The highest initrd byte a 64-bit kernel accepts when nothing says otherwise.
pub(crate) const DEFAULT_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;

/// A setup header for a kernel that came without one (a vmlinux): just
/// enough for the kernel to see a modern, well-behaved loader.
pub(crate) fn elf_header() -> SetupHeader {
    let mut header = SetupHeader::new_zeroed();
    header.boot_flag = BOOT_FLAG_MAGIC;
    header.header = HDRS_MAGIC;
    header.version = ELF_PROTOCOL;
    header.kernel_alignment = ELF_KERNEL_ALIGNMENT;
    header.initrd_addr_max = DEFAULT_INITRD_ADDR_MAX;
    header.cmdline_size = (CMDLINE_MAX_SIZE - 1) as u32;
    header
}

/// The zero page for a kernel whose header is `header`, loaded at
/// `load_addr`, in a guest with RAM `regions`.
pub(crate) fn build(
    mut header: SetupHeader,
    load_addr: u64,
    initrd: Option<PlacedInitrd>,
    acpi_rsdp: Option<GuestAddress>,
    regions: &[MemoryRegion],
) -> BootParams {
    let mut params = BootParams::new_zeroed();
    header.type_of_loader = LOADER_TYPE_UNDEFINED;
    header.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    header.heap_end_ptr = HEAP_END_PTR;
    header.vid_mode = VID_MODE_NORMAL;
    header.cmd_line_ptr = CMDLINE_ADDR as u32;
    // Everything lg places is below 4 GiB, so the high halves stay zero; a
    // header never carries a setup_data list meant for the kernel.
    header.code32_start = load_addr as u32;
    header.setup_data = 0;
    if let Some(initrd) = initrd {
        header.ramdisk_image = initrd.addr as u32;
        header.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.hdr = header;
    if let Some(rsdp) = acpi_rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    let map = e820_map(regions);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    params
}

/// The guest's memory map: conventional memory, the firmware areas, then
/// each RAM region above them.
pub(crate) fn e820_map(regions: &[MemoryRegion]) -> Vec<E820Entry> {
    let entry = |addr, end: u64, type_| E820Entry {
        addr,
        size: end - addr,
        type_,
    };
    let low_end = regions.first().map_or(0, MemoryRegion::end);
    let mut map = vec![
        entry(0, EBDA_START.min(low_end), E820_RAM),
        // The EBDA and the old video and option-ROM windows: nothing lives
        // there in an lg guest, but Linux expects a PC's hole here and would
        // otherwise hand the pages out and later trip over them.
        entry(EBDA_START, ACPI_START, E820_RESERVED),
        // The ACPI tables, in the BIOS area. Reserved, as real firmware
        // reports this area, rather than E820_ACPI, which would invite the
        // kernel to reclaim the pages once it has parsed the tables.
        entry(ACPI_START, ACPI_END, E820_RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push(entry(HIMEM_START, low_end, E820_RAM));
    }
    for region in regions.iter().skip(1) {
        map.push(entry(region.guest_base.0, region.end(), E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcall_abi::layout::{MEM_32BIT_GAP_END, MEM_32BIT_GAP_START};
    use shadow_mmu::GuestMemory;

    const MIB: u64 = 1 << 20;

    fn ram(addr: u64, end: u64) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            type_: E820_RAM,
        }
    }

    fn reserved(addr: u64, end: u64) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            type_: E820_RESERVED,
        }
    }

    #[test]
    fn a_small_guest_has_low_ram_the_bios_holes_and_high_ram() {
        let mem = GuestMemory::new(256 * MIB).unwrap();
        assert_eq!(
            e820_map(mem.regions()),
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, ACPI_START),
                reserved(ACPI_START, ACPI_END),
                ram(HIMEM_START, 256 * MIB),
            ]
        );
    }

    #[test]
    fn a_large_guest_has_ram_on_both_sides_of_the_hole() {
        let mem = GuestMemory::new(3500 * MIB).unwrap();
        let map = e820_map(mem.regions());
        assert_eq!(map.len(), 5);
        assert_eq!(map[3], ram(HIMEM_START, MEM_32BIT_GAP_START));
        let above = 3500 * MIB - MEM_32BIT_GAP_START;
        assert_eq!(map[4], ram(MEM_32BIT_GAP_END, MEM_32BIT_GAP_END + above));
        let total: u64 = map
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(total, 3500 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn the_loader_answers_the_header() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let initrd = PlacedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let params = build(
            elf_header(),
            0x100_0000,
            Some(initrd),
            Some(GuestAddress(0xe0000)),
            mem.regions(),
        );
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!(
            hdr.loadflags & (LOADED_HIGH | CAN_USE_HEAP),
            LOADED_HIGH | CAN_USE_HEAP
        );
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.code32_start }, 0x100_0000);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(params.e820_entries, 4);
        assert_eq!(params.sentinel, 0);
    }
}
