//! Receive: packets from the tap into the guest's buffers, one batch at a
//! time.
//!
//! The guest keeps the receive queue stocked with empty, device-writable
//! chains. lg reads a packet from the tap only once it holds a chain to put
//! it in: while the guest has none, packets wait in the tap's own queue
//! (where the host's stack can apply back-pressure or drop with its usual
//! accounting) instead of being read and lost here.
//!
//! How a packet lands depends on VIRTIO_NET_F_MRG_RXBUF (§5.1.6.4):
//! - negotiated (what Linux does): the guest posts small buffers (about
//!   1.5 KiB each) and a packet takes as many chains as it needs, each
//!   filled before the next. The header's `num_buffers` in the first chain
//!   tells the guest how many used entries belong to the packet.
//! - not negotiated: one chain holds the whole packet (a driver without
//!   merging posts buffers big enough for the largest packet it accepts).
//!   A packet that does not fit the chain is dropped and counted; the chain
//!   is kept for the next packet. `num_buffers` is 1.
//!
//! A packet that needs more chains than the guest has posted so far stays
//! in the host buffer, and the chains already popped for it stay with lg
//! (there is no un-pop: the queue has moved past them), until the guest
//! posts more; then it is delivered whole. Only when lg holds as many
//! chains as the queue has descriptors, and still they are too small, is
//! the packet dropped: no well-behaved guest can ever post more.
//!
//! A chain too short for the header (which §5.1.6.3.1 forbids a driver to
//! post) cannot carry any packet; it is returned at once with length 0,
//! which Linux counts as a length error and recycles.

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;

use shadow_mmu::GuestMemory;
use virtqueue::{DescriptorChain, Queue, QueueError};

use crate::{complain, sys, NetStats, MAX_PACKET_LEN, VNET_HDR_LEN};

/// The most packets one batch delivers before it lets the transmit side
/// run, so a flood from the host cannot starve transmitting.
pub(crate) const RX_BATCH: usize = 64;

/// Where `num_buffers` sits in `struct virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What the receive side waits for after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxWait {
    /// lg holds a buffer: POLLIN on the tap. (Also after a full batch: the
    /// tap is then still readable, so the wait ends at once, after the
    /// transmit side has had its turn.)
    Tap,
    /// The guest has no buffers and notifications are on: its next kick.
    /// The tap is not polled meanwhile, or lg would spin on a readable tap
    /// it cannot read.
    Buffers,
    /// The tap failed or reported end of file: try again later, not at
    /// once, so a broken tap costs a wake-up now and then, not a CPU.
    Backoff,
}

/// What a packet needs from the chains lg holds.
enum Fit {
    /// The first `n` held chains take it.
    Chains(usize),
    /// Not enough room yet, and the guest has no more buffers posted.
    Wait,
    /// It can never fit: drop it.
    Never,
}

/// The receive side's state between batches.
pub(crate) struct Rx {
    mergeable: bool,
    /// Read from the tap, not yet in the guest: `pending` bytes of `buf`.
    buf: Box<[u8]>,
    pending: Option<usize>,
    /// Chains popped and not yet used, oldest first, and their total room.
    held: VecDeque<DescriptorChain>,
    held_room: u64,
    warned: bool,
}

impl Rx {
    /// `mergeable`: whether the guest accepted VIRTIO_NET_F_MRG_RXBUF.
    pub fn new(mergeable: bool) -> Rx {
        Rx {
            mergeable,
            buf: vec![0; MAX_PACKET_LEN].into_boxed_slice(),
            pending: None,
            held: VecDeque::new(),
            held_room: 0,
            warned: false,
        }
    }

