//! lg-randread: 4 KiB random reads from a disk, for the random-read figure
//! of `cargo xtask bench` (packed into the guest kit's initramfs as
//! /bin/lg-randread by xtask/src/guest.rs, compiled with rustc alone,
//! statically, like lg-pattern).
//!
//! `lg-randread DEVICE SECONDS` reads one 4 KiB block at a time at
//! pseudo-random 4 KiB-aligned offsets of DEVICE, opened with `O_DIRECT` so
//! the guest's page cache never answers, until SECONDS have passed. That is
//! what `fio --rw=randread --bs=4k --direct=1 --ioengine=psync --iodepth=1`
//! measures: the round trip of one request through the hypervisor's disk,
//! with nothing queued behind it. The offsets come from a xorshift with a
//! fixed seed, so every hypervisor is asked for the same blocks in the same
//! order.
//!
//! Output: `LG_RANDREAD reads=N seconds=S iops=X` (or a sentence on stderr
//! and status 1).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::exit;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
/// `O_DIRECT` on x86-64.
const O_DIRECT: i32 = 0o40000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(seconds)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: lg-randread DEVICE SECONDS");
        exit(2);
    };
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("lg-randread: cannot {what} {path}: {e}");
        exit(1);
    };
    let mut disk = OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| fail("open", e));
    let size = disk
        .seek(SeekFrom::End(0))
        .unwrap_or_else(|e| fail("size", e));
    let blocks = size / BLOCK as u64;
    if blocks == 0 {
        eprintln!("lg-randread: {path} is smaller than one block");
        exit(1);
    }
    // O_DIRECT wants the buffer aligned too: take the aligned 4 KiB inside
    // an 8 KiB one.
    let mut buffer = vec![0u8; 2 * BLOCK];
    let at = buffer.as_ptr().align_offset(BLOCK);
    let block = &mut buffer[at..at + BLOCK];

    let limit = Duration::from_secs_f64(seconds);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut reads: u64 = 0;
    let started = Instant::now();
    while started.elapsed() < limit {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % blocks) * BLOCK as u64;
        match disk.read_at(block, offset) {
            Ok(BLOCK) => reads += 1,
            Ok(short) => {
                eprintln!("lg-randread: {path} gave {short} bytes at {offset}, not {BLOCK}");
                exit(1);
            }
            Err(e) => fail("read", e),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "LG_RANDREAD reads={reads} seconds={seconds:.3} iops={:.0}",
        reads as f64 / seconds
    );
}
