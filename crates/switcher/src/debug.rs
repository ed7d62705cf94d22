//! Guest debugging in KVM's terms: the breakpoints and single-steps a
//! debugger asks for, turned into `KVM_SET_GUEST_DEBUG`'s flags and debug
//! registers, and a `KVM_EXIT_DEBUG` turned back into what happened.
//!
//! x86 gives a debugger two kinds of breakpoint, and lg uses both the way
//! QEMU does:
//!
//! - a *software* breakpoint is an `int3` byte the debugger writes over the
//!   instruction (through guest memory, so this module never sees it). With
//!   `KVM_GUESTDBG_USE_SW_BP`, KVM turns every `#BP` into an exit instead of
//!   delivering it to the guest;
//! - a *hardware* breakpoint is one of the four debug address registers
//!   DR0-DR3, enabled in DR7, matched by the CPU itself with nothing written
//!   to memory: it works on code not yet loaded, and on read-only ROM. With
//!   `KVM_GUESTDBG_USE_HW_BP`, KVM loads lg's DR0-DR3 and DR7 while the guest
//!   runs, and turns the resulting `#DB` into an exit. The same registers
//!   serve data watchpoints.
//!
//! Single-stepping is `KVM_GUESTDBG_SINGLESTEP`: KVM sets the trap flag for
//! one instruction and exits on the `#DB` that follows.
//!
//! The guest may use `int3` and `#DB` itself (the kernel patches live code
//! with `int3`, and ptrace single-steps with the trap flag). An exit that
//! none of lg's breakpoints explains is therefore the guest's own, and is
//! handed back to it ([`reinjection`]) rather than stopping anything.

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};

/// DR0-DR3: how many hardware breakpoints and watchpoints x86 has in all.
pub const HW_SLOTS: usize = 4;

/// The exception vectors a debug exit reports.
const DEBUG_VECTOR: u32 = 1;
const BREAKPOINT_VECTOR: u32 = 3;

/// DR6.BS: the `#DB` came from the trap flag (a single step).
const DR6_SINGLE_STEP: u64 = 1 << 14;
/// DR7 bits that are always one, plus GE ("exact" data breakpoints), as
/// QEMU and the kernel's own hw_breakpoint code set them.
const DR7_FIXED: u64 = 0x0600;

/// What a hardware slot watches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HwKind {
    /// An instruction fetch at the address: a hardware breakpoint.
    Execute,
    /// A data write: a watchpoint.
    Write,
    /// A data read or write (x86 has no read-only watchpoint).
    Access,
}

impl HwKind {
    /// DR7's R/W field for the kind.
    fn rw_bits(self) -> u64 {
        match self {
            HwKind::Execute => 0b00,
            HwKind::Write => 0b01,
            HwKind::Access => 0b11,
        }
    }
}

/// One hardware breakpoint or watchpoint: a linear (virtual) address, what
/// to watch for, and how many bytes (1 for an instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwBreakpoint {
    pub addr: u64,
    pub kind: HwKind,
    pub len: u64,
}

impl HwBreakpoint {
    /// A breakpoint on the instruction at `addr`.
    pub fn execute(addr: u64) -> HwBreakpoint {
        HwBreakpoint {
            addr,
            kind: HwKind::Execute,
            len: 1,
        }
    }

    /// DR7's LEN field for the breakpoint, or why the CPU cannot watch it.
    fn len_bits(&self) -> Result<u64, HwError> {
        if self.kind == HwKind::Execute {
            // The CPU requires LEN 0 (one byte) for instruction breakpoints.
            return Ok(0b00);
        }
        let bits = match self.len {
            1 => 0b00,
            2 => 0b01,
            4 => 0b11,
            8 => 0b10,
            other => return Err(HwError::Length(other)),
        };
        // The length is a power of two by now.
        if self.addr & (self.len - 1) != 0 {
            return Err(HwError::Misaligned {
                addr: self.addr,
                len: self.len,
            });
        }
        Ok(bits)
    }
}

/// Why a hardware breakpoint cannot be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwError {
    /// All four debug registers are taken.
    NoFreeSlot,
    /// The CPU watches 1, 2, 4 or 8 bytes, nothing else.
    Length(u64),
    /// A watched range must be aligned to its length.
    Misaligned { addr: u64, len: u64 },
}

