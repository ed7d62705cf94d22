//! The virtual machine: one KVM VM file descriptor with guest RAM and the
//! in-kernel platform devices.
//!
//! lg lets KVM emulate the parts of a PC that every exit would otherwise
//! cost a round trip for: the 8259 PIC pair, the IO-APIC, each vCPU's local
//! APIC, and the 8254 PIT. Everything else (the UART, ACPI's power-off
//! register, later PCI) is lg's, in userspace, reached through exits.

use std::fmt;
use std::sync::Arc;

use hcall_abi::layout::KVM_TSS_ADDR;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use shadow_mmu::{GuestMemory, MemoryError};

use crate::cpu::{self, EntryState, Vcpu};

/// Why the VM or one of its vCPUs could not be set up or run.
#[derive(Debug)]
pub enum SwitcherError {
    /// A KVM call failed; the string says which step.
    Kvm(&'static str, kvm_ioctls::Error),
    /// The host's KVM lacks a capability lg depends on.
    MissingCapability(&'static str),
    /// Guest memory could not be registered or written.
    Memory(MemoryError),
    /// More vCPUs than the host's KVM allows.
    TooManyVcpus { asked: usize, max: usize },
}

impl fmt::Display for SwitcherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitcherError::Kvm(step, e) => write!(f, "KVM failed to {step}: {e}"),
            SwitcherError::MissingCapability(cap) => {
                write!(f, "this host's KVM lacks {cap}, which lg needs")
            }
            SwitcherError::Memory(e) => write!(f, "{e}"),
            SwitcherError::TooManyVcpus { asked, max } => {
                write!(
                    f,
                    "{asked} vCPUs asked for, but this host's KVM allows at most {max}"
                )
            }
        }
    }
}

impl std::error::Error for SwitcherError {}

impl From<MemoryError> for SwitcherError {
    fn from(e: MemoryError) -> Self {
        SwitcherError::Memory(e)
    }
}

/// A KVM virtual machine with its RAM and interrupt controllers in place.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    memory: Arc<GuestMemory>,
}

/// The capabilities lg cannot do without, with the names a person would
/// look up.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (
        Cap::Irqchip,
        "an in-kernel interrupt controller (KVM_CAP_IRQCHIP)",
    ),
    (Cap::Pit2, "an in-kernel timer (KVM_CAP_PIT2)"),
    (Cap::UserMemory, "user memory slots (KVM_CAP_USER_MEMORY)"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

impl Vm {
    /// Creates the VM, gives it `memory`, and creates the in-kernel PIC,
    /// IO-APIC and PIT.
    pub fn new(memory: Arc<GuestMemory>) -> Result<Vm, SwitcherError> {
        let kvm = Kvm::new().map_err(|e| SwitcherError::Kvm("open /dev/kvm", e))?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(SwitcherError::MissingCapability(name));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| SwitcherError::Kvm("create a VM", e))?;
        // Intel's VMX needs three pages of guest-physical space for its
        // real-mode TSS; put them in the hole, where no RAM is.
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(|e| SwitcherError::Kvm("set the TSS address", e))?;
        // The irqchip must exist before any vCPU, so each vCPU gets a local
        // APIC.
        fd.create_irq_chip()
            .map_err(|e| SwitcherError::Kvm("create the interrupt controllers", e))?;
        let pit = kvm_pit_config {
            // Port 0x61's speaker bit is emulated as a dummy so the kernel's
            // PIT calibration, which reads it, works.
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| SwitcherError::Kvm("create the PIT", e))?;
        memory.register(&fd)?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
        })
    }

    /// The VM's file descriptor, for wiring interrupts and, later, devices.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Guest RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Creates `count` vCPUs. The first starts at `entry`; the others wait,
    /// as on a real PC, for the boot CPU to wake them with INIT and SIPI
    /// (KVM's local APIC handles that).
    pub fn create_vcpus(
        &self,
        count: usize,
        entry: &EntryState,
    ) -> Result<Vec<Vcpu>, SwitcherError> {
        self.create_vcpus_entering(count, Some(entry))
    }

    /// Creates `count` vCPUs before the boot CPU's entry is known: each is
    /// as at reset until [`Vcpu::enter`] puts the boot CPU in long mode.
    /// lg makes them while the kernel is still being read into guest RAM.
    pub fn create_vcpus_unstarted(&self, count: usize) -> Result<Vec<Vcpu>, SwitcherError> {
        self.create_vcpus_entering(count, None)
    }

    fn create_vcpus_entering(
        &self,
        count: usize,
        entry: Option<&EntryState>,
    ) -> Result<Vec<Vcpu>, SwitcherError> {
        let max = self.kvm.get_max_vcpus();
        if count == 0 || count > max || count > 255 {
            return Err(SwitcherError::TooManyVcpus {
                asked: count,
                max: max.min(255),
            });
        }
        cpu::write_boot_gdt(&self.memory)?;
        cpu::write_reset_vector(&self.memory)?;
        let host_cpu = cpu::host_cpu(&self.kvm)?;
        (0..count)
            .map(|index| {
                cpu::create_vcpu(
                    &self.fd,
                    &host_cpu,
                    index as u8,
                    count as u8,
                    entry.filter(|_| index == 0),
                )
            })
            .collect()
    }
}
