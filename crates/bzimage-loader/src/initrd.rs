//! The initrd: a file the kernel finds already in memory, to unpack as its
//! first root filesystem.
//!
//! The protocol leaves its placement to the loader, within two limits: it
//! must end below `initrd_addr_max`, and it must not sit where the kernel
//! decompresses itself. Like GRUB and QEMU, lg puts it as high as it can, so
//! the kernel keeps the low memory it will grow into, and streams it straight
//! from the file into guest RAM: an initrd may be hundreds of megabytes.

use std::fs::File;
use std::path::Path;

use shadow_mmu::{GuestAddress, GuestMemory, MemoryError};

use crate::error::LoadError;

/// The kernel frees the initrd a page at a time, so it must start on one.
const PAGE_SIZE: u64 = 4096;

/// Where an initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlacedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// The highest page-aligned address for `size` bytes ending at or below
/// `limit` and starting at or above `lowest`, if there is one.
pub(crate) fn place(size: u64, lowest: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? / PAGE_SIZE * PAGE_SIZE;
    (addr >= lowest.div_ceil(PAGE_SIZE) * PAGE_SIZE).then_some(addr)
}

/// Loads the initrd at `path` above `kernel_end`, ending by `limit`.
pub(crate) fn load(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<PlacedInitrd, LoadError> {
    let read_error = |error| LoadError::InitrdRead {
        path: path.to_path_buf(),
        error,
    };
    // Ask before opening: opening a FIFO would block until a writer came.
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_file() {
        return Err(LoadError::InitrdNotAFile {
            path: path.to_path_buf(),
        });
    }
    let size = metadata.len();
    let addr = place(size, kernel_end, limit).ok_or_else(|| LoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        lowest: kernel_end,
        limit,
    })?;
    let mut file = File::open(path).map_err(read_error)?;
    mem.read_from(GuestAddress(addr), &mut file, size)
        .map_err(|error| match error {
            MemoryError::Io(error) => read_error(error),
            error => LoadError::GuestMemory {
                path: path.to_path_buf(),
                what: "initrd",
                error,
            },
        })?;
    Ok(PlacedInitrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_as_high_as_the_limit_allows_on_a_page() {
        assert_eq!(place(0x1800, 0, 0x10_0000), Some(0xf_e000));
        assert_eq!(place(0x1000, 0, 0x10_0000), Some(0xf_f000));
    }

    #[test]
    fn refuses_to_overlap_the_kernel() {
        assert_eq!(place(0x2000, 0xf_e000, 0x10_0000), Some(0xf_e000));
        // The kernel ends mid-page: that whole page is the kernel's.
        assert_eq!(place(0x2000, 0xf_e001, 0x10_0000), None);
        assert_eq!(place(0x20_0000, 0, 0x10_0000), None);
    }
}
