//! For the tests: a guest driver in miniature that lays out a queue in
//! guest RAM the way Linux's virtio_ring does and puts chains on it, a
//! socketpair standing in for the tap, and a bench holding both queues of
//! a card so that the receive and transmit batches can run without a
//! thread, KVM or a tap.
//!
//! The driver is a trimmed copy of virtio-blk's (itself a copy of
//! virtqueue's private one), placed wherever a test says so that two
//! queues can share one guest.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use shadow_mmu::{GuestAddress, GuestMemory};
use virtqueue::ring::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue::{Queue, QueueError};

use crate::rx::{Rx, RxWait};
use crate::tx::{Tx, TxWait};
use crate::{sys, NetBackend, NetStats, MAX_PACKET_LEN};

/// The test guest's RAM.
pub const RAM: u64 = 4 << 20;

/// Where one queue lives in the test guest: its descriptor table (the
/// rings follow it) and the span its buffers are allocated from.
#[derive(Clone, Copy)]
pub struct Layout {
    pub desc_table: u64,
    pub data: (u64, u64),
}

pub const RX_LAYOUT: Layout = Layout {
    desc_table: 0x1000,
    data: (0x10_0000, 0x20_0000),
};

pub const TX_LAYOUT: Layout = Layout {
    desc_table: 0x1_0000,
    data: (0x20_0000, RAM),
};

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
    size: u16,
    layout: Layout,
    pub avail_ring: u64,
    pub used_ring: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    next_data: u64,
    /// Each head's writable buffers, as last posted.
    writable: HashMap<u16, Vec<(u64, u32)>>,
}

impl GuestDriver {
    pub fn new(mem: Arc<GuestMemory>, size: u16, layout: Layout) -> GuestDriver {
        let avail_ring = layout.desc_table + 16 * u64::from(size);
        let used_ring = (avail_ring + 6 + 2 * u64::from(size) + 3) & !3;
        GuestDriver {
            mem,
            size,
            layout,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            next_data: layout.data.0,
            writable: HashMap::new(),
        }
    }

    pub fn desc_table(&self) -> u64 {
        self.layout.desc_table
    }

