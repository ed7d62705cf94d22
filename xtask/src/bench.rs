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
//! The figures, each the median of `--runs` runs after one discarded warm-up:
//! - boot: from just before the hypervisor's process starts to the guest's
//!   `LG_GUEST_INIT_OK` line, and to its exit after `lgtest=poweroff`.
//!   Timed inside the test host by busybox `ts '%.s'`, which stamps each
//!   console line with the wall clock in microseconds as it reads it
//!   (busybox `date` has no `%N`).
//! - memory: with the guest idle at its shell, the process's RSS
//!   (`/proc/PID/smaps_rollup`) minus the resident size of its largest
//!   anonymous mapping (`/proc/PID/smaps`), which is the guest's RAM.
//! - block: in that same guest, `dd` reads its whole 64 MiB disk with
//!   `iflag=direct`, so the guest's page cache is out of the way.
//!
//! The shell script that runs in the test host prints one `LG_BENCH` line
//! per sample; this file writes the script, reads the lines back, and
//! prints the table (stdout) and its JSON (`target/bench/`). Nothing here is
//! a test: a benchmark never fails because a number moved.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Context;
use crate::testhost::{self, Echo, TestHost};
use crate::{command, progress, shell, show_path, Error, Kit};

/// Guest RAM for every figure, in MiB.
const GUEST_MB: u32 = 256;

/// The disk image the block figure reads, in MiB (made in the test host).
const DISK_MB: u32 = 64;

/// How long one hypervisor run may take before `timeout` kills it.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// Where QEMU sits in the test host (its `PATH` is only `/bin`).
const QEMU_INSIDE: &str = "/usr/bin/qemu-system-x86_64";

/// The firmware `qemu-system-x86_64 -enable-kvm` opens for `-M pc` (SeaBIOS,
/// the kvmvapic and linuxboot option ROMs) and `-M microvm` (qboot, behind
/// its `bios-microvm.bin` link), as `strace -f -e trace=openat` shows with
/// `-nodefaults`: no VGA BIOS, no network boot ROMs.
const QEMU_FIRMWARE: [&str; 5] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/qboot.rom",
];

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

impl Vmm {
    /// The command that boots the kit with `kernel_args`, with the bench
    /// disk as `/dev/vda` when `disk` is set.
    fn command(self, kernel_args: &str, disk: bool) -> Vec<String> {
        let mut words: Vec<String> = Vec::new();
        let mut push = |list: &[&str]| words.extend(list.iter().map(|w| w.to_string()));
        if self == LG {
            let memory = GUEST_MB.to_string();
            push(&["lg", "run", &memory, "/kit/bzImage"]);
            push(&["--initrd=/kit/initrd.cpio.gz"]);
            if disk {
                push(&["--block=/tmp/bench.img"]);
            }
            words.extend(kernel_args.split_whitespace().map(str::to_string));
            return words;
        }
        // microvm has no PCI unless asked, and the kit's init loads only
        // the PCI transport of virtio, so its disk needs `pcie=on`.
        let machine = match (self.key, disk) {
            ("microvm", true) => "microvm,pcie=on",
            ("microvm", false) => "microvm",
            _ => "pc",
        };
        let memory = GUEST_MB.to_string();
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
        if disk && self.key == "pc" {
            push(&["-drive", "file=/tmp/bench.img,if=virtio,format=raw"]);
        } else if disk {
            push(&["-drive", "file=/tmp/bench.img,if=none,id=vda,format=raw"]);
            push(&["-device", "virtio-blk-pci,drive=vda"]);
        }
        push(&["-append", kernel_args]);
        words
    }
}

/// The kernel command line of the boot figure, and of the idle guest.
const BOOT_ARGS: &str = "console=ttyS0 panic=-1 lgtest=poweroff";
const SHELL_ARGS: &str = "console=ttyS0 panic=-1";

/// The shell functions the benchmark script is made of. Each prints one
/// `LG_BENCH` line per sample, or `LG_BENCH fail` and the end of what the
/// guest printed (`LG_BENCH_LOG`), so a missing figure comes with its reason.
const FUNCTIONS: &str = r#"
# A hypervisor whose guest has died must not take this script with it.
trap '' PIPE

bench_log() {
	tail -n 12 "$2" | tr -d '\r' | sed "s/^/LG_BENCH_LOG $1 /"
}

