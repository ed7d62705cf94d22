//! `cargo xtask bench`: lg beside QEMU, booting the same guest in the same test host.
//!
//! A minimal hypervisor earns its place by starting fast and costing little,
//! and the only honest way to say so on these machines is side by side: the
//! nested test host emulates its CPU (QEMU TCG), so an absolute time says
//! more about the emulation and the neighbours than about lg. So one test
//! host runs both lg and Debian's own `qemu-system-x86_64` (packed into it
//! for this command only, with the libraries `ldd` lists and the few
//! firmware files it opens), on the same kernel, initramfs and disk image,
//! interleaved run by run, and the table gives the ratio.
//!
//! The figures beside QEMU, each the median of `--runs` runs (part `boot`
//! after one discarded warm-up; part `net` of at most 3):
//! - `boot`: from just before the hypervisor's process starts to the
//!   guest's `LG_GUEST_INIT_OK` line, and to its exit after
//!   `lgtest=poweroff`. Timed inside the test host by busybox `ts '%.s'`,
//!   which stamps each console line with the wall clock in microseconds as
//!   it reads it (busybox `date` has no `%N`). lg runs with `-v` here, and
//!   its line `start-up: X ms from the process's start to the first
//!   KVM_RUN (...)` gives lg's own start-up figure, the median over these
//!   boots (the steps of each go to the log as `LG_BENCH_STARTUP` lines).
//! - `idle`: a guest with the 64 MiB bench disk, at its shell. Memory: the
//!   process's RSS (`/proc/PID/smaps_rollup`) minus the resident size of its
//!   largest anonymous mapping (`/proc/PID/smaps`), which is the guest's RAM.
//!   Then, in that guest, timed by the guest's own `ts`: `dd` reads the whole
//!   disk with `iflag=direct` (the guest's page cache out of the way), `dd`
//!   writes it with `oflag=direct conv=fsync`, and `lg-randread` (a static
//!   program in the kit, `lg-randread.rs`) reads 4 KiB blocks at random
//!   offsets with `O_DIRECT`, one at a time, for 5 s: fio's
//!   `--rw=randread --bs=4k --direct=1 --ioengine=psync --iodepth=1`. The
//!   image lives in the test host's RAM, so these time the hypervisor's disk
//!   path, not a disk.
//! - `net`: a guest with a network card on a tap whose host end is
//!   192.168.19.1 (lg: `--tunnet=192.168.19.1`, which adds the guest's
//!   `ip=`; QEMU: `-netdev tap` and `virtio-net-pci`, the tap given that
//!   address by the script, and the same `ip=` on the command line). The
//!   guest fetches 64 MiB from the test host's busybox `httpd` with busybox
//!   `wget -O /dev/null`, timed by the guest's `ts` (host to guest); then the
//!   test host fetches 64 MiB from `httpd` in the guest, timed by its own
//!   `ts` (guest to host). One TCP stream each way, no vhost on either side.
//!
//! And lg's alone, each in a test host of its own:
//! - `lazy`: `lg run 2048` in a 4096 MiB test host that first holds
//!   3072 MiB in a ramfs, so that less than 1 GiB is free: guest RAM is
//!   never reserved or pre-faulted, so the guest boots to its shell, its
//!   `MemTotal` says 2 GiB, and lg's RSS is what the guest touched; then the
//!   guest fills 256 MiB of its tmpfs and lg's RSS follows. (Not a test host
//!   of 1024 MiB: lg refuses guest RAM beyond the host's RAM and swap, which
//!   could never all be backed.)
//! - `many`: one 128 MiB guest alone (median of 3 after a warm-up), then
//!   8 of them started at once; each boots to `/init` and powers off, and
//!   the figure is the time from the first start to the last `/init`,
//!   against 3 × one guest's. Starting several guests at the same instant
//!   has crashed the nested test host's kernel (kvm-amd under QEMU's
//!   emulated SVM: "BUG: TASK stack guard page was hit"; one run in two
//!   here); if that happens, or not every guest reaches `/init`, a second
//!   test host starts them 2 s apart and the table says "staggered".
//!
//! `--only boot,net` (any of `boot`, `idle`, `net`, `lazy`, `many`) runs
//! only those parts; all of them take about 40 minutes on a 2-core machine.
//!
//! The shell functions that run in the test host (`bench/functions.sh`)
//! print one `LG_BENCH` line per sample; this file writes the scripts around
//! them and runs the test hosts, and `bench/report.rs` reads the lines back
//! and prints the table (stdout) and its JSON (`target/bench/`). Nothing
//! here is a test: a benchmark never fails because a number moved.

