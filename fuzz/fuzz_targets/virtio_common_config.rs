//! The virtio transport's BAR 0 as a guest writes it: the common
//! configuration (feature negotiation, status, each queue's size, vector
//! and ring addresses, enable), the notify doorbells, the ISR, the device
//! configuration and the MSI-X table, and configuration-space writes
//! (MSI-X enable, BAR moves), in any order, at any width, with the guest's
//! RAM (rings included) written in between and the device serving its
//! queues on each kick. A guest that starts the device has its queues
//! checked at DRIVER_OK; every chain they then give must pass
//! `virtqueue`'s promises.

#![no_main]

use std::sync::Arc;

use lg_fuzz::transport::{device, serve};
use lg_fuzz::{guest_with, Input, RAM};
use libfuzzer_sys::fuzz_target;
use pci::PciFunction;
use shadow_mmu::GuestAddress;
use virtio_pci::BAR_SIZE;

/// The most accesses one input makes.
const MAX_ACCESSES: usize = 1024;

/// An access width from 1 to 8 bytes: the guest's 1, 2, 4, 8 mostly.
fn width(input: &mut Input<'_>) -> usize {
    match input.u8() % 8 {
        0 => 1,
        1 => 2,
        2 => 8,
        3 => 1 + usize::from(input.u8() % 8),
        _ => 4,
    }
}

/// An offset at which `len` bytes lie wholly inside BAR 0, as the bus
/// guarantees.
fn bar_offset(raw: u64, len: usize) -> u64 {
    raw % (BAR_SIZE - len as u64 + 1)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let refuse_doorbells = input.u8() & 1 != 0;
    let image_len = usize::from(input.u16()) % 8192;
    let memory = Arc::new(guest_with(input.bytes(image_len)));
    let (mut transport, started) = device(Arc::clone(&memory), refuse_doorbells);

    for _ in 0..MAX_ACCESSES {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let op = kind % 8;
        match op {
            // The common configuration: the first 0x38 bytes, and a little past.
            0 | 1 => {
                let len = width(&mut input);
                let offset = bar_offset(u64::from(input.u8() % 0x40), len);
                if op == 0 {
                    let data = input.bytes(len);
                    transport.bar_write(0, offset, data);
                } else {
                    transport.bar_read(0, offset, &mut vec![0; len]);
                }
            }
            // Anywhere in BAR 0 (or another BAR, which has nothing).
            2 | 3 => {
                let len = width(&mut input);
                let offset = bar_offset(u64::from(input.u16()), len);
                let bar = if kind & 0x80 != 0 { kind >> 4 & 7 } else { 0 };
                if op == 2 {
                    let data = input.bytes(len);
                    transport.bar_write(bar, offset, data);
                } else {
                    transport.bar_read(bar, offset, &mut vec![0; len]);
                }
            }
            4 | 5 => {
                let len = width(&mut input);
                let offset = u16::from(input.u8());
                if op == 4 {
                    let data = input.bytes(len);
                    transport.config_write(offset, data);
                } else {
                    transport.config_read(offset, &mut vec![0; len]);
                }
            }
            6 => {
                // The guest writes its RAM: a ring entry, a descriptor.
                let addr = u64::from(input.u16()) % RAM;
                let len = usize::from(input.u8() % 32);
                let data = input.bytes(len);
                let _ = memory.write(GuestAddress(addr), data);
            }
            _ => serve(&started),
        }
    }
    drop(transport);
    assert!(
        started.lock().unwrap().is_none(),
        "the device still holds its queues after the transport is gone"
    );
});
