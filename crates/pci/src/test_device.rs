//! A device for the tests: the shape lg's virtio-pci devices will have (a
//! 64-bit BAR with the MSI-X table and PBA, a 32-bit BAR of plain registers,
//! an I/O BAR, a vendor capability before MSI-X), recording what the guest
//! did to it so tests can check that the bus delivered it.

use crate::{BarKind, ConfigSpace, ConfigWrite, DeviceIds, MsixChange, MsixConfig, PciFunction};

pub struct TestDevice {
    config: ConfigSpace,
    pub msix: MsixConfig,
    pub msix_cap: u8,
    pub scratch: Vec<u8>,
    pub io_writes: Vec<(u64, Vec<u8>)>,
    pub config_writes: Vec<ConfigWrite>,
    /// Vectors whose held message went out after an unmask.
    pub sent: Vec<u16>,
}

impl TestDevice {
    pub const BAR0: u64 = 0xc000_0000;
    pub const BAR2: u64 = 0xc000_4000;
    pub const BAR4: u64 = 0xc040;
    pub const PBA_OFFSET: u64 = 0x2000;
    pub const IDS: DeviceIds = DeviceIds {
        vendor: 0x1af4,
        device: 0x1042,
        class: 0x01,
        subclass: 0x00,
        prog_if: 0x00,
        revision: 0x01,
        subsystem_vendor: 0x1af4,
        subsystem: 0x0002,
    };

    pub fn new() -> TestDevice {
        let mut config = ConfigSpace::new(&Self::IDS);
        config.add_bar(0, 0x4000, BarKind::Memory64, Self::BAR0);
        config.add_bar(2, 0x1000, BarKind::Memory32, Self::BAR2);
        config.add_bar(4, 0x20, BarKind::Io, Self::BAR4);
        config.set_interrupt_pin(1, 0);
        // A vendor capability with one writable byte, like virtio's
        // PCI_CFG window.
        config.add_capability(
            &[0x09, 0, 8, 0, 0xaa, 0xbb, 0, 0],
            &[0, 0, 0, 0, 0, 0, 0xff],
        );
        let msix = MsixConfig::new(4);
        let (body, mask) = msix.capability(0, 0, 0, Self::PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&body, &mask);
        TestDevice {
            config,
            msix,
            msix_cap,
            scratch: vec![0; 0x1000],
            io_writes: Vec::new(),
            config_writes: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn send_pending(&mut self) {
        let ready = self.msix.take_pending_unmasked();
        self.sent.extend(ready);
    }
}

impl PciFunction for TestDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let change = self.config.write(offset, data);
        if change
            == (ConfigWrite::Capability {
                offset: self.msix_cap,
            })
        {
            let control = self.config.read_u16(u16::from(self.msix_cap) + 2);
            if self.msix.set_message_control(control) == MsixChange::ControlChanged {
                self.send_pending();
            }
        }
        self.config_writes.push(change);
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            0 if offset >= Self::PBA_OFFSET => self.msix.read_pba(offset - Self::PBA_OFFSET, data),
            0 => self.msix.read_table(offset, data),
            // No bounds check: the bus promises every access fits in the
            // BAR, and the fuzz tests would panic here if it broke that.
            2 => {
                let start = offset as usize;
                data.copy_from_slice(&self.scratch[start..start + data.len()]);
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            0 if offset < Self::PBA_OFFSET => {
                if let MsixChange::VectorChanged(_) = self.msix.write_table(offset, data) {
                    self.send_pending();
                }
            }
            2 => {
                let start = offset as usize;
                self.scratch[start..start + data.len()].copy_from_slice(data);
            }
            4 => self.io_writes.push((offset, data.to_vec())),
            _ => {}
        }
    }
}
