//! What a virtio device is, as the transport sees it.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use shadow_mmu::GuestMemory;
use virtqueue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;

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

/// The hypervisor's word at the start of a device's I/O thread: lg narrows
/// there what the thread may do (its device-I/O seccomp filter), which
/// only the thread itself can do. A device calls [`IoThreadStart::run`] as
/// its thread's first act and needs to know nothing more; a failure is the
/// hypervisor's to handle, and `run` does not return from it.
#[derive(Clone)]
pub struct IoThreadStart(Arc<dyn Fn() + Send + Sync>);

impl IoThreadStart {
    pub fn new(start: impl Fn() + Send + Sync + 'static) -> IoThreadStart {
        IoThreadStart(Arc::new(start))
    }

    /// A start that does nothing, for hypervisors that confine no thread.
    pub fn nothing() -> IoThreadStart {
        IoThreadStart::new(|| {})
    }

    /// Called on the I/O thread, first.
    pub fn run(&self) {
        (self.0)()
    }
}

/// A device's I/O thread and the eventfd that tells it to stop: what every
/// device starts in `activate` and ends in `reset`.
pub struct IoThread {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl IoThread {
    /// Starts the thread `name`, which runs `start` and then `serve`.
    /// `serve` is given the eventfd that [`IoThread::stop`] signals, and
    /// must return once it fires. `role` names the thread in the error
    /// ("the disk's I/O thread").
    pub fn spawn(
        name: &str,
        role: &str,
        start: IoThreadStart,
        serve: impl FnOnce(EventFd) + Send + 'static,
    ) -> Result<IoThread, ActivateError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| ActivateError(format!("cannot create an eventfd: {e}")))?;
        let thread_stop = stop
            .try_clone()
            .map_err(|e| ActivateError(format!("cannot share an eventfd: {e}")))?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                start.run();
                serve(thread_stop)
            })
            .map_err(|e| ActivateError(format!("cannot start {role}: {e}")))?;
        Ok(IoThread { stop, thread })
    }

    /// Tells the thread to stop and waits until it has: after this the
    /// device no longer touches guest memory.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
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
