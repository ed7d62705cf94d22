//! # bzimage-loader: putting Linux into the guest
//!
//! A PC boots Linux in relays. The BIOS loads a bootloader; the bootloader
//! loads the kernel file and fills in the "zero page"; the kernel's 16-bit
//! setup code asks the BIOS about memory and video, switches to 32-bit
//! protected mode, decompresses the kernel proper, builds page tables and
//! switches to 64-bit long mode. lguest's launcher skipped all of that by
//! jumping into a paravirtualized entry point of its own. lg runs an
//! unmodified kernel, and skips the relay the way the kernel itself allows:
//! the x86 boot protocol (`Documentation/arch/x86/boot.rst`) has a 64-bit
//! entry, `startup_64`, 0x200 bytes into the protected-mode kernel, for
//! loaders that have already done the firmware's work. Enter there in long
//! mode, with paging on and %rsi pointing at a filled-in zero page, and there
//! is no BIOS call, no real mode and no 32-bit stage left to emulate.
//!
//! This crate is the bootloader's half of that bargain. [`KernelImage::open`]
//! reads the headers of a bzImage (or of an uncompressed `vmlinux`, the
//! quicker thing to boot from a kernel tree) and checks them once, so nothing
//! later meets an unchecked offset. [`load`] then lays out guest memory,
//! reading the kernel's code from the file straight into guest RAM (a
//! kernel is tens of megabytes, and every copy of it is start-up time), and
//! returns the three numbers the switcher puts in the vCPU's registers (RIP,
//! RSI, CR3):
//!
//! | guest-physical                    | what                                     |
//! |-----------------------------------|------------------------------------------|
//! | `ZERO_PAGE_ADDR` (0x7000)         | the zero page, `struct boot_params`      |
//! | `BOOT_PML4_ADDR`.. (0x9000)       | page tables identity-mapping 4 GiB       |
//! | `CMDLINE_ADDR` (0x20000)          | the command line, NUL-terminated         |
//! | `EBDA_START`..`HIMEM_START`       | reserved in e820; ACPI at `ACPI_START`   |
//! | `pref_address` (usually 16 MiB)   | the kernel, `init_size` bytes of room    |
//! | as high as allowed, below 2 GiB   | the initrd                               |
//!
//! Everything stays below the 32-bit hole, so every pointer fits the
//! protocol's 32-bit fields. Reading the story in order: `bzimage.rs` and
//! `elf.rs` check the file, `initrd.rs` places the initrd, `zero_page.rs`
//! writes what the kernel is told, `page_tables.rs` makes long mode possible,
//! and `error.rs` says what went wrong when it does.

mod bzimage;
mod elf;
mod error;
mod initrd;
mod page_tables;
mod zero_page;

#[cfg(test)]
mod test_images;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hcall_abi::layout::{BOOT_PML4_ADDR, CMDLINE_ADDR, CMDLINE_MAX_SIZE, ZERO_PAGE_ADDR};
use shadow_mmu::{GuestAddress, GuestMemory, MemoryError, MemoryRegion};

use crate::bzimage::BzImage;
use crate::elf::ElfKernel;

pub use crate::error::LoadError;

/// What kind of kernel file was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage speaking this boot protocol version (0x020f is 2.15).
    BzImage { protocol_version: u16 },
    /// An uncompressed ELF64 vmlinux.
    Elf,
}

/// A kernel file, open, with its headers read and checked.
pub struct KernelImage {
    path: PathBuf,
    source: Source,
    /// The file's length when it was opened.
    len: u64,
    format: Format,
}

/// Where the kernel's bytes come from when [`load`] places them.
enum Source {
    /// The file itself, read straight into guest RAM.
    File(File),
    /// Bytes the caller already had ([`KernelImage::from_bytes`]).
    Bytes(Vec<u8>),
}

/// How much of the file's start `open` reads: a bzImage's setup header
/// ends before 0x300, and a vmlinux's program headers follow its ELF header
/// at 64; a table further in is read on its own.
const HEAD_LEN: u64 = 4096;

/// What the checks found, with the offsets they proved.
enum Format {
    BzImage(BzImage),
    Elf(ElfKernel),
}

