//! A 16550A UART, as much of it as Linux's 8250 driver looks at.
//!
//! The guest drives it through eight I/O ports. Transmission is instant, so
//! the transmitter is always empty. What reaches the sink when depends on
//! how the guest's driver transmits. A driver that waits for the
//! transmitter's interrupt between bytes (Linux's tty layer: a shell's
//! prompt, the echo of a key) has each write passed on at once. A driver
//! that polls the line status between bytes (the kernel's own console,
//! printing its log) gets its bytes passed on a line at a time: that driver
//! costs an exit per byte anyway (its LSR read), and a system call per byte
//! on top of it, to a pipe or a terminal, would cost as much again. What is
//! left of a line without its end waits for [`Uart::pass_on_output`], which
//! lg calls every few milliseconds and when the guest ends.
//! Reception is modelled as a terminal with hardware flow control: what the
//! user typed waits on lg's side of the cable until the guest raises RTS
//! (Linux does when a program opens the port), then flows into the chip's
//! 16-byte receive FIFO as the guest drains it. So keys typed, or a script
//! piped in, while the kernel is still booting are not lost when the driver
//! resets the FIFO on start-up: they arrive once someone is listening. Linux probes
//! the chip before trusting it: it checks the scratch register, that the FIFO
//! bits read back as a 16550A's, and that loopback mode echoes what it sends,
//! so all of those behave as the datasheet says.

use std::collections::VecDeque;
use std::io::Write;

// Register offsets from the base port. Some share an offset and are told apart
// by the direction of the access or by the DLAB bit of the line control.
const DATA: u8 = 0; // RBR on read, THR on write; DLL when DLAB is set
const IER: u8 = 1; // interrupt enable; DLM when DLAB is set
const IIR_FCR: u8 = 2; // interrupt identification on read, FIFO control on write
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const MSR: u8 = 6;
const SCR: u8 = 7;

const IER_RX_DATA: u8 = 0x01;
const IER_TX_EMPTY: u8 = 0x02;
const IER_MASK: u8 = 0x0f;

const IIR_NONE: u8 = 0x01;
const IIR_TX_EMPTY: u8 = 0x02;
const IIR_RX_DATA: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_FIFO_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;

const MCR_RTS: u8 = 0x02;
const MCR_LOOPBACK: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

const LSR_DATA_READY: u8 = 0x01;
const LSR_TX_HOLDING_EMPTY: u8 = 0x20;
const LSR_TX_EMPTY: u8 = 0x40;

// Outside loopback, the modem lines say a terminal is attached and ready:
// carrier detect, data set ready, clear to send.
const MSR_CONNECTED: u8 = 0xb0;

/// How many typed bytes lg holds for the guest before it drops input, so a
/// guest that never reads cannot make lg buffer without bound.
const RX_CAPACITY: usize = 64 * 1024;
/// The 16550A's receive FIFO.
const FIFO_SIZE: usize = 16;
/// How much polled output lg holds back waiting for the end of its line
/// before it passes it on anyway.
const HELD_LIMIT: usize = 4096;

/// The UART's interrupt line: raising it sends one edge to the guest's
/// interrupt controller (ISA interrupts are edge-triggered).
pub trait InterruptLine: Send {
    fn trigger(&self);
}

/// The state of one 16550A.
pub struct Uart {
    interrupt_enable: u8,
    line_control: u8,
    modem_control: u8,
    scratch: u8,
    divisor: u16,
    fifo_enabled: bool,
    /// The transmitter-empty interrupt is pending until the guest reads IIR
    /// or writes another byte, as on the real chip.
    tx_empty_pending: bool,
    /// The chip's receive FIFO: what the guest can read now.
    rx: VecDeque<u8>,
    /// Typed bytes waiting on lg's side of the cable for RTS and FIFO room.
    backlog: VecDeque<u8>,
    output: Box<dyn Write + Send>,
    /// Transmitted bytes not yet passed on to `output`.
    held: Vec<u8>,
    interrupt: Box<dyn InterruptLine>,
}