impl std::fmt::Display for HwError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HwError::NoFreeSlot => write!(f, "all {HW_SLOTS} debug registers are in use"),
            HwError::Length(len) => {
                write!(f, "the CPU can watch 1, 2, 4 or 8 bytes, not {len}")
            }
            HwError::Misaligned { addr, len } => {
                write!(f, "{addr:#x} is not aligned to the watched length {len}")
            }
        }
    }
}

impl std::error::Error for HwError {}

/// Every breakpoint a debugger has set, as the vCPUs need to know them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakpoints {
    /// Addresses where the debugger planted an `int3`.
    pub software: Vec<u64>,
    /// DR0-DR3.
    pub hardware: [Option<HwBreakpoint>; HW_SLOTS],
}

impl Breakpoints {
    /// Takes the first free debug register for `bp`; returns its slot.
    pub fn add_hardware(&mut self, bp: HwBreakpoint) -> Result<usize, HwError> {
        bp.len_bits()?;
        let slot = self
            .hardware
            .iter()
            .position(Option::is_none)
            .ok_or(HwError::NoFreeSlot)?;
        self.hardware[slot] = Some(bp);
        Ok(slot)
    }

    /// Frees the debug register holding `bp`; false if none did.
    pub fn remove_hardware(&mut self, bp: HwBreakpoint) -> bool {
        match self.hardware.iter().position(|slot| *slot == Some(bp)) {
            Some(slot) => {
                self.hardware[slot] = None;
                true
            }
            None => false,
        }
    }

    /// DR7 enabling every slot in use, each with its kind and length.
    pub fn dr7(&self) -> u64 {
        let mut dr7 = DR7_FIXED;
        for (slot, bp) in self.hardware.iter().enumerate() {
            let Some(bp) = bp else { continue };
            // Breakpoints that cannot be encoded never get into a slot.
            let len = bp.len_bits().unwrap_or(0);
            // G (global enable), so the guest's task switches do not clear it.
            dr7 |= 2 << (slot * 2);
            dr7 |= (bp.kind.rw_bits() | (len << 2)) << (16 + slot * 4);
        }
        dr7
    }

    /// What `KVM_SET_GUEST_DEBUG` should get for a vCPU with these
    /// breakpoints, single-stepping or not. Without breakpoints or a step,
    /// debugging is off entirely, so the guest runs exactly as without lg's
    /// debugger.
    pub fn guest_debug(&self, single_step: bool) -> kvm_guest_debug {
        let mut debug = kvm_guest_debug::default();
        if !self.software.is_empty() {
            debug.control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if self.hardware.iter().any(Option::is_some) {
            debug.control |= KVM_GUESTDBG_USE_HW_BP;
            for (slot, bp) in self.hardware.iter().enumerate() {
                if let Some(bp) = bp {
                    debug.arch.debugreg[slot] = bp.addr;
                }
            }
            debug.arch.debugreg[7] = self.dr7();
        }
        if single_step {
            // Interrupts stay blocked during the step, or the step would
            // land in whichever interrupt handler was due (the timer's).
            debug.control |= KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ;
        }
        if debug.control != 0 {
            debug.control |= KVM_GUESTDBG_ENABLE;
        }
        debug
    }
}

/// The same settings without `KVM_GUESTDBG_BLOCKIRQ`, for kernels older
/// than 5.15, which refuse the flag.
pub fn without_irq_blocking(mut debug: kvm_guest_debug) -> kvm_guest_debug {
    debug.control &= !KVM_GUESTDBG_BLOCKIRQ;
    debug
}

/// Why a vCPU stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugStop {
    /// A single step finished.
    Step,
    /// The vCPU hit the `int3` planted at `addr`.
    SoftwareBreakpoint { addr: u64 },
    /// The vCPU is about to execute the instruction at DR`slot`.
    HardwareBreakpoint { slot: usize, addr: u64 },
    /// The vCPU touched the data DR`slot` watches.
    Watchpoint {
        slot: usize,
        addr: u64,
        kind: HwKind,
    },
}

