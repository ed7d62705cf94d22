//! The devices on the guest's I/O ports, and the switch that routes each
//! exit to one of them.
//!
//! This is the machine's "southbridge": the serial port for the console, the
//! CMOS clock, ACPI's power-off and reset registers, the keyboard
//! controller's reset line, pvpanic, and the PCI bus (its configuration
//! ports, and the BARs of its devices in the MMIO hole). KVM already answers the interrupt controllers and
//! the timer in the kernel, so what reaches this table is only what lg
//! itself emulates, plus whatever the guest pokes at that nothing answers:
//! such a read sees all ones, as on a real bus with nothing on it, and is
//! logged once so a reader with `--verbose` can see what the guest looked for.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use cmos_rtc::CmosRtc;
use hcall_abi::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_ENABLE, ACPI_SLEEP_STATUS_PORT, CF9_RESET_BIT, CF9_RESET_PORT, COM1_PORT,
    COM1_PORT_COUNT, I8042_COMMAND_PORT, I8042_RESET_COMMAND, PCI_CONFIG_ADDRESS_PORT,
    PCI_CONFIG_DATA_PORT, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_PORT,
};
use hvc_console::{InterruptLine, Uart};
use kvm_ioctls::VmFd;
use pci::PciBus;
use switcher::{ExitHandler, GuestEnd, PortAction};

/// An ISA interrupt line on KVM's in-kernel PIC and IO-APIC. ISA lines are
/// edge-triggered, so raising one is a pulse: up, then down.
pub struct IsaIrq {
    pub vm: Arc<VmFd>,
    pub irq: u32,
}

impl InterruptLine for IsaIrq {
    fn trigger(&self) {
        if let Err(e) = self.vm.set_irq_line(self.irq, true) {
            log::warn!("cannot raise IRQ {}: {e}", self.irq);
        }
        let _ = self.vm.set_irq_line(self.irq, false);
    }
}

/// lg's own legacy devices.
pub struct Platform {
    uart: Mutex<Uart>,
    pci: Mutex<PciBus>,
    rtc: Mutex<CmosRtc>,
    /// Ports and addresses already reported as unanswered, so each is
    /// logged once however often the guest touches it.
    reported: Mutex<HashSet<u64>>,
}

