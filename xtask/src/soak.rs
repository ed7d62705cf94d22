//! `cargo xtask soak`: lg's reliability, counted rather than assumed.
//!
//! Two soaks, both inside one nested test host, not part of CI at these
//! counts (each takes tens of minutes on these machines; twenty kill cycles
//! do run in CI, from `tests/durability.rs` through [`run_in_test_host`]):
//!
//! - **Kill soak** (crash consistency): a guest boots from a copy of the
//!   kit's `rootfs.ext4`, counts up in a file on it, syncing after every
//!   value and saying `LG_SYNCED=<n>` on its console (`lgtest=syncloop` in
//!   `guest-init.sh`); lg is killed with SIGKILL at a random moment after
//!   the first sync. Then, on a copy of the image, `e2fsck -fy` replays the
//!   journal (as the next mount would) and a second `e2fsck -fn` must find
//!   nothing; and the next cycle's guest must find a counter at least the
//!   last value the killed guest reported synced. A cycle passes when both
//!   hold.
//! - **Boot soak**: boot the kit to `/init` and power off, again and again;
//!   a boot passes when the guest printed `LG_GUEST_INIT_OK` and lg exited 0.
//!
//! Every failing cycle prints the end of its console, so a failure can be
//! understood, not just counted. A test host whose own kernel panics (the
//! emulated platform's failure, not lg's) does not end the soak: it goes on
//! in a new test host from the cycle the crash interrupted, and the result
//! names each such crash (see [`run`]).
//!
//! Two options help tell lg's failures from the test host's:
//!
//! - `--control qemu` boots the same kit with Debian's QEMU (`-M pc`, on the
//!   test host's KVM) instead of lg in the boot soak: the failure rate of
//!   the nested, emulated platform itself, which lg's own rate is to be
//!   read against.
//! - `--trace` records the test host KVM's trace events (`kvm:*`) during
//!   each cycle and boot, and a failing one prints the last of them that
//!   differ from all before: the exits, injected interrupts and exceptions
//!   that led to it, and a loop of exits as its few distinct events.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::testhost::{shared_libraries, Echo, TestHost};
use crate::{progress, Error, Kit};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soak {
    pub kills: u32,
    pub boots: u32,
    /// Boot with QEMU instead of lg (the boot soak only).
    pub control: Boot,
    /// Keep the test host KVM's trace events for each cycle and boot,
    /// printed for a failing one.
    pub trace: bool,
    /// The test host's vCPUs (`TestHost`'s default, 2, unless given).
    /// One vCPU means no interrupt ever crosses between test-host CPUs,
    /// which tells a failure of QEMU's emulation under cross-CPU
    /// interrupts from one that comes without them.
    pub cpus: Option<u32>,
    /// The kill cycles' console: the 16550 (the default) or the virtio
    /// console. The boots always print on the 16550: `/init`'s first line,
    /// which they wait for, comes before the virtio console's module loads.
    pub console: Console,
}

/// Where lg's guests print their kernel messages and `/init`'s lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// `console=ttyS0`: every byte is a port write the host emulates.
    Serial,
    /// `console=hvc0`: a line is one virtqueue notification. The emulated
    /// platform's defect (the README's reliability section) strikes just
    /// after emulated port accesses, and this makes a guest do thousands
    /// fewer of them, which tells a failure that needs them from one that
    /// does not.
    Virtio,
}

impl Console {
    fn kernel_argument(self) -> &'static str {
        match self {
            Console::Serial => "console=ttyS0",
            Console::Virtio => "console=hvc0",
        }
    }
}

/// Which hypervisor the boot soak boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    Lg,
    /// QEMU's `pc` machine on the test host's KVM: the control.
    Qemu,
}

/// The boot soak's command for lg ($K is the kit's kernel and arguments).
const LG_BOOT: &str = "lg run 256 $K lgtest=poweroff";

