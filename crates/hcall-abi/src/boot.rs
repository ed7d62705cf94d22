//! The Linux x86 boot protocol: how a loader hands a kernel its world.
//!
//! Linux does not ask the firmware what the machine looks like; whoever loads
//! it fills in one page, the "zero page" (`struct boot_params`), and passes its
//! address in %rsi. lguest's launcher did this for its paravirtualized guest;
//! lg does it for an unmodified kernel, which is why this is the nearest thing
//! lg has to lguest's hypercall header. The page holds the kernel's own setup
//! header (copied out of the bzImage, then amended by the loader), the e820
//! memory map, the command-line pointer, the initrd's place and the ACPI root.
//!
//! The layouts are Linux's `arch/x86/include/uapi/asm/bootparam.h` and
//! `e820/types.h`, byte for byte; `Documentation/arch/x86/boot.rst` says what
//! each field means. Fields lg never touches are kept as byte arrays under
//! their Linux names, so every offset still matches and the compile-time
//! checks at the bottom can prove it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Where the setup header sits in a bzImage file and in the zero page.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// The `boot_flag` every bootable image carries: the old boot-sector
/// signature, at the same offset as on a floppy.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// The `header` field: "HdrS" read as a little-endian u32. Its presence
/// means the image speaks boot protocol 2.00 or later.
pub const HDRS_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// `type_of_loader` for a loader with no assigned ID, which is what lg is.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `vid_mode` asking for the normal 80x25 text mode, i.e. "leave video alone".
pub const VID_MODE_NORMAL: u16 = 0xffff;

/// `loadflags`: the protected-mode kernel is loaded at 0x100000 or above
/// (a bzImage, not a zImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: set by the kernel itself when it applied KASLR.
pub const KASLR_FLAG: u8 = 1 << 1;
/// `loadflags`: suppress early messages.
pub const QUIET_FLAG: u8 = 1 << 5;
/// `loadflags`: the 32-bit entry must not reload segment registers.
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;

/// `xloadflags`: the kernel has a 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags`: kernel, boot_params, command line and initrd may sit above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `xloadflags`: the kernel has a 32-bit EFI handover entry.
pub const XLF_EFI_HANDOVER_32: u16 = 1 << 2;
/// `xloadflags`: the kernel has a 64-bit EFI handover entry.
pub const XLF_EFI_HANDOVER_64: u16 = 1 << 3;
/// `xloadflags`: the kernel supports kexec EFI boot with EFI runtime support.
pub const XLF_EFI_KEXEC: u16 = 1 << 4;
/// `xloadflags`: the kernel supports 5-level paging.
pub const XLF_5LEVEL: u16 = 1 << 5;
/// `xloadflags`: the kernel was started with 5-level paging enabled.
pub const XLF_5LEVEL_ENABLED: u16 = 1 << 6;
/// `xloadflags`: the kernel supports memory encryption.
pub const XLF_MEM_ENCRYPTION: u16 = 1 << 7;

/// How many e820 entries fit in the zero page itself.
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved, never to be used as RAM.
pub const E820_RESERVED: u32 = 2;
/// e820 type: ACPI tables, reclaimable once the kernel has parsed them.
pub const E820_ACPI: u32 = 3;
/// e820 type: ACPI non-volatile storage, preserved across sleep.
pub const E820_NVS: u32 = 4;
/// e820 type: memory found to be faulty.
pub const E820_UNUSABLE: u32 = 5;
/// e820 type: persistent memory.
pub const E820_PMEM: u32 = 7;

