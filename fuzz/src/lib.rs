//! What lg's fuzz targets share: reading a fuzz input as a guest's
//! choices, a small guest whose RAM is the input's bytes, a queue placed
//! wherever the input says, and the checks every popped chain must pass.
//!
//! A target reads its input front to back: first the numbers a guest
//! writes through the transport (a queue's size and ring addresses,
//! feature bits), then the bytes the guest left in its RAM (rings,
//! descriptors, requests). An input that runs out reads as zeros, so every
//! input means something and the fuzzer never wastes a run on a refusal of
//! ours. The seed corpora in `corpus/` are laid out the same way.

use std::io::Read;

use shadow_mmu::{GuestAddress, GuestMemory};
use virtqueue::{DescriptorChain, Queue};

/// The fuzzed guest's RAM: room for a 256-entry queue's rings and some
/// buffers, small enough to rebuild for every run.
pub const RAM: u64 = 64 << 10;

/// The most chains one run pops from a queue: enough for a 256-entry queue
/// to wrap, few enough that a run stays short.
pub const MAX_POPS: usize = 512;

/// A fuzz input, read front to back as the guest's choices.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next `n` bytes, or fewer if the input ends first.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// The next `N` bytes, zero-padded past the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// A guest of [`RAM`] bytes whose memory starts with `image` (the rest is
/// zero, as fresh RAM is).
pub fn guest_with(image: &[u8]) -> GuestMemory {
    let mem = GuestMemory::new(RAM).expect("64 KiB of guest RAM");
    let len = image.len().min(RAM as usize);
    mem.write(GuestAddress(0), &image[..len])
        .expect("the image is cut to RAM");
    mem
}

/// How the guest configured one queue through the transport: 27 bytes of
/// input.
///
/// | bytes | what |
/// | --- | --- |
/// | 1 | the device's maximum size: `1 << (b % 9)`, 1 to 256 |
/// | 2 | the size the guest chose (anything: `validate` judges it) |
/// | 8, 8, 8 | descriptor table, avail ring, used ring addresses |
/// | 1 | bit 0 EVENT_IDX negotiated, bit 1 INDIRECT_DESC negotiated |
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup {
    pub max_size: u16,
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub event_idx: bool,
    pub indirect: bool,
}

impl QueueSetup {
    pub fn read(input: &mut Input<'_>) -> QueueSetup {
        let max_size = 1u16 << (input.u8() % 9);
        let size = input.u16();
        let desc_table = input.u64();
        let avail_ring = input.u64();
        let used_ring = input.u64();
        let flags = input.u8();
        QueueSetup {
            max_size,
            size,
            desc_table,
            avail_ring,
            used_ring,
            event_idx: flags & 1 != 0,
            indirect: flags & 2 != 0,
        }
    }

    /// The queue as the transport leaves it at DRIVER_OK, or `None` if
    /// `Queue::validate` refuses the configuration (the transport then
    /// fails the device, and no chain is ever walked).
    pub fn enable(&self, mem: &GuestMemory) -> Option<Queue> {
        let mut queue = Queue::new(self.max_size);
        queue.set_size(self.size);
        queue.set_desc_table(self.desc_table);
        queue.set_avail_ring(self.avail_ring);
        queue.set_used_ring(self.used_ring);
        queue.set_event_idx(self.event_idx);
        queue.set_indirect(self.indirect);
        queue.validate(mem).ok()?;
        queue.set_ready(true);
        Some(queue)
    }
}

/// Checks what `virtqueue` promises of every chain it hands out: buffers
/// never empty and wholly in guest RAM, readable and writable totals that
/// add up and fit the used ring's 32-bit length. Panics (a finding) if not.
pub fn check_chain(mem: &GuestMemory, chain: &DescriptorChain) {
    let mut total = 0u64;
    for (buffers, len) in [
        (chain.readable(), chain.readable_len()),
        (chain.writable(), chain.writable_len()),
    ] {
        let sum: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
        assert_eq!(sum, len, "a chain's buffers do not add up to its length");
        for b in buffers {
            assert!(b.len > 0, "an empty buffer in a checked chain");
            assert!(
                mem.contains(b.addr, u64::from(b.len)),
                "a checked buffer {:#x}+{:#x} is not in guest RAM",
                b.addr.0,
                b.len
            );
        }
        total += len;
    }
    assert!(
        total <= u64::from(u32::MAX),
        "a chain's total does not fit in 32 bits"
    );
}

