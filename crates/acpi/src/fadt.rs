//! The FADT (signature "FACP"): ACPI's description of a PC's fixed hardware,
//! and the table through which the kernel finds the DSDT.
//!
//! On a classic PC most of its 276 bytes locate the PM1 register blocks, the
//! power-management timer and the SCI. lg has none of those: it declares the
//! machine hardware-reduced, which tells the kernel to ignore all of them,
//! and gives instead the three registers a hardware-reduced machine still
//! has, each a single I/O port lg's switcher serves. `poweroff` ends in the
//! kernel writing `SLP_TYP << 2 | SLP_EN` to the sleep control register, with
//! `SLP_TYP` taken from the DSDT's `\_S5` package; `reboot` ends in it
//! writing the reset value to the reset register.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use hcall_abi::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};
use shadow_mmu::GuestAddress;

use crate::{encode, OEM_ID, OEM_REVISION};

/// IA-PC boot architecture flags (ACPI 6.5, table 5.11): which legacy
/// hardware a kernel may look for. Only the ones lg sets are named; why the
/// others stay clear is said where the field is filled in.
mod boot_arch {
    /// Devices on the ISA bus exist: COM1 at 0x3f8 is one.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// Probing for VGA is unsafe. There is no VGA, and lg's ACPI ports sit at
    /// 0x3c0..0x3c2, inside VGA's register range, where a VGA probe's writes
    /// would land on the sleep and reset registers.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
}

/// The hypervisor vendor identity field, a free-form 8 bytes since ACPI 6.0.
const HYPERVISOR_VENDOR_IDENTITY: [u8; 8] = *b"LGLGLGLG";

/// The FADT's bytes, pointing at the DSDT written at `dsdt`.
pub(crate) fn build(dsdt: GuestAddress) -> Vec<u8> {
    // The FADT acpi_tables builds is revision 6.5, so it has the
    // hardware-reduced sleep registers (revision 5 and later) and the
    // hypervisor identity (6.0 and later).
    let mut fadt = FADTBuilder::new(OEM_ID, *b"LGFACP  ", OEM_REVISION)
        // Only the 64-bit X_DSDT: when it is set, the 32-bit field is
        // ignored, and leaving that zero avoids two pointers that could
        // disagree.
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // These two say the power and sleep buttons, if any, are devices in
        // the namespace rather than fixed hardware. There are none, and
        // without the bits the kernel would register phantom fixed buttons.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = io_port_byte(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_byte(ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io_port_byte(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    // Left clear: bit 1, "an 8042 exists", because lg answers only the
    // 8042's reset command (the last thing a reboot tries), and with the bit
    // clear and no PS/2 device in the DSDT the kernel's i8042 driver gives
    // up at once instead of probing a controller that is not there; bit 3,
    // "MSI unsupported", because KVM's local APICs take MSIs and virtio-pci
    // will want them; bit 4, PCIe ASPM, because there is no PCIe; bit 5,
    // "no CMOS RTC", because lg serves one at ports 0x70/0x71 (the cmos-rtc
    // crate), where the kernel reads the date at boot.
    fadt.iapc_boot_arch = (boot_arch::LEGACY_DEVICES | boot_arch::VGA_NOT_PRESENT).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_IDENTITY).into();
    // No FACS: it holds the waking vector and the global lock, and a
    // hardware-reduced machine that never sleeps (S5 is not a sleep the
    // kernel wakes from) and has no SCI needs neither.
    encode(&fadt.finalize())
}

/// A one-byte register at an I/O port, as a generic address structure. The
/// spec requires the reset register to be exactly this shape, and the kernel
/// accesses the sleep registers with the width given here.
fn io_port_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}