impl Uart {
    /// A UART whose transmitted bytes go to `output`.
    pub fn new(output: Box<dyn Write + Send>, interrupt: Box<dyn InterruptLine>) -> Uart {
        Uart {
            interrupt_enable: 0,
            line_control: 0x03, // 8 data bits, as firmware leaves it
            modem_control: 0x08,
            scratch: 0,
            divisor: 12, // 9600 baud
            fifo_enabled: false,
            tx_empty_pending: false,
            rx: VecDeque::new(),
            backlog: VecDeque::new(),
            output,
            held: Vec::new(),
            interrupt,
        }
    }

    fn dlab(&self) -> bool {
        self.line_control & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.modem_control & MCR_LOOPBACK != 0
    }

    /// The interrupt the chip reports in IIR, highest priority first.
    fn pending_interrupt(&self) -> u8 {
        if self.interrupt_enable & IER_RX_DATA != 0 && !self.rx.is_empty() {
            IIR_RX_DATA
        } else if self.interrupt_enable & IER_TX_EMPTY != 0 && self.tx_empty_pending {
            IIR_TX_EMPTY
        } else {
            IIR_NONE
        }
    }

    fn update_interrupt(&self) {
        if self.pending_interrupt() != IIR_NONE {
            self.interrupt.trigger();
        }
    }

    /// The guest reads the register at `offset` (0..8) from the base port.
    pub fn read(&mut self, offset: u8) -> u8 {
        match offset {
            DATA if self.dlab() => self.divisor as u8,
            DATA => {
                let byte = self.rx.pop_front().unwrap_or(0);
                self.refill();
                self.update_interrupt();
                byte
            }
            IER if self.dlab() => (self.divisor >> 8) as u8,
            IER => self.interrupt_enable,
            IIR_FCR => {
                let pending = self.pending_interrupt();
                if pending == IIR_TX_EMPTY {
                    // Reading IIR acknowledges a transmitter-empty interrupt.
                    self.tx_empty_pending = false;
                }
                let fifo = if self.fifo_enabled {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                pending | fifo
            }
            LCR => self.line_control,
            MCR => self.modem_control,
            LSR => {
                self.refill();
                let ready = if self.rx.is_empty() {
                    0
                } else {
                    LSR_DATA_READY
                };
                ready | LSR_TX_HOLDING_EMPTY | LSR_TX_EMPTY
            }
            MSR if self.loopback() => {
                // In loopback the modem outputs come back as inputs:
                // DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let mcr = self.modem_control;
                ((mcr & 0x01) << 5)
                    | ((mcr & 0x02) << 3)
                    | ((mcr & 0x04) << 4)
                    | ((mcr & 0x08) << 4)
            }
            MSR => MSR_CONNECTED,
            SCR => self.scratch,
            _ => 0xff,
        }
    }

    /// The guest writes `value` to the register at `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) {
        self.write_register(offset, value);
        self.pass_on_what_is_due();
    }

    /// Writes the guest made one after another without an exit between
    /// them (KVM kept them in its coalesced ring), as `(offset, value)`:
    /// the same as [`write`](Self::write) for each, with the transmitted
    /// bytes passed on to the console in one go.
    pub fn write_batch(&mut self, writes: impl IntoIterator<Item = (u8, u8)>) {
        for (offset, value) in writes {
            self.write_register(offset, value);
        }
        self.pass_on_what_is_due();
    }

    /// Whether the guest asked for an interrupt when the transmitter
    /// empties: its driver then sends the next bytes only after that
    /// interrupt, so each byte it writes must reach lg (exit) at once,
    /// rather than wait in KVM's coalesced ring. Without it (the kernel's
    /// console, early boot) the driver polls LSR between bytes, and LSR
    /// reads exit anyway.
    pub fn transmit_interrupt_enabled(&self) -> bool {
        self.interrupt_enable & IER_TX_EMPTY != 0
    }

