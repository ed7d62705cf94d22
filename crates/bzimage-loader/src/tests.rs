//! The loader end to end: open a file, load it into a real `GuestMemory`,
//! and read back what the kernel would find.

use super::*;
use crate::test_images::{bzimage, elf, payload_byte, BzImageSpec, ElfSpec, SegmentSpec, TempFile};
use hcall_abi::boot::{
    BootParams, E820Entry, BOOT_FLAG_MAGIC, CAN_USE_HEAP, E820_RAM, E820_RESERVED, HDRS_MAGIC,
    LOADED_HIGH, XLF_KERNEL_64,
};
use hcall_abi::layout::{
    ACPI_END, ACPI_START, BOOT_PDPT_ADDR, BOOT_PD_ADDR, EBDA_START, HIMEM_START, MEM_32BIT_GAP_END,
    MEM_32BIT_GAP_START,
};

const MIB: u64 = 1 << 20;

fn open(file: &TempFile) -> KernelImage {
    KernelImage::open(file.path()).unwrap()
}

fn zero_page(mem: &GuestMemory) -> BootParams {
    mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
}

fn e820(params: &BootParams) -> Vec<E820Entry> {
    params.e820_table[..params.e820_entries as usize].to_vec()
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read(GuestAddress(addr), &mut buf).unwrap();
    buf
}

fn open_error(file: &TempFile) -> String {
    let err = KernelImage::open(file.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: ", file.path().display())),
        "{message}"
    );
    message
}

/// A megabyte (and a bit) of recognizable initrd bytes.
fn initrd_bytes() -> Vec<u8> {
    (0..MIB as usize + 123)
        .map(|i| (i * 7 % 256) as u8)
        .collect()
}

#[test]
fn loads_a_bzimage_with_everything_in_its_place() {
    let spec = BzImageSpec::default();
    let kernel_file = TempFile::with("bzImage", &bzimage(&spec));
    let initrd_file = TempFile::with("initrd", &initrd_bytes());
    let kernel = open(&kernel_file);
    assert_eq!(
        kernel.kind(),
        KernelKind::BzImage {
            protocol_version: 0x020f
        }
    );
    let mem = GuestMemory::new(256 * MIB).unwrap();
    let cmdline = "console=ttyS0 root=/dev/vda rw";
    let setup = load(
        &mem,
        &kernel,
        &LoadOptions {
            cmdline,
            initrd: Some(initrd_file.path()),
            acpi_rsdp: Some(GuestAddress(ACPI_START)),
        },
    )
    .unwrap();

    let load_addr = spec.pref_address;
    assert_eq!(
        setup,
        BootSetup {
            entry: GuestAddress(load_addr + 0x200),
            boot_params: GuestAddress(ZERO_PAGE_ADDR),
            page_table_root: GuestAddress(BOOT_PML4_ADDR),
        }
    );
    // The protected-mode code, byte for byte, at the load address.
    let expected: Vec<u8> = (0..spec.payload_len).map(payload_byte).collect();
    assert_eq!(read(&mem, load_addr, spec.payload_len), expected);

    let params = zero_page(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.xloadflags }, XLF_KERNEL_64);
    assert_eq!({ hdr.init_size }, spec.init_size);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
    assert_eq!({ hdr.heap_end_ptr }, 0xfe00);
    assert_eq!({ hdr.vid_mode }, 0xffff);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ hdr.code32_start }, load_addr as u32);
    assert_eq!({ params.acpi_rsdp_addr }, ACPI_START);
    assert_eq!({ params.ext_cmd_line_ptr }, 0);
    assert_eq!(params.sentinel, 0);

    let mut expected_cmdline = cmdline.as_bytes().to_vec();
    expected_cmdline.push(0);
    assert_eq!(
        read(&mem, CMDLINE_ADDR, cmdline.len() + 1),
        expected_cmdline
    );

    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        type_: E820_RAM,
    };
    let reserved = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        type_: E820_RESERVED,
    };
    assert_eq!(
        e820(&params),
        vec![
            ram(0, EBDA_START),
            reserved(EBDA_START, ACPI_START),
            reserved(ACPI_START, ACPI_END),
            ram(HIMEM_START, 256 * MIB),
        ]
    );

    // The initrd: as high as it goes, on a page, clear of the kernel.
    let (image, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!({ params.ext_ramdisk_image }, 0);
    assert_eq!(size, initrd_bytes().len() as u64);
    assert_eq!(image % 4096, 0);
    assert!(image + size <= 256 * MIB);
    assert!(image + size > 256 * MIB - 4096);
    assert!(image >= load_addr + u64::from(spec.init_size));
    assert_eq!(read(&mem, image, size as usize), initrd_bytes());

    // The page tables: root, first PDPT entry, 2 MiB identity pages.
    let pml4e: u64 = mem.read_obj(GuestAddress(BOOT_PML4_ADDR)).unwrap();
    assert_eq!(pml4e, BOOT_PDPT_ADDR | 0x3);
    let pdpte: u64 = mem.read_obj(GuestAddress(BOOT_PDPT_ADDR + 3 * 8)).unwrap();
    assert_eq!(pdpte, (BOOT_PD_ADDR + 3 * 4096) | 0x3);
    let pde: u64 = mem.read_obj(GuestAddress(BOOT_PD_ADDR + 8 * 8)).unwrap();
    assert_eq!(pde, (8 << 21) | 0x83);
}