mod report;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Context;
use crate::testhost::{self, Echo, TestHost, TestHostError};
use crate::{command, progress, shell, Error, Kit};

pub use report::Report;

/// Guest RAM for the figures beside QEMU, in MiB.
const GUEST_MB: u32 = 256;

/// The disk image the block figures read and write, in MiB (made in the
/// test host, in its RAM).
const DISK_MB: u32 = 64;

/// How long `lg-randread` reads, in seconds.
const RANDREAD_SECONDS: u32 = 5;

/// What each network transfer moves, in MiB.
const NET_MB: u32 = 64;

/// The network figures take at most this many runs (a network guest is a
/// boot of its own; three keep the default run near half an hour).
const NET_RUNS: u32 = 3;

/// The tap's host end, and the guest's address on it.
const HOST_IP: &str = "192.168.19.1";
const GUEST_IP: &str = "192.168.19.2";

/// How long one hypervisor run may take before `timeout` kills it.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// The lazy-RAM figure: guest RAM, what the test host holds in a ramfs
/// first (leaving less free than the guest's RAM), and how much the guest
/// then fills.
const LAZY_GUEST_MB: u32 = 2048;
const LAZY_HELD_MB: u32 = 3072;
const LAZY_TOUCH_MB: u32 = 256;

/// The many-guests figure: how many, how big, one guest's reference boots
/// (after a warm-up), the gap between starts when staggered, and how long
/// each may take.
const MANY_GUESTS: u32 = 8;
const MANY_GUEST_MB: u32 = 128;
const ONE_RUNS: u32 = 3;
const STAGGER_SECONDS: u32 = 2;
const MANY_LIMIT: Duration = Duration::from_secs(400);

/// The test host's RAM for every part but `lazy` (TestHost's default).
const TESTHOST_MB: u32 = 4096;

/// Where QEMU sits in the test host (its `PATH` is only `/bin`).
const QEMU_INSIDE: &str = "/usr/bin/qemu-system-x86_64";

/// The firmware `qemu-system-x86_64 -enable-kvm` opens for `-M pc` (SeaBIOS,
/// the kvmvapic and linuxboot option ROMs) and `-M microvm` (its
/// `bios-microvm.bin`; qboot's ROM as well), as `strace -f -e trace=openat`
/// shows with `-nodefaults`: no VGA BIOS, no network boot ROMs
/// (virtio-net-pci gets `romfile=`: nothing here boots from the network).
const QEMU_FIRMWARE: [&str; 5] = [
    "bios-256k.bin",
    "kvmvapic.bin",
    "linuxboot_dma.bin",
    "bios-microvm.bin",
    "qboot.rom",
];

/// Where Debian's QEMU looks for firmware, in its order (its
/// `--firmwarepath`): each file goes into the test host where it was found
/// here. QEMU 7.2 links SeaBIOS's files into `/usr/share/qemu`; the
/// backports' QEMU 10 finds them in `/usr/share/seabios` alone.
const QEMU_FIRMWARE_DIRS: [&str; 2] = ["/usr/share/qemu", "/usr/share/seabios"];

/// The shell functions the scripts are made of.
const FUNCTIONS: &str = include_str!("bench/functions.sh");

/// A part of the benchmark, as `--only` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Boot to `/init` and to exit, beside QEMU.
    Boot,
    /// The idle guest: memory, block read, write and random read, and lg's
    /// start-up, beside QEMU.
    Idle,
    /// TCP both ways, beside QEMU.
    Net,
    /// `lg run 2048` in a smaller test host.
    Lazy,
    /// 8 guests at once.
    Many,
}

impl Part {
    pub const ALL: [Part; 5] = [Part::Boot, Part::Idle, Part::Net, Part::Lazy, Part::Many];

