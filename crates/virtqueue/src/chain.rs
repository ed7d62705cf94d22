//! The one place a guest's descriptors are read and checked.
//!
//! A chain is the guest's request: descriptors linked by `next`, perhaps
//! ending in one that points at an indirect table, each naming a buffer the
//! device reads (the request) or writes (the reply). Every field is the
//! guest's to choose, so [`walk`] trusts none of them: it follows the links
//! with a bound on how many it will visit, checks each buffer against guest
//! RAM with overflow-checked arithmetic, and refuses a readable buffer after
//! a writable one. What comes out is a [`DescriptorChain`], the validated
//! type the rest of lg works with: two lists of buffers that are known to be
//! in RAM and whose lengths add up to something a `u32` can report back.
//! Each descriptor is copied out of guest memory once and checked on the
//! copy, so a guest rewriting it from another vCPU mid-walk changes nothing.
//!
//! Choices the spec leaves open, and why:
//! - A chain holds at most queue-size descriptors, indirect ones included
//!   ("A driver MUST NOT create a descriptor chain longer than the Queue
//!   Size", §2.7.5.3.1), so an indirect table holds at most queue-size
//!   entries too. That bounds the work and the two `Vec`s per chain by what
//!   the transport configured, not by anything the guest writes. (Linux
//!   keeps to it as long as a device's segment limits, such as virtio-blk's
//!   `seg_max`, fit in the queue.)
//! - Zero-length descriptors are allowed and checked like any other (address
//!   in RAM, direction order) but not kept: a zero-length buffer can carry
//!   nothing, and leaving it out means readers and writers never meet one.
//! - Flag bits the spec does not define are ignored, as Linux's vhost does.
//! - The WRITE flag of a descriptor that points at an indirect table is
//!   ignored, as §2.7.5.3.2 requires; the table's own descriptors say which
//!   way each buffer goes.

use shadow_mmu::{GuestAddress, GuestMemory};

use crate::bytes::{Reader, Writer};
use crate::error::{DescriptorIndex, QueueError};
use crate::ring::{offsets, Descriptor, DESCRIPTOR_SIZE};

/// One buffer of a chain: `len` bytes of guest RAM at `addr`, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked chain, as popped from a queue: the head to hand back through
/// `Queue::add_used`, the buffers the device may read, then the buffers it
/// may write.
///
/// Every buffer lies wholly inside guest RAM, and the lengths of all of them
/// together fit in a `u32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    readable: Vec<Buffer>,
    writable: Vec<Buffer>,
    readable_len: u64,
    writable_len: u64,
}

