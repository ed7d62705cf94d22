//! Transmit: the guest's frames out to the tap, one batch at a time.
//!
//! Each chain on the transmit queue is one packet: the 12-byte virtio
//! header and the frame, in device-readable buffers split however the
//! guest likes (Linux puts the header in one descriptor and the frame's
//! pages in others). lg gathers it into one host buffer and writes it to the
//! tap in one `write`, which is what the tap takes as one packet; the tap
//! itself checks the header's offload fields and refuses a bad one.
//!
//! What the guest can get wrong, and what lg does:
//! - a chain with device-writable buffers, shorter than a header, or longer
//!   than [`MAX_PACKET_LEN`]: not a packet. It is returned unused (length
//!   0, as every transmit chain is), counted as dropped, and logged; the
//!   queue carries on with the next chain.
//! - a broken queue (a chain outside RAM, a loop): a [`QueueError`], which
//!   the thread reports as DEVICE_NEEDS_RESET.
//!
//! When the tap's queue is full (EAGAIN, ENOBUFS), dropping the packet
//! would make TCP back off for nothing and spinning would burn a host CPU,
//! so the packet stays in the host buffer, its chain stays with lg (which
//! also holds back the rest of the queue, keeping the guest's order), and
//! the batch ends asking to wait until the tap is writable. Any other write
//! error loses only that packet.

use std::io::Read;
use std::os::fd::BorrowedFd;

use shadow_mmu::GuestMemory;
use virtqueue::{DescriptorChain, Queue, QueueError};

use crate::{complain, sys, NetStats, MAX_PACKET_LEN, VNET_HDR_LEN};

/// The most chains one batch takes before it lets the receive side run,
/// so a guest that transmits without pause cannot starve receiving.
pub(crate) const TX_BATCH: usize = 64;

/// What the transmit side waits for after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxWait {
    /// The queue is empty and notifications are on: the guest's next kick.
    Kick,
    /// The tap refused a packet for lack of room: POLLOUT on its fd.
    Writable,
    /// The tap refused again just after saying it was writable (a tap can
    /// report ENOBUFS while poll says POLLOUT): try again in a moment
    /// rather than spin on poll.
    Retry,
    /// The batch stopped at [`TX_BATCH`] with more chains waiting: run again
    /// as soon as the receive side has had its turn.
    Busy,
}

/// What became of a packet handed to the tap.
enum Sent {
    Done,
    Dropped,
    Full,
}

/// The transmit side's state between batches.
pub(crate) struct Tx {
    /// The packet being sent: `len` bytes, header included.
    buf: Box<[u8]>,
    len: usize,
    /// The head of the chain whose packet is in `buf` and not yet accepted
    /// by the tap.
    loaded: Option<u16>,
    /// Consecutive refusals from the tap; the second in a row waits with
    /// [`TxWait::Retry`] rather than on POLLOUT.
    refusals: u32,
    warned: bool,
}

impl Tx {
    pub fn new() -> Tx {
        Tx {
            buf: vec![0; MAX_PACKET_LEN].into_boxed_slice(),
            len: 0,
            loaded: None,
            refusals: 0,
            warned: false,
        }
    }

