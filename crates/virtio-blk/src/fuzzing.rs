//! The request path without the thread, for `fuzz/` (the `fuzzing`
//! feature): a fuzz target lays out a queue in guest memory of its own
//! making and has every chain on it checked (`request.rs`) and executed
//! against a disk it supplies, exactly as the I/O thread does between two
//! doorbells. Nothing here is built into lg.

use std::sync::Arc;

use shadow_mmu::GuestMemory;
use virtqueue::{Queue, QueueError};

use crate::backend::BlockBackend;
use crate::request::DiskLimits;
use crate::worker::DiskIo;
use crate::SECTOR_SIZE;

/// One disk's request server: [`DiskIo`] behind a public face.
pub struct RequestServer(DiskIo);

impl RequestServer {
    /// A server for `backend`, whose size in sectors is its capacity;
    /// `discard` and `write_zeroes` say whether the guest accepted those
    /// features.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        read_only: bool,
        discard: bool,
        write_zeroes: bool,
    ) -> RequestServer {
        let limits = DiskLimits {
            capacity_sectors: backend.size() / SECTOR_SIZE,
            read_only,
            discard,
            write_zeroes,
        };
        RequestServer(DiskIo::new(backend, limits, b"lg-fuzz"))
    }

    /// Serves every chain on `queue`, as one wake-up of the I/O thread
    /// does; returns whether the guest would be interrupted. An error is a
    /// broken queue, which the thread reports as DEVICE_NEEDS_RESET.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        self.0.process_queue(queue, mem)
    }
}