/// What a `KVM_EXIT_DEBUG` means, given the breakpoints that were set and
/// whether the vCPU was single-stepping; `None` when it is none of the
/// debugger's business (see [`reinjection`]).
///
/// A watchpoint wins over a step that ended on the same instruction: gdb
/// wants to hear about the data, and checks where the step landed itself.
pub fn classify(
    exit: &kvm_debug_exit_arch,
    breakpoints: &Breakpoints,
    stepping: bool,
) -> Option<DebugStop> {
    match exit.exception {
        BREAKPOINT_VECTOR => breakpoints
            .software
            .contains(&exit.pc)
            .then_some(DebugStop::SoftwareBreakpoint { addr: exit.pc }),
        DEBUG_VECTOR => {
            let hit = |slot: usize| exit.dr6 & (1 << slot) != 0;
            let slots = || {
                breakpoints
                    .hardware
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, bp)| Some((slot, (*bp)?)))
                    .filter(move |(slot, _)| hit(*slot))
            };
            if let Some((slot, bp)) = slots().find(|(_, bp)| bp.kind != HwKind::Execute) {
                return Some(DebugStop::Watchpoint {
                    slot,
                    addr: bp.addr,
                    kind: bp.kind,
                });
            }
            if stepping && exit.dr6 & DR6_SINGLE_STEP != 0 {
                return Some(DebugStop::Step);
            }
            slots()
                .next()
                .map(|(slot, bp)| DebugStop::HardwareBreakpoint {
                    slot,
                    addr: bp.addr,
                })
        }
        _ => None,
    }
}