/// Reads a chain's readable bytes and fills its writable ones, as a device
/// would (at most 64 KiB each way, so a chain that names the same RAM many
/// times over stays quick); returns the bytes written, for `add_used`.
pub fn use_chain(mem: &GuestMemory, chain: &DescriptorChain) -> u32 {
    const MOST: u64 = 64 << 10;
    let mut reader = chain.reader(mem);
    let mut sink = Vec::new();
    let want = chain.readable_len().min(MOST);
    reader
        .by_ref()
        .take(want)
        .read_to_end(&mut sink)
        .expect("a checked chain reads");
    assert_eq!(sink.len() as u64, want, "a checked chain read short");
    let mut writer = chain.writer(mem);
    let len = chain.writable_len().min(MOST) as usize;
    writer
        .write_slice(&vec![0xa5; len])
        .expect("a checked chain takes its writable length");
    assert_eq!(writer.bytes_written() as usize, len);
    writer.bytes_written()
}

/// A virtio device and the hypervisor around it, for the transport
/// targets: no KVM, no thread, but the transport's real work (checking
/// queues at DRIVER_OK, handing them over, MSI-X and INTx delivery) done
/// for real.
pub mod transport {
    use std::sync::{Arc, Mutex};

    use shadow_mmu::GuestMemory;
    use virtio_pci::{
        ActivateError, Activation, IntxLine, MsiSink, TransportHooks, VirtioDevice, VirtioPciDevice,
    };
    use vmm_sys_util::eventfd::EventFd;

    use crate::{check_chain, use_chain, MAX_POPS};

    /// Where BAR 0 starts, as lg's BAR allocator places the first device.
    pub const BAR: u64 = 0xc000_0000;

    /// MSI vectors and doorbells that go nowhere: the fuzz targets look at
    /// what the transport does to the guest, not at what KVM would do.
    pub struct Hooks {
        /// Refuse doorbells, as KVM does when it has no ioeventfd left, so
        /// kicks come as BAR writes.
        pub refuse_doorbells: bool,
    }

    struct Sink;

    impl MsiSink for Sink {
        fn set_message(&self, _message: Option<(u64, u32)>) {}
        fn trigger(&self) {}
    }

    impl TransportHooks for Hooks {
        fn msi_vector(&self) -> Result<Box<dyn MsiSink>, String> {
            Ok(Box::new(Sink))
        }

        fn register_doorbell(&self, _addr: u64, _event: &EventFd) -> Result<(), String> {
            if self.refuse_doorbells {
                Err("the fuzz target refuses doorbells".into())
            } else {
                Ok(())
            }
        }

        fn unregister_doorbell(&self, _addr: u64, _event: &EventFd) {}
    }

    struct Pin;

    impl IntxLine for Pin {
        fn set_level(&self, _asserted: bool) {}
    }

    /// The queues a started device was handed, shared with the target so it
    /// can serve them when the guest kicks.
    pub type Started = Arc<Mutex<Option<Activation>>>;

    /// A device with two queues (a console's shape), a few feature bits
    /// and eight bytes of configuration; it keeps its activation for
    /// [`serve`].
    struct Device {
        started: Started,
        config: [u8; 8],
    }

    impl VirtioDevice for Device {
        fn device_type(&self) -> u16 {
            3
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 64]
        }

