//! The network thread: both directions, off the vCPUs, on one thread.
//!
//! The thread sleeps in one `poll` on up to four descriptors: a stop signal
//! from reset, the receive queue's doorbell, the transmit queue's doorbell
//! (which KVM signals when the guest kicks, without a VM exit to lg), and
//! the tap. What it asks of the tap follows what each side is waiting for
//! ([`RxWait`], [`TxWait`]): POLLIN while lg holds a receive buffer,
//! POLLOUT while a transmitted packet waits for room, and nothing at all
//! otherwise, so that neither a readable tap with no guest buffers nor a
//! hung-up one can make it spin. Woken, it runs a batch of whichever side
//! has something to do.
//!
//! One thread rather than one per direction: the two sides share nothing
//! but the tap's descriptor, so one thread needs no locks, and since
//! neither side ever blocks (a full tap is a POLLOUT wait, not a blocking
//! write) one cannot hold up the other. Each batch is bounded, so a flood
//! in one direction still lets the other through. A developer's VM does not
//! need the two directions on two host CPUs.
//!
//! A broken queue is the guest breaking the protocol: the device reports
//! DEVICE_NEEDS_RESET and the thread stops, as the disk's does.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadow_mmu::GuestMemory;
use virtio_pci::{poll, pollfd, ActiveQueue, Interrupt};
use vmm_sys_util::eventfd::EventFd;

use crate::rx::{Rx, RxWait};
use crate::tx::{Tx, TxWait};
use crate::{NetBackend, NetStats};

/// How long a failed tap read waits before the next attempt.
const RX_BACKOFF: Duration = Duration::from_millis(100);
/// How long a transmit refused twice running waits before the next attempt.
const TX_RETRY: Duration = Duration::from_millis(1);

/// The network thread's state.
pub(crate) struct NetIo {
    pub memory: Arc<GuestMemory>,
    pub interrupt: Arc<Interrupt>,
    pub backend: Arc<dyn NetBackend>,
    pub stats: Arc<NetStats>,
    pub rx_queue: ActiveQueue,
    pub tx_queue: ActiveQueue,
    pub rx: Rx,
    pub tx: Tx,
}

