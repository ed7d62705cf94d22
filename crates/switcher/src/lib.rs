//! # switcher: the world switch
//!
//! In lguest the Switcher was a page of assembly mapped at the top of both the
//! host's and the guest's address space, which saved one world's registers,
//! loaded the other's, and jumped. On KVM the hardware does that and the whole
//! switch is one ioctl, `KVM_RUN`. What remains is still the heart of the
//! hypervisor, and it lives here:
//!
//! - [`host`]: can this host's KVM run a stock kernel at all?
//! - [`vm`]: the virtual machine: guest RAM registered, the in-kernel
//!   interrupt controllers (PIC, IO-APIC, local APICs) and timer (PIT).
//! - [`cpu`]: each vCPU: the CPUID it reports, and for the boot CPU the
//!   64-bit state the Linux boot protocol asks for at the kernel's entry.
//! - [`run`]: the `KVM_RUN` loop, one thread per vCPU, handing each exit (an
//!   I/O port or MMIO access the kernel could not handle itself) to the
//!   devices through the [`ExitHandler`] trait, and deciding when the guest
//!   has ended.
//! - [`coalesced`]: writes KVM keeps in a shared ring instead of exiting
//!   (the serial port's transmit register), replayed before each exit.
//! - [`vcpu_control`]: reaching into running vCPUs from other threads
//!   (pause, resume, registers, any vCPU ioctl) at a checkpoint before each
//!   `KVM_RUN`; and [`debug`]: breakpoints and single steps in KVM's terms,
//!   for the gdb stub.
//! - [`irq`]: irqfds, ioeventfds and the GSI routing table, so devices on
//!   their own threads interrupt the guest, and are woken by it, without a
//!   trip through a vCPU thread.
//!
//! The switcher knows no device: the binary wires devices to it through
//! [`ExitHandler`], so the crate graph stays a ladder from KVM up to `lg`.

pub mod coalesced;
pub mod cpu;
pub mod debug;
pub mod host;
pub mod irq;
pub mod regs_dump;
pub mod run;
#[cfg(test)]
mod test_guest;
pub mod vcpu_control;
pub mod vm;

pub use coalesced::{CoalescedRing, CoalescedWrite};
pub use cpu::EntryState;
pub use cpu::Vcpu;
pub use debug::{Breakpoints, DebugStop, HwBreakpoint, HwError, HwKind};
pub use host::{check_host, HostError};
pub use regs_dump::format_registers;
pub use run::{ExitHandler, ExitStats, GuestEnd, PortAction};
pub use vcpu_control::{DebugEvent, Registers, RunAction, VcpuControl};
pub use vm::{SwitcherError, Vm};