/// Locks a device, even one whose lock a panicking thread left poisoned:
/// device state stays consistent between accesses, so going on is safe.
fn lock<T>(device: &Mutex<T>) -> MutexGuard<'_, T> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl Platform {
    /// The platform for a guest whose serial output goes to `console` and
    /// whose UART interrupts go to `uart_irq` (COM1's line, IRQ 4).
    pub fn new(
        console: Box<dyn Write + Send>,
        uart_irq: Box<dyn InterruptLine>,
        pci: PciBus,
    ) -> Platform {
        Platform {
            uart: Mutex::new(Uart::new(console, uart_irq)),
            pci: Mutex::new(pci),
            rtc: Mutex::new(CmosRtc::new()),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Bytes typed at lg's terminal, for the guest's serial port.
    pub fn console_input(&self, bytes: &[u8]) {
        lock(&self.uart).push_input(bytes);
    }

    fn report_once(&self, what: &str, where_: u64, write: bool) {
        if lock(&self.reported).insert(where_ | if write { 1 << 63 } else { 0 }) {
            let access = if write { "write to" } else { "read from" };
            log::info!("guest {access} unanswered {what} {where_:#x}");
        }
    }
}

fn is_com1(port: u16) -> bool {
    (COM1_PORT..COM1_PORT + COM1_PORT_COUNT).contains(&port)
}

/// CONFIG_ADDRESS and CONFIG_DATA: ports 0xcf8 to 0xcff.
fn is_pci_config(port: u16) -> bool {
    (PCI_CONFIG_ADDRESS_PORT..PCI_CONFIG_DATA_PORT + 4).contains(&port)
}

impl ExitHandler for Platform {
    fn port_in(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        match port {
            p if is_com1(p) => *first = lock(&self.uart).read((p - COM1_PORT) as u8),
            p if is_pci_config(p) => lock(&self.pci).port_read(p, data),
            cmos_rtc::INDEX_PORT | cmos_rtc::DATA_PORT => *first = lock(&self.rtc).read(port),
            // pvpanic: which events lg understands.
            PVPANIC_PORT => *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED,
            // Never asleep: the guest is running if it can read this.
            ACPI_SLEEP_STATUS_PORT => *first = 0,
            _ => self.report_once("port", u64::from(port), false),
        }
    }

    fn port_out(&self, port: u16, data: &[u8]) -> PortAction {
        let Some(&value) = data.first() else {
            return PortAction::Continue;
        };
        match port {
            p if is_com1(p) => lock(&self.uart).write((p - COM1_PORT) as u8, value),
            cmos_rtc::INDEX_PORT | cmos_rtc::DATA_PORT => lock(&self.rtc).write(port, value),
            ACPI_SLEEP_CONTROL_PORT => {
                let sleep_type = (value >> 2) & 0x7;
                if value & ACPI_SLEEP_ENABLE != 0 && sleep_type == ACPI_S5_SLEEP_TYPE {
                    return PortAction::End(GuestEnd::PowerOff);
                }
                log::info!("guest asked for ACPI sleep type {sleep_type}, which lg does not offer");
            }
            PVPANIC_PORT if value & (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED) != 0 => {
                return PortAction::End(GuestEnd::Panic);
            }
            // The kernel clears the wake status before sleeping; lg's
            // status register never has a bit set, so there is nothing to
            // clear.
            ACPI_SLEEP_STATUS_PORT => {}
            ACPI_RESET_PORT if value == ACPI_RESET_VALUE => {
                return PortAction::End(GuestEnd::Reboot)
            }
            // A single byte at 0xcf9 is the reset register, inside the PCI
            // configuration ports' range; wider accesses there are PCI's.
            CF9_RESET_PORT if data.len() == 1 && value & CF9_RESET_BIT != 0 => {
                return PortAction::End(GuestEnd::Reboot)
            }
            p if is_pci_config(p) => lock(&self.pci).port_write(p, data),
            I8042_COMMAND_PORT if value == I8042_RESET_COMMAND => {
                return PortAction::End(GuestEnd::Reboot)
            }
            // Port 0x80 is the POST-code port, which old kernels also write
            // to as a delay; it is silent by design.
            0x80 => {}
            _ => self.report_once("port", u64::from(port), true),
        }
        PortAction::Continue
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        // The bus lock is held only to find the device; the access itself
        // takes only that device's lock.
        let target = lock(&self.pci).mmio_target(addr, data.len());
        match target {
            Some(bar) => bar.read(data),
            None => {
                data.fill(0xff);
                self.report_once("MMIO address", addr, false);
            }
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> PortAction {
        let target = lock(&self.pci).mmio_target(addr, data.len());
        match target {
            Some(bar) => bar.write(data),
            None => self.report_once("MMIO address", addr, true),
        }
        PortAction::Continue
    }

    fn vcpu_thread_started(&self, _index: u8) -> Result<(), String> {
        crate::seccomp::confine_thread(crate::seccomp::Role::Vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoIrq;
    impl InterruptLine for NoIrq {
        fn trigger(&self) {}
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn platform() -> (Platform, Sink) {
        let sink = Sink::default();
        (
            Platform::new(Box::new(sink.clone()), Box::new(NoIrq), PciBus::new()),
            sink,
        )
    }

    #[test]
    fn acpi_s5_powers_off_and_other_sleep_states_do_not() {
        let (platform, _) = platform();
        let s5 = (ACPI_S5_SLEEP_TYPE << 2) | ACPI_SLEEP_ENABLE;
        assert_eq!(
            platform.port_out(ACPI_SLEEP_CONTROL_PORT, &[s5]),
            PortAction::End(GuestEnd::PowerOff)
        );
        let s3 = (3 << 2) | ACPI_SLEEP_ENABLE;
        assert_eq!(
            platform.port_out(ACPI_SLEEP_CONTROL_PORT, &[s3]),
            PortAction::Continue
        );
        // The type alone, without SLP_EN, is not yet a request.
        assert_eq!(
            platform.port_out(ACPI_SLEEP_CONTROL_PORT, &[ACPI_S5_SLEEP_TYPE << 2]),
            PortAction::Continue
        );
    }

    #[test]
    fn reset_registers_reboot() {
        let (platform, _) = platform();
        assert_eq!(
            platform.port_out(ACPI_RESET_PORT, &[ACPI_RESET_VALUE]),
            PortAction::End(GuestEnd::Reboot)
        );
        assert_eq!(
            platform.port_out(I8042_COMMAND_PORT, &[I8042_RESET_COMMAND]),
            PortAction::End(GuestEnd::Reboot)
        );
        assert_eq!(
            platform.port_out(I8042_COMMAND_PORT, &[0x20]),
            PortAction::Continue
        );
    }

    #[test]
    fn a_pvpanic_event_ends_the_guest_as_a_panic() {
        let (platform, _) = platform();
        let mut offered = [0u8];
        platform.port_in(PVPANIC_PORT, &mut offered);
        assert_eq!(offered[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        assert_eq!(platform.port_out(PVPANIC_PORT, &[0]), PortAction::Continue);
        assert_eq!(
            platform.port_out(PVPANIC_PORT, &[PVPANIC_PANICKED]),
            PortAction::End(GuestEnd::Panic)
        );
    }

    #[test]
    fn the_pci_host_bridge_answers_on_the_configuration_ports() {
        let (platform, _) = platform();
        platform.port_out(PCI_CONFIG_ADDRESS_PORT, &0x8000_0000u32.to_le_bytes());
        let mut id = [0u8; 4];
        platform.port_in(PCI_CONFIG_DATA_PORT, &mut id);
        assert_eq!(
            u16::from_le_bytes([id[0], id[1]]),
            pci::HOST_BRIDGE_VENDOR_ID
        );
        // A byte write of the reset bit at 0xcf9 still reboots.
        assert_eq!(
            platform.port_out(CF9_RESET_PORT, &[0x06]),
            PortAction::End(GuestEnd::Reboot)
        );
    }

    #[test]
    fn serial_output_reaches_the_console() {
        let (platform, sink) = platform();
        for byte in b"ok" {
            platform.port_out(COM1_PORT, &[*byte]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok");
    }

    #[test]
    fn unanswered_ports_read_all_ones_at_any_width() {
        let (platform, _) = platform();
        let mut data = [0u8; 4];
        platform.port_in(0x1234, &mut data);
        assert_eq!(data, [0xff; 4]);
        platform.port_in(0x1234, &mut []);
        assert_eq!(platform.port_out(0x1234, &[]), PortAction::Continue);
    }
}