    /// Moves packets from `fd` into the guest's buffers, up to [`RX_BATCH`];
    /// returns whether the guest should be interrupted, and what to wait
    /// for next.
    ///
    /// An error is the guest breaking the queue protocol; the caller should
    /// report the device broken.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        fd: BorrowedFd<'_>,
        stats: &NetStats,
    ) -> Result<(bool, RxWait), QueueError> {
        let mut used = false;
        // lg asks for buffers when it runs out (`take_chain`), not each time
        // the guest posts one.
        queue.disable_notification(mem)?;
        let mut budget = RX_BATCH;
        let wait = loop {
            if budget == 0 {
                break RxWait::Tap;
            }
            let len = match self.pending {
                Some(len) => len,
                None => {
                    if self.held.is_empty() && !self.take_chain(queue, mem, &mut used)? {
                        break RxWait::Buffers;
                    }
                    match self.read(fd, stats) {
                        Ok(Some(len)) => len,
                        Ok(None) => {
                            budget -= 1;
                            continue;
                        }
                        Err(wait) => break wait,
                    }
                }
            };
            self.pending = Some(len);
            match self.fit(queue, mem, len, &mut used)? {
                Fit::Chains(n) => {
                    self.deliver(queue, mem, len, n, stats)?;
                    used = true;
                }
                Fit::Wait => break RxWait::Buffers,
                Fit::Never => {
                    NetStats::drop_one(&stats.rx_dropped);
                    complain(
                        &mut self.warned,
                        format_args!(
                            "dropped a {len}-byte packet: the guest's receive buffers are too small"
                        ),
                    );
                }
            }
            self.pending = None;
            budget -= 1;
        };
        Ok((used && queue.needs_notification(mem)?, wait))
    }

    /// Reads one packet into `buf`: its length, or `None` for a runt that
    /// was dropped, or what to wait for if there is nothing to read.
    fn read(&mut self, fd: BorrowedFd<'_>, stats: &NetStats) -> Result<Option<usize>, RxWait> {
        match sys::read_packet(fd, &mut self.buf) {
            Ok(0) => {
                complain(
                    &mut self.warned,
                    format_args!("the tap reported end of file"),
                );
                Err(RxWait::Backoff)
            }
            Ok(len) if len < VNET_HDR_LEN => {
                NetStats::drop_one(&stats.rx_dropped);
                complain(
                    &mut self.warned,
                    format_args!("dropped a {len}-byte packet from the tap: no room for a header"),
                );
                Ok(None)
            }
            Ok(len) => Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(RxWait::Tap),
            Err(e) => {
                complain(&mut self.warned, format_args!("cannot read the tap: {e}"));
                Err(RxWait::Backoff)
            }
        }
    }

    /// Pops one more chain that can hold a header onto `held`; false if the
    /// guest has posted none, in which case notifications are left on so
    /// that its next post kicks.
    fn take_chain(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        used: &mut bool,
    ) -> Result<bool, QueueError> {
        loop {
            let Some(chain) = queue.pop(mem)? else {
                if queue.enable_notification(mem)? {
                    // Posted between the pop and the enable: take it now,
                    // the kick for it may never come.
                    queue.disable_notification(mem)?;
                    continue;
                }
                return Ok(false);
            };
            if chain.writable_len() < VNET_HDR_LEN as u64 {
                complain(
                    &mut self.warned,
                    format_args!(
                        "returned a receive chain of {} writable bytes: too short for a header",
                        chain.writable_len()
                    ),
                );
                queue.add_used(mem, chain.head(), 0)?;
                *used = true;
                continue;
            }
            self.held_room += chain.writable_len();
            self.held.push_back(chain);
            return Ok(true);
        }
    }

    /// How many held chains a `len`-byte packet needs, popping more if it
    /// needs more than are held.
    fn fit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        len: usize,
        used: &mut bool,
    ) -> Result<Fit, QueueError> {
        let len = len as u64;
        if !self.mergeable {
            if self.held.is_empty() && !self.take_chain(queue, mem, used)? {
                return Ok(Fit::Wait);
            }
            return Ok(match self.held.front() {
                Some(chain) if chain.writable_len() >= len => Fit::Chains(1),
                _ => Fit::Never,
            });
        }
        while self.held_room < len {
            // A guest has no more descriptors than the queue's size, so
            // holding that many chains means it cannot post another: the
            // packet will never fit. This also bounds what lg holds.
            if self.held.len() >= usize::from(queue.size()) {
                return Ok(Fit::Never);
            }
            if !self.take_chain(queue, mem, used)? {
                return Ok(Fit::Wait);
            }
        }
        let mut room = 0;
        for (i, chain) in self.held.iter().enumerate() {
            room += chain.writable_len();
            if room >= len {
                return Ok(Fit::Chains(i + 1));
            }
        }
        // held_room >= len, so the loop returned.
        Ok(Fit::Never)
    }

    /// Copies the pending `len`-byte packet into the first `chains` held
    /// chains and hands them to the guest.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        len: usize,
        chains: usize,
        stats: &NetStats,
    ) -> Result<(), QueueError> {
        // At most the queue size (at most 32768) chains are ever held.
        let num_buffers = u16::try_from(chains).unwrap_or(u16::MAX);
        self.buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&num_buffers.to_le_bytes());
        let mut offset = 0;
        let mut complete = true;
        for _ in 0..chains {
            let Some(chain) = self.held.pop_front() else {
                break;
            };
            self.held_room -= chain.writable_len();
            // Bounded by the packet's remaining length.
            let n = (len - offset).min(usize::try_from(chain.writable_len()).unwrap_or(usize::MAX));
            let mut writer = chain.writer(mem);
            if let Err(e) = writer.write_slice(&self.buf[offset..offset + n]) {
                // Cannot happen to a checked chain; if it did, the guest
                // gets what was written and the packet counts as dropped.
                complain(
                    &mut self.warned,
                    format_args!("cannot fill a receive chain: {e}"),
                );
                complete = false;
            }
            offset += n;
            queue.add_used(mem, chain.head(), writer.bytes_written())?;
        }
        if complete && offset == len {
            NetStats::count(&stats.rx_packets, &stats.rx_bytes, len);
        } else {
            NetStats::drop_one(&stats.rx_dropped);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::test_driver::{vnet_header, Bench};

    /// A packet as the tap gives it: a header (with num_buffers left 0, as
    /// the tap leaves it) and a patterned frame.
    fn packet(frame_len: usize, seed: u8) -> Vec<u8> {
        let mut p = vnet_header(0, 0, 0, 0, 0, 0).to_vec();
        p.extend((0..frame_len).map(|i| (i as u8).wrapping_mul(31) ^ seed));
        p
    }

    /// The packet as the guest should see it: num_buffers filled in.
    fn with_num_buffers(mut packet: Vec<u8>, n: u16) -> Vec<u8> {
        packet[10..12].copy_from_slice(&n.to_le_bytes());
        packet
    }

    #[test]
    fn a_host_packet_lands_in_a_guest_buffer() {
        let mut bench = Bench::new(false);
        let posted = bench.rxd.add_chain(&[], &[65562]);
        assert_eq!(bench.rx().unwrap(), (false, RxWait::Tap));
        let sent = packet(1514, 1);
        bench.host_send(&sent);
        // Delivered, and no buffer left: wait for the guest, not the tap.
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        assert_eq!(bench.rxd.take_used(), Some((u32::from(posted.head), 1526)));
        assert_eq!(posted.contents(&bench.rxd, 1526), with_num_buffers(sent, 1));
        assert_eq!(bench.stats.rx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(bench.stats.rx_bytes.load(Ordering::Relaxed), 1514);
    }

    #[test]
    fn a_big_packet_spreads_over_mergeable_buffers() {
        let mut bench = Bench::new(true);
        let heads: Vec<u16> = (0..48)
            .map(|_| bench.rxd.add_chain(&[], &[1526]).head)
            .collect();
        let sent = packet(60 * 1024, 2);
        let expected_buffers = sent.len().div_ceil(1526);
        assert_eq!(expected_buffers, 41);
        bench.host_send(&sent);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Tap));
        let mut received = Vec::new();
        for (i, head) in heads.iter().take(expected_buffers).enumerate() {
            let (id, len) = bench.rxd.take_used().expect("a used buffer");
            assert_eq!(id, u32::from(*head));
            let expected_len = if i + 1 < expected_buffers {
                1526
            } else {
                sent.len() - 1526 * i
            };
            assert_eq!(len as usize, expected_len);
            received.extend(bench.rxd.buffer(*head, len as usize));
        }
        assert_eq!(bench.rxd.take_used(), None);
        assert_eq!(received, with_num_buffers(sent, 41));

        // A small packet after it takes one of the remaining buffers.
        let small = packet(60, 3);
        bench.host_send(&small);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Tap));
        let (id, len) = bench.rxd.take_used().unwrap();
        assert_eq!((id, len), (u32::from(heads[41]), 72));
        assert_eq!(bench.rxd.buffer(heads[41], 72), with_num_buffers(small, 1));
    }

    #[test]
    fn a_packet_with_no_guest_buffers_waits_and_is_not_lost() {
        let mut bench = Bench::new(false);
        let sent = packet(200, 4);
        bench.host_send(&sent);
        assert_eq!(bench.rx().unwrap(), (false, RxWait::Buffers));
        assert!(
            bench.device_readable(),
            "lg must not read what it cannot deliver"
        );
        let posted = bench.rxd.add_chain(&[], &[2048]);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        assert_eq!(bench.rxd.take_used(), Some((u32::from(posted.head), 212)));
        assert_eq!(posted.contents(&bench.rxd, 212), with_num_buffers(sent, 1));
        assert_eq!(bench.stats.rx_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_mergeable_packet_waits_for_enough_buffers() {
        let mut bench = Bench::new(true);
        let first: Vec<u16> = (0..2)
            .map(|_| bench.rxd.add_chain(&[], &[1526]).head)
            .collect();
        let sent = packet(4000, 5);
        bench.host_send(&sent);
        // Read, but only two of the three buffers it needs are there.
        assert_eq!(bench.rx().unwrap(), (false, RxWait::Buffers));
        assert_eq!(bench.rxd.take_used(), None);
        assert!(!bench.device_readable());
        let third = bench.rxd.add_chain(&[], &[1526]).head;
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        let mut received = Vec::new();
        for head in [first[0], first[1], third] {
            let (id, len) = bench.rxd.take_used().unwrap();
            assert_eq!(id, u32::from(head));
            received.extend(bench.rxd.buffer(head, len as usize));
        }
        assert_eq!(received, with_num_buffers(sent, 3));
    }

    #[test]
    fn several_packets_are_delivered_in_one_batch() {
        let mut bench = Bench::new(true);
        let heads: Vec<u16> = (0..4)
            .map(|_| bench.rxd.add_chain(&[], &[1526]).head)
            .collect();
        let sent: Vec<Vec<u8>> = (0..3u8).map(|i| packet(100 + usize::from(i), i)).collect();
        for p in &sent {
            bench.host_send(p);
        }
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Tap));
        for (head, p) in heads.iter().zip(sent) {
            let (id, len) = bench.rxd.take_used().unwrap();
            assert_eq!((id, len as usize), (u32::from(*head), p.len()));
            assert_eq!(bench.rxd.buffer(*head, p.len()), with_num_buffers(p, 1));
        }
        assert_eq!(bench.rxd.take_used(), None);
        // Nothing new: nothing to tell.
        assert_eq!(bench.rx().unwrap(), (false, RxWait::Tap));
    }

    #[test]
    fn without_merging_a_packet_too_big_for_the_buffer_is_dropped() {
        let mut bench = Bench::new(false);
        let posted = bench.rxd.add_chain(&[], &[1526]);
        bench.host_send(&packet(3000, 6));
        let small = packet(100, 7);
        bench.host_send(&small);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        // The big one is gone; the buffer carried the next one.
        assert_eq!(bench.rxd.take_used(), Some((u32::from(posted.head), 112)));
        assert_eq!(posted.contents(&bench.rxd, 112), with_num_buffers(small, 1));
        assert_eq!(bench.stats.rx_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(bench.stats.rx_packets.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn buffers_too_short_for_a_header_are_returned_empty() {
        let mut bench = Bench::new(true);
        let tiny = bench.rxd.add_chain(&[], &[11]).head;
        let readable_only = bench.rxd.add_chain(&[&[0; 64]], &[]).head;
        let good = bench.rxd.add_chain(&[], &[1526]).head;
        let sent = packet(60, 8);
        bench.host_send(&sent);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        assert_eq!(bench.rxd.take_used(), Some((u32::from(tiny), 0)));
        assert_eq!(bench.rxd.take_used(), Some((u32::from(readable_only), 0)));
        assert_eq!(bench.rxd.take_used(), Some((u32::from(good), 72)));
        assert_eq!(bench.rxd.buffer(good, 72), with_num_buffers(sent, 1));
    }

    #[test]
    fn a_packet_bigger_than_all_the_guest_can_post_is_dropped() {
        // A 16-entry queue of 100-byte buffers holds 1600 bytes at most.
        let mut bench = Bench::with_rx_size(true, 16);
        for _ in 0..16 {
            bench.rxd.add_chain(&[], &[100]);
        }
        bench.host_send(&packet(3000, 9));
        let (_, wait) = bench.rx().unwrap();
        assert_eq!(wait, RxWait::Tap);
        assert_eq!(bench.rxd.take_used(), None);
        assert_eq!(bench.stats.rx_dropped.load(Ordering::Relaxed), 1);
        // The buffers were kept, and carry the next packet.
        let small = packet(150, 10);
        bench.host_send(&small);
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Tap));
        let mut received = Vec::new();
        for _ in 0..2 {
            let (id, len) = bench.rxd.take_used().unwrap();
            received.extend(bench.rxd.buffer(id as u16, len as usize));
        }
        assert_eq!(received, with_num_buffers(small, 2));
    }

    #[test]
    fn a_flood_is_taken_in_turns() {
        let mut bench = Bench::new(true);
        for _ in 0..RX_BATCH + 5 {
            bench.rxd.add_chain(&[], &[1526]);
            bench.host_send(&packet(60, 11));
        }
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Tap));
        let mut n = 0;
        while bench.rxd.take_used().is_some() {
            n += 1;
        }
        assert_eq!(n, RX_BATCH);
        assert!(bench.device_readable());
        assert_eq!(bench.rx().unwrap(), (true, RxWait::Buffers));
        while bench.rxd.take_used().is_some() {
            n += 1;
        }
        assert_eq!(n, RX_BATCH + 5);
    }

    #[test]
    fn a_closed_host_end_backs_off_instead_of_spinning() {
        let mut bench = Bench::new(false);
        bench.rxd.add_chain(&[], &[2048]);
        bench.close_host();
        assert_eq!(bench.rx().unwrap(), (false, RxWait::Backoff));
        assert_eq!(bench.rxd.take_used(), None);
    }

    #[test]
    fn a_descriptor_outside_ram_is_a_queue_error_not_a_panic() {
        let mut bench = Bench::new(true);
        let posted = bench.rxd.add_chain(&[], &[1526]);
        bench.rxd.point_outside_ram(posted.head);
        bench.host_send(&packet(60, 12));
        assert!(bench.rx().is_err());
    }
}
