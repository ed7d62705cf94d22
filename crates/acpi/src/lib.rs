//! # acpi: how the guest learns what machine it is on
//!
//! A PC kernel once found its CPUs in Intel's MP tables and switched itself
//! off through APM. Today it asks ACPI, and Debian's cloud kernel asks nothing
//! else: without ACPI tables it sees one CPU, no IO-APIC, no power button
//! for lg to press, and has no way to tell lg that `poweroff` means the guest
//! is done. So before the first vCPU runs, lg writes a few tables into the
//! BIOS area of guest memory (from `ACPI_START`, where a kernel that scans
//! for them would also look) and puts the address of the first one, the
//! RSDP, in the zero page:
//!
//! ```text
//! RSDP ──> XSDT ─┬─> FADT ──> DSDT   fixed hardware; AML namespace (\_S5,
//!                │                   COM1, pvpanic, power button, PCI0)
//!                └─> MADT            local APICs, IO-APIC, NMI wiring
//! ```
//!
//! lg's machine is ACPI "hardware-reduced": there are no PM1 event and control
//! blocks, no power-management timer, no GPEs and no SCI interrupt. What
//! remains are three single-byte I/O ports the switcher serves: the sleep
//! control register (writing `SLP_TYP << 2 | SLP_EN` there powers off), the
//! sleep status register, and the reset register (reboot). `fadt.rs` says
//! where they are, `dsdt.rs` gives the sleep type for S5, and `madt.rs`
//! describes the interrupt controllers KVM emulates. With no SCI there is no
//! fixed power button either, so `dsdt.rs` also describes one built from
//! AML: a Generic Event Device whose interrupt lg pulses, and whose event
//! method notifies a power button device.
//!
//! rust-vmm's `acpi_tables` crate does the byte-level encoding and computes
//! every checksum; this crate decides what the tables say. Nothing here reads
//! guest input: the guest only ever reads what is written here.

mod dsdt;
mod fadt;
mod madt;

use std::fmt;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use hcall_abi::layout::{ACPI_END, ACPI_START};
use shadow_mmu::{GuestAddress, GuestMemory, MemoryError};

/// What the tables must describe about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// How many vCPUs the guest has; their APIC ids are 0..vcpus.
    pub vcpus: u8,
}

/// The most vCPUs the tables can describe. xAPIC ids are one byte and 0xff is
/// the broadcast id, leaving 0..=254; the IO-APIC takes the id after the last
/// CPU's (see `madt.rs`), so the CPUs get 0..=253.
pub const MAX_VCPUS: u8 = 254;

/// Who made the tables, as every table header says (the kernel prints it
/// when it lists the tables at boot).
const OEM_ID: [u8; 6] = *b"LG    ";
/// Bumped when the tables change in a way a guest could notice.
const OEM_REVISION: u32 = 1;

/// The RSDP must sit on a 16-byte boundary: the kernel's scan of the BIOS
/// area, its fallback when the zero page gives no address, only looks there.
const RSDP_ALIGN: u64 = 16;
const _: () = assert!(ACPI_START % RSDP_ALIGN == 0);
/// The other tables need no alignment, but keeping each on a 16-byte boundary
/// keeps their 64-bit fields aligned and makes a hex dump readable.
const TABLE_ALIGN: u64 = 16;

/// Why the tables could not be written.
#[derive(Debug)]
pub enum AcpiError {
    /// A machine with no CPU has nothing to boot.
    NoVcpus,
    /// More vCPUs than xAPIC ids can tell apart.
    TooManyVcpus(u8),
    /// The tables outgrew the area set aside for them.
    AreaFull { table: &'static str, end: u64 },
    /// Guest RAM does not cover the ACPI area.
    GuestMemory(MemoryError),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoVcpus => {
                write!(f, "the ACPI tables cannot describe a guest with no vCPUs")
            }
            AcpiError::TooManyVcpus(vcpus) => write!(
                f,
                "the ACPI tables can describe at most {MAX_VCPUS} vCPUs (xAPIC ids), not {vcpus}"
            ),
            AcpiError::AreaFull { table, end } => write!(
                f,
                "the ACPI {table} would end at {end:#x}, past the ACPI area's end at {ACPI_END:#x}"
            ),
            AcpiError::GuestMemory(e) => write!(f, "cannot write the ACPI tables: {e}"),
        }
    }
}