    pub fn name(self) -> &'static str {
        match self {
            Part::Boot => "boot",
            Part::Idle => "idle",
            Part::Net => "net",
            Part::Lazy => "lazy",
            Part::Many => "many",
        }
    }

    /// `boot,net` and the like.
    pub fn parse_list(text: &str) -> Result<Vec<Part>, Error> {
        let mut parts = Vec::new();
        for word in text.split(',').filter(|w| !w.is_empty()) {
            let part = Part::ALL
                .into_iter()
                .find(|p| p.name() == word)
                .ok_or_else(|| {
                    Error::new(format!(
                        "--only takes a list of {}, not `{word}`",
                        Part::ALL.map(Part::name).join(", ")
                    ))
                })?;
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
        if parts.is_empty() {
            return Err(Error::new("--only needs at least one part"));
        }
        Ok(parts)
    }

    /// Whether this part runs in the main test host, beside QEMU.
    fn beside_qemu(self) -> bool {
        matches!(self, Part::Boot | Part::Idle | Part::Net)
    }
}

/// One hypervisor configuration: a column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vmm {
    /// The word the script and the JSON use.
    key: &'static str,
    title: &'static str,
    /// Its process name, for `pidof`.
    program: &'static str,
}

const LG: Vmm = Vmm {
    key: "lg",
    title: "lg",
    program: "lg",
};
const QEMU_PC: Vmm = Vmm {
    key: "pc",
    title: "qemu -M pc",
    program: "qemu-system-x86_64",
};
const QEMU_MICROVM: Vmm = Vmm {
    key: "microvm",
    title: "qemu -M microvm",
    program: "qemu-system-x86_64",
};

/// What a run's guest has besides the kit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Devices {
    /// The bench disk, `/tmp/bench.img`, as `/dev/vda`.
    disk: bool,
    /// A network card on a tap whose host end is [`HOST_IP`].
    net: bool,
    /// lg's `-v` (its start-up line); nothing for QEMU.
    verbose: bool,
}

impl Vmm {
    /// The command that boots the kit with `memory_mb` of RAM, `kernel_args`
    /// and `devices`.
    fn command(self, memory_mb: u32, kernel_args: &str, devices: Devices) -> Vec<String> {
        let mut words: Vec<String> = Vec::new();
        let mut push = |list: &[&str]| words.extend(list.iter().map(|w| w.to_string()));
        let memory = memory_mb.to_string();
        if self == LG {
            push(&["lg", "run"]);
            if devices.verbose {
                push(&["-v"]);
            }
            push(&[&memory, "/kit/bzImage", "--initrd=/kit/initrd.cpio.gz"]);
            if devices.disk {
                push(&["--block=/tmp/bench.img"]);
            }
            if devices.net {
                // lg adds the guest's ip= itself.
                push(&[&format!("--tunnet={HOST_IP}")]);
            }
            words.extend(kernel_args.split_whitespace().map(str::to_string));
            return words;
        }
        // microvm has no PCI unless asked, and the kit's init loads only
        // the PCI transport of virtio, so its devices need `pcie=on`.
        let machine = match (self.key, devices.disk || devices.net) {
            ("microvm", true) => "microvm,pcie=on",
            ("microvm", false) => "microvm",
            _ => "pc",
        };
        push(&[QEMU_INSIDE, "-enable-kvm", "-cpu", "host", "-m", &memory]);
        push(&[
            "-M",
            machine,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
        ]);
        push(&["-serial", "stdio", "-kernel", "/kit/bzImage"]);
        push(&["-initrd", "/kit/initrd.cpio.gz"]);
        if devices.disk && self.key == "pc" {
            push(&["-drive", "file=/tmp/bench.img,if=virtio,format=raw"]);
        } else if devices.disk {
            push(&["-drive", "file=/tmp/bench.img,if=none,id=vda,format=raw"]);
            push(&["-device", "virtio-blk-pci,drive=vda"]);
        }
        let mut append = kernel_args.to_string();
        if devices.net {
            push(&["-netdev", "tap,id=n0,ifname=qtap0,script=no,downscript=no"]);
            push(&["-device", "virtio-net-pci,netdev=n0,romfile="]);
            append.push_str(&format!(
                " ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"
            ));
        }
        push(&["-append", &append]);
        words
    }
}