    /// Sends what the guest has queued, up to [`TX_BATCH`] packets, to
    /// `fd`; returns whether the guest should be interrupted, and what to
    /// wait for next.
    ///
    /// An error is the guest breaking the queue protocol; the caller should
    /// report the device broken.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        fd: BorrowedFd<'_>,
        stats: &NetStats,
    ) -> Result<(bool, TxWait), QueueError> {
        let mut used = false;
        let mut budget = TX_BATCH;
        let wait = 'batch: loop {
            queue.disable_notification(mem)?;
            loop {
                if let Some(head) = self.loaded {
                    match self.send(fd, stats) {
                        Sent::Full => {
                            self.refusals = self.refusals.saturating_add(1);
                            break 'batch if self.refusals > 1 {
                                TxWait::Retry
                            } else {
                                TxWait::Writable
                            };
                        }
                        Sent::Done | Sent::Dropped => {
                            self.refusals = 0;
                            self.loaded = None;
                            queue.add_used(mem, head, 0)?;
                            used = true;
                        }
                    }
                }
                if budget == 0 {
                    break 'batch TxWait::Busy;
                }
                let Some(chain) = queue.pop(mem)? else {
                    break;
                };
                budget -= 1;
                if self.load(&chain, mem) {
                    self.loaded = Some(chain.head());
                } else {
                    NetStats::drop_one(&stats.tx_dropped);
                    queue.add_used(mem, chain.head(), 0)?;
                    used = true;
                }
            }
            if !queue.enable_notification(mem)? {
                break TxWait::Kick;
            }
        };
        Ok((used && queue.needs_notification(mem)?, wait))
    }

    /// Checks a chain and copies its packet into `buf`; false if it is not
    /// a packet lg can send.
    fn load(&mut self, chain: &DescriptorChain, mem: &GuestMemory) -> bool {
        let len = chain.readable_len();
        let problem = if !chain.writable().is_empty() {
            Some("a transmit chain has device-writable buffers")
        } else if len < VNET_HDR_LEN as u64 {
            Some("a transmit chain is shorter than the virtio-net header")
        } else if len > MAX_PACKET_LEN as u64 {
            Some("a transmit chain is longer than the largest packet")
        } else {
            None
        };
        if let Some(problem) = problem {
            complain(
                &mut self.warned,
                format_args!("dropped a packet: {problem} ({len} bytes)"),
            );
            return false;
        }
        // At most MAX_PACKET_LEN, checked above.
        let len = len as usize;
        match chain.reader(mem).read_exact(&mut self.buf[..len]) {
            Ok(()) => {
                self.len = len;
                true
            }
            Err(e) => {
                complain(
                    &mut self.warned,
                    format_args!("dropped a packet: cannot read it: {e}"),
                );
                false
            }
        }
    }

    /// Hands the loaded packet to the tap.
    fn send(&mut self, fd: BorrowedFd<'_>, stats: &NetStats) -> Sent {
        let packet = &self.buf[..self.len];
        match sys::write_packet(fd, packet) {
            Ok(_) => {
                NetStats::count(&stats.tx_packets, &stats.tx_bytes, packet.len());
                Sent::Done
            }
            Err(e) if sys::is_full(&e) => Sent::Full,
            Err(e) => {
                NetStats::drop_one(&stats.tx_dropped);
                complain(
                    &mut self.warned,
                    format_args!("the tap refused a {}-byte packet: {e}", packet.len()),
                );
                Sent::Dropped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::test_driver::{vnet_header, Bench};

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect()
    }

    #[test]
    fn a_packet_reaches_the_host_byte_for_byte() {
        let mut bench = Bench::new(false);
        let header = vnet_header(1, 4, 54, 1448, 34, 16);
        let body = frame(1514, 0x21);
        // Header split over two descriptors, the frame over two more.
        let head = bench
            .txd
            .add_chain(
                &[&header[..5], &header[5..], &body[..100], &body[100..]],
                &[],
            )
            .head;
        let (signal, wait) = bench.tx().unwrap();
        assert!(signal);
        assert_eq!(wait, TxWait::Kick);
        assert_eq!(bench.txd.take_used(), Some((u32::from(head), 0)));
        let mut expected = header.to_vec();
        expected.extend_from_slice(&body);
        assert_eq!(bench.host_recv(), Some(expected));
        assert_eq!(bench.host_recv(), None);
        assert_eq!(bench.stats.tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(bench.stats.tx_bytes.load(Ordering::Relaxed), 1514);
    }

    #[test]
    fn a_batch_is_sent_in_order_and_signalled_once() {
        let mut bench = Bench::new(false);
        let heads: Vec<u16> = (0..5u8)
            .map(|i| {
                let mut packet = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
                packet.extend_from_slice(&frame(60, i));
                bench.txd.add_chain(&[&packet], &[]).head
            })
            .collect();
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        for (i, head) in heads.into_iter().enumerate() {
            assert_eq!(bench.txd.take_used(), Some((u32::from(head), 0)));
            assert_eq!(bench.host_recv().unwrap()[12..], frame(60, i as u8)[..]);
        }
        // Nothing new, nothing to tell.
        assert_eq!(bench.tx().unwrap(), (false, TxWait::Kick));
    }

    #[test]
    fn malformed_chains_are_dropped_and_the_next_packet_goes() {
        let mut bench = Bench::new(false);
        let good = {
            let mut p = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
            p.extend_from_slice(&frame(64, 7));
            p
        };
        let short = bench.txd.add_chain(&[&[0; 11]], &[]).head;
        let writable = bench.txd.add_chain(&[&good], &[64]).head;
        let only_writable = bench.txd.add_chain(&[], &[64]).head;
        let long = bench
            .txd
            .add_chain(&[&vec![0; MAX_PACKET_LEN], &[0]], &[])
            .head;
        let fine = bench.txd.add_chain(&[&good], &[]).head;
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        for head in [short, writable, only_writable, long, fine] {
            assert_eq!(bench.txd.take_used(), Some((u32::from(head), 0)));
        }
        assert_eq!(bench.host_recv(), Some(good));
        assert_eq!(bench.host_recv(), None);
        assert_eq!(bench.stats.tx_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(bench.stats.tx_packets.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_largest_packet_goes_whole() {
        let mut bench = Bench::new(false);
        let mut packet = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        packet.extend_from_slice(&frame(MAX_PACKET_LEN - VNET_HDR_LEN, 3));
        // Linux's shape: the header alone, then the frame in pages.
        let pieces: Vec<&[u8]> = std::iter::once(&packet[..12])
            .chain(packet[12..].chunks(4096))
            .collect();
        bench.txd.add_chain(&pieces, &[]);
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        assert_eq!(bench.host_recv(), Some(packet));
    }

    #[test]
    fn a_full_host_queue_makes_the_packet_wait_not_drop() {
        let mut bench = Bench::new(false);
        // Fill the host's receive queue until the device's end refuses.
        let filler = vec![0xaa; 60_000];
        let mut queued = 0;
        while sys::write_packet(bench.device_fd(), &filler).is_ok() {
            queued += 1;
        }
        assert!(queued > 0);
        let packets: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let mut p = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
                p.extend_from_slice(&frame(100, i));
                p
            })
            .collect();
        let heads: Vec<u16> = packets
            .iter()
            .map(|p| bench.txd.add_chain(&[p], &[]).head)
            .collect();
        assert_eq!(bench.tx().unwrap(), (false, TxWait::Writable));
        assert_eq!(bench.txd.take_used(), None, "nothing sent, nothing used");
        // Refused again without the host reading: wait a moment instead.
        assert_eq!(bench.tx().unwrap(), (false, TxWait::Retry));
        for _ in 0..queued {
            assert_eq!(bench.host_recv(), Some(filler.clone()));
        }
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        for (head, packet) in heads.into_iter().zip(packets) {
            assert_eq!(bench.txd.take_used(), Some((u32::from(head), 0)));
            assert_eq!(bench.host_recv(), Some(packet));
        }
        assert_eq!(bench.stats.tx_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(bench.stats.tx_packets.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_packet_the_host_refuses_is_dropped_and_counted() {
        let mut bench = Bench::new(false);
        bench.close_host();
        let mut packet = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        packet.extend_from_slice(&frame(60, 1));
        let head = bench.txd.add_chain(&[&packet], &[]).head;
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        assert_eq!(bench.txd.take_used(), Some((u32::from(head), 0)));
        assert_eq!(bench.stats.tx_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_long_queue_is_served_in_turns() {
        let mut bench = Bench::new(false);
        let mut packet = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        packet.extend_from_slice(&frame(60, 9));
        for _ in 0..TX_BATCH + 10 {
            bench.txd.add_chain(&[&packet], &[]);
        }
        let used = |bench: &mut Bench| {
            let mut n = 0;
            while bench.txd.take_used().is_some() {
                assert!(bench.host_recv().is_some());
                n += 1;
            }
            n
        };
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Busy));
        assert_eq!(used(&mut bench), TX_BATCH);
        assert_eq!(bench.tx().unwrap(), (true, TxWait::Kick));
        assert_eq!(used(&mut bench), 10);
    }

    #[test]
    fn a_descriptor_outside_ram_is_a_queue_error_not_a_panic() {
        let mut bench = Bench::new(false);
        let posted = bench.txd.add_chain(&[&[0; 64]], &[]);
        bench.txd.point_outside_ram(posted.head);
        assert!(bench.tx().is_err());
        assert_eq!(bench.host_recv(), None);
    }
}