impl std::error::Error for AcpiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcpiError::GuestMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds RSDP, XSDT, FADT, MADT and DSDT, writes them into guest memory
/// between `ACPI_START` and `ACPI_END` (RSDP at `ACPI_START`, 16-byte
/// aligned), and returns the RSDP's guest-physical address (lg puts it in
/// `boot_params.acpi_rsdp_addr`).
pub fn write_tables(mem: &GuestMemory, config: &AcpiConfig) -> Result<GuestAddress, AcpiError> {
    match config.vcpus {
        0 => return Err(AcpiError::NoVcpus),
        vcpus if vcpus > MAX_VCPUS => return Err(AcpiError::TooManyVcpus(vcpus)),
        _ => {}
    }

    // Each table holds the addresses of the ones below it in the tree, so
    // they are placed leaves first; the RSDP, whose size never changes, has
    // its place kept at the start of the area for last.
    let rsdp_addr = GuestAddress(ACPI_START);
    let mut area = TableArea {
        mem,
        next: ACPI_START + Rsdp::len() as u64,
    };
    let dsdt = area.place("DSDT", &dsdt::build())?;
    let fadt = area.place("FADT", &fadt::build(dsdt))?;
    let madt = area.place("MADT", &madt::build(config.vcpus))?;
    let mut xsdt = XSDT::new(OEM_ID, *b"LGXSDT  ", OEM_REVISION);
    xsdt.add_entry(fadt.0);
    xsdt.add_entry(madt.0);
    let xsdt = area.place("XSDT", &encode(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt.0);
    mem.write(rsdp_addr, &encode(&rsdp))
        .map_err(AcpiError::GuestMemory)?;
    Ok(rsdp_addr)
}

/// The ACPI area, filled upward one table at a time.
struct TableArea<'a> {
    mem: &'a GuestMemory,
    /// Where the next table would start.
    next: u64,
}

impl TableArea<'_> {
    /// Writes `bytes` at the next aligned free address and returns it.
    fn place(&mut self, table: &'static str, bytes: &[u8]) -> Result<GuestAddress, AcpiError> {
        let start = self.next.next_multiple_of(TABLE_ALIGN);
        let end = start + bytes.len() as u64;
        if end > ACPI_END {
            return Err(AcpiError::AreaFull { table, end });
        }
        self.mem
            .write(GuestAddress(start), bytes)
            .map_err(AcpiError::GuestMemory)?;
        self.next = end;
        Ok(GuestAddress(start))
    }
}

