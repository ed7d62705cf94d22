//! The virtio PCI transport: one [`VirtioDevice`] made into a PCI function.
//!
//! Everything the guest's virtio-pci driver touches is here: the PCI
//! capabilities that locate the structures inside BAR 0, the common
//! configuration (features, status, queues), the ISR byte, the device
//! configuration window, the queue doorbells and the MSI-X table. The layout
//! of BAR 0 is fixed:
//!
//! | offset   | what                                       |
//! |----------|--------------------------------------------|
//! | 0x0000   | common configuration (0x38 bytes)          |
//! | 0x1000   | ISR status (1 byte)                        |
//! | 0x2000   | device configuration (up to 4 KiB)         |
//! | 0x3000   | notify: one 4-byte doorbell per queue      |
//! | 0x4000   | MSI-X table (16 bytes per vector)          |
//! | 0x6000   | MSI-X pending-bit array                    |
//!
//! The doorbells are registered with KVM as ioeventfds (through
//! [`TransportHooks`]), so a guest's kick never comes through here unless
//! that registration failed; when the guest moves the BAR, they move too.
//!
//! Guest writes are checked where they land: a queue's configuration is
//! validated against guest memory when the guest sets DRIVER_OK, and a bad
//! one marks the device DEVICE_NEEDS_RESET instead of starting it.

use std::sync::{Arc, Mutex};

use pci::{BarKind, ConfigSpace, ConfigWrite, DeviceIds, MsixChange, MsixConfig, PciFunction};
use shadow_mmu::GuestMemory;
use virtqueue::features;
use virtqueue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::common_config::{self, status, Field, Ring};
use crate::device::{Activation, ActiveQueue, VirtioDevice};
use crate::interrupt::{Interrupt, IntxLine, MsiSink};

/// The size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;

const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
const DEVICE_CONFIG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_LEN: u64 = 0x1000;
/// Bytes between two queues' doorbells.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_TABLE_LEN: u64 = 0x2000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
const MSIX_PBA_LEN: u64 = 0x1000;

/// The most queues a device may have: each needs a doorbell in the notify
/// area and an MSI-X vector (one more vector serves configuration changes).
pub const MAX_QUEUES: usize = (NOTIFY_LEN / NOTIFY_MULTIPLIER as u64) as usize - 1;

const VIRTIO_BAR: u8 = 0;
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern (virtio 1.x only) devices are 0x1040 plus the virtio device id.
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Modern devices have revision 1 or more, which tells drivers they are not
/// transitional.
const MODERN_REVISION: u8 = 1;

// The virtio PCI capability (virtio 1.2 §4.1.4): a vendor-specific PCI
// capability whose cfg_type says which structure it locates.
const PCI_CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// The transport's own feature bits, as masks.
const VIRTIO_F_VERSION_1: u64 = 1 << features::VIRTIO_F_VERSION_1;
const VIRTIO_F_EVENT_IDX: u64 = 1 << features::VIRTIO_F_EVENT_IDX;
const VIRTIO_F_INDIRECT_DESC: u64 = 1 << features::VIRTIO_F_INDIRECT_DESC;

/// What the transport needs from the hypervisor.
pub trait TransportHooks: Send + Sync {
    /// A new MSI vector for this device.
    fn msi_vector(&self) -> Result<Box<dyn MsiSink>, String>;
    /// Have `event` signalled when the guest writes `addr`.
    fn register_doorbell(&self, addr: u64, event: &EventFd) -> Result<(), String>;
    /// Undo `register_doorbell`.
    fn unregister_doorbell(&self, addr: u64, event: &EventFd);
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    hooks: Arc<dyn TransportHooks>,
    memory: Arc<GuestMemory>,
    msix: Arc<Mutex<MsixConfig>>,
    msix_cap: u8,
    interrupt: Arc<Interrupt>,
    offered_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    /// Where the doorbells are registered: BAR 0's address when it was last
    /// seen, or `None` if registration failed (kicks then come as MMIO).
    doorbells_at: Option<u64>,
    active: bool,
}