/// The kernel's setup header, `struct setup_header`: at offset 0x1f1 of a
/// bzImage, and again at 0x1f1 of the zero page where the loader puts its
/// answers. Comments give each field's zero-page offset.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct SetupHeader {
    /// 0x1f1: real-mode setup size in 512-byte sectors; 0 means 4.
    pub setup_sects: u8,
    /// 0x1f2: mount the root read-only (obsolete).
    pub root_flags: u16,
    /// 0x1f4: the protected-mode code's size in 16-byte paragraphs.
    pub syssize: u32,
    /// 0x1f8: obsolete.
    pub ram_size: u16,
    /// 0x1fa: video mode control.
    pub vid_mode: u16,
    /// 0x1fc: default root device (obsolete).
    pub root_dev: u16,
    /// 0x1fe: 0xaa55.
    pub boot_flag: u16,
    /// 0x200: a short jump over the header; its target says where the header ends.
    pub jump: u16,
    /// 0x202: "HdrS".
    pub header: u32,
    /// 0x206: boot protocol version, major in the high byte.
    pub version: u16,
    /// 0x208: real-mode switch hook.
    pub realmode_swtch: u32,
    /// 0x20c: obsolete.
    pub start_sys_seg: u16,
    /// 0x20e: pointer to the kernel version string, minus 0x200.
    pub kernel_version: u16,
    /// 0x210: who loaded the kernel.
    pub type_of_loader: u8,
    /// 0x211: `LOADED_HIGH`, `CAN_USE_HEAP`, ...
    pub loadflags: u8,
    /// 0x212: obsolete.
    pub setup_move_size: u16,
    /// 0x214: where the protected-mode kernel was loaded.
    pub code32_start: u32,
    /// 0x218: initrd address, low 32 bits.
    pub ramdisk_image: u32,
    /// 0x21c: initrd size, low 32 bits.
    pub ramdisk_size: u32,
    /// 0x220: obsolete.
    pub bootsect_kludge: u32,
    /// 0x224: end of the real-mode heap, minus 0x200.
    pub heap_end_ptr: u16,
    /// 0x226: loader version extension.
    pub ext_loader_ver: u8,
    /// 0x227: loader type extension.
    pub ext_loader_type: u8,
    /// 0x228: command line address, low 32 bits.
    pub cmd_line_ptr: u32,
    /// 0x22c: the highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// 0x230: the alignment a relocatable kernel needs.
    pub kernel_alignment: u32,
    /// 0x234: nonzero if the kernel may be loaded anywhere suitably aligned.
    pub relocatable_kernel: u8,
    /// 0x235: minimum alignment, as a power of two.
    pub min_alignment: u8,
    /// 0x236: `XLF_KERNEL_64`, ...
    pub xloadflags: u16,
    /// 0x238: the longest command line the kernel accepts, NUL excluded.
    pub cmdline_size: u32,
    /// 0x23c: hardware subarchitecture (0 for a normal PC).
    pub hardware_subarch: u32,
    /// 0x240: subarchitecture-specific data.
    pub hardware_subarch_data: u64,
    /// 0x248: offset of the compressed kernel within the protected-mode code.
    pub payload_offset: u32,
    /// 0x24c: length of the compressed kernel.
    pub payload_length: u32,
    /// 0x250: physical address of a linked list of `struct setup_data`.
    pub setup_data: u64,
    /// 0x258: where a relocatable kernel would like to be loaded.
    pub pref_address: u64,
    /// 0x260: how much memory the kernel needs from its load address until
    /// it has finished decompressing and can set up its own memory map.
    pub init_size: u32,
    /// 0x264: EFI handover entry offset.
    pub handover_offset: u32,
    /// 0x268: offset of `struct kernel_info` within the protected-mode code.
    pub kernel_info_offset: u32,
}

/// One entry of the e820 memory map, `struct boot_e820_entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// `E820_RAM`, `E820_RESERVED`, ...
    pub type_: u32,
}

/// The zero page, `struct boot_params`: exactly one 4 KiB page.
///
/// The loader must zero it before filling it in. Linux checks this through
/// `sentinel` (0x1ef), which is 0xff in every bzImage file: a loader that
/// copies the file's first page wholesale leaves it set, and the kernel then
/// wipes the fields such a loader would have left stale. lg starts from zero
/// and copies only the setup header, so the sentinel stays clear.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct BootParams {
    /// 0x000: `struct screen_info`.
    pub screen_info: [u8; 0x40],
    /// 0x040: `struct apm_bios_info`.
    pub apm_bios_info: [u8; 0x14],
    /// 0x054
    pub _pad2: [u8; 4],
    /// 0x058: Intel TXT's boot address.
    pub tboot_addr: u64,
    /// 0x060: `struct ist_info` (SpeedStep).
    pub ist_info: [u8; 0x10],
    /// 0x070: the ACPI RSDP's physical address; the kernel looks here before
    /// scanning the BIOS area.
    pub acpi_rsdp_addr: u64,
    /// 0x078
    pub _pad3: [u8; 8],
    /// 0x080: obsolete disk parameters.
    pub hd0_info: [u8; 16],
    /// 0x090: obsolete disk parameters.
    pub hd1_info: [u8; 16],
    /// 0x0a0: `struct sys_desc_table`, obsolete.
    pub sys_desc_table: [u8; 16],
    /// 0x0b0: `struct olpc_ofw_header`.
    pub olpc_ofw_header: [u8; 16],
    /// 0x0c0: initrd address, high 32 bits.
    pub ext_ramdisk_image: u32,
    /// 0x0c4: initrd size, high 32 bits.
    pub ext_ramdisk_size: u32,
    /// 0x0c8: command line address, high 32 bits.
    pub ext_cmd_line_ptr: u32,
    /// 0x0cc
    pub _pad4: [u8; 112],
    /// 0x13c: confidential-computing blob.
    pub cc_blob_address: u32,
    /// 0x140: `struct edid_info`.
    pub edid_info: [u8; 0x80],
    /// 0x1c0: `struct efi_info`.
    pub efi_info: [u8; 0x20],
    /// 0x1e0: alternative memory size in KiB (obsolete).
    pub alt_mem_k: u32,
    /// 0x1e4: scratch space for the kernel's setup code.
    pub scratch: u32,
    /// 0x1e8: how many entries of `e820_table` are valid.
    pub e820_entries: u8,
    /// 0x1e9: how many entries of `eddbuf` are valid.
    pub eddbuf_entries: u8,
    /// 0x1ea: how many entries of `edd_mbr_sig_buffer` are valid.
    pub edd_mbr_sig_buf_entries: u8,
    /// 0x1eb: keyboard status.
    pub kbd_status: u8,
    /// 0x1ec: the firmware's secure-boot state.
    pub secure_boot: u8,
    /// 0x1ed
    pub _pad5: [u8; 2],
    /// 0x1ef: nonzero means "this page was not zeroed"; see the type's docs.
    pub sentinel: u8,
    /// 0x1f0
    pub _pad6: [u8; 1],
    /// 0x1f1: the setup header.
    pub hdr: SetupHeader,
    /// 0x26c: room for the setup header to grow.
    pub _pad7: [u8; 0x290 - 0x26c],
    /// 0x290: disk MBR signatures.
    pub edd_mbr_sig_buffer: [u32; 16],
    /// 0x2d0: the memory map.
    pub e820_table: [E820Entry; E820_MAX_ENTRIES_ZEROPAGE],
    /// 0xcd0
    pub _pad8: [u8; 48],
    /// 0xd00: six `struct edd_info` of 82 bytes each.
    pub eddbuf: [u8; 6 * 82],
    /// 0xeec
    pub _pad9: [u8; 276],
}

