//! PCI configuration space as a guest reaches it: the 0xcf8 address port
//! and the 0xcfc data ports at any width, and MMIO and port I/O wherever
//! the guest has moved the BARs, on bus 0 with the host bridge and a
//! virtio device behind lg's real transport. The input is a stream of such
//! accesses. Whatever they are, nothing may panic, and the two functions
//! must still say who they are (vendor and device ids) afterwards.

#![no_main]

use std::sync::{Arc, Mutex};

use lg_fuzz::transport::{device, serve, BAR};
use lg_fuzz::{guest_with, Input};
use libfuzzer_sys::fuzz_target;
use pci::{PciBus, HOST_BRIDGE_VENDOR_ID};
use virtio_pci::BAR_SIZE;

/// The most accesses one input makes.
const MAX_ACCESSES: usize = 1024;

/// The widths a guest uses, and now and then one it cannot.
fn width(input: &mut Input<'_>) -> usize {
    match input.u8() % 8 {
        0 => 1,
        1 => 2,
        2 => 8,
        3 => usize::from(input.u8() % 9),
        _ => 4,
    }
}

/// Reads configuration dword 0 (vendor and device) of `device` on bus 0.
fn ids(bus: &mut PciBus, device: u32) -> u32 {
    bus.port_write(0xcf8, &(0x8000_0000 | device << 11).to_le_bytes());
    let mut ids = [0; 4];
    bus.port_read(0xcfc, &mut ids);
    u32::from_le_bytes(ids)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let refuse_doorbells = input.u8() & 1 != 0;
    let memory = Arc::new(guest_with(&[]));
    let (transport, started) = device(memory, refuse_doorbells);
    let mut bus = PciBus::new();
    bus.add(Arc::new(Mutex::new(transport)))
        .expect("bus 0 has room for one device");
    let before = ids(&mut bus, 1);

    for _ in 0..MAX_ACCESSES {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let op = kind % 8;
        match op {
            0 => bus.port_write(0xcf8, &input.u32().to_le_bytes()),
            1 => {
                let len = width(&mut input);
                let data = input.bytes(len);
                bus.port_write(0xcfc + u16::from(kind >> 3 & 3), data);
            }
            2 => {
                let mut data = vec![0; width(&mut input)];
                bus.port_read(0xcfc + u16::from(kind >> 3 & 3), &mut data);
            }
            3 => {
                // Any port near the configuration ports, at any width.
                let port = 0xcf0 + u16::from(input.u8() % 0x20);
                let len = width(&mut input);
                if kind & 8 != 0 {
                    let data = input.bytes(len);
                    bus.port_write(port, data);
                } else {
                    bus.port_read(port, &mut vec![0; len]);
                }
            }
            4 | 5 => {
                // Mostly inside BAR 0 where lg put it, sometimes anywhere
                // (the guest may have moved it).
                let addr = if kind & 8 == 0 {
                    BAR + u64::from(input.u16()) % BAR_SIZE
                } else {
                    input.u64()
                };
                let len = width(&mut input);
                if op == 4 {
                    let data = input.bytes(len);
                    let _ = bus.mmio_write(addr, data);
                } else {
                    let _ = bus.mmio_read(addr, &mut vec![0; len]);
                }
            }
            6 => {
                let port = input.u16();
                let len = width(&mut input);
                if kind & 8 != 0 {
                    let data = input.bytes(len);
                    let _ = bus.io_write(port, data);
                } else {
                    let _ = bus.io_read(port, &mut vec![0; len]);
                }
            }
            _ => serve(&started),
        }
    }

    let host_bridge = ids(&mut bus, 0);
    assert_eq!(
        host_bridge as u16, HOST_BRIDGE_VENDOR_ID,
        "the host bridge's vendor changed"
    );
    assert_eq!(ids(&mut bus, 1), before, "the virtio device's ids changed");
});