/// A table's bytes, as `acpi_tables` encodes them.
fn encode(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    //! These tests read the tables back out of guest memory the way a kernel
    //! would: start at the RSDP, follow the pointers, check every signature
    //! and checksum, then look at the fields lg's guest depends on.

    use super::*;
    use hcall_abi::layout::{
        ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
        ACPI_SLEEP_STATUS_PORT, COM1_IRQ, COM1_PORT, IOAPIC_ADDR, LAPIC_ADDR, POWER_BUTTON_GSI,
    };

    const MIB: u64 = 1 << 20;
    /// The size of every ACPI table header (signature to creator revision).
    const HEADER_LEN: usize = 36;

    /// One table as found in guest memory.
    struct Table {
        addr: u64,
        bytes: Vec<u8>,
    }

    /// Every table lg wrote, reached by following pointers from the RSDP.
    struct Tables {
        rsdp: Table,
        xsdt: Table,
        fadt: Table,
        madt: Table,
        dsdt: Table,
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read(GuestAddress(addr), &mut bytes).unwrap();
        bytes
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    /// Reads the table at `addr`, checking its signature and checksum.
    fn table(mem: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Table {
        let header = read(mem, addr, HEADER_LEN);
        assert_eq!(&header[..4], signature, "table at {addr:#x}");
        let bytes = read(mem, addr, u32_at(&header, 4) as usize);
        let name = String::from_utf8_lossy(signature);
        assert!(sums_to_zero(&bytes), "{name} checksum");
        Table { addr, bytes }
    }

    fn write_and_follow(vcpus: u8) -> (GuestMemory, Tables) {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let rsdp_addr = write_tables(&mem, &AcpiConfig { vcpus }).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(ACPI_START));

        let rsdp = read(&mem, rsdp_addr.0, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
        assert!(sums_to_zero(&rsdp[..20]), "RSDP checksum");
        assert!(sums_to_zero(&rsdp), "RSDP extended checksum");

        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (HEADER_LEN..xsdt.bytes.len())
            .step_by(8)
            .map(|at| u64_at(&xsdt.bytes, at))
            .collect();
        assert_eq!(entries.len(), 2, "XSDT lists the FADT and the MADT");
        let fadt = table(&mem, entries[0], b"FACP");
        let madt = table(&mem, entries[1], b"APIC");
        let dsdt = table(&mem, u64_at(&fadt.bytes, 140), b"DSDT");
        let tables = Tables {
            rsdp: Table {
                addr: rsdp_addr.0,
                bytes: rsdp,
            },
            xsdt,
            fadt,
            madt,
            dsdt,
        };
        (mem, tables)
    }

    /// The MADT's interrupt controller structures, as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut entries = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = madt[at + 1] as usize;
            assert!(len >= 2, "MADT entry at {at} has length {len}");
            entries.push((madt[at], &madt[at..at + len]));
            at += len;
        }
        assert_eq!(at, madt.len(), "MADT entries fill the table exactly");
        entries
    }

    /// A generic address structure's fields: space, bit width, bit offset,
    /// access size, address.
    fn gas_at(bytes: &[u8], offset: usize) -> (u8, u8, u8, u8, u64) {
        let gas = &bytes[offset..offset + 12];
        (gas[0], gas[1], gas[2], gas[3], u64_at(gas, 4))
    }

    /// An 8-bit register in the SystemIO address space at `port`.
    fn io_byte(port: u16) -> (u8, u8, u8, u8, u64) {
        (1, 8, 0, 1, port.into())
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn rsdp_xsdt_and_their_tables_all_check_out() {
        for vcpus in [1, 4] {
            let (_mem, tables) = write_and_follow(vcpus);
            assert_eq!(tables.rsdp.addr % 16, 0);
            assert_eq!(tables.xsdt.bytes[8], 1, "XSDT revision");
        }
    }

    #[test]
    fn every_table_lies_inside_the_acpi_area() {
        for vcpus in [1, 4, MAX_VCPUS] {
            let (_mem, t) = write_and_follow(vcpus);
            let mut spans: Vec<(u64, u64)> = [&t.rsdp, &t.xsdt, &t.fadt, &t.madt, &t.dsdt]
                .iter()
                .map(|table| (table.addr, table.addr + table.bytes.len() as u64))
                .collect();
            spans.sort();
            for (start, end) in &spans {
                assert!(
                    ACPI_START <= *start && *end <= ACPI_END,
                    "{start:#x}..{end:#x}"
                );
            }
            for pair in spans.windows(2) {
                assert!(pair[0].1 <= pair[1].0, "tables overlap: {spans:x?}");
            }
        }
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_vcpu_and_one_io_apic() {
        for vcpus in [1, 4] {
            let (_mem, tables) = write_and_follow(vcpus);
            let madt = &tables.madt.bytes;
            assert_eq!(u32_at(madt, 36) as u64, LAPIC_ADDR);
            assert_eq!(u32_at(madt, 40) & 1, 1, "PCAT_COMPAT");
            let entries = madt_entries(madt);

            let cpus: Vec<&[u8]> = entries
                .iter()
                .filter(|(kind, _)| *kind == 0)
                .map(|(_, e)| *e)
                .collect();
            assert_eq!(cpus.len(), vcpus as usize);
            for (index, cpu) in cpus.iter().enumerate() {
                assert_eq!(cpu.len(), 8);
                assert_eq!(cpu[2] as usize, index, "ACPI processor uid");
                assert_eq!(cpu[3] as usize, index, "APIC id");
                assert_eq!(u32_at(cpu, 4) & 1, 1, "enabled");
            }

            let io_apics: Vec<&[u8]> = entries
                .iter()
                .filter(|(kind, _)| *kind == 1)
                .map(|(_, e)| *e)
                .collect();
            assert_eq!(io_apics.len(), 1);
            let io_apic = io_apics[0];
            assert_eq!(io_apic.len(), 12);
            assert_eq!(io_apic[2], vcpus, "IO-APIC id follows the CPUs' ids");
            assert_eq!(u32_at(io_apic, 4) as u64, IOAPIC_ADDR);
            assert_eq!(u32_at(io_apic, 8), 0, "GSI base");
        }
    }

    #[test]
    fn madt_wires_nmi_to_lint1_and_overrides_no_isa_irq() {
        let (_mem, tables) = write_and_follow(2);
        let entries = madt_entries(&tables.madt.bytes);
        assert!(
            entries.iter().all(|(kind, _)| *kind != 2),
            "KVM routes ISA IRQ n to IO-APIC pin n, so no interrupt source override"
        );
        let nmis: Vec<&[u8]> = entries
            .iter()
            .filter(|(kind, _)| *kind == 4)
            .map(|(_, e)| *e)
            .collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0], &[4, 6, 0xff, 0, 0, 1], "all processors, LINT1");
    }

    #[test]
    fn fadt_describes_a_hardware_reduced_machine() {
        let (_mem, tables) = write_and_follow(1);
        let fadt = &tables.fadt.bytes;
        assert_eq!(fadt.len(), 276, "ACPI 6.x FADT length");
        assert!(fadt[8] >= 5, "FADT revision 5+ has the sleep registers");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 4), 0, "PWR_BUTTON: no fixed power button");
        assert_ne!(flags & (1 << 5), 0, "SLP_BUTTON: no fixed sleep button");
        let boot_arch = u16_at(fadt, 109);
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        assert_eq!(boot_arch & (1 << 1), 0, "no 8042");
        assert_eq!(boot_arch & (1 << 3), 0, "MSI allowed");
        assert_eq!(boot_arch & (1 << 5), 0, "lg serves a CMOS RTC");
        assert_eq!(&fadt[268..276], b"LGLGLGLG", "hypervisor vendor identity");
    }

    #[test]
    fn fadt_sleep_and_reset_registers_are_lg_io_ports() {
        let (_mem, tables) = write_and_follow(1);
        let fadt = &tables.fadt.bytes;
        assert_eq!(
            gas_at(fadt, 244),
            io_byte(ACPI_SLEEP_CONTROL_PORT),
            "SLEEP_CONTROL_REG"
        );
        assert_eq!(
            gas_at(fadt, 256),
            io_byte(ACPI_SLEEP_STATUS_PORT),
            "SLEEP_STATUS_REG"
        );
        assert_eq!(gas_at(fadt, 116), io_byte(ACPI_RESET_PORT), "RESET_REG");
        assert_eq!(fadt[128], ACPI_RESET_VALUE, "RESET_VALUE");
    }

    #[test]
    fn fadt_points_only_at_the_64_bit_dsdt() {
        let (_mem, tables) = write_and_follow(1);
        assert_eq!(
            u32_at(&tables.fadt.bytes, 40),
            0,
            "32-bit DSDT pointer unused"
        );
        assert_eq!(u64_at(&tables.fadt.bytes, 140), tables.dsdt.addr);
    }

    #[test]
    fn dsdt_gives_the_s5_sleep_type() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        let at = find(aml, b"_S5_").expect("\\_S5_ in the DSDT") + 4;
        assert_eq!(aml[at], 0x12, "a Package");
        assert_eq!(aml[at + 2], 4, "of four elements");
        // The first element, SLP_TYPa, as an AML integer.
        let slp_typ_a = match aml[at + 3] {
            0x00 => 0,
            0x01 => 1,
            0x0a => aml[at + 4],
            other => panic!("unexpected opcode {other:#x} for SLP_TYPa"),
        };
        assert_eq!(slp_typ_a, ACPI_S5_SLEEP_TYPE);
    }

    #[test]
    fn dsdt_describes_com1() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        assert!(find(aml, b"_SB_").is_some());
        assert!(find(aml, b"COM1").is_some());
        // _HID EISAID("PNP0501"), as a DWordConst.
        assert!(find(aml, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some());
        // IO(Decode16, 0x3f8, 0x3f8, 1, 8)
        let [lo, hi] = COM1_PORT.to_le_bytes();
        assert!(find(aml, &[0x47, 0x01, lo, hi, lo, hi, 0x01, 0x08]).is_some());
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { 4 }
        let irq = COM1_IRQ.to_le_bytes();
        assert!(find(
            aml,
            &[0x89, 0x06, 0x00, 0x03, 0x01, irq[0], irq[1], irq[2], irq[3]]
        )
        .is_some());
    }

    #[test]
    fn dsdt_describes_the_cmos_clock_with_no_interrupt() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        assert!(find(aml, b"RTC_").is_some());
        // _HID EISAID("PNP0B00"), as a DWordConst: what rtc_cmos's PNP
        // driver binds to.
        assert!(find(aml, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0b, 0x00]).is_some());
        // IO(Decode16, 0x70, 0x70, 1, 2), then at once the end tag: no
        // interrupt descriptor, so the driver asks for no IRQ.
        let [lo, hi] = hcall_abi::layout::CMOS_RTC_PORT.to_le_bytes();
        assert!(find(aml, &[0x47, 0x01, lo, hi, lo, hi, 0x01, 0x02, 0x79]).is_some());
    }

    #[test]
    fn dsdt_describes_the_pvpanic_port() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        // _HID "QEMU0001", as a string, as Linux's pvpanic-mmio expects.
        assert!(find(aml, b"_HID\x0dQEMU0001\x00").is_some());
        // IO(Decode16, 0x505, 0x505, 1, 1)
        let [lo, hi] = hcall_abi::layout::PVPANIC_PORT.to_le_bytes();
        assert!(find(aml, &[0x47, 0x01, lo, hi, lo, hi, 0x01, 0x01]).is_some());
    }

    #[test]
    fn dsdt_describes_a_power_button() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        // Device (PWRB) { Name (_HID, EISAID ("PNP0C0C")) }, the EISA id as a
        // DWordConst.
        assert!(find(aml, b"PWRB").is_some());
        assert!(find(aml, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c]).is_some());
    }

    #[test]
    fn dsdt_describes_a_generic_event_device_that_presses_the_button() {
        let (_mem, tables) = write_and_follow(1);
        let aml = &tables.dsdt.bytes[HEADER_LEN..];
        assert!(find(aml, b"GED0").is_some());
        // _HID "ACPI0013", as a string, as Linux's evged driver expects.
        assert!(find(aml, b"_HID\x0dACPI0013\x00").is_some());
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { 10 }
        let irq = POWER_BUTTON_GSI.to_le_bytes();
        assert!(find(
            aml,
            &[0x89, 0x06, 0x00, 0x03, 0x01, irq[0], irq[1], irq[2], irq[3]]
        )
        .is_some());
        // Method (_EVT, 1, NotSerialized) { Notify (\_SB.PWRB, 0x80) }: the
        // MethodOp and its one-byte package length, the name, the flags (one
        // argument), then NotifyOp, the root-relative dual name and 0x80 as
        // a ByteConst.
        let evt = find(aml, b"_EVT").expect("GED0._EVT in the DSDT");
        assert_eq!(aml[evt - 2], 0x14, "a Method");
        assert_eq!(aml[evt + 4], 0x01, "of one argument, not serialized");
        let notify = [
            0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0a, 0x80,
        ];
        assert_eq!(&aml[evt + 5..evt + 5 + notify.len()], notify);
        let method_len = aml[evt - 1] as usize;
        assert_eq!(method_len, 1 + 4 + 1 + notify.len(), "_EVT does only that");
    }

    #[test]
    fn refuses_machines_it_cannot_describe() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        assert!(matches!(
            write_tables(&mem, &AcpiConfig { vcpus: 0 }),
            Err(AcpiError::NoVcpus)
        ));
        assert!(matches!(
            write_tables(&mem, &AcpiConfig { vcpus: 255 }),
            Err(AcpiError::TooManyVcpus(255))
        ));
    }

    #[test]
    fn the_largest_machine_still_fits() {
        let (_mem, tables) = write_and_follow(MAX_VCPUS);
        let cpus = madt_entries(&tables.madt.bytes)
            .iter()
            .filter(|(kind, _)| *kind == 0)
            .count();
        assert_eq!(cpus, MAX_VCPUS as usize);
    }

    #[test]
    fn a_guest_smaller_than_the_bios_area_is_an_error() {
        let mem = GuestMemory::new(512 * 1024).unwrap();
        let err = write_tables(&mem, &AcpiConfig { vcpus: 1 }).unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory(_)), "{err}");
    }

    /// Not a check but a tool: `LG_ACPI_DUMP_DIR=/tmp/acpi cargo test -p acpi
    /// -- --ignored` writes each table to a file, for `iasl -d`.
    #[test]
    #[ignore]
    fn dump_tables_for_iasl() {
        let dir = std::env::var("LG_ACPI_DUMP_DIR").expect("LG_ACPI_DUMP_DIR names a directory");
        let (_mem, t) = write_and_follow(4);
        let files = [
            ("rsdp.dat", &t.rsdp),
            ("xsdt.dat", &t.xsdt),
            ("facp.dat", &t.fadt),
            ("apic.dat", &t.madt),
            ("dsdt.dat", &t.dsdt),
        ];
        for (name, table) in files {
            std::fs::write(std::path::Path::new(&dir).join(name), &table.bytes).unwrap();
        }
    }
}
