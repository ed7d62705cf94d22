//! For the tests: what a block request looks like on a queue (its header,
//! its discard segments, the status byte and data of its reply) on top of
//! virtqueue's test guest driver, and disk images in the host's temp
//! directory that clean up after themselves.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use virtqueue::test_driver::{GuestDriver, Layout, Posted};

/// A block request's reply, as the device left it in the writable buffers.
pub trait BlockReply {
    /// The status byte: the last byte of the last writable buffer.
    fn status(&self, driver: &GuestDriver) -> u8;
    /// The bytes of the writable buffers, in order, without the status.
    fn data(&self, driver: &GuestDriver) -> Vec<u8>;
}

impl BlockReply for Posted {
    fn status(&self, driver: &GuestDriver) -> u8 {
        let (addr, len) = *self.writable.last().expect("no writable buffer");
        driver.read_bytes(addr + u64::from(len) - 1, 1)[0]
    }

    fn data(&self, driver: &GuestDriver) -> Vec<u8> {
        let mut data: Vec<u8> = self
            .writable
            .iter()
            .flat_map(|&(addr, len)| driver.read_bytes(addr, len as usize))
            .collect();
        data.pop();
        data
    }
}

/// A request header: type, reserved, sector.
pub fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut bytes = kind.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&sector.to_le_bytes());
    bytes
}

/// A discard / write-zeroes segment: sector, num_sectors, flags.
pub fn segment(sector: u64, num_sectors: u32, flags: u32) -> Vec<u8> {
    let mut bytes = sector.to_le_bytes().to_vec();
    bytes.extend_from_slice(&num_sectors.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes
}

/// A file in the temp directory, unique to this process and call, removed
/// when dropped.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// A file holding `contents`.
    pub fn new(contents: &[u8]) -> TempFile {
        let file = TempFile::unique();
        fs::write(&file.path, contents).unwrap();
        file
    }

    /// A path nothing exists at yet (still removed when dropped).
    pub fn unique() -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lg-virtio-blk-test-{}-{n}", std::process::id()));
        TempFile { path }
    }

    pub fn contents(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.path);
    }
}
