//! Writes KVM keeps for later: the coalesced-I/O ring.
//!
//! Every port write the guest makes to a device of lg's costs an exit: out of
//! the guest, out of the kernel, into lg and back. For most registers that is
//! the point, since the write has an effect the guest waits for. A serial
//! port's transmit register is different: a kernel printing its boot log
//! writes it once per byte (some 20 000 times in a boot) and only ever waits
//! for the line status register to say the transmitter is empty, which lg's
//! transmitter always is. KVM can take such writes without leaving the
//! kernel: with `KVM_REGISTER_COALESCED_MMIO` on a port range
//! (`KVM_CAP_COALESCED_PIO`), it appends each write to a ring in a page it
//! shares with lg and goes straight back into the guest. That halves the
//! console's exits; in the nested test host, where an exit costs about a
//! third of a millisecond, it takes seconds off a boot with a loud console.
//!
//! The price is ordering: the writes in the ring happened before whatever
//! exit comes next, so lg replays the ring, in order, before it handles any
//! exit ([`CoalescedRing::replay`], from every vCPU's loop), and the guest
//! sees the same device as if every write had exited. A guest that writes
//! a last byte and then makes no exit at all (a kernel that hangs right
//! after printing a message, or idles) would leave that byte in the ring,
//! so the thread that waits for the guest's end also replays it every
//! [`REPLAY_PERIOD`]: nothing printed stays unseen for longer.
//!
//! The ring is one page per VM (every vCPU's file maps the same one). KVM
//! advances `last` as it appends and never passes `first`; lg reads the
//! entries from `first` and advances it. Both indices come from shared
//! memory, so lg checks them before use: a ring that makes no sense is
//! emptied, never followed outside its page.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring};
use kvm_ioctls::{Cap, IoEventAddress, VmFd};

use crate::cpu::Vcpu;
use crate::vm::SwitcherError;

/// How often the thread waiting for the guest's end replays the ring (and
/// has the devices pass on output they held back, see
/// [`ExitHandler::pass_on_held_output`](crate::run::ExitHandler::pass_on_held_output)),
/// so a byte the guest wrote just before going quiet still reaches the
/// console.
pub const REPLAY_PERIOD: Duration = Duration::from_millis(50);

/// One write KVM kept: to an I/O port or to an MMIO address, with its
/// bytes (1 to 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoalescedWrite {
    /// An I/O port write (`out`), else an MMIO write.
    pub pio: bool,
    /// The port or guest-physical address.
    pub address: u64,
    data: [u8; 8],
    len: u8,
}

impl CoalescedWrite {
    /// A write of `data` (at most 8 bytes; more are cut), as KVM would
    /// have kept it: for handlers' tests.
    pub fn new(pio: bool, address: u64, data: &[u8]) -> CoalescedWrite {
        let len = data.len().min(8);
        let mut bytes = [0; 8];
        bytes[..len].copy_from_slice(&data[..len]);
        CoalescedWrite {
            pio,
            address,
            data: bytes,
            len: len as u8,
        }
    }

