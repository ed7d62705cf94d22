//! Guest memory as gdb addresses it: by virtual address, through the page
//! tables of the vCPU gdb is looking at.
//!
//! gdb knows the kernel by its symbols, which are virtual addresses
//! (`0xffffffff81234560`); lg's memory is guest-physical. Between them sit
//! the guest's own page tables, which `shadow-mmu` walks in software. Every
//! access here is split at page boundaries (two virtually adjacent pages are
//! seldom physically adjacent), each piece is translated and checked to be
//! guest RAM, and only then is anything read or written. A write is all or
//! nothing: an address that does not translate, or lands outside RAM (a
//! device's memory, or past the end), is an error for gdb before a single
//! byte changes.
//!
//! gdb writes through here too, ignoring the guest's page permissions as a
//! debugger must: that is how an `int3` gets into read-only kernel text.

use std::fmt;

use kvm_bindings::kvm_sregs;
use shadow_mmu::pagetable::{self, PagingMode, UnsupportedMode, WalkFault};
use shadow_mmu::{GuestAddress, GuestMemory};

/// How a vCPU turns addresses into guest-physical ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    /// Paging is off: an address is a guest-physical address.
    Physical,
    /// Long-mode paging with these tables.
    Paged(PagingMode),
}

impl AddressSpace {
    /// The address space of a vCPU with these special registers.
    pub fn of(sregs: &kvm_sregs) -> Result<AddressSpace, AccessError> {
        match PagingMode::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) {
            Ok(mode) => Ok(AddressSpace::Paged(mode)),
            Err(UnsupportedMode::PagingOff) => Ok(AddressSpace::Physical),
            Err(mode) => Err(AccessError::Mode(mode)),
        }
    }
}

/// Why gdb cannot have the bytes it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// The vCPU's paging mode is one lg does not model (32-bit paging).
    Mode(UnsupportedMode),
    /// The address does not translate.
    Unmapped { virt: u64, fault: WalkFault },
    /// The address translates, but not to guest RAM.
    NotRam { virt: u64, phys: u64 },
    /// The range runs past the top of the address space.
    Wraps { virt: u64 },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::Mode(mode) => write!(f, "{mode}"),
            AccessError::Unmapped { virt, fault } => {
                write!(f, "{virt:#x} does not translate: {fault}")
            }
            AccessError::NotRam { virt, phys } => {
                write!(f, "{virt:#x} lands at {phys:#x}, which is not guest RAM")
            }
            AccessError::Wraps { virt } => {
                write!(f, "the range at {virt:#x} runs past the top of memory")
            }
        }
    }
}

impl std::error::Error for AccessError {}

/// The smallest page: pieces never cross a boundary of it in physical mode.
const PAGE: u64 = 4096;

/// `len` bytes at virtual `virt`, as guest-physical pieces `(phys, len)` in
/// order, each inside one page and wholly RAM; or, when some byte fails,
/// the pieces up to it and why it failed.
fn pieces(
    memory: &GuestMemory,
    space: &AddressSpace,
    virt: u64,
    len: u64,
) -> (Vec<(u64, u64)>, Option<AccessError>) {
    let mut pieces = Vec::new();
    let mut done = 0;
    while done < len {
        let Some(at) = virt.checked_add(done) else {
            return (pieces, Some(AccessError::Wraps { virt }));
        };
        let (phys, page_bytes) = match space {
            AddressSpace::Physical => (at, PAGE),
            AddressSpace::Paged(mode) => match pagetable::translate(memory, mode, at).result {
                Ok((phys, size, _)) => (phys, size.bytes()),
                Err(fault) => return (pieces, Some(AccessError::Unmapped { virt: at, fault })),
            },
        };
        let piece = (page_bytes - (phys & (page_bytes - 1))).min(len - done);
        if !memory.contains(GuestAddress(phys), piece) {
            return (pieces, Some(AccessError::NotRam { virt: at, phys }));
        }
        pieces.push((phys, piece));
        done += piece;
    }
    (pieces, None)
}

/// Reads `buf.len()` bytes at virtual `virt`. Returns how many were read:
/// all of them, or those before the first that cannot be, with the reason
/// (gdb shows what it got, and stops where memory ends).
pub fn read(
    memory: &GuestMemory,
    space: &AddressSpace,
    virt: u64,
    buf: &mut [u8],
) -> (usize, Option<AccessError>) {
    let (pieces, error) = pieces(memory, space, virt, buf.len() as u64);
    let mut done = 0usize;
    for (phys, len) in pieces {
        let len = len as usize;
        // `pieces` checked each range is RAM, so this cannot fail.
        if memory
            .read(GuestAddress(phys), &mut buf[done..done + len])
            .is_err()
        {
            return (done, Some(AccessError::NotRam { virt, phys }));
        }
        done += len;
    }
    (done, error)
}

/// Writes `data` at virtual `virt`: every byte, or none.
pub fn write(
    memory: &GuestMemory,
    space: &AddressSpace,
    virt: u64,
    data: &[u8],
) -> Result<(), AccessError> {
    let (pieces, error) = pieces(memory, space, virt, data.len() as u64);
    if let Some(error) = error {
        return Err(error);
    }
    let mut done = 0usize;
    for (phys, len) in pieces {
        let len = len as usize;
        memory
            .write(GuestAddress(phys), &data[done..done + len])
            .map_err(|_| AccessError::NotRam { virt, phys })?;
        done += len;
    }
    Ok(())
}