impl Format {
    /// Checks a kernel file of `len` bytes from `head`, its start: enough
    /// of it to hold the headers (a bzImage's setup sectors, a vmlinux's
    /// program headers), or all of it.
    fn check(path: &Path, head: &[u8], len: u64) -> Result<Format, LoadError> {
        if head.is_empty() {
            Err(LoadError::EmptyFile {
                path: path.to_path_buf(),
            })
        } else if head.starts_with(&elf::ELF_MAGIC) {
            Ok(Format::Elf(ElfKernel::parse(path, head, len)?))
        } else if bzimage::has_setup_header(head) {
            Ok(Format::BzImage(BzImage::parse(path, head, len)?))
        } else {
            Err(LoadError::NotAKernel {
                path: path.to_path_buf(),
            })
        }
    }
}

impl KernelImage {
    /// Reads and validates a kernel file: a bzImage (boot protocol ≥ 2.06,
    /// `XLF_KERNEL_64` set, i.e. it has a 64-bit entry) or an ELF64 x86-64
    /// vmlinux with PT_LOAD segments.
    pub fn open(path: &Path) -> Result<KernelImage, LoadError> {
        let read_error = |error| LoadError::KernelRead {
            path: path.to_path_buf(),
            error,
        };
        if std::fs::metadata(path).map_err(read_error)?.is_dir() {
            return Err(LoadError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        // Only the headers are read here: `load` reads the code itself
        // straight into guest RAM, so the kernel is copied once, not twice.
        let file = File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        let mut head = read_prefix(&file, HEAD_LEN.min(len)).map_err(read_error)?;
        if head.starts_with(&elf::ELF_MAGIC) {
            let table_end = elf::program_headers_end(&head).min(len);
            if table_end > head.len() as u64 {
                head = read_prefix(&file, table_end).map_err(read_error)?;
            }
        }
        let format = Format::check(path, &head, len)?;
        Ok(KernelImage {
            path: path.to_path_buf(),
            source: Source::File(file),
            len,
            format,
        })
    }

    /// Validates a kernel file already read into memory, as
    /// [`open`](Self::open) does once it has read `path`; errors name
    /// `path`. The fuzz targets come in here, with no file to read.
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<KernelImage, LoadError> {
        let len = data.len() as u64;
        let format = Format::check(path, &data, len)?;
        Ok(KernelImage {
            path: path.to_path_buf(),
            source: Source::Bytes(data),
            len,
            format,
        })
    }

    /// Whether this is a bzImage (and which protocol) or a vmlinux.
    pub fn kind(&self) -> KernelKind {
        match &self.format {
            Format::BzImage(image) => KernelKind::BzImage {
                protocol_version: image.protocol_version(),
            },
            Format::Elf(_) => KernelKind::Elf,
        }
    }

    /// The path the kernel was opened from, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The longest command line this kernel takes, NUL excluded: its own
    /// `cmdline_size`, capped by the room lg keeps at `CMDLINE_ADDR`.
    fn cmdline_limit(&self) -> u64 {
        let room = CMDLINE_MAX_SIZE - 1;
        match &self.format {
            Format::BzImage(image) => image.cmdline_size().min(room),
            Format::Elf(_) => room,
        }
    }
}

impl fmt::Debug for KernelImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the bytes: a kernel is tens of megabytes.
        f.debug_struct("KernelImage")
            .field("path", &self.path)
            .field("kind", &self.kind())
            .field("len", &self.len)
            .finish()
    }
}

/// Where the vCPU starts: what the switcher loads into its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSetup {
    /// The 64-bit entry point, for RIP.
    pub entry: GuestAddress,
    /// The zero page, for RSI.
    pub boot_params: GuestAddress,
    /// The identity-mapped boot page tables' root, for CR3.
    pub page_table_root: GuestAddress,
}

/// What goes into the guest besides the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// An initrd or initramfs to load, if any.
    pub initrd: Option<&'a Path>,
    /// Where the ACPI RSDP is, if lg built ACPI tables.
    pub acpi_rsdp: Option<GuestAddress>,
}

