//! # virtio-blk: the guest's `/dev/vda`
//!
//! A Linux developer's guest wants a disk: a root filesystem image, or a
//! scratch disk to run `mkfs` and `fio` on. lg gives it one virtio-blk device
//! (virtio 1.2 §5.2) per `--block` option, backed by a host file or a host
//! block device. The guest puts requests on one virtqueue; each is a chain
//! holding a 16-byte header (type, sector), the data, and a status byte for
//! lg to fill in. lg serves them on an I/O thread of the device's own, so a
//! vCPU's kick costs the vCPU nothing but an eventfd write.
//!
//! Reading order:
//! - `config.rs`: what `--block PATH[,ro][,direct]` means.
//! - `backend.rs`: opening the file or device (and every way that can fail,
//!   in `error.rs`), and [`BlockBackend`], the small trait the file I/O sits
//!   behind so that an io_uring engine can replace the synchronous one.
//! - `request.rs`: the one place a descriptor chain becomes a checked
//!   `BlockRequest`. Everything after it trusts the lengths and sectors.
//! - `worker.rs`: the I/O thread and the batch loop that executes requests
//!   and tells the guest once per batch.
//! - `device.rs`: [`VirtioBlock`], what the transport sees: features, the
//!   configuration space (capacity, limits), activation and reset.

mod backend;
mod config;
mod device;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod request;
mod worker;

#[cfg(test)]
mod test_driver;

pub use backend::{BlockBackend, FileBackend};
pub use config::BlockConfig;
pub use device::VirtioBlock;
pub use error::{BlockConfigError, BlockError};

/// Every sector is 512 bytes: what virtio-blk's `sector` fields count in,
/// whatever the host disk's own block size.
pub const SECTOR_SIZE: u64 = 512;
