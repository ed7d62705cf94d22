//! Interrupts and doorbells the kernel delivers without waking lg.
//!
//! A virtio device on an I/O thread finishes a request and must interrupt
//! the guest; the guest adds a request and must wake the device. Both could
//! go through lg (an ioctl to inject, an MMIO exit to notify), but KVM can
//! do both in the kernel: an *irqfd* is an eventfd that, when written,
//! raises a GSI, and an *ioeventfd* is an eventfd that KVM signals when the
//! guest writes a given address, without an exit to userspace.
//!
//! MSI-X needs one more piece. An MSI is not a pin but a message (an
//! address and a data word, which the guest programs into the device's
//! MSI-X table). KVM turns a GSI into a message through its GSI routing
//! table, which lg owns and replaces whole on every change: the default
//! routes for the PIC and IO-APIC pins (which replacing the table would
//! otherwise drop) plus one MSI route per vector a device uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::vm::SwitcherError;

/// The IO-APIC's pin count in KVM: GSIs below this are pins, not messages.
const IOAPIC_PINS: u32 = 24;
/// The PIC pair's inputs, which KVM routes to both PIC and IO-APIC.
const PIC_PINS: u32 = 16;
/// KVM's limit on GSI numbers in the routing table.
const MAX_GSI: u32 = 4096;

/// An MSI message: where the guest asked its interrupt to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The VM's GSI routing table.
pub struct MsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
}

struct RoutingState {
    /// MSI routes by GSI; `None` while the guest has not programmed (or has
    /// masked) the vector, which leaves the GSI unrouted.
    messages: BTreeMap<u32, Option<MsiMessage>>,
    next_gsi: u32,
}

impl MsiRouting {
    pub fn new(vm: Arc<VmFd>) -> Arc<MsiRouting> {
        Arc::new(MsiRouting {
            vm,
            state: Mutex::new(RoutingState {
                messages: BTreeMap::new(),
                next_gsi: IOAPIC_PINS,
            }),
        })
    }

    /// A new MSI vector: a GSI of its own, with an irqfd on it.
    pub fn allocate(self: &Arc<Self>) -> Result<MsiVector, SwitcherError> {
        let gsi = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.next_gsi >= MAX_GSI {
                return Err(SwitcherError::MissingCapability(
                    "a free GSI for an MSI vector",
                ));
            }
            let gsi = state.next_gsi;
            state.next_gsi += 1;
            state.messages.insert(gsi, None);
            gsi
        };
        let event = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
            SwitcherError::Kvm(
                "create an eventfd",
                kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        self.vm
            .register_irqfd(&event, gsi)
            .map_err(|e| SwitcherError::Kvm("register an irqfd", e))?;
        Ok(MsiVector {
            routing: Arc::clone(self),
            gsi,
            event,
        })
    }

    fn set(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), SwitcherError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.messages.insert(gsi, message);
        let entries = routing_entries(&state.messages);
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| SwitcherError::MissingCapability("room for the GSI routing table"))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| SwitcherError::Kvm("set the GSI routing table", e))
    }
}

/// The whole routing table: KVM's defaults for the pins, then the MSIs.
fn routing_entries(messages: &BTreeMap<u32, Option<MsiMessage>>) -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(pin_route(gsi, chip, gsi % 8));
        }
        entries.push(pin_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, message) in messages {
        if let Some(message) = message {
            let mut entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = message.address as u32;
            entry.u.msi.address_hi = (message.address >> 32) as u32;
            entry.u.msi.data = message.data;
            entries.push(entry);
        }
    }
    entries
}

fn pin_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// One MSI vector: set its message when the guest programs the MSI-X table
/// entry, and trigger it from any thread.
pub struct MsiVector {
    routing: Arc<MsiRouting>,
    gsi: u32,
    event: EventFd,
}

impl MsiVector {
    /// Routes the vector to `message`, or unroutes it.
    pub fn set_message(&self, message: Option<MsiMessage>) -> Result<(), SwitcherError> {
        self.routing.set(self.gsi, message)
    }

    /// Raises the interrupt: one eventfd write, which KVM turns into the MSI.
    pub fn trigger(&self) {
        if let Err(e) = self.event.write(1) {
            log::warn!("cannot raise MSI on GSI {}: {e}", self.gsi);
        }
    }
}

impl Drop for MsiVector {
    fn drop(&mut self) {
        let _ = self.routing.vm.unregister_irqfd(&self.event, self.gsi);
        let mut state = self.routing.state.lock().unwrap_or_else(|e| e.into_inner());
        state.messages.remove(&self.gsi);
    }
}

/// Asks KVM to signal `event` when the guest writes guest-physical `addr`
/// (any width, any value): a virtio queue's notify doorbell.
pub fn register_doorbell(vm: &VmFd, addr: u64, event: &EventFd) -> Result<(), SwitcherError> {
    vm.register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
        .map_err(|e| SwitcherError::Kvm("register an ioeventfd", e))
}

/// Undoes [`register_doorbell`], when the guest moves the BAR or resets
/// the device.
pub fn unregister_doorbell(vm: &VmFd, addr: u64, event: &EventFd) -> Result<(), SwitcherError> {
    vm.unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
        .map_err(|e| SwitcherError::Kvm("unregister an ioeventfd", e))
}

/// Sets an IO-APIC pin's level: a PCI device's INTx line when MSI-X is off.
pub fn set_pin_level(vm: &VmFd, gsi: u32, asserted: bool) {
    if let Err(e) = vm.set_irq_line(gsi, asserted) {
        log::warn!("cannot set GSI {gsi}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_default_pins_and_adds_programmed_msis() {
        let mut messages = BTreeMap::new();
        messages.insert(
            24,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x4041,
            }),
        );
        messages.insert(25, None);
        let entries = routing_entries(&messages);
        // 16 PIC routes, 24 IO-APIC routes, one MSI (the unprogrammed
        // vector has no route).
        assert_eq!(entries.len(), 16 + 24 + 1);
        let msi = entries.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: this entry was built as an MSI route, so `msi` is the
        // union's active member.
        let (lo, data) = unsafe { (msi.u.msi.address_lo, msi.u.msi.data) };
        assert_eq!((lo, data), (0xfee0_0000, 0x4041));
        let pin4 = entries.iter().filter(|e| e.gsi == 4).count();
        assert_eq!(pin4, 2, "GSI 4 reaches both the PIC and the IO-APIC");
    }
}
