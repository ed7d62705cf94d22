//! # virtio-pci: how a guest finds and drives lg's devices
//!
//! lguest invented virtio so that one set of guest drivers could talk to any
//! hypervisor's devices through shared-memory queues. Virtio 1.x standardised
//! how those devices appear on PCI, which is where a stock kernel looks for
//! them: each device is a PCI function whose vendor-specific capabilities
//! point into a memory BAR holding
//!
//! - the *common configuration* (feature negotiation, device status, and
//!   each queue's size and ring addresses) — [`common_config`];
//! - the *notify* area, one doorbell per queue, which lg hands to KVM as an
//!   ioeventfd so a guest's kick wakes the device thread without an exit;
//! - the *ISR* byte, for guests that use the legacy INTx interrupt;
//! - the device's own configuration (a console's size, a disk's capacity);
//! - the MSI-X table and pending bits — [`interrupt`].
//!
//! A device is a [`VirtioDevice`] implementation in its own crate: it says
//! its type, queues and features, and when the guest sets DRIVER_OK it is
//! handed its checked queues, their doorbells and an [`Interrupt`] to signal
//! with, and serves them on an [`IoThread`] that its reset stops, sleeping
//! between batches in [`wait_for_work`]. Adding a device never touches
//! this crate.
//!
//! The `test-util` feature exports `fake_hooks`, the hypervisor's side
//! faked, so that a device crate's tests can run it behind the transport.

pub mod common_config;
mod device;
#[cfg(feature = "test-util")]
pub mod fake_hooks;
pub mod interrupt;
mod io_thread;
mod transport;

pub use device::{copy_config, ActivateError, Activation, ActiveQueue, VirtioDevice};
pub use interrupt::{Interrupt, IntxLine, MsiSink};
pub use io_thread::{poll, pollfd, wait_for_work, IoThread, IoThreadStart};
pub use transport::{TransportHooks, VirtioPciDevice, BAR_SIZE};
