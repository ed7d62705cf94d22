//! For the tests: where a card's two queues sit in one test guest (driven
//! by virtqueue's test guest driver), a vnet header, a socketpair standing
//! in for the tap, and a bench holding both queues of a card so that the
//! receive and transmit batches can run without a thread, KVM or a tap.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use shadow_mmu::GuestMemory;
use virtqueue::{Queue, QueueError};

use crate::rx::{Rx, RxWait};
use crate::tx::{Tx, TxWait};
use crate::{sys, NetBackend, NetStats, MAX_PACKET_LEN};

pub use virtqueue::test_driver::{GuestDriver, Layout, Posted};

/// The test guest's RAM, shared by both queues.
pub const RAM: u64 = 4 << 20;

pub const RX_LAYOUT: Layout = Layout {
    desc_table: 0x1000,
    data: 0x10_0000..0x20_0000,
};

pub const TX_LAYOUT: Layout = Layout {
    desc_table: 0x1_0000,
    data: 0x20_0000..RAM,
};

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
    let mut fds = [virtio_pci::pollfd(fd.as_raw_fd(), libc::POLLIN)];
    virtio_pci::poll(&mut fds, timeout_ms).unwrap();
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
        let rxd = GuestDriver::in_memory(Arc::clone(&mem), rx_size, RX_LAYOUT);
        let txd = GuestDriver::in_memory(mem, 256, TX_LAYOUT);
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