#[test]
fn a_large_guest_gets_ram_on_both_sides_of_the_hole_and_a_low_initrd() {
    let kernel_file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let initrd_file = TempFile::with("initrd", &initrd_bytes());
    let mem = GuestMemory::new(3500 * MIB).unwrap();
    load(
        &mem,
        &open(&kernel_file),
        &LoadOptions {
            cmdline: "",
            initrd: Some(initrd_file.path()),
            acpi_rsdp: None,
        },
    )
    .unwrap();
    let params = zero_page(&mem);
    let map = e820(&params);
    assert_eq!(map.len(), 5);
    assert_eq!(
        map[3],
        E820Entry {
            addr: HIMEM_START,
            size: MEM_32BIT_GAP_START - HIMEM_START,
            type_: E820_RAM
        }
    );
    assert_eq!(
        map[4],
        E820Entry {
            addr: MEM_32BIT_GAP_END,
            size: 3500 * MIB - MEM_32BIT_GAP_START,
            type_: E820_RAM
        }
    );
    // initrd_addr_max (2 GiB - 1) binds before the end of low RAM does.
    let end = { params.hdr.ramdisk_image } as u64 + { params.hdr.ramdisk_size } as u64;
    assert!(end <= 0x8000_0000 && end > 0x8000_0000 - 4096, "{end:#x}");
    assert_eq!({ params.acpi_rsdp_addr }, 0);
    assert_eq!(read(&mem, CMDLINE_ADDR, 1), [0]);
}

#[test]
fn the_initrd_stays_below_the_kernels_initrd_addr_max() {
    let kernel_file = TempFile::with(
        "bzImage",
        &bzimage(&BzImageSpec {
            initrd_addr_max: 0x07ff_ffff,
            ..BzImageSpec::default()
        }),
    );
    let initrd_file = TempFile::with("initrd", &initrd_bytes());
    let mem = GuestMemory::new(256 * MIB).unwrap();
    let opts = LoadOptions {
        initrd: Some(initrd_file.path()),
        ..LoadOptions::default()
    };
    load(&mem, &open(&kernel_file), &opts).unwrap();
    let hdr = zero_page(&mem).hdr;
    let end = { hdr.ramdisk_image } as u64 + { hdr.ramdisk_size } as u64;
    assert!(end <= 128 * MIB && end > 128 * MIB - 4096, "{end:#x}");
}