/// The guest-physical address of virtual `virt`, if it is guest RAM.
pub fn physical(memory: &GuestMemory, space: &AddressSpace, virt: u64) -> Result<u64, AccessError> {
    match pieces(memory, space, virt, 1) {
        (pieces, None) => Ok(pieces[0].0),
        (_, Some(error)) => Err(error),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const RAM: u64 = 16 << 20;
    /// Where the hand-built tables live.
    const ROOT: u64 = 0x10_0000;
    /// Two virtually adjacent pages, mapped to physical pages far apart.
    pub const TEXT: u64 = 0xffff_ffff_8100_0000;
    pub const TEXT_PHYS: u64 = 0x40_0000;
    pub const NEXT_PHYS: u64 = 0x20_3000;
    /// A page mapped to physical memory past the end of RAM.
    pub const DEVICE: u64 = TEXT + 0x2000;
    /// Not mapped at all.
    pub const UNMAPPED: u64 = TEXT + 0x3000;

    /// 16 MiB of RAM with 4-level tables mapping TEXT, TEXT + 4K and DEVICE.
    pub fn paged_memory() -> (GuestMemory, AddressSpace) {
        let memory = GuestMemory::new(RAM).unwrap();
        let table = |level: u64| ROOT + level * 0x1000;
        let index = |virt: u64, level: u32| (virt >> (12 + 9 * (level - 1))) & 511;
        let entry = |at: u64, i: u64, value: u64| {
            memory
                .write_obj(GuestAddress(at + i * 8), &(value | 0x3))
                .unwrap()
        };
        entry(table(0), index(TEXT, 4), table(1));
        entry(table(1), index(TEXT, 3), table(2));
        entry(table(2), index(TEXT, 2), table(3));
        entry(table(3), index(TEXT, 1), TEXT_PHYS);
        entry(table(3), index(TEXT, 1) + 1, NEXT_PHYS);
        entry(table(3), index(TEXT, 1) + 2, RAM + 0x10_0000);
        let sregs = kvm_sregs {
            cr0: 1 << 31 | 1,
            cr3: ROOT,
            cr4: 1 << 5,
            efer: 1 << 10 | 1 << 8,
            ..Default::default()
        };
        (memory, AddressSpace::of(&sregs).unwrap())
    }

    #[test]
    fn a_read_across_a_page_boundary_follows_each_page() {
        let (memory, space) = paged_memory();
        memory
            .write(GuestAddress(TEXT_PHYS + 0xffe), b"ab")
            .unwrap();
        memory.write(GuestAddress(NEXT_PHYS), b"cd").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(read(&memory, &space, TEXT + 0xffe, &mut buf), (4, None));
        assert_eq!(&buf, b"abcd");
        assert_eq!(physical(&memory, &space, TEXT + 0x1001), Ok(NEXT_PHYS + 1));
    }

    #[test]
    fn a_read_stops_where_the_mapping_stops() {
        let (memory, space) = paged_memory();
        let mut buf = [0u8; 8];
        let (read_bytes, error) = read(&memory, &space, DEVICE - 3, &mut buf);
        assert_eq!(read_bytes, 3);
        assert_eq!(
            error,
            Some(AccessError::NotRam {
                virt: DEVICE,
                phys: RAM + 0x10_0000
            })
        );
        let (read_bytes, error) = read(&memory, &space, UNMAPPED, &mut buf);
        assert_eq!(read_bytes, 0);
        assert!(matches!(
            error,
            Some(AccessError::Unmapped {
                virt: UNMAPPED,
                fault: WalkFault::NotPresent { level: 1 }
            })
        ));
        // Not canonical.
        let (read_bytes, error) = read(&memory, &space, 0x8000_0000_0000_0000, &mut buf);
        assert_eq!(read_bytes, 0);
        assert!(error.unwrap().to_string().contains("not a canonical"));
    }

    #[test]
    fn a_write_that_would_leave_ram_changes_nothing() {
        let (memory, space) = paged_memory();
        let before = memory
            .read_obj::<[u8; 4096]>(GuestAddress(NEXT_PHYS))
            .unwrap();
        let error = write(&memory, &space, DEVICE - 2, &[0xcc; 4]).unwrap_err();
        assert!(matches!(error, AccessError::NotRam { .. }), "{error}");
        let after = memory
            .read_obj::<[u8; 4096]>(GuestAddress(NEXT_PHYS))
            .unwrap();
        assert_eq!(before, after);
        assert!(write(&memory, &space, UNMAPPED, &[1]).is_err());
        assert!(write(&memory, &space, u64::MAX, &[1, 2]).is_err());
        write(&memory, &space, TEXT + 0xfff, &[7, 8]).unwrap();
        assert_eq!(
            memory
                .read_obj::<u8>(GuestAddress(TEXT_PHYS + 0xfff))
                .unwrap(),
            7
        );
        assert_eq!(memory.read_obj::<u8>(GuestAddress(NEXT_PHYS)).unwrap(), 8);
    }

    #[test]
    fn with_paging_off_an_address_is_physical_and_still_checked() {
        let memory = GuestMemory::new(RAM).unwrap();
        let space = AddressSpace::of(&kvm_sregs::default()).unwrap();
        assert_eq!(space, AddressSpace::Physical);
        write(&memory, &space, 0x1000, b"lg").unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(read(&memory, &space, 0x1000, &mut buf), (2, None));
        assert_eq!(&buf, b"lg");
        assert!(write(&memory, &space, RAM - 1, b"lg").is_err());
        let mut buf = [0u8; 2];
        assert_eq!(read(&memory, &space, RAM - 1, &mut buf).0, 1);
    }

    #[test]
    fn thirty_two_bit_paging_is_refused_not_guessed() {
        let sregs = kvm_sregs {
            cr0: 1 << 31 | 1,
            ..Default::default()
        };
        assert_eq!(
            AddressSpace::of(&sregs),
            Err(AccessError::Mode(UnsupportedMode::NotLongMode))
        );
    }
}