/// The same boot with QEMU: the bench's `-M pc` boot, plus `-no-reboot`,
/// which makes a triple fault end QEMU (with status 0, like a power-off:
/// the check on the kernel's last line in the script tells the two apart).
fn qemu_boot() -> String {
    let mut words = crate::bench::qemu_pc_boot(256);
    words.insert(1, "-no-reboot".to_string());
    crate::shell::join(&words)
}

/// The test host's script: the kill cycles, then the boots, each reported
/// on a `LG_SOAK` line.
const SCRIPT: &str = r#"
# Not quiet: a guest that fails early leaves its last kernel messages in
# the console tail below (on the serial port, whose bytes are kept in
# KVM's ring, they cost little; on hvc0 they are replayed once the virtio
# console is up, so a guest that fails before that shows none). The boots
# stay on the serial port whatever --console says: their /init marker is
# printed before the virtio console's module is loaded.
K="/kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1"
KILL_K="/kit/bzImage --initrd=/kit/initrd.cpio.gz @CONSOLE@ panic=-1"
# Whether process $1 is still running: busybox's `kill -0` also says yes
# to a zombie, which an lg that ended on its own is until `wait`.
running() {
	grep -q '^State:[[:space:]]*[^Z]' /proc/$1/status 2>/dev/null
}
# Waits up to $3 tenths of a second for /tmp/cycle.out to match $1, or for
# lg ($2) to end without it (a guest that crashed at boot).
wait_for() {
	waited=0
	while ! grep -q "$1" /tmp/cycle.out && [ $waited -lt $3 ] && running $2; do
		sleep 0.1
		waited=$((waited + 1))
	done
}
console_tail() {
	tail -n 25 /tmp/cycle.out | sed "s/^/LG_SOAK_CONSOLE $1 /"
}
# --trace: the test host KVM's events, from the start of each cycle or
# boot. Not overwritten when full: a guest stuck in a loop of exits fills
# any buffer within seconds, and what led into the loop is what matters.
# 64 MiB a CPU holds several whole boots.
T=/sys/kernel/tracing
trace=@TRACE@
if [ $trace = yes ]; then
	mount -t tracefs nodev $T 2>/dev/null
	echo 65536 >$T/buffer_size_kb
	echo 0 >$T/options/overwrite
	echo 1 >$T/events/kvm/enable
fi
# The last 300 events that differ from every earlier one (task, CPU and
# time aside): a loop shows as its few distinct events, after what came
# just before it. The unmapping of guest RAM as the VM is torn down is
# left out.
trace_tail() {
	if [ $trace = yes ]; then
		grep -v kvm_unmap_hva_range $T/trace |
			awk '{ k = $0; sub(/^.*[0-9]: kvm_/, "kvm_", k); if (!seen[k]++) print }' |
			tail -n 300 | sed "s/^/LG_SOAK_TRACE $1 /"
	fi
}
previous=0
cycle=1
while [ $cycle -le KILLS ]; do
	[ $trace = yes ] && : >$T/trace
	# Emptied here, not only by the redirection below: that happens in the
	# background child, and wait_for could otherwise still read the last
	# cycle's LG_SYNCED and kill this lg before its guest had started.
	: >/tmp/cycle.out
	lg run --block=/disk/root.img 256 $KILL_K lgtest=syncloop </dev/null >/tmp/cycle.out 2>&1 &
	pid=$!
	wait_for 'LG_SYNCED=\|LG_MOUNT_FAILED' $pid 3000
	sleep $((RANDOM % 2)).$((RANDOM % 10))
	kill -9 $pid
	wait $pid 2>/dev/null
	# Only whole lines count: the kill can cut the last one short, and
	# `LG_SYNCED=1` cut from `LG_SYNCED=1008` would be taken for 1. A
	# last line without its newline is dropped (`$(...)` strips a final
	# newline, so the test is empty exactly when the file ends in one).
	if [ -n "$(tail -c 1 /tmp/cycle.out)" ]; then
		sed '$d' /tmp/cycle.out >/tmp/cycle.lines
	else
		cp /tmp/cycle.out /tmp/cycle.lines
	fi
	found=$(grep -o 'LG_FOUND=[0-9]*' /tmp/cycle.lines | head -n 1 | cut -d= -f2)
	synced=$(grep -o 'LG_SYNCED=[0-9]*' /tmp/cycle.lines | tail -n 1 | cut -d= -f2)
	cp /disk/root.img /tmp/check.img
	e2fsck -fy /tmp/check.img >/tmp/fsck1.out 2>&1
	replay=$?
	e2fsck -fn /tmp/check.img >/tmp/fsck2.out 2>&1
	check=$?
	echo "LG_SOAK kill $cycle found=${found:-none} previous=$previous synced=${synced:-none} replay=$replay check=$check"
	if [ -z "$found" ] || [ -z "$synced" ] || [ "$found" -lt "$previous" ] || [ $check != 0 ]; then
		console_tail $cycle
		sed "s/^/LG_SOAK_FSCK $cycle /" /tmp/fsck2.out | tail -n 10
		trace_tail $cycle
	fi
	[ -n "$synced" ] && previous=$synced
	cycle=$((cycle + 1))
