//! # Where BARs go
//!
//! Firmware normally assigns BAR addresses before the kernel starts; lg has
//! no firmware, so it plays that part. Every memory BAR gets a place in the
//! PCI window of the 32-bit hole (`PCI_MMIO_START` up to the IO-APIC),
//! aligned to its own size as the BAR's read-only low bits demand. Linux
//! keeps addresses it finds inside its root bridge's window, so it never
//! has to move them, and a 32-bit BAR can go anywhere in the window.
//!
//! Addresses are handed out in order and never returned: lg's devices are
//! created once at launch. Placing the largest BARs first wastes no space on
//! alignment.

use hcall_abi::layout::{PCI_MMIO_END, PCI_MMIO_START};

use crate::PciError;

/// The smallest memory BAR the PCI spec allows.
const MIN_BAR_SIZE: u64 = 16;

/// Hands out BAR addresses in [`PCI_MMIO_START`, `PCI_MMIO_END`), naturally
/// aligned to their size.
#[derive(Debug)]
pub struct BarAllocator {
    next: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator::new()
    }
}

impl BarAllocator {
    /// An allocator with the whole window free.
    pub fn new() -> Self {
        BarAllocator {
            next: PCI_MMIO_START,
        }
    }

    /// The address for a new memory BAR of `size` bytes (a power of two, at
    /// least 16).
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        if !size.is_power_of_two() || size < MIN_BAR_SIZE {
            return Err(PciError::BadBarSize(size));
        }
        let start = self
            .next
            .checked_next_multiple_of(size)
            .filter(|start| {
                start
                    .checked_add(size)
                    .is_some_and(|end| end <= PCI_MMIO_END)
            })
            .ok_or(PciError::WindowFull { size })?;
        self.next = start + size;
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_to_their_size_and_do_not_overlap() {
        let mut bars = BarAllocator::new();
        let a = bars.allocate(0x1000).unwrap();
        let b = bars.allocate(0x4000).unwrap();
        let c = bars.allocate(16).unwrap();
        let d = bars.allocate(0x10_0000).unwrap();
        assert_eq!(a, PCI_MMIO_START);
        assert_eq!(b, PCI_MMIO_START + 0x4000);
        assert_eq!(c, PCI_MMIO_START + 0x8000);
        assert_eq!(d, PCI_MMIO_START + 0x10_0000);
        for (start, size) in [(a, 0x1000), (b, 0x4000), (c, 16), (d, 0x10_0000)] {
            assert_eq!(start % size, 0);
            assert!(start + size <= PCI_MMIO_END);
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        let mut bars = BarAllocator::new();
        assert_eq!(bars.allocate(0), Err(PciError::BadBarSize(0)));
        assert_eq!(bars.allocate(8), Err(PciError::BadBarSize(8)));
        assert_eq!(bars.allocate(0x3000), Err(PciError::BadBarSize(0x3000)));
        assert_eq!(bars.allocate(16), Ok(PCI_MMIO_START));
    }

    #[test]
    fn the_window_runs_out() {
        let mut bars = BarAllocator::new();
        // 0xc000_0000..0xfec0_0000: one 512 MiB BAR fits, a second would
        // end at 4 GiB, past the IO-APIC.
        assert_eq!(bars.allocate(1 << 29), Ok(0xc000_0000));
        assert_eq!(
            bars.allocate(1 << 29),
            Err(PciError::WindowFull { size: 1 << 29 })
        );
        assert_eq!(
            bars.allocate(1 << 63),
            Err(PciError::WindowFull { size: 1 << 63 })
        );
        // A refusal takes nothing: smaller BARs still fit.
        assert_eq!(bars.allocate(0x1000), Ok(0xe000_0000));
    }
}
