//! Guest-physical memory: one mapping, split around the 32-bit hole, with
//! bounds-checked access by guest-physical address.

use std::fmt;
use std::io::Read;
use std::ptr::NonNull;

use hcall_abi::layout::{MEM_32BIT_GAP_END, MEM_32BIT_GAP_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// An address as the guest sees it, before any paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// The address `offset` bytes further on, or `None` on overflow.
    pub fn checked_add(self, offset: u64) -> Option<GuestAddress> {
        self.0.checked_add(offset).map(GuestAddress)
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// One contiguous stretch of guest RAM and where it lives in lg's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The first guest-physical address of the region.
    pub guest_base: GuestAddress,
    /// Its length in bytes.
    pub size: u64,
    /// Its offset within lg's single mapping.
    mapping_offset: usize,
}

impl MemoryRegion {
    /// The first guest-physical address after the region.
    pub fn end(&self) -> u64 {
        self.guest_base.0 + self.size
    }
}

/// Why a guest-memory operation failed.
#[derive(Debug)]
pub enum MemoryError {
    /// The requested RAM size is zero or too large to map.
    BadSize(u64),
    /// The host would not give lg the mapping.
    Mmap(std::io::Error),
    /// KVM refused a memory slot.
    Register(kvm_ioctls::Error),
    /// The range is not wholly inside one RAM region.
    OutOfRange { addr: GuestAddress, len: u64 },
    /// Reading from a file into guest memory failed.
    Io(std::io::Error),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::BadSize(size) => write!(f, "{size} bytes of guest RAM cannot be mapped"),
            MemoryError::Mmap(e) => write!(f, "cannot map guest RAM: {e}"),
            MemoryError::Register(e) => write!(f, "KVM refused the guest RAM slot: {e}"),
            MemoryError::OutOfRange { addr, len } => {
                write!(
                    f,
                    "{len} bytes at guest address {addr} are outside guest RAM"
                )
            }
            MemoryError::Io(e) => write!(f, "cannot read into guest RAM: {e}"),
        }
    }
}

impl std::error::Error for MemoryError {}

/// All of a guest's RAM.
///
/// The mapping is private and anonymous with `MAP_NORESERVE`: the host gives
/// lg a page only when the guest (or lg) first touches it, so a 2 GiB guest
/// that uses 100 MiB costs 100 MiB.
pub struct GuestMemory {
    mapping: NonNull<u8>,
    mapping_len: usize,
    regions: Vec<MemoryRegion>,
}

// SAFETY: the mapping is plain memory owned by this value for its whole life;
// every access copies bytes through bounds-checked methods and never hands out
// references into it, so sharing it between threads (vCPUs and devices, as the
// guest itself does) cannot create aliasing Rust references.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; concurrent copies into and out of guest RAM are what real
// DMA does, and no Rust reference to the bytes ever exists.
unsafe impl Sync for GuestMemory {}

