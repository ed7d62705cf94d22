//! # pci: the bus a distribution kernel looks for
//!
//! lguest's guests found their devices on a bus lguest invented. An
//! unmodified kernel has no such bus, and Debian's cloud kernel finds virtio
//! devices only on PCI. So lg grows the smallest PCI bus Linux accepts: bus 0
//! with a host bridge at 00:00.0, configuration space through ports
//! 0xcf8/0xcfc (configuration mechanism #1, Linux's `pci=conf1`), BARs that
//! lg places in the 32-bit hole the way firmware would, and MSI-X so each
//! virtio queue can have its own interrupt.
//!
//! Read it in this order: `config.rs` (one function's 256 bytes and the
//! write masks that make read-only registers read-only), `msix.rs`
//! (interrupts as memory writes), `bus.rs` (the ports, the host bridge, and
//! finding the device behind an MMIO address), `bar_allocator.rs` (where BARs
//! go). Nothing here touches KVM: `bin/lg`'s platform hands port and MMIO
//! exits to the bus and turns MSI-X messages into KVM interrupts, so all of
//! this runs in unit tests without a guest.
//!
//! A device is anything that implements [`PciFunction`]:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use pci::{BarAllocator, BarKind, ConfigSpace, ConfigWrite, DeviceIds, MsixConfig, PciBus, PciFunction};
//!
//! /// A function with one 4 KiB memory BAR holding its MSI-X table and PBA.
//! struct Example {
//!     config: ConfigSpace,
//!     msix: MsixConfig,
//!     msix_cap: u8,
//! }
//!
//! impl PciFunction for Example {
//!     fn config(&self) -> &ConfigSpace { &self.config }
//!     fn config_mut(&mut self) -> &mut ConfigSpace { &mut self.config }
//!     fn config_write(&mut self, offset: u16, data: &[u8]) {
//!         if let ConfigWrite::Capability { offset: cap } = self.config.write(offset, data) {
//!             if cap == self.msix_cap {
//!                 let control = self.config.read_u16(u16::from(cap) + 2);
//!                 let _ = self.msix.set_message_control(control);
//!                 for _vector in self.msix.take_pending_unmasked() { /* send it */ }
//!             }
//!         }
//!     }
//!     fn bar_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
//!         match offset {
//!             0x800.. => self.msix.read_pba(offset - 0x800, data),
//!             _ => self.msix.read_table(offset, data),
//!         }
//!     }
//!     fn bar_write(&mut self, _bar: u8, offset: u64, data: &[u8]) {
//!         if offset < 0x800 {
//!             let _ = self.msix.write_table(offset, data);
//!         }
//!     }
//! }
//!
//! let ids = DeviceIds { vendor: 0x1af4, device: 0x1041, class: 0x02, subclass: 0, prog_if: 0,
//!                       revision: 1, subsystem_vendor: 0x1af4, subsystem: 1 };
//! let mut config = ConfigSpace::new(&ids);
//! let address = BarAllocator::new().allocate(0x1000).unwrap();
//! config.add_bar(0, 0x1000, BarKind::Memory32, address);
//! let msix = MsixConfig::new(2);
//! let (body, mask) = msix.capability(0, 0, 0, 0x800);
//! let msix_cap = config.add_capability(&body, &mask);
//!
//! let mut bus = PciBus::new();
//! let device = bus.add(Arc::new(Mutex::new(Example { config, msix, msix_cap }))).unwrap();
//! assert_eq!(device, 1);
//! // Until the guest turns memory decoding on, the BAR answers nothing.
//! assert!(!bus.mmio_read(address, &mut [0; 4]));
//! ```

mod bar_allocator;
mod bus;
mod config;
mod msix;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod test_device;

use std::fmt;

pub use bar_allocator::BarAllocator;
pub use bus::{
    BarAccess, HostBridge, PciBus, PciFunction, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID,
    MAX_DEVICES,
};
pub use config::{
    BarKind, ConfigSpace, ConfigWrite, DeviceIds, BAR_COUNT, CLASS_BRIDGE, COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, CONFIG_SPACE_SIZE,
    SUBCLASS_HOST_BRIDGE,
};
pub use msix::{
    MsixChange, MsixConfig, MsixVector, MSIX_CAPABILITY_ID, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS,
};

/// Why lg could not put a device on the bus or a BAR in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// Every device number from 1 to 31 is taken.
    BusFull,
    /// A BAR size that is not a power of two of at least 16 bytes.
    BadBarSize(u64),
    /// The BAR window has no aligned room left for a BAR this size.
    WindowFull { size: u64 },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BusFull => write!(
                f,
                "PCI bus 0 is full: all {} device numbers after the host bridge are taken",
                MAX_DEVICES - 1
            ),
            PciError::BadBarSize(size) => write!(
                f,
                "a PCI BAR of {size:#x} bytes is impossible: the size must be a power of two of at least 16"
            ),
            PciError::WindowFull { size } => write!(
                f,
                "no room for a {size:#x}-byte PCI BAR in the window {:#x}..{:#x}",
                hcall_abi::layout::PCI_MMIO_START,
                hcall_abi::layout::PCI_MMIO_END
            ),
        }
    }
}

impl std::error::Error for PciError {}
