//! The network card as the virtio-pci transport sees it: what it offers,
//! what its configuration space says, and starting and stopping its thread.
//!
//! The configuration space is the start of `struct virtio_net_config`
//! (virtio 1.2 §5.1.4, Linux's `include/uapi/linux/virtio_net.h`):
//!
//! ```text
//!  0 mac[6]                  (VIRTIO_NET_F_MAC)
//!  6 status u16              (VIRTIO_NET_F_STATUS: always LINK_UP)
//!  8 max_virtqueue_pairs u16 (1: lg has one receive and one transmit queue)
//! 10 mtu u16                 (VIRTIO_NET_F_MTU: 1500)
//! ```
//!
//! The fields after it (speed, duplex, RSS) belong to features lg does not
//! offer and read as zero.
//!
//! Offloads: lg offers every checksum and segmentation offload the tap
//! understands, both ways. HOST_* (the guest may send partial checksums
//! and 64 KiB segments) needs nothing from lg: the tap takes such packets
//! as they come, header and all. GUEST_* (the guest accepts them) is the
//! tap's to honour, so on activation lg tells the tap which ones the guest
//! accepted ([`tun_offloads`]), and on reset turns them off again, since
//! the next driver may accept none.

use std::sync::Arc;

use virtio_pci::{copy_config, ActivateError, Activation, IoThread, VirtioDevice};
use zerocopy::little_endian::U16;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use crate::rx::Rx;
use crate::tx::Tx;
use crate::worker::NetIo;
use crate::{NetBackend, NetStats};

/// The virtio device id of a network card.
const VIRTIO_ID_NET: u16 = 1;

/// Feature bits (§5.1.3), as masks.
pub(crate) const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub(crate) const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub(crate) const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub(crate) const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub(crate) const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub(crate) const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub(crate) const VIRTIO_NET_F_GUEST_ECN: u64 = 1 << 9;
pub(crate) const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub(crate) const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub(crate) const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub(crate) const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
pub(crate) const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub(crate) const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub(crate) const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

const OFFERED_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_STATUS;

/// `status`: the link is up. lg's link is always up; it offers no way to
/// pull the cable.
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The MTU the guest is told to use: Ethernet's, which is what a fresh tap
/// has too.
const MTU: u16 = 1500;

/// Two queues of 256 descriptors, Linux's usual size: enough receive
/// buffers for a burst, and transmit room for a few 64 KiB segments.
const QUEUE_SIZES: [u16; 2] = [256, 256];
pub(crate) const RX_QUEUE: u16 = 0;
pub(crate) const TX_QUEUE: u16 = 1;

/// `struct virtio_net_config`, as far as lg fills it in.
#[repr(C)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct NetConfig {
    mac: [u8; 6],
    status: U16,
    max_virtqueue_pairs: U16,
    mtu: U16,
}

/// A virtio network card whose other end is a tap.
pub struct VirtioNet {
    backend: Arc<dyn NetBackend>,
    mac: [u8; 6],
    stats: Arc<NetStats>,
    /// The offload flags last given to the backend, so that reset knows
    /// whether there is anything to turn off.
    offloads: u32,
    worker: Option<IoThread>,
}

impl VirtioNet {
    /// A card with address `mac` in front of `backend`, whose fd must
    /// already carry the 12-byte vnet header and be non-blocking.
    pub fn new(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> VirtioNet {
        VirtioNet {
            backend,
            mac,
            stats: Arc::new(NetStats::default()),
            offloads: 0,
            worker: None,
        }
    }

    /// The card's counters, which keep counting across resets.
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(&self.stats)
    }

    fn config_space(&self) -> NetConfig {
        NetConfig {
            mac: self.mac,
            status: U16::new(VIRTIO_NET_S_LINK_UP),
            max_virtqueue_pairs: U16::new(1),
            mtu: U16::new(MTU),
        }
    }

    /// Gives the backend `flags`, logging (and otherwise ignoring) a
    /// refusal: without offloads the tap sends plain frames, which every
    /// guest accepts, so a card without them still works.
    fn set_offloads(&mut self, flags: u32) {
        match self.backend.set_offloads(flags) {
            Ok(()) => self.offloads = flags,
            Err(e) => log::warn!("virtio-net: the tap refused offloads {flags:#x}: {e}"),
        }
    }
}