    /// The bytes written.
    pub fn data(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// The ring page, mapped from a vCPU's file, and the lock that makes one
/// thread at a time its reader.
pub struct CoalescedRing {
    page: NonNull<u8>,
    page_size: usize,
    /// Entries the page holds: KVM's `KVM_COALESCED_MMIO_MAX`.
    capacity: u32,
    /// Held while a batch is taken out of the ring *and handed on*, so two
    /// threads replaying at once cannot hand the guest's writes to the
    /// devices out of order.
    reader: Mutex<()>,
    /// Whether the page is lg's own mapping, to unmap on drop (a test's
    /// stand-in page is not).
    mapped: bool,
}

// SAFETY: the page is shared memory that KVM writes concurrently anyway;
// lg's side only reads entries and the indices atomically and writes
// `first`, always under `reader`, so sharing the handle between threads
// adds no data race.
unsafe impl Send for CoalescedRing {}
// SAFETY: as for Send: all access to the page goes through `reader`.
unsafe impl Sync for CoalescedRing {}

/// Where the entries begin: after the two indices.
const ENTRIES_OFFSET: usize = std::mem::size_of::<kvm_coalesced_mmio_ring>();
const ENTRY_SIZE: usize = std::mem::size_of::<kvm_coalesced_mmio>();

impl CoalescedRing {
    /// Maps the VM's ring through `vcpu`'s file, or says why KVM has none
    /// for port writes (`None`: lg then simply takes an exit per write).
    pub fn map(vm: &VmFd, vcpu: &Vcpu) -> Result<Option<CoalescedRing>, SwitcherError> {
        if !vm.check_extension(Cap::CoalescedPio) {
            return Ok(None);
        }
        // KVM_CAP_COALESCED_MMIO answers with the ring's page offset in the
        // vCPU's mapping (0: no ring).
        let page_offset = vm.check_extension_int(Cap::CoalescedMmio);
        if page_offset <= 0 {
            return Ok(None);
        }
        // SAFETY: sysconf only reads a system constant.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = usize::try_from(page_size).unwrap_or(4096);
        let offset = libc::off_t::from(page_offset) * page_size as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU's file at the
        // offset KVM gave for the ring; it overlaps no memory of lg's, and
        // KVM keeps the page alive as long as the mapping exists (the
        // mapping holds the file), so it outlives the vCPU's own handle.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&vcpu.fd),
                offset,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(SwitcherError::Kvm(
                "map its coalesced-I/O ring",
                kvm_ioctls::Error::last(),
            ));
        }
        let page = NonNull::new(address.cast::<u8>()).ok_or(SwitcherError::Kvm(
            "map its coalesced-I/O ring",
            kvm_ioctls::Error::new(libc::EFAULT),
        ))?;
        // SAFETY: the page was just mapped, page_size bytes, readable and
        // writable.
        Ok(Some(unsafe {
            CoalescedRing::on_page(page, page_size, true)
        }))
    }

    /// A ring on `page`.
    ///
    /// # Safety
    /// `page` must be valid for reads and writes of `page_size` bytes, and
    /// 4-byte aligned, for as long as the ring lives; if `mapped`, it must
    /// be an mmap of its own that the ring may unmap.
    unsafe fn on_page(page: NonNull<u8>, page_size: usize, mapped: bool) -> CoalescedRing {
        let capacity = (page_size.saturating_sub(ENTRIES_OFFSET) / ENTRY_SIZE) as u32;
        CoalescedRing {
            page,
            page_size,
            capacity,
            reader: Mutex::new(()),
            mapped,
        }
    }

    /// Has KVM keep port writes to `port..port + len` in the ring from now on.
    pub fn coalesce_port(vm: &VmFd, port: u16, len: u32) -> Result<(), SwitcherError> {
        vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), len)
            .map_err(|e| SwitcherError::Kvm("coalesce writes to a port", e))
    }

    /// Has every write to `port..port + len` exit again, as before
    /// [`coalesce_port`](Self::coalesce_port).
    pub fn stop_coalescing_port(vm: &VmFd, port: u16, len: u32) -> Result<(), SwitcherError> {
        vm.unregister_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), len)
            .map_err(|e| SwitcherError::Kvm("stop coalescing writes to a port", e))
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offsets 0 (first) and 4 (last) lie in the page, which is
        // 4-byte aligned and lives as long as self; AtomicU32 has u32's
        // layout, and KVM itself only accesses these words with single
        // aligned loads and stores.
        unsafe { &*self.page.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Takes every write out of the ring, oldest first, and hands them to
    /// `handle` as one batch, before any other reader can take newer ones.
    /// Returns what `handle` returned, or `R::default()` if the ring was
    /// empty.
    pub fn replay<R: Default>(&self, handle: impl FnOnce(&[CoalescedWrite]) -> R) -> R {
        let _reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let first_index = self.index(0);
        let last_index = self.index(4);
        let mut first = first_index.load(Ordering::Relaxed);
        // Acquire: the entries KVM wrote before it moved `last` are visible.
        let last = last_index.load(Ordering::Acquire);
        if first == last {
            return R::default();
        }
        if first >= self.capacity || last >= self.capacity {
            log::warn!(
                "KVM's coalesced-I/O ring makes no sense (first {first}, last {last}, \
                 capacity {}); its writes are dropped",
                self.capacity
            );
            first_index.store(last % self.capacity.max(1), Ordering::Release);
            return R::default();
        }
        let mut writes =
            Vec::with_capacity(((last + self.capacity - first) % self.capacity) as usize);
        while first != last {
            let offset = ENTRIES_OFFSET + first as usize * ENTRY_SIZE;
            debug_assert!(offset + ENTRY_SIZE <= self.page_size);
            // SAFETY: first < capacity, so the entry lies inside the page,
            // 8-byte aligned like the page and the entry size; the volatile
            // read copies it out of shared memory once, whatever KVM does
            // to it next, and every bit pattern is a valid
            // kvm_coalesced_mmio (integers, a union of integers, bytes).
            let entry: kvm_coalesced_mmio = unsafe {
                self.page
                    .as_ptr()
                    .add(offset)
                    .cast::<kvm_coalesced_mmio>()
                    .read_volatile()
            };
            // SAFETY: both union members are u32s; reading either is sound.
            let pio = unsafe { entry.__bindgen_anon_1.pio } != 0;
            let len = entry.len.min(8) as u8;
            writes.push(CoalescedWrite {
                pio,
                address: entry.phys_addr,
                data: entry.data,
                len,
            });
            first = (first + 1) % self.capacity;
        }
        // Release: KVM may reuse the slots only once they have been read.
        first_index.store(first, Ordering::Release);
        handle(&writes)
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the page is lg's own mapping of page_size bytes, made
            // in `map`, and nothing uses it after the ring is gone.
            unsafe {
                libc::munmap(self.page.as_ptr().cast(), self.page_size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page laid out as KVM lays out the ring, to play KVM's part.
    struct FakeKvm {
        words: Vec<u64>,
    }

    impl FakeKvm {
        fn new() -> FakeKvm {
            FakeKvm {
                words: vec![0; 4096 / 8],
            }
        }

        fn ring(&mut self) -> CoalescedRing {
            let page = NonNull::new(self.words.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: the page is 4096 bytes, 8-byte aligned, and outlives
            // the ring in every test (the test drops the ring first).
            unsafe { CoalescedRing::on_page(page, 4096, false) }
        }

        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the Vec's 4096 bytes, viewed as bytes.
            unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), 4096) }
        }

        fn set_index(&mut self, which: usize, value: u32) {
            self.bytes()[which * 4..which * 4 + 4].copy_from_slice(&value.to_ne_bytes());
        }

        fn index(&mut self, which: usize) -> u32 {
            u32::from_ne_bytes(self.bytes()[which * 4..which * 4 + 4].try_into().unwrap())
        }

        /// Appends a port write as KVM does: the entry, then `last`.
        fn append(&mut self, port: u64, byte: u8) {
            let capacity = ((4096 - ENTRIES_OFFSET) / ENTRY_SIZE) as u32;
            let last = self.index(1);
            let at = ENTRIES_OFFSET + last as usize * ENTRY_SIZE;
            let entry = self.bytes();
            entry[at..at + 8].copy_from_slice(&port.to_ne_bytes());
            entry[at + 8..at + 12].copy_from_slice(&1u32.to_ne_bytes());
            entry[at + 12..at + 16].copy_from_slice(&1u32.to_ne_bytes());
            entry[at + 16..at + 24].copy_from_slice(&[byte, 0, 0, 0, 0, 0, 0, 0]);
            self.set_index(1, (last + 1) % capacity);
        }
    }

    fn bytes_of(writes: &[CoalescedWrite]) -> Vec<u8> {
        writes.iter().flat_map(|w| w.data().to_vec()).collect()
    }

    #[test]
    fn writes_come_out_once_in_the_order_the_guest_made_them() {
        let mut kvm = FakeKvm::new();
        for &b in b"hello" {
            kvm.append(0x3f8, b);
        }
        let ring = kvm.ring();
        let writes = ring.replay(|w| w.to_vec());
        assert_eq!(bytes_of(&writes), b"hello");
        assert!(writes.iter().all(|w| w.pio && w.address == 0x3f8));
        assert!(ring.replay(|w| w.to_vec()).is_empty(), "nothing twice");
        drop(ring);
        assert_eq!(kvm.index(0), 5, "lg moved first past what it read");
    }

    #[test]
    fn the_ring_wraps_around_its_page() {
        let mut kvm = FakeKvm::new();
        let capacity = ((4096 - ENTRIES_OFFSET) / ENTRY_SIZE) as u32;
        assert_eq!(capacity, 170, "KVM_COALESCED_MMIO_MAX for 4 KiB pages");
        kvm.set_index(0, capacity - 2);
        kvm.set_index(1, capacity - 2);
        for &b in b"wrap" {
            kvm.append(0x3f8, b);
        }
        let ring = kvm.ring();
        assert_eq!(bytes_of(&ring.replay(|w| w.to_vec())), b"wrap");
        drop(ring);
        assert_eq!(kvm.index(0), 2);
    }

    #[test]
    fn indices_outside_the_page_empty_the_ring_instead_of_being_followed() {
        let mut kvm = FakeKvm::new();
        kvm.set_index(0, 0);
        kvm.set_index(1, 100_000);
        let ring = kvm.ring();
        let mut handled = false;
        ring.replay(|_| handled = true);
        assert!(!handled);
        drop(ring);
        assert_eq!(kvm.index(0), 100_000 % 170);
    }

    #[test]
    fn a_length_beyond_eight_bytes_is_cut_to_the_entry() {
        let mut kvm = FakeKvm::new();
        kvm.append(0x3f8, b'x');
        let at = ENTRIES_OFFSET + 8;
        kvm.bytes()[at..at + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let ring = kvm.ring();
        let writes = ring.replay(|w| w.to_vec());
        assert_eq!(writes[0].data().len(), 8);
        assert_eq!(writes[0].data()[0], b'x');
    }
}
