//! Everything in this crate is driven by the guest, and a guest may be
//! buggy or hostile: any width, any alignment, any value, any order. These
//! tests throw thousands of random accesses at configuration space, the
//! MSI-X table and the 0xcf8/0xcfc ports, and check that nothing panics and
//! that what must never change (who the device says it is) has not.

use std::sync::{Arc, Mutex};

use crate::test_device::TestDevice;
use crate::{MsixConfig, PciBus, PciFunction, HOST_BRIDGE_VENDOR_ID};

const ROUNDS: usize = 20_000;

/// xorshift64*: deterministic, so a failure replays, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The identity header: vendor, device, revision, class, header type.
fn identity(function: &dyn PciFunction) -> [u8; 16] {
    let mut header = [0; 16];
    function.config().read(0, &mut header);
    header[4..8].fill(0); // command and status may change
    header[0x0c] = 0; // cache line size: read-only today, but not identity
    header
}

#[test]
fn random_config_accesses_keep_the_identity() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut device = TestDevice::new();
    let before = identity(&device);
    let capability_pointer = device.config().read_u16(0x34);
    let sizes: Vec<_> = (0..6).map(|bar| device.config().bar_size(bar)).collect();
    for _ in 0..ROUNDS {
        // Mostly inside the 256 bytes, sometimes past them or far away.
        let offset = match rng.below(10) {
            0 => rng.next() as u16,
            _ => rng.below(0x110) as u16,
        };
        let len = 1 + rng.below(8) as usize;
        if rng.below(2) == 0 {
            let data = rng.bytes(len);
            device.config_write(offset, &data);
        } else {
            let mut data = vec![0; len];
            device.config_read(offset, &mut data);
        }
    }
    assert_eq!(identity(&device), before);
    assert_eq!(device.config().read_u16(0x34), capability_pointer);
    let sizes_after: Vec<_> = (0..6).map(|bar| device.config().bar_size(bar)).collect();
    assert_eq!(sizes_after, sizes);
    assert_eq!(device.config().read_u16(0x00), TestDevice::IDS.vendor);
}

#[test]
fn random_msix_table_accesses_keep_the_rules() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut msix = MsixConfig::new(7);
    for _ in 0..ROUNDS {
        let offset = match rng.below(10) {
            0 => rng.next(),
            _ => rng.below(0x80),
        };
        let len = match rng.below(4) {
            0 => rng.below(10) as usize,
            1 => 8,
            _ => 4,
        };
        match rng.below(6) {
            0 => {
                let _ = msix.write_table(offset, &rng.bytes(len));
            }
            1 => msix.read_table(offset, &mut vec![0; len]),
            2 => msix.read_pba(offset, &mut vec![0; len]),
            3 => {
                let _ = msix.set_message_control(rng.next() as u16);
            }
            4 => {
                let vector = rng.below(9) as u16;
                let deliver = msix.should_deliver(vector);
                if deliver {
                    assert!(msix.enabled() && !msix.function_masked());
                    assert!(!msix.vector(vector).unwrap().masked);
                }
            }
            _ => {
                for vector in msix.take_pending_unmasked() {
                    assert!(msix.enabled() && !msix.function_masked());
                    assert!(!msix.vector(vector).unwrap().masked);
                }
            }
        }
        assert_eq!(msix.vector_count(), 7);
        // Pending bits exist only for the seven vectors.
        let mut pba = [0; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba) & !0x7f, 0);
    }
}

#[test]
fn random_port_and_mmio_accesses_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut bus = PciBus::new();
    let devices: Vec<_> = (0..2)
        .map(|_| {
            let device = Arc::new(Mutex::new(TestDevice::new()));
            bus.add(device.clone()).unwrap();
            device
        })
        .collect();
    for _ in 0..ROUNDS {
        let port = match rng.below(20) {
            0 => 0xcf0 + rng.below(0x20) as u16,
            1..=6 => 0xcf8,
            _ => 0xcfc + rng.below(4) as u16,
        };
        let len = match rng.below(8) {
            0 => rng.below(9) as usize,
            1 => 1,
            2 | 3 => 2,
            _ => 4,
        };
        if port == 0xcf8 && len == 4 && rng.below(4) != 0 {
            // A plausible address: enabled, bus 0, one of the first four
            // devices, any register; otherwise fully random bits.
            let address =
                0x8000_0000 | (rng.below(4) as u32) << 11 | (rng.next() as u32 & 0x0f00_07fc);
            bus.port_write(port, &address.to_le_bytes());
        } else if rng.below(2) == 0 {
            bus.port_write(port, &rng.bytes(len));
        } else {
            bus.port_read(port, &mut vec![0; len]);
        }
        // Now and then, MMIO and I/O around wherever the BARs are now.
        if rng.below(4) == 0 {
            let base = match rng.below(4) {
                0 => TestDevice::BAR0,
                1 => TestDevice::BAR2,
                2 => rng.next(),
                _ => u64::from(rng.next() as u32),
            };
            let addr = base.wrapping_add(rng.below(0x5000)).wrapping_sub(0x800);
            let len = 1 + rng.below(8) as usize;
            match rng.below(4) {
                0 => drop(bus.mmio_write(addr, &rng.bytes(len))),
                1 => drop(bus.mmio_read(addr, &mut vec![0; len])),
                2 => drop(bus.io_write(addr as u16, &rng.bytes(len))),
                _ => drop(bus.io_read(addr as u16, &mut vec![0; len])),
            }
        }
    }
    // Whatever happened, the host bridge and the devices are who they were.
    let mut vendor = [0; 2];
    bus.port_write(0xcf8, &0x8000_0000u32.to_le_bytes());
    bus.port_read(0xcfc, &mut vendor);
    assert_eq!(u16::from_le_bytes(vendor), HOST_BRIDGE_VENDOR_ID);
    for (number, device) in (1u32..).zip(&devices) {
        bus.port_write(0xcf8, &(0x8000_0000 | number << 11).to_le_bytes());
        bus.port_read(0xcfc, &mut vendor);
        assert_eq!(u16::from_le_bytes(vendor), TestDevice::IDS.vendor);
        assert_eq!(
            identity(&*device.lock().unwrap()),
            identity(&TestDevice::new())
        );
    }
}
