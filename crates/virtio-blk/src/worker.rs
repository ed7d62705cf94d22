//! The disk's I/O thread: where requests are executed, off the vCPUs.
//!
//! The thread sleeps in `poll` on two eventfds: the queue's doorbell (which
//! KVM signals when the guest kicks, without a VM exit to lg) and a stop
//! signal from reset. Woken, it drains the queue in one batch
//! ([`DiskIo::process_queue`]): pop a chain, check it (`request.rs`), do
//! the I/O, write the status, add it to the used ring; and only when the
//! queue is empty, decide once whether the guest wants an interrupt. While
//! draining it asks the guest not to kick, and re-checks after asking again
//! so that a request added in that window is not left waiting.
//!
//! A host I/O error fails only the request it happened in (IOERR); the
//! device keeps serving. A broken *queue* (a chain that loops, a ring
//! outside RAM) is the guest breaking the protocol: the device reports
//! DEVICE_NEEDS_RESET and the thread stops, as the console's does.

use std::io::Read;
use std::sync::Arc;

use shadow_mmu::GuestMemory;
use virtio_pci::{wait_for_work, ActiveQueue, Interrupt};
use virtqueue::{DescriptorChain, Queue, QueueError};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{BlockBackend, BounceBuffer};
use crate::request::{
    BlockRequest, DiskLimits, Operation, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};

/// What executing requests needs: the storage, the limits requests are
/// checked against, the serial number, and a buffer to copy through.
pub(crate) struct DiskIo {
    backend: Arc<dyn BlockBackend>,
    limits: DiskLimits,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    bounce: BounceBuffer,
    /// Whether a refused request has been logged at warning level: the
    /// first one is worth a developer's attention, a stream of them is not.
    warned: bool,
}

impl DiskIo {
    /// `serial` is NUL-padded (or cut) to 20 bytes, as GET_ID returns it.
    pub fn new(backend: Arc<dyn BlockBackend>, limits: DiskLimits, serial: &[u8]) -> DiskIo {
        let mut padded = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = serial.len().min(VIRTIO_BLK_ID_BYTES);
        padded[..n].copy_from_slice(&serial[..n]);
        DiskIo {
            backend,
            limits,
            serial: padded,
            bounce: BounceBuffer::new(BounceBuffer::DEFAULT_BYTES),
            warned: false,
        }
    }

    /// Serves every request the guest has made available, and returns
    /// whether the guest should now be interrupted.
    ///
    /// An error is the guest breaking the queue protocol; the caller should
    /// report the device broken.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        let mut completed = false;
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = queue.pop(mem)? {
                let (head, used) = self.serve(chain, mem);
                queue.add_used(mem, head, used)?;
                completed = true;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        Ok(completed && queue.needs_notification(mem)?)
    }

