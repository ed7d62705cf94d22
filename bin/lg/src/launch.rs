//! `lg run`: from a kernel file to a running guest, and back to an exit
//! status.
//!
//! The order matters for the person at the keyboard. Everything that can be
//! wrong with their input (the memory size, the kernel, the initrd, the
//! command line) is checked first, while the guest is loaded into its
//! memory, so those mistakes get their one-sentence answer on any machine.
//! Only then does lg say whether this host can run a guest at all, and why
//! the VM or the vCPUs could not be made. (They are made meanwhile, on a
//! thread of their own, while the kernel is read into guest RAM, since each
//! costs start-up time the other need not wait for; see
//! [`MachineInProgress`]. Their complaints wait for their turn.) gdb's port
//! (`--gdb`) is taken before any guest instruction runs, so a port in use
//! is refused first; with `--gdb-wait` the vCPUs are paused before they
//! start, and the first gdb to attach (on the port or through `lg gdb
//! NAME`) lets them go.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bzimage_loader::{KernelImage, LoadOptions};
use gdb_stub::Debugger;
use hvc_console::{ConsoleInput, InterruptLine, VirtioConsole};
use lg_control::{ControlSocket, GuestInfo, ServingSocket};
use pci::{BarAllocator, PciBus};
use shadow_mmu::GuestMemory;
use switcher::irq::MsiRouting;
use switcher::{CoalescedRing, EntryState, ExitStats, GuestEnd, Vcpu, VcpuControl, Vm};
use virtio_blk::{BlockConfig, VirtioBlock};
use virtio_net::{NetStats, VirtioNet};
use virtio_pci::{TransportHooks, VirtioDevice, VirtioPciDevice};
use virtio_rng::VirtioRng;

use crate::cli::{self, Run, Tunnet};
use crate::hooks::{KvmHooks, KvmIntx};
use crate::inspect::{self, Inspectable};
use crate::network::{self, Nic};
use crate::platform::{CoalescingSwitch, IsaIrq, KvmCoalescing, Platform};
use crate::privileges::{self, Confinement};
use crate::terminal;

/// The guest powered off or rebooted.
pub const EXIT_GUEST_ENDED: u8 = 0;
/// lg refused to start.
pub const EXIT_REFUSED: u8 = 1;
/// The guest crashed or a vCPU failed.
pub const EXIT_GUEST_CRASHED: u8 = 2;
/// The user stopped lg.
pub const EXIT_STOPPED: u8 = 3;
/// The guest kernel panicked.
pub const EXIT_GUEST_PANICKED: u8 = 4;

/// Where the bytes typed at lg's terminal go: the console the guest uses.
type KeysSink = Box<dyn Fn(&[u8]) + Send>;

/// How long an attached gdb has to hear that the guest ended before lg
/// itself ends.
const GDB_FAREWELL: Duration = Duration::from_secs(1);

/// The smallest guest lg will try: below this no x86-64 kernel fits.
const MIN_MEMORY_MIB: u64 = 2;

const MIB: u64 = 1 << 20;

