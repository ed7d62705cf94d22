//! What the guest lays out in its memory for one split virtqueue (virtio 1.2
//! §2.7), byte for byte: the descriptor table, the available ring, the used
//! ring.
//!
//! The three parts may sit anywhere in guest RAM, each at its own address;
//! the queue only needs each to be aligned and wholly inside RAM. All fields
//! are little-endian in virtio 1.x. lg runs only on x86, where that is also
//! the host's order, but the zerocopy little-endian types say so in the type
//! and cost nothing: `.get()` is a plain load there.
//!
//! ```text
//! descriptor table (align 16)   avail ring (align 2)      used ring (align 4)
//!   [size] { addr: le64,          flags:  le16              flags: le16
//!            len:  le32,          idx:    le16              idx:   le16
//!            flags: le16,         ring:   [size] le16       ring:  [size] { id: le32, len: le32 }
//!            next: le16 }         used_event: le16          avail_event: le16
//! ```

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The largest queue size a split ring can have: the 16-bit ring indices
/// must be able to tell a full ring from an empty one.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The buffer continues in the descriptor named by `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The buffer is for the device to write (otherwise, to read).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer is itself a table of descriptors (VIRTIO_F_INDIRECT_DESC).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// In the avail ring's flags: the guest does not want used-buffer interrupts
/// (honoured only without VIRTIO_F_EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// In the used ring's flags: the device does not want kicks (set only
/// without VIRTIO_F_EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One entry of a descriptor table: a buffer in guest memory.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Descriptor {
    /// Guest-physical address of the buffer (or of an indirect table).
    pub addr: U64,
    /// Its length in bytes.
    pub len: U32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: U16,
    /// The next descriptor of the chain, when `flags` has NEXT.
    pub next: U16,
}

impl Descriptor {
    /// A descriptor with the given fields, in host order.
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr: addr.into(),
            len: len.into(),
            flags: flags.into(),
            next: next.into(),
        }
    }

    /// Whether the chain continues after this descriptor.
    pub fn has_next(&self) -> bool {
        self.flags.get() & VIRTQ_DESC_F_NEXT != 0
    }

    /// Whether the device may write this buffer (and not read it).
    pub fn is_write_only(&self) -> bool {
        self.flags.get() & VIRTQ_DESC_F_WRITE != 0
    }

    /// Whether this descriptor points at a table of descriptors.
    pub fn is_indirect(&self) -> bool {
        self.flags.get() & VIRTQ_DESC_F_INDIRECT != 0
    }
}

/// One entry of the used ring: a chain handed back, and how much of it the
/// device wrote.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct UsedElem {
    /// The head of the chain (a descriptor index; 32 bits only for padding).
    pub id: U32,
    /// Bytes written into the chain's writable buffers.
    pub len: U32,
}

/// Bytes per descriptor, in the queue's table and in indirect tables.
pub(crate) const DESCRIPTOR_SIZE: u64 = std::mem::size_of::<Descriptor>() as u64;

/// Where each field sits, from the table in §2.7: `size` is the queue size.
/// Every offset is below the part's `*_bytes(size)`, so once a part is known
/// to lie inside RAM, `base + offset` cannot overflow.
pub(crate) mod offsets {
    use super::DESCRIPTOR_SIZE;

    pub const DESC_TABLE_ALIGN: u64 = 16;
    pub const AVAIL_RING_ALIGN: u64 = 2;
    pub const USED_RING_ALIGN: u64 = 4;

    pub fn desc_table_bytes(size: u16) -> u64 {
        DESCRIPTOR_SIZE * u64::from(size)
    }
    pub fn descriptor(index: u16) -> u64 {
        DESCRIPTOR_SIZE * u64::from(index)
    }

    pub const AVAIL_FLAGS: u64 = 0;
    pub const AVAIL_IDX: u64 = 2;
    pub fn avail_ring_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }
    pub fn avail_entry(slot: u16) -> u64 {
        4 + 2 * u64::from(slot)
    }
    pub fn used_event(size: u16) -> u64 {
        4 + 2 * u64::from(size)
    }

    pub const USED_FLAGS: u64 = 0;
    pub const USED_IDX: u64 = 2;
    pub fn used_ring_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }
    pub fn used_elem(slot: u16) -> u64 {
        4 + 8 * u64::from(slot)
    }
    pub fn avail_event(size: u16) -> u64 {
        4 + 8 * u64::from(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_spec() {
        assert_eq!(std::mem::size_of::<Descriptor>(), 16);
        assert_eq!(std::mem::size_of::<UsedElem>(), 8);
        let d = Descriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 3, 7);
        assert_eq!(
            d.as_bytes(),
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xcc, 0xbb, 0xaa, 0x99, 3, 0, 7, 0]
        );
        assert!(d.has_next() && d.is_write_only() && !d.is_indirect());
        assert_eq!(offsets::avail_ring_bytes(256), 518);
        assert_eq!(offsets::used_ring_bytes(256), 2054);
    }
}