    /// Checks and executes one request; returns the head and used length.
    fn serve(&mut self, chain: DescriptorChain, mem: &GuestMemory) -> (u16, u32) {
        match BlockRequest::parse(chain, mem, &self.limits) {
            Ok(request) => {
                let (status, written) = self.execute(&request, mem);
                request.complete(mem, status, written)
            }
            Err(refusal) => {
                let level = if self.warned {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                self.warned = true;
                log::log!(level, "virtio-blk: refused a request: {}", refusal.error);
                refusal.complete(mem)
            }
        }
    }

    /// Does the I/O; returns the status and the data bytes written into
    /// the guest's buffers.
    fn execute(&mut self, request: &BlockRequest, mem: &GuestMemory) -> (u8, u32) {
        let backend = &*self.backend;
        let result = match request.operation() {
            Operation::Read { offset, len } => {
                return self.read(request, mem, offset, len);
            }
            Operation::Write { offset, len } => self.write(request, mem, offset, len),
            Operation::Flush => backend.flush(),
            Operation::GetId { len } => {
                let mut writer = request.data_writer(mem);
                let status = match writer.write_slice(&self.serial[..len as usize]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                };
                return (status, writer.bytes_written());
            }
            Operation::Discard { offset, len } => backend.discard(offset, len),
            Operation::WriteZeroes { offset, len, unmap } => {
                backend.write_zeroes(offset, len, unmap)
            }
        };
        match result {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(e) => {
                log::warn!("virtio-blk: {:?} failed: {e}", request.operation());
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    /// Reads from the disk into the guest's buffers, a bounce buffer at a
    /// time.
    fn read(
        &mut self,
        request: &BlockRequest,
        mem: &GuestMemory,
        offset: u64,
        len: u32,
    ) -> (u8, u32) {
        let mut writer = request.data_writer(mem);
        let buf = self.bounce.bytes();
        let mut done: u64 = 0;
        while done < u64::from(len) {
            let n = buf.len().min((u64::from(len) - done) as usize);
            if let Err(e) = self.backend.read_at(&mut buf[..n], offset + done) {
                log::warn!("virtio-blk: reading {len} bytes at {offset} failed: {e}");
                return (VIRTIO_BLK_S_IOERR, writer.bytes_written());
            }
            // The request was checked to have `len` bytes of room.
            if writer.write_slice(&buf[..n]).is_err() {
                return (VIRTIO_BLK_S_IOERR, writer.bytes_written());
            }
            done += n as u64;
        }
        (VIRTIO_BLK_S_OK, writer.bytes_written())
    }

    /// Writes the guest's data to the disk, a bounce buffer at a time.
    fn write(
        &mut self,
        request: &BlockRequest,
        mem: &GuestMemory,
        offset: u64,
        len: u32,
    ) -> std::io::Result<()> {
        let mut reader = request.data_reader(mem);
        let buf = self.bounce.bytes();
        let mut done: u64 = 0;
        while done < u64::from(len) {
            let n = buf.len().min((u64::from(len) - done) as usize);
            reader.read_exact(&mut buf[..n])?;
            self.backend.write_at(&buf[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The I/O thread's state.
pub(crate) struct BlockIo {
    pub memory: Arc<GuestMemory>,
    pub interrupt: Arc<Interrupt>,
    pub queue: ActiveQueue,
    pub disk: DiskIo,
}

impl BlockIo {
    /// Serves the queue until `stop` fires.
    pub fn run(mut self, stop: EventFd) {
        loop {
            // Work first: the guest may have kicked before the thread
            // started waiting.
            match self.disk.process_queue(&mut self.queue.queue, &self.memory) {
                Ok(true) => self.interrupt.signal_used(self.queue.index),
                Ok(false) => {}
                Err(e) => {
                    self.interrupt.report_broken(&e.to_string());
                    return;
                }
            }
            if !wait_for_work(
                &stop,
                &[&self.queue.kick],
                &self.interrupt,
                "the I/O thread",
            ) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::backend::FileBackend;
    use crate::config::BlockConfig;
    use crate::request::{
        VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    use crate::test_driver::{header, segment, BlockReply, GuestDriver, Posted, TempFile};

    const IOERR: u8 = VIRTIO_BLK_S_IOERR;
    const OK: u8 = VIRTIO_BLK_S_OK;

    /// A disk, a guest driver and the device's queue, served synchronously.
    struct Bench {
        driver: GuestDriver,
        queue: Queue,
        disk: DiskIo,
    }

    impl Bench {
        fn new(backend: Arc<dyn BlockBackend>, read_only: bool) -> Bench {
            let limits = DiskLimits {
                capacity_sectors: backend.size() / 512,
                read_only,
                discard: true,
                write_zeroes: true,
            };
            let driver = GuestDriver::new(16);
            let queue = driver.queue();
            Bench {
                driver,
                queue,
                disk: DiskIo::new(backend, limits, b"lg-test-serial"),
            }
        }

        fn file(file: &TempFile, read_only: bool) -> Bench {
            let config = BlockConfig {
                path: file.path.clone(),
                read_only,
                direct: false,
            };
            Bench::new(Arc::new(FileBackend::open(&config).unwrap()), read_only)
        }

        /// Puts one request on the queue, serves the queue, and returns what
        /// the guest sees: the chain, its status byte, its used length.
        fn submit(&mut self, readable: &[&[u8]], writable: &[u32]) -> (Posted, u8, u32) {
            let posted = self.driver.add_chain(readable, writable);
            assert!(self.serve());
            let (id, used) = self
                .driver
                .take_used()
                .expect("the request was not completed");
            assert_eq!(id, u32::from(posted.head));
            let status = if posted.writable.is_empty() {
                0xff
            } else {
                posted.status(&self.driver)
            };
            (posted, status, used)
        }

        fn serve(&mut self) -> bool {
            self.disk
                .process_queue(&mut self.queue, &self.driver.mem)
                .unwrap()
        }

        fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
            let (posted, status, used) =
                self.submit(&[&header(VIRTIO_BLK_T_IN, sector)], &[len, 1]);
            let data = posted.data(&self.driver);
            if status == OK {
                assert_eq!(used, len + 1);
            }
            (status, data)
        }

        fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
            let (_, status, used) = self.submit(&[&header(VIRTIO_BLK_T_OUT, sector), data], &[1]);
            assert_eq!(used, 1);
            status
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn a_write_reads_back_and_lands_in_the_file() {
        let file = TempFile::new(&vec![0; 64 * 1024]);
        let mut bench = Bench::file(&file, false);
        let data = pattern(1024, 0x5a);
        // Header split, data scattered over two buffers.
        let h = header(VIRTIO_BLK_T_OUT, 2);
        let (_, status, used) = bench.submit(&[&h[..7], &h[7..], &data[..300], &data[300..]], &[1]);
        assert_eq!((status, used), (OK, 1));
        assert_eq!(&file.contents()[1024..2048], &data[..]);
        assert_eq!(bench.read(2, 1024), (OK, data.clone()));
        // Data and status sharing the last writable buffer.
        let (posted, status, used) = bench.submit(&[&header(VIRTIO_BLK_T_IN, 2)], &[100, 925]);
        assert_eq!((status, used), (OK, 1025));
        assert_eq!(posted.data(&bench.driver), data);
    }

    #[test]
    fn a_request_larger_than_the_bounce_buffer_goes_in_pieces() {
        let file = TempFile::new(&vec![0; 512 * 1024]);
        let mut bench = Bench::file(&file, false);
        let data = pattern(200 * 1024, 3);
        assert_eq!(bench.write(8, &data), OK);
        assert_eq!(&file.contents()[4096..4096 + data.len()], &data[..]);
        assert_eq!(bench.read(8, data.len() as u32), (OK, data));
    }

    #[test]
    fn flush_succeeds_and_get_id_returns_the_serial() {
        let file = TempFile::new(&[0; 4096]);
        let mut bench = Bench::file(&file, false);
        let (_, status, used) = bench.submit(&[&header(VIRTIO_BLK_T_FLUSH, 0)], &[1]);
        assert_eq!((status, used), (OK, 1));

        let (posted, status, used) = bench.submit(&[&header(VIRTIO_BLK_T_GET_ID, 0)], &[20, 1]);
        assert_eq!((status, used), (OK, 21));
        let mut expected = b"lg-test-serial".to_vec();
        expected.resize(20, 0);
        assert_eq!(posted.data(&bench.driver), expected);
    }

    #[test]
    fn discard_punches_a_hole_that_reads_as_zeros() {
        let file = TempFile::new(&vec![0xab; 1024 * 1024]);
        std::fs::File::open(&file.path).unwrap().sync_all().unwrap();
        let blocks = || std::fs::metadata(&file.path).unwrap().blocks();
        let before = blocks();
        assert!(before >= 2048, "the file is not allocated: {before} blocks");
        let mut bench = Bench::file(&file, false);
        let (_, status, used) = bench.submit(
            &[&header(VIRTIO_BLK_T_DISCARD, 0), &segment(0, 512, 0)],
            &[1],
        );
        assert_eq!((status, used), (OK, 1));
        // 256 KiB freed, in 512-byte units.
        assert!(blocks() <= before - 512, "{before} -> {} blocks", blocks());
        assert_eq!(bench.read(0, 4096), (OK, vec![0; 4096]));
        assert_eq!(bench.read(512, 512), (OK, vec![0xab; 512]));
        assert_eq!(file.contents().len(), 1024 * 1024);
    }

    #[test]
    fn write_zeroes_reads_as_zeros_with_and_without_unmap() {
        let file = TempFile::new(&vec![0xcd; 64 * 1024]);
        let mut bench = Bench::file(&file, false);
        for (sector, unmap) in [(1, 0), (20, 1)] {
            let (_, status, _) = bench.submit(
                &[
                    &header(VIRTIO_BLK_T_WRITE_ZEROES, 0),
                    &segment(sector, 3, unmap),
                ],
                &[1],
            );
            assert_eq!(status, OK);
            assert_eq!(bench.read(sector - 1, 2560).1, {
                let mut v = vec![0xcd; 512];
                v.extend_from_slice(&[0; 1536]);
                v.extend_from_slice(&[0xcd; 512]);
                v
            });
        }
        assert_eq!(file.contents().len(), 64 * 1024);
    }

    #[test]
    fn requests_past_the_end_fail_and_touch_nothing() {
        let original = pattern(8192, 9);
        let file = TempFile::new(&original);
        let mut bench = Bench::file(&file, false);
        let (status, data) = bench.read(16, 512);
        assert_eq!(status, IOERR);
        // The guest's buffer is as the guest left it.
        assert_eq!(data, vec![0xee; 512]);
        assert_eq!(bench.read(15, 1024).0, IOERR);
        assert_eq!(bench.write(15, &[1; 1024]), IOERR);
        assert_eq!(bench.write(u64::MAX, &[1; 512]), IOERR);
        let (_, status, _) = bench.submit(
            &[&header(VIRTIO_BLK_T_WRITE_ZEROES, 0), &segment(12, 8, 0)],
            &[1],
        );
        assert_eq!(status, IOERR);
        assert_eq!(file.contents(), original);
        // The last sector itself is fine.
        assert_eq!(bench.read(15, 512), (OK, original[7680..].to_vec()));
    }

    #[test]
    fn a_read_only_disk_refuses_every_kind_of_write() {
        let original = pattern(4096, 1);
        let file = TempFile::new(&original);
        let mut bench = Bench::file(&file, true);
        assert_eq!(bench.write(0, &[0; 512]), IOERR);
        for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            let (_, status, _) = bench.submit(&[&header(kind, 0), &segment(0, 1, 0)], &[1]);
            assert_eq!(status, IOERR);
        }
        assert_eq!(file.contents(), original);
        assert_eq!(bench.read(0, 512), (OK, original[..512].to_vec()));
        let (_, status, _) = bench.submit(&[&header(VIRTIO_BLK_T_FLUSH, 0)], &[1]);
        assert_eq!(status, OK);
    }

    #[test]
    fn malformed_requests_get_a_status_and_the_next_one_works() {
        let file = TempFile::new(&[7; 4096]);
        let mut bench = Bench::file(&file, false);
        // Unknown type.
        let (_, status, used) = bench.submit(&[&header(42, 0)], &[1]);
        assert_eq!((status, used), (VIRTIO_BLK_S_UNSUPP, 1));
        // Data not whole sectors, either way.
        assert_eq!(bench.read(0, 511).0, IOERR);
        assert_eq!(bench.write(0, &[1; 513]), IOERR);
        // A short header, and none at all.
        let (_, status, used) = bench.submit(&[&[0; 12]], &[1]);
        assert_eq!((status, used), (IOERR, 1));
        let (_, status, used) = bench.submit(&[], &[512, 1]);
        assert_eq!((status, used), (IOERR, 1));
        // No status byte: returned with nothing written.
        let (_, _, used) = bench.submit(&[&header(VIRTIO_BLK_T_OUT, 0), &[1; 512]], &[]);
        assert_eq!(used, 0);
        assert_eq!(file.contents(), vec![7; 4096]);
        assert_eq!(bench.read(0, 512), (OK, vec![7; 512]));
    }

    /// A disk in memory that fails every operation while `failing` is set.
    struct FlakyDisk {
        bytes: Mutex<Vec<u8>>,
        failing: AtomicBool,
    }

    impl FlakyDisk {
        fn check(&self) -> io::Result<()> {
            if self.failing.load(Ordering::Relaxed) {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }
    }

    impl BlockBackend for FlakyDisk {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.check()?;
            let offset = offset as usize;
            buf.copy_from_slice(&self.bytes.lock().unwrap()[offset..offset + buf.len()]);
            Ok(())
        }
        fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
            self.check()?;
            let offset = offset as usize;
            self.bytes.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.check()
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            self.check()
        }
        fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> io::Result<()> {
            self.check()?;
            let (offset, len) = (offset as usize, len as usize);
            self.bytes.lock().unwrap()[offset..offset + len].fill(0);
            Ok(())
        }
    }

    #[test]
    fn a_failing_disk_fails_each_request_and_the_device_carries_on() {
        let disk = Arc::new(FlakyDisk {
            bytes: Mutex::new(vec![0x11; 8192]),
            failing: AtomicBool::new(true),
        });
        let mut bench = Bench::new(disk.clone(), false);
        assert_eq!(bench.read(0, 512).0, IOERR);
        assert_eq!(bench.write(1, &[2; 512]), IOERR);
        for (kind, extra) in [
            (VIRTIO_BLK_T_FLUSH, vec![]),
            (VIRTIO_BLK_T_DISCARD, segment(0, 1, 0)),
            (VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1, 0)),
        ] {
            let (_, status, used) = bench.submit(&[&header(kind, 0), &extra], &[1]);
            assert_eq!((status, used), (IOERR, 1), "type {kind}");
        }
        disk.failing.store(false, Ordering::Relaxed);
        assert_eq!(bench.write(1, &[2; 512]), OK);
        assert_eq!(bench.read(1, 512), (OK, vec![2; 512]));
    }

    #[test]
    fn a_batch_is_completed_together_and_signalled_once() {
        let disk = Arc::new(FlakyDisk {
            bytes: Mutex::new(vec![0; 8192]),
            failing: AtomicBool::new(false),
        });
        let mut bench = Bench::new(disk, false);
        let heads: Vec<u16> = (0..4u8)
            .map(|i| {
                bench
                    .driver
                    .add_chain(&[&header(VIRTIO_BLK_T_OUT, u64::from(i)), &[i; 512]], &[1])
                    .head
            })
            .collect();
        assert!(bench.serve());
        for head in heads {
            assert_eq!(bench.driver.take_used(), Some((u32::from(head), 1)));
        }
        // Nothing new: nothing to tell the guest.
        assert!(!bench.serve());
        assert_eq!(bench.read(3, 512), (OK, vec![3; 512]));
    }
}
