//! # The bus: how the guest finds devices and reaches their registers
//!
//! Linux on x86 asks for configuration space through mechanism #1: it writes
//! an address (enable bit, bus, device, function, register) to port 0xcf8 as
//! one dword, then reads or writes that register's bytes through 0xcfc to
//! 0xcff. Before trusting the mechanism it checks that the address register
//! reads back what it wrote and that something on bus 0 looks like a host
//! bridge, which is why device 0 is one. lg's bus is bus 0 alone, with up
//! to 32 devices of one function each; every other address reads all ones,
//! which is what "nothing here" looks like on PCI.
//!
//! After enumeration the guest talks to devices through their BARs. The bus
//! keeps a table of the ranges each device currently decodes, refreshed
//! after every configuration write it passes on, so an MMIO exit finds its
//! device without asking all of them.
//!
//! Locking: the bus sits behind the platform's Mutex and each function
//! behind its own, because device I/O threads touch functions too. The bus
//! takes a function's lock only while the bus itself is held, so the order
//! is always bus, then function. A device must never reach for the bus while
//! holding its own lock. [`PciBus::mmio_target`] lets the platform drop the
//! bus lock before the (possibly slow) device access.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hcall_abi::layout::{PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_DATA_PORT};

use crate::config::{
    BarKind, ConfigSpace, DeviceIds, BAR_COUNT, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE,
};
use crate::PciError;

/// Device numbers on a bus: five bits of the configuration address.
pub const MAX_DEVICES: u8 = 32;

/// The host bridge is Intel's vendor id with device 0x0d57, the id crosvm,
/// Cloud Hypervisor and Firecracker give their virtual host bridge. It
/// names no real chipset, so no Linux driver (intel-agp, the EDAC memory
/// controllers) or chipset quirk binds to it, as they would to QEMU's
/// i440FX (8086:1237) or Q35 (8086:29c0); and an Intel vendor id with
/// the host-bridge class passes `pci_sanity_check` on either test.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// See `HOST_BRIDGE_VENDOR_ID`.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

/// CONFIG_ADDRESS bit 31: configuration cycles are on.
const CONFIG_ENABLE: u32 = 1 << 31;
/// The bits of CONFIG_ADDRESS that hold something: enable, AMD's extended
/// register bits 27:24, bus, device, function and register dword. The
/// reserved bits 30:28 and the byte bits 1:0 read as zero.
const CONFIG_ADDRESS_BITS: u32 = 0x8fff_fffc;
/// The last port of the CONFIG_DATA window.
const CONFIG_DATA_LAST_PORT: u16 = PCI_CONFIG_DATA_PORT + 3;

/// What sits at a bus/device/function: configuration space plus BAR access.
/// Devices implement this; the bus calls it with the function's lock held.
pub trait PciFunction: Send {
    fn config(&self) -> &ConfigSpace;

    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// The guest reads configuration space. Devices whose configuration
    /// bytes change behind the guest's back override this.
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// The guest writes configuration space. Devices override this to act
    /// on the `ConfigWrite` (MSI-X enable, a moved BAR, bus mastering).
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let _ = self.config_mut().write(offset, data);
    }

    /// The guest reads `data.len()` bytes at `offset` inside BAR `bar`. The
    /// bus guarantees the access lies wholly inside the BAR.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// The guest writes `data` at `offset` inside BAR `bar`, wholly inside it.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
}

