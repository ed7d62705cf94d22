//! The DSDT: the root of the guest's ACPI namespace, written in AML.
//!
//! Everything the fixed tables cannot say lives here as AML objects the
//! kernel's interpreter evaluates. lg's namespace is tiny: the `\_S5` package,
//! which gives the sleep type to write for "soft off" (the kernel will not
//! offer ACPI power-off without it), and the `\_SB` (system bus) scope with
//! the devices a kernel cannot discover on its own: COM1, the CMOS clock,
//! the pvpanic port through which a panicking guest tells lg so, the power
//! button through which lg asks the guest to shut down, and the PCI host
//! bridge.
//!
//! The clock is here for Linux's `rtc_cmos` driver (`/dev/rtc0`, `hwclock`).
//! Found no other way, the kernel registers a platform device at the legacy
//! ports with ISA IRQ 8, and the driver's probe fails (`-EINVAL`): with no
//! 8259 PIC, IRQ 8 has no descriptor until something maps its GSI. As a
//! `PNP0B00` device with ports and no interrupt, the driver binds without
//! one and offers the clock without alarms, which is what lg's clock is.
//!
//! The power button takes two devices because the machine is
//! hardware-reduced: the fixed power button of the FADT needs the PM1 event
//! block and the SCI this machine lacks. Instead `PWRB` is a control-method
//! power button (`PNP0C0C`), and `GED0`, a Generic Event Device
//! (`ACPI0013`), owns the interrupt lg pulses for it; Linux's GED driver
//! runs `GED0._EVT` on each edge, which notifies `PWRB` that it was
//! pressed, and the button driver reports `KEY_POWER` on the "Power Button"
//! input device for userspace to act on.
//!
//! The host bridge matters most: with ACPI, Linux scans PCI only below a
//! root bridge it finds in the namespace (`PNP0A08`/`PNP0A03`), and takes
//! the bridge's `_CRS` as the windows where device BARs may live, so lg's
//! BARs must lie inside it. Its `_PRT` says which IO-APIC input each slot's
//! INTx pins are wired to, for guests that do not use MSI-X.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Method, Name, Notify,
    Package, Path, ResourceTemplate, Scope, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use hcall_abi::layout::{
    pci_intx_gsi, ACPI_S5_SLEEP_TYPE, CMOS_RTC_PORT, CMOS_RTC_PORT_COUNT, COM1_IRQ, COM1_PORT,
    COM1_PORT_COUNT, PCI_CONFIG_ADDRESS_PORT, PCI_MMIO_END, PCI_MMIO_START, POWER_BUTTON_GSI,
    PVPANIC_PORT,
};

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

/// The clock's port count as the I/O resource descriptor's one-byte length.
const CMOS_RTC_LENGTH: u8 = {
    assert!(CMOS_RTC_PORT_COUNT <= u8::MAX as u16);
    CMOS_RTC_PORT_COUNT as u8
};

