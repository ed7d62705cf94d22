//! The machine lg builds: where things sit in guest-physical memory and which
//! I/O ports lg serves.
//!
//! Every address here is one the guest sees. The low megabyte follows the PC
//! tradition the kernel still expects (real-mode data below 640 KiB, the
//! BIOS area above it), the kernel loads at its preferred address above 1 MiB,
//! and the top gigabyte below 4 GiB is left as a hole for the local APIC,
//! the IO-APIC and PCI devices, so RAM beyond 3 GiB continues above 4 GiB.

/// The boot GDT (8-byte descriptors): two null entries, then the flat 64-bit
/// code and data segments at the selectors the 64-bit boot protocol names,
/// `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), then a TSS (0x20).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_ADDR: u64 = 0x540;
/// The boot stack's top, used only until the kernel switches to its own.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// The zero page (`struct boot_params`), whose address the kernel gets in %rsi.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The identity-mapped boot page tables: one PML4, one PDPT and four page
/// directories of 2 MiB pages covering the first 4 GiB.
pub const BOOT_PML4_ADDR: u64 = 0x9000;
pub const BOOT_PDPT_ADDR: u64 = 0xa000;
pub const BOOT_PD_ADDR: u64 = 0xb000;
/// How many page directories follow `BOOT_PD_ADDR` (each maps 1 GiB).
pub const BOOT_PD_COUNT: u64 = 4;
/// The kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// The most command-line bytes lg will place, NUL included; the kernel's own
/// limit (`cmdline_size` in the setup header) is usually smaller.
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;
/// Where conventional memory ends: the extended BIOS data area starts here.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables, RSDP first, in the BIOS read-only area where the kernel
/// would also search for them.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area (exclusive): the start of high memory.
pub const ACPI_END: u64 = 0x100000;
/// The x86 reset vector (F000:FFF0): where a CPU starts after reset, and
/// where Linux jumps when it reboots "through the BIOS", the method it picks
/// on a hardware-reduced ACPI machine without EFI. lg puts a few bytes of
/// real-mode code here that write `ACPI_RESET_VALUE` to `ACPI_RESET_PORT`.
pub const RESET_VECTOR_ADDR: u64 = 0xffff0;
/// The first byte above the legacy first megabyte.
pub const HIMEM_START: u64 = 0x100000;
/// Where RAM below 4 GiB stops: the 32-bit hole for APICs and PCI begins.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Where RAM continues above the hole.
pub const MEM_32BIT_GAP_END: u64 = 0x1_0000_0000;
/// The IO-APIC's MMIO base (KVM's in-kernel IO-APIC sits here).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Where lg places PCI devices' memory BARs: the 32-bit hole from its start
/// up to the IO-APIC, so a 32-bit BAR can reach every address in it and no
/// BAR can cover the APICs above. The ACPI root bridge's `_CRS` describes the
/// same window, so Linux keeps lg's assignments instead of moving them.
pub const PCI_MMIO_START: u64 = MEM_32BIT_GAP_START;
/// The end (exclusive) of the PCI BAR window.
pub const PCI_MMIO_END: u64 = IOAPIC_ADDR;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// The TSS KVM needs for real-mode emulation on Intel: three pages near the
/// top of the 32-bit hole (above the local APIC), never RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// The 16550 UART (COM1) lg emulates for `console=ttyS0`.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's eight registers.
pub const COM1_PORT_COUNT: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// The CMOS real-time clock's first port (0x70 selects a register, 0x71
/// reads or writes it); the DSDT describes it so Linux's `rtc_cmos` binds.
pub const CMOS_RTC_PORT: u16 = 0x70;
/// The clock's two ports.
pub const CMOS_RTC_PORT_COUNT: u16 = 2;

/// The i8042 keyboard controller's command port: writing 0xfe there is the
/// oldest way to reset a PC, and Linux tries it when it reboots.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The command that pulses the CPU reset line.
pub const I8042_RESET_COMMAND: u8 = 0xfe;

/// PCI configuration mechanism #1's address register: a 32-bit write of
/// enable bit 31, bus, device, function and register selects which
/// configuration dword `PCI_CONFIG_DATA_PORT` reaches. Only 32-bit accesses
/// reach it; a byte at 0xcf9 is `CF9_RESET_PORT`.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// PCI configuration mechanism #1's data window: four ports, 0xcfc to 0xcff,
/// one per byte of the selected configuration dword.
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;

/// The PCI reset control register (Intel's "port CF9"): Linux's `reboot=pci`
/// writes 0x06 there; bit 2 starts the reset.
pub const CF9_RESET_PORT: u16 = 0xcf9;
/// The bit of `CF9_RESET_PORT` that resets the machine.
pub const CF9_RESET_BIT: u8 = 1 << 2;

/// ACPI hardware-reduced sleep control register (FADT `SLEEP_CONTROL_REG`):
/// the guest writes `SLP_TYP << 2 | SLP_EN` here to power off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI hardware-reduced sleep status register (FADT `SLEEP_STATUS_REG`).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// ACPI reset register (FADT `RESET_REG`): writing `ACPI_RESET_VALUE` reboots.
pub const ACPI_RESET_PORT: u16 = 0x3c2;
/// The value the guest writes to `ACPI_RESET_PORT` to reboot.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The sleep type lg's DSDT gives for S5 (soft off) in its `\_S5` package.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// The SLP_EN bit of the sleep control register.
pub const ACPI_SLEEP_ENABLE: u8 = 1 << 5;

/// The IO-APIC input (GSI) lg pulses to press the guest's ACPI power button
/// when asked to stop the guest. A hardware-reduced machine has no fixed
/// power button and no SCI to report one on, so the DSDT's Generic Event
/// Device claims this pin and turns its interrupt into a press of the
/// `PNP0C0C` button. The pins above 15 belong to PCI INTx; of the ISA pins,
/// 10 is one no device lg emulates uses and PC tradition leaves free for
/// add-in cards, so no legacy driver a kernel loads will claim it either.
/// Edge-triggered and active-high: what the kernel assumes of an ISA pin the
/// MADT does not override, so the DSDT's description agrees with it.
pub const POWER_BUTTON_GSI: u32 = 10;
const _: () = assert!(POWER_BUTTON_GSI < PCI_INTX_FIRST_GSI && POWER_BUTTON_GSI != COM1_IRQ);

/// QEMU's pvpanic port, which stock Linux's `pvpanic-mmio` driver finds
/// through the DSDT device `QEMU0001`: reading it tells the guest which
/// events lg understands; the guest writes one of them when it panics.
pub const PVPANIC_PORT: u16 = 0x505;
/// pvpanic event: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event: the guest panicked and a crash kernel has been loaded to
/// capture a dump (lg treats it as a panic too).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The first IO-APIC input used for PCI INTx lines; below it are the ISA
/// interrupts.
pub const PCI_INTX_FIRST_GSI: u32 = 16;
/// How many IO-APIC inputs PCI INTx lines share (16..24).
pub const PCI_INTX_GSI_COUNT: u32 = 8;

/// The IO-APIC input (GSI) that INTx `pin` (0 = INTA) of the device in
/// `slot` is wired to: the usual PCI swizzle, spread over GSIs 16..24. The
/// DSDT's `_PRT` tells the guest the same.
pub const fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_FIRST_GSI + (slot as u32 + pin as u32) % PCI_INTX_GSI_COUNT
}