/// Runs a guest and returns lg's exit status.
pub fn run(args: Run) -> ExitCode {
    init_logging(args.verbose);
    crate::startup::step("command line");
    match prepare(&args) {
        Ok(_) if args.dry_run => {
            print!("{}", cli::describe(&args));
            ExitCode::SUCCESS
        }
        Ok(guest) => ExitCode::from(boot(guest)),
        Err(message) => {
            eprintln!("lg: {message}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_target(false)
        .try_init();
}

/// The running guest's control socket, kept where every way lg can end
/// (including `std::process::exit` from another thread) can remove it.
static CONTROL_SOCKET: OnceLock<ServingSocket> = OnceLock::new();

/// Puts back what lg changed outside itself: the terminal's mode, and the
/// control socket. Called on every way out.
pub(crate) fn tidy_up() {
    terminal::restore();
    if let Some(socket) = CONTROL_SOCKET.get() {
        socket.remove();
    }
}

/// A guest loaded into memory, not yet given to KVM.
struct PreparedGuest {
    memory: Arc<GuestMemory>,
    entry: EntryState,
    cpus: u8,
    console: ConsoleDevice,
    confinement: Confinement,
    /// The `--block` disks, open (and locked), in /dev/vda order.
    disks: Vec<VirtioBlock>,
    /// `--tunnet`: the network cards, whose taps are made at boot.
    tunnets: Vec<Tunnet>,
    /// What the cards' MACs are derived from (`network::guest_identity`).
    identity: String,
    /// What `lg ps` says of the guest (its tap names are added at boot).
    info: GuestInfo,
    /// Whether the user named the guest (`--name`): then a control socket
    /// is a must, since they mean to use the name.
    named: bool,
    /// `--rng`: a virtio entropy device.
    rng: bool,
    /// `--gdb=PORT`.
    gdb: Option<u16>,
    /// `--gdb-wait`: no guest instruction before gdb attaches.
    gdb_wait: bool,
    /// The VM being made meanwhile (none for `--dry-run`).
    machine: Option<MachineInProgress>,
}

/// The VM and its vCPUs, made on a thread of their own while the main
/// thread reads the kernel and initrd into guest RAM: neither needs the
/// other (KVM is given the RAM before anything is in it), and in the nested
/// test host each costs tens to hundreds of milliseconds. What the thread
/// finds wrong is told in the order a one-thread launch would meet it: the
/// host check before the taps and the control socket, the VM after them.
struct MachineInProgress {
    /// The host check's verdict, sent before the VM is made.
    host_checked: mpsc::Receiver<Result<(), String>>,
    /// The VM and its vCPUs (the boot CPU still at reset), or why not.
    made: std::thread::JoinHandle<Result<(Vm, Vec<Vcpu>), String>>,
}

impl MachineInProgress {
    /// Starts making a VM with `memory` and `cpus` vCPUs.
    fn start(memory: Arc<GuestMemory>, cpus: u8) -> Result<MachineInProgress, String> {
        let (verdict, host_checked) = mpsc::channel();
        let made = std::thread::Builder::new()
            .name("make-vm".into())
            .spawn(move || {
                if let Err(e) = switcher::check_host() {
                    let message = e.to_string();
                    let _ = verdict.send(Err(message.clone()));
                    return Err(message);
                }
                let _ = verdict.send(Ok(()));
                let vm = Vm::new(memory)
                    .map_err(|e| format!("cannot create the virtual machine: {e}"))?;
                let vcpus = vm
                    .create_vcpus_unstarted(usize::from(cpus))
                    .map_err(|e| format!("cannot create the vCPUs: {e}"))?;
                Ok((vm, vcpus))
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(MachineInProgress { host_checked, made })
    }

    /// Whether this host can run the guest, in one sentence if not.
    fn host_verdict(&self) -> Result<(), String> {
        // A thread that ended without a verdict panicked; `finish` says so.
        self.host_checked.recv().unwrap_or(Ok(()))
    }

    /// Waits for the VM, and puts the boot CPU at the kernel's entry.
    fn finish(self, entry: &EntryState) -> Result<(Vm, Vec<Vcpu>), String> {
        let (vm, vcpus) = self
            .made
            .join()
            .map_err(|_| "the thread making the virtual machine panicked".to_string())??;
        if let Some(boot_cpu) = vcpus.first() {
            boot_cpu
                .enter(entry)
                .map_err(|e| format!("cannot create the vCPUs: {e}"))?;
        }
        Ok((vm, vcpus))
    }
}

/// Checks the user's input by loading the guest into fresh memory.
fn prepare(args: &Run) -> Result<PreparedGuest, String> {
    let memory_mib = parse_memory(&args.memory)?;
    check_cpus(args.cpus, online_cpus())?;
    let name = match &args.name {
        Some(name) => {
            lg_control::check_name(name).map_err(|e| format!("--name={name}: {e}"))?;
            name.clone()
        }
        None => lg_control::default_name(std::process::id()),
    };
    // A disk that is not there is a typo to report before a device lg
    // lacks.
    let disks = open_disks(&args.block)?;
    let tunnets = cli::tunnets(args);
    network::check_bridges(&tunnets)?;
    let confinement = Confinement::check(args.chroot.as_deref(), args.username.as_deref())?;
    crate::startup::step("checks");
    let kernel_path = Path::new(&args.kernel);
    let kernel = KernelImage::open(kernel_path).map_err(|e| e.to_string())?;
    log::info!("kernel {}: {:?}", args.kernel, kernel.kind());
    crate::startup::step("kernel read");

    let memory = GuestMemory::new(memory_mib * MIB)
        .map(Arc::new)
        .map_err(|e| format!("cannot give the guest {memory_mib} MiB: {e}"))?;
    let machine = if args.dry_run {
        None
    } else {
        Some(MachineInProgress::start(Arc::clone(&memory), args.cpus)?)
    };
    crate::startup::step("RAM mapped and VM begun");
    let rsdp = acpi::write_tables(&memory, &acpi::AcpiConfig { vcpus: args.cpus })
        .map_err(|e| format!("cannot build the ACPI tables: {e}"))?;
    crate::startup::step("ACPI");
    let (cmdline, console) = kernel_command_line(&args.kernel_args, &tunnets);
    let options = LoadOptions {
        cmdline: &cmdline,
        initrd: args.initrd.as_deref().map(Path::new),
        acpi_rsdp: Some(rsdp),
    };
    let boot = bzimage_loader::load(&memory, &kernel, &options).map_err(|e| e.to_string())?;
    crate::startup::step("kernel and initrd loaded");
    log::info!(
        "guest: {memory_mib} MiB, {} vCPU(s), entry {}, zero page {}, command line {cmdline:?}",
        args.cpus,
        boot.entry,
        boot.boot_params
    );
    Ok(PreparedGuest {
        memory,
        entry: EntryState {
            entry: boot.entry,
            boot_params: boot.boot_params,
            page_table_root: boot.page_table_root,
        },
        cpus: args.cpus,
        console,
        confinement,
        disks,
        tunnets,
        identity: network::guest_identity(&args.kernel, &args.block, &cmdline),
        info: GuestInfo {
            name,
            pid: std::process::id(),
            memory_mib,
            vcpus: u32::from(args.cpus),
            started_unix_ms: 0,
            kernel: args.kernel.clone(),
            state: "running".into(),
            devices: cli::devices(args),
        },
        named: args.name.is_some(),
        rng: args.rng,
        gdb: args.gdb,
        gdb_wait: args.gdb_wait,
        machine,
    })
}

/// Opens each `--block=FILE[,ro][,direct]`, refusing the same file twice.
fn open_disks(values: &[String]) -> Result<Vec<VirtioBlock>, String> {
    let mut disks = Vec::new();
    let mut seen: Vec<(std::path::PathBuf, &str)> = Vec::new();
    for value in values {
        let config: BlockConfig = value.parse().map_err(|e| format!("--block={value}: {e}"))?;
        if let Ok(canonical) = std::fs::canonicalize(&config.path) {
            if let Some((_, first)) = seen.iter().find(|(path, _)| *path == canonical) {
                return Err(format!(
                    "--block={value}: the same file as --block={first}; a disk can be given once"
                ));
            }
            seen.push((canonical, value));
        }
        let disk = VirtioBlock::open(&config).map_err(|e| e.to_string())?;
        log::info!(
            "disk /dev/vd{}: {} ({} sectors{})",
            (b'a' + disks.len() as u8) as char,
            config.path.display(),
            disk.capacity_sectors(),
            if disk.read_only() { ", read-only" } else { "" }
        );
        disks.push(disk);
    }
    Ok(disks)
}

/// Which of the guest's consoles lg's terminal is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConsoleDevice {
    /// The 16550 UART, ttyS0.
    Serial,
    /// The virtio console, hvc0.
    Hvc,
}

/// The console lg names when the user names none: the UART, which every
/// x86 kernel can print to from its first instruction, before any module
/// (such as a distribution kernel's virtio_console) is loaded.
const DEFAULT_CONSOLE: &str = "console=ttyS0";

/// The kernel's command line from the user's words (plus `ip=` for a
/// `--tunnet=IP`, see `network`), and the console that lg's terminal types
/// into: the kernel's own `/dev/console` is the last `console=` given, so
/// that is the one a person is talking to.
pub(crate) fn kernel_command_line(words: &[String], tunnets: &[Tunnet]) -> (String, ConsoleDevice) {
    let last_console = words.iter().rev().find_map(|w| w.strip_prefix("console="));
    let console = match last_console {
        Some(name) if name.starts_with("hvc") => ConsoleDevice::Hvc,
        _ => ConsoleDevice::Serial,
    };
    let mut cmdline = words.join(" ");
    if last_console.is_none() {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(DEFAULT_CONSOLE);
    }
    if let Some(ip) = network::ip_autoconfig(words, tunnets) {
        cmdline.push(' ');
        cmdline.push_str(&ip);
    }
    (cmdline, console)
}

/// The host's online CPUs: more vCPUs than that would only take turns.
fn online_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(online).unwrap_or(1).max(1)
}

/// `--cpus=N`: 1 up to the host's online CPUs.
fn check_cpus(cpus: u8, online: u64) -> Result<(), String> {
    if cpus == 0 {
        return Err("--cpus=0: a guest needs at least one vCPU".into());
    }
    if u64::from(cpus) > online {
        return Err(format!(
            "--cpus={cpus}: this host has {online} online CPU(s), and a guest may have at most that many"
        ));
    }
    Ok(())
}

/// Parses MEM_MB, lguest's first argument: guest RAM in MiB.
fn parse_memory(text: &str) -> Result<u64, String> {
    let mib: u64 = text
        .parse()
        .map_err(|_| format!("memory size {text:?} is not a whole number of MiB"))?;
    if mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory size {mib} MiB is too small: a guest needs at least {MIN_MEMORY_MIB} MiB"
        ));
    }
    if let Some(host_mib) = host_memory_mib() {
        if mib > host_mib {
            return Err(format!(
                "memory size {mib} MiB is more than this host's RAM and swap ({host_mib} MiB)"
            ));
        }
    }
    Ok(mib)
}