/// The kernel command line of the boot figure, and of the guests at a shell.
const BOOT_ARGS: &str = "console=ttyS0 panic=-1 lgtest=poweroff";
const SHELL_ARGS: &str = "console=ttyS0 panic=-1";

/// The many-guests figure's command line: the boot figure's, `quiet`.
/// Eight guests printing every kernel message on the serial port make
/// eight streams of port-I/O exits, right after which the test host's
/// emulated SVM loses a guest (the README's reliability section): with
/// full messages 5 of 8 reached `/init` in the run of 27 November. The
/// ratio compares like with like: the one guest alone boots the same way.
/// (Not `console=hvc0`: its driver is a module, so `/init`'s first line
/// would have no console to reach.)
const MANY_ARGS: &str = "console=ttyS0 quiet panic=-1 lgtest=poweroff";

/// The boot figure's guest (lg with `-v`, for its start-up line), the idle
/// guest's devices, and the network guest's.
const BOOT: Devices = Devices {
    disk: false,
    net: false,
    verbose: true,
};
const IDLE: Devices = Devices {
    disk: true,
    net: false,
    verbose: true,
};
const NET: Devices = Devices {
    disk: false,
    net: true,
    verbose: false,
};

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Samples per figure and hypervisor (the median is reported).
    pub runs: u32,
    /// The parts to run (`--only`; all of them by default).
    pub parts: Vec<Part>,
    /// The command line, for the table's heading and the JSON.
    pub command: String,
}

/// Runs the parts asked for, each set in its test host, and returns the
/// report; the caller prints it and writes its JSON.
pub fn run(options: &Options) -> Result<Report, Error> {
    let kit = Kit::existing()?;
    let beside_qemu = options.parts.iter().any(|p| p.beside_qemu());
    let (qemu_files, qemu_missing) = match beside_qemu.then(qemu_files) {
        Some(Ok(files)) => (files, None),
        Some(Err(e)) => (Vec::new(), Some(e.to_string())),
        None => (Vec::new(), None),
    };
    let vmms: Vec<Vmm> = if beside_qemu && qemu_missing.is_none() {
        vec![LG, QEMU_PC, QEMU_MICROVM]
    } else {
        vec![LG]
    };
    let mut report = Report::new(&vmms, options);
    report.kernel = kit.kernel_version.clone();

    if beside_qemu {
        let main = main_script(&vmms, options);
        let boots = main.boots;
        let mut host = TestHost::new()
            .memory_mb(TESTHOST_MB)
            .echo(Echo::Stderr)
            .timeout(RUN_LIMIT * boots + Duration::from_secs(180));
        for (from, inside) in &qemu_files {
            host = host.file(from, inside);
        }
        progress(format!(
            "bench: {boots} guest boots beside QEMU in one test host ({} runs of each figure); \
             under emulation that takes minutes",
            options.runs
        ));
        run_testhost(&mut report, "beside QEMU", &host, &main.text);
    }
    if options.parts.contains(&Part::Lazy) {
        progress(format!(
            "bench: lazy RAM: lg run {LAZY_GUEST_MB} in a test host with {LAZY_HELD_MB} of its \
             {TESTHOST_MB} MiB held"
        ));
        let host = TestHost::new()
            .memory_mb(TESTHOST_MB)
            .echo(Echo::Stderr)
            .timeout(RUN_LIMIT + Duration::from_secs(180));
        run_testhost(&mut report, "lazy RAM", &host, &lazy_script());
    }
    if options.parts.contains(&Part::Many) {
        let limit = RUN_LIMIT * (ONE_RUNS + 1) + MANY_LIMIT + Duration::from_secs(180);
        let host = TestHost::new()
            .memory_mb(TESTHOST_MB)
            .echo(Echo::Stderr)
            .timeout(limit);
        progress(format!(
            "bench: {MANY_GUESTS} guests of {MANY_GUEST_MB} MiB at once, after one alone \
             ({} s at most)",
            limit.as_secs()
        ));
        let crashed = run_testhost(&mut report, "8 at once", &host, &many_script(0, true));
        if crashed || !report.all_reached(report::AT_ONCE) {
            progress(format!(
                "bench: {MANY_GUESTS} guests at once did not all boot; again, started \
                 {STAGGER_SECONDS} s apart, in a new test host"
            ));
            let host = host.timeout(MANY_LIMIT + Duration::from_secs(240));
            run_testhost(
                &mut report,
                "8 staggered",
                &host,
                &many_script(STAGGER_SECONDS, false),
            );
        }
    }
    report.finish();
    if let Some(reason) = qemu_missing {
        report.qemu_unavailable(&format!("QEMU could not be put in the test host: {reason}"));
    }
    Ok(report)
}

