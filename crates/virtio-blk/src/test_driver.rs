//! For the tests: a guest driver in miniature that lays out a queue in a
//! 1 MiB guest the way Linux's virtio_ring does and puts requests on it, and
//! disk images in the host's temp directory that clean up after themselves.
//!
//! The driver is a trimmed copy of virtqueue's own test driver (which is
//! private to that crate); it computes ring offsets from the spec itself.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use shadow_mmu::{GuestAddress, GuestMemory};
use virtqueue::ring::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue::Queue;

const RAM: u64 = 1 << 20;
pub const DESC_TABLE: u64 = 0x1000;
/// Buffers are handed out from here to the end of RAM.
const DATA: u64 = 0x8_0000;

/// A chain as the driver added it.
pub struct Posted {
    pub head: u16,
    /// Address and length of each writable buffer, in order.
    pub writable: Vec<(u64, u32)>,
}

impl Posted {
    /// The status byte: the last byte of the last writable buffer.
    pub fn status(&self, driver: &GuestDriver) -> u8 {
        let (addr, len) = *self.writable.last().expect("no writable buffer");
        driver.read_bytes(addr + u64::from(len) - 1, 1)[0]
    }

    /// The bytes of the writable buffers, in order, without the status.
    pub fn data(&self, driver: &GuestDriver) -> Vec<u8> {
        let mut data: Vec<u8> = self
            .writable
            .iter()
            .flat_map(|&(addr, len)| driver.read_bytes(addr, len as usize))
            .collect();
        data.pop();
        data
    }
}

pub struct GuestDriver {
    pub mem: Arc<GuestMemory>,
    size: u16,
    pub avail_ring: u64,
    pub used_ring: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    next_data: u64,
}

impl GuestDriver {
    pub fn new(size: u16) -> GuestDriver {
        GuestDriver::with_memory(Arc::new(GuestMemory::new(RAM).unwrap()), size)
    }

    /// A driver laying out its queue in `mem`, which must be at least 1 MiB.
    pub fn with_memory(mem: Arc<GuestMemory>, size: u16) -> GuestDriver {
        let avail_ring = DESC_TABLE + 16 * u64::from(size);
        let used_ring = (avail_ring + 6 + 2 * u64::from(size) + 3) & !3;
        assert!(used_ring + 6 + 8 * u64::from(size) <= DATA);
        GuestDriver {
            mem,
            size,
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
        queue.set_size(self.size);
        queue.set_desc_table(DESC_TABLE);
        queue.set_avail_ring(self.avail_ring);
        queue.set_used_ring(self.used_ring);
        queue.validate(&self.mem).unwrap();
        queue.set_ready(true);
        queue
    }

    fn write_u16(&self, addr: u64, value: u16) {
        self.mem
            .write(GuestAddress(addr), &value.to_le_bytes())
            .unwrap();
    }

    fn read_u32(&self, addr: u64) -> u32 {
        let mut b = [0; 4];
        self.mem.read(GuestAddress(addr), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write(GuestAddress(DESC_TABLE + 16 * u64::from(index)), &bytes)
            .unwrap();
    }

    /// Room for `len` bytes; starts over when RAM runs out, which is fine
    /// while few chains are in flight.
    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len);
        if self.next_data + len > RAM {
            self.next_data = DATA;
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
        let slot = self.avail_idx % self.size;
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_u16(self.avail_ring + 2, self.avail_idx);
        posted
    }

    /// The next used element, `(id, len)`, if the device has added one.
    pub fn take_used(&mut self) -> Option<(u32, u32)> {
        let mut b = [0; 2];
        self.mem
            .read(GuestAddress(self.used_ring + 2), &mut b)
            .unwrap();
        if u16::from_le_bytes(b) == self.last_used {
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

/// A request header: type, reserved, sector.
pub fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut bytes = kind.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&sector.to_le_bytes());
    bytes
}

/// A discard / write-zeroes segment: sector, num_sectors, flags.
pub fn segment(sector: u64, num_sectors: u32, flags: u32) -> Vec<u8> {
    let mut bytes = sector.to_le_bytes().to_vec();
    bytes.extend_from_slice(&num_sectors.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes
}

/// A file in the temp directory, unique to this process and call, removed
/// when dropped.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// A file holding `contents`.
    pub fn new(contents: &[u8]) -> TempFile {
        let file = TempFile::unique();
        fs::write(&file.path, contents).unwrap();
        file
    }

    /// A path nothing exists at yet (still removed when dropped).
    pub fn unique() -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lg-virtio-blk-test-{}-{n}", std::process::id()));
        TempFile { path }
    }

    pub fn contents(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.path);
    }
}