#[test]
fn loads_a_vmlinux_and_zeroes_its_bss() {
    let kernel_file = TempFile::with("vmlinux", &elf(&ElfSpec::default()));
    let kernel = open(&kernel_file);
    assert_eq!(kernel.kind(), KernelKind::Elf);
    let mem = GuestMemory::new(64 * MIB).unwrap();
    // Stale bytes where the bss goes, as after a reboot.
    mem.write(GuestAddress(0x120_1000), &[0xff; 0x7000])
        .unwrap();
    let setup = load(
        &mem,
        &kernel,
        &LoadOptions {
            cmdline: "console=hvc0",
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(setup.entry, GuestAddress(0x100_0000));
    let text: Vec<u8> = (0..0x3000).map(payload_byte).collect();
    assert_eq!(read(&mem, 0x100_0000, 0x3000), text);
    let data: Vec<u8> = (0..0x1000).map(payload_byte).collect();
    assert_eq!(read(&mem, 0x120_0000, 0x1000), data);
    assert_eq!(read(&mem, 0x120_1000, 0x7000), vec![0; 0x7000]);

    let params = zero_page(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags, LOADED_HIGH | CAN_USE_HEAP);
    assert_eq!({ hdr.kernel_alignment }, 0x100_0000);
    assert_eq!({ hdr.cmdline_size }, (CMDLINE_MAX_SIZE - 1) as u32);
    assert_eq!(params.e820_entries, 4);
    assert_eq!(read(&mem, CMDLINE_ADDR, 13), b"console=hvc0\0");
}

#[test]
fn a_vmlinux_initrd_goes_above_the_highest_segment() {
    let kernel_file = TempFile::with("vmlinux", &elf(&ElfSpec::default()));
    // Exactly fills the room between the bss's end and the end of the guest.
    let initrd_file = TempFile::sparse("initrd", 64 * MIB - 0x120_8000);
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let opts = LoadOptions {
        initrd: Some(initrd_file.path()),
        ..LoadOptions::default()
    };
    load(&mem, &open(&kernel_file), &opts).unwrap();
    assert_eq!({ zero_page(&mem).hdr.ramdisk_image }, 0x120_8000);
}

#[test]
fn refuses_a_vmlinux_segment_outside_ram() {
    let kernel_file = TempFile::with(
        "vmlinux",
        &elf(&ElfSpec {
            entry: 0x1000_0000,
            segments: vec![SegmentSpec {
                paddr: 0x1000_0000,
                vaddr: 0xffff_ffff_9000_0000,
                file_bytes: 0x1000,
                mem_size: 0x1000,
            }],
            ..ElfSpec::default()
        }),
    );
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let err = load(&mem, &open(&kernel_file), &LoadOptions::default()).unwrap_err();
    assert!(matches!(
        err,
        LoadError::ElfSegmentOutsideRam { index: 1, .. }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: ELF segment 1 (0x10000000..0x10001000) lies outside the guest RAM a kernel may \
             use (0x100000..0x4000000); give the guest more memory if it is too small",
            kernel_file.path().display()
        )
    );
}

#[test]
fn refuses_a_vmlinux_segment_over_lgs_low_memory() {
    let kernel_file = TempFile::with(
        "vmlinux",
        &elf(&ElfSpec {
            entry: 0x8000,
            segments: vec![SegmentSpec {
                paddr: 0x8000,
                vaddr: 0x8000,
                file_bytes: 0x100,
                mem_size: 0x100,
            }],
            ..ElfSpec::default()
        }),
    );
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let err = load(&mem, &open(&kernel_file), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::ElfSegmentOutsideRam { .. }));
}

#[test]
fn refuses_a_text_file() {
    let file = TempFile::with("notes.txt", &b"just some notes\n".repeat(100));
    assert!(
        open_error(&file).ends_with(": not a Linux kernel: no bzImage header and not an ELF file")
    );
}

#[test]
fn refuses_an_empty_file() {
    let file = TempFile::with("empty", b"");
    assert!(open_error(&file).ends_with(": not a Linux kernel: the file is empty"));
}

#[test]
fn refuses_a_missing_file() {
    let file = TempFile::path_for("missing");
    assert_eq!(
        open_error(&file),
        format!(
            "{}: cannot read kernel: No such file or directory",
            file.path().display()
        )
    );
}

#[test]
fn refuses_a_directory() {
    let dir = TempFile::path_for("kernel-dir");
    std::fs::create_dir(dir.path()).unwrap();
    assert!(open_error(&dir).ends_with(": is a directory, not a kernel"));
}

#[test]
fn refuses_a_truncated_bzimage() {
    let mut data = bzimage(&BzImageSpec::default());
    data.truncate(3000);
    let file = TempFile::with("bzImage", &data);
    let message = open_error(&file);
    assert!(message.contains("truncated bzImage: the header says 9216 bytes but the file has 3000"));
}

#[test]
fn refuses_a_32_bit_only_bzimage() {
    let file = TempFile::with(
        "vmlinuz-old",
        &bzimage(&BzImageSpec {
            xloadflags: 0,
            ..BzImageSpec::default()
        }),
    );
    assert!(open_error(&file).contains("a 32-bit-only kernel"));
}

#[test]
fn refuses_a_too_old_bzimage() {
    let file = TempFile::with(
        "bzImage-2.6.11",
        &bzimage(&BzImageSpec {
            version: 0x0204,
            ..BzImageSpec::default()
        }),
    );
    assert!(open_error(&file).contains("boot protocol 2.04 is too old"));
}

#[test]
fn refuses_a_bad_elf() {
    let arm = TempFile::with(
        "vmlinux-arm64",
        &elf(&ElfSpec {
            machine: 183,
            ..ElfSpec::default()
        }),
    );
    assert!(open_error(&arm).contains("not a 64-bit little-endian x86-64 one"));
    let empty = TempFile::with(
        "vmlinux-empty",
        &elf(&ElfSpec {
            segments: vec![],
            ..ElfSpec::default()
        }),
    );
    assert!(open_error(&empty).contains("no loadable (PT_LOAD) segment"));
    let mut data = elf(&ElfSpec::default());
    data.truncate(data.len() - 0x800);
    let truncated = TempFile::with("vmlinux-cut", &data);
    assert!(open_error(&truncated).contains("truncated ELF file: segment 2"));
}

#[test]
fn refuses_a_command_line_longer_than_the_kernel_takes() {
    let file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let cmdline = "x".repeat(3000);
    let opts = LoadOptions {
        cmdline: &cmdline,
        ..LoadOptions::default()
    };
    let err = load(&mem, &open(&file), &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the kernel command line is 3000 bytes; this kernel accepts at most 2047",
            file.path().display()
        )
    );
    // Exactly the limit is fine.
    let cmdline = "x".repeat(2047);
    let opts = LoadOptions {
        cmdline: &cmdline,
        ..LoadOptions::default()
    };
    load(&mem, &open(&file), &opts).unwrap();
    assert_eq!(read(&mem, CMDLINE_ADDR + 2046, 2), b"x\0");
}

