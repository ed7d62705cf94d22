//! A guest driver in miniature, for the tests: it lays out the rings in a
//! 1 MiB guest the way Linux's virtio_ring does, adds chains, publishes
//! them, and reads back the used ring.
//!
//! It computes every offset itself, from the spec's struct layouts, rather
//! than borrowing the crate's `ring::offsets`: a shared mistake would
//! otherwise pass unnoticed.

use shadow_mmu::{GuestAddress, GuestMemory};

use crate::ring::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::Queue;

pub const RAM: u64 = 1 << 20;
/// Where the descriptor table starts; the rings follow it.
const DESC_TABLE: u64 = 0x1000;
/// Buffers are handed out from here to the end of RAM.
const DATA: u64 = 0x8_0000;

/// A chain as the driver added it.
pub struct Posted {
    pub head: u16,
    /// Address of each writable buffer, in order.
    pub writable: Vec<u64>,
}

pub struct GuestDriver {
    pub mem: GuestMemory,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The next descriptor to hand out (in a ring: the tests keep few chains
    /// in flight).
    next_desc: u16,
    /// The driver's own copy of avail.idx.
    avail_idx: u16,
    /// The next used index the driver has not looked at.
    last_used: u16,
    next_data: u64,
}

impl GuestDriver {
    pub fn new(size: u16) -> GuestDriver {
        let desc_table = DESC_TABLE;
        let avail_ring = desc_table + 16 * u64::from(size);
        let used_ring = (avail_ring + 6 + 2 * u64::from(size) + 3) & !3;
        assert!(used_ring + 6 + 8 * u64::from(size) <= DATA);
        GuestDriver {
            mem: GuestMemory::new(RAM).unwrap(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            next_data: DATA,
        }
    }

    /// The device's queue, configured and enabled as the transport would.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(self.size);
        self.configure(&mut queue);
        queue
    }

    pub fn configure(&self, queue: &mut Queue) {
        queue.set_size(self.size);
        queue.set_desc_table(self.desc_table);
        queue.set_avail_ring(self.avail_ring);
        queue.set_used_ring(self.used_ring);
        queue.validate(&self.mem).unwrap();
        queue.set_ready(true);
    }

    fn write_u16(&self, addr: u64, value: u16) {
        self.mem
            .write(GuestAddress(addr), &value.to_le_bytes())
            .unwrap();
    }

    fn read_u16(&self, addr: u64) -> u16 {
        let mut b = [0; 2];
        self.mem.read(GuestAddress(addr), &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    fn read_u32(&self, addr: u64) -> u32 {
        let mut b = [0; 4];
        self.mem.read(GuestAddress(addr), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    /// Writes a descriptor into the table at `table` (the queue's own, or an
    /// indirect one), exactly as the guest would.
    pub fn write_desc_at(
        &self,
        table: u64,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write(GuestAddress(table + 16 * u64::from(index)), &bytes)
            .unwrap();
    }

    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(self.desc_table, index, addr, len, flags, next);
    }

    /// Room for `len` bytes of buffer; starts over when RAM runs out, which
    /// is fine while few chains are in flight.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len);
        if self.next_data + len > RAM {
            self.next_data = DATA;
        }
        let addr = self.next_data;
        self.next_data += len;
        addr
    }

    /// Adds a chain of readable buffers holding `readable` and writable
    /// buffers of `writable` lengths, and publishes it.
    pub fn add_chain(&mut self, readable: &[&[u8]], writable: &[u32]) -> Posted {
        let count = readable.len() + writable.len();
        assert!(count > 0);
        let head = self.next_desc;
        let mut posted = Posted {
            head,
            writable: Vec::new(),
        };
        for i in 0..count {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let (addr, len, mut flags) = if i < readable.len() {
                let data = readable[i];
                let addr = self.alloc(data.len() as u32);
                self.mem.write(GuestAddress(addr), data).unwrap();
                (addr, data.len() as u32, 0)
            } else {
                let len = writable[i - readable.len()];
                let addr = self.alloc(len);
                posted.writable.push(addr);
                (addr, len, VIRTQ_DESC_F_WRITE)
            };
            if i + 1 < count {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(index, addr, len, flags, self.next_desc);
        }
        self.publish(head);
        posted
    }

    /// Puts `head` in the next avail slot and bumps avail.idx.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_u16(self.avail_ring + 2, self.avail_idx);
    }

    /// Overwrites avail.idx, as a buggy or hostile guest might.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write_u16(self.avail_ring + 2, idx);
    }

    pub fn set_avail_flags(&self, flags: u16) {
        self.write_u16(self.avail_ring, flags);
    }

    pub fn set_used_event(&self, idx: u16) {
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(self.size), idx);
    }

    pub fn avail_event(&self) -> u16 {
        self.read_u16(self.used_ring + 4 + 8 * u64::from(self.size))
    }

    pub fn used_flags(&self) -> u16 {
        self.read_u16(self.used_ring)
    }

    pub fn used_idx(&self) -> u16 {
        self.read_u16(self.used_ring + 2)
    }

    /// The next used element, `(id, len)`, if the device has added one.
    pub fn take_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        let elem = self.used_ring + 4 + 8 * u64::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        Some((self.read_u32(elem), self.read_u32(elem + 4)))
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read(GuestAddress(addr), &mut buf).unwrap();
        buf
    }
}