/// Runs `script` in `host` and reads what it printed into `report`. A test
/// host that ends early (crashed, killed, or past its time limit) still
/// leaves the figures measured until then: those are read, and the reason
/// goes below the table. Returns whether the test host's kernel crashed.
fn run_testhost(report: &mut Report, what: &str, host: &TestHost, script: &str) -> bool {
    match host.run(script) {
        Ok(run) => {
            report.read(&run.output);
            if run.status != 0 {
                report.failure(format!(
                    "{what}: the benchmark script exited with status {}",
                    run.status
                ));
            }
            false
        }
        Err(e) => {
            report.read(e.output());
            let crash = kernel_crash(e.output());
            let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
            match (&e, &crash) {
                (TestHostError::NoStatus { .. } | TestHostError::TimedOut { .. }, Some(bug)) => {
                    report.failure(format!(
                        "{what}: the test host's kernel crashed ({bug}), so figures may be missing"
                    ));
                    report.crash(what, bug);
                }
                _ => report.failure(format!(
                    "{what}: the test host ended early, so figures may be missing: {first_line}"
                )),
            }
            crash.is_some()
        }
    }
}

/// The first line of a kernel crash in a test host's console, if any.
fn kernel_crash(output: &str) -> Option<String> {
    output
        .lines()
        .find(|l| {
            ["BUG:", "Oops:", "Kernel panic", "general protection fault"]
                .iter()
                .any(|m| l.contains(m))
        })
        .map(|l| l.trim().to_string())
}

/// A script and how many guest boots it holds (for its time limit).
struct Script {
    text: String,
    boots: u32,
}

/// The shell functions with their numbers filled in.
fn functions() -> String {
    FUNCTIONS
        .replace("@LIMIT@", &RUN_LIMIT.as_secs().to_string())
        .replace("@MANY_LIMIT@", &MANY_LIMIT.as_secs().to_string())
        .replace("@DISK_MB@", &DISK_MB.to_string())
        .replace("@NET_MB@", &NET_MB.to_string())
        .replace("@RANDREAD_S@", &RANDREAD_SECONDS.to_string())
        .replace("@TOUCH_MB@", &LAZY_TOUCH_MB.to_string())
        .replace("@MANY@", &MANY_GUESTS.to_string())
        .replace("@HOST_IP@", HOST_IP)
        .replace("@GUEST_IP@", GUEST_IP)
}

/// The main test host's script: the disk image and the web server's file,
/// then each figure's runs, hypervisors interleaved so that a noisy moment
/// on the machine falls on all of them alike.
fn main_script(vmms: &[Vmm], options: &Options) -> Script {
    let (runs, has) = (options.runs, |p: Part| options.parts.contains(&p));
    let mut text = functions();
    let mut boots = 0;
    if has(Part::Idle) {
        let _ = writeln!(
            text,
            "dd if=/dev/zero of=/tmp/bench.img bs=1M count={DISK_MB} 2>/dev/null"
        );
    }
    if has(Part::Net) {
        let _ = writeln!(
            text,
            "mkdir -p /srv/www && dd if=/dev/zero of=/srv/www/data bs=1M count={NET_MB} 2>/dev/null \
             && httpd -p 8080 -h /srv/www"
        );
    }
    if has(Part::Boot) {
        for run in 0..=runs {
            for vmm in vmms {
                let _ = writeln!(
                    text,
                    "echo 'bench: boot {} {run}/{runs}'; bench_boot {} {run} {}",
                    vmm.key,
                    vmm.key,
                    shell::join(&vmm.command(GUEST_MB, BOOT_ARGS, BOOT))
                );
                boots += 1;
            }
        }
    }
    for run in 1..=runs {
        if has(Part::Idle) {
            for vmm in vmms {
                let _ = writeln!(
                    text,
                    "echo 'bench: idle guest {} {run}/{runs}'; bench_session {} {run} {} {}",
                    vmm.key,
                    vmm.key,
                    vmm.program,
                    shell::join(&vmm.command(GUEST_MB, SHELL_ARGS, IDLE))
                );
                boots += 1;
            }
            let _ = writeln!(text, "bench_hostread {run}");
        }
        if has(Part::Net) && run <= NET_RUNS {
            for vmm in vmms {
                let _ = writeln!(
                    text,
                    "echo 'bench: network {} {run}/{runs}'; bench_net {} {run} {}",
                    vmm.key,
                    vmm.key,
                    shell::join(&vmm.command(GUEST_MB, SHELL_ARGS, NET))
                );
                boots += 1;
            }
        }
    }
    text.push_str("exit 0\n");
    Script { text, boots }
}

