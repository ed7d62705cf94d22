//! Every way a `--block` option can fail before the guest runs, each with a
//! sentence that names the path and says what to do about it.
//!
//! These are the user's mistakes (a typo in a path, an image made with the
//! wrong size), so the messages are written for the user, not for lg's
//! developers. What the *guest* can get wrong is in `request.rs`; it never
//! stops lg.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::SECTOR_SIZE;

/// The `--block` value could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockConfigError {
    /// Nothing before the first comma.
    EmptyPath { value: String },
    /// Two commas in a row, or one at the end.
    EmptyOption { value: String },
    /// An option lg does not know.
    UnknownOption { option: String, value: String },
}

impl fmt::Display for BlockConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockConfigError::EmptyPath { value } => write!(
                f,
                "--block {value:?} gives no path: expected PATH[,ro][,direct]"
            ),
            BlockConfigError::EmptyOption { value } => write!(
                f,
                "--block {value:?} has an empty option (two commas in a row, or one at the end): expected PATH[,ro][,direct]"
            ),
            BlockConfigError::UnknownOption { option, value } => write!(
                f,
                "--block {value:?}: unknown option {option:?}; the options are \"ro\" and \"direct\" (a path cannot contain a comma)"
            ),
        }
    }
}

impl std::error::Error for BlockConfigError {}

/// The backing file or device could not be used as a disk.
#[derive(Debug)]
pub enum BlockError {
    /// Nothing exists at the path.
    NotFound { path: PathBuf },
    /// The path is a directory.
    IsDirectory { path: PathBuf },
    /// The path is something that is neither a regular file nor a block
    /// device (a character device, a FIFO, a socket).
    NotADisk { path: PathBuf, kind: &'static str },
    /// The host would not let lg open it (for writing, unless `ro`).
    PermissionDenied { path: PathBuf, writable: bool },
    /// The file is on a read-only filesystem and `ro` was not given.
    ReadOnlyFilesystem { path: PathBuf },
    /// `direct` was given but the filesystem does not support `O_DIRECT`
    /// (tmpfs, for one).
    DirectUnsupported { path: PathBuf },
    /// Another process (another lg?) holds the disk: writers lock it
    /// exclusively, read-only users share it.
    InUse { path: PathBuf, writable: bool },
    /// The file is empty: a disk of no sectors.
    Empty { path: PathBuf },
    /// The size is not whole sectors, so the last bytes could be neither
    /// read nor written by the guest.
    NotSectorMultiple { path: PathBuf, size: u64 },
    /// Any other failure to open it.
    Open { path: PathBuf, error: io::Error },
    /// Opened, but its size could not be found.
    Size { path: PathBuf, error: io::Error },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::NotFound { path } => write!(
                f,
                "disk {}: no such file; create one first (e.g. `truncate -s 1G {}`)",
                path.display(),
                path.display()
            ),
            BlockError::IsDirectory { path } => write!(
                f,
                "disk {} is a directory; give a disk image file or a block device",
                path.display()
            ),
            BlockError::NotADisk { path, kind } => write!(
                f,
                "disk {} is {kind}, not a regular file or a block device",
                path.display()
            ),
            BlockError::PermissionDenied { path, writable } => {
                if *writable {
                    write!(
                        f,
                        "disk {}: permission denied opening it for reading and writing; fix its permissions, or add \",ro\" to serve it read-only",
                        path.display()
                    )
                } else {
                    write!(
                        f,
                        "disk {}: permission denied opening it for reading",
                        path.display()
                    )
                }
            }
            BlockError::ReadOnlyFilesystem { path } => write!(
                f,
                "disk {} is on a read-only filesystem; add \",ro\" to serve it read-only",
                path.display()
            ),
            BlockError::DirectUnsupported { path } => write!(
                f,
                "disk {}: its filesystem does not support O_DIRECT; drop \",direct\"",
                path.display()
            ),
            BlockError::InUse { path, writable } => write!(
                f,
                "disk {} is in use by another process (another lg?) that {}; two guests writing one disk would corrupt it",
                path.display(),
                if *writable {
                    "has it open"
                } else {
                    "is writing it"
                }
            ),
            BlockError::Empty { path } => write!(
                f,
                "disk {} is empty (0 bytes); lg refuses a disk with no sectors (make one with `truncate -s 1G {}`)",
                path.display(),
                path.display()
            ),
            BlockError::NotSectorMultiple { path, size } => write!(
                f,
                "disk {} is {size} bytes, not a multiple of {SECTOR_SIZE}; lg refuses it rather than hide the last {} bytes from the guest (round it up with `truncate -s {} {}`)",
                path.display(),
                size % SECTOR_SIZE,
                size.next_multiple_of(SECTOR_SIZE),
                path.display()
            ),
            BlockError::Open { path, error } => {
                write!(f, "disk {}: cannot open it: {error}", path.display())
            }
            BlockError::Size { path, error } => {
                write!(f, "disk {}: cannot find its size: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for BlockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BlockError::Open { error, .. } | BlockError::Size { error, .. } => Some(error),
            _ => None,
        }
    }
}