done
boot=1
while [ $boot -le BOOTS ]; do
	[ $trace = yes ] && : >$T/trace
	timeout -s KILL 300 BOOT_COMMAND </dev/null >/tmp/cycle.out 2>&1
	status=$?
	init=no
	grep -q LG_GUEST_INIT_OK /tmp/cycle.out && init=yes
	# The kernel's own last word: a guest that crashed after /init (QEMU
	# ends with status 0 then too) never says it.
	down=no
	grep -q 'reboot: Power down' /tmp/cycle.out && down=yes
	echo "LG_SOAK boot $boot status=$status init=$init down=$down"
	if [ $status != 0 ] || [ $init != yes ] || [ $down != yes ]; then
		console_tail boot-$boot
		trace_tail boot-$boot
	fi
	boot=$((boot + 1))
done
"#;

/// One kill cycle's result, from its `LG_SOAK kill` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillCycle {
    pub found: Option<u64>,
    pub previous: u64,
    pub synced: Option<u64>,
    pub check: i32,
}

impl KillCycle {
    /// The guest mounted its disk, found at least what was synced before,
    /// synced again, and the filesystem checks clean after journal replay.
    pub fn passed(&self) -> bool {
        self.found.is_some_and(|found| found >= self.previous)
            && self.synced.is_some()
            && self.check == 0
    }
}

/// The two soaks' lines, parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Results {
    pub kills: Vec<KillCycle>,
    /// Each boot: passed or not.
    pub boots: Vec<bool>,
}

pub fn parse(output: &str) -> Results {
    let mut results = Results::default();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("LG_SOAK ") else {
            continue;
        };
        let field = |key: &str| -> Option<&str> {
            rest.split_whitespace().find_map(|w| w.strip_prefix(key))
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok());
        if rest.starts_with("kill ") {
            results.kills.push(KillCycle {
                found: number("found="),
                previous: number("previous=").unwrap_or(0),
                synced: number("synced="),
                check: field("check=").and_then(|v| v.parse().ok()).unwrap_or(-1),
            });
        } else if rest.starts_with("boot ") {
            results.boots.push(
                field("status=") == Some("0")
                    && field("init=") == Some("yes")
                    && field("down=") == Some("yes"),
            );
        }
    }
    results
}

/// The longest a healthy test host goes between two `LG_SOAK` result
/// lines: a kill or boot cycle's share of the whole limit, with margin.
const CYCLE_SILENCE_LIMIT: Duration = Duration::from_secs(450);

/// How often the test host's own kernel may panic in one soak before the
/// soak gives up: that often says the platform cannot run it now.
const HOST_PANICS_ALLOWED: usize = 3;

