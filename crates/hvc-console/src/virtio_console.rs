//! virtio-console: the guest's `/dev/hvc0`, lguest's own console.
//!
//! A virtio console without the multiport feature is two queues: the guest
//! fills *receiveq* (queue 0) with empty buffers for lg to put typed bytes
//! in, and puts what it prints on *transmitq* (queue 1). Both are served on
//! one I/O thread of the device's own, woken by the guest's doorbells (KVM
//! ioeventfds), by input arriving from lg's terminal, or by a reset.
//!
//! Typed bytes wait in [`ConsoleInput`] until the guest has a receive
//! buffer, so input typed while the guest boots is delivered once its
//! driver is up, as with the UART.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use shadow_mmu::GuestMemory;
use virtio_pci::{
    copy_config, wait_for_work, ActivateError, Activation, ActiveQueue, Interrupt, IoThread,
    VirtioDevice,
};
use virtqueue::QueueError;
use vmm_sys_util::eventfd::EventFd;

/// The virtio device id of a console.
const VIRTIO_ID_CONSOLE: u16 = 3;
/// Feature: the guest may write single characters to `emerg_wr` in the
/// configuration space, before the queues are up (early boot, panics).
const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// Queue sizes: a console moves little data; 256 is Linux's usual.
const QUEUE_SIZES: [u16; 2] = [256, 256];
const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;
/// struct virtio_console_config: cols, rows (u16 each), max_nr_ports,
/// emerg_wr (u32 each).
const CONFIG_MAX_NR_PORTS: u64 = 4;
const CONFIG_EMERG_WR: u64 = 8;
const CONFIG_LEN: u64 = 12;
/// Typed bytes lg holds for a guest that is not reading, at most.
const INPUT_CAPACITY: usize = 64 * 1024;
/// The most bytes copied out of one transmit buffer per step.
const TRANSMIT_CHUNK: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes typed at lg's terminal for the guest's hvc0, and the eventfd that
/// wakes the console's thread when they arrive.
pub struct ConsoleInput {
    pending: Mutex<VecDeque<u8>>,
    wake: EventFd,
}

