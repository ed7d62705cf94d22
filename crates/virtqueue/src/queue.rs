//! One virtqueue, from the device's side: where the guest put the rings, how
//! far each side has got, and who needs to be told.
//!
//! The guest and lg share the rings but never a lock. The guest writes
//! descriptors and avail entries, then bumps `avail.idx`; lg takes chains up
//! to that index (`next_avail` is how far it has got), writes used entries,
//! then bumps `used.idx` (`next_used`). Each index is free-running and wraps
//! at 65536; the slot is the index modulo the size, which is why the size is
//! a power of two.
//!
//! Two things make this work across CPUs. First, order: the guest's writes
//! must be read after the index that published them, and lg's used entry
//! must land before the index that publishes it, so each crossing has a
//! fence (see [`Queue::pop`] and [`Queue::add_used`]). Second, notifications
//! in both directions are expensive (a kick is a VM exit, an interrupt is an
//! injection), so each side can ask the other not to bother: with flags, or
//! with VIRTIO_F_EVENT_IDX by naming the index at which it wants to hear
//! again (§2.7.7, §2.7.10).
//!
//! The transport configures a queue through the setters while the guest
//! writes common config, calls [`Queue::validate`] when the guest enables
//! it, and refuses the enable if that fails. Device-facing methods check the
//! configuration again on every call (a few comparisons), so no order of
//! transport calls can make them index outside the rings.

use std::sync::atomic::{fence, Ordering};

use shadow_mmu::{GuestAddress, GuestMemory};
use zerocopy::little_endian::U16;
use zerocopy::IntoBytes;

use crate::chain::{self, DescriptorChain, Table};
use crate::error::{QueueError, Ring};
use crate::ring::{
    offsets, UsedElem, MAX_QUEUE_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
};

/// A split virtqueue's configuration and the device's progress through it.
///
/// A device serves a queue like this, re-checking after re-enabling kicks
/// so that a buffer the guest adds in between is not left waiting:
///
/// ```
/// # use shadow_mmu::GuestMemory;
/// # use virtqueue::{Queue, QueueError};
/// fn serve(queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueError> {
///     loop {
///         queue.disable_notification(mem)?;
///         while let Some(chain) = queue.pop(mem)? {
///             let mut reply = chain.writer(mem);
///             // ... read the request from chain.reader(mem), write the reply ...
///             queue.add_used(mem, chain.head(), reply.bytes_written())?;
///         }
///         if !queue.enable_notification(mem)? {
///             break;
///         }
///     }
///     // true: raise the queue's interrupt.
///     queue.needs_notification(mem)
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    event_idx: bool,
    indirect: bool,
    /// The avail index of the next chain to pop.
    next_avail: u16,
    /// The used index the next `add_used` fills.
    next_used: u16,
    /// `next_used` when `needs_notification` last ran: the guest has been
    /// told (or chose not to be) about everything before it.
    signalled_used: u16,
}

/// A configuration that has passed [`Queue::validate`]: every ring lies
/// inside RAM, so every offset below its size is a valid address.
#[derive(Clone, Copy)]
struct Rings {
    size: u16,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
}

impl Rings {
    fn read_u16(mem: &GuestMemory, base: GuestAddress, offset: u64) -> Result<u16, QueueError> {
        Ok(mem.read_obj::<U16>(GuestAddress(base.0 + offset))?.get())
    }

    fn write_u16(
        mem: &GuestMemory,
        base: GuestAddress,
        offset: u64,
        value: u16,
    ) -> Result<(), QueueError> {
        Ok(mem.write_obj(GuestAddress(base.0 + offset), &U16::new(value))?)
    }

    fn avail_flags(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        Self::read_u16(mem, self.avail, offsets::AVAIL_FLAGS)
    }

    fn avail_idx(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        Self::read_u16(mem, self.avail, offsets::AVAIL_IDX)
    }

    /// The head the guest put at free-running avail index `idx`.
    fn avail_entry(&self, mem: &GuestMemory, idx: u16) -> Result<u16, QueueError> {
        Self::read_u16(mem, self.avail, offsets::avail_entry(idx % self.size))
    }

    fn used_event(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        Self::read_u16(mem, self.avail, offsets::used_event(self.size))
    }

