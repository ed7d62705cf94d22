//! The running guest's side of `lg ps`, `lg stop`, `lg regs` and friends:
//! the answers lg gives on its control socket (the protocol and the socket
//! itself are the `lg-control` crate's).
//!
//! Every answer is computed on the control thread from shared state: the
//! vCPUs' registers through [`VcpuControl`] (which briefly kicks a vCPU out
//! of `KVM_RUN` to read them), the page tables by walking guest memory with
//! `shadow-mmu` (live: the guest may be changing them as they are read,
//! which is why `lg pause` exists), and the counters the vCPU and device
//! threads keep. Nothing here can block a vCPU for longer than a register
//! read.
//!
//! `lg gdb NAME` is the exception to "one request, one answer": its `gdb`
//! request turns the connection into gdb's remote protocol, served by the
//! `gdb-stub` crate on a thread of its own (`gdb`), so the control thread
//! goes on answering `lg ps` and friends while gdb is attached.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gdb_stub::Debugger;
use lg_control::{GuestInfo, Handler, Request, Response, StreamHandler, StreamSink};
use shadow_mmu::pagetable::{self, MergeRule, PagingMode};
use shadow_mmu::GuestMemory;
use switcher::{ExitStats, Registers, VcpuControl};
use virtio_net::NetStats;

/// The most page-table lines one `dump-pagetables` answer holds: enough
/// for any real kernel's tables merged into ranges, small enough that a
/// hostile guest's tables cannot make lg build a gigabyte of text.
const MAX_RANGES: usize = 100_000;

/// What the control thread can see of the running guest.
pub(crate) struct Inspectable {
    pub info: GuestInfo,
    pub vcpus: Arc<VcpuControl>,
    pub memory: Arc<GuestMemory>,
    pub exits: Arc<[ExitStats]>,
    /// Each network card's tap name and counters.
    pub nics: Vec<(String, Arc<NetStats>)>,
    /// Presses the guest's ACPI power button.
    pub press_power_button: Box<dyn Fn() + Send + Sync>,
    /// Ends lg at once (`lg stop --force`); does not return.
    pub force_stop: Box<dyn Fn() + Send + Sync>,
    /// gdb's way in (`lg gdb NAME`); while gdb is attached, it alone
    /// pauses and resumes the guest.
    pub debugger: Arc<Debugger>,
}

/// The control socket's handler for this guest.
pub(crate) fn handler(guest: Inspectable) -> Handler {
    Arc::new(move |request| {
        if let Err(sentence) = narrow_control_thread() {
            return Response::Error(sentence);
        }
        match answer(&guest, request) {
            Ok(body) => Response::Ok(body),
            Err(sentence) => Response::Error(sentence),
        }
    })
}

/// Puts the control thread under its seccomp role at its first request:
/// it starts before lg is confined, and a role filter cannot be put on a
/// thread before the process-wide one (see `seccomp::confine_thread`,
/// which does nothing then, and nothing the second time).
fn narrow_control_thread() -> Result<(), String> {
    crate::seccomp::confine_thread(crate::seccomp::Role::Control)
}

/// The control socket's handler for `gdb`: claims the guest for this gdb
/// (refused if another is attached) and serves it on a thread of its own.
pub(crate) fn stream_handler(debugger: Arc<Debugger>) -> StreamHandler {
    Arc::new(move |request| {
        narrow_control_thread()?;
        if request != Request::Gdb {
            return Err(format!(
                "lg cannot serve `{}` as a stream",
                request.to_line()
            ));
        }
        let session = debugger.attach()?;
        Ok(Box::new(move |stream| {
            let spawned = std::thread::Builder::new()
                .name("gdb".into())
                .spawn(move || session.serve(stream));
            if let Err(e) = spawned {
                log::warn!("cannot start a thread for gdb: {e}");
            }
        }) as StreamSink)
    })
}

/// `lg pause` and `lg resume` would pull the guest from under gdb's feet.
fn not_under_gdb(guest: &Inspectable, what: &str) -> Result<(), String> {
    if guest.debugger.is_attached() {
        return Err(format!(
            "gdb is attached to {}; it decides when the guest runs (detach it to {what})",
            guest.info.name
        ));
    }
    Ok(())
}

fn answer(guest: &Inspectable, request: Request) -> Result<String, String> {
    match request {
        Request::Info => {
            let mut info = guest.info.clone();
            info.state = if guest.vcpus.is_paused() {
                "paused"
            } else {
                "running"
            }
            .into();
            Ok(info.to_body())
        }
        Request::Stop { force: false } => {
            (guest.press_power_button)();
            Ok(String::new())
        }
        Request::Stop { force: true } => {
            (guest.force_stop)();
            Ok(String::new())
        }
        Request::Pause => {
            not_under_gdb(guest, "pause it")?;
            guest.vcpus.pause().map(|()| String::new())
        }
        Request::Resume => {
            not_under_gdb(guest, "resume it")?;
            guest.vcpus.resume();
            Ok(String::new())
        }
        Request::Regs { cpu } => {
            let registers = registers(guest, cpu)?;
            Ok(switcher::format_registers(
                &registers.regs,
                &registers.sregs,
            ))
        }
        Request::DumpPageTables { cpu, cr3, range } => {
            let mode = paging_mode(guest, cpu, cr3)?;
            Ok(dump_page_tables(&guest.memory, &mode, range))
        }
        Request::Translate { cpu, cr3, virt } => {
            let mode = paging_mode(guest, cpu, cr3)?;
            let translation = pagetable::translate(&guest.memory, &mode, virt);
            let mut out = format!("{translation}\n");
            if let Ok((phys, _, _)) = translation.result {
                out.push_str(&bytes_at(&guest.memory, phys));
            }
            Ok(out)
        }
        Request::Stat => Ok(statistics(guest)),
        // The control socket hands `gdb` to `stream_handler`, never here.
        Request::Gdb => Err("`gdb` opens a stream; lg gdb NAME sends it".into()),
    }
}