// The layouts must match Linux to the byte; these fail the build if not.
const _: () = assert!(core::mem::size_of::<SetupHeader>() == 0x26c - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::size_of::<E820Entry>() == 20);
const _: () = assert!(core::mem::size_of::<BootParams>() == 4096);
const _: () = assert!(core::mem::offset_of!(SetupHeader, jump) == 0x200 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, header) == 0x202 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, loadflags) == 0x211 - SETUP_HEADER_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(SetupHeader, cmd_line_ptr) == 0x228 - SETUP_HEADER_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(SetupHeader, xloadflags) == 0x236 - SETUP_HEADER_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(SetupHeader, pref_address) == 0x258 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, init_size) == 0x260 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(BootParams, tboot_addr) == 0x058);
const _: () = assert!(core::mem::offset_of!(BootParams, acpi_rsdp_addr) == 0x070);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_ramdisk_image) == 0x0c0);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_ramdisk_size) == 0x0c4);
const _: () = assert!(core::mem::offset_of!(BootParams, ext_cmd_line_ptr) == 0x0c8);
const _: () = assert!(core::mem::offset_of!(BootParams, cc_blob_address) == 0x13c);
const _: () = assert!(core::mem::offset_of!(BootParams, edid_info) == 0x140);
const _: () = assert!(core::mem::offset_of!(BootParams, efi_info) == 0x1c0);
const _: () = assert!(core::mem::offset_of!(BootParams, alt_mem_k) == 0x1e0);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_entries) == 0x1e8);
const _: () = assert!(core::mem::offset_of!(BootParams, sentinel) == 0x1ef);
const _: () = assert!(core::mem::offset_of!(BootParams, hdr) == SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(BootParams, edd_mbr_sig_buffer) == 0x290);
const _: () = assert!(core::mem::offset_of!(BootParams, e820_table) == 0x2d0);
const _: () = assert!(core::mem::offset_of!(BootParams, _pad8) == 0xcd0);
const _: () = assert!(core::mem::offset_of!(BootParams, eddbuf) == 0xd00);
const _: () = assert!(core::mem::offset_of!(BootParams, _pad9) == 0xeec);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn hdrs_magic_reads_as_the_bytes_in_the_file() {
        assert_eq!(HDRS_MAGIC.to_le_bytes(), *b"HdrS");
        assert_eq!(HDRS_MAGIC, 0x5372_6448);
    }

    #[test]
    fn fields_land_at_their_zero_page_offsets() {
        let mut params = BootParams::new_zeroed();
        params.hdr.version = 0x020f;
        params.e820_entries = 3;
        params.acpi_rsdp_addr = 0xe0000;
        params.e820_table[1] = E820Entry {
            addr: 0x100000,
            size: 0x200000,
            type_: E820_RAM,
        };
        let bytes = params.as_bytes();
        assert_eq!(&bytes[0x206..0x208], &[0x0f, 0x02]);
        assert_eq!(bytes[0x1e8], 3);
        assert_eq!(&bytes[0x70..0x78], &0xe0000u64.to_le_bytes());
        let entry = 0x2d0 + 20;
        assert_eq!(&bytes[entry..entry + 8], &0x100000u64.to_le_bytes());
        assert_eq!(&bytes[entry + 16..entry + 20], &E820_RAM.to_le_bytes());
    }
}