/// Device 0: the host bridge, which does nothing but be found.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl HostBridge {
    pub fn new() -> HostBridge {
        HostBridge {
            config: ConfigSpace::bridge(&DeviceIds {
                vendor: HOST_BRIDGE_VENDOR_ID,
                device: HOST_BRIDGE_DEVICE_ID,
                class: 0,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Which address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Memory,
    Io,
}

/// A range some device answers right now: a BAR with decoding on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    space: Space,
    start: u64,
    size: u64,
    device: u8,
    bar: u8,
}

/// An access the bus has routed to a BAR; see [`PciBus::mmio_target`].
pub struct BarAccess {
    function: SharedFunction,
    bar: u8,
    offset: u64,
    /// False when the access runs past the BAR's end: such an access reads
    /// all ones and writes nothing, so devices never see one.
    fits: bool,
}

impl BarAccess {
    /// Which BAR of the device the access landed in.
    pub fn bar(&self) -> u8 {
        self.bar
    }

    /// The offset inside that BAR.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads through the device, taking its lock.
    pub fn read(&self, data: &mut [u8]) {
        if self.fits {
            lock(&self.function).bar_read(self.bar, self.offset, data);
        } else {
            data.fill(0xff);
        }
    }

    /// Writes through the device, taking its lock.
    pub fn write(&self, data: &[u8]) {
        if self.fits {
            lock(&self.function).bar_write(self.bar, self.offset, data);
        }
    }
}

/// Bus 0: up to 32 devices (function 0 only), the CF8/CFC ports, and MMIO
/// dispatch by the current BAR addresses.
pub struct PciBus {
    /// The last dword written to CONFIG_ADDRESS.
    config_address: u32,
    devices: Vec<Option<SharedFunction>>,
    windows: Vec<Window>,
}

impl Default for PciBus {
    fn default() -> Self {
        PciBus::new()
    }
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0 and nothing else.
    pub fn new() -> PciBus {
        let mut devices = vec![None; usize::from(MAX_DEVICES)];
        devices[0] = Some(Arc::new(Mutex::new(HostBridge::new())) as SharedFunction);
        PciBus {
            config_address: 0,
            devices,
            windows: Vec::new(),
        }
    }

    /// Puts `function` in the next free slot and returns its device number.
    /// Set its configuration space up (BARs, capabilities) before adding:
    /// from here on the bus learns about changes only through the guest's
    /// configuration writes.
    pub fn add(&mut self, function: Arc<Mutex<dyn PciFunction>>) -> Result<u8, PciError> {
        let device = (1..MAX_DEVICES)
            .find(|&device| self.devices[usize::from(device)].is_none())
            .ok_or(PciError::BusFull)?;
        self.refresh_windows(device, lock(&function).config());
        self.devices[usize::from(device)] = Some(function);
        Ok(device)
    }

    /// A read from 0xcf8..0xcff. CONFIG_ADDRESS answers only dword reads at
    /// 0xcf8; CONFIG_DATA answers at 0xcfc + byte offset. Anything else,
    /// and any bus, device or function that is not there, reads all ones.
    pub fn port_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            PCI_CONFIG_ADDRESS_PORT if data.len() == 4 => {
                data.copy_from_slice(&self.config_address.to_le_bytes());
            }
            PCI_CONFIG_DATA_PORT..=CONFIG_DATA_LAST_PORT => {
                if let Some((function, register)) = self.selected(port) {
                    lock(&function).config_read(register, data);
                }
            }
            _ => {}
        }
    }

    /// A write to 0xcf8..0xcff. Only a dword write at 0xcf8 sets
    /// CONFIG_ADDRESS; narrower writes to 0xcf8..0xcfb are dropped (Linux's
    /// type 1 probe makes one to 0xcfb, and a byte at 0xcf9 is the reset
    /// register, which the platform handles before it calls the bus).
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        match port {
            PCI_CONFIG_ADDRESS_PORT => {
                if let Ok(dword) = <[u8; 4]>::try_from(data) {
                    self.config_address = u32::from_le_bytes(dword) & CONFIG_ADDRESS_BITS;
                }
            }
            PCI_CONFIG_DATA_PORT..=CONFIG_DATA_LAST_PORT => {
                if let Some((shared, register)) = self.selected(port) {
                    let device = ((self.config_address >> 11) & 0x1f) as u8;
                    let mut function = lock(&shared);
                    function.config_write(register, data);
                    self.refresh_windows(device, function.config());
                }
            }
            _ => {}
        }
    }

    /// MMIO: finds the device and BAR whose current memory range contains
    /// `addr` (only while that device has memory decoding on) and reads
    /// through it. Returns false if no BAR claims the address.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio_target(addr, data.len())
            .map(|target| target.read(data))
            .is_some()
    }

    /// MMIO: as `mmio_read`, for a write.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.mmio_target(addr, data.len())
            .map(|target| target.write(data))
            .is_some()
    }

    /// Routes an MMIO access of `len` bytes at `addr` without touching the
    /// device, so the caller can release the bus lock before the access.
    pub fn mmio_target(&self, addr: u64, len: usize) -> Option<BarAccess> {
        self.target(Space::Memory, addr, len)
    }

    /// I/O BARs: as `mmio_read`, for a port in a BAR with I/O decoding on.
    pub fn io_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.target(Space::Io, u64::from(port), data.len())
            .map(|target| target.read(data))
            .is_some()
    }

    /// I/O BARs: as `mmio_write`, for a port.
    pub fn io_write(&self, port: u16, data: &[u8]) -> bool {
        self.target(Space::Io, u64::from(port), data.len())
            .map(|target| target.write(data))
            .is_some()
    }

    /// The function and register CONFIG_DATA port `port` reaches now, if
    /// configuration cycles are enabled and something is there.
    fn selected(&self, port: u16) -> Option<(SharedFunction, u16)> {
        let address = self.config_address;
        let bus = (address >> 16) & 0xff;
        let device = (address >> 11) & 0x1f;
        let function = (address >> 8) & 0x7;
        if address & CONFIG_ENABLE == 0 || bus != 0 || function != 0 {
            return None;
        }
        let found = self.devices[device as usize].clone()?;
        // Registers past 255 (AMD's extended bits) stay in the address so
        // that they read as all ones rather than alias low registers.
        let register = ((address >> 16) & 0xf00) | (address & 0xfc);
        Some((found, register as u16 + (port - PCI_CONFIG_DATA_PORT)))
    }

    /// Re-reads which ranges `device` decodes from its configuration space.
    fn refresh_windows(&mut self, device: u8, config: &ConfigSpace) {
        let command = config.command();
        let decoding: Vec<Window> = (0..BAR_COUNT)
            .filter_map(|bar| {
                let (space, enable) = match config.bar_kind(bar)? {
                    BarKind::Io => (Space::Io, COMMAND_IO_SPACE),
                    BarKind::Memory32 | BarKind::Memory64 => (Space::Memory, COMMAND_MEMORY_SPACE),
                };
                (command & enable != 0).then_some(Window {
                    space,
                    start: config.bar_address(bar)?,
                    size: config.bar_size(bar)?,
                    device,
                    bar,
                })
            })
            .collect();
        let before = self.windows.iter().filter(|window| window.device == device);
        if !before.copied().eq(decoding.iter().copied()) {
            for window in &decoding {
                log::debug!(
                    "PCI 00:{device:02x}.0 BAR{} decodes {:?} {:#x}..{:#x}",
                    window.bar,
                    window.space,
                    window.start,
                    window.start.saturating_add(window.size)
                );
            }
            if decoding.is_empty() {
                log::debug!("PCI 00:{device:02x}.0 decodes nothing");
            }
        }
        self.windows.retain(|window| window.device != device);
        self.windows.extend(decoding);
    }

    fn target(&self, space: Space, addr: u64, len: usize) -> Option<BarAccess> {
        // Offsets, not end addresses: a BAR the guest parked at the top of
        // the address space while sizing it must not wrap around.
        let (window, offset) = self.windows.iter().find_map(|window| {
            let offset = addr.checked_sub(window.start)?;
            (window.space == space && offset < window.size).then_some((window, offset))
        })?;
        let function = self.devices[usize::from(window.device)].clone()?;
        Some(BarAccess {
            function,
            bar: window.bar,
            offset,
            fits: len as u64 <= window.size - offset,
        })
    }
}