impl ConsoleInput {
    pub fn new() -> std::io::Result<Arc<ConsoleInput>> {
        Ok(Arc::new(ConsoleInput {
            pending: Mutex::new(VecDeque::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// Queues typed bytes for the guest; beyond `INPUT_CAPACITY` unread
    /// bytes, input is dropped.
    pub fn push(&self, bytes: &[u8]) {
        let mut pending = lock(&self.pending);
        let room = INPUT_CAPACITY.saturating_sub(pending.len());
        pending.extend(bytes.iter().take(room));
        drop(pending);
        let _ = self.wake.write(1);
    }
}

/// The console device.
pub struct VirtioConsole {
    output: Arc<Mutex<Box<dyn Write + Send>>>,
    input: Arc<ConsoleInput>,
    worker: Option<IoThread>,
}

impl VirtioConsole {
    /// A console printing to `output` and reading from `input`.
    pub fn new(output: Box<dyn Write + Send>, input: Arc<ConsoleInput>) -> VirtioConsole {
        VirtioConsole {
            output: Arc::new(Mutex::new(output)),
            input,
            worker: None,
        }
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_CONSOLE
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x07, 0x80) // simple communication controller, other
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN as usize];
        config[CONFIG_MAX_NR_PORTS as usize..][..4].copy_from_slice(&1u32.to_le_bytes());
        copy_config(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_EMERG_WR {
            if let Some(&byte) = data.first() {
                let mut output = lock(&self.output);
                let _ = output.write_all(&[byte]);
                let _ = output.flush();
            }
        }
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let io = ConsoleIo {
            receive: activation.take_queue(RECEIVE_QUEUE),
            transmit: activation.take_queue(TRANSMIT_QUEUE),
            memory: activation.memory,
            interrupt: activation.interrupt,
            output: Arc::clone(&self.output),
            input: Arc::clone(&self.input),
        };
        self.worker = Some(IoThread::spawn(
            "virtio-console",
            "the console thread",
            activation.io_thread_start,
            move |stop| io.run(stop),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// The console's I/O thread and what it owns.
struct ConsoleIo {
    memory: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    output: Arc<Mutex<Box<dyn Write + Send>>>,
    input: Arc<ConsoleInput>,
    receive: Option<ActiveQueue>,
    transmit: Option<ActiveQueue>,
}

impl ConsoleIo {
    /// Serves the queues and the input until `stop` fires.
    fn run(mut self, stop: EventFd) {
        loop {
            // Work first: kicks or input may have come before the thread
            // started waiting.
            if let Err(e) = self.transmit_all().and_then(|()| self.receive_all()) {
                self.interrupt.report_broken(&e.to_string());
                return;
            }
            let kicks = self.receive.iter().chain(&self.transmit).map(|q| &q.kick);
            let wakers: Vec<&EventFd> = std::iter::once(&self.input.wake).chain(kicks).collect();
            if !wait_for_work(&stop, &wakers, &self.interrupt, "the console thread") {
                return;
            }
        }
    }

    /// Prints everything the guest has put on the transmit queue.
    fn transmit_all(&mut self) -> Result<(), QueueError> {
        let Some(transmit) = self.transmit.as_mut() else {
            return Ok(());
        };
        let memory = &self.memory;
        let mut any = false;
        loop {
            while let Some(chain) = transmit.queue.pop(memory)? {
                let mut reader = chain.reader(memory);
                let mut chunk = [0u8; TRANSMIT_CHUNK];
                let mut output = lock(&self.output);
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let _ = output.write_all(&chunk[..n]);
                        }
                    }
                }
                let _ = output.flush();
                drop(output);
                transmit.queue.add_used(memory, chain.head(), 0)?;
                any = true;
            }
            if !transmit.queue.enable_notification(memory)? {
                break;
            }
        }
        if any && transmit.queue.needs_notification(memory)? {
            self.interrupt.signal_used(TRANSMIT_QUEUE);
        }
        Ok(())
    }

    /// Moves typed bytes into the guest's receive buffers.
    fn receive_all(&mut self) -> Result<(), QueueError> {
        let Some(receive) = self.receive.as_mut() else {
            return Ok(());
        };
        let memory = &self.memory;
        let mut any = false;
        loop {
            while !lock(&self.input.pending).is_empty() {
                let Some(chain) = receive.queue.pop(memory)? else {
                    break;
                };
                let mut writer = chain.writer(memory);
                let mut pending = lock(&self.input.pending);
                let room = (chain.writable_len() as usize).min(pending.len());
                let bytes: Vec<u8> = pending.drain(..room).collect();
                drop(pending);
                let _ = writer.write_all(&bytes);
                receive
                    .queue
                    .add_used(memory, chain.head(), writer.bytes_written())?;
                any = true;
            }
            if lock(&self.input.pending).is_empty() || !receive.queue.enable_notification(memory)? {
                break;
            }
        }
        if any && receive.queue.needs_notification(memory)? {
            self.interrupt.signal_used(RECEIVE_QUEUE);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reports_one_port_and_zero_size() {
        let console = VirtioConsole::new(Box::new(std::io::sink()), ConsoleInput::new().unwrap());
        let mut config = [0xffu8; 12];
        console.read_config(0, &mut config);
        assert_eq!(config, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut past_end = [0xffu8; 4];
        console.read_config(u64::MAX - 1, &mut past_end);
        assert_eq!(past_end, [0; 4]);
    }

    #[test]
    fn input_is_bounded() {
        let input = ConsoleInput::new().unwrap();
        input.push(&vec![b'a'; INPUT_CAPACITY + 10]);
        assert_eq!(lock(&input.pending).len(), INPUT_CAPACITY);
    }
}
