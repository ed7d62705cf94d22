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
//!
//! The serial port's transmit register is the one register here whose writes
//! need not exit: while the guest polls the line status between bytes (the
//! kernel's console always does), KVM keeps them in its coalesced ring and lg
//! replays them before the next exit (`switcher::coalesced`). The moment the
//! guest's driver asks for the transmitter-empty interrupt instead, every
//! byte must exit again, since only lg can raise that interrupt:
//! [`SerialPort::follow_transmit_interrupt`] switches between the two.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use cmos_rtc::CmosRtc;
use hcall_abi::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_ENABLE, ACPI_SLEEP_STATUS_PORT, CF9_RESET_BIT, CF9_RESET_PORT, CMOS_RTC_PORT,
    COM1_PORT, COM1_PORT_COUNT, I8042_COMMAND_PORT, I8042_RESET_COMMAND, PCI_CONFIG_ADDRESS_PORT,
    PCI_CONFIG_DATA_PORT, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PVPANIC_PORT,
};
use hvc_console::{InterruptLine, Uart};
use kvm_ioctls::VmFd;
use pci::PciBus;
use switcher::{CoalescedRing, CoalescedWrite, ExitHandler, GuestEnd, PortAction};

// The clock answers at the ports the DSDT gives the guest for it.
const _: () =
    assert!(cmos_rtc::INDEX_PORT == CMOS_RTC_PORT && cmos_rtc::DATA_PORT == CMOS_RTC_PORT + 1);

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

/// Turns KVM's keeping of the transmit register's writes on and off.
pub trait CoalescingSwitch: Send {
    /// `keep`: writes to COM1's data port go to KVM's coalesced ring from
    /// now on; else each exits.
    fn set(&self, keep: bool) -> Result<(), String>;
}

/// The switch on a real VM: its coalesced zone for COM1's data port.
pub struct KvmCoalescing(pub Arc<VmFd>);

impl CoalescingSwitch for KvmCoalescing {
    fn set(&self, keep: bool) -> Result<(), String> {
        let done = if keep {
            CoalescedRing::coalesce_port(&self.0, COM1_PORT, 1)
        } else {
            CoalescedRing::stop_coalescing_port(&self.0, COM1_PORT, 1)
        };
        done.map_err(|e| e.to_string())
    }
}

/// COM1, and whether KVM keeps its transmit register's writes.
struct SerialPort {
    uart: Uart,
    /// None where KVM has no coalesced ring: every write exits.
    coalescing: Option<Box<dyn CoalescingSwitch>>,
    /// Whether writes to the data port are being kept now.
    kept: bool,
}

impl SerialPort {
    /// Keeps transmit-register writes in KVM's ring exactly while the
    /// guest's driver has no transmitter-empty interrupt enabled, so that
    /// a driver waiting for that interrupt sees each byte leave at once.
    /// Called after every write to the port; it costs a KVM call only when
    /// the interrupt was switched.
    fn follow_transmit_interrupt(&mut self) {
        let keep = !self.uart.transmit_interrupt_enabled();
        let Some(switch) = &self.coalescing else {
            return;
        };
        if keep == self.kept {
            return;
        }
        match switch.set(keep) {
            Ok(()) => self.kept = keep,
            Err(e) => {
                // Keeping writes is only an optimisation, so lg stops
                // switching and goes on. If the writes are still kept, the
                // ring is replayed every few milliseconds anyway, which
                // still delivers every byte and interrupt, only later.
                log::warn!("serial port: {e}; its writes stay as they are");
                self.coalescing = None;
            }
        }
    }
}

