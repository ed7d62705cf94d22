//! The disk as the virtio-pci transport sees it: what it offers, what its
//! configuration space says, and starting and stopping its I/O thread.
//!
//! The configuration space is `struct virtio_blk_config` (virtio 1.2
//! §5.2.4, Linux's `include/uapi/linux/virtio_blk.h`); lg fills in the
//! fields of the features it offers and leaves the rest zero:
//!
//! ```text
//!  0 capacity u64          (512-byte sectors)     32 writeback u8, unused u8
//!  8 size_max u32          (not offered)          34 num_queues u16
//! 12 seg_max u32           (queue size - 2)       36 max_discard_sectors u32
//! 16 geometry 4 bytes      (not offered)          40 max_discard_seg u32
//! 20 blk_size u32          (512)                  44 discard_sector_alignment u32
//! 24 topology 8 bytes      (not offered)          48 max_write_zeroes_sectors u32
//!                                                 52 max_write_zeroes_seg u32
//!                                                 56 write_zeroes_may_unmap u8
//! ```
//!
//! `seg_max` is the queue size less the header and status descriptors, so
//! that Linux never builds a chain longer than the queue (which the
//! virtqueue crate refuses). It assumes the guest keeps the maximum queue
//! size, as Linux does.
//!
//! FLUSH is offered, so Linux treats the disk as having a volatile write
//! cache (the host's page cache is one) and sends FLUSH for `fsync`; lg
//! answers with `fdatasync`.

use std::path::Path;
use std::sync::Arc;

use virtio_pci::{copy_config, ActivateError, Activation, IoThread, VirtioDevice};

use crate::backend::{BlockBackend, FileBackend};
use crate::config::BlockConfig;
use crate::error::BlockError;
use crate::request::{
    DiskLimits, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_ID_BYTES,
};
use crate::worker::{BlockIo, DiskIo};
use crate::SECTOR_SIZE;

/// The virtio device id of a block device.
const VIRTIO_ID_BLOCK: u16 = 2;

/// Feature bits (§5.2.3).
pub(crate) const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub(crate) const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub(crate) const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub(crate) const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub(crate) const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub(crate) const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// One request queue of 256 descriptors, Linux's usual size.
const QUEUE_SIZES: [u16; 1] = [256];
const REQUEST_QUEUE: u16 = 0;

/// Offsets in `struct virtio_blk_config`.
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;
const CONFIG_NUM_QUEUES: usize = 34;
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;
const CONFIG_MAX_DISCARD_SEG: usize = 40;
const CONFIG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const CONFIG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const CONFIG_MAX_WRITE_ZEROES_SEG: usize = 52;
const CONFIG_WRITE_ZEROES_MAY_UNMAP: usize = 56;
/// Up to and including `write_zeroes_may_unmap` and its padding; the
/// secure-erase and zoned fields after it are for features lg does not
/// offer, and read as zero anyway.
const CONFIG_LEN: usize = 60;

/// Discards are aligned to 8 sectors (4 KiB): the block size of the
/// filesystems disk images live on, so a discard can free whole blocks.
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// A virtio-blk disk backed by a host file or block device.
pub struct VirtioBlock {
    backend: Arc<dyn BlockBackend>,
    read_only: bool,
    serial: Vec<u8>,
    worker: Option<IoThread>,
}

impl VirtioBlock {
    /// Opens the backing file or host block device (read-only when asked,
    /// `O_DIRECT` when asked), finds its size, and refuses a size that is
    /// zero or not a multiple of 512.
    pub fn open(config: &BlockConfig) -> Result<VirtioBlock, BlockError> {
        let backend = FileBackend::open(config)?;
        Ok(VirtioBlock::with_backend(
            Arc::new(backend),
            config.read_only,
            &serial_for(&config.path),
        ))
    }

    /// A disk over any engine. `serial` is cut to 20 bytes.
    pub fn with_backend(
        backend: Arc<dyn BlockBackend>,
        read_only: bool,
        serial: &[u8],
    ) -> VirtioBlock {
        VirtioBlock {
            backend,
            read_only,
            serial: serial[..serial.len().min(VIRTIO_BLK_ID_BYTES)].to_vec(),
            worker: None,
        }
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.backend.size() / SECTOR_SIZE
    }

