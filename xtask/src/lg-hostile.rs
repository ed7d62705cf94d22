//! lg-hostile: a guest that attacks lg's virtio devices from the inside,
//! for tests/hostile.rs (packed into the guest kit's initramfs as
//! /bin/lg-hostile by xtask/src/guest.rs, compiled with rustc alone,
//! statically, like lg-pattern).
//!
//! A guest's kernel is not on lg's side: whoever is root in the guest can
//! take a device away from its driver and program it by hand. That is what
//! this program does, as root. For each device named on its command line
//! (`blk`, `rng`, `console`, `net`, a virtio device id, or a PCI address
//! such as `0000:00:03.0`) it unbinds the driver, enables the PCI function,
//! finds the virtio structures through the capability list in `config`, and
//! maps the BAR from `resourceN`. Then it plays a driver: reset,
//! ACKNOWLEDGE, DRIVER, features, FEATURES_OK, the attacked queue (and a
//! network card's receive queue, empty, since lg starts a card only with
//! both), DRIVER_OK, with
//! rings in memory it pinned (`mlock`) and whose guest-physical frames it
//! read from `/proc/self/pagemap` (root sees them).
//!
//! Each attack starts from a fresh reset and breaks one rule of the virtio
//! spec: rings or buffers outside RAM, a descriptor loop, lengths that wrap
//! or add up past 4 GiB, an avail index far ahead, a bad queue size, a
//! notify for a queue that does not exist, registers of queues that do not
//! exist, DRIVER_OK without FEATURES_OK. Two control cases, a good request
//! before and after the bad ones, show that the driver here is right and
//! the device still serves one after a reset. What the device answered is
//! printed, one line per attack:
//!
//! `LG_HOSTILE <device> <attack> status=0x.. [used=N] [...]`
//!
//! (the status is read after waiting up to two seconds for the device to
//! react), then `LG_HOSTILE_DONE`. Judging the answers is the test's
//! business; this program only reports. The device is left reset and
//! unbound: `/init` binds it back to its driver.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::exit;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 0x01;
const MAP_PRIVATE: i32 = 0x02;
const MAP_ANONYMOUS: i32 = 0x20;
const MAP_FAILED: usize = usize::MAX;

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut u8;
    fn mlock(addr: *const u8, len: usize) -> i32;
}

const COMMAND_BUS_MASTER: u16 = 1 << 2;
const VIRTIO_VENDOR: &str = "0x1af4";
/// Modern virtio PCI devices are 0x1040 plus the virtio device id.
const MODERN_DEVICE_BASE: u16 = 0x1040;

// The virtio PCI capability (virtio 1.2 §4.1.4).
const PCI_CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_DEVICE: u8 = 4;

// The common configuration's fields (virtio 1.2 §4.1.4.3).
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
const COMMON_LEN: usize = 0x38;

// Status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const DEVICE_NEEDS_RESET: u8 = 0x40;

/// VIRTIO_F_VERSION_1 (bit 32), as a bit of the high feature word.
const VERSION_1_HIGH: u32 = 1;
const NO_VECTOR: u16 = 0xffff;

// Descriptor flags.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
/// The avail ring's flag asking for no interrupts: nobody here handles them.
const AVAIL_NO_INTERRUPT: u16 = 1;

/// The queue size every attack uses (every lg device allows 64).
const QUEUE: u16 = 64;
/// 1 TiB: far above any RAM a test guest has.
const OUTSIDE_RAM: u64 = 1 << 40;
/// What the good request puts on a console's transmit queue: lg prints it
/// on its standard output, where a test finds it (possibly in the middle of
/// a line of the serial console's, which shares that output).
const CONSOLE_TEXT: &[u8] = b"LG_HOSTILE_HVC_TRANSMIT\n";
/// A virtio_net_hdr_v1's size: what precedes each frame on a network
/// card's queues once VIRTIO_F_VERSION_1 is negotiated.
const NET_HEADER: usize = 12;
/// How long a device gets to react to a kick.
const REACTION: Duration = Duration::from_secs(2);

