//! lg-pattern: a guest program for `lg translate` and `lg dump-pagetables`
//! to find (packed into the guest kit's initramfs as /bin/lg-pattern by
//! xtask/src/guest.rs, compiled with rustc alone, statically).
//!
//! It maps one page at a fixed user address, fills it with a known
//! pattern, says so on standard output, and then keeps touching the page,
//! so that the vCPU is almost always running this process and its CR3 is
//! the one whose page tables hold the page: a test can ask lg to translate
//! the address with the vCPU's own CR3 and read the pattern back from
//! guest-physical memory.
//!
//! Output: `LG_PATTERN_READY va=0x...` once the page is written.

use std::io::Write;

/// The page's virtual address: in the user half, far from where Linux puts
/// anything by itself.
const PAGE_VA: usize = 0x5a5a_0000_0000;
const PAGE_BYTES: usize = 4096;
/// 16 bytes, repeated over the page.
pub const PATTERN: &[u8; 16] = b"lg-pattern-page\n";

const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
const MAP_FAILED: usize = usize::MAX;

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut u8;
}

fn main() {
    // SAFETY: an anonymous private mapping at an address nothing else uses
    // (MAP_FIXED_NOREPLACE refuses rather than replace a mapping).
    let page = unsafe {
        mmap(
            PAGE_VA as *mut u8,
            PAGE_BYTES,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if page as usize == MAP_FAILED || page as usize != PAGE_VA {
        eprintln!("lg-pattern: cannot map a page at {PAGE_VA:#x}");
        std::process::exit(1);
    }
    // SAFETY: the mapping is PAGE_BYTES long, readable and writable, and
    // only this thread uses it.
    let bytes = unsafe { std::slice::from_raw_parts_mut(page, PAGE_BYTES) };
    for chunk in bytes.chunks_mut(PATTERN.len()) {
        chunk.copy_from_slice(PATTERN);
    }
    println!("LG_PATTERN_READY va={PAGE_VA:#x}");
    let _ = std::io::stdout().flush();
    let mut sum: u64 = 0;
    loop {
        for &byte in bytes.iter() {
            // SAFETY: a read of a byte of the live mapping; volatile so the
            // loop really runs and the page stays this process's hot data.
            sum = sum.wrapping_add(u64::from(unsafe { std::ptr::read_volatile(&byte) }));
        }
        std::hint::black_box(sum);
    }
}