impl Results {
    fn append(&mut self, mut more: Results) {
        self.kills.append(&mut more.kills);
        self.boots.append(&mut more.boots);
    }
}

/// How one test host's share of a soak ended.
enum Segment {
    /// The script ran to its end.
    Finished(Results),
    /// The test host's own kernel panicked (or stalled until the time
    /// limit): what it had judged by then, and the end of its console.
    HostPanicked {
        judged: Results,
        console_end: String,
    },
}

/// Runs the soaks and prints the counts; the status is 0 only when every
/// cycle and boot passed.
///
/// The nested platform itself fails now and then: QEMU's emulated SVM has
/// left the test host's own kernel in a state it cannot survive (a fault in
/// the world switch that recursed until the stack guard page), at a random
/// moment, more often the busier the machine. That ends the test host and
/// every cycle with it, says nothing about lg (a user process there), and
/// would make a 100-cycle soak a matter of luck. So the soak goes on in a
/// new test host, with a fresh copy of the image, from the cycle or boot
/// the crash interrupted (which is not counted: nothing was left to judge
/// it by), says so, and names every such crash in its result.
pub fn run(soak: Soak) -> Result<i32, Error> {
    let mut results = Results::default();
    let mut host_panics: Vec<String> = Vec::new();
    loop {
        let rest = Soak {
            kills: soak.kills.saturating_sub(results.kills.len() as u32),
            boots: soak.boots.saturating_sub(results.boots.len() as u32),
            ..soak
        };
        match run_segment(rest)? {
            Segment::Finished(judged) => {
                results.append(judged);
                break;
            }
            Segment::HostPanicked {
                judged,
                console_end,
            } => {
                results.append(judged);
                let during = interrupted(soak, &results);
                progress(format!(
                    "soak: the test host's own kernel panicked or stalled during {during}; the soak goes on \
                     from there in a new test host, with a fresh copy of the image. The \
                     console ended with:\n{console_end}"
                ));
                host_panics.push(during);
                if host_panics.len() >= HOST_PANICS_ALLOWED {
                    return Err(Error::new(format!(
                        "soak: the test host's own kernel panicked {} times (during {}); this \
                         platform cannot run the soak now",
                        host_panics.len(),
                        host_panics.join(", ")
                    )));
                }
            }
        }
    }
    let kills_passed = results.kills.iter().filter(|c| c.passed()).count();
    let boots_passed = results.boots.iter().filter(|&&b| b).count();
    println!(
        "kill soak: {kills_passed}/{} cycles passed (synced data found after SIGKILL, e2fsck clean after journal replay)",
        soak.kills
    );
    let with = match soak.control {
        Boot::Lg => "lg",
        Boot::Qemu => "QEMU -M pc (the control)",
    };
    println!(
        "boot soak: {boots_passed}/{} boots with {with} reached /init and powered off",
        soak.boots
    );
    if !host_panics.is_empty() {
        println!(
            "the test host's own kernel panicked {} time(s), during {}: each was run again in a \
             new test host and is not counted",
            host_panics.len(),
            host_panics.join(", ")
        );
    }
    let all = kills_passed == soak.kills as usize && boots_passed == soak.boots as usize;
    Ok(if all { 0 } else { 1 })
}

/// The cycle or boot a crash interrupted, counting from the soak's start,
/// when `results` were judged before it: the kill cycles run first.
fn interrupted(soak: Soak, results: &Results) -> String {
    if (results.kills.len() as u32) < soak.kills {
        format!("kill cycle {}", results.kills.len() + 1)
    } else {
        format!("boot {}", results.boots.len() + 1)
    }
}