#[test]
fn refuses_a_command_line_with_a_nul() {
    let file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let opts = LoadOptions {
        cmdline: "quiet\0init=/bin/sh",
        ..LoadOptions::default()
    };
    let err = load(&mem, &open(&file), &opts).unwrap_err();
    assert!(matches!(err, LoadError::CmdlineHasNul { .. }));
    assert!(err
        .to_string()
        .starts_with(&file.path().display().to_string()));
}

#[test]
fn refuses_an_initrd_too_large_for_the_guest() {
    let kernel_file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let initrd_file = TempFile::sparse("initrd.img", 20 * MIB);
    // The kernel claims 16..48 MiB, leaving 16 MiB above it.
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let opts = LoadOptions {
        initrd: Some(initrd_file.path()),
        ..LoadOptions::default()
    };
    let err = load(&mem, &open(&kernel_file), &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the initrd (20.0 MiB) does not fit in guest memory between the kernel's end \
             (0x3000000) and 0x4000000: give the guest more memory",
            initrd_file.path().display()
        )
    );
}

#[test]
fn refuses_a_missing_initrd() {
    let kernel_file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let initrd_file = TempFile::path_for("no-such-initrd");
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let opts = LoadOptions {
        initrd: Some(initrd_file.path()),
        ..LoadOptions::default()
    };
    let err = load(&mem, &open(&kernel_file), &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot read initrd: No such file or directory",
            initrd_file.path().display()
        )
    );
}

#[test]
fn refuses_an_initrd_that_is_a_directory() {
    let kernel_file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let dir = TempFile::path_for("initrd-dir");
    std::fs::create_dir(dir.path()).unwrap();
    let mem = GuestMemory::new(64 * MIB).unwrap();
    let opts = LoadOptions {
        initrd: Some(dir.path()),
        ..LoadOptions::default()
    };
    let err = load(&mem, &open(&kernel_file), &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: the initrd is not a regular file", dir.path().display())
    );
}

#[test]
fn refuses_a_guest_too_small_for_the_kernel() {
    let file = TempFile::with("bzImage", &bzimage(&BzImageSpec::default()));
    let mem = GuestMemory::new(32 * MIB).unwrap();
    let err = load(&mem, &open(&file), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LoadError::KernelTooBig { .. }));
    assert!(err
        .to_string()
        .starts_with(&file.path().display().to_string()));
    assert!(err.to_string().ends_with("give the guest more memory"));
}