    fn set_used_flags(&self, mem: &GuestMemory, flags: u16) -> Result<(), QueueError> {
        Self::write_u16(mem, self.used, offsets::USED_FLAGS, flags)
    }

    fn set_used_idx(&self, mem: &GuestMemory, idx: u16) -> Result<(), QueueError> {
        Self::write_u16(mem, self.used, offsets::USED_IDX, idx)
    }

    fn set_used_elem(&self, mem: &GuestMemory, idx: u16, elem: UsedElem) -> Result<(), QueueError> {
        let addr = GuestAddress(self.used.0 + offsets::used_elem(idx % self.size));
        Ok(mem.write(addr, elem.as_bytes())?)
    }

    fn set_avail_event(&self, mem: &GuestMemory, idx: u16) -> Result<(), QueueError> {
        Self::write_u16(mem, self.used, offsets::avail_event(self.size), idx)
    }
}

impl Queue {
    /// A queue that can be up to `max_size` entries, as the transport
    /// advertises it; the guest may choose a smaller size.
    ///
    /// # Panics
    ///
    /// If `max_size` is not a power of two from 1 to 32768: that is lg's
    /// choice, not the guest's, and wrong only in lg's code.
    pub fn new(max_size: u16) -> Queue {
        assert!(
            max_size.is_power_of_two() && max_size <= MAX_QUEUE_SIZE,
            "virtqueue max size {max_size} is not a power of two up to {MAX_QUEUE_SIZE}"
        );
        Queue {
            max_size,
            // The spec has queue_size read back as the maximum until the
            // driver writes it (§4.1.4.3).
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            event_idx: false,
            indirect: false,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
        }
    }

    /// The largest size the guest may choose.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the guest chose (or `max_size` until it writes one).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Records the guest's chosen size; [`validate`](Self::validate) judges it.
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    pub fn set_desc_table(&mut self, addr: u64) {
        self.desc_table = addr;
    }

    /// Guest-physical address of the available ring (the "driver area").
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    pub fn set_avail_ring(&mut self, addr: u64) {
        self.avail_ring = addr;
    }

    /// Guest-physical address of the used ring (the "device area").
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    pub fn set_used_ring(&mut self, addr: u64) {
        self.used_ring = addr;
    }

    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Whether VIRTIO_F_INDIRECT_DESC was negotiated; without it an indirect
    /// descriptor is an error.
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    pub fn set_indirect(&mut self, enabled: bool) {
        self.indirect = enabled;
    }

    /// Whether the guest has enabled the queue.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Records the guest's `queue_enable`; the transport calls
    /// [`validate`](Self::validate) first and refuses a bad configuration.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// The avail index of the next chain [`pop`](Self::pop) will take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The used index the next [`add_used`](Self::add_used) will fill.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Back to the state after [`new`](Self::new), as on a device reset.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Checks the configuration before the device uses it: the size a
    /// power of two, non-zero, no more than the maximum; each ring aligned
    /// (descriptor table 16, avail 2, used 4) and wholly inside guest RAM.
    ///
    /// Rings are sized with their trailing event fields whether or not
    /// EVENT_IDX is negotiated, as the spec's table of sizes does (§2.7).
    /// The used ring may not share a byte with the descriptor table or the
    /// avail ring: the device writes it, and a device whose writes change
    /// what it reads can be made to spin (used.flags over avail.idx sends
    /// every device's "anything new since I re-enabled notifications?"
    /// loop round for ever; found by the `virtio_blk_request` fuzz
    /// target). The descriptor table and the avail ring, both only read,
    /// may overlap: that can only confuse the guest's own queue.
    pub fn validate(&self, mem: &GuestMemory) -> Result<(), QueueError> {
        self.rings(mem).map(|_| ())
    }