impl NetIo {
    /// Serves both directions until `stop` fires.
    pub fn run(mut self, stop: EventFd) {
        // Both sides first: the guest may have posted buffers and packets
        // before the thread started waiting.
        let mut run_rx = true;
        let mut run_tx = true;
        let mut rx_wait = RxWait::Tap;
        let mut tx_wait = TxWait::Kick;
        let mut rx_retry_at = None;
        let mut tx_retry_at = None;
        loop {
            if run_tx {
                let fd = self.backend.fd();
                match self
                    .tx
                    .process(&mut self.tx_queue.queue, &self.memory, fd, &self.stats)
                {
                    Ok((signal, wait)) => {
                        if signal {
                            self.interrupt.signal_used(self.tx_queue.index);
                        }
                        tx_wait = wait;
                        tx_retry_at = (wait == TxWait::Retry).then(|| Instant::now() + TX_RETRY);
                    }
                    Err(e) => {
                        self.interrupt
                            .report_broken(&format!("transmit queue: {e}"));
                        return;
                    }
                }
            }
            if run_rx {
                let fd = self.backend.fd();
                match self
                    .rx
                    .process(&mut self.rx_queue.queue, &self.memory, fd, &self.stats)
                {
                    Ok((signal, wait)) => {
                        if signal {
                            self.interrupt.signal_used(self.rx_queue.index);
                        }
                        rx_wait = wait;
                        rx_retry_at =
                            (wait == RxWait::Backoff).then(|| Instant::now() + RX_BACKOFF);
                    }
                    Err(e) => {
                        self.interrupt.report_broken(&format!("receive queue: {e}"));
                        return;
                    }
                }
            }

            let mut tap_events = 0;
            if rx_wait == RxWait::Tap {
                tap_events |= libc::POLLIN;
            }
            if tx_wait == TxWait::Writable {
                tap_events |= libc::POLLOUT;
            }
            // poll(2) reports POLLHUP and POLLERR even when not asked, so a
            // descriptor lg wants nothing from is left out altogether.
            let tap_fd = if tap_events != 0 {
                self.backend.fd().as_raw_fd()
            } else {
                -1
            };
            let mut fds = [
                pollfd(stop.as_raw_fd(), libc::POLLIN),
                pollfd(self.rx_queue.kick.as_raw_fd(), libc::POLLIN),
                pollfd(self.tx_queue.kick.as_raw_fd(), libc::POLLIN),
                pollfd(tap_fd, tap_events),
            ];
            let timeout = if tx_wait == TxWait::Busy {
                0
            } else {
                timeout_until([rx_retry_at, tx_retry_at].into_iter().flatten().min())
            };
            if poll(&mut fds, timeout).is_err() {
                self.interrupt
                    .report_broken("the network thread cannot wait for events");
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            // Clear the doorbells; the batches serve what they announced.
            let rx_kicked = fds[1].revents != 0 && self.rx_queue.kick.read().is_ok();
            let tx_kicked = fds[2].revents != 0 && self.tx_queue.kick.read().is_ok();
            let tap = fds[3].revents;
            let trouble = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
            let now = Instant::now();
            run_rx = rx_kicked
                || (rx_wait == RxWait::Tap && tap & (libc::POLLIN | trouble) != 0)
                || rx_retry_at.is_some_and(|at| now >= at);
            run_tx = tx_kicked
                || tx_wait == TxWait::Busy
                || (tx_wait == TxWait::Writable && tap & (libc::POLLOUT | trouble) != 0)
                || tx_retry_at.is_some_and(|at| now >= at);
        }
    }
}

/// poll(2)'s timeout for waking at `deadline`: -1 (for ever) without one,
/// rounded up to whole milliseconds so that the wake is never early.
fn timeout_until(deadline: Option<Instant>) -> i32 {
    let Some(deadline) = deadline else {
        return -1;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_micros().div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    //! The thread run end to end: the card inside the real transport,
    //! driven through BAR 0 as Linux's virtio_pci and virtio_net drivers
    //! drive it, with the socketpair as the tap.

    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use pci::PciFunction;
    use shadow_mmu::GuestMemory;
    use virtio_pci::common_config::{offset, status};
    use virtio_pci::{fake_hooks, VirtioDevice, VirtioPciDevice};

    use super::*;
    use crate::device::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    };
    use crate::test_driver::{
        readable, recv, vnet_header, GuestDriver, PairBackend, Posted, RAM, RX_LAYOUT, TX_LAYOUT,
    };
    use crate::{sys, VirtioNet};

    const QUEUE_SIZE: u16 = 16;

    struct Machine {
        transport: VirtioPciDevice,
        backend: Arc<PairBackend>,
        host: OwnedFd,
        pin: Arc<AtomicBool>,
        stats: Arc<NetStats>,
        rxd: GuestDriver,
        txd: GuestDriver,
    }

    impl Machine {
        /// Linux's probe, in order: status, features, both queues,
        /// DRIVER_OK.
        fn start(accepted: u64) -> Machine {
            let memory = Arc::new(GuestMemory::new(RAM).unwrap());
            let (backend, host) = PairBackend::new();
            let backend = Arc::new(backend);
            let device = VirtioNet::new(backend.clone(), [0x52, 0x54, 0, 0, 0, 1]);
            let stats = device.stats();
            assert_eq!(device.features() & accepted, accepted);
            let pin = Arc::new(AtomicBool::new(false));
            let transport = VirtioPciDevice::new(
                Box::new(device),
                Arc::clone(&memory),
                0xc000_0000,
                Arc::new(fake_hooks::Hooks),
                Box::new(fake_hooks::Pin(Arc::clone(&pin))),
                11,
            )
            .unwrap();
            let mut machine = Machine {
                transport,
                backend,
                host,
                pin,
                stats,
                rxd: GuestDriver::in_memory(Arc::clone(&memory), QUEUE_SIZE, RX_LAYOUT),
                txd: GuestDriver::in_memory(memory, QUEUE_SIZE, TX_LAYOUT),
            };
            machine.write(
                offset::DEVICE_STATUS,
                &[status::ACKNOWLEDGE | status::DRIVER],
            );
            machine.write(offset::DRIVER_FEATURE_SELECT, &0u32.to_le_bytes());
            machine.write(offset::DRIVER_FEATURE, &(accepted as u32).to_le_bytes());
            machine.write(offset::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
            machine.write(offset::DRIVER_FEATURE, &1u32.to_le_bytes()); // VERSION_1
            let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
            machine.write(offset::DEVICE_STATUS, &[features_ok]);
            for (index, rings) in [
                (0u16, machine.ring_addresses(true)),
                (1u16, machine.ring_addresses(false)),
            ] {
                machine.write(offset::QUEUE_SELECT, &index.to_le_bytes());
                machine.write(offset::QUEUE_SIZE, &QUEUE_SIZE.to_le_bytes());
                machine.write(offset::QUEUE_DESC, &(rings[0] as u32).to_le_bytes());
                machine.write(offset::QUEUE_DRIVER, &(rings[1] as u32).to_le_bytes());
                machine.write(offset::QUEUE_DEVICE, &(rings[2] as u32).to_le_bytes());
                machine.write(offset::QUEUE_ENABLE, &1u16.to_le_bytes());
            }
            machine.write(offset::DEVICE_STATUS, &[features_ok | status::DRIVER_OK]);
            assert_eq!(machine.status() & status::DEVICE_NEEDS_RESET, 0);
            machine
        }

        fn ring_addresses(&self, rx: bool) -> [u64; 3] {
            let d = if rx { &self.rxd } else { &self.txd };
            [d.desc_table, d.avail_ring, d.used_ring]
        }

        fn write(&mut self, at: u64, bytes: &[u8]) {
            self.transport.bar_write(0, at, bytes);
        }

        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.transport.bar_read(0, offset::DEVICE_STATUS, &mut b);
            b[0]
        }

        fn kick(&mut self, queue: u16) {
            self.pin.store(false, Ordering::SeqCst);
            self.write(0x3000 + 4 * u64::from(queue), &queue.to_le_bytes());
        }

        /// Waits for the thread to hand back a chain on the receive
        /// (`rx`) or transmit queue, and for the interrupt that says so.
        fn used(&mut self, rx: bool) -> (u32, u32) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let driver = if rx { &mut self.rxd } else { &mut self.txd };
                if let Some(used) = driver.take_used() {
                    while !self.pin.load(Ordering::SeqCst) {
                        assert!(Instant::now() < deadline, "used, but no interrupt");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    return used;
                }
                assert!(Instant::now() < deadline, "nothing came back");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        fn offloads(&self) -> Vec<u32> {
            self.backend.offloads.lock().unwrap().clone()
        }
    }

    #[test]
    fn the_thread_moves_packets_both_ways() {
        let accepted = VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_STATUS;
        let mut machine = Machine::start(accepted);
        assert_eq!(machine.offloads(), [libc::TUN_F_CSUM | libc::TUN_F_TSO4]);

        // Transmit: the packet reaches the host whole.
        let mut packet = vnet_header(1, 0, 0, 0, 34, 16).to_vec();
        packet.extend((0..1000u32).map(|i| i as u8));
        let head = machine
            .txd
            .add_chain(&[&packet[..12], &packet[12..]], &[])
            .head;
        machine.kick(1);
        assert_eq!(machine.used(false), (u32::from(head), 0));
        assert!(readable(machine.host.as_fd(), 10_000));
        assert_eq!(recv(machine.host.as_fd()), Some(packet));

        // Receive: a packet the host sends before the guest has buffers
        // waits; posted buffers and a kick bring it in.
        let mut incoming = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        incoming.extend((0..2000u32).map(|i| (i * 7) as u8));
        sys::write_packet(machine.host.as_fd(), &incoming).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(machine.rxd.take_used(), None);
        let posted: Vec<Posted> = (0..4)
            .map(|_| machine.rxd.add_chain(&[], &[1526]))
            .collect();
        machine.kick(0);
        let first = machine.used(true);
        let second = machine.used(true);
        assert_eq!(first, (u32::from(posted[0].head), 1526));
        assert_eq!(second, (u32::from(posted[1].head), 2012 - 1526));
        let mut received = posted[0].contents(&machine.rxd, 1526);
        received.extend(posted[1].contents(&machine.rxd, 2012 - 1526));
        incoming[10] = 2; // num_buffers
        assert_eq!(received, incoming);

        // A packet while the thread waits on the tap, with buffers held.
        let small = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        sys::write_packet(machine.host.as_fd(), &small).unwrap();
        assert_eq!(machine.used(true), (u32::from(posted[2].head), 12));

        assert_eq!(machine.stats.tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(machine.stats.rx_packets.load(Ordering::Relaxed), 2);
        assert_eq!(machine.stats.rx_bytes.load(Ordering::Relaxed), 2000);

        // Reset stops and joins the thread, and turns the offloads off.
        machine.write(offset::DEVICE_STATUS, &[0]);
        assert_eq!(machine.offloads().last(), Some(&0));
        sys::write_packet(machine.host.as_fd(), &small).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(machine.rxd.take_used(), None, "a reset card received");
    }

    #[test]
    fn a_descriptor_outside_ram_needs_a_reset_and_nothing_panics() {
        let mut machine = Machine::start(VIRTIO_NET_F_MAC);
        // No GUEST_CSUM: the tap is told to send plain frames.
        assert_eq!(machine.offloads(), [0]);
        let posted = machine.txd.add_chain(&[&[0; 64]], &[]);
        machine.txd.point_outside_ram(posted.head);
        machine.kick(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while machine.status() & status::DEVICE_NEEDS_RESET == 0 {
            assert!(
                Instant::now() < deadline,
                "the card did not report itself broken"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(recv(machine.host.as_fd()), None);
        // The driver's answer, a reset, joins the finished thread and
        // clears the condition.
        machine.write(offset::DEVICE_STATUS, &[0]);
        assert_eq!(machine.status(), 0);
    }
}