# bench_boot VMM RUN CMD...: boot with lgtest=poweroff, each console line
# stamped by ts as it arrives.
bench_boot() {
	vmm=$1 run=$2; shift 2
	{ echo LG_BENCH_START; timeout -s KILL LIMIT "$@" </dev/null; echo "LG_BENCH_EXIT $?"; } 2>&1 |
		ts '%.s' >/tmp/bench.boot
	awk -v vmm="$vmm" -v run="$run" '
		/LG_BENCH_START/ { start = $1 }
		/LG_GUEST_INIT_OK/ && !init { init = $1 }
		/LG_BENCH_EXIT/ { end = $1; status = $3 }
		END {
			if (init) printf "LG_BENCH boot %s %s %.1f %.1f %s\n", vmm, run, (init - start) * 1000, (end - start) * 1000, status
			else printf "LG_BENCH fail %s %s boot: no LG_GUEST_INIT_OK (exit status %s)\n", vmm, run, status
		}' /tmp/bench.boot
	grep -q LG_GUEST_INIT_OK /tmp/bench.boot || bench_log "$vmm" /tmp/bench.boot
}

# bench_wait PATTERN: until the session's output has it (or the guest ended).
bench_wait() {
	waited=0
	while ! grep -q "$1" /tmp/bench.out; do
		[ -s /tmp/bench.status ] && return 1
		[ $waited -ge $((LIMIT * 5)) ] && return 1
		sleep 0.2
		waited=$((waited + 1))
	done
}

# bench_session VMM RUN PROGRAM CMD...: boot to the guest's shell with the
# disk, sample memory while it idles, dd the disk, power off. The guest's
# console input is a FIFO the script types into.
bench_session() {
	vmm=$1 run=$2 program=$3; shift 3
	rm -f /tmp/bench.in /tmp/bench.out /tmp/bench.status
	mkfifo /tmp/bench.in
	( timeout -s KILL LIMIT "$@" </tmp/bench.in >/tmp/bench.out 2>&1
	  echo $? >/tmp/bench.status ) &
	exec 3>/tmp/bench.in
	if bench_wait 'guest# '; then
		sleep 1
		pid=$(pidof "$program")
		rss=$(awk '$1 == "Rss:" { print $2 }' /proc/$pid/smaps_rollup)
		guest=$(awk '
			/^[0-9a-f]+-[0-9a-f]+ / { anonymous = (NF == 5); pick = 0; next }
			anonymous && $1 == "Size:" && $2 > size { size = $2; pick = 1; next }
			pick && $1 == "Rss:" { rss = $2; pick = 0 }
			END { print size, rss }' /proc/$pid/smaps)
		echo "LG_BENCH mem $vmm $run $rss $guest"
		# Debian's busybox dd prints no time, so the guest's own ts stamps
		# the lines around it.
		echo "{ echo LG_DD_START; dd if=/dev/vda of=/dev/null bs=1M iflag=direct; echo LG_DD_END; } 2>&1 | ts '%.s'" >&3
		if bench_wait '^[0-9][0-9.]* LG_DD_END' && grep -q ' DISK_MB+0 records out' /tmp/bench.out; then
			tr -d '\r' </tmp/bench.out | awk -v vmm="$vmm" -v run="$run" '
				$2 == "LG_DD_START" { start = $1 }
				$2 == "LG_DD_END" { end = $1 }
				END { print "LG_BENCH blk", vmm, run, DISK_MB * 1048576, end - start }'
		else
			echo "LG_BENCH fail $vmm $run block: dd in the guest did not read the whole disk"
			bench_log "$vmm" /tmp/bench.out
		fi
	else
		echo "LG_BENCH fail $vmm $run memory: the guest's shell prompt never came"
		bench_log "$vmm" /tmp/bench.out
	fi
	echo 'poweroff -f' >&3
	exec 3>&-
	wait
}

# The test host's own read of the image, for scale.
bench_hostread() {
	{ echo LG_DD_START; dd if=/tmp/bench.img of=/dev/null bs=1M 2>/dev/null; echo LG_DD_END; } |
		ts '%.s' | awk -v run="$1" '
		$2 == "LG_DD_START" { start = $1 }
		$2 == "LG_DD_END" { end = $1 }
		END { print "LG_BENCH hostread", run, DISK_MB * 1048576, end - start }'
}
"#;

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Samples per figure and hypervisor (the median is reported).
    pub runs: u32,
    /// The command line, for the table's heading and the JSON.
    pub command: String,
}

