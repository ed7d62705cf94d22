//! The feature bits that change how a virtqueue works (virtio 1.2 §6).
//!
//! The transport offers these, reads back what the driver accepted, and tells
//! each [`Queue`](crate::Queue) through `set_event_idx` and `set_indirect`.
//! They are bit numbers, as in the spec: the mask is `1u64 << bit`. Only the
//! split ring is implemented, so `VIRTIO_F_RING_PACKED` (34) and
//! `VIRTIO_F_IN_ORDER` (35) must not be offered.

/// The driver may put a whole table of descriptors behind one descriptor.
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;

/// Both sides suppress notifications by index (`used_event`, `avail_event`)
/// rather than by flag.
pub const VIRTIO_F_EVENT_IDX: u32 = 29;

/// The device speaks virtio 1.x (little-endian rings, no legacy layout);
/// lg's devices are modern-only, so this is always offered.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Linux's name (`include/uapi/linux/virtio_ring.h`) for
/// [`VIRTIO_F_INDIRECT_DESC`], for readers coming from the kernel.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = VIRTIO_F_INDIRECT_DESC;

/// Linux's name for [`VIRTIO_F_EVENT_IDX`].
pub const VIRTIO_RING_F_EVENT_IDX: u32 = VIRTIO_F_EVENT_IDX;