/// The lazy-RAM test host's script.
fn lazy_script() -> String {
    let mut text = functions();
    let _ = writeln!(
        text,
        "mkdir -p /held && mount -t ramfs ramfs /held && \
         dd if=/dev/zero of=/held/bytes bs=1M count={LAZY_HELD_MB} 2>/dev/null"
    );
    text.push_str(
        "awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 } \
         END { print \"LG_BENCH lazyhost\", t, a }' /proc/meminfo\n",
    );
    let _ = writeln!(
        text,
        "bench_lazy {}",
        shell::join(&LG.command(LAZY_GUEST_MB, SHELL_ARGS, Devices::default()))
    );
    text.push_str("exit 0\n");
    text
}

/// The many-guests test host's script: one guest alone first when `one`,
/// then [`MANY_GUESTS`] of them, `gap` seconds apart.
fn many_script(gap: u32, one: bool) -> String {
    let command = shell::join(&LG.command(MANY_GUEST_MB, MANY_ARGS, Devices::default()));
    let mut text = functions();
    if one {
        for run in 0..=ONE_RUNS {
            let _ = writeln!(
                text,
                "echo 'bench: one guest alone {run}/{ONE_RUNS}'; bench_boot one {run} {command}"
            );
        }
    }
    let mode = match gap {
        0 => report::AT_ONCE,
        _ => report::STAGGERED,
    };
    let _ = writeln!(
        text,
        "echo 'bench: {MANY_GUESTS} guests ({mode})'; bench_many {mode} {gap} {command}"
    );
    text.push_str("exit 0\n");
    text
}

/// The bench's `qemu -M pc` boot of the kit to power-off, as words: what
/// `cargo xtask soak --control qemu` boots too.
pub(crate) fn qemu_pc_boot(memory_mb: u32) -> Vec<String> {
    QEMU_PC.command(memory_mb, BOOT_ARGS, Devices::default())
}