/// Runs every benchmark in one test host and returns the report; the
/// caller prints it and writes its JSON.
pub fn run(options: &Options) -> Result<Report, Error> {
    let kit = Kit::existing()?;
    let (qemu_files, qemu_missing) = match qemu_files() {
        Ok(files) => (files, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let vmms: Vec<Vmm> = if qemu_missing.is_none() {
        vec![LG, QEMU_PC, QEMU_MICROVM]
    } else {
        vec![LG]
    };
    let script = script(&vmms, options.runs);

    let boots = (1 + 2 * options.runs) * vmms.len() as u32;
    let mut host = TestHost::new()
        .echo(Echo::Stderr)
        .timeout(RUN_LIMIT * boots + Duration::from_secs(180));
    for (from, inside) in &qemu_files {
        host = host.file(from, inside);
    }
    progress(format!(
        "bench: {boots} guest boots in one test host ({} runs of each figure, \
         one warm-up each); under emulation that takes minutes",
        options.runs
    ));
    // A test host that ends early (killed, or past its time limit) still
    // leaves the figures measured until then: report those, and why.
    let (output, ended_early) = match host.run(&script) {
        Ok(run) if run.status == 0 => (run.output, None),
        Ok(run) => (
            run.output,
            Some(format!(
                "the benchmark script exited with status {}",
                run.status
            )),
        ),
        Err(e) if e.output().contains("LG_BENCH ") => {
            let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
            (e.output().to_string(), Some(first_line))
        }
        Err(e) => return Err(Error::new(e.to_string())),
    };

    let mut report = Report::parse(&output, &vmms, options);
    if let Some(reason) = ended_early {
        report.failures.push(format!(
            "  the test host ended early, so figures may be missing: {reason}"
        ));
    }
    report.kernel = kit.kernel_version.clone();
    if let Some(reason) = qemu_missing {
        for vmm in [QEMU_PC, QEMU_MICROVM] {
            report.columns.push(Column {
                vmm,
                command: String::new(),
                unavailable: Some(format!("QEMU could not be put in the test host: {reason}")),
            });
        }
    }
    Ok(report)
}

/// The script the test host runs: the functions, the disk image, then each
/// figure's runs, hypervisors interleaved so that a noisy moment on the
/// machine falls on all of them alike.
fn script(vmms: &[Vmm], runs: u32) -> String {
    let limit = RUN_LIMIT.as_secs().to_string();
    let mut text = FUNCTIONS
        .replace("LIMIT", &limit)
        .replace("DISK_MB", &DISK_MB.to_string());
    let _ = writeln!(
        text,
        "dd if=/dev/zero of=/tmp/bench.img bs=1M count={DISK_MB} 2>/dev/null"
    );
    for run in 0..=runs {
        for vmm in vmms {
            let _ = writeln!(
                text,
                "echo 'bench: boot {} {run}/{runs}'; bench_boot {} {run} {}",
                vmm.key,
                vmm.key,
                shell::join(&vmm.command(BOOT_ARGS, false))
            );
        }
    }
    for run in 1..=runs {
        for vmm in vmms {
            let _ = writeln!(
                text,
                "echo 'bench: idle guest {} {run}/{runs}'; bench_session {} {run} {} {}",
                vmm.key,
                vmm.key,
                vmm.program,
                shell::join(&vmm.command(SHELL_ARGS, true))
            );
        }
        let _ = writeln!(text, "bench_hostread {run}");
    }
    text.push_str("exit 0\n");
    text
}

/// QEMU and what it needs, as (file on this machine, path in the test host).
fn qemu_files() -> Result<Vec<(PathBuf, String)>, Error> {
    command::ensure_debian_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    let binary = command::find_in_path("qemu-system-x86_64")
        .ok_or_else(|| Error::new("qemu-system-x86_64 is not on PATH"))?;
    let mut files = vec![(binary.clone(), QEMU_INSIDE.to_string())];
    for library in testhost::shared_libraries(&binary)? {
        let inside = library.to_string_lossy().into_owned();
        files.push((library, inside));
    }
    for firmware in QEMU_FIRMWARE {
        if !Path::new(firmware).exists() {
            return Err(Error::new(format!(
                "{firmware} is missing (Debian's qemu-system-data and seabios have it)"
            )));
        }
        files.push((PathBuf::from(firmware), firmware.to_string()));
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

/// A column of the table: one hypervisor configuration.
#[derive(Debug, Clone)]
pub struct Column {
    vmm: Vmm,
    /// The boot figure's command, as run in the test host.
    command: String,
    /// Why it has no figures, when it has none.
    unavailable: Option<String>,
}

/// One row: a figure, its samples per column.
#[derive(Debug, Clone)]
pub struct Figure {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    /// Samples by column key.
    samples: BTreeMap<&'static str, Vec<f64>>,
}

impl Figure {
    fn new(key: &'static str, title: &'static str, unit: &'static str) -> Figure {
        Figure {
            key,
            title,
            unit,
            samples: BTreeMap::new(),
        }
    }

    fn median(&self, column: &str) -> Option<f64> {
        median(self.samples.get(column)?)
    }

    /// lg's median over `column`'s.
    fn ratio(&self, column: &str) -> Option<f64> {
        let (lg, other) = (self.median(LG.key)?, self.median(column)?);
        (other > 0.0).then_some(lg / other)
    }
}

fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Everything one `cargo xtask bench` measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub command: String,
    pub runs: u32,
    /// Seconds since the epoch when the report was made.
    pub when: u64,
    pub kernel: String,
    columns: Vec<Column>,
    figures: Vec<Figure>,
    /// The test host's own read of the disk image, MiB/s per run.
    host_read: Vec<f64>,
    /// `LG_BENCH fail` lines and the console lines that explain them.
    failures: Vec<String>,
}

impl Report {
    /// Reads the `LG_BENCH` lines of a test host's transcript.
    fn parse(output: &str, vmms: &[Vmm], options: &Options) -> Report {
        let mut figures = vec![
            Figure::new("boot_init_ms", "boot: start to guest /init", "ms"),
            Figure::new("boot_exit_ms", "boot: start to exit (poweroff)", "ms"),
            Figure::new(
                "memory_overhead_mib",
                "memory overhead: RSS - guest RAM",
                "MiB",
            ),
            Figure::new("rss_mib", "RSS, idle guest at its shell", "MiB"),
            Figure::new("guest_ram_mib", "guest RAM resident", "MiB"),
            Figure::new("block_read_mib_s", "block: dd read, O_DIRECT", "MiB/s"),
        ];
        let mut host_read = Vec::new();
        let mut failures = Vec::new();
        for line in output.lines() {
            if let Some(at) = line.find("LG_BENCH_LOG ") {
                failures.push(format!("    | {}", &line[at + "LG_BENCH_LOG ".len()..]));
                continue;
            }
            let Some(at) = line.find("LG_BENCH ") else {
                continue;
            };
            let words: Vec<&str> = line[at + "LG_BENCH ".len()..].split_whitespace().collect();
            let number = |i: usize| words.get(i).and_then(|w| w.parse::<f64>().ok());
            let Some(vmm) = words.get(1).and_then(|k| vmms.iter().find(|v| v.key == *k)) else {
                if let (Some(&"hostread"), Some(bytes), Some(seconds)) =
                    (words.first(), number(2), number(3))
                {
                    if seconds > 0.0 {
                        host_read.push(bytes / 1048576.0 / seconds);
                    }
                }
                continue;
            };
            let warm_up = words.get(2) == Some(&"0");
            let mut add = |key: &str, value: f64| {
                if let Some(figure) = figures.iter_mut().find(|f| f.key == key) {
                    figure.samples.entry(vmm.key).or_default().push(value);
                }
            };
            match words.first() {
                Some(&"boot") if !warm_up => {
                    if let (Some(init), Some(exit)) = (number(3), number(4)) {
                        add("boot_init_ms", init);
                        add("boot_exit_ms", exit);
                    }
                }
                Some(&"mem") => {
                    if let (Some(rss), Some(guest_rss)) = (number(3), number(5)) {
                        add("memory_overhead_mib", (rss - guest_rss) / 1024.0);
                        add("rss_mib", rss / 1024.0);
                        add("guest_ram_mib", guest_rss / 1024.0);
                    }
                }
                Some(&"blk") => {
                    if let (Some(bytes), Some(seconds)) = (number(3), number(4)) {
                        if seconds > 0.0 {
                            add("block_read_mib_s", bytes / 1048576.0 / seconds);
                        }
                    }
                }
                Some(&"fail") => failures.push(format!("  {}", words[1..].join(" "))),
                _ => {}
            }
        }
        let columns = vmms
            .iter()
            .map(|&vmm| {
                let measured = figures.iter().any(|f| f.samples.contains_key(vmm.key));
                Column {
                    vmm,
                    command: shell::join(&vmm.command(BOOT_ARGS, false)),
                    unavailable: (!measured).then(|| {
                        "it measured nothing: see the failures below the table".to_string()
                    }),
                }
            })
            .collect();
        Report {
            command: options.command.clone(),
            runs: options.runs,
            when: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kernel: String::new(),
            columns,
            figures,
            host_read,
            failures,
        }
    }

    /// The others' columns: every one but lg's.
    fn peers(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.vmm != LG)
    }

    /// The table, with the machine and the command above it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.command);
        let _ = writeln!(out, "machine: {}", machine());
        let _ = writeln!(
            out,
            "test host: QEMU TCG -cpu max (nested SVM), 2 vCPUs, 4096 MiB; guest: the kit \
             ({}), {GUEST_MB} MiB, 1 vCPU",
            self.kernel
        );
        let _ = writeln!(
            out,
            "median of {} runs each (after one warm-up boot); ratio = lg / peer\n",
            self.runs
        );
        let mut header = vec!["figure".to_string(), "lg".to_string()];
        for column in self.peers() {
            header.push(column.vmm.title.to_string());
            header.push("ratio".to_string());
        }
        let mut rows = vec![header];
        for figure in &self.figures {
            let mut row = vec![
                format!("{} ({})", figure.title, figure.unit),
                cell(figure.median(LG.key)),
            ];
            for column in self.peers() {
                row.push(cell(figure.median(column.vmm.key)));
                row.push(
                    figure
                        .ratio(column.vmm.key)
                        .map_or("-".to_string(), |r| format!("{r:.2}")),
                );
            }
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for (n, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| match i {
                    0 => format!("{c:<w$}", w = widths[i]),
                    _ => format!("{c:>w$}", w = widths[i]),
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if n == 0 {
                let rule: Vec<String> = widths
                    .iter()
                    .enumerate()
                    .map(|(i, w)| match i {
                        0 => "-".repeat(w + 2),
                        _ => format!("{}:", "-".repeat(w + 1)),
                    })
                    .collect();
                let _ = writeln!(out, "|{}|", rule.join("|"));
            }
        }
        if let Some(read) = median(&self.host_read) {
            let _ = writeln!(
                out,
                "\nthe test host's own read of the {DISK_MB} MiB image (page cache): {read:.0} MiB/s"
            );
        }
        let _ = writeln!(out, "\ncommands (boot figure; the idle guest drops lgtest=poweroff and adds the {DISK_MB} MiB disk):");
        for column in &self.columns {
            match &column.unavailable {
                None => {
                    let _ = writeln!(out, "  {}: {}", column.vmm.title, column.command);
                }
                Some(reason) => {
                    let _ = writeln!(out, "  {}: unavailable: {reason}", column.vmm.title);
                }
            }
        }
        if self.peers().any(|c| c.vmm == QEMU_MICROVM) {
            let _ = writeln!(
                out,
                "  ({} boots with -M microvm,pcie=on and -device virtio-blk-pci for the idle guest: \
                 the kit's init loads virtio's PCI transport, not virtio-mmio)",
                QEMU_MICROVM.title
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for line in &self.failures {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// The report as JSON: every sample, the medians and the ratios.
    pub fn json(&self) -> String {
        let mut out = String::from("{\n");
        let _ = writeln!(out, "  \"command\": {},", json_string(&self.command));
        let _ = writeln!(out, "  \"time\": {},", json_string(&utc_stamp(self.when)));
        let _ = writeln!(out, "  \"machine\": {},", json_string(&machine()));
        let _ = writeln!(out, "  \"lg_commit\": {},", json_string(&commit()));
        let _ = writeln!(out, "  \"guest_kernel\": {},", json_string(&self.kernel));
        let _ = writeln!(out, "  \"guest_mb\": {GUEST_MB},");
        let _ = writeln!(out, "  \"runs\": {},", self.runs);
        out.push_str("  \"columns\": [\n");
        for (i, column) in self.columns.iter().enumerate() {
            let _ = write!(
                out,
                "    {{\"key\": {}, \"title\": {}, \"command\": {}, \"unavailable\": {}}}",
                json_string(column.vmm.key),
                json_string(column.vmm.title),
                json_string(&column.command),
                column
                    .unavailable
                    .as_deref()
                    .map_or("null".to_string(), json_string)
            );
            out.push_str(if i + 1 < self.columns.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str("  ],\n  \"figures\": [\n");
        for (i, figure) in self.figures.iter().enumerate() {
            let _ = write!(
                out,
                "    {{\"key\": {}, \"title\": {}, \"unit\": {}, \"columns\": {{",
                json_string(figure.key),
                json_string(figure.title),
                json_string(figure.unit)
            );
            let mut first = true;
            for column in &self.columns {
                let key = column.vmm.key;
                let samples = figure.samples.get(key).cloned().unwrap_or_default();
                let ratio = match column.vmm == LG {
                    true => "null".to_string(),
                    false => json_number(figure.ratio(key)),
                };
                let _ = write!(
                    out,
                    "{}{}: {{\"median\": {}, \"ratio\": {ratio}, \"samples\": [{}]}}",
                    if first { "" } else { ", " },
                    json_string(key),
                    json_number(figure.median(key)),
                    samples
                        .iter()
                        .map(|s| json_number(Some(*s)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                first = false;
            }
            out.push_str("}}");
            out.push_str(if i + 1 < self.figures.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str("  ],\n");
        let _ = writeln!(
            out,
            "  \"testhost_read_mib_s\": {{\"median\": {}, \"samples\": [{}]}},",
            json_number(median(&self.host_read)),
            self.host_read
                .iter()
                .map(|s| json_number(Some(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "  \"failures\": [{}]",
            self.failures
                .iter()
                .map(|f| json_string(f.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push_str("}\n");
        out
    }

    /// Writes the JSON to `target/bench/<UTC time>.json` and `latest.json`;
    /// returns the first path.
    pub fn write_json(&self) -> Result<PathBuf, Error> {
        let dir = crate::target_dir().join("bench");
        fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        let json = self.json();
        let path = dir.join(format!("{}.json", utc_stamp(self.when)));
        for file in [&path, &dir.join("latest.json")] {
            fs::write(file, &json).context(|| format!("cannot write {}", show_path(file)))?;
        }
        Ok(path)
    }
}

fn cell(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{:.3}", v),
        _ => "null".to_string(),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// This machine in one line: CPU model, cores, kernel.
fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

/// The lg commit measured, `+dirty` when the tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        command::stdout_of(
            std::process::Command::new("git")
                .current_dir(crate::workspace_root())
                .args(args),
        )
        .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty();
    format!("{head}{}", if dirty { "+dirty" } else { "" })
}

/// `20260601T134502Z` for seconds since the epoch (UTC; file names sort by time).
fn utc_stamp(seconds: u64) -> String {
    let days = (seconds / 86400) as i64;
    let time = seconds % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_sort_by_time() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114T221320Z");
    }

    #[test]
    fn medians_and_ratios_come_from_the_bench_lines() {
        let output = "\
LG_BENCH boot lg 0 9000.0 9500.0 0
LG_BENCH boot lg 1 100.0 150.0 0
LG_BENCH boot lg 2 300.0 350.0 0
LG_BENCH boot pc 1 400.0 500.0 0
LG_BENCH mem lg 1 266240 262144 262144
LG_BENCH blk pc 1 67108864 0.5
LG_BENCH hostread 1 67108864 0.25
LG_BENCH fail pc 2 boot: no LG_GUEST_INIT_OK (exit status 137)
LG_BENCH_LOG pc qemu-system-x86_64: oops
";
        let options = Options {
            runs: 2,
            command: "cargo xtask bench".to_string(),
        };
        let report = Report::parse(output, &[LG, QEMU_PC], &options);
        let figure = |key: &str| report.figures.iter().find(|f| f.key == key).unwrap();
        // The warm-up (run 0) is left out.
        assert_eq!(figure("boot_init_ms").median("lg"), Some(200.0));
        assert_eq!(figure("boot_init_ms").ratio("pc"), Some(0.5));
        assert_eq!(figure("memory_overhead_mib").median("lg"), Some(4.0));
        assert_eq!(figure("block_read_mib_s").median("pc"), Some(128.0));
        assert_eq!(report.host_read, [256.0]);
        assert_eq!(report.failures.len(), 2);
        let table = report.table();
        assert!(table.contains("| figure"));
        // A Markdown table: number columns right-aligned.
        assert!(table.contains("-:|-"), "{table}");
        assert!(report.json().contains("\"median\": 200.000"));
    }

    #[test]
    fn the_script_runs_each_figure_for_each_hypervisor() {
        let text = script(&[LG, QEMU_PC, QEMU_MICROVM], 5);
        assert_eq!(text.matches("bench_boot lg ").count(), 6);
        assert_eq!(text.matches("bench_session microvm ").count(), 5);
        assert!(text.contains("'-M' microvm,pcie=on") || text.contains("microvm,pcie=on"));
        assert!(!text.contains("LIMIT") && !text.contains("DISK_MB"));
    }
}