fn registers(guest: &Inspectable, cpu: u32) -> Result<Registers, String> {
    let index = usize::try_from(cpu).map_err(|_| format!("there is no vCPU {cpu}"))?;
    guest.vcpus.registers(index)
}

/// The paging mode of vCPU `cpu`, with its CR3 replaced by `cr3` if given.
fn paging_mode(guest: &Inspectable, cpu: u32, cr3: Option<u64>) -> Result<PagingMode, String> {
    let sregs = registers(guest, cpu)?.sregs;
    let mut mode = PagingMode::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
        .map_err(|e| format!("vCPU {cpu} has no page tables to walk: {e}"))?;
    if let Some(cr3) = cr3 {
        mode.cr3 = cr3;
    }
    Ok(mode)
}

/// The mappings under `mode`'s CR3, merged into ranges, one per line, in
/// the spirit of the kernel's `/sys/kernel/debug/page_tables/kernel`.
fn dump_page_tables(memory: &GuestMemory, mode: &PagingMode, range: Option<(u64, u64)>) -> String {
    let (start, end) = range.unwrap_or((0, u64::MAX));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CR3 {:#x}, {}-level paging{}",
        mode.root(),
        mode.levels(),
        if mode.nxe { ", NX enabled" } else { "" }
    );
    let mut walk = pagetable::mappings(memory, mode, start, end);
    let ranges = pagetable::merged_ranges(walk.by_ref(), MergeRule::Virtual);
    for (shown, range) in ranges.enumerate() {
        if shown == MAX_RANGES {
            let _ = writeln!(out, "... (stopped after {MAX_RANGES} ranges)");
            break;
        }
        let _ = writeln!(out, "{range}");
    }
    if walk.truncated() {
        let _ = writeln!(
            out,
            "... (stopped after reading {} tables: the guest's tables are larger than lg will walk)",
            walk.tables_read()
        );
    }
    let bad = walk.bad_entry_count();
    if bad > 0 {
        let _ = writeln!(out, "{bad} entries point outside guest RAM; the first:");
        for entry in walk.bad_entries() {
            let _ = writeln!(out, "  {entry}");
        }
    }
    out
}

/// How many bytes `lg translate` shows from where an address lands.
const BYTES_SHOWN: u64 = 16;

/// The first bytes at guest-physical `phys`, as `lg translate` shows them
/// (hex and printable ASCII, like `xxd`), or why they cannot be read.
fn bytes_at(memory: &GuestMemory, phys: u64) -> String {
    let mut bytes = [0u8; BYTES_SHOWN as usize];
    match memory.read(shadow_mmu::GuestAddress(phys), &mut bytes) {
        Ok(()) => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{phys:#x}: {}  |{text}|\n", hex.join(" "))
        }
        Err(_) => format!("{phys:#x}: not guest RAM (a device's memory, or past the end)\n"),
    }
}

/// Every counter, as `key=value` lines a person can read and a script can
/// parse: exits per vCPU by reason, then packets per network card.
fn statistics(guest: &Inspectable) -> String {
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let mut out = String::new();
    for (index, exits) in guest.exits.iter().enumerate() {
        let counts = [
            ("io_in", load(&exits.port_in)),
            ("io_out", load(&exits.port_out)),
            ("mmio_read", load(&exits.mmio_read)),
            ("mmio_write", load(&exits.mmio_write)),
            ("halt", load(&exits.halt)),
            ("interrupted", load(&exits.interrupted)),
            ("debug", load(&exits.debug)),
            ("other", load(&exits.other)),
        ];
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "vcpu{index}.exits={total}");
        for (reason, count) in counts {
            let _ = writeln!(out, "vcpu{index}.exits.{reason}={count}");
        }
    }
    for (name, stats) in &guest.nics {
        for (what, counter) in [
            ("rx_packets", &stats.rx_packets),
            ("rx_bytes", &stats.rx_bytes),
            ("rx_dropped", &stats.rx_dropped),
            ("tx_packets", &stats.tx_packets),
            ("tx_bytes", &stats.tx_bytes),
            ("tx_dropped", &stats.tx_dropped),
        ] {
            let _ = writeln!(out, "{name}.{what}={}", load(counter));
        }
    }
    out
}