/// The tap offload flags (`TUNSETOFFLOAD`) for the features a guest
/// accepted: which kinds of packet the tap may hand it.
///
/// Segmentation offloads are only meaningful with checksum offload (a
/// segment's checksums are partial until it is split), and the tap refuses
/// TSO_ECN without TSO4 or TSO6, so each is passed on only where the tap
/// takes it. The spec forbids a driver to accept GUEST_TSO* without
/// GUEST_CSUM, but a guest's mistake must not become a refused ioctl.
pub fn tun_offloads(features: u64) -> u32 {
    let accepted = |bit: u64| features & bit != 0;
    if !accepted(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if accepted(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if accepted(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if accepted(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if accepted(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.reset();
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00) // network controller, Ethernet
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(self.config_space().as_bytes(), offset, data);
    }

    // write_config: the default, ignoring writes. The MAC is writable only
    // by legacy drivers; a modern one changes it with the control queue's
    // VIRTIO_NET_CTRL_MAC_ADDR_SET, and lg has no control queue.

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let rx_queue = activation.take_queue(RX_QUEUE);
        let tx_queue = activation.take_queue(TX_QUEUE);
        let (Some(rx_queue), Some(tx_queue)) = (rx_queue, tx_queue) else {
            return Err(ActivateError(
                "virtio-net started without its receive and transmit queues".into(),
            ));
        };
        self.set_offloads(tun_offloads(activation.features));
        let io = NetIo {
            memory: activation.memory,
            interrupt: activation.interrupt,
            backend: Arc::clone(&self.backend),
            stats: Arc::clone(&self.stats),
            rx_queue,
            tx_queue,
            rx: Rx::new(activation.features & VIRTIO_NET_F_MRG_RXBUF != 0),
            tx: Tx::new(),
        };
        self.worker = Some(IoThread::spawn(
            "virtio-net",
            "the network thread",
            activation.io_thread_start,
            move |stop| io.run(stop),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        if self.offloads != 0 {
            self.set_offloads(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_driver::PairBackend;

    #[test]
    fn the_config_space_describes_the_card() {
        let (backend, _host) = PairBackend::new();
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let device = VirtioNet::new(Arc::new(backend), mac);
        assert_eq!(device.device_type(), 1);
        assert_eq!(device.pci_class(), (0x02, 0x00));
        assert_eq!(device.queue_max_sizes(), &[256, 256]);

        let mut config = [0xff; 16];
        device.read_config(0, &mut config);
        assert_eq!(
            config,
            [
                0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // mac
                1, 0, // status: LINK_UP
                1, 0, // max_virtqueue_pairs
                0xdc, 0x05, // mtu: 1500
                0, 0, 0, 0, // speed and on: not offered
            ]
        );
        // Field by field, as Linux's virtio_cread does.
        let mut status = [0; 2];
        device.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1);
        let mut byte = [0xff];
        device.read_config(3, &mut byte);
        assert_eq!(byte, [0x12]);
        device.read_config(u64::MAX, &mut byte);
        assert_eq!(byte, [0]);
    }

    #[test]
    fn the_offered_features_are_the_offloads_and_no_queues_lg_lacks() {
        let (backend, _host) = PairBackend::new();
        let device = VirtioNet::new(Arc::new(backend), [2, 0, 0, 0, 0, 1]);
        let features = device.features();
        for bit in [0, 1, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] {
            assert_ne!(features & (1 << bit), 0, "bit {bit} not offered");
        }
        // CTRL_VQ (17), MQ (22), the transport's bits (28, 29, 32): not
        // the device's to offer.
        assert_eq!(features & !((1 << 17) - 1), 0);
        assert_eq!(features & (1 << 2 | 1 << 4 | 1 << 6), 0);
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};
        let csum = VIRTIO_NET_F_GUEST_CSUM;
        assert_eq!(tun_offloads(0), 0);
        assert_eq!(tun_offloads(csum), TUN_F_CSUM);
        assert_eq!(
            tun_offloads(OFFERED_FEATURES),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO
        );
        assert_eq!(
            tun_offloads(csum | VIRTIO_NET_F_GUEST_TSO6),
            TUN_F_CSUM | TUN_F_TSO6
        );
        // ECN without TSO is refused by the tap, so not asked for.
        assert_eq!(tun_offloads(csum | VIRTIO_NET_F_GUEST_ECN), TUN_F_CSUM);
        // Segmentation without checksums is meaningless.
        assert_eq!(
            tun_offloads(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_UFO),
            0
        );
        // Offloads the guest may send are not the tap's business.
        assert_eq!(
            tun_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_UFO),
            0
        );
    }
}