/// Runs `soak` in one test host, with no second boot if its kernel panics.
fn run_segment(soak: Soak) -> Result<Segment, Error> {
    let image = disk_image()?;
    let run = test_host(soak, Echo::Stderr, &image).map(|(host, script)| host.run_once(&script));
    let _ = fs::remove_file(&image);
    match run? {
        Ok(run) => Ok(Segment::Finished(parse(&run.output))),
        Err(crash) if crash.test_host_failed_by_itself() => {
            let output = crash.output();
            let lines: Vec<&str> = output.lines().collect();
            let console_end = lines[lines.len().saturating_sub(20)..]
                .iter()
                .map(|line| format!("    | {line}"))
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Segment::HostPanicked {
                judged: parse(output),
                console_end,
            })
        }
        Err(e) => Err(Error::new(e.to_string())),
    }
}

/// Runs the soaks in one test host, its console echoed as `echo` says, and
/// gives each cycle's result with the whole console (where a failing
/// cycle's `LG_SOAK_CONSOLE` and `LG_SOAK_FSCK` lines are). The end-to-end
/// test `tests/durability.rs` runs a short kill soak through this too; a
/// test host whose kernel panics is booted once more and runs it all again
/// ([`TestHost::run`]).
pub fn run_in_test_host(soak: Soak, echo: Echo) -> Result<(Results, String), Error> {
    let image = disk_image()?;
    let run = test_host(soak, echo, &image)
        .and_then(|(host, script)| host.run(&script).map_err(|e| Error::new(e.to_string())));
    let _ = fs::remove_file(&image);
    let run = run?;
    Ok((parse(&run.output), run.output))
}

/// A fresh copy of the kit's root filesystem for the kill cycles.
fn disk_image() -> Result<PathBuf, Error> {
    let image = std::env::temp_dir().join(format!("lg-soak-{}.img", std::process::id()));
    fs::copy(Kit::rootfs(), &image)
        .map_err(|e| Error::new(format!("cannot copy {}: {e}", Kit::rootfs().display())))?;
    Ok(image)
}

/// The test host (with `image` as `/disk/root.img`, e2fsck and, for the
/// control, QEMU) and the script for `soak`.
fn test_host(soak: Soak, echo: Echo, image: &Path) -> Result<(TestHost, String), Error> {
    let kit = Kit::existing()?;
    let e2fsck = crate::command::find_in_path("e2fsck")
        .ok_or_else(|| Error::new("e2fsck is not installed here (apt-get install e2fsprogs)"))?;
    let mut host = TestHost::new();
    if let Some(cpus) = soak.cpus {
        host = host.cpus(cpus);
    }
    let mut host = host
        .file(image, "/disk/root.img")
        .echo(echo)
        .timeout(Duration::from_secs(
            120 + 330 * u64::from(soak.kills) + 300 * u64::from(soak.boots),
        ))
        // A test host that stalls (see `TestHost::run`) is found within one
        // cycle's time, not at the end of the hours a 100-cycle limit allows.
        .progress_every("LG_SOAK ", CYCLE_SILENCE_LIMIT);
    for library in shared_libraries(&e2fsck)? {
        // The file itself, not the symlink most library names are: a run's
        // archive keeps symlinks as symlinks, and a relative one pointing
        // nowhere in the test host would replace a working library (the
        // dynamic loader's name is one).
        let file = fs::canonicalize(&library)
            .map_err(|e| Error::new(format!("cannot find {}: {e}", library.display())))?;
        host = host.file(&file, &library.to_string_lossy());
    }
    let e2fsck = fs::canonicalize(&e2fsck)
        .map_err(|e| Error::new(format!("cannot find {}: {e}", e2fsck.display())))?;
    host = host.file(&e2fsck, "/bin/e2fsck");
    let boot_command = match soak.control {
        Boot::Lg => LG_BOOT.to_string(),
        Boot::Qemu => {
            for (from, inside) in crate::bench::qemu_files()? {
                host = host.file(&from, &inside);
            }
            qemu_boot()
        }
    };
    let script = script(soak, &boot_command);
    let cpus = soak
        .cpus
        .map_or(String::new(), |cpus| format!(" with {cpus} vCPU(s)"));
    progress(format!(
        "soak: {} kill cycles (guests on {}) and {} boots of {} in one test host{cpus}",
        soak.kills,
        soak.console.kernel_argument(),
        soak.boots,
        kit.kernel_version
    ));
    Ok((host, script))
}

