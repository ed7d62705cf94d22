//! Every way a guest can get a virtqueue wrong, each with the index or
//! address that lets whoever reads the log find the guest's bug.
//!
//! A [`QueueError`] means the guest broke the ring protocol: the transport
//! should set DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) rather than guess what
//! the guest meant. A [`ChainError`] is smaller: a well-formed chain whose
//! buffers are too short for what the device wanted to read or write, which
//! the device answers with its own error status.

use std::fmt;

use shadow_mmu::{GuestAddress, MemoryError};

/// One of the three parts of a split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    Descriptors,
    Avail,
    Used,
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ring::Descriptors => "descriptor table",
            Ring::Avail => "available ring",
            Ring::Used => "used ring",
        })
    }
}

/// Where a faulty descriptor sits: in the queue's own table, or in the
/// indirect table a chain points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorIndex {
    Direct(u16),
    Indirect(u16),
}

impl fmt::Display for DescriptorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorIndex::Direct(i) => write!(f, "descriptor {i}"),
            DescriptorIndex::Indirect(i) => write!(f, "indirect descriptor {i}"),
        }
    }
}

/// Why a queue cannot be used, or what is wrong with what the guest put in it.
#[derive(Debug)]
pub enum QueueError {
    /// The device used the queue before the guest enabled it.
    NotReady,
    /// The queue size is zero, not a power of two, or above the maximum.
    InvalidSize { size: u16, max: u16 },
    /// A ring's address is not a multiple of its alignment.
    RingMisaligned {
        ring: Ring,
        addr: GuestAddress,
        align: u64,
    },
    /// A ring does not lie wholly inside guest RAM.
    RingOutOfRange {
        ring: Ring,
        addr: GuestAddress,
        len: u64,
    },
    /// The used ring (which the device writes) shares bytes with `other`
    /// (which the device reads), so the device's own writes would change
    /// what it reads next.
    RingsOverlap { other: Ring, used: GuestAddress },
    /// `avail.idx` is further ahead of the device than the ring has entries.
    AvailIndexJumped {
        avail_idx: u16,
        next_avail: u16,
        size: u16,
    },
    /// The avail ring names a head past the end of the descriptor table.
    HeadOutOfRange { head: u16, size: u16 },
    /// A descriptor's `next` is past the end of its table.
    NextOutOfRange {
        at: DescriptorIndex,
        next: u16,
        table_len: u16,
    },
    /// Following `next` visited more descriptors than the table holds, so
    /// the chain comes back on itself.
    ChainLoop { head: u16 },
    /// The chain, counting indirect descriptors, is longer than the queue.
    ChainTooLong { head: u16, size: u16 },
    /// A buffer does not lie wholly inside guest RAM (or `addr + len`
    /// overflows).
    DescriptorOutOfRange {
        at: DescriptorIndex,
        addr: GuestAddress,
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (§2.7.4).
    ReadableAfterWritable { at: DescriptorIndex },
    /// The chain's buffers add up to more than the 32-bit used length.
    LengthOverflow { head: u16 },
    /// An INDIRECT descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated.
    IndirectNotNegotiated { at: u16 },
    /// A descriptor has both INDIRECT and NEXT (§2.7.5.3.1).
    IndirectWithNext { at: u16 },
    /// An indirect table contains another INDIRECT descriptor.
    NestedIndirect { at: u16 },
    /// An indirect table's length is zero, not whole descriptors, or more
    /// descriptors than the queue size.
    IndirectTableSize { at: u16, len: u32, size: u16 },
    /// An indirect table does not lie wholly inside guest RAM.
    IndirectTableOutOfRange {
        at: u16,
        addr: GuestAddress,
        len: u32,
    },
    /// The device returned a head that cannot be one: lg's bug, not the
    /// guest's.
    UsedHeadOutOfRange { head: u16, size: u16 },
    /// Guest memory refused an access to a ring that had been checked; kept
    /// rather than unwrapped so that even a bug here cannot panic lg.
    Memory(MemoryError),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::NotReady => write!(f, "the queue was used before the guest enabled it"),
            QueueError::InvalidSize { size, max } => write!(
                f,
                "queue size {size} is not a non-zero power of two no larger than {max}"
            ),
            QueueError::RingMisaligned { ring, addr, align } => {
                write!(f, "the {ring} at {addr} is not {align}-byte aligned")
            }
            QueueError::RingOutOfRange { ring, addr, len } => {
                write!(f, "the {ring} ({len} bytes at {addr}) is not inside guest RAM")
            }
            QueueError::RingsOverlap { other, used } => write!(
                f,
                "the used ring at {used} overlaps the {other}, which the device reads"
            ),
            QueueError::AvailIndexJumped {
                avail_idx,
                next_avail,
                size,
            } => write!(
                f,
                "avail.idx {avail_idx} claims more than {size} new buffers after index {next_avail}"
            ),
            QueueError::HeadOutOfRange { head, size } => {
                write!(f, "the avail ring names head {head}, past the queue size {size}")
            }
            QueueError::NextOutOfRange {
                at,
                next,
                table_len,
            } => write!(
                f,
                "{at} chains to {next}, past the end of its {table_len}-entry table"
            ),
            QueueError::ChainLoop { head } => {
                write!(f, "the chain at head {head} loops back on itself")
            }
            QueueError::ChainTooLong { head, size } => write!(
                f,
                "the chain at head {head} has more descriptors than the queue size {size}"
            ),
            QueueError::DescriptorOutOfRange { at, addr, len } => {
                write!(f, "{at} ({len} bytes at {addr}) is not inside guest RAM")
            }
            QueueError::ReadableAfterWritable { at } => write!(
                f,
                "{at} is device-readable but follows a device-writable descriptor"
            ),
            QueueError::LengthOverflow { head } => write!(
                f,
                "the chain at head {head} holds more than 4 GiB - 1 bytes in total"
            ),
            QueueError::IndirectNotNegotiated { at } => write!(
                f,
                "descriptor {at} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated"
            ),
            QueueError::IndirectWithNext { at } => {
                write!(f, "descriptor {at} has both the INDIRECT and NEXT flags")
            }
            QueueError::NestedIndirect { at } => write!(
                f,
                "indirect descriptor {at} points to another indirect table"
            ),
            QueueError::IndirectTableSize { at, len, size } => write!(
                f,
                "descriptor {at} points to a {len}-byte indirect table, which is not 1 to {size} whole descriptors"
            ),
            QueueError::IndirectTableOutOfRange { at, addr, len } => write!(
                f,
                "descriptor {at} points to an indirect table ({len} bytes at {addr}) not inside guest RAM"
            ),
            QueueError::UsedHeadOutOfRange { head, size } => write!(
                f,
                "the device returned head {head}, past the queue size {size}"
            ),
            QueueError::Memory(e) => write!(f, "cannot access a checked ring: {e}"),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> QueueError {
        QueueError::Memory(e)
    }
}

/// Why a device could not read or write what it wanted in a valid chain.
#[derive(Debug)]
pub enum ChainError {
    /// The readable buffers hold fewer bytes than the device asked for.
    NotEnoughData { wanted: usize, available: u64 },
    /// The writable buffers have less room than the device tried to write.
    WouldOverflow { wanted: usize, available: u64 },
    /// Guest memory refused an access to a buffer that had been checked.
    Memory(MemoryError),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::NotEnoughData { wanted, available } => write!(
                f,
                "the device wanted to read {wanted} bytes but the chain has {available} readable bytes left"
            ),
            ChainError::WouldOverflow { wanted, available } => write!(
                f,
                "the device wanted to write {wanted} bytes but the chain has room for {available}"
            ),
            ChainError::Memory(e) => write!(f, "cannot access a checked buffer: {e}"),
        }
    }
}

impl std::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChainError::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for ChainError {
    fn from(e: MemoryError) -> ChainError {
        ChainError::Memory(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_culprit() {
        let e = QueueError::DescriptorOutOfRange {
            at: DescriptorIndex::Indirect(3),
            addr: GuestAddress(0x10_0000),
            len: 16,
        };
        assert_eq!(
            e.to_string(),
            "indirect descriptor 3 (16 bytes at 0x100000) is not inside guest RAM"
        );
        let e = QueueError::RingMisaligned {
            ring: Ring::Used,
            addr: GuestAddress(0x1002),
            align: 4,
        };
        assert_eq!(
            e.to_string(),
            "the used ring at 0x1002 is not 4-byte aligned"
        );
    }
}
