//! Everything that can stop a kernel from being loaded, each said in one
//! sentence that names the file at fault, because the person reading it is a
//! kernel developer who just pointed lg at the wrong build.

use std::fmt;
use std::io;
use std::path::PathBuf;

use shadow_mmu::MemoryError;

use crate::bzimage::STARTUP_64_OFFSET;

/// Why a kernel or initrd could not be read, or could not be placed in the
/// guest. Every case names the file (as the user spelled it) and the reason.
#[derive(Debug)]
pub enum LoadError {
    /// The kernel file could not be opened or read.
    KernelRead { path: PathBuf, error: io::Error },
    /// The kernel path names a directory.
    IsDirectory { path: PathBuf },
    /// The kernel file has no bytes at all.
    EmptyFile { path: PathBuf },
    /// Neither a bzImage header nor an ELF header.
    NotAKernel { path: PathBuf },
    /// "HdrS" is there but the boot-sector signature is not.
    BadBootFlag { path: PathBuf, boot_flag: u16 },
    /// The file is shorter than its setup header says.
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The protected-mode code ends before the 64-bit entry point.
    NoEntryCode { path: PathBuf, code_len: u64 },
    /// Boot protocol older than lg supports.
    ProtocolTooOld { path: PathBuf, version: u16 },
    /// The kernel has no 64-bit entry point.
    No64BitEntry { path: PathBuf, version: u16 },
    /// An ELF file, but not a 64-bit little-endian x86-64 one.
    ElfNotX86_64 {
        path: PathBuf,
        class: u8,
        data: u8,
        machine: u16,
    },
    /// An ELF file that is not an executable (an object file, a library...).
    ElfNotExecutable { path: PathBuf, e_type: u16 },
    /// An ELF file whose headers contradict themselves or the file's size.
    ElfMalformed { path: PathBuf, reason: &'static str },
    /// An ELF file with nothing to load.
    ElfNoLoadableSegment { path: PathBuf },
    /// A PT_LOAD segment's bytes run past the end of the file.
    ElfSegmentTruncated {
        path: PathBuf,
        index: usize,
        end: u64,
        file_len: u64,
    },
    /// The entry point is in no loadable segment.
    ElfEntryOutsideSegments { path: PathBuf, entry: u64 },
    /// A PT_LOAD segment would land outside the RAM a kernel may occupy.
    ElfSegmentOutsideRam {
        path: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        ram_start: u64,
        ram_end: u64,
    },
    /// The kernel, once decompressed, would run past the end of low RAM.
    KernelTooBig {
        path: PathBuf,
        load_addr: u64,
        needed: u64,
        ram_end: u64,
    },
    /// The command line is longer than the kernel accepts.
    CmdlineTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    /// The command line has a NUL byte, which would silently cut it short.
    CmdlineHasNul { path: PathBuf },
    /// The initrd could not be opened or read.
    InitrdRead { path: PathBuf, error: io::Error },
    /// The initrd path names something other than a regular file.
    InitrdNotAFile { path: PathBuf },
    /// There is not enough RAM between the kernel and the initrd limit.
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        lowest: u64,
        limit: u64,
    },
    /// Writing into guest memory failed (a guest too small for lg's fixed
    /// low-memory layout).
    GuestMemory {
        path: PathBuf,
        what: &'static str,
        error: MemoryError,
    },
}

