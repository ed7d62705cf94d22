//! Kernels made to order for the tests: the smallest bzImage and vmlinux the
//! loader will accept, with knobs for the ways real ones go wrong, and
//! temporary files to put them in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use hcall_abi::boot::{
    SetupHeader, BOOT_FLAG_MAGIC, HDRS_MAGIC, LOADED_HIGH, SETUP_HEADER_OFFSET, XLF_KERNEL_64,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::elf::{Elf64Ehdr, Elf64Phdr, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_EXEC, PT_LOAD};

/// What a crafted bzImage's header says.
pub struct BzImageSpec {
    pub setup_sects: u8,
    pub version: u16,
    pub xloadflags: u16,
    pub relocatable: bool,
    pub pref_address: u64,
    pub init_size: u32,
    pub initrd_addr_max: u32,
    /// Bytes of protected-mode code; a multiple of 16.
    pub payload_len: usize,
}

impl Default for BzImageSpec {
    fn default() -> Self {
        BzImageSpec {
            setup_sects: 1,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            relocatable: true,
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            initrd_addr_max: 0x7fff_ffff,
            payload_len: 8192,
        }
    }
}

/// The byte at offset `i` of a crafted payload: not constant, so a test can
/// tell a misplaced copy from a right one.
pub fn payload_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A bzImage with real-mode setup sectors of zeros around a valid header,
/// followed by `payload_len` bytes of recognizable "protected-mode code".
pub fn bzimage(spec: &BzImageSpec) -> Vec<u8> {
    let sects = if spec.setup_sects == 0 {
        4
    } else {
        spec.setup_sects as usize
    };
    let kernel_offset = (sects + 1) * 512;
    let mut data = vec![0u8; kernel_offset + spec.payload_len];
    let mut header = SetupHeader::new_zeroed();
    header.setup_sects = spec.setup_sects;
    header.syssize = (spec.payload_len / 16) as u32;
    header.boot_flag = BOOT_FLAG_MAGIC;
    // A short jump to just past the full header, as a modern kernel has.
    header.jump = u16::from_le_bytes([0xeb, (0x26c - 0x202) as u8]);
    header.header = HDRS_MAGIC;
    header.version = spec.version;
    header.loadflags = LOADED_HIGH;
    header.initrd_addr_max = spec.initrd_addr_max;
    header.kernel_alignment = 0x20_0000;
    header.relocatable_kernel = spec.relocatable as u8;
    header.xloadflags = spec.xloadflags;
    header.cmdline_size = 2047;
    header.pref_address = spec.pref_address;
    header.init_size = spec.init_size;
    let bytes = header.as_bytes();
    data[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + bytes.len()].copy_from_slice(bytes);
    for (i, byte) in data[kernel_offset..].iter_mut().enumerate() {
        *byte = payload_byte(i);
    }
    data
}

/// One PT_LOAD segment of a crafted vmlinux; its file bytes are
/// `payload_byte` values.
pub struct SegmentSpec {
    pub paddr: u64,
    pub vaddr: u64,
    pub file_bytes: u64,
    pub mem_size: u64,
}

/// What a crafted vmlinux's headers say.
pub struct ElfSpec {
    pub machine: u16,
    pub e_type: u16,
    pub entry: u64,
    pub segments: Vec<SegmentSpec>,
}

impl Default for ElfSpec {
    fn default() -> Self {
        ElfSpec {
            machine: EM_X86_64,
            e_type: ET_EXEC,
            entry: 0x100_0000,
            segments: vec![
                // Text: all from the file.
                SegmentSpec {
                    paddr: 0x100_0000,
                    vaddr: 0xffff_ffff_8100_0000,
                    file_bytes: 0x3000,
                    mem_size: 0x3000,
                },
                // Data and bss: a zeroed tail.
                SegmentSpec {
                    paddr: 0x120_0000,
                    vaddr: 0xffff_ffff_8120_0000,
                    file_bytes: 0x1000,
                    mem_size: 0x8000,
                },
            ],
        }
    }
}

/// A vmlinux: ELF header, a PT_NOTE to be skipped, the PT_LOADs, then each
/// segment's bytes.
pub fn elf(spec: &ElfSpec) -> Vec<u8> {
    let phnum = spec.segments.len() + 1;
    let mut offset = (size_of::<Elf64Ehdr>() + phnum * size_of::<Elf64Phdr>()) as u64;
    let mut ehdr = Elf64Ehdr::new_zeroed();
    ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
    ehdr.e_ident[4] = ELFCLASS64;
    ehdr.e_ident[5] = ELFDATA2LSB;
    ehdr.e_ident[6] = 1;
    ehdr.e_type = spec.e_type;
    ehdr.e_machine = spec.machine;
    ehdr.e_version = 1;
    ehdr.e_entry = spec.entry;
    ehdr.e_phoff = size_of::<Elf64Ehdr>() as u64;
    ehdr.e_ehsize = size_of::<Elf64Ehdr>() as u16;
    ehdr.e_phentsize = size_of::<Elf64Phdr>() as u16;
    ehdr.e_phnum = phnum as u16;
    let mut data = ehdr.as_bytes().to_vec();
    let mut note = Elf64Phdr::new_zeroed();
    note.p_type = 4;
    data.extend_from_slice(note.as_bytes());
    for segment in &spec.segments {
        let phdr = Elf64Phdr {
            p_type: PT_LOAD,
            p_flags: 7,
            p_offset: offset,
            p_vaddr: segment.vaddr,
            p_paddr: segment.paddr,
            p_filesz: segment.file_bytes,
            p_memsz: segment.mem_size,
            p_align: 0x20_0000,
        };
        data.extend_from_slice(phdr.as_bytes());
        offset += segment.file_bytes;
    }
    for segment in &spec.segments {
        data.extend((0..segment.file_bytes as usize).map(payload_byte));
    }
    data
}

/// A file in the system's temporary directory, removed when dropped.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A fresh, not yet created path ending in `name`.
    pub fn path_for(name: &str) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "lg-bzimage-loader-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TempFile {
            path: std::env::temp_dir().join(unique),
        }
    }

    /// A file holding `contents`.
    pub fn with(name: &str, contents: &[u8]) -> TempFile {
        let file = TempFile::path_for(name);
        std::fs::write(&file.path, contents).expect("write a temporary file");
        file
    }

    /// A sparse file of `len` bytes: large, but costs no disk.
    pub fn sparse(name: &str, len: u64) -> TempFile {
        let file = TempFile::path_for(name);
        std::fs::File::create(&file.path)
            .and_then(|f| f.set_len(len))
            .expect("create a sparse temporary file");
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}