/// A device thread that panicked leaves its state as it was; the guest
/// keeps running and finds out through the device, as with real hardware.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device::TestDevice;
    use crate::{ConfigWrite, COMMAND_BUS_MASTER};

    /// Linux's `PCI_CONF1_ADDRESS` for bus 0.
    fn conf1_address(device: u8, register: u16) -> u32 {
        0x8000_0000 | u32::from(device) << 11 | u32::from(register & 0xfc)
    }

    /// Linux's `pci_conf1_read`: address dword, then data at cfc + (reg & 3).
    fn conf1_read(bus: &mut PciBus, device: u8, register: u16, len: usize) -> u32 {
        bus.port_write(0xcf8, &conf1_address(device, register).to_le_bytes());
        let port = 0xcfc + (register & 3);
        let mut data = [0; 4];
        bus.port_read(port, &mut data[..len]);
        u32::from_le_bytes(data)
    }

    /// Linux's `pci_conf1_write`.
    fn conf1_write(bus: &mut PciBus, device: u8, register: u16, len: usize, value: u32) {
        bus.port_write(0xcf8, &conf1_address(device, register).to_le_bytes());
        bus.port_write(0xcfc + (register & 3), &value.to_le_bytes()[..len]);
    }

    fn bus_with_test_device() -> (PciBus, Arc<Mutex<TestDevice>>, u8) {
        let mut bus = PciBus::new();
        let device = Arc::new(Mutex::new(TestDevice::new()));
        let number = bus.add(device.clone()).unwrap();
        (bus, device, number)
    }

    #[test]
    fn linux_type_1_probe_finds_mechanism_1() {
        // arch/x86/pci/direct.c, pci_check_type1().
        let mut bus = PciBus::new();
        bus.port_write(0xcfb, &[0x01]);
        let mut saved = [0; 4];
        bus.port_read(0xcf8, &mut saved);
        bus.port_write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut back = [0; 4];
        bus.port_read(0xcf8, &mut back);
        assert_eq!(u32::from_le_bytes(back), 0x8000_0000);
        bus.port_write(0xcf8, &saved);
        bus.port_read(0xcf8, &mut back);
        assert_eq!(back, saved);
    }

    #[test]
    fn linux_sanity_check_finds_a_host_bridge() {
        // pci_sanity_check(): a 2-byte read of PCI_CLASS_DEVICE (0x0a).
        let mut bus = PciBus::new();
        assert_eq!(conf1_read(&mut bus, 0, 0x0a, 2), 0x0600);
        assert_eq!(conf1_read(&mut bus, 0, 0x00, 2), 0x8086);
        assert_eq!(conf1_read(&mut bus, 0, 0x00, 4), 0x0d57_8086);
        // Header type 0 (byte 0x0e), read as Linux reads it: one byte.
        assert_eq!(conf1_read(&mut bus, 0, 0x0e, 1), 0);
    }

    #[test]
    fn empty_slots_and_other_buses_and_functions_read_all_ones() {
        let (mut bus, _, number) = bus_with_test_device();
        for device in (number + 1)..MAX_DEVICES {
            assert_eq!(
                conf1_read(&mut bus, device, 0, 2),
                0xffff,
                "00:{device:02x}.0"
            );
            assert_eq!(conf1_read(&mut bus, device, 0, 4), 0xffff_ffff);
        }
        // Function 1 of a present device, bus 1, and the enable bit clear.
        for address in [
            conf1_address(number, 0) | 1 << 8,
            conf1_address(0, 0) | 1 << 16,
            0,
        ] {
            bus.port_write(0xcf8, &address.to_le_bytes());
            let mut data = [0; 4];
            bus.port_read(0xcfc, &mut data);
            assert_eq!(data, [0xff; 4], "{address:#x}");
        }
        // Writes there go nowhere (and do not panic).
        bus.port_write(0xcfc, &[0; 4]);
    }

    #[test]
    fn config_data_takes_byte_and_word_offsets() {
        let (mut bus, _, number) = bus_with_test_device();
        assert_eq!(conf1_read(&mut bus, number, 0x00, 4), 0x1042_1af4);
        assert_eq!(conf1_read(&mut bus, number, 0x02, 2), 0x1042);
        assert_eq!(conf1_read(&mut bus, number, 0x03, 1), 0x10);
        assert_eq!(conf1_read(&mut bus, number, 0x0b, 1), 0x01);
        conf1_write(&mut bus, number, 0x3c, 1, 0x0b);
        assert_eq!(conf1_read(&mut bus, number, 0x3c, 2), 0x010b);
        conf1_write(&mut bus, number, 0x04, 2, u32::from(COMMAND_BUS_MASTER));
        assert_eq!(conf1_read(&mut bus, number, 0x04, 2), 0x0004);
    }

    #[test]
    fn narrow_accesses_to_config_address_are_ignored() {
        let mut bus = PciBus::new();
        bus.port_write(0xcf8, &conf1_address(0, 8).to_le_bytes());
        bus.port_write(0xcf8, &[0]);
        bus.port_write(0xcf9, &[0x06]);
        bus.port_write(0xcfa, &[0, 0]);
        let mut byte = [0];
        bus.port_read(0xcf9, &mut byte);
        assert_eq!(byte, [0xff]);
        let mut address = [0; 4];
        bus.port_read(0xcf8, &mut address);
        assert_eq!(u32::from_le_bytes(address), conf1_address(0, 8));
        // Reserved bits and the byte bits do not stick.
        bus.port_write(0xcf8, &0xffff_ffffu32.to_le_bytes());
        bus.port_read(0xcf8, &mut address);
        assert_eq!(u32::from_le_bytes(address), 0x8fff_fffc);
    }

    #[test]
    fn linux_sizes_bars_through_the_ports() {
        let (mut bus, device, number) = bus_with_test_device();
        let expected = [
            (0x10, 0xffff_c004), // BAR0: 16 KiB, 64-bit memory
            (0x14, 0xffff_ffff), // its upper half
            (0x18, 0xffff_f000), // BAR2: 4 KiB, 32-bit memory
            (0x1c, 0),           // unused
            (0x20, 0xffff_ffe1), // BAR4: 32 ports of I/O
            (0x24, 0),           // unused
            (0x30, 0),           // no expansion ROM
        ];
        for (register, size_mask) in expected {
            let saved = conf1_read(&mut bus, number, register, 4);
            conf1_write(&mut bus, number, register, 4, !0);
            assert_eq!(
                conf1_read(&mut bus, number, register, 4),
                size_mask,
                "{register:#x}"
            );
            conf1_write(&mut bus, number, register, 4, saved);
            assert_eq!(conf1_read(&mut bus, number, register, 4), saved);
        }
        let device = device.lock().unwrap();
        assert_eq!(device.config().bar_address(0), Some(TestDevice::BAR0));
        // Each sizing write moved a BAR and the device heard of it.
        assert!(device
            .config_writes
            .iter()
            .any(|write| matches!(write, ConfigWrite::BarMoved { index: 4, .. })));
    }

    #[test]
    fn mmio_reaches_a_bar_only_while_memory_decoding_is_on() {
        let (mut bus, device, number) = bus_with_test_device();
        let scratch = TestDevice::BAR2;
        assert!(!bus.mmio_write(scratch + 8, &[1, 2, 3, 4]));
        conf1_write(&mut bus, number, 0x04, 2, u32::from(COMMAND_MEMORY_SPACE));
        assert!(bus.mmio_write(scratch + 8, &[1, 2, 3, 4]));
        let mut data = [0; 4];
        assert!(bus.mmio_read(scratch + 8, &mut data));
        assert_eq!(data, [1, 2, 3, 4]);
        assert_eq!(device.lock().unwrap().scratch[8..12], [1, 2, 3, 4]);
        // Outside every BAR, and inside BAR2 but not its I/O neighbour.
        assert!(!bus.mmio_read(scratch + 0x1000, &mut data));
        assert!(!bus.io_read(TestDevice::BAR4 as u16, &mut data));
        // An access running past the BAR's end is claimed but goes nowhere.
        let mut data = [0; 8];
        assert!(bus.mmio_read(scratch + 0xffc, &mut data));
        assert_eq!(data, [0xff; 8]);
        // Decoding off again: nothing answers.
        conf1_write(&mut bus, number, 0x04, 2, 0);
        assert!(!bus.mmio_read(scratch, &mut data));
    }

    #[test]
    fn mmio_follows_a_bar_the_guest_moved() {
        let (mut bus, device, number) = bus_with_test_device();
        conf1_write(&mut bus, number, 0x04, 2, u32::from(COMMAND_MEMORY_SPACE));
        // BAR0 is 64-bit; move it with the low dword, then above 4 GiB.
        conf1_write(&mut bus, number, 0x10, 4, 0xd000_0000);
        let mut data = [0; 4];
        assert!(!bus.mmio_read(TestDevice::BAR0, &mut data));
        assert!(bus.mmio_read(0xd000_0000 + 12, &mut data));
        // Vector 0's control: masked from reset.
        assert_eq!(data, [1, 0, 0, 0]);
        conf1_write(&mut bus, number, 0x14, 4, 0x1);
        assert!(!bus.mmio_read(0xd000_0000, &mut data));
        assert!(bus.mmio_read(0x1_d000_0000, &mut data));
        let target = bus.mmio_target(0x1_d000_0010, 4).unwrap();
        assert_eq!((target.bar(), target.offset()), (0, 0x10));
        drop(device);
    }

    #[test]
    fn io_bars_decode_ports_while_io_decoding_is_on() {
        let (mut bus, device, number) = bus_with_test_device();
        let port = TestDevice::BAR4 as u16;
        assert!(!bus.io_write(port + 2, &[0x5a]));
        conf1_write(&mut bus, number, 0x04, 2, u32::from(COMMAND_IO_SPACE));
        assert!(bus.io_write(port + 2, &[0x5a]));
        assert_eq!(device.lock().unwrap().io_writes, vec![(2, vec![0x5a])]);
        assert!(!bus.mmio_read(TestDevice::BAR2, &mut [0; 4]));
    }

    #[test]
    fn msix_through_config_space_and_the_table_bar() {
        let (mut bus, device, number) = bus_with_test_device();
        let cap = u16::from(device.lock().unwrap().msix_cap);
        // Walk to the MSI-X capability as Linux does.
        assert_ne!(conf1_read(&mut bus, number, 0x06, 2) & 0x10, 0);
        let mut at = conf1_read(&mut bus, number, 0x34, 1) as u16;
        while conf1_read(&mut bus, number, at, 1) != 0x11 {
            at = conf1_read(&mut bus, number, at + 1, 1) as u16;
            assert_ne!(at, 0, "no MSI-X capability");
        }
        assert_eq!(at, cap);
        // msix_capability_init(): enable with the function masked,
        // program entry 1, unmask the function.
        let control = conf1_read(&mut bus, number, cap + 2, 2);
        assert_eq!(control & 0x7ff, 3, "four vectors");
        conf1_write(&mut bus, number, cap + 2, 2, control | 0xc000);
        assert!(device.lock().unwrap().msix.enabled());
        conf1_write(&mut bus, number, 0x04, 2, u32::from(COMMAND_MEMORY_SPACE));
        let entry = TestDevice::BAR0 + 16;
        assert!(bus.mmio_write(entry, &0xfee0_0000u32.to_le_bytes()));
        assert!(bus.mmio_write(entry + 8, &0x41u32.to_le_bytes()));
        assert!(bus.mmio_write(entry + 12, &0u32.to_le_bytes()));
        assert!(!device.lock().unwrap().msix.should_deliver(1));
        conf1_write(&mut bus, number, cap + 2, 2, control | 0x8000);
        let device = device.lock().unwrap();
        assert!(!device.msix.function_masked());
        assert_eq!(device.sent, vec![1], "the held message went out on unmask");
    }

    #[test]
    fn the_bus_fills_up() {
        let mut bus = PciBus::new();
        for expected in 1..MAX_DEVICES {
            let number = bus.add(Arc::new(Mutex::new(TestDevice::new()))).unwrap();
            assert_eq!(number, expected);
        }
        assert_eq!(
            bus.add(Arc::new(Mutex::new(TestDevice::new()))),
            Err(PciError::BusFull)
        );
    }
}