/// A byte count the way a person reads it in an error message.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// An I/O error's description without the " (os error 2)" suffix, which
/// means nothing to the user once the description is there.
fn reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// A boot protocol version as the documentation writes it: 0x020f is "2.15".
fn protocol(version: u16) -> String {
    format!("{}.{:02}", version >> 8, version & 0xff)
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::KernelRead { path, error } => {
                write!(f, "{}: cannot read kernel: {}", path.display(), reason(error))
            }
            LoadError::IsDirectory { path } => {
                write!(f, "{}: is a directory, not a kernel", path.display())
            }
            LoadError::EmptyFile { path } => {
                write!(f, "{}: not a Linux kernel: the file is empty", path.display())
            }
            LoadError::NotAKernel { path } => write!(
                f,
                "{}: not a Linux kernel: no bzImage header and not an ELF file",
                path.display()
            ),
            LoadError::BadBootFlag { path, boot_flag } => write!(
                f,
                "{}: not a bootable bzImage: it has a \"HdrS\" header but boot flag \
                 {boot_flag:#06x} instead of 0xaa55",
                path.display()
            ),
            LoadError::NoEntryCode { path, code_len } => write!(
                f,
                "{}: not a bootable bzImage: its protected-mode code is {code_len} bytes, \
                 too short to hold the 64-bit entry point {STARTUP_64_OFFSET} bytes in",
                path.display()
            ),
            LoadError::Truncated {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{}: truncated bzImage: the header says {expected} bytes but the file has {actual}",
                path.display()
            ),
            LoadError::ProtocolTooOld { path, version } => write!(
                f,
                "{}: boot protocol {} is too old; lg needs 2.06 or later",
                path.display(),
                protocol(*version)
            ),
            LoadError::No64BitEntry { path, version } if *version < 0x020c => write!(
                f,
                "{}: boot protocol {} predates the 64-bit entry point (2.12, Linux 3.8); \
                 lg boots x86-64 kernels",
                path.display(),
                protocol(*version)
            ),
            LoadError::No64BitEntry { path, .. } => write!(
                f,
                "{}: a 32-bit-only kernel (xloadflags has no 64-bit entry); lg boots x86-64 kernels",
                path.display()
            ),
            LoadError::ElfNotX86_64 {
                path,
                class,
                data,
                machine,
            } => write!(
                f,
                "{}: an ELF file but not a 64-bit little-endian x86-64 one (class {class}, \
                 data {data}, machine {machine}); lg boots x86-64 kernels",
                path.display()
            ),
            LoadError::ElfNotExecutable { path, e_type } => write!(
                f,
                "{}: an ELF file of type {e_type}, not an executable vmlinux",
                path.display()
            ),
            LoadError::ElfMalformed { path, reason } => {
                write!(f, "{}: malformed ELF file: {reason}", path.display())
            }
            LoadError::ElfNoLoadableSegment { path } => write!(
                f,
                "{}: an ELF file with no loadable (PT_LOAD) segment, so nothing to boot",
                path.display()
            ),
            LoadError::ElfSegmentTruncated {
                path,
                index,
                end,
                file_len,
            } => write!(
                f,
                "{}: truncated ELF file: segment {index} ends at byte {end} but the file has \
                 {file_len}",
                path.display()
            ),
            LoadError::ElfEntryOutsideSegments { path, entry } => write!(
                f,
                "{}: the ELF entry point {entry:#x} is in no loadable segment",
                path.display()
            ),
            LoadError::ElfSegmentOutsideRam {
                path,
                index,
                start,
                end,
                ram_start,
                ram_end,
            } => write!(
                f,
                "{}: ELF segment {index} ({start:#x}..{end:#x}) lies outside the guest RAM a \
                 kernel may use ({ram_start:#x}..{ram_end:#x}); give the guest more memory if \
                 it is too small",
                path.display()
            ),
            LoadError::KernelTooBig {
                path,
                load_addr,
                needed,
                ram_end,
            } => write!(
                f,
                "{}: the kernel needs {} from its load address {load_addr:#x} (init_size) but \
                 guest RAM below 4 GiB ends at {ram_end:#x}; give the guest more memory",
                path.display(),
                mib(*needed)
            ),
            LoadError::CmdlineTooLong { path, len, max } => write!(
                f,
                "{}: the kernel command line is {len} bytes; this kernel accepts at most {max}",
                path.display()
            ),
            LoadError::CmdlineHasNul { path } => write!(
                f,
                "{}: the kernel command line contains a NUL byte, which would end it early",
                path.display()
            ),
            LoadError::InitrdRead { path, error } => {
                write!(f, "{}: cannot read initrd: {}", path.display(), reason(error))
            }
            LoadError::InitrdNotAFile { path } => {
                write!(f, "{}: the initrd is not a regular file", path.display())
            }
            LoadError::InitrdTooLarge {
                path,
                size,
                lowest,
                limit,
            } => write!(
                f,
                "{}: the initrd ({}) does not fit in guest memory between the kernel's end \
                 ({lowest:#x}) and {limit:#x}: give the guest more memory",
                path.display(),
                mib(*size)
            ),
            LoadError::GuestMemory { path, what, error } => write!(
                f,
                "{}: cannot place the {what} in guest memory: {error}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}