/// What kind of device, for the requests only it understands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Net,
    Blk,
    Console,
    Rng,
    Other(u16),
}

impl Kind {
    fn from_id(id: u16) -> Kind {
        match id {
            1 => Kind::Net,
            2 => Kind::Blk,
            3 => Kind::Console,
            4 => Kind::Rng,
            other => Kind::Other(other),
        }
    }

    fn name(self) -> String {
        match self {
            Kind::Net => "net".into(),
            Kind::Blk => "blk".into(),
            Kind::Console => "console".into(),
            Kind::Rng => "rng".into(),
            Kind::Other(id) => format!("virtio{id}"),
        }
    }

    /// The queue the attacks use: one the device serves whenever it is
    /// kicked (a console's receive queue waits for input, its transmit
    /// queue does not; likewise a network card's).
    fn queue(self) -> u16 {
        match self {
            Kind::Net | Kind::Console => 1,
            _ => 0,
        }
    }
}

fn fail(message: String) -> ! {
    eprintln!("lg-hostile: {message}");
    exit(1);
}

/// Pinned anonymous pages and their guest-physical addresses.
struct Dma {
    base: *mut u8,
    frames: Vec<u64>,
}

impl Dma {
    fn new(pages: usize) -> Dma {
        let len = pages * PAGE;
        // SAFETY: a fresh anonymous private mapping; nothing else uses it.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base as usize == MAP_FAILED {
            fail(format!("cannot map {len} bytes for rings"));
        }
        // SAFETY: `base` is the start of the `len`-byte mapping above.
        if unsafe { mlock(base, len) } != 0 {
            fail(format!(
                "cannot lock the rings in memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Touch every page so each has a frame (mlock faults them in, but a
        // write makes sure they are not the shared zero page).
        for page in 0..pages {
            // SAFETY: inside the mapping.
            unsafe { base.add(page * PAGE).write_volatile(0) };
        }
        let pagemap = File::open("/proc/self/pagemap")
            .unwrap_or_else(|e| fail(format!("cannot open /proc/self/pagemap: {e}")));
        let frames = (0..pages)
            .map(|page| {
                let va = base as u64 + (page * PAGE) as u64;
                let mut entry = [0u8; 8];
                pagemap
                    .read_exact_at(&mut entry, va / PAGE as u64 * 8)
                    .unwrap_or_else(|e| fail(format!("cannot read /proc/self/pagemap: {e}")));
                let entry = u64::from_le_bytes(entry);
                let frame = entry & ((1 << 55) - 1);
                if entry >> 63 == 0 || frame == 0 {
                    fail(
                        "/proc/self/pagemap shows no frame numbers (run lg-hostile as root)".into(),
                    );
                }
                frame * PAGE as u64
            })
            .collect();
        Dma { base, frames }
    }

    /// Guest-physical address of byte `offset` of page `page`.
    fn phys(&self, page: usize, offset: usize) -> u64 {
        self.frames[page] + offset as u64
    }

    fn clear(&self) {
        // SAFETY: the whole mapping, writable, used by this thread only.
        unsafe { std::ptr::write_bytes(self.base, 0, self.frames.len() * PAGE) };
    }

    fn write<T: Copy>(&self, page: usize, offset: usize, value: T) {
        assert!(page < self.frames.len() && offset + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: checked just above to lie inside the mapping, which is
        // page-aligned, and every field written here sits at a multiple of
        // its size; volatile, since the device reads it behind the
        // compiler's back.
        unsafe { std::ptr::write_volatile(self.base.add(page * PAGE + offset) as *mut T, value) };
    }

    fn read<T: Copy>(&self, page: usize, offset: usize) -> T {
        assert!(page < self.frames.len() && offset + std::mem::size_of::<T>() <= PAGE);
        // SAFETY: as for `write`; the device writes the used ring behind
        // the compiler's back, so the read must really happen.
        unsafe { std::ptr::read_volatile(self.base.add(page * PAGE + offset) as *const T) }
    }
}

// Where the rings and buffers live in the pinned pages.
const DESC_PAGE: usize = 0;
const AVAIL_PAGE: usize = 1;
const USED_PAGE: usize = 2;
const DATA_PAGE: usize = 3;
/// A network card's receive queue: lg starts a card only with both of its
/// queues, so this one is set up, valid and empty, beside the attacked one.
const RX_DESC_PAGE: usize = 4;
const RX_AVAIL_PAGE: usize = 5;
const RX_USED_PAGE: usize = 6;
const PAGES: usize = 7;

/// A queue's three areas, as written to the device.
#[derive(Clone, Copy)]
struct Rings {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// The device's BAR, mapped.
struct Bar {
    base: *mut u8,
    len: usize,
}

impl Bar {
    fn check(&self, offset: usize, width: usize) {
        assert!(offset + width <= self.len, "BAR access at {offset:#x}");
    }

    fn read8(&self, offset: usize) -> u8 {
        self.check(offset, 1);
        // SAFETY: inside the mapping (checked); a device register.
        unsafe { std::ptr::read_volatile(self.base.add(offset)) }
    }

    fn read16(&self, offset: usize) -> u16 {
        self.check(offset, 2);
        // SAFETY: inside the mapping (checked) and aligned as the register is.
        unsafe { std::ptr::read_volatile(self.base.add(offset) as *const u16) }
    }

    fn write8(&self, offset: usize, value: u8) {
        self.check(offset, 1);
        fence(Ordering::SeqCst);
        // SAFETY: inside the mapping (checked); a device register.
        unsafe { std::ptr::write_volatile(self.base.add(offset), value) }
    }

    fn write16(&self, offset: usize, value: u16) {
        self.check(offset, 2);
        fence(Ordering::SeqCst);
        // SAFETY: inside the mapping (checked) and aligned as the register is.
        unsafe { std::ptr::write_volatile(self.base.add(offset) as *mut u16, value) }
    }

    fn write32(&self, offset: usize, value: u32) {
        self.check(offset, 4);
        fence(Ordering::SeqCst);
        // SAFETY: inside the mapping (checked) and aligned as the register is.
        unsafe { std::ptr::write_volatile(self.base.add(offset) as *mut u32, value) }
    }

    /// A 64-bit register as two 32-bit halves, as Linux writes them.
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// One virtio PCI function, taken from its driver.
struct Device {
    kind: Kind,
    bar: Bar,
    common: usize,
    notify: usize,
    notify_len: usize,
    notify_multiplier: usize,
}

impl Device {
    /// Unbinds `addr`'s driver, enables it and maps its virtio structures.
    fn take(addr: &str) -> Device {
        let dir = format!("/sys/bus/pci/devices/{addr}");
        let read = |name: &str| {
            fs::read_to_string(format!("{dir}/{name}"))
                .unwrap_or_else(|e| fail(format!("cannot read {dir}/{name}: {e}")))
        };
        if read("vendor").trim() != VIRTIO_VENDOR {
            fail(format!("{addr} is not a virtio device"));
        }
        let device =
            u16::from_str_radix(read("device").trim().trim_start_matches("0x"), 16).unwrap_or(0);
        if device < MODERN_DEVICE_BASE {
            fail(format!(
                "{addr} is not a modern virtio device (device id {device:#x})"
            ));
        }
        let kind = Kind::from_id(device - MODERN_DEVICE_BASE);
        if fs::metadata(format!("{dir}/driver")).is_ok() {
            fs::write(format!("{dir}/driver/unbind"), addr)
                .unwrap_or_else(|e| fail(format!("cannot unbind {addr}'s driver: {e}")));
        }
        fs::write(format!("{dir}/enable"), "1")
            .unwrap_or_else(|e| fail(format!("cannot enable {addr}: {e}")));
        let config_path = format!("{dir}/config");
        let config = fs::read(&config_path)
            .unwrap_or_else(|e| fail(format!("cannot read {config_path}: {e}")));
        if config.len() < 64 {
            fail(format!("{config_path} is shorter than a PCI header"));
        }
        // Bus mastering, which `enable` leaves off: the device must be
        // allowed to reach memory, as a driver would allow it.
        let command = u16::from_le_bytes([config[4], config[5]]) | COMMAND_BUS_MASTER;
        OpenOptions::new()
            .write(true)
            .open(&config_path)
            .and_then(|f| f.write_all_at(&command.to_le_bytes(), 4))
            .unwrap_or_else(|e| {
                fail(format!(
                    "cannot turn on bus mastering in {config_path}: {e}"
                ))
            });
        let caps = virtio_caps(&config).unwrap_or_else(|why| fail(format!("{addr}: {why}")));
        let [common, notify, device_cfg] = [CAP_COMMON, CAP_NOTIFY, CAP_DEVICE].map(|t| {
            caps.iter()
                .find(|c| c.cfg_type == t)
                .copied()
                .unwrap_or_else(|| fail(format!("{addr} has no virtio capability of type {t}")))
        });
        if common.bar != notify.bar || common.bar != device_cfg.bar {
            fail(format!("{addr} spreads its structures over several BARs"));
        }
        let resource = format!("{dir}/resource{}", common.bar);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&resource)
            .unwrap_or_else(|e| fail(format!("cannot open {resource}: {e}")));
        let len = file
            .metadata()
            .unwrap_or_else(|e| fail(format!("cannot size {resource}: {e}")))
            .len() as usize;
        for cap in [common, notify, device_cfg] {
            if cap.offset as usize + cap.length as usize > len {
                fail(format!(
                    "{addr}: a capability points past the end of {resource} ({len} bytes)"
                ));
            }
        }
        if (common.length as usize) < COMMON_LEN {
            fail(format!("{addr}: the common configuration is too short"));
        }
        // SAFETY: a shared mapping of the BAR's resource file, as long as
        // the file; it stays mapped for the life of the program.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base as usize == MAP_FAILED {
            fail(format!(
                "cannot map {resource}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Device {
            kind,
            bar: Bar { base, len },
            common: common.offset as usize,
            notify: notify.offset as usize,
            notify_len: notify.length as usize,
            notify_multiplier: notify.multiplier as usize,
        }
    }

    fn status(&self) -> u8 {
        self.bar.read8(self.common + DEVICE_STATUS)
    }

    fn set_status(&self, status: u8) {
        self.bar.write8(self.common + DEVICE_STATUS, status);
    }

    fn num_queues(&self) -> u16 {
        self.bar.read16(self.common + NUM_QUEUES)
    }

    fn reset(&self) {
        self.set_status(0);
        let start = Instant::now();
        while self.status() != 0 {
            if start.elapsed() > REACTION {
                fail(format!("the {} device does not reset", self.kind.name()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, VERSION_1 only, FEATURES_OK.
    fn negotiate(&self) -> u8 {
        self.reset();
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        self.bar.write32(self.common + DRIVER_FEATURE_SELECT, 0);
        self.bar.write32(self.common + DRIVER_FEATURE, 0);
        self.bar.write32(self.common + DRIVER_FEATURE_SELECT, 1);
        self.bar
            .write32(self.common + DRIVER_FEATURE, VERSION_1_HIGH);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status()
    }

    /// Programs queue `queue` with `rings` and enables it.
    fn program_queue(&self, queue: u16, rings: Rings) {
        let c = self.common;
        self.bar.write16(c + QUEUE_SELECT, queue);
        self.bar.write16(c + QUEUE_SIZE, rings.size);
        self.bar.write64(c + QUEUE_DESC, rings.desc);
        self.bar.write64(c + QUEUE_DRIVER, rings.avail);
        self.bar.write64(c + QUEUE_DEVICE, rings.used);
        self.bar.write16(c + QUEUE_MSIX_VECTOR, NO_VECTOR);
        self.bar.write16(c + QUEUE_ENABLE, 1);
    }

    /// The whole handshake with the attacked queue (and `quiet`, the other
    /// queues the device needs to start, if any); returns the status after
    /// DRIVER_OK.
    fn start(&self, rings: Rings, quiet: &[(u16, Rings)]) -> u8 {
        self.negotiate();
        self.go(rings, quiet)
    }

    /// After FEATURES_OK: programs the queues as `start` does and sets
    /// DRIVER_OK; returns the status then.
    fn go(&self, rings: Rings, quiet: &[(u16, Rings)]) -> u8 {
        for (queue, rings) in quiet {
            self.program_queue(*queue, *rings);
        }
        self.program_queue(self.kind.queue(), rings);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.status()
    }

    /// Rings the doorbell of queue `queue`, wherever its notify offset says.
    fn notify(&self, queue: u16) {
        self.bar.write16(self.common + QUEUE_SELECT, queue);
        let off = usize::from(self.bar.read16(self.common + QUEUE_NOTIFY_OFF));
        let at = off * self.notify_multiplier;
        if at + 2 > self.notify_len {
            fail(format!(
                "the {} device puts queue {queue}'s doorbell outside its notify area",
                self.kind.name()
            ));
        }
        self.bar.write16(self.notify + at, queue);
    }
}

#[derive(Clone, Copy)]
struct VirtioCap {
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
    multiplier: u32,
}

/// The virtio capabilities in a function's configuration space.
fn virtio_caps(config: &[u8]) -> Result<Vec<VirtioCap>, String> {
    let byte = |at: usize| config.get(at).copied().ok_or("config space is short");
    let dword = |at: usize| -> Result<u32, String> {
        let bytes = config.get(at..at + 4).ok_or("config space is short")?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4])))
    };
    let mut caps = Vec::new();
    let mut at = usize::from(byte(0x34)?) & !3;
    // At most 48 capabilities fit in 192 bytes: more means a loop.
    for _ in 0..48 {
        if at == 0 {
            return Ok(caps);
        }
        if byte(at)? == PCI_CAP_VENDOR {
            caps.push(VirtioCap {
                cfg_type: byte(at + 3)?,
                bar: byte(at + 4)?,
                offset: dword(at + 8)?,
                length: dword(at + 12)?,
                multiplier: if byte(at + 3)? == CAP_NOTIFY {
                    dword(at + 16)?
                } else {
                    0
                },
            });
        }
        at = usize::from(byte(at + 1)?) & !3;
    }
    Err("its capability list loops".into())
}

/// The PCI address of the first virtio function whose device id is `id`.
fn find_by_id(id: u16) -> Option<String> {
    let mut addrs: Vec<String> = fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string()))
        .collect();
    addrs.sort();
    addrs.into_iter().find(|addr| {
        let read = |name: &str| {
            fs::read_to_string(format!("/sys/bus/pci/devices/{addr}/{name}")).unwrap_or_default()
        };
        read("vendor").trim() == VIRTIO_VENDOR
            && read("device").trim() == format!("{:#06x}", MODERN_DEVICE_BASE + id)
    })
}

/// A device named on the command line: a PCI address, a name or an id.
fn resolve(word: &str) -> String {
    if word.contains(':') {
        return word.to_string();
    }
    let id = match word {
        "net" => 1,
        "blk" => 2,
        "console" => 3,
        "rng" => 4,
        _ => word.parse().unwrap_or_else(|_| {
            fail(format!(
                "`{word}` is not a PCI address, a virtio device id or one of net, blk, console, rng"
            ))
        }),
    };
    find_by_id(id).unwrap_or_else(|| fail(format!("there is no virtio device `{word}` (id {id})")))
}

/// One attacker: a device and the pinned memory its rings live in.
struct Attacker<'a> {
    dev: &'a Device,
    dma: &'a Dma,
}

impl Attacker<'_> {
    /// Rings in the pinned pages, of size `size`.
    fn rings(&self, size: u16) -> Rings {
        Rings {
            size,
            desc: self.dma.phys(DESC_PAGE, 0),
            avail: self.dma.phys(AVAIL_PAGE, 0),
            used: self.dma.phys(USED_PAGE, 0),
        }
    }

    /// The queues besides the attacked one that the device needs before it
    /// starts, each with valid, empty rings.
    fn quiet_queues(&self) -> Vec<(u16, Rings)> {
        match self.dev.kind {
            Kind::Net => vec![(
                0,
                Rings {
                    size: QUEUE,
                    desc: self.dma.phys(RX_DESC_PAGE, 0),
                    avail: self.dma.phys(RX_AVAIL_PAGE, 0),
                    used: self.dma.phys(RX_USED_PAGE, 0),
                },
            )],
            _ => Vec::new(),
        }
    }

    /// Starts the device with `rings` on the attacked queue.
    fn start(&self, rings: Rings) -> u8 {
        self.dev.start(rings, &self.quiet_queues())
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = usize::from(i) * 16;
        self.dma.write(DESC_PAGE, at, addr);
        self.dma.write(DESC_PAGE, at + 8, len);
        self.dma.write(DESC_PAGE, at + 12, flags);
        self.dma.write(DESC_PAGE, at + 14, next);
    }

    /// Offers `heads` (then sets avail.idx to `idx`), and kicks.
    fn offer(&self, heads: &[u16], idx: u16) {
        self.dma.write(AVAIL_PAGE, 0, AVAIL_NO_INTERRUPT);
        for (slot, head) in heads.iter().enumerate() {
            self.dma.write(AVAIL_PAGE, 4 + 2 * slot, *head);
        }
        fence(Ordering::SeqCst);
        self.dma.write(AVAIL_PAGE, 2, idx);
        fence(Ordering::SeqCst);
        self.dev.notify(self.dev.kind.queue());
    }

    fn used_idx(&self) -> u16 {
        self.dma.read(USED_PAGE, 2)
    }

    /// Waits until the device marks itself broken or uses `used` buffers,
    /// or REACTION passes; returns the status.
    fn wait(&self, used: u16) -> u8 {
        let start = Instant::now();
        loop {
            let status = self.dev.status();
            if status & DEVICE_NEEDS_RESET != 0
                || (used > 0 && self.used_idx() >= used)
                || start.elapsed() > REACTION
            {
                return status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A request the device must serve, in descriptors from 0, made
    /// available and kicked; returns what the device did with it.
    fn good_request(&self) -> String {
        let data = self.dma.phys(DATA_PAGE, 0);
        match self.dev.kind {
            Kind::Blk => {
                // VIRTIO_BLK_T_IN of sector 0: header, 512 bytes, status.
                self.dma.write(DATA_PAGE, 0, 0u32);
                self.dma.write(DATA_PAGE, 4, 0u32);
                self.dma.write(DATA_PAGE, 8, 0u64);
                self.dma.write(DATA_PAGE, 1024, 0xffu8);
                self.desc(0, data, 16, DESC_NEXT, 1);
                self.desc(1, data + 512, 512, DESC_WRITE | DESC_NEXT, 2);
                self.desc(2, data + 1024, 1, DESC_WRITE, 0);
            }
            Kind::Console => {
                for (i, b) in CONSOLE_TEXT.iter().enumerate() {
                    self.dma.write(DATA_PAGE, i, *b);
                }
                self.desc(0, data, CONSOLE_TEXT.len() as u32, 0, 0);
            }
            Kind::Net => {
                // A virtio_net_hdr_v1 of zeros (no offloads: the page was
                // cleared), then a broadcast frame of the local
                // experimental ethertype, which the host ignores.
                let frame: [u8; 14] = [
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5,
                ];
                for (i, b) in frame.iter().chain(CONSOLE_TEXT).enumerate() {
                    self.dma.write(DATA_PAGE, NET_HEADER + i, *b);
                }
                let len = NET_HEADER + frame.len() + CONSOLE_TEXT.len();
                self.desc(0, data, len as u32, 0, 0);
            }
            Kind::Rng | Kind::Other(_) => self.desc(0, data, 64, DESC_WRITE, 0),
        }
        self.offer(&[0], 1);
        let status = self.wait(1);
        let used = self.used_idx();
        let mut line = format!("status={status:#04x} used={used}");
        if used >= 1 {
            let len: u32 = self.dma.read(USED_PAGE, 8);
            line.push_str(&format!(" len={len}"));
            if self.dev.kind == Kind::Blk {
                let blk: u8 = self.dma.read(DATA_PAGE, 1024);
                line.push_str(&format!(" blk-status={blk}"));
            }
        }
        line
    }

    /// A chain of descriptors made available and kicked; the status after.
    fn bad_chain(&self, write: impl Fn(&Self), heads: &[u16], idx: u16) -> String {
        let status = self.start(self.rings(QUEUE));
        if status & DEVICE_NEEDS_RESET != 0 {
            return format!("status={status:#04x} (broken before the attack)");
        }
        write(self);
        self.offer(heads, idx);
        let status = self.wait(0);
        format!("status={status:#04x} used={}", self.used_idx())
    }

    fn run(&self, attack: &str) -> String {
        self.dma.clear();
        let line = match attack {
            "good-request" => {
                let status = self.start(self.rings(QUEUE));
                if status & DEVICE_NEEDS_RESET != 0 {
                    format!("status={status:#04x} (broken at DRIVER_OK)")
                } else {
                    self.good_request()
                }
            }
            "ring-outside-ram" => {
                let mut rings = self.rings(QUEUE);
                rings.desc = OUTSIDE_RAM;
                self.start_and_wait(rings)
            }
            "used-ring-outside-ram" => {
                let mut rings = self.rings(QUEUE);
                rings.used = OUTSIDE_RAM;
                self.start_and_wait(rings)
            }
            "ring-wraps" => {
                // Aligned, but 1 KiB of table from here wraps past 2^64.
                let mut rings = self.rings(QUEUE);
                rings.desc = 0u64.wrapping_sub(0x100);
                self.start_and_wait(rings)
            }
            "queue-size-not-power-of-two" => self.start_and_wait(self.rings(3)),
            "queue-size-too-big" => {
                self.dev.reset();
                self.dev
                    .bar
                    .write16(self.dev.common + QUEUE_SELECT, self.dev.kind.queue());
                let max = self.dev.bar.read16(self.dev.common + QUEUE_SIZE);
                self.start_and_wait(self.rings(max.saturating_mul(2).max(2)))
            }
            "desc-outside-ram" => self.bad_chain(|a| a.desc(0, OUTSIDE_RAM, 512, 0, 0), &[0], 1),
            "desc-loop" => self.bad_chain(
                |a| {
                    let data = a.dma.phys(DATA_PAGE, 0);
                    a.desc(0, data, 16, DESC_NEXT, 1);
                    a.desc(1, data, 16, DESC_NEXT, 0);
                },
                &[0],
                1,
            ),
            "desc-next-out-of-range" => self.bad_chain(
                |a| a.desc(0, a.dma.phys(DATA_PAGE, 0), 16, DESC_NEXT, 1000),
                &[0],
                1,
            ),
            "addr-len-wraps" => self.bad_chain(
                |a| a.desc(0, 0u64.wrapping_sub(0x1000), 0x2000, 0, 0),
                &[0],
                1,
            ),
            "huge-chain-length" => self.bad_chain(
                // 33 buffers of 128 MiB, all inside the guest's RAM (from
                // 1 MiB, so RAM must be at least 130 MiB), add up past
                // 2^32. Device-readable, so a device that missed it could
                // at worst read the guest's memory, never write it.
                |a| {
                    for i in 0..33u16 {
                        let flags = if i < 32 { DESC_NEXT } else { 0 };
                        a.desc(i, 1 << 20, 128 << 20, flags, i + 1);
                    }
                },
                &[0],
                1,
            ),
            "avail-idx-jump" => self.bad_chain(|_| {}, &[], QUEUE + 10),
            "avail-head-out-of-range" => self.bad_chain(|_| {}, &[QUEUE + 100], 1),
            "notify-missing-queue" => {
                let status = self.start(self.rings(QUEUE));
                if status & DEVICE_NEEDS_RESET != 0 {
                    format!("status={status:#04x} (broken at DRIVER_OK)")
                } else {
                    // The doorbell just past the last queue's (if the BAR
                    // has room), and the last word of the BAR.
                    let missing = usize::from(self.dev.num_queues()) * self.dev.notify_multiplier;
                    let past = self.dev.notify + missing;
                    if past + 2 <= self.dev.bar.len {
                        self.dev.bar.write16(past, self.dev.num_queues());
                    }
                    self.dev.bar.write16(self.dev.bar.len - 2, 0xffff);
                    self.good_request()
                }
            }
            "queue-select-beyond" => {
                self.dev.negotiate();
                let c = self.dev.common;
                let mut sizes = Vec::new();
                for select in [self.dev.num_queues(), self.dev.num_queues() + 5, 0xffff] {
                    self.dev.program_queue(
                        select,
                        Rings {
                            size: 3,
                            desc: OUTSIDE_RAM,
                            avail: OUTSIDE_RAM,
                            used: OUTSIDE_RAM,
                        },
                    );
                    sizes.push(self.dev.bar.read16(c + QUEUE_SIZE));
                }
                let status = self.dev.go(self.rings(QUEUE), &self.quiet_queues());
                let sizes: Vec<String> = sizes.iter().map(u16::to_string).collect();
                if status & DEVICE_NEEDS_RESET != 0 {
                    format!("status={status:#04x} sizes={}", sizes.join(","))
                } else {
                    format!("{} sizes={}", self.good_request(), sizes.join(","))
                }
            }
            "driver-ok-without-features-ok" => {
                self.dev.reset();
                self.dev.set_status(ACKNOWLEDGE);
                self.dev.set_status(ACKNOWLEDGE | DRIVER);
                self.dev
                    .program_queue(self.dev.kind.queue(), self.rings(QUEUE));
                self.dev.set_status(ACKNOWLEDGE | DRIVER | DRIVER_OK);
                let status = self.dev.status();
                format!("status={status:#04x}")
            }
            _ => unreachable!("unknown attack {attack}"),
        };
        self.dev.reset();
        line
    }

    fn start_and_wait(&self, rings: Rings) -> String {
        self.start(rings);
        format!("status={:#04x}", self.wait(0))
    }
}

/// The attacks, in order; the good request comes first and last.
const ATTACKS: [&str; 17] = [
    "good-request",
    "ring-outside-ram",
    "used-ring-outside-ram",
    "ring-wraps",
    "queue-size-not-power-of-two",
    "queue-size-too-big",
    "desc-outside-ram",
    "desc-loop",
    "desc-next-out-of-range",
    "addr-len-wraps",
    "huge-chain-length",
    "avail-idx-jump",
    "avail-head-out-of-range",
    "notify-missing-queue",
    "queue-select-beyond",
    "driver-ok-without-features-ok",
    "good-request",
];

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        eprintln!(
            "usage: lg-hostile DEVICE... (a PCI address, net, blk, console, rng or a virtio id)"
        );
        exit(2);
    }
    let dma = Dma::new(PAGES);
    for word in &words {
        let addr = resolve(word);
        let dev = Device::take(&addr);
        let name = dev.kind.name();
        println!("LG_HOSTILE_DEVICE {name} {addr}");
        let attacker = Attacker {
            dev: &dev,
            dma: &dma,
        };
        for attack in ATTACKS {
            println!("LG_HOSTILE {name} {attack} {}", attacker.run(attack));
        }
    }
    println!("LG_HOSTILE_DONE");
}
