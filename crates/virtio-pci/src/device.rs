//! What a virtio device is, as the transport sees it.

use std::fmt;
use std::sync::Arc;

use shadow_mmu::GuestMemory;
use virtqueue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;
use crate::io_thread::IoThreadStart;

/// One queue handed to a device when the guest starts it: checked against
/// guest memory, with the doorbell the guest rings for it.
pub struct ActiveQueue {
    /// The queue's number within the device.
    pub index: u16,
    pub queue: Queue,
    /// Signalled (through KVM's ioeventfd) when the guest notifies this queue.
    pub kick: EventFd,
}

/// Everything a device needs to run: guest memory, the features the guest
/// accepted, its queues, and how to interrupt the guest.
pub struct Activation {
    pub memory: Arc<GuestMemory>,
    /// The negotiated feature bits (device and transport bits together).
    pub features: u64,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<Interrupt>,
    /// What the device's I/O thread runs first, before it touches a queue.
    pub io_thread_start: IoThreadStart,
}

impl Activation {
    /// Takes queue `index` out of the activation: `None` when the guest
    /// did not enable it.
    pub fn take_queue(&mut self, index: u16) -> Option<ActiveQueue> {
        let at = self.queues.iter().position(|q| q.index == index)?;
        Some(self.queues.swap_remove(at))
    }
}

/// Reads `data.len()` bytes of a device's configuration space `config`
/// from `offset`, as [`VirtioDevice::read_config`] promises: bytes past its
/// end, at however absurd an offset, read as zero.
pub fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// Why a device would not start.
#[derive(Debug)]
pub struct ActivateError(pub String);

impl fmt::Display for ActivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ActivateError {}

/// A virtio device. The transport owns the PCI side; the device owns what
/// its queues mean.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio 1.2 §5): 1 net, 2 block, 3 console, 4 rng.
    fn device_type(&self) -> u16;
    /// Its PCI class and subclass, so `lspci` names it sensibly.
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0x00)
    }
    /// The most descriptors each of its queues may hold; the length of the
    /// slice is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The device-specific feature bits it offers (the transport adds its
    /// own: VERSION_1, EVENT_IDX, INDIRECT_DESC).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration at `offset`. Bytes past its
    /// end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration; most devices ignore this.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The guest set DRIVER_OK: start serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The guest reset the device: stop serving the queues and drop them.
    /// After this returns the device no longer touches guest memory.
    fn reset(&mut self);
}
