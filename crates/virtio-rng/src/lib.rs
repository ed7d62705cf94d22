//! # virtio-rng: entropy for the guest
//!
//! lguest offered `--rng`: a device from which the guest reads random bytes,
//! so a freshly booted guest (with no disk history and no keyboard to time)
//! does not wait for entropy. The virtio entropy device (virtio 1.2 §5.4) is
//! the simplest virtio device there is: one queue of empty, device-writable
//! buffers, which the device fills with random bytes. Linux's `virtio_rng`
//! driver exposes it as `/dev/hwrng` and feeds the kernel's pool from it.
//!
//! lg fills the buffers from the host's `getrandom(2)`, on a thread of the
//! device's own, woken by the guest's doorbell.

use shadow_mmu::GuestMemory;
use virtio_pci::{
    wait_for_work, ActivateError, Activation, ActiveQueue, Interrupt, IoThread, VirtioDevice,
};
use virtqueue::{Queue, QueueError};
use vmm_sys_util::eventfd::EventFd;

/// The virtio device id of an entropy source.
const VIRTIO_ID_RNG: u16 = 4;
const QUEUE_SIZES: [u16; 1] = [64];
const REQUEST_QUEUE: u16 = 0;
/// The most random bytes given for one buffer: a guest asking for more gets
/// this much and asks again, so one request cannot make lg allocate without
/// bound.
const MAX_BYTES_PER_BUFFER: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct VirtioRng {
    worker: Option<IoThread>,
}

impl VirtioRng {
    pub fn new() -> VirtioRng {
        VirtioRng::default()
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_RNG
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x10, 0x80) // encryption/decryption controller, other
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Some(queue) = activation.take_queue(REQUEST_QUEUE) else {
            return Ok(());
        };
        let memory = activation.memory;
        let interrupt = activation.interrupt;
        self.worker = Some(IoThread::spawn(
            "virtio-rng",
            "the rng thread",
            activation.io_thread_start,
            move |stop| serve(queue, &memory, &interrupt, &stop),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl Drop for VirtioRng {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The device thread: fill buffers whenever the guest rings, until stopped.
fn serve(mut queue: ActiveQueue, memory: &GuestMemory, interrupt: &Interrupt, stop: &EventFd) {
    loop {
        match fill_available(&mut queue.queue, memory, &mut getrandom) {
            Ok(true) => interrupt.signal_used(REQUEST_QUEUE),
            Ok(false) => {}
            Err(e) => {
                interrupt.report_broken(&e.to_string());
                return;
            }
        }
        if !wait_for_work(stop, &[&queue.kick], interrupt, "the rng thread") {
            return;
        }
    }
}

/// Fills every available buffer with bytes from `random`; returns whether
/// the guest wants an interrupt for them.
fn fill_available(
    queue: &mut Queue,
    memory: &GuestMemory,
    random: &mut dyn FnMut(&mut [u8]) -> std::io::Result<()>,
) -> Result<bool, QueueError> {
    let mut any = false;
    loop {
        while let Some(chain) = queue.pop(memory)? {
            let wanted = usize::try_from(chain.writable_len())
                .unwrap_or(usize::MAX)
                .min(MAX_BYTES_PER_BUFFER);
            let mut bytes = vec![0u8; wanted];
            let written = match random(&mut bytes) {
                Ok(()) => {
                    let mut writer = chain.writer(memory);
                    let _ = std::io::Write::write_all(&mut writer, &bytes);
                    writer.bytes_written()
                }
                // No entropy to give: return the buffer empty rather than
                // hand the guest predictable bytes.
                Err(_) => 0,
            };
            queue.add_used(memory, chain.head(), written)?;
            any = true;
        }
        if !queue.enable_notification(memory)? {
            break;
        }
    }
    Ok(any && queue.needs_notification(memory)?)
}

/// Fills `buf` from the host's getrandom(2), blocking until the host's
/// pool is initialised.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += got as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtqueue::test_driver::{GuestDriver, Posted};

    use super::*;

    /// A guest whose queue of 4 holds one writable buffer of `len` bytes.
    fn guest_with_buffer(len: u32) -> (GuestDriver, Queue, Posted) {
        let mut driver = GuestDriver::new(4);
        let queue = driver.queue();
        let posted = driver.add_chain(&[], &[len]);
        (driver, queue, posted)
    }

    #[test]
    fn fills_a_buffer_with_random_bytes() {
        let (mut driver, mut queue, posted) = guest_with_buffer(64);
        let wants_interrupt = fill_available(&mut queue, &driver.mem, &mut getrandom).unwrap();
        assert!(wants_interrupt);
        assert_eq!(driver.take_used(), Some((0, 64)));
        // The driver filled the buffer with 0xee; 64 random bytes are not
        // all that.
        let bytes = posted.contents(&driver, 64);
        assert!(
            bytes.iter().any(|&b| b != 0xee),
            "the buffer was not filled"
        );
    }

    #[test]
    fn a_huge_buffer_gets_a_bounded_amount() {
        let (mut driver, mut queue, _) = guest_with_buffer(512 * 1024);
        fill_available(&mut queue, &driver.mem, &mut |buf| {
            buf.fill(0xaa);
            Ok(())
        })
        .unwrap();
        let (_, used) = driver.take_used().unwrap();
        assert_eq!(used as usize, MAX_BYTES_PER_BUFFER);
    }

    #[test]
    fn no_entropy_means_an_empty_buffer_not_predictable_bytes() {
        let (mut driver, mut queue, _) = guest_with_buffer(32);
        fill_available(&mut queue, &driver.mem, &mut |_| {
            Err(std::io::Error::other("no entropy"))
        })
        .unwrap();
        assert_eq!(driver.take_used(), Some((0, 0)));
    }

    #[test]
    fn a_buffer_outside_ram_is_a_queue_error_not_a_panic() {
        let (driver, mut queue, posted) = guest_with_buffer(64);
        driver.point_outside_ram(posted.head);
        assert!(fill_available(&mut queue, &driver.mem, &mut getrandom).is_err());
    }
}