/// Places the kernel, the initrd, the command line, the zero page (with the
/// e820 map built from `mem.regions()` and the reserved low areas) and
/// identity-mapped boot page tables into guest memory.
pub fn load(
    mem: &GuestMemory,
    kernel: &KernelImage,
    opts: &LoadOptions,
) -> Result<BootSetup, LoadError> {
    let path = kernel.path();
    // Refuse a bad command line before writing anything into the guest.
    if opts.cmdline.contains('\0') {
        return Err(LoadError::CmdlineHasNul {
            path: path.to_path_buf(),
        });
    }
    if opts.cmdline.len() as u64 > kernel.cmdline_limit() {
        return Err(LoadError::CmdlineTooLong {
            path: path.to_path_buf(),
            len: opts.cmdline.len(),
            max: kernel.cmdline_limit() as usize,
        });
    }
    let placing = |what| {
        move |error| LoadError::GuestMemory {
            path: path.to_path_buf(),
            what,
            error,
        }
    };
    // The kernel, its zero page and its initrd all live below the 32-bit hole.
    let low_ram_end = mem.regions().first().map_or(0, MemoryRegion::end);

    let (load_addr, kernel_end, entry, header) = match &kernel.format {
        Format::BzImage(image) => {
            // `parse` proved the file holds the setup code and more.
            let code_len = kernel.len - image.kernel_offset as u64;
            let placement = image.placement(path, code_len, low_ram_end)?;
            kernel.read_into(
                mem,
                GuestAddress(placement.load_addr),
                image.kernel_offset as u64,
                code_len,
            )?;
            let entry = BzImage::entry(placement.load_addr);
            (placement.load_addr, placement.end, entry, image.header)
        }
        Format::Elf(elf) => {
            elf.load(mem, kernel, low_ram_end)?;
            (elf.start(), elf.end(), elf.entry, zero_page::elf_header())
        }
    };

    let initrd = match opts.initrd {
        Some(initrd_path) => {
            let limit = (u64::from(header.initrd_addr_max) + 1).min(low_ram_end);
            Some(initrd::load(mem, initrd_path, kernel_end, limit)?)
        }
        None => None,
    };

    write_cmdline(mem, opts.cmdline).map_err(placing("command line"))?;
    let params = zero_page::build(header, load_addr, initrd, opts.acpi_rsdp, mem.regions());
    mem.write_obj(GuestAddress(ZERO_PAGE_ADDR), &params)
        .map_err(placing("zero page"))?;
    page_tables::write(mem).map_err(placing("boot page tables"))?;

    log::debug!(
        "{}: {:?} loaded at {load_addr:#x}..{kernel_end:#x}, entry {entry:#x}",
        path.display(),
        kernel.kind()
    );
    if let Some(initrd) = initrd {
        log::debug!("initrd: {} bytes at {:#x}", initrd.size, initrd.addr);
    }
    Ok(BootSetup {
        entry: GuestAddress(entry),
        boot_params: GuestAddress(ZERO_PAGE_ADDR),
        page_table_root: GuestAddress(BOOT_PML4_ADDR),
    })
}

impl KernelImage {
    /// Copies `len` bytes of the file at `offset` into guest RAM at `addr`:
    /// read straight from the file, with no copy in between.
    fn read_into(
        &self,
        mem: &GuestMemory,
        addr: GuestAddress,
        offset: u64,
        len: u64,
    ) -> Result<(), LoadError> {
        let placing = |error| LoadError::GuestMemory {
            path: self.path.clone(),
            what: "kernel",
            error,
        };
        match &self.source {
            Source::File(file) => {
                let mut source = FileAt { file, offset };
                mem.read_from(addr, &mut source, len)
                    .map_err(|error| match error {
                        // The file shrank since `open` measured it.
                        MemoryError::Io(error) => LoadError::KernelRead {
                            path: self.path.clone(),
                            error,
                        },
                        error => placing(error),
                    })
            }
            Source::Bytes(data) => {
                // The checks proved the range is within the file's length.
                let bytes = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(start, len)| data.get(start..start.checked_add(len)?))
                    .ok_or_else(|| placing(MemoryError::OutOfRange { addr, len }))?;
                mem.write(addr, bytes).map_err(placing)
            }
        }
    }
}

/// A file read from a given offset on, without moving a shared seek
/// position.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// The first `len` bytes of `file` (fewer only if it is shorter).
fn read_prefix(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    FileAt { file, offset: 0 }
        .take(len)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// The command line and its terminating NUL.
fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), MemoryError> {
    mem.write(GuestAddress(CMDLINE_ADDR), cmdline.as_bytes())?;
    mem.write(GuestAddress(CMDLINE_ADDR + cmdline.len() as u64), &[0])
}

#[cfg(test)]
mod tests;