/// The host's RAM plus swap in MiB, from /proc/meminfo: more than that can
/// never be backed, though less can be given lazily (lg maps guest RAM
/// without reserving it).
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some((field("MemTotal:")? + field("SwapTotal:").unwrap_or(0)) / 1024)
}

/// Creates the VM and runs the guest to its end.
fn boot(mut guest: PreparedGuest) -> u8 {
    let machine = match guest.machine.take() {
        Some(machine) => Ok(machine),
        None => MachineInProgress::start(Arc::clone(&guest.memory), guest.cpus),
    };
    let machine = match machine.and_then(|m| m.host_verdict().map(|()| m)) {
        Ok(machine) => machine,
        Err(message) => {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    };
    crate::startup::step("host checked");
    // The taps first: a host that will not let lg make one (no root, no
    // tun module) is told so before anything else is built.
    let nics = match network::open_nics(&guest.tunnets, &guest.identity) {
        Ok(nics) => nics,
        Err(message) => {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    };
    crate::startup::step("taps");
    // The name next: a second guest of the same name is refused before
    // it costs anything.
    let socket = match control_socket(&guest.info.name, guest.named) {
        Ok(socket) => socket,
        Err(message) => {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    };
    // gdb's port, like the name: taken before the guest costs anything.
    let gdb_listener = match guest.gdb.map(gdb_stub::bind).transpose() {
        Ok(listener) => listener,
        Err(message) => {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    };
    if guest.gdb_wait && gdb_listener.is_none() && socket.is_none() {
        eprintln!(
            "lg: --gdb-wait: gdb could never attach: give --gdb=PORT, or a runtime directory \
             for the control socket that lg gdb NAME uses"
        );
        return EXIT_REFUSED;
    }
    crate::startup::step("control socket and gdb port");
    let (vm, vcpus) = match machine.finish(&guest.entry) {
        Ok(made) => made,
        Err(message) => {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    };
    crate::startup::step("VM and vCPUs ready");
    let uart_irq = Box::new(IsaIrq {
        vm: Arc::clone(vm.fd()),
        irq: hcall_abi::layout::COM1_IRQ,
    });
    let hvc_input = match ConsoleInput::new() {
        Ok(input) => input,
        Err(e) => {
            eprintln!("lg: cannot set up the virtio console: {e}");
            return EXIT_REFUSED;
        }
    };
    let tap_names: Vec<String> = nics
        .iter()
        .map(|nic| nic.tap.0.name().to_string())
        .collect();
    let (bus, nic_stats) =
        match pci_devices(&vm, Arc::clone(&hvc_input), guest.disks, nics, guest.rng) {
            Ok(built) => built,
            Err(message) => {
                eprintln!("lg: {message}");
                return EXIT_REFUSED;
            }
        };
    crate::startup::step("PCI devices");
    // Every file and KVM handle is open: --chroot and --username now.
    if let Err(message) = privileges::drop(&guest.confinement) {
        eprintln!("lg: {message}");
        return EXIT_REFUSED;
    }
    crate::startup::step("privileges");
    // KVM's coalesced ring, for the serial port's transmit register (see
    // platform.rs); a KVM without one costs an exit per byte, nothing more.
    let ring = match vcpus.first().map(|boot| CoalescedRing::map(vm.fd(), boot)) {
        Some(Ok(ring)) => ring,
        Some(Err(e)) => {
            log::warn!("{e}; every serial byte will exit");
            None
        }
        None => None,
    };
    let coalescing: Option<Box<dyn CoalescingSwitch>> = ring
        .as_ref()
        .map(|_| Box::new(KvmCoalescing(Arc::clone(vm.fd()))) as Box<dyn CoalescingSwitch>);
    let platform = Arc::new(Platform::new(
        Box::new(std::io::stdout()),
        uart_irq,
        bus,
        coalescing,
    ));

    let typed_into: KeysSink = match guest.console {
        ConsoleDevice::Serial => {
            let platform = Arc::clone(&platform);
            Box::new(move |bytes| platform.console_input(bytes))
        }
        ConsoleDevice::Hvc => Box::new(move |bytes| hvc_input.push(bytes)),
    };
    let power_button: PowerButton = {
        let line = IsaIrq {
            vm: Arc::clone(vm.fd()),
            irq: hcall_abi::layout::POWER_BUTTON_GSI,
        };
        Arc::new(move || line.trigger())
    };
    if let Err(message) = start_control_threads(typed_into, Arc::clone(&power_button)) {
        eprintln!("lg: {message}");
        return EXIT_REFUSED;
    }
    crate::startup::step("terminal and threads");
    let stats: Arc<[ExitStats]> = (0..guest.cpus).map(|_| ExitStats::default()).collect();
    let control = Arc::new(VcpuControl::new(usize::from(guest.cpus)));
    let mut info = guest.info;
    info.started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64);
    let debugger = Debugger::new(Arc::clone(&control), Arc::clone(&guest.memory));
    if guest.gdb_wait {
        // Before any vCPU thread exists: each parks at its first checkpoint.
        let _ = control.pause();
        let how = match guest.gdb {
            Some(port) => format!("target remote :{port}"),
            None => format!("target remote | lg gdb {}", info.name),
        };
        eprintln!("lg: the vCPUs wait for gdb ({how})");
    }
    if let Some(listener) = gdb_listener {
        if let Err(message) = debugger.listen(listener) {
            eprintln!("lg: {message}");
            return EXIT_REFUSED;
        }
    }
    let inspectable = Inspectable {
        info,
        vcpus: Arc::clone(&control),
        memory: Arc::clone(&guest.memory),
        exits: Arc::clone(&stats),
        nics: tap_names.into_iter().zip(nic_stats).collect(),
        press_power_button: Box::new(move || power_button()),
        // Ends lg a moment later, on a thread of its own, so the control
        // thread can first tell `lg stop --force` that it is done.
        force_stop: Box::new(|| {
            let _ = std::thread::Builder::new()
                .name("force-stop".into())
                .spawn(|| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    tidy_up();
                    eprintln!("\r\nlg: stopped by lg stop --force");
                    std::process::exit(i32::from(EXIT_STOPPED));
                });
        }),
        debugger: Arc::clone(&debugger),
    };
    if let Some(socket) = socket {
        let streams = inspect::stream_handler(Arc::clone(&debugger));
        match socket.serve_with_streams(inspect::handler(inspectable), streams) {
            Ok(serving) => {
                let _ = CONTROL_SOCKET.set(serving);
            }
            Err(message) => {
                eprintln!("lg: {message}");
                return EXIT_REFUSED;
            }
        }
    }
    crate::startup::step("control socket served");
    // Everything lg will open is open: from here on it may only move bytes,
    // run threads and talk to KVM (see seccomp.rs).
    if let Err(message) = crate::seccomp::confine() {
        tidy_up();
        eprintln!("lg: {message}");
        return EXIT_REFUSED;
    }
    crate::startup::step("seccomp");
    // What lg itself costs before the guest runs, step by step, logged by
    // the boot vCPU's thread as it enters the guest (`cargo xtask bench`
    // reads this line).
    let end = switcher::run::run_noting_first_entry(
        vcpus,
        platform,
        Arc::clone(&stats),
        control,
        ring,
        Box::new(crate::startup::first_kvm_run),
    );
    // An attached gdb hears the guest exit before lg goes.
    debugger.wait_detached(GDB_FAREWELL);
    tidy_up();
    for (index, vcpu_stats) in stats.iter().enumerate() {
        log::info!("vCPU {index} {vcpu_stats}");
    }
    match end {
        GuestEnd::PowerOff => {
            log::info!("the guest powered off");
            EXIT_GUEST_ENDED
        }
        GuestEnd::Reboot => {
            log::info!("the guest rebooted; lg ends, as lguest did");
            EXIT_GUEST_ENDED
        }
        GuestEnd::Panic => {
            eprintln!("lg: the guest kernel panicked");
            EXIT_GUEST_PANICKED
        }
        GuestEnd::Crash(why) => {
            eprintln!("lg: {why}");
            EXIT_GUEST_CRASHED
        }
    }
}

/// The guest's control socket. A guest the user did not name still boots
/// where there is no runtime directory for sockets (no `XDG_RUNTIME_DIR`,
/// not root): it only goes without `lg ps` and friends, and lg says so.
fn control_socket(name: &str, named: bool) -> Result<Option<ControlSocket>, String> {
    let dir = match lg_control::runtime_dir() {
        Ok(dir) => dir,
        Err(message) if !named => {
            log::warn!("{message}; this guest will not be seen by lg ps, lg stop or lg regs");
            return Ok(None);
        }
        Err(message) => return Err(format!("--name={name}: {message}")),
    };
    ControlSocket::bind_in(&dir, name).map(Some)
}

/// The PCI bus and its devices: the host bridge, the virtio console, then
/// the disks (so the guest names them vda, vdb, ... in `--block` order),
/// the network cards (eth0, eth1, ... in `--tunnet` order), then the
/// entropy device.
/// Each device gets the next slot, a BAR in the MMIO hole, and the INTx
/// line the DSDT's `_PRT` gives that slot.
fn pci_devices(
    vm: &Vm,
    hvc_input: Arc<ConsoleInput>,
    disks: Vec<VirtioBlock>,
    nics: Vec<Nic>,
    rng: bool,
) -> Result<(PciBus, Vec<Arc<NetStats>>), String> {
    let routing = MsiRouting::new(Arc::clone(vm.fd()));
    let hooks: Arc<dyn TransportHooks> = Arc::new(KvmHooks {
        vm: Arc::clone(vm.fd()),
        routing,
    });
    let mut bus = PciBus::new();
    let mut bars = BarAllocator::new();
    let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(VirtioConsole::new(
        Box::new(std::io::stdout()),
        hvc_input,
    ))];
    devices.extend(
        disks
            .into_iter()
            .map(|disk| Box::new(disk) as Box<dyn VirtioDevice>),
    );
    let mut nic_stats = Vec::new();
    for nic in nics {
        let card = VirtioNet::new(nic.tap, nic.mac);
        nic_stats.push(card.stats());
        devices.push(Box::new(card));
    }
    if rng {
        devices.push(Box::new(VirtioRng::new()));
    }
    for (index, device) in devices.into_iter().enumerate() {
        // Slot 0 is the host bridge; devices follow in order.
        let slot = index as u8 + 1;
        let gsi = hcall_abi::layout::pci_intx_gsi(slot, 0);
        let bar = bars
            .allocate(virtio_pci::BAR_SIZE)
            .map_err(|e| format!("cannot place a PCI device: {e}"))?;
        let intx = Box::new(KvmIntx {
            vm: Arc::clone(vm.fd()),
            gsi,
        });
        let function = VirtioPciDevice::new(
            device,
            Arc::clone(vm.memory()),
            bar,
            Arc::clone(&hooks),
            intx,
            gsi as u8,
        )
        .map_err(|e| format!("cannot set up a virtio device: {e}"))?;
        let placed = bus
            .add(Arc::new(Mutex::new(function)))
            .map_err(|e| format!("cannot add a PCI device: {e}"))?;
        if placed != slot {
            return Err(format!(
                "PCI slot {placed} was given where lg expected {slot}"
            ));
        }
    }
    Ok((bus, nic_stats))
}

/// Presses the guest's ACPI power button (a pulse on its GED's GSI).
type PowerButton = Arc<dyn Fn() + Send + Sync>;

/// How long a guest has to shut down after a signal pressed its power
/// button, before lg ends it anyway.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the threads that serve the person rather than the guest: terminal
/// input (handed to `typed_into`), and the signals that stop lg. A panic
/// anywhere restores the terminal before the message is printed.
fn start_control_threads(typed_into: KeysSink, power_button: PowerButton) -> Result<(), String> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tidy_up();
        default_hook(info);
    }));

    // Block the stopping signals in every thread (threads inherit the mask),
    // and take them on one thread with sigwait, where restoring the terminal
    // and exiting is safe, unlike in a signal handler. SIGHUP is left alone
    // when lg started with it ignored: that is `nohup lg ...`, the user
    // asking lg to outlive its terminal.
    use nix::sys::signal::{SigSet, Signal};
    let mut stopping = SigSet::empty();
    stopping.add(Signal::SIGINT);
    stopping.add(Signal::SIGTERM);
    if !started_with_sighup_ignored() {
        stopping.add(Signal::SIGHUP);
    }
    stopping
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || stop_on_signals(&stopping, &power_button))
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    // Standard input always feeds the guest's serial port, so a script can
    // be piped in; only a terminal is put in raw mode and offered lg's own
    // keys (Ctrl-A x), since piped bytes are meant for the guest verbatim.
    let interactive = terminal::stdin_is_terminal();
    if interactive {
        // Said once, before raw mode: the one key sequence that always
        // ends lg, whatever the guest does with the terminal.
        eprintln!("lg: Ctrl-A x quits lg; Ctrl-A Ctrl-A sends Ctrl-A to the guest");
        terminal::enter_raw_mode()
            .map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?;
    }
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            terminal::pump_input(
                interactive,
                |bytes| typed_into(bytes),
                || {
                    tidy_up();
                    eprintln!("\r\nlg: quit (Ctrl-A x)");
                    std::process::exit(i32::from(EXIT_STOPPED));
                },
            )
        })
        .map_err(|e| format!("cannot start the console input thread: {e}"))?;
    Ok(())
}