impl VirtioPciDevice {
    /// Wraps `device`, with BAR 0 at `bar_address` and its INTx pin wired to
    /// `intx` (reported to the guest as interrupt line `intx_line`).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: Arc<GuestMemory>,
        bar_address: u64,
        hooks: Arc<dyn TransportHooks>,
        intx: Box<dyn IntxLine>,
        intx_line: u8,
    ) -> Result<VirtioPciDevice, String> {
        let queue_count = device.queue_max_sizes().len();
        if queue_count == 0 || queue_count > MAX_QUEUES {
            return Err(format!(
                "a virtio device needs 1 to {MAX_QUEUES} queues, not {queue_count}"
            ));
        }
        let (class, subclass) = device.pci_class();
        let ids = DeviceIds {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device.device_type(),
            class,
            subclass,
            prog_if: 0,
            revision: MODERN_REVISION,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: MODERN_DEVICE_BASE + device.device_type(),
        };
        let mut config = ConfigSpace::new(&ids);
        config.add_bar(VIRTIO_BAR, BAR_SIZE, BarKind::Memory32, bar_address);
        config.set_interrupt_pin(1, intx_line);

        add_virtio_cap(
            &mut config,
            CAP_COMMON,
            COMMON_OFFSET,
            common_config::offset::END,
            &[],
        );
        add_virtio_cap(&mut config, CAP_ISR, ISR_OFFSET, 1, &[]);
        add_virtio_cap(
            &mut config,
            CAP_DEVICE,
            DEVICE_CONFIG_OFFSET,
            DEVICE_CONFIG_LEN,
            &[],
        );
        add_virtio_cap(
            &mut config,
            CAP_NOTIFY,
            NOTIFY_OFFSET,
            NOTIFY_MULTIPLIER as u64 * queue_count as u64,
            &NOTIFY_MULTIPLIER.to_le_bytes(),
        );

        // One vector per queue and one for configuration changes.
        let vector_count = queue_count as u16 + 1;
        let msix = MsixConfig::new(vector_count);
        let (cap, writable) = msix.capability(
            VIRTIO_BAR,
            MSIX_TABLE_OFFSET as u32,
            VIRTIO_BAR,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(&cap, &writable);
        let msix = Arc::new(Mutex::new(msix));

        let vectors = (0..vector_count)
            .map(|_| hooks.msi_vector())
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(Interrupt::new(
            Arc::clone(&msix),
            vectors,
            intx,
            queue_count,
        ));

        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max))
            .collect();
        let kicks = (0..queue_count)
            .map(|_| {
                EventFd::new(libc::EFD_NONBLOCK)
                    .map_err(|e| format!("cannot create an eventfd: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let offered_features =
            device.features() | VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;

        let mut transport = VirtioPciDevice {
            config,
            device,
            hooks,
            memory,
            msix,
            msix_cap,
            interrupt,
            offered_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues,
            kicks,
            doorbells_at: None,
            active: false,
        };
        transport.place_doorbells(Some(bar_address));
        Ok(transport)
    }

    /// Moves the queues' ioeventfds to BAR 0's new address (or removes
    /// them, with `None`).
    fn place_doorbells(&mut self, bar: Option<u64>) {
        if let Some(old) = self.doorbells_at.take() {
            for (i, kick) in self.kicks.iter().enumerate() {
                self.hooks
                    .unregister_doorbell(doorbell_address(old, i), kick);
            }
        }
        let Some(bar) = bar else { return };
        for (i, kick) in self.kicks.iter().enumerate() {
            if let Err(e) = self.hooks.register_doorbell(doorbell_address(bar, i), kick) {
                log::warn!("queue doorbells will exit to lg instead: {e}");
                for (j, registered) in self.kicks.iter().enumerate().take(i) {
                    self.hooks
                        .unregister_doorbell(doorbell_address(bar, j), registered);
                }
                return;
            }
        }
        self.doorbells_at = Some(bar);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let Some(field) = common_config::field(offset, data.len()) else {
            data.fill(0);
            return;
        };
        let select = self.queue_select;
        let value: u64 = match field {
            Field::DeviceFeatureSelect => self.device_feature_select.into(),
            Field::DeviceFeature => match self.device_feature_select {
                0 => self.offered_features & 0xffff_ffff,
                1 => self.offered_features >> 32,
                _ => 0,
            },
            Field::DriverFeatureSelect => self.driver_feature_select.into(),
            Field::DriverFeature => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            Field::ConfigMsixVector => self.interrupt.config_vector().into(),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => {
                let broken = if self.interrupt.is_broken() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                (self.status | broken).into()
            }
            Field::ConfigGeneration => 0,
            Field::QueueSelect => select.into(),
            Field::QueueSize => self.selected_queue().map_or(0, |q| q.size().into()),
            Field::QueueMsixVector => self.interrupt.queue_vector(select).into(),
            Field::QueueEnable => self.selected_queue().map_or(0, |q| q.ready().into()),
            Field::QueueNotifyOff => select.into(),
            Field::QueueAddress(ring, half) => {
                let address = self.selected_queue().map_or(0, |q| match ring {
                    Ring::Descriptors => q.desc_table(),
                    Ring::Driver => q.avail_ring(),
                    Ring::Device => q.used_ring(),
                });
                match half {
                    Some(common_config::Half::High) => address >> 32,
                    _ => address,
                }
            }
        };
        common_config::put_le_value(data, value);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let Some(field) = common_config::field(offset, data.len()) else {
            return;
        };
        let value = common_config::le_value(data);
        // Once the device runs, its queues are its own: the spec forbids the
        // driver to change them, and lg ignores it if it tries.
        let queue_locked = self.active;
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select = value as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = value as u32,
            Field::DriverFeature if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            Field::ConfigMsixVector => self.interrupt.set_config_vector(self.checked_vector(value)),
            Field::DeviceStatus => self.write_status(value as u8),
            Field::QueueSelect => self.queue_select = value as u16,
            Field::QueueSize if !queue_locked => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            Field::QueueMsixVector => {
                let vector = self.checked_vector(value);
                self.interrupt.set_queue_vector(self.queue_select, vector);
            }
            Field::QueueEnable if !queue_locked => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            Field::QueueAddress(ring, half) if !queue_locked => {
                if let Some(q) = self.selected_queue() {
                    match ring {
                        Ring::Descriptors => q.set_desc_table(common_config::merge_address(
                            q.desc_table(),
                            half,
                            value,
                        )),
                        Ring::Driver => q.set_avail_ring(common_config::merge_address(
                            q.avail_ring(),
                            half,
                            value,
                        )),
                        Ring::Device => q.set_used_ring(common_config::merge_address(
                            q.used_ring(),
                            half,
                            value,
                        )),
                    }
                }
            }
            _ => {}
        }
    }

    /// A vector number the guest chose, or NO_VECTOR if there is no such
    /// vector (the spec's way of telling the driver it was refused).
    fn checked_vector(&self, value: u64) -> u16 {
        let count = self.queues.len() as u64 + 1;
        if value < count {
            value as u16
        } else {
            crate::interrupt::NO_VECTOR
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut new = value;
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.offered_features;
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                // Refused: the driver reads FEATURES_OK back and gives up.
                log::info!(
                    "virtio device {}: refusing features {:#x}",
                    self.device.device_type(),
                    self.driver_features
                );
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let features = self.driver_features;
        let mut active = Vec::new();
        for (index, queue) in self.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let mut queue = queue.clone();
            queue.set_event_idx(features & VIRTIO_F_EVENT_IDX != 0);
            queue.set_indirect(features & VIRTIO_F_INDIRECT_DESC != 0);
            if let Err(e) = queue.validate(&self.memory) {
                self.interrupt.report_broken(&format!("queue {index}: {e}"));
                return;
            }
            let kick = match self.kicks[index].try_clone() {
                Ok(kick) => kick,
                Err(e) => {
                    self.interrupt
                        .report_broken(&format!("cannot share queue {index}'s doorbell: {e}"));
                    return;
                }
            };
            active.push(ActiveQueue {
                index: index as u16,
                queue,
                kick,
            });
        }
        let activation = Activation {
            memory: Arc::clone(&self.memory),
            features,
            queues: active,
            interrupt: Arc::clone(&self.interrupt),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => self.interrupt.report_broken(&e.to_string()),
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        // Kicks that arrived before the reset belong to the old queues.
        for kick in &self.kicks {
            let _ = kick.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    fn after_msix_change(&self, change: MsixChange) {
        if let MsixChange::VectorChanged(vector) = change {
            self.interrupt.program_vector(vector);
        }
        self.interrupt.deliver_pending();
    }
}

fn doorbell_address(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + NOTIFY_MULTIPLIER as u64 * queue as u64
}

/// Appends one virtio PCI capability: which structure (`cfg_type`), where
/// in BAR 0 it is, how long, and any type-specific trailing fields.
fn add_virtio_cap(config: &mut ConfigSpace, cfg_type: u8, offset: u64, length: u64, extra: &[u8]) {
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![PCI_CAP_VENDOR, 0, cap_len, cfg_type, VIRTIO_BAR, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    let read_only = vec![0u8; body.len()];
    config.add_capability(&body, &read_only);
}

impl PciFunction for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        match self.config.write(offset, data) {
            ConfigWrite::BarMoved {
                index: VIRTIO_BAR,
                new,
                ..
            } => self.place_doorbells(Some(new)),
            ConfigWrite::Capability { offset } if offset == self.msix_cap => {
                let mut control = [0u8; 2];
                self.config.read(u16::from(self.msix_cap) + 2, &mut control);
                let change = self
                    .msix
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_message_control(u16::from_le_bytes(control));
                self.after_msix_change(change);
            }
            _ => {}
        }
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != VIRTIO_BAR {
            data.fill(0xff);
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.read_common(o - COMMON_OFFSET, data),
            o if o < DEVICE_CONFIG_OFFSET => {
                data.fill(0);
                if o == ISR_OFFSET {
                    if let Some(first) = data.first_mut() {
                        *first = self.interrupt.take_isr();
                    }
                }
            }
            o if o < DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN => {
                data.fill(0);
                self.device.read_config(o - DEVICE_CONFIG_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + MSIX_TABLE_LEN).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_table(o - MSIX_TABLE_OFFSET, data),
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + MSIX_PBA_LEN).contains(&o) => self
                .msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_pba(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR {
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.write_common(o - COMMON_OFFSET, data),
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + DEVICE_CONFIG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_LEN).contains(&o) => {
                // Only reached when the ioeventfd could not be registered.
                let queue = ((o - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER as u64) as usize;
                if let Some(kick) = self.kicks.get(queue) {
                    let _ = kick.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + MSIX_TABLE_LEN).contains(&o) => {
                let change = self
                    .msix
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_table(o - MSIX_TABLE_OFFSET, data);
                self.after_msix_change(change);
            }
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.place_doorbells(None);
    }
}
