//! virtio-blk's request header and everything after it: chains on a
//! queue the input configures, over RAM holding the input's bytes, each
//! checked by `request.rs` and executed against a small disk in host memory
//! that fails the run if asked for a byte outside itself. Whatever the
//! guest writes in a header (type, sector, segments), the disk must only
//! ever see whole sectors inside it.

#![no_main]

use std::io;
use std::sync::{Arc, Mutex};

use lg_fuzz::{guest_with, Input, QueueSetup};
use libfuzzer_sys::fuzz_target;
use virtio_blk::fuzzing::RequestServer;
use virtio_blk::{BlockBackend, SECTOR_SIZE};

/// A disk of a few sectors in host memory that panics on any access the
/// request checks should have refused.
struct MemoryDisk(Mutex<Vec<u8>>);

impl MemoryDisk {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let size = self.size();
        assert!(
            offset.is_multiple_of(SECTOR_SIZE) && len.is_multiple_of(SECTOR_SIZE),
            "the disk was asked for {len} bytes at {offset}: not whole sectors"
        );
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= size),
            "the disk was asked for {len} bytes at {offset}, past its {size} bytes"
        );
        offset as usize..(offset + len) as usize
    }
}

impl BlockBackend for MemoryDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Reads go through a bounce buffer in pieces: each piece lies in
        // the disk, though only the request is whole sectors.
        let end = offset + buf.len() as u64;
        assert!(
            end <= self.size(),
            "a read of {} bytes at {offset} runs past the disk",
            buf.len()
        );
        buf.copy_from_slice(&self.0.lock().unwrap()[offset as usize..end as usize]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + data.len() as u64;
        assert!(
            end <= self.size(),
            "a write of {} bytes at {offset} runs past the disk",
            data.len()
        );
        self.0.lock().unwrap()[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let range = self.range(offset, len);
        self.0.lock().unwrap()[range].fill(0);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let range = self.range(offset, len);
        self.0.lock().unwrap()[range].fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = QueueSetup::read(&mut input);
    // The disk: 1 to 64 sectors; whether it is read-only and which of
    // DISCARD and WRITE_ZEROES the guest accepted.
    let sectors = u64::from(input.u8() % 64) + 1;
    let flags = input.u8();
    let mem = guest_with(input.rest());
    let Some(mut queue) = setup.enable(&mem) else {
        return;
    };
    let disk = Arc::new(MemoryDisk(Mutex::new(vec![
        0;
        (sectors * SECTOR_SIZE) as usize
    ])));
    let mut server = RequestServer::new(disk, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    // One wake-up serves everything available; a second finds nothing new
    // unless the replies changed the guest's rings.
    for _ in 0..2 {
        if server.process_queue(&mut queue, &mem).is_err() {
            break;
        }
    }
});