impl DescriptorChain {
    /// The index the guest knows this chain by.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The device-readable buffers, in order.
    pub fn readable(&self) -> &[Buffer] {
        &self.readable
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> &[Buffer] {
        &self.writable
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Reads the request: the readable buffers as one stream.
    pub fn reader<'a>(&'a self, mem: &'a GuestMemory) -> Reader<'a> {
        Reader::new(mem, &self.readable, self.readable_len)
    }

    /// Writes the reply: the writable buffers as one stream.
    pub fn writer<'a>(&'a self, mem: &'a GuestMemory) -> Writer<'a> {
        Writer::new(mem, &self.writable, self.writable_len)
    }
}

/// Where the queue's descriptor table is and what the transport negotiated:
/// everything [`walk`] needs besides the guest's own bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    /// Checked by `Queue::validate` to hold `size` descriptors in RAM.
    pub addr: GuestAddress,
    pub size: u16,
    pub indirect_allowed: bool,
}

/// Walks and checks the chain starting at `head` of `table`.
pub(crate) fn walk(
    mem: &GuestMemory,
    table: Table,
    head: u16,
) -> Result<DescriptorChain, QueueError> {
    if head >= table.size {
        return Err(QueueError::HeadOutOfRange {
            head,
            size: table.size,
        });
    }
    let mut chain = ChainBuilder::new(head, table.size);
    let mut index = head;
    // Each `next` is below `size`, so a walk that visits more than `size`
    // descriptors has visited one twice: the count finds loops without
    // remembering where we have been.
    let mut visited: u32 = 0;
    loop {
        visited += 1;
        if visited > u32::from(table.size) {
            return Err(QueueError::ChainLoop { head });
        }
        let addr = GuestAddress(table.addr.0 + offsets::descriptor(index));
        let desc: Descriptor = mem.read_obj(addr)?;
        if desc.is_indirect() {
            if !table.indirect_allowed {
                return Err(QueueError::IndirectNotNegotiated { at: index });
            }
            if desc.has_next() {
                return Err(QueueError::IndirectWithNext { at: index });
            }
            walk_indirect(mem, &mut chain, index, &desc)?;
            break;
        }
        chain.add(mem, DescriptorIndex::Direct(index), &desc)?;
        if !desc.has_next() {
            break;
        }
        let next = desc.next.get();
        if next >= table.size {
            return Err(QueueError::NextOutOfRange {
                at: DescriptorIndex::Direct(index),
                next,
                table_len: table.size,
            });
        }
        index = next;
    }
    Ok(chain.finish())
}

/// Adds the buffers of the indirect table that direct descriptor `at`
/// (`desc`) points to.
fn walk_indirect(
    mem: &GuestMemory,
    chain: &mut ChainBuilder,
    at: u16,
    desc: &Descriptor,
) -> Result<(), QueueError> {
    let len = desc.len.get();
    let entries = u64::from(len) / DESCRIPTOR_SIZE;
    if len == 0 || u64::from(len) % DESCRIPTOR_SIZE != 0 || entries > u64::from(chain.size) {
        return Err(QueueError::IndirectTableSize {
            at,
            len,
            size: chain.size,
        });
    }
    // Fits: entries <= size <= 32768.
    let entries = entries as u16;
    let table = GuestAddress(desc.addr.get());
    if !mem.contains(table, u64::from(len)) {
        return Err(QueueError::IndirectTableOutOfRange {
            at,
            addr: table,
            len,
        });
    }
    let mut index = 0;
    let mut visited: u32 = 0;
    loop {
        // The same pigeonhole as in `walk`, over this table's entries.
        visited += 1;
        if visited > u32::from(entries) {
            return Err(QueueError::ChainLoop { head: chain.head });
        }
        let desc: Descriptor = mem.read_obj(GuestAddress(table.0 + offsets::descriptor(index)))?;
        if desc.is_indirect() {
            return Err(QueueError::NestedIndirect { at: index });
        }
        chain.add(mem, DescriptorIndex::Indirect(index), &desc)?;
        if !desc.has_next() {
            return Ok(());
        }
        let next = desc.next.get();
        if next >= entries {
            return Err(QueueError::NextOutOfRange {
                at: DescriptorIndex::Indirect(index),
                next,
                table_len: entries,
            });
        }
        index = next;
    }
}

/// A chain being collected: the checks that apply to every buffer, wherever
/// its descriptor sits.
struct ChainBuilder {
    head: u16,
    size: u16,
    descriptors: u32,
    seen_writable: bool,
    total_len: u64,
    readable: Vec<Buffer>,
    writable: Vec<Buffer>,
    readable_len: u64,
    writable_len: u64,
}

impl ChainBuilder {
    fn new(head: u16, size: u16) -> ChainBuilder {
        ChainBuilder {
            head,
            size,
            descriptors: 0,
            seen_writable: false,
            total_len: 0,
            readable: Vec::new(),
            writable: Vec::new(),
            readable_len: 0,
            writable_len: 0,
        }
    }

