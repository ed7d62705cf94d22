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
use crate::io_thread::IoThreadStart;

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
/// area and an MSI-X vector in the table (one more vector serves
/// configuration changes). The table is the tighter limit: 512 entries,
/// so 511 queues.
pub const MAX_QUEUES: usize = {
    let doorbells = NOTIFY_LEN / NOTIFY_MULTIPLIER as u64;
    let vectors = MSIX_TABLE_LEN / pci::MSIX_ENTRY_SIZE;
    (if doorbells < vectors - 1 {
        doorbells
    } else {
        vectors - 1
    }) as usize
};

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
    /// What the I/O thread of a device of virtio type `device_type` runs
    /// as it starts; by default, nothing.
    fn io_thread_start(&self, _device_type: u16) -> IoThreadStart {
        IoThreadStart::nothing()
    }
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
            device_name(device.device_type()),
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
        if new & status::DRIVER_OK != 0 && !self.active {
            if new & status::FEATURES_OK != 0 {
                self.activate();
            } else {
                // A driver that skipped FEATURES_OK (or went on after it
                // was refused) waits for a device that will never run:
                // tell it, rather than leave it hanging.
                self.interrupt
                    .report_broken("the driver set DRIVER_OK without FEATURES_OK");
            }
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
            io_thread_start: self.hooks.io_thread_start(self.device.device_type()),
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

/// What lg's log calls a device of virtio type `device_type`.
fn device_name(device_type: u16) -> String {
    match device_type {
        1 => "virtio-net".into(),
        2 => "virtio-blk".into(),
        3 => "virtio-console".into(),
        4 => "virtio-rng".into(),
        other => format!("virtio device {other}"),
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

#[cfg(test)]
mod tests {
    //! The transport driven the way Linux's `virtio_pci_modern` drives it:
    //! configuration-space reads and writes for the capabilities and MSI-X,
    //! BAR 0 accesses at the widths the driver uses for everything else. The
    //! hypervisor (MSI routes, ioeventfds, the INTx pin) and the device are
    //! fakes that write down what was done to them.

    use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

    use super::*;
    use crate::common_config::offset;
    use crate::device::ActivateError;
    use crate::interrupt::{ISR_CONFIG, ISR_QUEUE, NO_VECTOR};

    const MIB: u64 = 1 << 20;
    const BAR: u64 = 0xc000_0000;
    const QUEUE_MAX: [u16; 2] = [256, 128];
    /// Feature bits of the fake device's own: bit 0 (a console's SIZE) and
    /// bit 3.
    const DEVICE_FEATURES: u64 = 0b1001;
    /// The fake device's configuration: what reads at BAR 0 + 0x2000.
    const DEVICE_CONFIG: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

    /// Something the hypervisor's side was asked to do.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Event {
        SetMessage(u16, Option<(u64, u32)>),
        Trigger(u16),
        Register(u64),
        Unregister(u64),
        /// A device of this virtio type started its I/O thread.
        ThreadStart(u16),
    }

    type Log = Arc<Mutex<Vec<Event>>>;

    struct FakeSink {
        vector: u16,
        log: Log,
    }

    impl MsiSink for FakeSink {
        fn set_message(&self, message: Option<(u64, u32)>) {
            let event = Event::SetMessage(self.vector, message);
            self.log.lock().unwrap().push(event);
        }

        fn trigger(&self) {
            self.log.lock().unwrap().push(Event::Trigger(self.vector));
        }
    }

    struct FakeHooks {
        log: Log,
        next_vector: AtomicU16,
        /// Refuse every doorbell, as KVM does when it has no ioeventfd slots.
        refuse_doorbells: AtomicBool,
    }

    impl TransportHooks for FakeHooks {
        fn msi_vector(&self) -> Result<Box<dyn MsiSink>, String> {
            Ok(Box::new(FakeSink {
                vector: self.next_vector.fetch_add(1, Ordering::Relaxed),
                log: Arc::clone(&self.log),
            }))
        }

        fn register_doorbell(&self, addr: u64, _event: &EventFd) -> Result<(), String> {
            if self.refuse_doorbells.load(Ordering::Relaxed) {
                return Err("no ioeventfd for you".into());
            }
            self.log.lock().unwrap().push(Event::Register(addr));
            Ok(())
        }

        fn unregister_doorbell(&self, addr: u64, _event: &EventFd) {
            self.log.lock().unwrap().push(Event::Unregister(addr));
        }

        fn io_thread_start(&self, device_type: u16) -> IoThreadStart {
            let log = Arc::clone(&self.log);
            IoThreadStart::new(move || log.lock().unwrap().push(Event::ThreadStart(device_type)))
        }
    }

    /// The INTx pin: its level now, and every change.
    #[derive(Default)]
    struct Pin {
        level: AtomicBool,
        changes: Mutex<Vec<bool>>,
    }

    struct FakeIntx(Arc<Pin>);

    impl IntxLine for FakeIntx {
        fn set_level(&self, asserted: bool) {
            self.0.level.store(asserted, Ordering::Relaxed);
            self.0.changes.lock().unwrap().push(asserted);
        }
    }

    /// What the fake device saw: how often it was started and reset, and
    /// the last activation, kept so the test can signal with its interrupt.
    #[derive(Default)]
    struct Seen {
        activations: usize,
        resets: usize,
        activation: Option<Activation>,
    }

    struct FakeDevice {
        queue_max: Vec<u16>,
        seen: Arc<Mutex<Seen>>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u16 {
            3
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &self.queue_max
        }

        fn features(&self) -> u64 {
            DEVICE_FEATURES
        }

        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                let at = offset as usize + i;
                *byte = DEVICE_CONFIG.get(at).copied().unwrap_or(0);
            }
        }

        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            let mut seen = self.seen.lock().unwrap();
            seen.activations += 1;
            seen.activation = Some(activation);
            Ok(())
        }

        fn reset(&mut self) {
            let mut seen = self.seen.lock().unwrap();
            seen.resets += 1;
            seen.activation = None;
        }
    }

    /// A transport on a fake device, with everything the test inspects.
    struct Rig {
        dev: VirtioPciDevice,
        log: Log,
        pin: Arc<Pin>,
        seen: Arc<Mutex<Seen>>,
    }

    fn rig() -> Rig {
        rig_with(false)
    }

    fn rig_with(refuse_doorbells: bool) -> Rig {
        let (dev, log, pin, seen) = build(QUEUE_MAX.to_vec(), refuse_doorbells).unwrap();
        Rig {
            dev,
            log,
            pin,
            seen,
        }
    }

    type Built = (VirtioPciDevice, Log, Arc<Pin>, Arc<Mutex<Seen>>);

    /// A transport on a fake device with queues of `queue_max` sizes.
    fn build(queue_max: Vec<u16>, refuse_doorbells: bool) -> Result<Built, String> {
        let log = Log::default();
        let pin = Arc::new(Pin::default());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let hooks = Arc::new(FakeHooks {
            log: Arc::clone(&log),
            next_vector: AtomicU16::new(0),
            refuse_doorbells: AtomicBool::new(refuse_doorbells),
        });
        let dev = VirtioPciDevice::new(
            Box::new(FakeDevice {
                queue_max,
                seen: Arc::clone(&seen),
            }),
            Arc::new(GuestMemory::new(MIB).unwrap()),
            BAR,
            hooks,
            Box::new(FakeIntx(Arc::clone(&pin))),
            11,
        )?;
        Ok((dev, log, pin, seen))
    }

    /// Where queue `q`'s rings go in guest RAM: 64 KiB apart from 64 KiB,
    /// each part page-aligned.
    fn rings(q: u16) -> [u64; 3] {
        let base = 0x10000 * (u64::from(q) + 1);
        [base, base + 0x1000, base + 0x2000]
    }

    impl Rig {
        fn events(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }

        fn take_events(&self) -> Vec<Event> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }

        fn triggers(&self) -> Vec<u16> {
            self.events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Trigger(v) => Some(v),
                    _ => None,
                })
                .collect()
        }

        fn read(&mut self, at: u64, len: usize) -> u64 {
            let mut data = vec![0xaa; len];
            self.dev.bar_read(0, at, &mut data);
            common_config::le_value(&data)
        }

        fn write(&mut self, at: u64, len: usize, value: u64) {
            let bytes = value.to_le_bytes();
            self.dev.bar_write(0, at, &bytes[..len]);
        }

        fn read8(&mut self, at: u64) -> u8 {
            self.read(at, 1) as u8
        }

        fn read16(&mut self, at: u64) -> u16 {
            self.read(at, 2) as u16
        }

        fn read32(&mut self, at: u64) -> u32 {
            self.read(at, 4) as u32
        }

        fn write8(&mut self, at: u64, value: u8) {
            self.write(at, 1, value.into());
        }

        fn write16(&mut self, at: u64, value: u16) {
            self.write(at, 2, value.into());
        }

        fn write32(&mut self, at: u64, value: u32) {
            self.write(at, 4, value.into());
        }

        fn config_read(&mut self, at: u16, len: usize) -> u32 {
            let mut data = vec![0; len];
            self.dev.config_read(at, &mut data);
            common_config::le_value(&data) as u32
        }

        fn config_write(&mut self, at: u16, value: u32, len: usize) {
            self.dev.config_write(at, &value.to_le_bytes()[..len]);
        }

        fn status(&mut self) -> u8 {
            self.read8(offset::DEVICE_STATUS)
        }

        /// `vp_set_status` after `vp_get_status`: status bits accumulate.
        fn add_status(&mut self, bits: u8) {
            let status = self.status();
            self.write8(offset::DEVICE_STATUS, status | bits);
        }

        /// Both 32-bit pages of the offered features.
        fn device_features(&mut self) -> u64 {
            self.write32(offset::DEVICE_FEATURE_SELECT, 0);
            let low = self.read32(offset::DEVICE_FEATURE);
            self.write32(offset::DEVICE_FEATURE_SELECT, 1);
            let high = self.read32(offset::DEVICE_FEATURE);
            u64::from(high) << 32 | u64::from(low)
        }

        /// `vp_modern_set_features`: low page, then high page.
        fn set_driver_features(&mut self, features: u64) {
            self.write32(offset::DRIVER_FEATURE_SELECT, 0);
            self.write32(offset::DRIVER_FEATURE, features as u32);
            self.write32(offset::DRIVER_FEATURE_SELECT, 1);
            self.write32(offset::DRIVER_FEATURE, (features >> 32) as u32);
        }

        /// The start of `virtio_dev_probe`: reset, ACKNOWLEDGE, DRIVER,
        /// features, FEATURES_OK. Returns whether FEATURES_OK stuck.
        fn negotiate(&mut self, features: u64) -> bool {
            self.write8(offset::DEVICE_STATUS, 0);
            assert_eq!(self.status(), 0);
            self.add_status(status::ACKNOWLEDGE);
            self.add_status(status::DRIVER);
            let _ = self.device_features();
            self.set_driver_features(features);
            self.add_status(status::FEATURES_OK);
            self.status() & status::FEATURES_OK != 0
        }

        /// A 64-bit ring address as `vp_iowrite64_twopart` writes it.
        fn write_address(&mut self, field: u64, address: u64) {
            self.write32(field, address as u32);
            self.write32(field + 4, (address >> 32) as u32);
        }

        fn read_address(&mut self, field: u64) -> u64 {
            let low = self.read32(field);
            let high = self.read32(field + 4);
            u64::from(high) << 32 | u64::from(low)
        }

        /// `vp_modern_setup_vq` and `vp_modern_find_vqs` for queue `q`:
        /// size, rings, vector (read back), enable.
        fn setup_queue(
            &mut self,
            q: u16,
            size: u16,
            [desc, driver, device]: [u64; 3],
            vector: u16,
        ) {
            self.write16(offset::QUEUE_SELECT, q);
            assert_eq!(self.read16(offset::QUEUE_SIZE), QUEUE_MAX[usize::from(q)]);
            self.write16(offset::QUEUE_SIZE, size);
            self.write_address(offset::QUEUE_DESC, desc);
            self.write_address(offset::QUEUE_DRIVER, driver);
            self.write_address(offset::QUEUE_DEVICE, device);
            self.write16(offset::QUEUE_MSIX_VECTOR, vector);
            assert_eq!(self.read16(offset::QUEUE_MSIX_VECTOR), vector);
            self.write16(offset::QUEUE_ENABLE, 1);
        }

        /// A whole probe without MSI-X: both queues, 64 entries each.
        fn start(&mut self, features: u64) {
            assert!(self.negotiate(features));
            for q in 0..2 {
                self.setup_queue(q, 64, rings(q), NO_VECTOR);
            }
            self.add_status(status::DRIVER_OK);
        }

        fn activations(&self) -> usize {
            self.seen.lock().unwrap().activations
        }

        fn interrupt(&self) -> Arc<Interrupt> {
            let seen = self.seen.lock().unwrap();
            let activation = seen.activation.as_ref().expect("the device is running");
            Arc::clone(&activation.interrupt)
        }

        /// The capabilities, as `pci_find_next_capability` walks them:
        /// (offset, id).
        fn capabilities(&mut self) -> Vec<(u16, u8)> {
            assert_ne!(self.config_read(0x06, 2) & (1 << 4), 0, "capability list");
            let mut found = Vec::new();
            let mut at = self.config_read(0x34, 1) as u16 & !3;
            while at != 0 {
                assert!(found.len() < 48, "capability loop");
                found.push((at, self.config_read(at, 1) as u8));
                at = self.config_read(at + 1, 1) as u16 & !3;
            }
            found
        }

        fn msix_cap(&mut self) -> u16 {
            let caps = self.capabilities();
            caps.iter()
                .find(|&&(_, id)| id == pci::MSIX_CAPABILITY_ID)
                .expect("an MSI-X capability")
                .0
        }

        /// `msix_capability_init`: enable with the function masked, program
        /// vectors 0..count (address, data, unmask), lift the function mask.
        fn enable_msix(&mut self, count: u16) {
            let cap = self.msix_cap();
            let control = self.config_read(cap + 2, 2);
            self.config_write(cap + 2, control | 0xc000, 2);
            for v in 0..count {
                self.program_vector(v, false);
            }
            self.config_write(cap + 2, control | 0x8000, 2);
        }

        fn program_vector(&mut self, v: u16, masked: bool) {
            let entry = MSIX_TABLE_OFFSET + 16 * u64::from(v);
            self.write32(entry, msi_address(v));
            self.write32(entry + 4, 0);
            self.write32(entry + 8, msi_data(v));
            self.write32(entry + 12, u32::from(masked));
        }

        fn pba(&mut self) -> u32 {
            self.read32(MSIX_PBA_OFFSET)
        }
    }

    fn msi_address(v: u16) -> u32 {
        0xfee0_0000 | u32::from(v) << 12
    }

    fn msi_data(v: u16) -> u32 {
        0x4020 + u32::from(v)
    }

    fn all_features() -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | DEVICE_FEATURES
    }

    #[test]
    fn the_capabilities_locate_every_structure_in_bar_0() {
        let mut rig = rig();
        assert_eq!(rig.config_read(0x00, 2), 0x1af4);
        assert_eq!(rig.config_read(0x02, 2), 0x1043, "0x1040 + console");
        assert_eq!(rig.config_read(0x08, 1), 1, "modern revision");
        assert_eq!(rig.config_read(0x3d, 1), 1, "INTA#");
        assert_eq!(rig.config_read(0x3c, 1), 11);
        assert_eq!(rig.config_read(0x10, 4), BAR as u32);

        let caps = rig.capabilities();
        let mut virtio = Vec::new();
        for &(at, id) in &caps {
            if id != PCI_CAP_VENDOR {
                continue;
            }
            let cap_len = rig.config_read(at + 2, 1);
            let cfg_type = rig.config_read(at + 3, 1) as u8;
            let bar = rig.config_read(at + 4, 1);
            let offset = rig.config_read(at + 8, 4);
            let length = rig.config_read(at + 12, 4);
            assert_eq!(bar, 0, "cfg_type {cfg_type} is in BAR 0");
            if cfg_type == CAP_NOTIFY {
                assert_eq!(cap_len, 20, "notify carries its multiplier");
                assert_eq!(rig.config_read(at + 16, 4), 4, "notify_off_multiplier");
            } else {
                assert_eq!(cap_len, 16);
            }
            virtio.push((cfg_type, offset, length));
        }
        virtio.sort_unstable();
        assert_eq!(
            virtio,
            vec![
                (CAP_COMMON, 0x0000, 0x38),
                (CAP_NOTIFY, 0x3000, 8),
                (CAP_ISR, 0x1000, 1),
                (CAP_DEVICE, 0x2000, 0x1000),
            ]
        );

        let msix = rig.msix_cap();
        let control = rig.config_read(msix + 2, 2);
        assert_eq!(control & 0x7ff, 2, "N - 1 for two queues and config");
        assert_eq!(control & 0xc000, 0, "disabled and unmasked at reset");
        assert_eq!(rig.config_read(msix + 4, 4), 0x4000, "table in BAR 0");
        assert_eq!(rig.config_read(msix + 8, 4), 0x6000, "PBA in BAR 0");
        // Every structure a capability names fits inside the BAR.
        for (_, offset, length) in virtio {
            assert!(u64::from(offset) + u64::from(length) <= BAR_SIZE);
        }
    }

    #[test]
    fn the_device_configuration_reads_through_its_window() {
        let mut rig = rig();
        assert_eq!(rig.read32(DEVICE_CONFIG_OFFSET), 0x4433_2211);
        assert_eq!(rig.read16(DEVICE_CONFIG_OFFSET + 6), 0x8877);
        assert_eq!(rig.read8(DEVICE_CONFIG_OFFSET + 5), 0x66);
        assert_eq!(rig.read32(DEVICE_CONFIG_OFFSET + 8), 0, "past its end");
        assert_eq!(rig.read16(offset::NUM_QUEUES), 2);
    }

    #[test]
    fn doorbells_are_registered_and_follow_bar_0() {
        let mut rig = rig();
        assert_eq!(
            rig.take_events(),
            vec![Event::Register(BAR + 0x3000), Event::Register(BAR + 0x3004)]
        );
        // Linux's __pci_read_base: disable decoding, size the BAR with all
        // ones, write the old value back, re-enable decoding. The doorbells
        // may wander meanwhile but must end where they started.
        rig.config_write(0x04, 0, 2);
        let saved = rig.config_read(0x10, 4);
        rig.config_write(0x10, !0, 4);
        assert_eq!(rig.config_read(0x10, 4), !(BAR_SIZE as u32 - 1));
        rig.config_write(0x10, saved, 4);
        rig.config_write(0x04, u32::from(pci::COMMAND_MEMORY_SPACE), 2);
        let mut registered = std::collections::BTreeSet::new();
        for event in [Event::Register(BAR + 0x3000), Event::Register(BAR + 0x3004)]
            .into_iter()
            .chain(rig.take_events())
        {
            match event {
                Event::Register(addr) => assert!(registered.insert(addr), "twice: {addr:#x}"),
                Event::Unregister(addr) => assert!(registered.remove(&addr), "never: {addr:#x}"),
                _ => {}
            }
        }
        assert_eq!(
            registered.into_iter().collect::<Vec<_>>(),
            [BAR + 0x3000, BAR + 0x3004]
        );
        // Then pci_assign_resource puts the BAR somewhere else.
        rig.config_write(0x10, 0xd000_8000, 4);
        assert_eq!(rig.dev.config().bar_address(0), Some(0xd000_8000));
        assert_eq!(
            rig.take_events(),
            vec![
                Event::Unregister(BAR + 0x3000),
                Event::Unregister(BAR + 0x3004),
                Event::Register(0xd000_b000),
                Event::Register(0xd000_b004),
            ]
        );
        // Going away takes the doorbells with it.
        drop(rig.dev);
        assert_eq!(
            std::mem::take(&mut *rig.log.lock().unwrap()),
            vec![
                Event::Unregister(0xd000_b000),
                Event::Unregister(0xd000_b004)
            ]
        );
    }

    #[test]
    fn kicks_come_through_the_bar_when_doorbells_cannot_be_registered() {
        let mut rig = rig_with(true);
        assert!(rig.events().is_empty());
        rig.start(all_features());
        rig.write16(NOTIFY_OFFSET + 4, 1);
        let seen = rig.seen.lock().unwrap();
        let queues = &seen.activation.as_ref().unwrap().queues;
        assert_eq!(queues[1].kick.read().unwrap(), 1);
        assert!(queues[0].kick.read().is_err(), "queue 0 was not kicked");
    }

    #[test]
    fn the_device_offers_its_features_and_the_transport_s() {
        let mut rig = rig();
        let offered = rig.device_features();
        assert_eq!(offered, all_features());
        assert_ne!(offered & 1 << 32, 0, "VERSION_1");
        assert_ne!(offered & 1 << 29, 0, "EVENT_IDX");
        assert_ne!(offered & 1 << 28, 0, "INDIRECT_DESC");
        // Pages past the second are empty; the select reads back.
        rig.write32(offset::DEVICE_FEATURE_SELECT, 2);
        assert_eq!(rig.read32(offset::DEVICE_FEATURE), 0);
        assert_eq!(rig.read32(offset::DEVICE_FEATURE_SELECT), 2);
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let mut rig = rig();
        assert!(!rig.negotiate(all_features() & !VIRTIO_F_VERSION_1));
        assert_eq!(rig.status(), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn features_ok_is_refused_for_a_feature_not_offered() {
        let mut rig = rig();
        assert!(!rig.negotiate(VIRTIO_F_VERSION_1 | 1 << 5));
        // VIRTIO_F_RING_PACKED (34): lg only has split rings.
        assert!(!rig.negotiate(VIRTIO_F_VERSION_1 | 1 << 34));
    }

    #[test]
    fn features_ok_is_accepted_for_offered_features_and_then_frozen() {
        let mut rig = rig();
        assert!(rig.negotiate(VIRTIO_F_VERSION_1 | 1));
        assert_eq!(
            rig.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        // The driver's features read back, and cannot change any more.
        rig.set_driver_features(all_features());
        rig.write32(offset::DRIVER_FEATURE_SELECT, 0);
        assert_eq!(rig.read32(offset::DRIVER_FEATURE), 1);
        rig.write32(offset::DRIVER_FEATURE_SELECT, 1);
        assert_eq!(rig.read32(offset::DRIVER_FEATURE), 1);
        // The minimum a modern driver may take.
        assert!(rig.negotiate(VIRTIO_F_VERSION_1));
    }

    #[test]
    fn queue_configuration_reads_back() {
        let mut rig = rig();
        assert!(rig.negotiate(all_features()));
        for q in 0..2u16 {
            rig.write16(offset::QUEUE_SELECT, q);
            assert_eq!(rig.read16(offset::QUEUE_SELECT), q);
            assert_eq!(rig.read16(offset::QUEUE_SIZE), QUEUE_MAX[usize::from(q)]);
            assert_eq!(rig.read16(offset::QUEUE_NOTIFY_OFF), q);
            assert_eq!(rig.read16(offset::QUEUE_ENABLE), 0);
            assert_eq!(rig.read16(offset::QUEUE_MSIX_VECTOR), NO_VECTOR);
        }
        rig.write16(offset::QUEUE_SELECT, 1);
        rig.write16(offset::QUEUE_SIZE, 32);
        rig.write_address(offset::QUEUE_DESC, 0x1_2345_6000);
        rig.write_address(offset::QUEUE_DRIVER, 0x7_0000_1002);
        rig.write_address(offset::QUEUE_DEVICE, 0x8000_0004);
        rig.write16(offset::QUEUE_ENABLE, 1);
        // Queue 0 is untouched by all that.
        rig.write16(offset::QUEUE_SELECT, 0);
        assert_eq!(rig.read16(offset::QUEUE_SIZE), 256);
        assert_eq!(rig.read_address(offset::QUEUE_DESC), 0);
        rig.write16(offset::QUEUE_SELECT, 1);
        assert_eq!(rig.read16(offset::QUEUE_SIZE), 32);
        assert_eq!(rig.read_address(offset::QUEUE_DESC), 0x1_2345_6000);
        assert_eq!(rig.read_address(offset::QUEUE_DRIVER), 0x7_0000_1002);
        assert_eq!(rig.read_address(offset::QUEUE_DEVICE), 0x8000_0004);
        // A 64-bit access sees the whole address too.
        assert_eq!(rig.read(offset::QUEUE_DESC, 8), 0x1_2345_6000);
        assert_eq!(rig.read16(offset::QUEUE_ENABLE), 1);
        // A queue that does not exist reads as nothing and ignores writes.
        rig.write16(offset::QUEUE_SELECT, 2);
        rig.write16(offset::QUEUE_SIZE, 16);
        assert_eq!(rig.read16(offset::QUEUE_SIZE), 0);
        assert_eq!(rig.read_address(offset::QUEUE_DESC), 0);
        assert_eq!(rig.read16(offset::NUM_QUEUES), 2);
    }

    #[test]
    fn driver_ok_with_valid_rings_starts_the_device() {
        let mut rig = rig();
        rig.start(all_features());
        assert_eq!(rig.activations(), 1);
        assert_eq!(
            rig.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        let seen = rig.seen.lock().unwrap();
        let activation = seen.activation.as_ref().unwrap();
        assert_eq!(activation.features, all_features());
        assert_eq!(activation.queues.len(), 2);
        for (q, active) in activation.queues.iter().enumerate() {
            assert_eq!(usize::from(active.index), q);
            let [desc, driver, device] = rings(q as u16);
            assert_eq!(active.queue.size(), 64);
            assert_eq!(active.queue.desc_table(), desc);
            assert_eq!(active.queue.avail_ring(), driver);
            assert_eq!(active.queue.used_ring(), device);
            assert!(active.queue.ready());
            assert!(active.queue.event_idx());
            assert!(active.queue.indirect());
        }
    }

    #[test]
    fn only_enabled_queues_start_and_event_idx_follows_the_driver() {
        let mut rig = rig();
        assert!(rig.negotiate(VIRTIO_F_VERSION_1));
        rig.setup_queue(1, 128, rings(1), NO_VECTOR);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 1);
        let seen = rig.seen.lock().unwrap();
        let activation = seen.activation.as_ref().unwrap();
        assert_eq!(activation.features, VIRTIO_F_VERSION_1);
        assert_eq!(activation.queues.len(), 1);
        assert_eq!(activation.queues[0].index, 1);
        assert!(!activation.queues[0].queue.event_idx());
        assert!(!activation.queues[0].queue.indirect());
    }

    #[test]
    fn a_running_device_s_queues_are_its_own() {
        let mut rig = rig();
        rig.start(all_features());
        rig.write16(offset::QUEUE_SELECT, 0);
        rig.write16(offset::QUEUE_SIZE, 16);
        rig.write_address(offset::QUEUE_DESC, 0x5_0000);
        assert_eq!(rig.read16(offset::QUEUE_SIZE), 64);
        assert_eq!(rig.read_address(offset::QUEUE_DESC), rings(0)[0]);
        // Setting DRIVER_OK again starts nothing new.
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 1);
    }

    #[test]
    fn a_device_thread_starts_as_the_hooks_say_for_its_type() {
        let mut rig = rig();
        rig.start(all_features());
        let start = rig
            .seen
            .lock()
            .unwrap()
            .activation
            .as_ref()
            .map(|activation| activation.io_thread_start.clone())
            .unwrap();
        assert!(!rig.log.lock().unwrap().contains(&Event::ThreadStart(3)));
        start.run();
        assert!(rig.log.lock().unwrap().contains(&Event::ThreadStart(3)));
    }

    #[test]
    fn a_broken_device_is_named_in_lgs_log() {
        let rig = rig();
        assert_eq!(
            rig.dev.interrupt.broken_message("queue 0: bad"),
            "virtio-console needs a reset: queue 0: bad"
        );
        assert_eq!(device_name(2), "virtio-blk");
        assert_eq!(device_name(42), "virtio device 42");
    }

    #[test]
    fn driver_ok_without_features_ok_starts_nothing_and_needs_a_reset() {
        let mut rig = rig();
        assert!(!rig.negotiate(0));
        rig.setup_queue(0, 64, rings(0), NO_VECTOR);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 0);
        assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        // Skipping FEATURES_OK altogether is the same mistake.
        rig.write8(offset::DEVICE_STATUS, 0);
        rig.add_status(status::ACKNOWLEDGE | status::DRIVER);
        rig.setup_queue(0, 64, rings(0), NO_VECTOR);
        assert_eq!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 0);
        assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        // A reset heals it.
        rig.start(all_features());
        assert_eq!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.activations(), 1);
    }

    /// Sets up queue 0 with its used ring straddling the end of RAM, and
    /// sets DRIVER_OK.
    fn start_with_a_ring_past_ram(rig: &mut Rig, vector: u16) {
        assert!(rig.negotiate(all_features()));
        let [desc, driver, _] = rings(0);
        rig.setup_queue(0, 64, [desc, driver, MIB - 0x100], vector);
        rig.add_status(status::DRIVER_OK);
    }

    #[test]
    fn a_ring_outside_ram_needs_a_reset_and_says_so_through_the_isr() {
        let mut rig = rig();
        start_with_a_ring_past_ram(&mut rig, NO_VECTOR);
        assert_eq!(rig.activations(), 0);
        let status = rig.status();
        assert_ne!(status & status::DEVICE_NEEDS_RESET, 0, "{status:#x}");
        assert_ne!(status & status::DRIVER_OK, 0);
        assert!(rig.pin.level.load(Ordering::Relaxed), "INTx asserted");
        assert_eq!(rig.read8(ISR_OFFSET), ISR_CONFIG);
        assert!(
            !rig.pin.level.load(Ordering::Relaxed),
            "reading the ISR lowers it"
        );
        // A reset clears the condition, and a good configuration then runs.
        rig.start(all_features());
        assert_eq!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.activations(), 1);
    }

    #[test]
    fn a_ring_outside_ram_needs_a_reset_and_says_so_through_msix() {
        let mut rig = rig();
        // virtio_dev_probe negotiates; the driver's find_vqs then enables
        // MSI-X and chooses the config vector before setting up queues.
        assert!(rig.negotiate(all_features()));
        rig.enable_msix(3);
        rig.write16(offset::CONFIG_MSIX_VECTOR, 0);
        assert_eq!(rig.read16(offset::CONFIG_MSIX_VECTOR), 0);
        rig.take_events();
        let [desc, driver, _] = rings(0);
        // Above 4 GiB this time, through the high half.
        rig.setup_queue(0, 64, [desc, driver, 1 << 32], 1);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 0);
        assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.triggers(), vec![0]);
        assert!(!rig.pin.level.load(Ordering::Relaxed), "no INTx with MSI-X");
        assert_eq!(rig.read8(ISR_OFFSET), 0);
    }

    #[test]
    fn msix_vectors_deliver_and_hold_what_arrives_while_masked() {
        let mut rig = rig();
        let cap = rig.msix_cap();
        // msix_capability_init: enable with the function masked...
        rig.config_write(cap + 2, 0xc000, 2);
        assert_eq!(rig.config_read(cap + 2, 2), 0xc002);
        for v in 0..3 {
            rig.program_vector(v, false);
        }
        // ...each entry's message reaches the hypervisor as it is written...
        assert!(rig.events().contains(&Event::SetMessage(
            2,
            Some((u64::from(msi_address(2)), msi_data(2)))
        )));
        // ...then lift the function mask.
        rig.config_write(cap + 2, 0x8000, 2);
        assert_eq!(rig.config_read(cap + 2, 2), 0x8002);
        assert_eq!(rig.read32(MSIX_TABLE_OFFSET + 16 + 8), msi_data(1));

        assert!(rig.negotiate(all_features()));
        rig.write16(offset::CONFIG_MSIX_VECTOR, 0);
        rig.setup_queue(0, 64, rings(0), 1);
        rig.setup_queue(1, 64, rings(1), 2);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 1);
        let interrupt = rig.interrupt();
        rig.take_events();

        interrupt.signal_used(1);
        interrupt.signal_used(0);
        interrupt.signal_config();
        assert_eq!(rig.triggers(), vec![2, 1, 0]);
        assert!(!rig.pin.level.load(Ordering::Relaxed));
        assert_eq!(rig.read8(ISR_OFFSET), 0, "MSI-X leaves the ISR alone");

        // Mask vector 2 (vector control, bit 0): the interrupt waits.
        rig.take_events();
        rig.write32(MSIX_TABLE_OFFSET + 2 * 16 + 12, 1);
        interrupt.signal_used(1);
        assert!(rig.triggers().is_empty());
        assert_eq!(rig.pba(), 1 << 2);
        // Unmasking delivers it and clears its pending bit.
        rig.write32(MSIX_TABLE_OFFSET + 2 * 16 + 12, 0);
        assert_eq!(rig.triggers(), vec![2]);
        assert_eq!(rig.pba(), 0);

        // The function mask holds them all the same way.
        rig.take_events();
        rig.config_write(cap + 2, 0xc000, 2);
        interrupt.signal_used(0);
        interrupt.signal_used(1);
        assert!(rig.triggers().is_empty());
        assert_eq!(rig.pba(), 0b110);
        rig.config_write(cap + 2, 0x8000, 2);
        assert_eq!(rig.triggers(), vec![1, 2]);
        assert_eq!(rig.pba(), 0);

        // A queue with no vector raises nothing at all under MSI-X.
        rig.take_events();
        rig.write16(offset::QUEUE_SELECT, 0);
        rig.write16(offset::QUEUE_MSIX_VECTOR, NO_VECTOR);
        interrupt.signal_used(0);
        assert!(rig.triggers().is_empty());
        assert_eq!(rig.pba(), 0);
        assert!(!rig.pin.level.load(Ordering::Relaxed));
    }

    #[test]
    fn without_msix_the_isr_and_intx_carry_interrupts() {
        let mut rig = rig();
        rig.start(all_features());
        let interrupt = rig.interrupt();
        assert!(!rig.pin.level.load(Ordering::Relaxed));
        interrupt.signal_used(0);
        assert!(rig.pin.level.load(Ordering::Relaxed));
        // vp_interrupt reads the ISR: the reason, once, and the line falls.
        assert_eq!(rig.read8(ISR_OFFSET), ISR_QUEUE);
        assert!(!rig.pin.level.load(Ordering::Relaxed));
        assert_eq!(rig.read8(ISR_OFFSET), 0);
        // Both reasons at once; a 4-byte read carries them in its low byte.
        interrupt.signal_used(1);
        interrupt.signal_config();
        assert_eq!(rig.read32(ISR_OFFSET), u32::from(ISR_QUEUE | ISR_CONFIG));
        assert_eq!(
            *rig.pin.changes.lock().unwrap(),
            [true, false, true, true, false]
        );
        assert!(rig.triggers().is_empty());
    }

    #[test]
    fn vectors_out_of_range_read_back_as_no_vector() {
        let mut rig = rig();
        rig.enable_msix(3);
        for (written, read) in [(0, 0), (2, 2), (3, NO_VECTOR), (0x7fff, NO_VECTOR)] {
            rig.write16(offset::CONFIG_MSIX_VECTOR, written);
            assert_eq!(rig.read16(offset::CONFIG_MSIX_VECTOR), read, "{written}");
            rig.write16(offset::QUEUE_SELECT, 1);
            rig.write16(offset::QUEUE_MSIX_VECTOR, written);
            assert_eq!(rig.read16(offset::QUEUE_MSIX_VECTOR), read, "{written}");
        }
        // A queue that does not exist has no vector, whatever is written.
        rig.write16(offset::QUEUE_SELECT, 5);
        rig.write16(offset::QUEUE_MSIX_VECTOR, 1);
        assert_eq!(rig.read16(offset::QUEUE_MSIX_VECTOR), NO_VECTOR);
    }

    #[test]
    fn reset_stops_the_device_and_forgets_the_driver() {
        let mut rig = rig();
        rig.enable_msix(3);
        assert!(rig.negotiate(all_features()));
        rig.write16(offset::CONFIG_MSIX_VECTOR, 0);
        rig.setup_queue(0, 64, rings(0), 1);
        rig.setup_queue(1, 32, rings(1), 2);
        rig.add_status(status::DRIVER_OK);
        assert_eq!(rig.activations(), 1);

        rig.write8(offset::DEVICE_STATUS, 0);
        assert_eq!(rig.seen.lock().unwrap().resets, 1);
        assert!(rig.seen.lock().unwrap().activation.is_none());
        assert_eq!(rig.status(), 0);
        for q in 0..2u16 {
            rig.write16(offset::QUEUE_SELECT, q);
            assert_eq!(rig.read16(offset::QUEUE_SIZE), QUEUE_MAX[usize::from(q)]);
            assert_eq!(rig.read16(offset::QUEUE_ENABLE), 0);
            assert_eq!(rig.read16(offset::QUEUE_MSIX_VECTOR), NO_VECTOR);
            for field in [
                offset::QUEUE_DESC,
                offset::QUEUE_DRIVER,
                offset::QUEUE_DEVICE,
            ] {
                assert_eq!(rig.read_address(field), 0);
            }
        }
        assert_eq!(rig.read16(offset::CONFIG_MSIX_VECTOR), NO_VECTOR);
        for page in 0..2 {
            rig.write32(offset::DRIVER_FEATURE_SELECT, page);
            assert_eq!(rig.read32(offset::DRIVER_FEATURE), 0);
        }
        // A second reset of a stopped device does not reset it again, and
        // the doorbells stayed where they were.
        rig.write8(offset::DEVICE_STATUS, 0);
        assert_eq!(rig.seen.lock().unwrap().resets, 1);
        assert!(!rig
            .events()
            .iter()
            .any(|e| matches!(e, Event::Unregister(_))));
        // The device starts again from scratch.
        rig.start(all_features());
        assert_eq!(rig.activations(), 2);
    }

    #[test]
    fn every_queue_s_vector_fits_in_the_msix_table() {
        assert!(build(Vec::new(), false).is_err(), "no queues");
        let (mut dev, ..) = build(vec![16; MAX_QUEUES], false).unwrap();
        assert!(build(vec![16; MAX_QUEUES + 1], false).is_err());
        // The last vector's entry is in the table window, where the guest
        // can program it and read it back.
        let last = MAX_QUEUES as u64;
        let entry = MSIX_TABLE_OFFSET + 16 * last;
        assert!(entry + 16 <= MSIX_TABLE_OFFSET + MSIX_TABLE_LEN);
        dev.bar_write(0, entry + 8, &0x4242u32.to_le_bytes());
        let mut data = [0; 4];
        dev.bar_read(0, entry + 8, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x4242);
        // And every queue's doorbell is in the notify area.
        assert!(doorbell_address(0, MAX_QUEUES - 1) + 4 <= NOTIFY_OFFSET + NOTIFY_LEN);
        // The capability says how many vectors there are.
        let cap = dev.msix_cap;
        assert_eq!(
            u64::from(dev.config().read_u16(u16::from(cap) + 2) & 0x7ff),
            last
        );
    }

    /// xorshift64: enough randomness to shake the transport, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut started = 0;
        for round in 0..20 {
            let mut rig = rig_with(round % 5 == 4);
            // Half the rounds begin with a running device, so the guest's
            // noise lands on live queues and vectors too.
            if round % 2 == 0 {
                rig.enable_msix(3);
                rig.start(all_features());
            }
            for _ in 0..2000 {
                let len = [1, 2, 4, 8][rng.below(4) as usize];
                // Mostly the interesting registers, sometimes anywhere.
                let at = match rng.below(8) {
                    0..=3 => rng.below(offset::END + 8),
                    4 => MSIX_TABLE_OFFSET + rng.below(0x40),
                    5 => MSIX_PBA_OFFSET + rng.below(0x10),
                    6 => {
                        [ISR_OFFSET, NOTIFY_OFFSET, DEVICE_CONFIG_OFFSET][rng.below(3) as usize]
                            + rng.below(8)
                    }
                    _ => rng.below(BAR_SIZE),
                };
                // Values a driver would write as often as noise: selectors,
                // enables, vector numbers, aligned ring addresses.
                let value = match rng.below(4) {
                    0 => rng.below(4),
                    1 => rng.below(MIB) & !0xfff,
                    2 => u64::from(NO_VECTOR),
                    _ => rng.next(),
                };
                match rng.below(10) {
                    0..=3 => {
                        let _ = rig.read(at, len);
                    }
                    4..=7 => rig.write(at, len, value),
                    8 => match rng.below(4) {
                        // Whole driver steps, so the noise restarts the
                        // device now and then: a negotiation...
                        0 => {
                            let _ = rig.negotiate(all_features() & rng.next() | VIRTIO_F_VERSION_1);
                        }
                        // ...a queue, sometimes sane...
                        1 => {
                            let q = rng.below(3) as u16;
                            rig.write16(offset::QUEUE_SELECT, q);
                            let size = [0, 1, 3, 64, 128, 1000][rng.below(6) as usize];
                            rig.write16(offset::QUEUE_SIZE, size);
                            for (i, ring) in rings(q).into_iter().enumerate() {
                                let address = if rng.below(4) == 0 { value } else { ring };
                                rig.write_address(offset::QUEUE_DESC + 8 * i as u64, address);
                            }
                            rig.write16(offset::QUEUE_ENABLE, 1);
                        }
                        // ...or a status that moves the state machine along.
                        _ => {
                            let status = [0, 0x0b, 0x0f, 0x8f, value as u8][rng.below(5) as usize];
                            rig.write8(offset::DEVICE_STATUS, status);
                        }
                    },
                    _ => {
                        let at = rng.below(0x100) as u16;
                        let len = [1, 2, 4][rng.below(3) as usize];
                        rig.config_write(at, value as u32, len);
                    }
                }
                if rng.below(50) == 0 {
                    // The device's threads signal at any time.
                    let interrupt = rig
                        .seen
                        .lock()
                        .unwrap()
                        .activation
                        .as_ref()
                        .map(|a| Arc::clone(&a.interrupt));
                    if let Some(interrupt) = interrupt {
                        interrupt.signal_used(rng.below(3) as u16);
                        interrupt.signal_config();
                    }
                }
            }
            // Whatever the guest did, the device is running at most once.
            let seen = rig.seen.lock().unwrap();
            assert!(seen.activations - seen.resets <= 1);
            started += seen.activations;
        }
        // Ten starts were scripted; the noise made the rest.
        assert!(started > 20, "{started} starts");
    }
}