    /// The serial number GET_ID returns (and Linux shows in
    /// `/sys/block/vda/serial` and `/dev/disk/by-id/virtio-*`).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// Whether the guest sees a read-only disk.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(CONFIG_CAPACITY, &self.capacity_sectors().to_le_bytes());
        let seg_max = u32::from(QUEUE_SIZES[0]) - 2;
        put(CONFIG_SEG_MAX, &seg_max.to_le_bytes());
        put(CONFIG_BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        put(CONFIG_NUM_QUEUES, &(QUEUE_SIZES.len() as u16).to_le_bytes());
        if !self.read_only {
            put(
                CONFIG_MAX_DISCARD_SECTORS,
                &MAX_DISCARD_SECTORS.to_le_bytes(),
            );
            put(CONFIG_MAX_DISCARD_SEG, &1u32.to_le_bytes());
            put(
                CONFIG_DISCARD_SECTOR_ALIGNMENT,
                &DISCARD_SECTOR_ALIGNMENT.to_le_bytes(),
            );
            put(
                CONFIG_MAX_WRITE_ZEROES_SECTORS,
                &MAX_WRITE_ZEROES_SECTORS.to_le_bytes(),
            );
            put(CONFIG_MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
            put(CONFIG_WRITE_ZEROES_MAY_UNMAP, &[1]);
        }
        config
    }
}

impl Drop for VirtioBlock {
    fn drop(&mut self) {
        self.reset();
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x01, 0x80) // mass storage controller, other
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let base = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            base | VIRTIO_BLK_F_RO
        } else {
            base | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.config_space(), offset, data);
    }

    // write_config: the default, ignoring writes. The only writable field,
    // `writeback`, needs VIRTIO_BLK_F_CONFIG_WCE, which lg does not offer.

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let queue = activation
            .take_queue(REQUEST_QUEUE)
            .ok_or_else(|| ActivateError("virtio-blk started without its request queue".into()))?;
        let accepted = |bit: u64| activation.features & bit != 0;
        let limits = DiskLimits {
            capacity_sectors: self.capacity_sectors(),
            read_only: self.read_only,
            discard: !self.read_only && accepted(VIRTIO_BLK_F_DISCARD),
            write_zeroes: !self.read_only && accepted(VIRTIO_BLK_F_WRITE_ZEROES),
        };
        let io = BlockIo {
            memory: activation.memory,
            interrupt: activation.interrupt,
            queue,
            disk: DiskIo::new(Arc::clone(&self.backend), limits, &self.serial),
        };
        self.worker = Some(IoThread::spawn(
            "virtio-blk",
            "the disk's I/O thread",
            activation.io_thread_start,
            move |stop| io.run(stop),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// The serial for the disk at `path`: "lg-" and 16 hex digits of a hash of
/// its canonical path, so the same disk keeps its `/dev/disk/by-id` name
/// across runs and however the path was spelt.
///
/// The hash is FNV-1a, written out here rather than std's `DefaultHasher`,
/// whose output may change between Rust releases and so between lg builds.
fn serial_for(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in canonical.as_os_str().as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lg-{hash:016x}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_driver::TempFile;

    fn disk(file: &TempFile, options: &str) -> VirtioBlock {
        let value = format!("{}{options}", file.path.display());
        VirtioBlock::open(&value.parse().unwrap()).unwrap()
    }

    fn config_u32(device: &VirtioBlock, offset: u64) -> u32 {
        let mut bytes = [0; 4];
        device.read_config(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    #[test]
    fn the_config_space_describes_the_disk() {
        let file = TempFile::new(&vec![0; 3 * 1024 * 1024]);
        let device = disk(&file, "");
        assert_eq!(device.device_type(), 2);
        assert_eq!(device.pci_class(), (0x01, 0x80));
        assert_eq!(device.queue_max_sizes(), &[256]);
        assert_eq!(device.capacity_sectors(), 6144);

        let mut capacity = [0; 8];
        device.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 6144);
        assert_eq!(config_u32(&device, 12), 254); // seg_max
        assert_eq!(config_u32(&device, 20), 512); // blk_size
        let mut num_queues = [0; 2];
        device.read_config(34, &mut num_queues);
        assert_eq!(u16::from_le_bytes(num_queues), 1);
        assert_eq!(config_u32(&device, 36), MAX_DISCARD_SECTORS);
        assert_eq!(config_u32(&device, 40), 1); // max_discard_seg
        assert_eq!(config_u32(&device, 44), 8); // discard_sector_alignment
        assert_eq!(config_u32(&device, 48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(config_u32(&device, 52), 1); // max_write_zeroes_seg
        let mut may_unmap = [0; 1];
        device.read_config(56, &mut may_unmap);
        assert_eq!(may_unmap, [1]);
        // Past the end, and at absurd offsets, zeros.
        assert_eq!(config_u32(&device, 60), 0);
        assert_eq!(config_u32(&device, u64::MAX - 1), 0);

        let features = device.features();
        for bit in [2, 6, 9, 13, 14] {
            assert_ne!(features & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(features & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn a_read_only_disk_says_so_and_offers_no_discard() {
        let file = TempFile::new(&[0; 4096]);
        let device = disk(&file, ",ro");
        assert!(device.read_only());
        let features = device.features();
        assert_ne!(features & VIRTIO_BLK_F_RO, 0);
        assert_eq!(
            features & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
        assert_eq!(config_u32(&device, 36), 0);
        assert_eq!(config_u32(&device, 20), 512);
    }

    #[test]
    fn the_serial_is_stable_per_path_and_fits_get_id() {
        let file = TempFile::new(&[0; 512]);
        let first = disk(&file, ",ro").serial().to_vec();
        assert!(first.starts_with(b"lg-") && first.len() <= VIRTIO_BLK_ID_BYTES);
        assert_eq!(first.len(), 19);
        // The same file by another spelling of its path.
        let dir = file.path.parent().unwrap();
        let name = file.path.file_name().unwrap();
        let other = dir.join(".").join(name);
        let again = VirtioBlock::open(&BlockConfig {
            path: other,
            read_only: true,
            direct: false,
        })
        .unwrap();
        assert_eq!(again.serial(), first);
        let other_file = TempFile::new(&[0; 512]);
        assert_ne!(disk(&other_file, ",ro").serial(), first);
        // Fixed forever: a guest's /dev/disk/by-id names must not change
        // when lg is rebuilt. (FNV-1a 64 of "a" is af63dc4c8601ec8c; a path
        // that does not exist is hashed as given.)
        assert_eq!(serial_for(Path::new("a")), b"lg-af63dc4c8601ec8c");
    }

    #[test]
    fn a_guest_kicks_and_the_io_thread_answers() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        use pci::PciFunction;
        use shadow_mmu::GuestMemory;
        use virtio_pci::common_config::{offset, status};
        use virtio_pci::{fake_hooks, VirtioPciDevice};

        use crate::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
        use crate::test_driver::{header, BlockReply, GuestDriver, Layout};

        let file = TempFile::new(&vec![0; 64 * 1024]);
        let memory = Arc::new(GuestMemory::new(1 << 20).unwrap());
        let pin = Arc::new(AtomicBool::new(false));
        let mut transport = VirtioPciDevice::new(
            Box::new(disk(&file, "")),
            Arc::clone(&memory),
            0xc000_0000,
            Arc::new(fake_hooks::Hooks),
            Box::new(fake_hooks::Pin(Arc::clone(&pin))),
            11,
        )
        .unwrap();
        let mut write = |at: u64, bytes: &[u8]| transport.bar_write(0, at, bytes);
        let u32_at = |value: u64| (value as u32).to_le_bytes();

        // Linux's probe, in order: status, features, queue, DRIVER_OK.
        write(
            offset::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER],
        );
        let accepted = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
        write(offset::DRIVER_FEATURE_SELECT, &0u32.to_le_bytes());
        write(offset::DRIVER_FEATURE, &u32_at(accepted));
        write(offset::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        write(offset::DRIVER_FEATURE, &1u32.to_le_bytes()); // VERSION_1
        let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(offset::DEVICE_STATUS, &[features_ok]);
        let mut driver = GuestDriver::in_memory(Arc::clone(&memory), 16, Layout::ONLY_QUEUE);
        write(offset::QUEUE_SELECT, &0u16.to_le_bytes());
        write(offset::QUEUE_SIZE, &16u16.to_le_bytes());
        write(offset::QUEUE_DESC, &u32_at(driver.desc_table));
        write(offset::QUEUE_DRIVER, &u32_at(driver.avail_ring));
        write(offset::QUEUE_DEVICE, &u32_at(driver.used_ring));
        write(offset::QUEUE_ENABLE, &1u16.to_le_bytes());
        write(offset::DEVICE_STATUS, &[features_ok | status::DRIVER_OK]);

        let mut roundtrip = |readable: &[&[u8]], writable: &[u32]| {
            let posted = driver.add_chain(readable, writable);
            pin.store(false, Ordering::SeqCst);
            write(0x3000, &0u16.to_le_bytes()); // queue 0's doorbell
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pin.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "no interrupt from the disk");
                std::thread::sleep(Duration::from_millis(1));
            }
            let used = driver.take_used().expect("an interrupt but nothing used");
            (posted.status(&driver), posted.data(&driver), used.1)
        };
        let data = vec![0x42; 1024];
        let (status, _, used) = roundtrip(&[&header(VIRTIO_BLK_T_OUT, 4), &data], &[1]);
        assert_eq!((status, used), (0, 1));
        let (status, read, used) = roundtrip(&[&header(VIRTIO_BLK_T_IN, 4)], &[1024, 1]);
        assert_eq!((status, used), (0, 1025));
        assert_eq!(read, data);
        assert_eq!(&file.contents()[2048..3072], &data[..]);

        // Reset stops and joins the thread.
        write(offset::DEVICE_STATUS, &[0]);
    }
}
