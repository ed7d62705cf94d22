//! # hvc-console: where the guest talks to the person at the keyboard
//!
//! lguest's guests wrote to `/dev/hvc0`, a virtio console. A stock kernel,
//! though, speaks first through the oldest device a PC has: the 16550 UART at
//! I/O port 0x3f8 (`console=ttyS0`, `earlyprintk=ttyS0`), which works before
//! any module is loaded and long before PCI is scanned. So this crate has
//! both: the UART, and the virtio console that is the guest's `/dev/hvc0`
//! once its driver is up.
//!
//! Devices here know nothing of KVM or of terminals: the UART is handed a
//! sink for the bytes the guest sends and a way to raise its interrupt line,
//! and is fed the bytes the user types. That keeps it testable without a
//! guest, and keeps the terminal handling (raw mode, restoring it) in `lg`.

mod uart;
mod virtio_console;

pub use uart::{InterruptLine, Uart};
pub use virtio_console::{ConsoleInput, VirtioConsole};