        fn features(&self) -> u64 {
            0b1011
        }

        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                let at = offset.saturating_add(i as u64);
                *byte = usize::try_from(at)
                    .ok()
                    .and_then(|at| self.config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
        }

        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, byte) in data.iter().enumerate() {
                let at = offset.saturating_add(i as u64);
                if let Some(slot) = usize::try_from(at)
                    .ok()
                    .and_then(|at| self.config.get_mut(at))
                {
                    *slot = *byte;
                }
            }
        }

        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            *self.started.lock().unwrap() = Some(activation);
            Ok(())
        }

        fn reset(&mut self) {
            *self.started.lock().unwrap() = None;
        }
    }

    /// The transport over the two-queue device, with BAR 0 at [`BAR`].
    pub fn device(memory: Arc<GuestMemory>, refuse_doorbells: bool) -> (VirtioPciDevice, Started) {
        let started = Started::default();
        let device = Device {
            started: Arc::clone(&started),
            config: *b"lg-fuzz!",
        };
        let transport = VirtioPciDevice::new(
            Box::new(device),
            memory,
            BAR,
            Arc::new(Hooks { refuse_doorbells }),
            Box::new(Pin),
            10,
        )
        .expect("a two-queue device fits the transport");
        (transport, started)
    }

    /// What the device's thread does on a kick: every chain available on
    /// each started queue popped, checked, used and returned, then the
    /// interrupt the guest asked for.
    pub fn serve(started: &Started) {
        let mut started = started.lock().unwrap();
        let Some(activation) = started.as_mut() else {
            return;
        };
        let mem = Arc::clone(&activation.memory);
        for active in &mut activation.queues {
            let queue = &mut active.queue;
            let mut broken = false;
            for _ in 0..MAX_POPS {
                match queue.pop(&mem) {
                    Ok(Some(chain)) => {
                        check_chain(&mem, &chain);
                        let written = use_chain(&mem, &chain);
                        if queue.add_used(&mem, chain.head(), written).is_err() {
                            broken = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                activation
                    .interrupt
                    .report_broken("the fuzzed guest broke a queue");
            } else if queue.needs_notification(&mem).unwrap_or(false) {
                activation.interrupt.signal_used(active.index);
            }
        }
    }
}

/// The kernel-file targets' shared half: a kernel file from the input,
/// checked by `bzimage-loader` and, if it passes, loaded into a guest.
pub mod kernel {
    use std::path::Path;
    use std::sync::OnceLock;

    use bzimage_loader::{load, KernelImage, LoadOptions};
    use shadow_mmu::{GuestAddress, GuestMemory};

    use crate::Input;

    /// Two guest sizes: one where a typical kernel's placement at 16 MiB
    /// barely fits, and one with room.
    const SIZES: [u64; 2] = [16 << 20, 48 << 20];

    /// The guests, made once: a run only writes where the kernel goes.
    fn guest(choice: u8) -> &'static GuestMemory {
        static GUESTS: [OnceLock<GuestMemory>; 2] = [OnceLock::new(), OnceLock::new()];
        let i = usize::from(choice) % SIZES.len();
        GUESTS[i].get_or_init(|| GuestMemory::new(SIZES[i]).expect("guest RAM"))
    }

    /// Reads a guest size, a command line and the kernel file from
    /// `data`, lets `prepare` give the file the magic number its format
    /// starts with, and opens and loads it. A kernel that loads must enter
    /// at an address in guest RAM.
    pub fn open_and_load(data: &[u8], prepare: impl FnOnce(&mut Vec<u8>)) {
        let mut input = Input::new(data);
        let choice = input.u8();
        let cmdline_len = usize::from(input.u8());
        let cmdline = String::from_utf8_lossy(input.bytes(cmdline_len)).into_owned();
        let mut file = input.rest().to_vec();
        prepare(&mut file);
        let path = Path::new("fuzzed-kernel");
        let Ok(kernel) = KernelImage::from_bytes(path, file) else {
            return;
        };
        let mem = guest(choice);
        let opts = LoadOptions {
            cmdline: &cmdline,
            initrd: None,
            acpi_rsdp: (choice & 2 != 0).then_some(GuestAddress(0xe_0000)),
        };
        if let Ok(setup) = load(mem, &kernel, &opts) {
            assert!(
                mem.contains(setup.entry, 1),
                "{:?} enters at {:#x}, outside the guest's RAM",
                kernel.kind(),
                setup.entry.0
            );
        }
    }
}