/// The kernel lg really boots: Debian's, from the guest kit.
#[test]
fn loads_the_guest_kit_kernel() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/guest/bzImage"
    ));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask guest` to build the guest kit",
        path.display()
    );
    let kernel = KernelImage::open(path).unwrap();
    let KernelKind::BzImage { protocol_version } = kernel.kind() else {
        panic!("{} is not a bzImage: {:?}", path.display(), kernel.kind());
    };
    assert!(protocol_version >= 0x020c, "protocol {protocol_version:#x}");
    let initrd_file = TempFile::with("initrd", &initrd_bytes());
    let mem = GuestMemory::new(256 * MIB).unwrap();
    let setup = load(
        &mem,
        &kernel,
        &LoadOptions {
            cmdline: "console=ttyS0 panic=-1",
            initrd: Some(initrd_file.path()),
            acpi_rsdp: Some(GuestAddress(ACPI_START)),
        },
    )
    .unwrap();

    let params = zero_page(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.version }, protocol_version);
    assert_ne!({ hdr.xloadflags } & XLF_KERNEL_64, 0);
    assert_ne!(hdr.relocatable_kernel, 0);
    let load_addr = u64::from(hdr.code32_start);
    assert_eq!(load_addr, { hdr.pref_address });
    assert_eq!(setup.entry, GuestAddress(load_addr + 0x200));
    assert!(u64::from(hdr.init_size) > 0);
    assert_eq!(params.sentinel, 0);

    // The protected-mode code is in place.
    let data = std::fs::read(path).unwrap();
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let code = &data[(setup_sects + 1) * 512..];
    assert_eq!(read(&mem, load_addr, 4096), &code[..4096]);

    let (image, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
    assert_eq!(size, initrd_bytes().len() as u64);
    assert_eq!(image % 4096, 0);
    assert!(image >= load_addr + u64::from(hdr.init_size));
    assert!(image + size <= 256 * MIB);
    assert_eq!(read(&mem, image, 4096), &initrd_bytes()[..4096]);
    assert_eq!(e820(&params).len(), 4);
}

#[test]
fn a_vmlinux_whose_program_headers_lie_past_the_files_start_loads() {
    // `open` reads only the file's start; a table further in is read too.
    let mut data = elf(&ElfSpec::default());
    let phnum = usize::from(u16::from_le_bytes([data[56], data[57]]));
    let table = data[64..64 + phnum * 56].to_vec();
    let moved = (data.len() as u64).max(2 * HEAD_LEN).next_multiple_of(8);
    data.resize(moved as usize, 0);
    data.extend_from_slice(&table);
    data[32..40].copy_from_slice(&moved.to_le_bytes());
    let kernel_file = TempFile::with("vmlinux", &data);
    let kernel = open(&kernel_file);
    let mem = GuestMemory::new(64 * MIB).unwrap();
    load(&mem, &kernel, &LoadOptions::default()).unwrap();
    let text: Vec<u8> = (0..0x3000).map(payload_byte).collect();
    assert_eq!(read(&mem, 0x100_0000, 0x3000), text);
}

#[test]
fn a_kernel_from_bytes_loads_as_the_same_file_does() {
    let spec = BzImageSpec::default();
    let bytes = bzimage(&spec);
    let kernel_file = TempFile::with("bzImage", &bytes);
    let from_file = GuestMemory::new(64 * MIB).unwrap();
    load(&from_file, &open(&kernel_file), &LoadOptions::default()).unwrap();
    let from_bytes = GuestMemory::new(64 * MIB).unwrap();
    let kernel = KernelImage::from_bytes(kernel_file.path(), bytes.clone()).unwrap();
    load(&from_bytes, &kernel, &LoadOptions::default()).unwrap();
    let code_len = bytes.len() - (usize::from(bytes[0x1f1]) + 1) * 512;
    let placed = read(&from_file, spec.pref_address, code_len);
    assert_eq!(placed, read(&from_bytes, spec.pref_address, code_len));
    assert_eq!(placed[..16], bytes[bytes.len() - code_len..][..16]);
}