    fn rings(&self, mem: &GuestMemory) -> Result<Rings, QueueError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(QueueError::InvalidSize {
                size,
                max: self.max_size,
            });
        }
        let check = |ring: Ring, addr: u64, align: u64, len: u64| {
            let addr = GuestAddress(addr);
            // Every alignment here is a power of two.
            if addr.0 & (align - 1) != 0 {
                Err(QueueError::RingMisaligned { ring, addr, align })
            } else if !mem.contains(addr, len) {
                Err(QueueError::RingOutOfRange { ring, addr, len })
            } else {
                Ok(addr)
            }
        };
        let rings = Rings {
            size,
            desc_table: check(
                Ring::Descriptors,
                self.desc_table,
                offsets::DESC_TABLE_ALIGN,
                offsets::desc_table_bytes(size),
            )?,
            avail: check(
                Ring::Avail,
                self.avail_ring,
                offsets::AVAIL_RING_ALIGN,
                offsets::avail_ring_bytes(size),
            )?,
            used: check(
                Ring::Used,
                self.used_ring,
                offsets::USED_RING_ALIGN,
                offsets::used_ring_bytes(size),
            )?,
        };
        // All three lie in RAM (checked above), so none of these sums
        // overflows.
        let used = rings.used.0..rings.used.0 + offsets::used_ring_bytes(size);
        for (other, addr, len) in [
            (
                Ring::Descriptors,
                rings.desc_table.0,
                offsets::desc_table_bytes(size),
            ),
            (Ring::Avail, rings.avail.0, offsets::avail_ring_bytes(size)),
        ] {
            if addr < used.end && used.start < addr + len {
                return Err(QueueError::RingsOverlap {
                    other,
                    used: rings.used,
                });
            }
        }
        Ok(rings)
    }

    /// The rings of an enabled, valid queue.
    fn active_rings(&self, mem: &GuestMemory) -> Result<Rings, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        self.rings(mem)
    }

    /// The next available descriptor chain, walked and checked, or `None`
    /// if the guest has made none available.
    ///
    /// A chain that fails its checks is still consumed (`next_avail` moves
    /// past it), so a device that logs the error and carries on is not stuck
    /// on it; a jump in `avail.idx` consumes nothing, since the ring itself
    /// cannot be trusted.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        let rings = self.active_rings(mem)?;
        let avail_idx = rings.avail_idx(mem)?;
        // The guest wrote the descriptors and the ring entry, then (after its
        // own write barrier) avail.idx. Acquire keeps our reads of the entry
        // and descriptors after our read of the index, so we cannot see the
        // new index with the old entry. GuestMemory copies plain bytes, not
        // atomics; the fence is what stops the compiler (and, off x86, the
        // CPU) from hoisting those copies above the index read.
        fence(Ordering::Acquire);
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > rings.size {
            return Err(QueueError::AvailIndexJumped {
                avail_idx,
                next_avail: self.next_avail,
                size: rings.size,
            });
        }
        if pending == 0 {
            return Ok(None);
        }
        let head = rings.avail_entry(mem, self.next_avail)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        let table = Table {
            addr: rings.desc_table,
            size: rings.size,
            indirect_allowed: self.indirect,
        };
        chain::walk(mem, table, head).map(Some)
    }

    /// Returns a chain to the guest with `written` bytes written into its
    /// writable buffers (a [`Writer`](crate::Writer)'s `bytes_written`).
    pub fn add_used(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        let rings = self.active_rings(mem)?;
        if head >= rings.size {
            return Err(QueueError::UsedHeadOutOfRange {
                head,
                size: rings.size,
            });
        }
        let elem = UsedElem {
            id: u32::from(head).into(),
            len: written.into(),
        };
        rings.set_used_elem(mem, self.next_used, elem)?;
        // The guest reads the element, and the reply the device wrote into
        // the buffers, once it sees used.idx move. Release keeps all of
        // those writes before the index write, so the guest (after its own
        // read barrier) never finds the new index with a stale element.
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        rings.set_used_idx(mem, self.next_used)
    }

    /// Whether the guest wants an interrupt for the used buffers added since
    /// the last call. Call it once after each batch of `add_used`.
    ///
    /// With EVENT_IDX, the guest names in `used_event` the used index it
    /// wants to hear about: interrupt if this batch wrote that slot
    /// (§2.7.10). Without it, interrupt unless the guest set
    /// VIRTQ_AVAIL_F_NO_INTERRUPT. Either way, no new used buffers, no
    /// interrupt.
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let rings = self.active_rings(mem)?;
        // The classic race, used side: the guest writes used_event (or
        // clears NO_INTERRUPT) and then re-reads used.idx; we wrote used.idx
        // and now read its request. Store then load, on both sides: only a
        // full fence (mfence on x86) guarantees that at least one of us sees
        // the other's store, so either we interrupt or the guest finds the
        // new entries itself.
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return Ok(false);
        }
        if self.event_idx {
            let event = rings.used_event(mem)?;
            // Linux's vring_need_event: was `event` among the indices
            // old..new that this batch filled? Wrapping arithmetic keeps it
            // right across 65536.
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            Ok(rings.avail_flags(mem)? & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the guest not to kick while the device is draining the queue.
    ///
    /// Without EVENT_IDX this sets VIRTQ_USED_F_NO_NOTIFY. With it there is
    /// nothing to write: the guest kicks only when its avail.idx passes the
    /// `avail_event` that [`enable_notification`](Self::enable_notification)
    /// last set, which the device is already past once it is popping.
    pub fn disable_notification(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        let rings = self.active_rings(mem)?;
        if self.event_idx {
            Ok(())
        } else {
            rings.set_used_flags(mem, VIRTQ_USED_F_NO_NOTIFY)
        }
    }

    /// Asks the guest to kick for the next buffer it adds, and returns
    /// whether one was added meanwhile: if so the device must pop again
    /// rather than sleep, since that buffer's kick may never come.
    ///
    /// With EVENT_IDX this writes `avail_event` = `next_avail` (kick when
    /// you fill the slot I will read next); without it, it clears
    /// VIRTQ_USED_F_NO_NOTIFY.
    pub fn enable_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let rings = self.active_rings(mem)?;
        if self.event_idx {
            rings.set_avail_event(mem, self.next_avail)?;
        } else {
            rings.set_used_flags(mem, 0)?;
        }
        // The classic race, avail side: the guest bumps avail.idx and then
        // reads our request; we write the request and then read avail.idx.
        // As in needs_notification, only a full fence between the store and
        // the load makes sure a buffer added now is either seen here or
        // kicked.
        fence(Ordering::SeqCst);
        Ok(rings.avail_idx(mem)? != self.next_avail)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::test_driver::{GuestDriver, RAM};

    #[test]
    fn a_request_goes_in_and_its_reply_comes_back() {
        let mut driver = GuestDriver::new(16);
        let mut queue = driver.queue();
        let posted = driver.add_chain(&[b"hello ", b"world"], &[4, 8]);

        let chain = queue.pop(&driver.mem).unwrap().unwrap();
        assert_eq!(chain.head(), posted.head);
        assert_eq!((chain.readable_len(), chain.writable_len()), (11, 12));
        let mut request = String::new();
        chain
            .reader(&driver.mem)
            .read_to_string(&mut request)
            .unwrap();
        assert_eq!(request, "hello world");
        let mut reply = chain.writer(&driver.mem);
        reply.write_all(b"HELLO WORLD!").unwrap();
        queue
            .add_used(&driver.mem, chain.head(), reply.bytes_written())
            .unwrap();

        assert_eq!(driver.take_used(), Some((u32::from(posted.head), 12)));
        assert_eq!(driver.read_bytes(posted.writable[0].0, 4), b"HELL");
        assert_eq!(driver.read_bytes(posted.writable[1].0, 8), b"O WORLD!");
        assert!(queue.pop(&driver.mem).unwrap().is_none());
        assert_eq!(driver.take_used(), None);
    }

    #[test]
    fn indices_wrap_across_65536() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        let mut sent: u32 = 0;
        // 17000 batches of four two-descriptor chains fill the table each
        // time and take both indices round the 16-bit wrap.
        for _ in 0..17_000 {
            let heads: Vec<u16> = (0..4)
                .map(|i| driver.add_chain(&[&(sent + i).to_le_bytes()], &[4]).head)
                .collect();
            for (i, head) in heads.iter().enumerate() {
                let chain = queue.pop(&driver.mem).unwrap().unwrap();
                assert_eq!(chain.head(), *head);
                let n: u32 = chain.reader(&driver.mem).read_obj().unwrap();
                assert_eq!(n, sent + i as u32);
                let mut reply = chain.writer(&driver.mem);
                reply.write_obj(&!n).unwrap();
                queue.add_used(&driver.mem, *head, 4).unwrap();
            }
            assert!(queue.pop(&driver.mem).unwrap().is_none());
            for head in heads {
                assert_eq!(driver.take_used(), Some((u32::from(head), 4)));
            }
            sent += 4;
        }
        assert_eq!(sent, 68_000);
        assert_eq!(queue.next_avail(), (68_000 % 65_536) as u16);
        assert_eq!(driver.used_idx(), (68_000 % 65_536) as u16);
    }

    #[test]
    fn a_full_ring_is_not_a_jump() {
        let mut driver = GuestDriver::new(4);
        let mut queue = driver.queue();
        for _ in 0..4 {
            driver.add_chain(&[b"x"], &[]);
        }
        for _ in 0..4 {
            assert!(queue.pop(&driver.mem).unwrap().is_some());
        }
        assert!(queue.pop(&driver.mem).unwrap().is_none());
    }

    #[test]
    fn avail_index_jumping_past_the_size_is_refused() {
        let mut driver = GuestDriver::new(4);
        let mut queue = driver.queue();
        driver.set_avail_idx(5);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::AvailIndexJumped {
                avail_idx: 5,
                next_avail: 0,
                size: 4
            })
        ));
        // Going backwards is a jump of nearly 65536.
        driver.set_avail_idx(u16::MAX);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::AvailIndexJumped { .. })
        ));
        // Nothing was consumed.
        assert_eq!(queue.next_avail(), 0);
    }

    #[test]
    fn a_malformed_chain_is_consumed_and_the_next_one_served() {
        let mut driver = GuestDriver::new(4);
        let mut queue = driver.queue();
        driver.publish(7);
        let good = driver.add_chain(&[b"ok"], &[]);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::HeadOutOfRange { head: 7, size: 4 })
        ));
        assert_eq!(queue.pop(&driver.mem).unwrap().unwrap().head(), good.head);
    }

    #[test]
    fn add_used_refuses_a_head_past_the_size() {
        let driver = GuestDriver::new(4);
        let mut queue = driver.queue();
        assert!(matches!(
            queue.add_used(&driver.mem, 4, 0),
            Err(QueueError::UsedHeadOutOfRange { head: 4, size: 4 })
        ));
        assert_eq!(driver.used_idx(), 0);
    }

    /// Adds and completes `n` one-byte chains.
    fn complete(driver: &mut GuestDriver, queue: &mut Queue, n: usize) {
        for _ in 0..n {
            driver.add_chain(&[b"x"], &[]);
            let chain = queue.pop(&driver.mem).unwrap().unwrap();
            queue.add_used(&driver.mem, chain.head(), 0).unwrap();
        }
    }

    #[test]
    fn event_idx_interrupts_only_when_used_event_is_crossed() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        queue.set_event_idx(true);
        // The guest asks to hear about used index 0: the first buffer.
        driver.set_used_event(0);
        complete(&mut driver, &mut queue, 1);
        assert!(queue.needs_notification(&driver.mem).unwrap());
        // Nothing new since: nothing to say.
        assert!(!queue.needs_notification(&driver.mem).unwrap());
        // It wants to hear at index 4; filling 1 and 2 does not reach it...
        driver.set_used_event(4);
        complete(&mut driver, &mut queue, 2);
        assert!(!queue.needs_notification(&driver.mem).unwrap());
        // ...filling 3, 4 and 5 does, in one batch.
        complete(&mut driver, &mut queue, 3);
        assert!(queue.needs_notification(&driver.mem).unwrap());
        // EVENT_IDX ignores the NO_INTERRUPT flag.
        driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
        driver.set_used_event(6);
        complete(&mut driver, &mut queue, 1);
        assert!(queue.needs_notification(&driver.mem).unwrap());
    }

    #[test]
    fn event_idx_used_event_works_across_the_wrap() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        queue.set_event_idx(true);
        driver.set_used_event(u16::MAX);
        for _ in 0..(65_535 / 5) {
            complete(&mut driver, &mut queue, 5);
            assert!(!queue.needs_notification(&driver.mem).unwrap());
        }
        // used.idx is 65535; the next entry is written at index 65535.
        complete(&mut driver, &mut queue, 2);
        assert_eq!(driver.used_idx(), 1);
        assert!(queue.needs_notification(&driver.mem).unwrap());
    }

    #[test]
    fn event_idx_writes_avail_event_and_reports_new_buffers() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        queue.set_event_idx(true);
        complete(&mut driver, &mut queue, 2);
        queue.disable_notification(&driver.mem).unwrap();
        // With EVENT_IDX the used flags stay 0 (§2.7.10).
        assert_eq!(driver.used_flags(), 0);
        assert!(!queue.enable_notification(&driver.mem).unwrap());
        assert_eq!(driver.avail_event(), 2);
        // A buffer that arrives meanwhile is reported so the device pops it.
        driver.add_chain(&[b"late"], &[]);
        assert!(queue.enable_notification(&driver.mem).unwrap());
        assert!(queue.pop(&driver.mem).unwrap().is_some());
        assert!(!queue.enable_notification(&driver.mem).unwrap());
        assert_eq!(driver.avail_event(), 3);
        assert_eq!(driver.used_flags(), 0);
    }

    #[test]
    fn no_interrupt_flag_without_event_idx() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        // used_event would say "not yet", but without EVENT_IDX it is ignored.
        driver.set_used_event(100);
        complete(&mut driver, &mut queue, 1);
        assert!(queue.needs_notification(&driver.mem).unwrap());
        driver.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
        complete(&mut driver, &mut queue, 1);
        assert!(!queue.needs_notification(&driver.mem).unwrap());
        driver.set_avail_flags(0);
        complete(&mut driver, &mut queue, 1);
        assert!(queue.needs_notification(&driver.mem).unwrap());
        assert!(!queue.needs_notification(&driver.mem).unwrap());
    }

    #[test]
    fn no_notify_flag_without_event_idx() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        queue.disable_notification(&driver.mem).unwrap();
        assert_eq!(driver.used_flags(), VIRTQ_USED_F_NO_NOTIFY);
        assert!(!queue.enable_notification(&driver.mem).unwrap());
        assert_eq!(driver.used_flags(), 0);
        queue.disable_notification(&driver.mem).unwrap();
        driver.add_chain(&[b"x"], &[]);
        assert!(queue.enable_notification(&driver.mem).unwrap());
        assert_eq!(driver.used_flags(), 0);
        // avail_event is EVENT_IDX's; without it, left alone.
        assert_eq!(driver.avail_event(), 0);
    }

    #[test]
    fn validate_refuses_bad_sizes() {
        let driver = GuestDriver::new(256);
        let mut queue = driver.queue();
        for size in [0, 3, 100, 512] {
            queue.set_size(size);
            assert!(
                matches!(
                    queue.validate(&driver.mem),
                    Err(QueueError::InvalidSize { size: s, max: 256 }) if s == size
                ),
                "size {size}"
            );
        }
        queue.set_size(128);
        queue.validate(&driver.mem).unwrap();
    }

    /// One of the ring address setters.
    type Setter = fn(&mut Queue, u64);

    #[test]
    fn validate_refuses_misaligned_rings() {
        let driver = GuestDriver::new(16);
        let cases: [(Setter, u64, Ring, u64); 3] = [
            (
                Queue::set_desc_table,
                driver.desc_table + 8,
                Ring::Descriptors,
                16,
            ),
            (Queue::set_avail_ring, driver.avail_ring + 1, Ring::Avail, 2),
            (Queue::set_used_ring, driver.used_ring + 2, Ring::Used, 4),
        ];
        for (set, addr, ring, align) in cases {
            let mut queue = driver.queue();
            set(&mut queue, addr);
            match queue.validate(&driver.mem) {
                Err(QueueError::RingMisaligned {
                    ring: r,
                    addr: a,
                    align: al,
                }) => assert_eq!((r, a, al), (ring, GuestAddress(addr), align)),
                other => panic!("{ring}: {other:?}"),
            }
        }
    }

    #[test]
    fn validate_refuses_rings_outside_ram() {
        let driver = GuestDriver::new(16);
        // Each ring placed so that its last bytes fall past the end of RAM,
        // and once more at an address where `addr + len` overflows.
        let cases: [(Setter, u64, Ring); 6] = [
            (Queue::set_desc_table, RAM - 16 * 15, Ring::Descriptors),
            (Queue::set_avail_ring, RAM - 36, Ring::Avail),
            (Queue::set_used_ring, RAM - 132, Ring::Used),
            (Queue::set_desc_table, u64::MAX - 15, Ring::Descriptors),
            (Queue::set_avail_ring, u64::MAX - 1, Ring::Avail),
            (Queue::set_used_ring, u64::MAX - 3, Ring::Used),
        ];
        for (set, addr, ring) in cases {
            let mut queue = driver.queue();
            set(&mut queue, addr);
            match queue.validate(&driver.mem) {
                Err(QueueError::RingOutOfRange {
                    ring: r, addr: a, ..
                }) => {
                    assert_eq!((r, a), (ring, GuestAddress(addr)))
                }
                other => panic!("{ring} at {addr:#x}: {other:?}"),
            }
            // The device-facing side refuses the same way, without panicking.
            assert!(matches!(
                queue.pop(&driver.mem),
                Err(QueueError::RingOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn validate_refuses_a_used_ring_over_the_other_rings() {
        // The layout the virtio_blk_request fuzz target found: used.flags
        // on avail.idx, so disable_notification made a buffer available
        // and enable_notification took it away, for ever.
        let driver = GuestDriver::new(16);
        let mut queue = driver.queue();
        queue.set_avail_ring(0x1fe);
        queue.set_used_ring(0x200);
        queue.set_desc_table(0x1000);
        match queue.validate(&driver.mem) {
            Err(
                e @ QueueError::RingsOverlap {
                    other: Ring::Avail,
                    used: GuestAddress(0x200),
                },
            ) => assert_eq!(
                e.to_string(),
                "the used ring at 0x200 overlaps the available ring, which the device reads"
            ),
            other => panic!("{other:?}"),
        }
        // The used ring's last two bytes (134 from a 4-aligned start) on
        // the descriptor table's first two.
        let mut queue = driver.queue();
        queue.set_used_ring(driver.desc_table - 132);
        assert!(matches!(
            queue.validate(&driver.mem),
            Err(QueueError::RingsOverlap {
                other: Ring::Descriptors,
                ..
            })
        ));
        // Just below it is fine, and the read-only rings may overlap.
        let mut queue = driver.queue();
        queue.set_used_ring(driver.desc_table - 136);
        queue.set_avail_ring(driver.desc_table);
        queue.validate(&driver.mem).unwrap();
    }

    #[test]
    fn a_queue_the_guest_has_not_enabled_is_refused() {
        let driver = GuestDriver::new(8);
        let mut queue = Queue::new(8);
        assert!(matches!(queue.pop(&driver.mem), Err(QueueError::NotReady)));
        assert!(matches!(
            queue.add_used(&driver.mem, 0, 0),
            Err(QueueError::NotReady)
        ));
        // Enabled without validate (a transport bug): refused, not a panic.
        queue.set_size(0);
        queue.set_ready(true);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::InvalidSize { size: 0, .. })
        ));
        assert!(matches!(
            queue.needs_notification(&driver.mem),
            Err(QueueError::InvalidSize { .. })
        ));
    }

    #[test]
    fn reset_forgets_the_guest() {
        let mut driver = GuestDriver::new(8);
        let mut queue = driver.queue();
        queue.set_event_idx(true);
        queue.set_indirect(true);
        complete(&mut driver, &mut queue, 3);
        queue.reset();
        assert_eq!(queue.size(), 8);
        assert!(!queue.ready() && !queue.event_idx() && !queue.indirect());
        assert_eq!(
            (queue.desc_table(), queue.avail_ring(), queue.used_ring()),
            (0, 0, 0)
        );
        assert_eq!((queue.next_avail(), queue.next_used()), (0, 0));
    }

    #[test]
    #[should_panic(expected = "not a power of two")]
    fn a_max_size_that_is_not_a_power_of_two_is_lgs_bug() {
        Queue::new(100);
    }
}
