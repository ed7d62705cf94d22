//! The DSDT: the root of the guest's ACPI namespace, written in AML.
//!
//! Everything the fixed tables cannot say lives here as AML objects the
//! kernel's interpreter evaluates. lg's namespace is tiny: the `\_S5` package,
//! which gives the sleep type to write for "soft off" (the kernel will not
//! offer ACPI power-off without it), and the `\_SB` (system bus) scope with
//! the one device a kernel cannot discover on its own, COM1. The PCI host
//! bridge (`PNP0A08`, with its bus, I/O and memory windows) joins `\_SB`
//! when lg has PCI.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Name, Package, ResourceTemplate, Scope, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use hcall_abi::layout::{ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, COM1_PORT_COUNT};

use crate::{encode, OEM_ID, OEM_REVISION};

/// DSDT revision 2 and later make AML integers 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// The length of the table header, before the AML.
const HEADER_LEN: u32 = 36;

/// COM1's port count as the I/O resource descriptor's one-byte length.
const COM1_LENGTH: u8 = {
    assert!(COM1_PORT_COUNT <= u8::MAX as u16);
    COM1_PORT_COUNT as u8
};

/// The DSDT's bytes.
pub(crate) fn build() -> Vec<u8> {
    // Name (\_S5, Package () { SLP_TYPa, SLP_TYPb, reserved, reserved }).
    // A hardware-reduced kernel writes only SLP_TYPa, to the sleep control
    // register; SLP_TYPb was for a second PM1 control block.
    let s5 = Name::new(
        "\\_S5_".into(),
        &Package::new(vec![&ACPI_S5_SLEEP_TYPE, &ZERO, &ZERO, &ZERO]),
    );

    // COM1 at its fixed ports, interrupting on ISA IRQ 4, which (with no
    // interrupt source override in the MADT) is GSI 4: edge-triggered,
    // active-high, not shared, as the UART raises it through KVM.
    let com1_io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_LENGTH);
    let com1_irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_resources = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let com1_uid = Name::new("_UID".into(), &ZERO);
    let com1_crs = Name::new("_CRS".into(), &com1_resources);
    let com1 = Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);
    let system_bus = Scope::new("\\_SB_".into(), vec![&com1]);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        *b"LGDSDT  ",
        OEM_REVISION,
    );
    let mut aml = encode(&s5);
    aml.extend(encode(&system_bus));
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}