/// The signal thread: the first stopping signal presses the guest's power
/// button, so it shuts down cleanly (lg then ends as the guest powers off,
/// with status 0); a second signal, or a guest still running after
/// [`SIGNAL_GRACE`], ends lg at once with status 3.
fn stop_on_signals(stopping: &nix::sys::signal::SigSet, power_button: &PowerButton) {
    let Ok(first) = stopping.wait() else {
        return;
    };
    eprintln!(
        "\r\nlg: {first}: pressed the guest's power button; lg ends when the guest is down, \
         in {} s, or at another signal",
        SIGNAL_GRACE.as_secs()
    );
    power_button();
    let spawned = std::thread::Builder::new()
        .name("signal-grace".into())
        .spawn(|| {
            std::thread::sleep(SIGNAL_GRACE);
            tidy_up();
            eprintln!(
                "\r\nlg: the guest did not shut down within {} s of its power button",
                SIGNAL_GRACE.as_secs()
            );
            std::process::exit(i32::from(EXIT_STOPPED));
        });
    if spawned.is_err() {
        // Without a timer the only bounded choice is to end now.
        tidy_up();
        std::process::exit(i32::from(EXIT_STOPPED));
    }
    if let Ok(second) = stopping.wait() {
        tidy_up();
        eprintln!("\r\nlg: stopped by {second}");
        std::process::exit(i32::from(EXIT_STOPPED));
    }
}