/// The notification a power button device sends when pressed ("S0 Power
/// Button Pressed" in the ACPI spec's device-specific notification values);
/// Linux's button driver takes it as a press.
const POWER_BUTTON_PRESSED: u8 = 0x80;

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

    // The CMOS clock at its fixed ports, with no interrupt: lg's clock
    // raises none (no alarm, no periodic or update interrupt).
    let rtc_io = IO::new(CMOS_RTC_PORT, CMOS_RTC_PORT, 1, CMOS_RTC_LENGTH);
    let rtc_resources = ResourceTemplate::new(vec![&rtc_io]);
    let rtc_hid = Name::new("_HID".into(), &EISAName::new("PNP0B00"));
    let rtc_crs = Name::new("_CRS".into(), &rtc_resources);
    let rtc = Device::new("RTC_".into(), vec![&rtc_hid, &rtc_crs]);

    // QEMU's pvpanic device: the ACPI id Linux's pvpanic-mmio driver binds
    // to, with its single I/O port.
    let pvpanic_io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pvpanic_resources = ResourceTemplate::new(vec![&pvpanic_io]);
    let pvpanic_hid = Name::new("_HID".into(), &"QEMU0001");
    let pvpanic_crs = Name::new("_CRS".into(), &pvpanic_resources);
    let pvpanic = Device::new("PEVT".into(), vec![&pvpanic_hid, &pvpanic_crs]);

    // The button itself has no resources: it only receives notifications.
    let pwrb_hid = Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
    let pwrb_uid = Name::new("_UID".into(), &ZERO);
    let pwrb = Device::new("PWRB".into(), vec![&pwrb_hid, &pwrb_uid]);

    // Edge-triggered because lg pulses the pin rather than holding it until
    // the guest acknowledges; exclusive so the GED's handler runs for button
    // presses only. _EVT gets the GSI as its argument but need not look at
    // it, the GED having only the one interrupt. Linux would prefer an _E0A
    // method for this pin but falls back to _EVT, which every GED-aware OS
    // knows.
    let ged_irq = Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
    let ged_resources = ResourceTemplate::new(vec![&ged_irq]);
    let ged_hid = Name::new("_HID".into(), &"ACPI0013");
    let ged_crs = Name::new("_CRS".into(), &ged_resources);
    let pwrb_path = Path::new("\\_SB_.PWRB");
    let press = Notify::new(&pwrb_path, &POWER_BUTTON_PRESSED);
    let ged_evt = Method::new("_EVT".into(), 1, false, vec![&press]);
    let ged = Device::new("GED0".into(), vec![&ged_hid, &ged_crs, &ged_evt]);

    let pci = host_bridge();
    let system_bus = Scope::new(
        "\\_SB_".into(),
        vec![&com1, &rtc, &pvpanic, &pwrb, &ged, &pci],
    );

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

/// The PCI root bridge, `\_SB.PCI0`.
fn host_bridge() -> HostBridge {
    HostBridge
}

/// Builds the host bridge's AML on demand: its children borrow one another,
/// so they are made as locals inside `to_aml_bytes`.
struct HostBridge;

/// Slots on bus 0 that can hold a device (0 is the host bridge itself).
const PCI_SLOTS: std::ops::RangeInclusive<u32> = 1..=31;

impl acpi_tables::Aml for HostBridge {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
        let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
        let adr = Name::new("_ADR".into(), &ZERO);
        let seg = Name::new("_SEG".into(), &ZERO);
        let uid = Name::new("_UID".into(), &ZERO);
        let bbn = Name::new("_BBN".into(), &ZERO);

        // Bus 0 only; the configuration ports the bridge itself decodes; all
        // other I/O ports pass through it; and the memory window lg
        // allocates BARs from.
        let buses = AddressSpace::new_bus_number(0u16, 0u16);
        let config_ports = IO::new(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, 8);
        let io_below = AddressSpace::new_io(0u16, PCI_CONFIG_ADDRESS_PORT - 1, None);
        let io_above = AddressSpace::new_io(PCI_CONFIG_ADDRESS_PORT + 8, 0xffffu16, None);
        let mmio = AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            PCI_MMIO_START as u32,
            (PCI_MMIO_END - 1) as u32,
            None,
        );
        let resources =
            ResourceTemplate::new(vec![&buses, &config_ports, &io_below, &io_above, &mmio]);
        let crs = Name::new("_CRS".into(), &resources);

        // _PRT: Package { address (slot << 16 | 0xffff: any function),
        // pin (0 = INTA), source (0: a global interrupt, not a link
        // device), GSI }.
        let routes: Vec<(u32, u8, u32)> = PCI_SLOTS
            .flat_map(|slot| {
                (0..4u8).map(move |pin| ((slot << 16) | 0xffff, pin, pci_intx_gsi(slot as u8, pin)))
            })
            .collect();
        let entries: Vec<Package> = routes
            .iter()
            .map(|(address, pin, gsi)| Package::new(vec![address, pin, &ZERO, gsi]))
            .collect();
        let entry_refs: Vec<&dyn acpi_tables::Aml> =
            entries.iter().map(|e| e as &dyn acpi_tables::Aml).collect();
        let prt_package = Package::new(entry_refs);
        let prt = Name::new("_PRT".into(), &prt_package);

        Device::new(
            "PCI0".into(),
            vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &prt],
        )
        .to_aml_bytes(sink);
    }
}