    /// The device's queue, configured and enabled as the transport would.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(self.size);
        queue.set_size(self.size);
        queue.set_desc_table(self.layout.desc_table);
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
        let at = self.layout.desc_table + 16 * u64::from(index);
        self.mem.write(GuestAddress(at), &bytes).unwrap();
    }

    /// Room for `len` bytes; starts over when the span runs out, which is
    /// fine while few chains are in flight.
    fn alloc(&mut self, len: usize) -> u64 {
        let len = len as u64;
        if self.next_data + len > self.layout.data.1 {
            self.next_data = self.layout.data.0;
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
                let addr = self.alloc(data.len());
                self.mem.write(GuestAddress(addr), data).unwrap();
                (addr, data.len() as u32, 0)
            } else {
                let len = writable[i - readable.len()];
                let addr = self.alloc(len as usize);
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
        let slot = self.avail_idx % self.size;
        self.write_u16(self.avail_ring + 4 + 2 * u64::from(slot), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_u16(self.avail_ring + 2, self.avail_idx);
        posted
    }

    /// Makes descriptor `index` point just past the end of RAM, as a
    /// hostile or buggy guest might.
    pub fn point_outside_ram(&self, index: u16) {
        let at = self.layout.desc_table + 16 * u64::from(index);
        self.mem
            .write(GuestAddress(at), &RAM.to_le_bytes())
            .unwrap();
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

    /// The first `len` bytes of the writable buffers last posted at `head`.
    pub fn buffer(&self, head: u16, len: usize) -> Vec<u8> {
        self.gather(&self.writable[&head], len)
    }

    fn gather(&self, buffers: &[(u64, u32)], len: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(addr, buf_len) in buffers {
            let n = (len - bytes.len()).min(buf_len as usize);
            let mut chunk = vec![0; n];
            self.mem.read(GuestAddress(addr), &mut chunk).unwrap();
            bytes.extend(chunk);
        }
        assert_eq!(bytes.len(), len, "the buffers hold fewer than {len} bytes");
        bytes
    }
}

/// A `struct virtio_net_hdr_v1` with num_buffers 0.
pub fn vnet_header(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// Two connected, non-blocking packet sockets: one packet per read and
/// write, as a tap gives.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints, which is what
    // socketpair fills in.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair succeeded, so both are fresh descriptors that
    // nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The device's end of a socketpair, recording the offloads it is given.
pub struct PairBackend {
    fd: OwnedFd,
    pub offloads: Mutex<Vec<u32>>,
}

impl PairBackend {
    /// The backend and the host's end of the pair.
    pub fn new() -> (PairBackend, OwnedFd) {
        let (device, host) = socketpair();
        let backend = PairBackend {
            fd: device,
            offloads: Mutex::new(Vec::new()),
        };
        (backend, host)
    }
}

impl NetBackend for PairBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn set_offloads(&self, tun_flags: u32) -> std::io::Result<()> {
        self.offloads.lock().unwrap().push(tun_flags);
        Ok(())
    }
}

/// Reads one packet from the host's end, if one is there.
pub fn recv(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut buf = vec![0; MAX_PACKET_LEN + 1];
    match sys::read_packet(fd, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("reading the host end: {e}"),
    }
}

/// Whether `fd` has something to read.
pub fn readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut fds = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    sys::poll(&mut fds, timeout_ms).unwrap();
    fds[0].revents & libc::POLLIN != 0
}

/// A card's two queues and its two batch engines, in one test guest, with
/// the host's end of the pair to send and receive on.
pub struct Bench {
    pub rxd: GuestDriver,
    pub txd: GuestDriver,
    rx_queue: Queue,
    tx_queue: Queue,
    rx: Rx,
    tx: Tx,
    device: OwnedFd,
    host: Option<OwnedFd>,
    pub stats: NetStats,
}

impl Bench {
    pub fn new(mergeable: bool) -> Bench {
        Bench::with_rx_size(mergeable, 256)
    }

    pub fn with_rx_size(mergeable: bool, rx_size: u16) -> Bench {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        let rxd = GuestDriver::new(Arc::clone(&mem), rx_size, RX_LAYOUT);
        let txd = GuestDriver::new(mem, 256, TX_LAYOUT);
        let (device, host) = socketpair();
        Bench {
            rx_queue: rxd.queue(),
            tx_queue: txd.queue(),
            rxd,
            txd,
            rx: Rx::new(mergeable),
            tx: Tx::new(),
            device,
            host: Some(host),
            stats: NetStats::default(),
        }
    }

    /// One receive batch.
    pub fn rx(&mut self) -> Result<(bool, RxWait), QueueError> {
        self.rx.process(
            &mut self.rx_queue,
            &self.rxd.mem,
            self.device.as_fd(),
            &self.stats,
        )
    }

    /// One transmit batch.
    pub fn tx(&mut self) -> Result<(bool, TxWait), QueueError> {
        self.tx.process(
            &mut self.tx_queue,
            &self.txd.mem,
            self.device.as_fd(),
            &self.stats,
        )
    }

    pub fn device_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// Whether a packet waits, unread, at the device's end.
    pub fn device_readable(&self) -> bool {
        readable(self.device.as_fd(), 0)
    }

    fn host(&self) -> BorrowedFd<'_> {
        self.host.as_ref().expect("the host end is closed").as_fd()
    }

    /// Sends `packet` from the host to the device's end.
    pub fn host_send(&self, packet: &[u8]) {
        assert_eq!(
            sys::write_packet(self.host(), packet).unwrap(),
            packet.len()
        );
    }

    /// The next packet the device sent to the host, if any.
    pub fn host_recv(&self) -> Option<Vec<u8>> {
        recv(self.host())
    }

    /// Closes the host's end, as a tap whose interface went away.
    pub fn close_host(&mut self) {
        self.host = None;
    }
}