/// Whether lg was started with SIGHUP ignored (as `nohup` does).
fn started_with_sighup_ignored() -> bool {
    // SAFETY: a zeroed sigaction is a valid value to be written into;
    // sigaction with a null new action only reads the current one.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn lg_adds_a_serial_console_only_when_none_is_named() {
        assert_eq!(
            kernel_command_line(&words("root=/dev/vda"), &[]),
            (
                "root=/dev/vda console=ttyS0".to_string(),
                ConsoleDevice::Serial
            )
        );
        assert_eq!(
            kernel_command_line(&[], &[]),
            ("console=ttyS0".to_string(), ConsoleDevice::Serial)
        );
        assert_eq!(
            kernel_command_line(&words("console=hvc0 quiet"), &[]),
            ("console=hvc0 quiet".to_string(), ConsoleDevice::Hvc)
        );
    }

    #[test]
    fn the_last_console_named_is_the_one_typed_into() {
        let (_, console) = kernel_command_line(&words("console=hvc0 console=ttyS0"), &[]);
        assert_eq!(console, ConsoleDevice::Serial);
        let (_, console) = kernel_command_line(&words("console=ttyS0,115200 console=hvc0"), &[]);
        assert_eq!(console, ConsoleDevice::Hvc);
    }

    #[test]
    fn vcpus_range_from_one_to_the_online_cpus() {
        assert!(check_cpus(0, 4).unwrap_err().contains("--cpus=0"));
        assert_eq!(check_cpus(1, 1), Ok(()));
        assert_eq!(check_cpus(4, 4), Ok(()));
        assert!(check_cpus(5, 4).unwrap_err().contains("--cpus=5"));
    }

    #[test]
    fn memory_must_be_a_sensible_number_of_mib() {
        assert_eq!(parse_memory("64"), Ok(64));
        assert!(parse_memory("abc").unwrap_err().contains("\"abc\""));
        assert!(parse_memory("-5").unwrap_err().contains("\"-5\""));
        assert!(parse_memory("0").unwrap_err().contains("0 MiB"));
        assert!(parse_memory("99999999999")
            .unwrap_err()
            .contains("99999999999"));
    }
}
