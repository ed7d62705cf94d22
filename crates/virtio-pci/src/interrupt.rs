//! How a device interrupts the guest.
//!
//! A modern guest enables MSI-X and gives each queue (and configuration
//! changes) a vector of its own; signalling one is a single eventfd write that
//! KVM turns into a message to the right CPU. The guest may mask a vector or
//! the whole function, in which case the interrupt waits in the pending-bit
//! array until it is unmasked. A guest that does not enable MSI-X (booted
//! with `pci=nomsi`, say) gets the legacy path: the ISR byte records why,
//! and the INTx line stays asserted until the guest reads the ISR.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use pci::MsixConfig;

/// "No vector": the guest's value for a queue that wants no MSI-X interrupt.
pub const NO_VECTOR: u16 = 0xffff;

/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1 << 0;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 1 << 1;

/// One MSI vector as the hypervisor provides it.
pub trait MsiSink: Send + Sync {
    /// The guest programmed (or cleared) the vector's address and data.
    fn set_message(&self, message: Option<(u64, u32)>);
    /// Deliver the interrupt.
    fn trigger(&self);
}

/// The device's INTx pin, as the hypervisor provides it.
pub trait IntxLine: Send + Sync {
    fn set_level(&self, asserted: bool);
}

/// A device's interrupts: shared by the transport (which the guest
/// programs) and the device's I/O threads (which signal).
pub struct Interrupt {
    msix: Arc<Mutex<MsixConfig>>,
    vectors: Vec<Box<dyn MsiSink>>,
    intx: Box<dyn IntxLine>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    broken: AtomicBool,
    /// The device's name in lg's log (`virtio-blk`), so that a warning
    /// says which device the guest broke.
    device: String,
}

impl Interrupt {
    pub(crate) fn new(
        msix: Arc<Mutex<MsixConfig>>,
        vectors: Vec<Box<dyn MsiSink>>,
        intx: Box<dyn IntxLine>,
        queues: usize,
        device: String,
    ) -> Interrupt {
        Interrupt {
            msix,
            vectors,
            intx,
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            broken: AtomicBool::new(false),
            device,
        }
    }

    /// Tells the guest that queue `queue` has used buffers.
    pub fn signal_used(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.signal(vector, ISR_QUEUE);
    }

    /// Tells the guest that the device configuration (or status) changed.
    pub fn signal_config(&self) {
        self.signal(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    /// The device found the guest's queues unusable: the transport reports
    /// DEVICE_NEEDS_RESET in the status from now on, and the guest is told.
    /// Logged once until the guest resets the device: a guest that keeps
    /// kicking a broken queue must not flood lg's log.
    pub fn report_broken(&self, why: &str) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            log::warn!("{}", self.broken_message(why));
        }
        self.signal_config();
    }

    pub(crate) fn broken_message(&self, why: &str) -> String {
        format!("{} needs a reset: {why}", self.device)
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        if msix.enabled() {
            if vector == NO_VECTOR {
                return;
            }
            if msix.should_deliver(vector) {
                if let Some(sink) = self.vectors.get(usize::from(vector)) {
                    sink.trigger();
                }
            }
            return;
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        self.intx.set_level(true);
    }

    /// The guest read the ISR: it returns the reasons and clears them, and
    /// the INTx line falls.
    pub(crate) fn take_isr(&self) -> u8 {
        let isr = self.isr.swap(0, Ordering::AcqRel);
        if isr != 0 {
            self.intx.set_level(false);
        }
        isr
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(vector, Ordering::Release);
    }

    pub(crate) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    pub(crate) fn set_queue_vector(&self, queue: u16, vector: u16) {
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            v.store(vector, Ordering::Release);
        }
    }

    pub(crate) fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// Programs a vector's message after the guest wrote its table entry.
    pub(crate) fn program_vector(&self, vector: u16) {
        let message = {
            let msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
            msix.vector(vector).map(|v| (v.address, v.data))
        };
        if let Some(sink) = self.vectors.get(usize::from(vector)) {
            sink.set_message(message);
        }
    }

    /// Delivers what waited while masked, after an unmask.
    pub(crate) fn deliver_pending(&self) {
        let pending = {
            let mut msix = self.msix.lock().unwrap_or_else(|e| e.into_inner());
            msix.take_pending_unmasked()
        };
        for vector in pending {
            if let Some(sink) = self.vectors.get(usize::from(vector)) {
                sink.trigger();
            }
        }
    }

    /// Back to the state after reset: no vectors chosen, nothing pending,
    /// not broken.
    pub(crate) fn reset(&self) {
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.take_isr();
        self.broken.store(false, Ordering::Release);
    }
}
