//! # virtio-net: the guest's `eth0`
//!
//! lguest's `--tunnet` gave the guest a network card whose other end was a
//! tap device on the host, so that `ssh`, `scp` and a package mirror just
//! work. lg does the same with the virtio network device (virtio 1.2 §5.1):
//! one receive queue the guest fills with empty buffers, one transmit queue
//! it puts outgoing frames on.
//!
//! The tap is opened by lg's front end with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` and a 12-byte vnet header, so every packet read from or
//! written to it starts with `struct virtio_net_hdr_v1`: exactly the header
//! a virtio 1.x driver puts in front of every frame. lg therefore never
//! parses or builds a header. Transmitting is copying the guest's header and
//! frame to the tap in one `write`; receiving is one `read` into a host
//! buffer and a copy into the guest's buffers, with `num_buffers` filled in.
//! Checksum and segmentation offloads pass through the header untouched, and
//! the tap is told (`TUNSETOFFLOAD`, through [`NetBackend::set_offloads`])
//! which of them the guest accepted, so that a TCP stream arrives as 64 KiB
//! segments rather than 1500-byte frames.
//!
//! Reading order:
//! - this file: [`NetBackend`], the small trait the tap sits behind (tests
//!   put a socketpair there), and [`NetStats`], the counters `lg stat` shows.
//! - `device.rs`: [`VirtioNet`], what the transport sees: features, the
//!   configuration space (MAC, link status, MTU), activation and reset.
//! - `tx.rs` and `rx.rs`: one batch of each direction, the only code that
//!   handles the guest's chains and the tap's packets.
//! - `worker.rs`: the thread that waits for the guest and the tap and runs
//!   those batches.
//! - `sys.rs`: the few system calls on the tap's descriptor.

mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod rx;
mod sys;
mod tx;
mod worker;

#[cfg(test)]
mod test_driver;

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{tun_offloads, VirtioNet};

/// The length of `struct virtio_net_hdr_v1`, in front of every packet both
/// ways: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers. A virtio 1.x device always has `num_buffers`, with or
/// without VIRTIO_NET_F_MRG_RXBUF (§5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// The largest frame lg moves: a 64 KiB GSO segment with its Ethernet and
/// VLAN headers, as QEMU and cloud-hypervisor size it.
pub const MAX_FRAME_LEN: usize = 65550;

/// The largest packet, header included, that goes to or comes from the tap.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// The host end of the network: a tap (or, in tests, a socketpair).
pub trait NetBackend: Send + Sync + 'static {
    /// The fd packets are read from and written to, one packet per read or
    /// write, each with the 12-byte header. Non-blocking.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Tells the host side which offloads the guest can receive (libc's
    /// `TUN_F_CSUM`, `TUN_F_TSO4`, `TUN_F_TSO6`, `TUN_F_TSO_ECN`,
    /// `TUN_F_UFO`), derived from the negotiated `GUEST_*` features; 0 turns
    /// them all off.
    fn set_offloads(&self, tun_flags: u32) -> std::io::Result<()>;
}

/// What the card has moved and dropped since lg started, for `lg stat`.
///
/// Bytes count Ethernet frames, without the 12-byte virtio header, as the
/// guest's and the host's interface counters do. A packet is dropped on
/// receive when the guest's buffer cannot hold it (or the tap gave lg
/// something shorter than a header), and on transmit when the guest's chain
/// is malformed or the tap refuses it.
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
}

impl NetStats {
    /// Counts one packet of `len` bytes, header included, on `packets` and
    /// `bytes`. Relaxed: the counters are read only for display, and each
    /// is only ever added to.
    fn count(packets: &AtomicU64, bytes: &AtomicU64, len: usize) {
        packets.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len.saturating_sub(VNET_HDR_LEN) as u64, Ordering::Relaxed);
    }

    fn drop_one(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs a guest's or the host's misbehaviour: the first time at warning
/// level, where a developer will see it, and after that at debug level, so
/// that a guest sending a stream of bad packets cannot flood lg's log.
fn complain(warned: &mut bool, message: std::fmt::Arguments<'_>) {
    let level = if *warned {
        log::Level::Debug
    } else {
        log::Level::Warn
    };
    *warned = true;
    log::log!(level, "virtio-net: {message}");
}
