//! Both directions without the thread, for `fuzz/` (the `fuzzing`
//! feature): a fuzz target lays out the two queues in guest memory of its
//! own making, puts packets on the host's end of a socketpair, and runs the
//! receive and transmit batches (`rx.rs`, `tx.rs`) exactly as the network
//! thread does between two wake-ups. Nothing here is built into lg.

use std::os::fd::BorrowedFd;

use shadow_mmu::GuestMemory;
use virtqueue::{Queue, QueueError};

use crate::rx::Rx;
use crate::tx::Tx;
use crate::NetStats;

/// The receive side: host packets into the guest's buffers.
pub struct Receive(Rx);

impl Receive {
    /// `mergeable`: whether the guest accepted VIRTIO_NET_F_MRG_RXBUF.
    pub fn new(mergeable: bool) -> Receive {
        Receive(Rx::new(mergeable))
    }

    /// One receive batch from `fd`; returns whether the guest would be
    /// interrupted. An error is a broken queue.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        fd: BorrowedFd<'_>,
        stats: &NetStats,
    ) -> Result<bool, QueueError> {
        self.0
            .process(queue, mem, fd, stats)
            .map(|(signal, _)| signal)
    }
}

/// The transmit side: the guest's chains out to the host as packets.
pub struct Transmit(Tx);

impl Default for Transmit {
    fn default() -> Self {
        Transmit(Tx::new())
    }
}

impl Transmit {
    /// One transmit batch to `fd`; returns whether the guest would be
    /// interrupted. An error is a broken queue.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        fd: BorrowedFd<'_>,
        stats: &NetStats,
    ) -> Result<bool, QueueError> {
        self.0
            .process(queue, mem, fd, stats)
            .map(|(signal, _)| signal)
    }
}