/// The size of an x86-64 huge page (a page-directory entry's).
const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes of anonymous, lazily allocated memory starting on a
/// huge-page boundary, and asks for transparent huge pages there.
///
/// Why: KVM maps a guest's 2 MiB stretch with one large nested page-table
/// entry only when the host backs it with a huge page *and* the host
/// address and the guest-physical address agree modulo 2 MiB. Guest
/// address 0 sits at the mapping's start (and 4 GiB at an offset of 3
/// GiB), so aligning the start aligns every region. The guest then takes
/// one nested page fault per 2 MiB it touches instead of one per 4 KiB,
/// and its TLB misses walk one level less. `MADV_HUGEPAGE` asks for huge
/// pages where the host's policy is `madvise` (Ubuntu's, Fedora's); under
/// `always` (Debian's) it changes nothing, and under `never` the advice is
/// ignored. Memory stays lazy: a huge page is allocated when the guest
/// first touches its 2 MiB, or 4 KiB pages when none is free.
fn map_huge_page_aligned(len: usize) -> Result<NonNull<u8>, MemoryError> {
    let bad_size = || MemoryError::BadSize(len as u64);
    let reserve = len.checked_add(HUGE_PAGE).ok_or_else(bad_size)?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing overlaps nothing Rust owns; the result is checked below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(MemoryError::Mmap(std::io::Error::last_os_error()));
    }
    let base = addr as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    let tail = reserve - head - len;
    // SAFETY: the two unmapped ranges lie inside the `reserve` bytes just
    // mapped at `base`, outside the `len` bytes kept from `start`, and
    // nothing refers to them (an empty one is skipped); the advice covers
    // exactly the kept bytes, which nothing uses yet.
    unsafe {
        if head > 0 {
            libc::munmap(addr, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // Advice only: a kernel without transparent huge pages refuses it,
        // and the guest runs on 4 KiB pages as before.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    NonNull::new(start as *mut u8).ok_or_else(bad_size)
}

impl GuestMemory {
    /// Maps `ram_bytes` of guest RAM: from address 0 up to the 32-bit hole,
    /// and whatever does not fit below it from 4 GiB up.
    pub fn new(ram_bytes: u64) -> Result<GuestMemory, MemoryError> {
        if ram_bytes == 0 || ram_bytes > isize::MAX as u64 {
            return Err(MemoryError::BadSize(ram_bytes));
        }
        let low = ram_bytes.min(MEM_32BIT_GAP_START);
        let mut regions = vec![MemoryRegion {
            guest_base: GuestAddress(0),
            size: low,
            mapping_offset: 0,
        }];
        if ram_bytes > low {
            regions.push(MemoryRegion {
                guest_base: GuestAddress(MEM_32BIT_GAP_END),
                size: ram_bytes - low,
                mapping_offset: low as usize,
            });
        }
        let mapping_len = ram_bytes as usize;
        let mapping = map_huge_page_aligned(mapping_len)?;
        Ok(GuestMemory {
            mapping,
            mapping_len,
            regions,
        })
    }

    /// The guest's RAM regions, lowest address first.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// Total RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.mapping_len as u64
    }

    /// The first guest-physical address above all RAM.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.regions.last().map_or(0, MemoryRegion::end))
    }

    /// Gives KVM the guest RAM, one slot per region.
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.regions.iter().enumerate() {
            let kvm_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.guest_base.0,
                memory_size: region.size,
                userspace_addr: self.mapping.as_ptr() as u64 + region.mapping_offset as u64,
            };
            // SAFETY: the userspace range lies inside our mapping, which lives
            // as long as this GuestMemory; lg keeps the GuestMemory alive for
            // as long as the VM exists (the VM owns an Arc of it).
            unsafe { vm.set_user_memory_region(kvm_region) }.map_err(MemoryError::Register)?;
        }
        Ok(())
    }

    /// Whether `len` bytes at `addr` are all RAM within one region.
    pub fn contains(&self, addr: GuestAddress, len: u64) -> bool {
        self.offset_of(addr, len).is_ok()
    }

    /// The mapping offset of a range, if it lies wholly inside one region.
    fn offset_of(&self, addr: GuestAddress, len: u64) -> Result<usize, MemoryError> {
        let out_of_range = MemoryError::OutOfRange { addr, len };
        let end = addr
            .0
            .checked_add(len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        self.regions
            .iter()
            .find(|r| addr.0 >= r.guest_base.0 && end <= r.end())
            .map(|r| r.mapping_offset + (addr.0 - r.guest_base.0) as usize)
            .ok_or(out_of_range)
    }

    /// Copies guest memory at `addr` into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let offset = self.offset_of(addr, buf.len() as u64)?;
        // SAFETY: offset_of proved [offset, offset + len) lies in the mapping;
        // `buf` is a distinct Rust allocation, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mapping.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), MemoryError> {
        let offset = self.offset_of(addr, data.len() as u64)?;
        // SAFETY: offset_of proved the destination lies in the mapping, and
        // `data` is a Rust slice, which cannot point into our mapping because
        // no reference into it is ever handed out.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mapping.as_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// Sets `len` bytes at `addr` to zero.
    pub fn zero(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let offset = self.offset_of(addr, len)?;
        // SAFETY: offset_of proved the range lies in the mapping.
        unsafe { std::ptr::write_bytes(self.mapping.as_ptr().add(offset), 0, len as usize) };
        Ok(())
    }

    /// Reads a plain-data value from guest memory.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, addr: GuestAddress) -> Result<T, MemoryError> {
        let mut value = T::new_zeroed();
        self.read(addr, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes a plain-data value into guest memory.
    pub fn write_obj<T: IntoBytes + Immutable>(
        &self,
        addr: GuestAddress,
        value: &T,
    ) -> Result<(), MemoryError> {
        self.write(addr, value.as_bytes())
    }

    /// Fills `len` bytes at `addr` straight from `source`, without an
    /// intermediate copy: how lg loads a large initrd.
    pub fn read_from(
        &self,
        addr: GuestAddress,
        source: &mut impl Read,
        len: u64,
    ) -> Result<(), MemoryError> {
        let offset = self.offset_of(addr, len)?;
        // SAFETY: offset_of proved the range lies in the mapping. The slice
        // lives only for this call, while no other Rust reference into the
        // mapping exists (none is ever handed out); a vCPU writing the same
        // bytes concurrently could only change what the guest sees, which is
        // the guest's own business, not Rust memory safety for lg's data.
        let dest = unsafe {
            std::slice::from_raw_parts_mut(self.mapping.as_ptr().add(offset), len as usize)
        };
        source.read_exact(dest).map_err(MemoryError::Io)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by mmap with exactly this length and
        // is unmapped only here, once.
        unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.mapping_len) };
    }
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemory")
            .field("regions", &self.regions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_has_one_region_from_zero() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        assert_eq!(mem.regions().len(), 1);
        assert_eq!(mem.regions()[0].guest_base, GuestAddress(0));
        assert_eq!(mem.end(), GuestAddress(64 * MIB));
    }

    #[test]
    fn every_region_is_huge_page_aligned_in_guest_and_host_alike() {
        for mib in [1, 3, 64, 3500] {
            let mem = GuestMemory::new(mib * MIB).unwrap();
            for region in mem.regions() {
                let host = mem.mapping.as_ptr() as usize + region.mapping_offset;
                assert_eq!(host % HUGE_PAGE, 0, "{mib} MiB: host address {host:#x}");
                assert_eq!(region.guest_base.0 % HUGE_PAGE as u64, 0);
            }
            // The first and last bytes are mapped (the trimmed slack is not
            // part of the RAM, and its end is not cut off).
            let last = GuestAddress(mem.end().0 - 1);
            mem.write(GuestAddress(0), &[7]).unwrap();
            mem.write(last, &[9]).unwrap();
            let mut byte = [0];
            mem.read(last, &mut byte).unwrap();
            assert_eq!(byte, [9]);
        }
    }

    #[test]
    fn large_guest_continues_above_the_hole() {
        let mem = GuestMemory::new(3500 * MIB).unwrap();
        let regions = mem.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].end(), MEM_32BIT_GAP_START);
        assert_eq!(regions[1].guest_base, GuestAddress(MEM_32BIT_GAP_END));
        assert_eq!(regions[0].size + regions[1].size, 3500 * MIB);
        // The hole itself is not RAM, and a range may not straddle it.
        assert!(!mem.contains(GuestAddress(MEM_32BIT_GAP_START), 1));
        assert!(!mem.contains(GuestAddress(MEM_32BIT_GAP_START - 4), 8));
        assert!(mem.contains(GuestAddress(MEM_32BIT_GAP_END), 8));
    }

    #[test]
    fn reads_back_what_was_written() {
        let mem = GuestMemory::new(MIB).unwrap();
        mem.write_obj(GuestAddress(0x1000), &0x1122_3344_5566_7788u64)
            .unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344_5566_7788
        );
        let mut buf = [0u8; 2];
        mem.read(GuestAddress(0x1000), &mut buf).unwrap();
        assert_eq!(buf, [0x88, 0x77]);
    }

    #[test]
    fn refuses_accesses_past_the_end_and_overflowing_ranges() {
        let mem = GuestMemory::new(MIB).unwrap();
        assert!(mem.write(GuestAddress(MIB - 1), &[0, 0]).is_err());
        assert!(mem.read(GuestAddress(u64::MAX), &mut [0u8; 2]).is_err());
        assert!(mem.zero(GuestAddress(0), MIB + 1).is_err());
        assert!(mem.write(GuestAddress(MIB - 2), &[1, 2]).is_ok());
    }

    #[test]
    fn refuses_zero_sized_guests() {
        assert!(matches!(GuestMemory::new(0), Err(MemoryError::BadSize(0))));
    }

    #[test]
    fn read_from_fills_memory_from_a_reader() {
        let mem = GuestMemory::new(MIB).unwrap();
        let data = vec![0xabu8; 4096];
        mem.read_from(GuestAddress(0x2000), &mut data.as_slice(), 4096)
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x2ffc)).unwrap(),
            0xabab_abab
        );
        assert!(mem
            .read_from(GuestAddress(MIB - 10), &mut data.as_slice(), 4096)
            .is_err());
    }
}