    fn add(
        &mut self,
        mem: &GuestMemory,
        at: DescriptorIndex,
        desc: &Descriptor,
    ) -> Result<(), QueueError> {
        self.descriptors += 1;
        if self.descriptors > u32::from(self.size) {
            return Err(QueueError::ChainTooLong {
                head: self.head,
                size: self.size,
            });
        }
        let buffer = Buffer {
            addr: GuestAddress(desc.addr.get()),
            len: desc.len.get(),
        };
        // `contains` checks `addr + len` for overflow as well as for RAM.
        if !mem.contains(buffer.addr, u64::from(buffer.len)) {
            return Err(QueueError::DescriptorOutOfRange {
                at,
                addr: buffer.addr,
                len: buffer.len,
            });
        }
        let writable = desc.is_write_only();
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(QueueError::ReadableAfterWritable { at });
        }
        // At most 32768 lengths below 2^32 each: no u64 overflow.
        self.total_len += u64::from(buffer.len);
        if self.total_len > u64::from(u32::MAX) {
            return Err(QueueError::LengthOverflow { head: self.head });
        }
        if buffer.len == 0 {
            return Ok(());
        }
        if writable {
            self.writable.push(buffer);
            self.writable_len += u64::from(buffer.len);
        } else {
            self.readable.push(buffer);
            self.readable_len += u64::from(buffer.len);
        }
        Ok(())
    }