    /// Passes on every transmitted byte still held back: the part of a
    /// line the guest's console has printed so far.
    pub fn pass_on_output(&mut self) {
        self.pass_on(self.held.len());
    }

    /// After the guest's writes: everything, for a driver that waits for
    /// the transmit interrupt (someone may be waiting for that echo); whole
    /// lines only, for a polling one, unless too much has been held.
    fn pass_on_what_is_due(&mut self) {
        let due = if self.transmit_interrupt_enabled() || self.held.len() >= HELD_LIMIT {
            self.held.len()
        } else {
            self.held
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |last| last + 1)
        };
        self.pass_on(due);
    }

    fn pass_on(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        // A console whose reader went away must not stop the guest; the
        // bytes are simply lost, as on a cut cable.
        let _ = self.output.write_all(&self.held[..count]);
        let _ = self.output.flush();
        self.held.drain(..count);
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match offset {
            DATA if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            DATA => {
                if self.loopback() {
                    if self.rx.len() < FIFO_SIZE {
                        self.rx.push_back(value);
                    }
                } else {
                    self.held.push(value);
                }
                self.tx_empty_pending = true;
                self.update_interrupt();
            }
            IER if self.dlab() => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            IER => {
                let enabling_tx =
                    value & IER_TX_EMPTY != 0 && self.interrupt_enable & IER_TX_EMPTY == 0;
                self.interrupt_enable = value & IER_MASK;
                // The transmitter is empty, so enabling its interrupt raises
                // it at once; Linux's driver waits for exactly that.
                if enabling_tx {
                    self.tx_empty_pending = true;
                }
                self.update_interrupt();
            }
            IIR_FCR => {
                self.fifo_enabled = value & FCR_FIFO_ENABLE != 0;
                if value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                    self.refill();
                }
            }
            LCR => self.line_control = value,
            MCR => {
                self.modem_control = value & MCR_MASK;
                self.refill();
                self.update_interrupt();
            }
            SCR => self.scratch = value,
            // LSR and MSR are read-only; writes to them do nothing.
            _ => {}
        }
    }

    /// Bytes the user typed, to be received by the guest. Input beyond
    /// `RX_CAPACITY` bytes that the guest has yet to read is dropped.
    pub fn push_input(&mut self, bytes: &[u8]) {
        let room = RX_CAPACITY.saturating_sub(self.backlog.len());
        self.backlog.extend(bytes.iter().take(room));
        self.refill();
        self.update_interrupt();
    }

    /// Whether the guest has yet to read everything the user typed.
    pub fn has_unread_input(&self) -> bool {
        !self.rx.is_empty() || !self.backlog.is_empty()
    }

    /// Moves typed bytes into the FIFO while the guest asserts RTS (outside
    /// loopback, where the cable is disconnected) and the FIFO has room.
    fn refill(&mut self) {
        if self.modem_control & MCR_RTS == 0 || self.loopback() {
            return;
        }
        while self.rx.len() < FIFO_SIZE {
            match self.backlog.pop_front() {
                Some(byte) => self.rx.push_back(byte),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct CountingLine(Arc<AtomicUsize>);
    impl InterruptLine for CountingLine {
        fn trigger(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn uart() -> (Uart, SharedSink, CountingLine) {
        let sink = SharedSink::default();
        let line = CountingLine::default();
        (
            Uart::new(Box::new(sink.clone()), Box::new(line.clone())),
            sink,
            line,
        )
    }

    #[test]
    fn transmitted_bytes_reach_the_sink() {
        let (mut uart, sink, _) = uart();
        for b in b"hi\n" {
            uart.write(DATA, *b);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(uart.read(LSR) & (LSR_TX_EMPTY | LSR_TX_HOLDING_EMPTY), 0x60);
    }

    /// Counts the flushes, and the bytes that had arrived at each.
    #[derive(Clone, Default)]
    struct FlushCounter(Arc<Mutex<(Vec<u8>, Vec<usize>)>>);
    impl Write for FlushCounter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            let mut seen = self.0.lock().unwrap();
            let bytes = seen.0.len();
            seen.1.push(bytes);
            Ok(())
        }
    }

    #[test]
    fn a_batch_is_the_same_writes_passed_on_with_one_flush() {
        let sink = FlushCounter::default();
        let mut uart = Uart::new(Box::new(sink.clone()), Box::new(CountingLine::default()));
        // The divisor set in the middle of a batch is a divisor, not text.
        uart.write_batch([
            (DATA, b'o'),
            (LCR, LCR_DLAB | 0x03),
            (DATA, 1),
            (LCR, 0x03),
            (DATA, b'k'),
            (DATA, b'\n'),
        ]);
        assert_eq!(uart.divisor, 1);
        let (bytes, flushes) = sink.0.lock().unwrap().clone();
        assert_eq!(bytes, b"ok\n");
        assert_eq!(flushes, [3], "one flush, after the whole line");
        // Register writes alone flush nothing.
        uart.write(SCR, 7);
        uart.write_batch([(SCR, 8)]);
        uart.pass_on_output();
        assert_eq!(sink.0.lock().unwrap().1, [3]);
    }

    #[test]
    fn a_polling_driver_is_passed_on_a_line_at_a_time() {
        let sink = FlushCounter::default();
        let mut uart = Uart::new(Box::new(sink.clone()), Box::new(CountingLine::default()));
        for b in b"boot" {
            uart.write(DATA, *b);
        }
        assert!(
            sink.0.lock().unwrap().0.is_empty(),
            "held to the line's end"
        );
        uart.write_batch([(DATA, b'\r'), (DATA, b'\n'), (DATA, b'>')]);
        assert_eq!(sink.0.lock().unwrap().0, b"boot\r\n");
        // What lg passes on every few milliseconds, and at the end.
        uart.pass_on_output();
        assert_eq!(*sink.0.lock().unwrap(), (b"boot\r\n>".to_vec(), vec![6, 7]));
        // A line that never ends is not held without bound.
        for _ in 0..HELD_LIMIT {
            uart.write(DATA, b'x');
        }
        assert_eq!(sink.0.lock().unwrap().0.len(), 7 + HELD_LIMIT);
    }

    #[test]
    fn an_interrupt_driven_driver_is_passed_on_at_once() {
        let (mut uart, sink, _) = uart();
        uart.write(DATA, b'$');
        assert!(sink.0.lock().unwrap().is_empty());
        // The tty layer takes over: what was held goes first, then each
        // byte as it comes (the echo of a key has no line end).
        uart.write(IER, IER_TX_EMPTY | IER_RX_DATA);
        assert_eq!(&*sink.0.lock().unwrap(), b"$");
        uart.write(DATA, b'l');
        assert_eq!(&*sink.0.lock().unwrap(), b"$l");
    }

    #[test]
    fn the_transmit_interrupt_decides_whether_writes_may_wait() {
        let (mut uart, _, _) = uart();
        assert!(!uart.transmit_interrupt_enabled());
        uart.write(IER, IER_TX_EMPTY | IER_RX_DATA);
        assert!(uart.transmit_interrupt_enabled());
        // With DLAB set, offset 1 is the divisor's high byte, not IER.
        uart.write(LCR, LCR_DLAB);
        uart.write(IER, 0);
        assert!(uart.transmit_interrupt_enabled());
        uart.write(LCR, 0x03);
        uart.write(IER, IER_RX_DATA);
        assert!(!uart.transmit_interrupt_enabled());
    }

    #[test]
    fn received_bytes_are_read_in_order_with_an_interrupt() {
        let (mut uart, _, line) = uart();
        uart.write(MCR, MCR_RTS);
        uart.write(IER, IER_RX_DATA);
        uart.push_input(b"ab");
        assert!(line.0.load(Ordering::SeqCst) >= 1);
        assert_eq!(uart.read(IIR_FCR) & 0x0f, IIR_RX_DATA);
        assert_eq!(uart.read(LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(uart.read(DATA), b'a');
        assert_eq!(uart.read(DATA), b'b');
        assert_eq!(uart.read(LSR) & LSR_DATA_READY, 0);
        assert_eq!(uart.read(IIR_FCR) & 0x0f, IIR_NONE);
    }

    #[test]
    fn enabling_the_transmit_interrupt_raises_it_until_iir_is_read() {
        let (mut uart, _, line) = uart();
        uart.write(IER, IER_TX_EMPTY);
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
        assert_eq!(uart.read(IIR_FCR) & 0x0f, IIR_TX_EMPTY);
        assert_eq!(uart.read(IIR_FCR) & 0x0f, IIR_NONE);
    }

    #[test]
    fn divisor_latch_shadows_data_and_ier() {
        let (mut uart, sink, _) = uart();
        uart.write(LCR, LCR_DLAB | 0x03);
        uart.write(DATA, 0x01);
        uart.write(IER, 0x00);
        assert_eq!(uart.read(DATA), 0x01);
        assert!(sink.0.lock().unwrap().is_empty());
        uart.write(LCR, 0x03);
        assert_eq!(uart.read(IER), 0);
    }

    #[test]
    fn looks_like_a_16550a_to_the_linux_probe() {
        let (mut uart, sink, _) = uart();
        uart.write(SCR, 0xa5);
        assert_eq!(uart.read(SCR), 0xa5);
        uart.write(IIR_FCR, FCR_FIFO_ENABLE);
        assert_eq!(uart.read(IIR_FCR) & IIR_FIFO_ENABLED, IIR_FIFO_ENABLED);
        // Loopback: modem outputs come back on the status lines, and sent
        // bytes come back as received ones without reaching the sink.
        uart.write(MCR, MCR_LOOPBACK | 0x0a);
        assert_eq!(uart.read(MSR) & 0xf0, 0x90);
        uart.write(DATA, 0x5a);
        assert_eq!(uart.read(DATA), 0x5a);
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_is_bounded() {
        let (mut uart, _, _) = uart();
        uart.write(MCR, MCR_RTS);
        uart.push_input(&vec![b'x'; RX_CAPACITY + 100]);
        let mut count = 0;
        while uart.has_unread_input() {
            uart.read(DATA);
            count += 1;
        }
        assert_eq!(count, RX_CAPACITY);
    }

    #[test]
    fn typed_bytes_wait_for_rts_and_survive_a_fifo_reset() {
        let (mut uart, _, _) = uart();
        uart.push_input(b"typed early");
        assert_eq!(uart.read(LSR) & LSR_DATA_READY, 0, "no RTS yet");
        // The driver starts up: it clears the FIFO, then raises RTS.
        uart.write(IIR_FCR, FCR_FIFO_ENABLE | FCR_CLEAR_RX);
        uart.write(MCR, MCR_RTS | 0x09);
        let mut received = Vec::new();
        while uart.read(LSR) & LSR_DATA_READY != 0 {
            received.push(uart.read(DATA));
        }
        assert_eq!(received, b"typed early");
    }

    #[test]
    fn the_fifo_holds_sixteen_bytes_at_a_time() {
        let (mut uart, _, _) = uart();
        uart.write(MCR, MCR_RTS);
        uart.push_input(&[b'y'; 40]);
        assert_eq!(uart.rx.len(), FIFO_SIZE);
        uart.read(DATA);
        assert_eq!(uart.rx.len(), FIFO_SIZE, "a read refills the FIFO");
        // A reset of the FIFO loses what was in it, not the backlog.
        uart.write(IIR_FCR, FCR_CLEAR_RX);
        assert_eq!(uart.rx.len(), FIFO_SIZE);
        assert_eq!(uart.backlog.len(), 40 - 1 - 2 * FIFO_SIZE);
    }

    #[test]
    fn unknown_offsets_never_panic() {
        let (mut uart, _, _) = uart();
        for offset in 0..=255u8 {
            uart.write(offset, 0xff);
            uart.read(offset);
        }
    }
}
