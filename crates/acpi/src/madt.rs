//! The MADT (signature "APIC"): the interrupt controllers, and so the CPUs.
//!
//! A kernel booted without MP tables learns how many CPUs it has only from
//! this table: one local APIC entry per CPU, which it then wakes with
//! INIT/SIPI. The same table tells it where the IO-APIC is, and how ISA
//! interrupts reach it. Every controller described here is emulated by KVM
//! in the kernel (the switcher creates them); this table only has to describe
//! them the way KVM wired them.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use hcall_abi::layout::{IOAPIC_ADDR, LAPIC_ADDR};
use zerocopy::{Immutable, IntoBytes};

use crate::{OEM_ID, OEM_REVISION};

/// ACPI 6.5's MADT revision.
const MADT_REVISION: u8 = 6;
/// The MADT header: the common table header, then the local APIC address
/// and the flags.
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: the machine also has the dual 8259 PICs, which the kernel must
/// mask before using the APICs. KVM emulates them (a hardware-reduced Linux
/// ignores them, but another guest might not).
const PCAT_COMPAT: u32 = 1 << 0;
/// MADT structure type of the local APIC NMI entry.
const LOCAL_APIC_NMI: u8 = 4;
/// The ACPI processor uid that means "every processor".
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input the NMI arrives on, as on every PC.
const LINT1: u8 = 1;

/// The MADT keeps 32-bit controller addresses.
const LAPIC_ADDR_32: u32 = {
    assert!(LAPIC_ADDR <= u32::MAX as u64);
    LAPIC_ADDR as u32
};
const IOAPIC_ADDR_32: u32 = {
    assert!(IOAPIC_ADDR <= u32::MAX as u64);
    IOAPIC_ADDR as u32
};

/// Local APIC NMI structure (ACPI 6.5, 5.2.12.7), which acpi_tables lacks:
/// which processors' local APIC input the NMI line is wired to.
#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    acpi_processor_uid: u8,
    /// MPS INTI flags: polarity and trigger mode. 0 means "as the bus
    /// says", right for NMI.
    flags: [u8; 2],
    lint: u8,
}

const _: () = assert!(std::mem::size_of::<LocalApicNmi>() == 6);

/// The MADT's bytes for a machine with `vcpus` CPUs.
pub(crate) fn build(vcpus: u8) -> Vec<u8> {
    // acpi_tables' own MADT type keeps its flags private, so the table is
    // assembled on its generic one, which still keeps length and checksum.
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        *b"LGAPIC  ",
        OEM_REVISION,
    );
    madt.write_u32(36, LAPIC_ADDR_32);
    madt.write_u32(40, PCAT_COMPAT);

    let mut entries = Vec::new();
    // ACPI processor uid and APIC id are both the vCPU's index: KVM gives the
    // vCPU created with id n APIC id n, and the spec asks for the boot CPU
    // (vCPU 0) first.
    for cpu in 0..vcpus {
        ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    // IO-APICs and local APICs once shared one APIC bus and one id space, so
    // the IO-APIC takes the first id after the CPUs' (the reason for
    // MAX_VCPUS). A 64-bit kernel only needs it unique, and KVM ignores it.
    // Its 24 pins are GSIs 0..23.
    IoApic::new(vcpus, IOAPIC_ADDR_32, 0).to_aml_bytes(&mut entries);
    // No interrupt source overrides, not even the usual "ISA IRQ 0 is GSI 2"
    // real PCs and QEMU need. That one exists because their timer is wired
    // to IO-APIC pin 2; KVM's default routing sends GSI n to pin n, and its
    // in-kernel PIT raises GSI 0, so the override would point a kernel that
    // looks for the PIT at a pin where it never fires. (A hardware-reduced
    // Linux sets up no PIT tick at all, but the table should still be true.)
    // Without overrides the kernel maps ISA IRQs 0..15 one-to-one,
    // edge-triggered and active-high, which is how KVM delivers them (COM1's
    // IRQ 4 included).
    let nmi = LocalApicNmi {
        kind: LOCAL_APIC_NMI,
        length: std::mem::size_of::<LocalApicNmi>() as u8,
        acpi_processor_uid: ALL_PROCESSORS,
        flags: [0; 2],
        lint: LINT1,
    };
    entries.extend_from_slice(nmi.as_bytes());

    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}