/// QEMU and what it needs, as (file on this machine, path in the test host).
pub(crate) fn qemu_files() -> Result<Vec<(PathBuf, String)>, Error> {
    command::ensure_debian_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    let binary = command::find_in_path("qemu-system-x86_64")
        .ok_or_else(|| Error::new("qemu-system-x86_64 is not on PATH"))?;
    let mut files = vec![(binary.clone(), QEMU_INSIDE.to_string())];
    for library in testhost::shared_libraries(&binary)? {
        let inside = library.to_string_lossy().into_owned();
        files.push((library, inside));
    }
    for firmware in QEMU_FIRMWARE {
        let found = QEMU_FIRMWARE_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(firmware))
            .find(|path| path.exists())
            .ok_or_else(|| {
                Error::new(format!(
                    "QEMU's {firmware} is in none of {} (Debian's qemu-system-data and \
                     seabios have it)",
                    QEMU_FIRMWARE_DIRS.join(", ")
                ))
            })?;
        let inside = found.to_string_lossy().into_owned();
        files.push((found, inside));
    }
    // Each as the file it is, not as a link: `/lib64/ld-linux-x86-64.so.2`
    // is a link on this machine, and packed as one it would replace the
    // loader the test host's base already holds with a dangling link.
    files
        .into_iter()
        .map(|(from, inside)| {
            let file =
                fs::canonicalize(&from).context(|| format!("cannot resolve {}", from.display()))?;
            Ok((file, inside))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `@NAME@` left in a script (`"$@"` is the shell's own).
    fn has_placeholder(text: &str) -> bool {
        text.split('@')
            .skip(1)
            .any(|after| after.starts_with(|c: char| c.is_ascii_uppercase()))
    }

    fn options(runs: u32, parts: &[Part]) -> Options {
        Options {
            runs,
            parts: parts.to_vec(),
            command: "cargo xtask bench".to_string(),
        }
    }

    #[test]
    fn the_main_script_runs_each_figure_for_each_hypervisor() {
        let main = main_script(&[LG, QEMU_PC, QEMU_MICROVM], &options(5, &Part::ALL));
        let text = &main.text;
        assert_eq!(text.matches("bench_boot lg ").count(), 6);
        assert_eq!(text.matches("bench_session microvm ").count(), 5);
        assert_eq!(text.matches("bench_net pc ").count(), 3);
        assert_eq!(main.boots, 3 * (6 + 5 + 3));
        assert!(text.contains("microvm,pcie=on"));
        assert!(!has_placeholder(text), "a placeholder was left unfilled");
    }

    #[test]
    fn only_runs_the_parts_asked_for() {
        let main = main_script(&[LG, QEMU_PC], &options(2, &[Part::Net]));
        assert_eq!(main.text.matches("bench_net lg ").count(), 2);
        assert!(!main.text.contains("bench_boot lg"));
        assert!(!main.text.contains("bench_session lg"));
        assert_eq!(
            Part::parse_list("net,many,net").unwrap(),
            [Part::Net, Part::Many]
        );
        assert!(Part::parse_list("fast").is_err());
    }

    #[test]
    fn qemu_gets_the_tap_and_the_address_lg_adds_itself() {
        let qemu = QEMU_MICROVM.command(256, SHELL_ARGS, NET).join(" ");
        assert!(qemu.contains("-M microvm,pcie=on"), "{qemu}");
        assert!(qemu.contains("tap,id=n0,ifname=qtap0,script=no,downscript=no"));
        assert!(qemu.contains("ip=192.168.19.2::192.168.19.1:255.255.255.0::eth0:off"));
        let lg = LG.command(256, SHELL_ARGS, NET).join(" ");
        assert!(lg.contains("--tunnet=192.168.19.1") && !lg.contains("ip="));
        let idle = LG.command(256, SHELL_ARGS, IDLE).join(" ");
        assert!(idle.starts_with("lg run -v 256 "), "{idle}");
        let boot = LG.command(256, BOOT_ARGS, BOOT).join(" ");
        assert!(boot.starts_with("lg run -v 256 "), "{boot}");
        assert!(!QEMU_PC
            .command(256, BOOT_ARGS, BOOT)
            .join(" ")
            .contains(" -v"));
    }

    #[test]
    fn the_lazy_and_many_scripts_use_their_own_sizes() {
        assert!(lazy_script().contains("bench_lazy lg run 2048 "));
        let many = many_script(0, true);
        assert_eq!(many.matches("bench_boot one ").count(), 4);
        assert!(many.contains("bench_many at-once 0 lg run 128 "));
        // Quiet, the one guest alone and the eight alike (MANY_ARGS).
        assert_eq!(many.matches(" quiet ").count(), 5, "{many}");
        assert!(many_script(2, false).contains("bench_many staggered 2 "));
        assert!(!has_placeholder(&many) && !has_placeholder(&lazy_script()));
    }

    #[test]
    fn a_kernel_crash_is_found_in_the_console() {
        let output = "booting\n[  9.1] BUG: TASK stack guard page was hit at 0000\nmore";
        assert_eq!(
            kernel_crash(output).as_deref(),
            Some("[  9.1] BUG: TASK stack guard page was hit at 0000")
        );
        assert_eq!(kernel_crash("LG_BENCH boot lg 1 1 2 0"), None);
    }
}
