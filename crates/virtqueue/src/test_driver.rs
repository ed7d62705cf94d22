//! A guest driver in miniature, for the tests of this crate and of the
//! devices built on it (`test-util` feature): it lays out the rings in guest
//! RAM the way Linux's virtio_ring does, adds chains, publishes them, and
//! reads back the used ring and the buffers the device wrote.
//!
//! It computes every offset itself, from the spec's struct layouts, rather
//! than borrowing the crate's `ring::offsets`: a shared mistake would
//! otherwise pass unnoticed.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use shadow_mmu::{GuestAddress, GuestMemory};

use crate::ring::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::Queue;

/// The RAM of the guest [`GuestDriver::new`] makes.
pub const RAM: u64 = 1 << 20;

/// Where one queue lives in the test guest: its descriptor table (the rings
/// follow it) and the span its buffers are allocated from. Two queues given
/// disjoint layouts can share one guest.
#[derive(Clone, Debug)]
pub struct Layout {
    pub desc_table: u64,
    pub data: Range<u64>,
}

impl Layout {
    /// The one queue of a [`RAM`]-sized guest, its buffers in the upper half.
    pub const ONLY_QUEUE: Layout = Layout {
        desc_table: 0x1000,
        data: 0x8_0000..RAM,
    };
}

/// A chain as the driver added it.
pub struct Posted {
    pub head: u16,
    /// Address and length of each writable buffer, in order.
    pub writable: Vec<(u64, u32)>,
}

impl Posted {
    /// The first `len` bytes of the writable buffers.
    pub fn contents(&self, driver: &GuestDriver, len: usize) -> Vec<u8> {
        driver.gather(&self.writable, len)
    }
}

pub struct GuestDriver {
    pub mem: Arc<GuestMemory>,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    data: Range<u64>,
    /// The next descriptor to hand out (in a ring: the tests keep few chains
    /// in flight).
    next_desc: u16,
    /// The driver's own copy of avail.idx.
    avail_idx: u16,
    /// The next used index the driver has not looked at.
    last_used: u16,
    next_data: u64,
    /// Each head's writable buffers, as last posted: the used ring names a
    /// chain only by its head.
    writable: HashMap<u16, Vec<(u64, u32)>>,
}

impl GuestDriver {
    /// A driver alone in a guest of its own, [`RAM`] bytes.
    pub fn new(size: u16) -> GuestDriver {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        GuestDriver::in_memory(mem, size, Layout::ONLY_QUEUE)
    }

    /// A driver laying out its queue in `mem` as `layout` says, so that a
    /// device or a second queue can share the guest.
    pub fn in_memory(mem: Arc<GuestMemory>, size: u16, layout: Layout) -> GuestDriver {
        let avail_ring = layout.desc_table + 16 * u64::from(size);
        let used_ring = (avail_ring + 6 + 2 * u64::from(size) + 3) & !3;
        assert!(used_ring + 6 + 8 * u64::from(size) <= layout.data.start);
        GuestDriver {
            mem,
            size,
            desc_table: layout.desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            next_data: layout.data.start,
            data: layout.data,
            writable: HashMap::new(),
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

    /// Makes descriptor `index` point just past the end of RAM, as a hostile
    /// or buggy guest might.
    pub fn point_outside_ram(&self, index: u16) {
        let at = self.desc_table + 16 * u64::from(index);
        self.mem
            .write(GuestAddress(at), &self.mem.end().0.to_le_bytes())
            .unwrap();
    }

    /// Room for `len` bytes of buffer; starts over when the span runs out,
    /// which is fine while few chains are in flight.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len);
        if self.next_data + len > self.data.end {
            self.next_data = self.data.start;
        }
        let addr = self.next_data;
        self.next_data += len;
        addr
    }

    /// Adds a chain of readable buffers holding `readable` and writable
    /// buffers of `writable` lengths (filled with 0xee, so that what the
    /// device leaves alone shows), and publishes it.
    pub fn add_chain(&mut self, readable: &[&[u8]], writable: &[u32]) -> Posted {
        let count = readable.len() + writable.len();
        assert!(count > 0 && count <= usize::from(self.size));
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
                self.mem
                    .write(GuestAddress(addr), &vec![0xee; len as usize])
                    .unwrap();
                posted.writable.push((addr, len));
                (addr, len, VIRTQ_DESC_F_WRITE)
            };
            if i + 1 < count {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(index, addr, len, flags, self.next_desc);
        }
        self.writable.insert(head, posted.writable.clone());
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

    /// The first `len` bytes of the writable buffers last posted at `head`.
    pub fn buffer(&self, head: u16, len: usize) -> Vec<u8> {
        self.gather(&self.writable[&head], len)
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read(GuestAddress(addr), &mut buf).unwrap();
        buf
    }

    fn gather(&self, buffers: &[(u64, u32)], len: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(addr, buf_len) in buffers {
            let n = (len - bytes.len()).min(buf_len as usize);
            bytes.extend(self.read_bytes(addr, n));
        }
        assert_eq!(bytes.len(), len, "the buffers hold fewer than {len} bytes");
        bytes
    }
}
