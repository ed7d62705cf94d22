//! The uncompressed kernel: `vmlinux`, the ELF file a kernel build leaves at
//! the top of the tree before it is compressed into a bzImage.
//!
//! Booting it directly skips the decompressor, which is what a developer in
//! an edit-build-boot loop wants, and it is what lguest's launcher loaded.
//! An x86-64 vmlinux is linked to run at a high virtual address, but its
//! program headers also give each segment's physical address, and its entry
//! point is the physical address of `startup_64`: with identity-mapped page
//! tables lg can jump there exactly as it jumps into a bzImage.

use std::path::Path;

use hcall_abi::layout::HIMEM_START;
use shadow_mmu::{GuestAddress, GuestMemory};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::LoadError;
use crate::KernelImage;

/// The four bytes every ELF file starts with.
pub(crate) const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// `e_ident[EI_CLASS]`: 64-bit objects.
pub(crate) const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]`: little-endian.
pub(crate) const ELFDATA2LSB: u8 = 1;
/// `e_type`: an executable.
pub(crate) const ET_EXEC: u16 = 2;
/// `e_machine`: AMD x86-64.
pub(crate) const EM_X86_64: u16 = 62;
/// `p_type`: a segment to be loaded into memory.
pub(crate) const PT_LOAD: u32 = 1;
/// Where x86-64 Linux maps its kernel text: an entry point up here is a
/// virtual address to translate through the segments.
const KERNEL_MAP_BASE: u64 = 0xffff_ffff_8000_0000;

/// The ELF64 file header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Elf64Ehdr {
    pub e_ident: [u8; 16],
    pub e_type: u16,
    pub e_machine: u16,
    pub e_version: u32,
    pub e_entry: u64,
    pub e_phoff: u64,
    pub e_shoff: u64,
    pub e_flags: u32,
    pub e_ehsize: u16,
    pub e_phentsize: u16,
    pub e_phnum: u16,
    pub e_shentsize: u16,
    pub e_shnum: u16,
    pub e_shstrndx: u16,
}

/// An ELF64 program header: one segment.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Elf64Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

const _: () = assert!(size_of::<Elf64Ehdr>() == 64);
const _: () = assert!(size_of::<Elf64Phdr>() == 56);

/// A PT_LOAD segment whose file bytes are known to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Its index among the program headers, for error messages.
    pub index: usize,
    /// Where its bytes start in the file.
    pub file_offset: usize,
    /// How many bytes come from the file; the rest of `mem_size` is zero.
    pub file_size: usize,
    /// Its guest-physical load address.
    pub paddr: u64,
    /// The virtual address it is linked at.
    pub vaddr: u64,
    /// Its size in memory (at least `file_size`).
    pub mem_size: u64,
}

impl Segment {
    /// The first guest-physical byte after the segment.
    pub fn end(&self) -> u64 {
        self.paddr + self.mem_size
    }
}

/// A vmlinux whose headers have been checked against the file.
#[derive(Debug)]
pub(crate) struct ElfKernel {
    /// The physical address of `startup_64`.
    pub entry: u64,
    /// The loadable segments, in file order.
    pub segments: Vec<Segment>,
}

/// Where the program-header table of an ELF file whose start is `head`
/// ends, so a caller reading only the file's start knows how much it needs;
/// 0 when `head` is too short to say.
pub(crate) fn program_headers_end(head: &[u8]) -> u64 {
    match Elf64Ehdr::read_from_prefix(head) {
        Ok((ehdr, _)) => ehdr
            .e_phoff
            .saturating_add(u64::from(ehdr.e_phnum) * size_of::<Elf64Phdr>() as u64),
        Err(_) => 0,
    }
}

impl ElfKernel {
    /// Checks a file that starts with the ELF magic: 64-bit little-endian
    /// x86-64 executable, program headers and PT_LOAD bytes within the file,
    /// and an entry point inside a loadable segment.
    /// `data` is the file's start, up to the end of its program headers at
    /// least (see [`program_headers_end`]), `file_len` its length.
    pub fn parse(path: &Path, data: &[u8], file_len: u64) -> Result<ElfKernel, LoadError> {
        let malformed = |reason| LoadError::ElfMalformed {
            path: path.to_path_buf(),
            reason,
        };
        let (ehdr, _) = Elf64Ehdr::read_from_prefix(data)
            .map_err(|_| malformed("the file is shorter than an ELF64 header"))?;
        let (class, encoding) = (ehdr.e_ident[4], ehdr.e_ident[5]);
        // Only once class and byte order are right do the other fields mean
        // what this struct says they mean.
        if class != ELFCLASS64 || encoding != ELFDATA2LSB || ehdr.e_machine != EM_X86_64 {
            return Err(LoadError::ElfNotX86_64 {
                path: path.to_path_buf(),
                class,
                data: encoding,
                machine: ehdr.e_machine,
            });
        }
        if ehdr.e_type != ET_EXEC {
            return Err(LoadError::ElfNotExecutable {
                path: path.to_path_buf(),
                e_type: ehdr.e_type,
            });
        }
        if ehdr.e_phnum > 0 && usize::from(ehdr.e_phentsize) != size_of::<Elf64Phdr>() {
            return Err(malformed("its program headers are not 56 bytes each"));
        }
        let table = usize::try_from(ehdr.e_phoff)
            .ok()
            .and_then(|start| {
                let len = usize::from(ehdr.e_phnum) * size_of::<Elf64Phdr>();
                data.get(start..start.checked_add(len)?)
            })
            .ok_or_else(|| malformed("its program headers lie past the end of the file"))?;

        let mut segments = Vec::new();
        for (index, raw) in table.chunks_exact(size_of::<Elf64Phdr>()).enumerate() {
            let phdr = Elf64Phdr::read_from_bytes(raw).expect("chunk is one program header");
            if phdr.p_type != PT_LOAD {
                continue;
            }
            if phdr.p_filesz > phdr.p_memsz {
                return Err(malformed(
                    "a loadable segment has more file bytes than memory",
                ));
            }
            if phdr.p_paddr.checked_add(phdr.p_memsz).is_none() {
                return Err(malformed(
                    "a loadable segment wraps around the address space",
                ));
            }
            match phdr.p_offset.checked_add(phdr.p_filesz) {
                Some(end) if end <= file_len => {}
                end => {
                    return Err(LoadError::ElfSegmentTruncated {
                        path: path.to_path_buf(),
                        index,
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
            segments.push(Segment {
                index,
                // Both fit: they are within the file, checked just above.
                file_offset: phdr.p_offset as usize,
                file_size: phdr.p_filesz as usize,
                paddr: phdr.p_paddr,
                vaddr: phdr.p_vaddr,
                mem_size: phdr.p_memsz,
            });
        }
        if segments.is_empty() {
            return Err(LoadError::ElfNoLoadableSegment {
                path: path.to_path_buf(),
            });
        }

        let entry = if ehdr.e_entry >= KERNEL_MAP_BASE {
            segments
                .iter()
                .find(|s| ehdr.e_entry >= s.vaddr && ehdr.e_entry - s.vaddr < s.mem_size)
                .map(|s| s.paddr + (ehdr.e_entry - s.vaddr))
        } else {
            segments
                .iter()
                .any(|s| (s.paddr..s.end()).contains(&ehdr.e_entry))
                .then_some(ehdr.e_entry)
        }
        .ok_or_else(|| LoadError::ElfEntryOutsideSegments {
            path: path.to_path_buf(),
            entry: ehdr.e_entry,
        })?;
        Ok(ElfKernel { entry, segments })
    }

    /// Copies each segment's file bytes to its physical address and zeroes
    /// the rest of it (the bss), after checking that every segment lies in
    /// the RAM a kernel may take: above the first megabyte, where lg keeps
    /// the zero page and page tables, and below `ram_end`.
    pub fn load(
        &self,
        mem: &GuestMemory,
        kernel: &KernelImage,
        ram_end: u64,
    ) -> Result<(), LoadError> {
        let path = kernel.path();
        if let Some(s) = self
            .segments
            .iter()
            .find(|s| s.paddr < HIMEM_START || s.end() > ram_end)
        {
            return Err(LoadError::ElfSegmentOutsideRam {
                path: path.to_path_buf(),
                index: s.index,
                start: s.paddr,
                end: s.end(),
                ram_start: HIMEM_START,
                ram_end,
            });
        }
        let placing = |error| LoadError::GuestMemory {
            path: path.to_path_buf(),
            what: "kernel",
            error,
        };
        for s in &self.segments {
            kernel.read_into(
                mem,
                GuestAddress(s.paddr),
                s.file_offset as u64,
                s.file_size as u64,
            )?;
            let tail = GuestAddress(s.paddr + s.file_size as u64);
            mem.zero(tail, s.mem_size - s.file_size as u64)
                .map_err(placing)?;
        }
        Ok(())
    }

    /// The first byte above every segment.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(Segment::end).max().unwrap_or(0)
    }

    /// The lowest segment address, reported to the kernel as `code32_start`.
    pub fn start(&self) -> u64 {
        self.segments.iter().map(|s| s.paddr).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::{elf, ElfSpec, SegmentSpec};

    fn parse(data: &[u8]) -> Result<ElfKernel, LoadError> {
        ElfKernel::parse(Path::new("/build/vmlinux"), data, data.len() as u64)
    }

    fn names_the_file(err: &LoadError) {
        assert!(err.to_string().starts_with("/build/vmlinux: "), "{err}");
    }

    #[test]
    fn accepts_a_vmlinux_with_a_physical_entry() {
        let kernel = parse(&elf(&ElfSpec::default())).unwrap();
        assert_eq!(kernel.entry, 0x100_0000);
        assert_eq!(kernel.segments.len(), 2);
        assert_eq!(kernel.start(), 0x100_0000);
        assert_eq!(kernel.end(), 0x120_0000 + 0x8000);
    }

    #[test]
    fn translates_a_virtual_entry_through_its_segment() {
        let kernel = parse(&elf(&ElfSpec {
            entry: 0xffff_ffff_8100_0040,
            ..ElfSpec::default()
        }))
        .unwrap();
        assert_eq!(kernel.entry, 0x100_0040);
    }

    #[test]
    fn refuses_another_machine() {
        let err = parse(&elf(&ElfSpec {
            machine: 183, // AArch64
            ..ElfSpec::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoadError::ElfNotX86_64 { machine: 183, .. }));
        names_the_file(&err);
    }

    #[test]
    fn refuses_a_32_bit_elf() {
        let mut data = elf(&ElfSpec::default());
        data[4] = 1;
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, LoadError::ElfNotX86_64 { class: 1, .. }));
        names_the_file(&err);
    }

    #[test]
    fn refuses_an_object_file() {
        let err = parse(&elf(&ElfSpec {
            e_type: 1,
            ..ElfSpec::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoadError::ElfNotExecutable { e_type: 1, .. }));
        names_the_file(&err);
    }

    #[test]
    fn refuses_a_file_with_no_loadable_segment() {
        let err = parse(&elf(&ElfSpec {
            segments: vec![],
            ..ElfSpec::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoadError::ElfNoLoadableSegment { .. }));
        names_the_file(&err);
    }

    #[test]
    fn refuses_a_segment_past_the_end_of_the_file() {
        let mut data = elf(&ElfSpec::default());
        data.truncate(data.len() - 1);
        let err = parse(&data).unwrap_err();
        assert!(matches!(
            err,
            LoadError::ElfSegmentTruncated { index: 2, .. }
        ));
        names_the_file(&err);
    }

    #[test]
    fn refuses_program_headers_past_the_end_of_the_file() {
        let data = elf(&ElfSpec::default());
        let err = parse(&data[..100]).unwrap_err();
        assert!(matches!(err, LoadError::ElfMalformed { .. }));
        names_the_file(&err);
        let err = parse(&data[..10]).unwrap_err();
        assert!(matches!(err, LoadError::ElfMalformed { .. }));
    }

    #[test]
    fn refuses_an_entry_outside_every_segment() {
        let err = parse(&elf(&ElfSpec {
            entry: 0x4000_0000,
            ..ElfSpec::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoadError::ElfEntryOutsideSegments { .. }));
        names_the_file(&err);
    }

    #[test]
    fn refuses_more_file_bytes_than_memory() {
        let err = parse(&elf(&ElfSpec {
            segments: vec![SegmentSpec {
                paddr: 0x100_0000,
                vaddr: 0xffff_ffff_8100_0000,
                file_bytes: 0x1000,
                mem_size: 0x800,
            }],
            ..ElfSpec::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoadError::ElfMalformed { .. }));
        names_the_file(&err);
    }
}