/// lg's own legacy devices.
pub struct Platform {
    serial: Mutex<SerialPort>,
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
    /// `coalescing`, where KVM has a coalesced ring that lg replays, lets
    /// the transmit register's writes wait in it (turned on here: the
    /// guest starts with its UART's interrupts off).
    pub fn new(
        console: Box<dyn Write + Send>,
        uart_irq: Box<dyn InterruptLine>,
        pci: PciBus,
        coalescing: Option<Box<dyn CoalescingSwitch>>,
    ) -> Platform {
        let mut serial = SerialPort {
            uart: Uart::new(console, uart_irq),
            coalescing,
            kept: false,
        };
        serial.follow_transmit_interrupt();
        Platform {
            serial: Mutex::new(serial),
            pci: Mutex::new(pci),
            rtc: Mutex::new(CmosRtc::new()),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Bytes typed at lg's terminal, for the guest's serial port.
    pub fn console_input(&self, bytes: &[u8]) {
        lock(&self.serial).uart.push_input(bytes);
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
            p if is_com1(p) => *first = lock(&self.serial).uart.read((p - COM1_PORT) as u8),
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
            p if is_com1(p) => {
                let mut serial = lock(&self.serial);
                serial.uart.write((p - COM1_PORT) as u8, value);
                serial.follow_transmit_interrupt();
            }
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

    fn coalesced_writes(&self, writes: &[CoalescedWrite]) -> PortAction {
        // lg has KVM keep only COM1's data port, so a batch is that port's
        // bytes: passed to the console in one go.
        let serial_bytes = |w: &CoalescedWrite| match w.data() {
            [byte] if w.pio && w.address == u64::from(COM1_PORT) => Some(*byte),
            _ => None,
        };
        let Some(bytes) = writes.iter().map(serial_bytes).collect::<Option<Vec<u8>>>() else {
            return switcher::run::each_coalesced_write(self, writes);
        };
        let mut serial = lock(&self.serial);
        serial.uart.write_batch(bytes.into_iter().map(|b| (0, b)));
        serial.follow_transmit_interrupt();
        PortAction::Continue
    }

    fn pass_on_held_output(&self) {
        lock(&self.serial).uart.pass_on_output();
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
            Platform::new(Box::new(sink.clone()), Box::new(NoIrq), PciBus::new(), None),
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
        for byte in b"ok\n" {
            platform.port_out(COM1_PORT, &[*byte]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
        // The end of a line still unended reaches it too, a moment later.
        platform.port_out(COM1_PORT, b"$");
        platform.pass_on_held_output();
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n$");
    }

    /// Records every switch of KVM's keeping, and can be made to fail.
    #[derive(Clone, Default)]
    struct Switches(Arc<Mutex<Vec<bool>>>, Arc<std::sync::atomic::AtomicBool>);
    impl CoalescingSwitch for Switches {
        fn set(&self, keep: bool) -> Result<(), String> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("KVM said no".into());
            }
            self.0.lock().unwrap().push(keep);
            Ok(())
        }
    }

    const IER: u16 = COM1_PORT + 1;
    const LCR: u16 = COM1_PORT + 3;

    #[test]
    fn serial_bytes_wait_in_kvm_exactly_while_the_driver_polls() {
        let switches = Switches::default();
        let sink = Sink::default();
        let platform = Platform::new(
            Box::new(sink.clone()),
            Box::new(NoIrq),
            PciBus::new(),
            Some(Box::new(switches.clone())),
        );
        let seen = || switches.0.lock().unwrap().clone();
        assert_eq!(seen(), [true], "kept from the start: interrupts are off");
        // The receive interrupt alone changes nothing.
        platform.port_out(IER, &[0x01]);
        assert_eq!(seen(), [true]);
        // The transmitter-empty interrupt: every byte must exit.
        platform.port_out(IER, &[0x03]);
        assert_eq!(seen(), [true, false]);
        platform.port_out(IER, &[0x03]);
        assert_eq!(seen(), [true, false], "no switch without a change");
        // The divisor latch shares IER's port and switches nothing.
        platform.port_out(LCR, &[0x83]);
        platform.port_out(IER, &[0x00]);
        platform.port_out(LCR, &[0x03]);
        assert_eq!(seen(), [true, false]);
        platform.port_out(IER, &[0x01]);
        assert_eq!(seen(), [true, false, true]);
        // A switch KVM refuses stops the switching, and lg goes on.
        switches.1.store(true, std::sync::atomic::Ordering::SeqCst);
        platform.port_out(IER, &[0x03]);
        switches.1.store(false, std::sync::atomic::Ordering::SeqCst);
        platform.port_out(IER, &[0x01]);
        platform.port_out(IER, &[0x03]);
        assert_eq!(seen(), [true, false, true]);
        platform.port_out(COM1_PORT, b"!");
        assert_eq!(&*sink.0.lock().unwrap(), b"!");
    }

    #[test]
    fn a_batch_of_kept_serial_bytes_reaches_the_console_in_order() {
        let (platform, sink) = platform();
        let batch: Vec<CoalescedWrite> = b"boot\n"
            .iter()
            .map(|&b| CoalescedWrite::new(true, u64::from(COM1_PORT), &[b]))
            .collect();
        assert_eq!(platform.coalesced_writes(&batch), PortAction::Continue);
        assert_eq!(&*sink.0.lock().unwrap(), b"boot\n");
        // Anything else in a batch is handled one write at a time, in order.
        let mixed = [
            CoalescedWrite::new(true, u64::from(COM1_PORT), b"x"),
            CoalescedWrite::new(true, u64::from(PVPANIC_PORT), &[PVPANIC_PANICKED]),
        ];
        assert_eq!(
            platform.coalesced_writes(&mixed),
            PortAction::End(GuestEnd::Panic)
        );
        platform.pass_on_held_output();
        assert_eq!(&*sink.0.lock().unwrap(), b"boot\nx");
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
