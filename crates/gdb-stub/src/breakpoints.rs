//! Software breakpoints: `int3` bytes planted in guest memory, and the
//! bytes they replaced.
//!
//! gdb asks for a software breakpoint at a virtual address; lg translates it
//! once (through the page tables of the vCPU gdb is looking at), remembers
//! the guest-physical byte it overwrote, and writes `0xcc` there. Removing
//! the breakpoint puts the byte back, but only if the `int3` is still
//! there: the guest may have reused the page meanwhile (a module unloaded,
//! a page freed), and then the byte lg remembers is no longer the guest's.
//! When gdb goes away, whatever is still planted is removed the same way.
//!
//! Keeping the physical address means a breakpoint is removed from where it
//! was put even if the guest has changed its page tables since.

use shadow_mmu::{GuestAddress, GuestMemory};

use crate::memory::{self, AccessError, AddressSpace};

/// The one-byte breakpoint instruction.
pub const INT3: u8 = 0xcc;

/// One planted `int3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Planted {
    /// Where gdb asked for it (virtual).
    addr: u64,
    /// Where it was written (guest-physical).
    phys: u64,
    /// The byte it replaced.
    original: u8,
}

/// The software breakpoints planted in one guest.
#[derive(Debug, Default)]
pub struct SoftwareBreakpoints {
    planted: Vec<Planted>,
}

impl SoftwareBreakpoints {
    /// Plants an `int3` at virtual `addr`. Planting twice at one address
    /// is planting once.
    pub fn plant(
        &mut self,
        memory: &GuestMemory,
        space: &AddressSpace,
        addr: u64,
    ) -> Result<(), AccessError> {
        if self.planted.iter().any(|p| p.addr == addr) {
            return Ok(());
        }
        let phys = memory::physical(memory, space, addr)?;
        let original = memory
            .read_obj::<u8>(GuestAddress(phys))
            .map_err(|_| AccessError::NotRam { virt: addr, phys })?;
        memory
            .write_obj(GuestAddress(phys), &INT3)
            .map_err(|_| AccessError::NotRam { virt: addr, phys })?;
        self.planted.push(Planted {
            addr,
            phys,
            original,
        });
        Ok(())
    }

    /// Removes the breakpoint at virtual `addr`; false if there was none.
    pub fn remove(&mut self, memory: &GuestMemory, addr: u64) -> bool {
        match self.planted.iter().position(|p| p.addr == addr) {
            Some(index) => {
                restore(memory, self.planted.swap_remove(index));
                true
            }
            None => false,
        }
    }

    /// Removes every breakpoint.
    pub fn remove_all(&mut self, memory: &GuestMemory) {
        for planted in self.planted.drain(..) {
            restore(memory, planted);
        }
    }

    /// Where the breakpoints are (virtual), for telling the vCPUs which
    /// `#BP` exits are the debugger's.
    pub fn addresses(&self) -> Vec<u64> {
        self.planted.iter().map(|p| p.addr).collect()
    }
}

/// Puts the original byte back, if the `int3` is still there.
fn restore(memory: &GuestMemory, planted: Planted) {
    let at = GuestAddress(planted.phys);
    match memory.read_obj::<u8>(at) {
        Ok(INT3) => {
            let _ = memory.write_obj(at, &planted.original);
        }
        Ok(other) => log::info!(
            "the guest overwrote the breakpoint at {:#x} (now {other:#04x}); leaving its byte",
            planted.addr
        ),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::tests::{paged_memory, NEXT_PHYS, TEXT, TEXT_PHYS, UNMAPPED};

    #[test]
    fn planting_writes_int3_and_removing_puts_the_byte_back() {
        let (memory, space) = paged_memory();
        memory.write(GuestAddress(TEXT_PHYS), &[0x55]).unwrap();
        memory.write(GuestAddress(NEXT_PHYS), &[0x48]).unwrap();
        let mut bps = SoftwareBreakpoints::default();
        bps.plant(&memory, &space, TEXT).unwrap();
        bps.plant(&memory, &space, TEXT).unwrap();
        bps.plant(&memory, &space, TEXT + 0x1000).unwrap();
        assert_eq!(bps.addresses(), [TEXT, TEXT + 0x1000]);
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(TEXT_PHYS)).unwrap(),
            INT3
        );
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(NEXT_PHYS)).unwrap(),
            INT3
        );

        assert!(bps.remove(&memory, TEXT));
        assert!(!bps.remove(&memory, TEXT));
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(TEXT_PHYS)).unwrap(),
            0x55
        );
        bps.remove_all(&memory);
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(NEXT_PHYS)).unwrap(),
            0x48
        );
        assert!(bps.addresses().is_empty());
    }

    #[test]
    fn a_breakpoint_on_unmapped_memory_is_an_error_and_plants_nothing() {
        let (memory, space) = paged_memory();
        let mut bps = SoftwareBreakpoints::default();
        assert!(bps.plant(&memory, &space, UNMAPPED).is_err());
        assert!(bps.addresses().is_empty());
    }

    #[test]
    fn a_byte_the_guest_rewrote_is_left_alone() {
        let (memory, space) = paged_memory();
        memory.write(GuestAddress(TEXT_PHYS), &[0x55]).unwrap();
        let mut bps = SoftwareBreakpoints::default();
        bps.plant(&memory, &space, TEXT).unwrap();
        memory.write(GuestAddress(TEXT_PHYS), &[0x90]).unwrap();
        bps.remove_all(&memory);
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(TEXT_PHYS)).unwrap(),
            0x90
        );
    }
}
