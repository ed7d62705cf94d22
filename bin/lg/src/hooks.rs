//! The virtio transport's hooks into KVM: MSI vectors, INTx pins and queue
//! doorbells, provided by the switcher's irqfd and ioeventfd wrappers; and
//! the start of each device's I/O thread, where lg narrows the thread to
//! its seccomp role.
//!
//! The transport crate knows nothing of KVM or seccomp (so it can be read,
//! and tested, on its own); this adapter is the only place they meet.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use switcher::irq::{self, MsiMessage, MsiRouting, MsiVector};
use virtio_pci::{IntxLine, IoThreadStart, MsiSink, TransportHooks};

use crate::seccomp::{self, Role};
use vmm_sys_util::eventfd::EventFd;

/// KVM-backed hooks for every virtio device of one VM.
pub struct KvmHooks {
    pub vm: Arc<VmFd>,
    pub routing: Arc<MsiRouting>,
}

impl TransportHooks for KvmHooks {
    fn msi_vector(&self) -> Result<Box<dyn MsiSink>, String> {
        let vector = self.routing.allocate().map_err(|e| e.to_string())?;
        Ok(Box::new(KvmMsi(vector)))
    }

    fn register_doorbell(&self, addr: u64, event: &EventFd) -> Result<(), String> {
        irq::register_doorbell(&self.vm, addr, event).map_err(|e| e.to_string())
    }

    fn unregister_doorbell(&self, addr: u64, event: &EventFd) {
        if let Err(e) = irq::unregister_doorbell(&self.vm, addr, event) {
            log::warn!("{e}");
        }
    }

    fn io_thread_start(&self, _device_type: u16) -> IoThreadStart {
        // Every device's thread takes the same role: what sets them apart
        // (a tap, a disk file) is which descriptors they hold, not which
        // calls they make on them.
        IoThreadStart::new(|| seccomp::confine_thread_or_end(Role::DeviceIo))
    }
}

struct KvmMsi(MsiVector);

impl MsiSink for KvmMsi {
    fn set_message(&self, message: Option<(u64, u32)>) {
        let message = message.map(|(address, data)| MsiMessage { address, data });
        if let Err(e) = self.0.set_message(message) {
            log::warn!("{e}");
        }
    }

    fn trigger(&self) {
        self.0.trigger();
    }
}

/// A PCI INTx line: an IO-APIC input held high while the device wants
/// attention.
pub struct KvmIntx {
    pub vm: Arc<VmFd>,
    pub gsi: u32,
}

impl IntxLine for KvmIntx {
    fn set_level(&self, asserted: bool) {
        irq::set_pin_level(&self.vm, self.gsi, asserted);
    }
}