/// [`SCRIPT`] for `soak`, its boots running `boot_command`.
fn script(soak: Soak, boot_command: &str) -> String {
    SCRIPT
        .replace("KILLS", &soak.kills.to_string())
        .replace("BOOTS", &soak.boots.to_string())
        .replace("BOOT_COMMAND", boot_command)
        .replace("@TRACE@", if soak.trace { "yes" } else { "no" })
        .replace("@CONSOLE@", soak.console.kernel_argument())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_boots_are_read_and_judged() {
        let output = "\
LG_SOAK kill 1 found=0 previous=0 synced=7 replay=1 check=0
LG_SOAK kill 2 found=7 previous=7 synced=9 replay=1 check=0
LG_SOAK kill 3 found=none previous=9 synced=none replay=0 check=0
LG_SOAK kill 4 found=3 previous=9 synced=5 replay=1 check=0
LG_SOAK kill 5 found=9 previous=9 synced=12 replay=1 check=4
LG_SOAK boot 1 status=0 init=yes down=yes
LG_SOAK boot 2 status=137 init=yes down=yes
LG_SOAK boot 3 status=0 init=yes down=no
noise";
        let results = parse(output);
        let passed: Vec<bool> = results.kills.iter().map(KillCycle::passed).collect();
        assert_eq!(passed, [true, true, false, false, false]);
        assert_eq!(results.boots, [true, false, false]);
    }

    #[test]
    fn console_hvc0_moves_the_kill_cycles_and_leaves_the_boots_on_the_serial_port() {
        let soak = Soak {
            kills: 3,
            boots: 2,
            control: Boot::Lg,
            trace: false,
            cpus: None,
            console: Console::Virtio,
        };
        let text = script(soak, LG_BOOT);
        let kernel = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in the script"))
                .to_string()
        };
        assert!(kernel("KILL_K").contains(" console=hvc0 "), "{text}");
        assert!(kernel("K").contains(" console=ttyS0 "), "{text}");
        assert!(text.contains("256 $KILL_K lgtest=syncloop"), "{text}");
        assert!(text.contains("lg run 256 $K lgtest=poweroff"), "{text}");
        let serial = script(
            Soak {
                console: Console::Serial,
                ..soak
            },
            LG_BOOT,
        );
        assert!(
            !serial.contains("console=hvc0") && !serial.contains("@CONSOLE@"),
            "{serial}"
        );
    }

    #[test]
    fn a_crash_is_placed_in_the_cycle_or_boot_it_interrupted() {
        let soak = Soak {
            kills: 100,
            boots: 5,
            control: Boot::Lg,
            trace: false,
            cpus: None,
            console: Console::Serial,
        };
        let cycle = "LG_SOAK kill 1 found=0 previous=0 synced=3 replay=0 check=0\n";
        let first_host = parse(&cycle.repeat(59));
        assert_eq!(interrupted(soak, &first_host), "kill cycle 60");
        let mut after = first_host.clone();
        after.append(parse(&cycle.repeat(41)));
        after.append(parse("LG_SOAK boot 1 status=0 init=yes down=yes\n"));
        assert_eq!(interrupted(soak, &after), "boot 2");
    }

    #[test]
    fn the_control_is_the_benchs_pc_boot_that_ends_at_a_triple_fault() {
        let command = qemu_boot();
        assert!(
            command.starts_with("/usr/bin/qemu-system-x86_64 -no-reboot "),
            "{command}"
        );
        assert!(command.contains("-M pc "), "{command}");
        assert!(
            command.ends_with("-append 'console=ttyS0 panic=-1 lgtest=poweroff'"),
            "{command}"
        );
    }
}