    fn finish(self) -> DescriptorChain {
        DescriptorChain {
            head: self.head,
            readable: self.readable,
            writable: self.writable,
            readable_len: self.readable_len,
            writable_len: self.writable_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};

    use super::*;
    use crate::ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use crate::test_driver::{GuestDriver, RAM};
    use crate::Queue;

    const NEXT: u16 = VIRTQ_DESC_F_NEXT;
    const WRITE: u16 = VIRTQ_DESC_F_WRITE;
    const INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;
    /// Somewhere in RAM for buffers and indirect tables.
    const BUF: u64 = 0x9_0000;
    const TABLE: u64 = 0xa_0000;

    /// Publishes `head` and pops it: the outcome of the chain the test wrote.
    fn pop_head(
        driver: &mut GuestDriver,
        queue: &mut Queue,
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        driver.publish(head);
        queue
            .pop(&driver.mem)
            .map(|chain| chain.expect("a chain was published"))
    }

    fn setup(size: u16) -> (GuestDriver, Queue) {
        let driver = GuestDriver::new(size);
        let queue = driver.queue();
        (driver, queue)
    }

    #[test]
    fn a_buffer_outside_ram_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc(0, BUF, 16, NEXT, 1);
        driver.write_desc(1, RAM - 4, 8, WRITE, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::DescriptorOutOfRange {
                at: DescriptorIndex::Direct(1),
                addr: GuestAddress(a),
                len: 8
            }) if a == RAM - 4
        ));
    }

    #[test]
    fn a_buffer_whose_end_overflows_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc(2, u64::MAX - 3, 8, 0, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 2),
            Err(QueueError::DescriptorOutOfRange {
                at: DescriptorIndex::Direct(2),
                ..
            })
        ));
    }

    #[test]
    fn a_loop_is_found() {
        let (mut driver, mut queue) = setup(8);
        // a -> b -> a
        driver.write_desc(3, BUF, 4, NEXT, 5);
        driver.write_desc(5, BUF, 4, NEXT, 3);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 3),
            Err(QueueError::ChainLoop { head: 3 })
        ));
        // a -> a, writable so that no direction rule fires first.
        driver.write_desc(6, BUF, 4, WRITE | NEXT, 6);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 6),
            Err(QueueError::ChainLoop { head: 6 })
        ));
    }

    #[test]
    fn a_chain_as_long_as_the_queue_is_fine_and_one_longer_is_refused() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        for i in 0..8 {
            driver.write_desc(i, BUF, 1, NEXT, i + 1);
        }
        driver.write_desc(7, BUF, 1, 0, 0);
        assert_eq!(
            pop_head(&mut driver, &mut queue, 0)
                .unwrap()
                .readable()
                .len(),
            8
        );

        // Two direct descriptors and a full indirect table: ten in all.
        for i in 0..8 {
            driver.write_desc_at(TABLE, i, BUF, 1, NEXT, i + 1);
        }
        driver.write_desc_at(TABLE, 7, BUF, 1, 0, 0);
        driver.write_desc(0, BUF, 1, NEXT, 1);
        driver.write_desc(1, BUF, 1, NEXT, 2);
        driver.write_desc(2, TABLE, 8 * 16, INDIRECT, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::ChainTooLong { head: 0, size: 8 })
        ));
    }

    #[test]
    fn a_head_past_the_queue_size_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.publish(8);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::HeadOutOfRange { head: 8, size: 8 })
        ));
        driver.publish(u16::MAX);
        assert!(matches!(
            queue.pop(&driver.mem),
            Err(QueueError::HeadOutOfRange { head: u16::MAX, .. })
        ));
    }

    #[test]
    fn a_next_past_the_queue_size_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc(0, BUF, 4, NEXT, 8);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::NextOutOfRange {
                at: DescriptorIndex::Direct(0),
                next: 8,
                table_len: 8
            })
        ));
    }

    #[test]
    fn a_chain_over_4_gib_is_refused() {
        // 4096 descriptors, each all of the 1 MiB of RAM: 2^32 bytes, one
        // more than a used-ring length can say.
        let (mut driver, mut queue) = setup(8192);
        for i in 0..4096 {
            driver.write_desc(i, 0, RAM as u32, NEXT, i + 1);
        }
        driver.write_desc(4095, 0, RAM as u32, 0, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::LengthOverflow { head: 0 })
        ));
        // One fewer fits.
        driver.write_desc(4094, 0, RAM as u32, 0, 0);
        let chain = pop_head(&mut driver, &mut queue, 0).unwrap();
        assert_eq!(chain.readable_len(), 4095 * RAM);
    }

    #[test]
    fn a_readable_buffer_after_a_writable_one_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc(0, BUF, 4, NEXT, 1);
        driver.write_desc(1, BUF, 4, WRITE | NEXT, 2);
        driver.write_desc(2, BUF, 4, 0, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::ReadableAfterWritable {
                at: DescriptorIndex::Direct(2)
            })
        ));
    }

    #[test]
    fn zero_length_buffers_are_checked_but_not_kept() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc(0, BUF, 0, NEXT, 1);
        driver.write_desc(1, BUF, 4, NEXT, 2);
        driver.write_desc(2, BUF + 4, 0, WRITE | NEXT, 3);
        driver.write_desc(3, BUF + 8, 2, WRITE, 0);
        let chain = pop_head(&mut driver, &mut queue, 0).unwrap();
        assert_eq!(
            chain.readable(),
            [Buffer {
                addr: GuestAddress(BUF),
                len: 4
            }]
        );
        assert_eq!(
            chain.writable(),
            [Buffer {
                addr: GuestAddress(BUF + 8),
                len: 2
            }]
        );
        // Even empty, a buffer must be in RAM and in order.
        driver.write_desc(0, u64::MAX, 0, 0, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::DescriptorOutOfRange { .. })
        ));
    }

    #[test]
    fn indirect_tables_are_followed_once_negotiated() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        driver.mem.write(GuestAddress(BUF), b"request").unwrap();
        driver.write_desc_at(TABLE, 0, BUF, 3, NEXT, 2);
        driver.write_desc_at(TABLE, 2, BUF + 3, 4, NEXT, 1);
        driver.write_desc_at(TABLE, 1, BUF + 0x100, 16, WRITE, 0);
        // A direct readable prefix first (§2.7.5.3.2: devices must handle
        // it); the WRITE flag on the indirect descriptor itself is ignored.
        driver.write_desc(4, BUF, 0, NEXT, 5);
        driver.write_desc(5, TABLE, 3 * 16, INDIRECT | WRITE, 0);
        let chain = pop_head(&mut driver, &mut queue, 4).unwrap();
        assert_eq!(chain.head(), 4);
        let mut request = Vec::new();
        chain.reader(&driver.mem).read_to_end(&mut request).unwrap();
        assert_eq!(request, b"request");
        assert_eq!(
            chain.writable(),
            [Buffer {
                addr: GuestAddress(BUF + 0x100),
                len: 16
            }]
        );
    }

    #[test]
    fn indirect_without_negotiation_is_refused() {
        let (mut driver, mut queue) = setup(8);
        driver.write_desc_at(TABLE, 0, BUF, 4, 0, 0);
        driver.write_desc(1, TABLE, 16, INDIRECT, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 1),
            Err(QueueError::IndirectNotNegotiated { at: 1 })
        ));
    }

    #[test]
    fn nested_indirect_is_refused() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        driver.write_desc_at(TABLE, 0, BUF, 4, NEXT, 1);
        driver.write_desc_at(TABLE, 1, TABLE, 32, INDIRECT, 0);
        driver.write_desc(0, TABLE, 32, INDIRECT, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::NestedIndirect { at: 1 })
        ));
    }

    #[test]
    fn indirect_with_next_is_refused() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        driver.write_desc_at(TABLE, 0, BUF, 4, 0, 0);
        driver.write_desc(0, TABLE, 16, INDIRECT | NEXT, 1);
        driver.write_desc(1, BUF, 4, WRITE, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::IndirectWithNext { at: 0 })
        ));
    }

    #[test]
    fn an_indirect_table_outside_ram_is_refused() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        for addr in [RAM - 16, u64::MAX - 15] {
            driver.write_desc(0, addr, 32, INDIRECT, 0);
            assert!(matches!(
                pop_head(&mut driver, &mut queue, 0),
                Err(QueueError::IndirectTableOutOfRange { at: 0, addr: GuestAddress(a), len: 32 }) if a == addr
            ));
        }
    }

    #[test]
    fn an_indirect_table_of_a_bad_length_is_refused() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        for len in [0, 17, 9 * 16, 0xffff_fff0] {
            driver.write_desc(0, TABLE, len, INDIRECT, 0);
            assert!(
                matches!(
                    pop_head(&mut driver, &mut queue, 0),
                    Err(QueueError::IndirectTableSize { at: 0, len: l, size: 8 }) if l == len
                ),
                "len {len}"
            );
        }
    }

    #[test]
    fn links_inside_an_indirect_table_are_checked() {
        let (mut driver, mut queue) = setup(8);
        queue.set_indirect(true);
        driver.write_desc(0, TABLE, 2 * 16, INDIRECT, 0);
        // next past the table's two entries (though inside the queue size).
        driver.write_desc_at(TABLE, 0, BUF, 4, NEXT, 2);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::NextOutOfRange {
                at: DescriptorIndex::Indirect(0),
                next: 2,
                table_len: 2
            })
        ));
        // A loop inside the table.
        driver.write_desc_at(TABLE, 0, BUF, 4, NEXT, 1);
        driver.write_desc_at(TABLE, 1, BUF, 4, NEXT, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 0),
            Err(QueueError::ChainLoop { head: 0 })
        ));
        // Direction carries over from the direct part into the table.
        driver.write_desc(1, BUF, 4, WRITE | NEXT, 0);
        driver.write_desc_at(TABLE, 0, BUF, 4, 0, 0);
        assert!(matches!(
            pop_head(&mut driver, &mut queue, 1),
            Err(QueueError::ReadableAfterWritable {
                at: DescriptorIndex::Indirect(0)
            })
        ));
    }

    /// xorshift64: enough randomness to shake the walker, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Mostly plausible values, sometimes wild ones.
        fn addr(&mut self) -> u64 {
            match self.below(8) {
                0 => self.next(),
                1 => RAM - self.below(64),
                _ => self.below(RAM),
            }
        }
        fn len(&mut self) -> u32 {
            match self.below(8) {
                0 => self.next() as u32,
                1 => 16 * self.below(20) as u32,
                _ => self.below(256) as u32,
            }
        }
    }

    #[test]
    fn random_rings_never_panic() {
        let mut rng = Rng(0x5eed_1e55_cafe_f00d);
        let driver = GuestDriver::new(16);
        let (mut served, mut refused) = (0, 0);
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..4000 {
            let mut queue = Queue::new(16);
            driver.configure(&mut queue);
            queue.set_size(1 << rng.below(5));
            queue.set_indirect(rng.below(2) == 0);
            queue.set_event_idx(rng.below(2) == 0);
            for i in 0..16 {
                let (addr, len) = (rng.addr(), rng.len());
                let flags = rng.next() as u16 & if rng.below(8) == 0 { 0xffff } else { 7 };
                let next = rng.below(20) as u16;
                driver.write_desc(i, addr, len, flags, next);
                // Indirect descriptors may point here.
                let flags = rng.next() as u16 & 7;
                driver.write_desc_at(TABLE, i, rng.addr(), rng.len(), flags, rng.below(20) as u16);
            }
            for i in 0..16 {
                let head = rng.below(20) as u16;
                driver
                    .mem
                    .write_obj(
                        GuestAddress(driver.avail_ring + 4 + 2 * i),
                        &head.to_le_bytes(),
                    )
                    .unwrap();
            }
            let avail_idx = if rng.below(8) == 0 {
                rng.next() as u16
            } else {
                rng.below(17) as u16
            };
            driver
                .mem
                .write_obj(
                    GuestAddress(driver.avail_ring + 2),
                    &avail_idx.to_le_bytes(),
                )
                .unwrap();

            for _ in 0..20 {
                match queue.pop(&driver.mem) {
                    Ok(Some(chain)) => {
                        served += 1;
                        let size = u64::from(queue.size());
                        assert!((chain.readable().len() + chain.writable().len()) as u64 <= size);
                        assert!(chain.readable_len() + chain.writable_len() <= u64::from(u32::MAX));
                        for b in chain.readable().iter().chain(chain.writable()) {
                            assert!(b.len > 0 && driver.mem.contains(b.addr, u64::from(b.len)));
                        }
                        let read =
                            io::copy(&mut chain.reader(&driver.mem), &mut io::sink()).unwrap();
                        assert_eq!(read, chain.readable_len());
                        let mut writer = chain.writer(&driver.mem);
                        let room = chain.writable_len();
                        io::copy(&mut io::repeat(0xa5).take(room), &mut writer).unwrap();
                        assert_eq!(u64::from(writer.bytes_written()), room);
                        queue
                            .add_used(&driver.mem, chain.head(), writer.bytes_written())
                            .unwrap();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        refused += 1;
                        // Every message renders.
                        assert!(!e.to_string().is_empty());
                        kinds.insert(std::mem::discriminant(&e));
                        if matches!(e, QueueError::AvailIndexJumped { .. }) {
                            // Nothing was consumed: it would say the same again.
                            break;
                        }
                    }
                }
                queue.needs_notification(&driver.mem).unwrap();
                if rng.below(2) == 0 {
                    queue.disable_notification(&driver.mem).unwrap();
                } else {
                    queue.enable_notification(&driver.mem).unwrap();
                }
            }
        }
        // A check that the generator makes both good chains and many kinds
        // of bad ones, rather than one failure over and over.
        assert!(
            served > 500 && refused > 500 && kinds.len() >= 8,
            "served {served}, refused {refused}, {} kinds of error",
            kinds.len()
        );
    }

    #[test]
    fn random_configurations_never_panic() {
        let mut rng = Rng(0xdead_beef_0123_4567);
        let driver = GuestDriver::new(16);
        for _ in 0..4000 {
            let mut queue = Queue::new(16);
            queue.set_size(rng.next() as u16 % 40);
            queue.set_desc_table(rng.addr());
            queue.set_avail_ring(rng.addr());
            queue.set_used_ring(rng.addr());
            queue.set_ready(true);
            let valid = queue.validate(&driver.mem).is_ok();
            let popped = queue.pop(&driver.mem);
            assert_eq!(
                valid,
                !matches!(
                    popped,
                    Err(QueueError::InvalidSize { .. }
                        | QueueError::RingMisaligned { .. }
                        | QueueError::RingOutOfRange { .. })
                )
            );
            let _ = queue.add_used(&driver.mem, rng.next() as u16, rng.next() as u32);
            let _ = queue.needs_notification(&driver.mem);
            let _ = queue.enable_notification(&driver.mem);
        }
    }
}
