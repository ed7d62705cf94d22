//! # virtqueue: where the guest's requests come in
//!
//! lguest invented virtio so that a guest could talk to its host through
//! plain memory instead of emulated hardware, and the virtqueue is the whole
//! trick: the guest lays out a table of buffer descriptors, an "available"
//! ring of requests and a "used" ring of replies in its own RAM, tells the
//! host where they are, and from then on the two sides pass buffers by
//! writing indices. This crate is the host's half of that split virtqueue
//! (virtio 1.2 §2.7): the virtio-pci transport owns one [`Queue`] per
//! virtqueue and configures it from the guest's writes; a device (console,
//! block, net, rng) pops [`DescriptorChain`]s from it on its own thread and
//! hands them back with [`Queue::add_used`].
//!
//! Everything in the rings is written by the guest, and so is hostile until
//! checked. The checking happens in one place, `chain.rs`, which walks a
//! chain and turns it into a [`DescriptorChain`]: buffers known to lie in
//! guest RAM, readable ones before writable ones, a bounded count and a total
//! that fits in the used ring's 32-bit length. Devices never see a raw
//! descriptor; they read requests through a [`Reader`] and write replies
//! through a [`Writer`], which cannot reach a buffer of the wrong direction.
//!
//! Reading order: `ring.rs` (what the guest lays out), `queue.rs` (the
//! indices and notifications), `chain.rs` (the checking), `bytes.rs` (what a
//! device does with a chain), `error.rs` (every way a guest can get it
//! wrong).
//!
//! The `test-util` feature exports `test_driver`, the tests' guest driver,
//! so that the devices' tests drive their queues with this crate's own.

mod bytes;
mod chain;
mod error;
pub mod features;
mod queue;
pub mod ring;

#[cfg(any(test, feature = "test-util"))]
pub mod test_driver;

pub use bytes::{Reader, Writer};
pub use chain::{Buffer, DescriptorChain};
pub use error::{ChainError, DescriptorIndex, QueueError, Ring};
pub use queue::Queue;