/// The `KVM_SET_GUEST_DEBUG` flag that hands an exit lg does not claim back
/// to the guest as the exception it was, keeping `current` in force.
pub fn reinjection(exit: &kvm_debug_exit_arch, current: &kvm_guest_debug) -> kvm_guest_debug {
    let mut debug = *current;
    debug.control |= if exit.exception == BREAKPOINT_VECTOR {
        KVM_GUESTDBG_INJECT_BP
    } else {
        KVM_GUESTDBG_INJECT_DB
    };
    debug
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debug_exit(exception: u32, pc: u64, dr6: u64) -> kvm_debug_exit_arch {
        kvm_debug_exit_arch {
            exception,
            pc,
            dr6,
            ..Default::default()
        }
    }

    #[test]
    fn dr7_enables_each_slot_with_its_kind_and_length() {
        let mut bps = Breakpoints::default();
        assert_eq!(bps.dr7(), 0x600);
        bps.add_hardware(HwBreakpoint::execute(0xffff_ffff_8100_0000))
            .unwrap();
        // G0, R/W0 = 00 (execute), LEN0 = 00.
        assert_eq!(bps.dr7(), 0x602);
        let watch = HwBreakpoint {
            addr: 0x1000,
            kind: HwKind::Write,
            len: 4,
        };
        assert_eq!(bps.add_hardware(watch), Ok(1));
        // G1, R/W1 = 01 (write), LEN1 = 11 (4 bytes).
        assert_eq!(bps.dr7(), 0x602 | 0x8 | (0b1101 << 20));
        let access = HwBreakpoint {
            addr: 0x2000,
            kind: HwKind::Access,
            len: 8,
        };
        assert_eq!(bps.add_hardware(access), Ok(2));
        // G2, R/W2 = 11, LEN2 = 10 (8 bytes).
        assert_eq!(bps.dr7() & (0xf << 24), 0b1011 << 24);
        assert_eq!(bps.dr7() & 0x20, 0x20);
    }

    #[test]
    fn four_slots_and_no_more_and_a_freed_slot_is_reused() {
        let mut bps = Breakpoints::default();
        for i in 0..4 {
            assert_eq!(bps.add_hardware(HwBreakpoint::execute(i)), Ok(i as usize));
        }
        assert_eq!(
            bps.add_hardware(HwBreakpoint::execute(9)),
            Err(HwError::NoFreeSlot)
        );
        assert!(bps.remove_hardware(HwBreakpoint::execute(1)));
        assert!(!bps.remove_hardware(HwBreakpoint::execute(1)));
        assert_eq!(bps.add_hardware(HwBreakpoint::execute(9)), Ok(1));
    }

    #[test]
    fn watchpoints_the_cpu_cannot_encode_are_refused() {
        let mut bps = Breakpoints::default();
        let watch = |addr, len| HwBreakpoint {
            addr,
            kind: HwKind::Write,
            len,
        };
        assert_eq!(bps.add_hardware(watch(0x1000, 3)), Err(HwError::Length(3)));
        assert_eq!(
            bps.add_hardware(watch(0x1002, 4)),
            Err(HwError::Misaligned {
                addr: 0x1002,
                len: 4
            })
        );
        assert_eq!(bps, Breakpoints::default());
        // An instruction breakpoint may be at any byte.
        assert_eq!(bps.add_hardware(HwBreakpoint::execute(0x1003)), Ok(0));
    }

    #[test]
    fn guest_debug_is_off_without_breakpoints_and_on_with_them() {
        let mut bps = Breakpoints::default();
        assert_eq!(bps.guest_debug(false), kvm_guest_debug::default());
        let step = bps.guest_debug(true);
        assert_eq!(
            step.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ
        );
        assert_eq!(
            without_irq_blocking(step).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        );
        bps.software.push(0xffff_ffff_8100_0000);
        bps.add_hardware(HwBreakpoint::execute(0xffff_ffff_8200_0000))
            .unwrap();
        let debug = bps.guest_debug(false);
        assert_eq!(
            debug.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP | KVM_GUESTDBG_USE_HW_BP
        );
        assert_eq!(debug.arch.debugreg[0], 0xffff_ffff_8200_0000);
        assert_eq!(debug.arch.debugreg[7], 0x602);
    }

    #[test]
    fn exits_are_classified_by_what_was_set() {
        let mut bps = Breakpoints::default();
        bps.software.push(0x1000);
        bps.add_hardware(HwBreakpoint::execute(0x2000)).unwrap();
        bps.add_hardware(HwBreakpoint {
            addr: 0x3000,
            kind: HwKind::Write,
            len: 8,
        })
        .unwrap();

        assert_eq!(
            classify(&debug_exit(3, 0x1000, 0), &bps, false),
            Some(DebugStop::SoftwareBreakpoint { addr: 0x1000 })
        );
        // The guest's own int3 (the kernel patching its text).
        assert_eq!(classify(&debug_exit(3, 0x1234, 0), &bps, false), None);
        assert_eq!(
            classify(&debug_exit(1, 0x2000, 0b01), &bps, false),
            Some(DebugStop::HardwareBreakpoint {
                slot: 0,
                addr: 0x2000
            })
        );
        assert_eq!(
            classify(&debug_exit(1, 0x2345, 0b10 | DR6_SINGLE_STEP), &bps, true),
            Some(DebugStop::Watchpoint {
                slot: 1,
                addr: 0x3000,
                kind: HwKind::Write
            })
        );
        assert_eq!(
            classify(&debug_exit(1, 0x2345, DR6_SINGLE_STEP), &bps, true),
            Some(DebugStop::Step)
        );
        // A trap-flag #DB while lg was not stepping is the guest's (ptrace).
        assert_eq!(
            classify(&debug_exit(1, 0x2345, DR6_SINGLE_STEP), &bps, false),
            None
        );
        // A slot lg does not use.
        assert_eq!(classify(&debug_exit(1, 0x2345, 0b1000), &bps, false), None);
        assert_eq!(classify(&debug_exit(6, 0x2345, 0), &bps, false), None);
    }

    #[test]
    fn reinjection_keeps_the_settings_and_names_the_exception() {
        let mut bps = Breakpoints::default();
        bps.software.push(0x1000);
        let current = bps.guest_debug(false);
        let bp = reinjection(&debug_exit(3, 0x1234, 0), &current);
        assert_eq!(bp.control, current.control | KVM_GUESTDBG_INJECT_BP);
        let db = reinjection(&debug_exit(1, 0x1234, DR6_SINGLE_STEP), &current);
        assert_eq!(db.control, current.control | KVM_GUESTDBG_INJECT_DB);
    }
}
