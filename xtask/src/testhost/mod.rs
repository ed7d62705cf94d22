//! The nested test host: a real KVM inside QEMU, where lg boots stock kernels.
//!
//! The machines lg is developed and tested on are VMs whose `/dev/kvm` is
//! `kvm_pvm`, which cannot run an unmodified kernel. QEMU's TCG emulates AMD
//! SVM, though, so a Debian kernel booted under `qemu-system-x86_64 -accel tcg
//! -cpu max` (less two features, see [`TESTHOST_CPU`]) loads `kvm-amd` and has
//! a real `/dev/kvm`. That kernel is the
//! "test host"; lg runs on it and boots the guest kit. The recipe and its
//! measurements are in /work/shared/notes/testing-on-these-machines.md.
//!
//! The test host's initramfs has two parts. The base (`target/testhost/base.cpio`)
//! is busybox, KVM's modules, `/bin/lg` with the glibc it links, and the guest
//! kit under `/kit`; it is repacked when lg or the kit changes, so tests always
//! test the current lg. Each run appends a tiny second archive holding the
//! command (`/testcmd`) and any extra files: the kernel unpacks concatenated
//! archives one after the other.
//!
//! A run reads QEMU's serial output line by line, echoes it, and waits for
//! the markers `/init` prints (`init.sh`). The command's exit status
//! comes from `LG_TESTHOST_STATUS=`, since QEMU's own says nothing about it.
//! A hard time limit kills QEMU, so a hung guest fails a test instead of
//! hanging it.
//!
//! The parts: `base` packs the reusable initramfs, `console` reads what the
//! test host prints, `qemu` picks the QEMU (Debian's, or another build named
//! by `LG_TESTHOST_QEMU` and `LG_TESTHOST_QEMU_DATA`: see there), and this
//! file boots QEMU for one run.

mod base;
mod console;
mod qemu;

/// The test host's CPU: all TCG can emulate (AMD SVM included) but the two
/// features that make Linux copy and clear memory with `rep movsb` and `rep
/// stosb` (ERMS, and FSRM for short copies). TCG runs a byte string
/// instruction a byte at a time, so with them the test host's kernel
/// cleared and copied pages at some 80 MB/s, and copying the kit's kernel
/// and initrd into guest RAM took 310 to 420 ms of lg's start-up; without
/// them Linux moves 8 bytes a store, and the same copy took 61 to 118 ms
/// (27 November, four boots each way in one test host). Guests inherit the
/// CPU's features, so their copies speed up too, QEMU's guests' as much as
/// lg's; a real CPU with ERMS does not have this cost.
pub const TESTHOST_CPU: &str = "max,-erms,-fsrm";

use std::fmt;
use std::fs;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub use base::{gdb_files, shared_libraries, Base, Lg};
pub use console::Echo;
pub use qemu::Qemu;

use crate::command;
use crate::cpio::Archive;
use crate::debian;
use crate::error::Context;
use crate::guest::Kit;
use crate::{progress, Error};
use console::{collect_stderr, read_console, KillOnDrop, Transcript, READY};

/// `quiet`, so the console carries the test's output rather than the test
/// host's boot; `panic=-1` (with QEMU's `-no-reboot`) so a crash ends the run.
const TESTHOST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// How long QEMU may take to power off after the command's status is in.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// `target/testhost/`.
pub fn dir() -> PathBuf {
    crate::target_dir().join("testhost")
}

/// A test host to run one command in; see the module documentation.
#[derive(Debug, Clone)]
pub struct TestHost {
    extra_files: Vec<(PathBuf, String)>,
    timeout: Duration,
    memory_mb: u32,
    cpus: u32,
    echo: Echo,
    lg: Lg,
    progress: Option<Progress>,
    expected_lost_guests: Option<usize>,
}

/// A run's promise to print a line holding `marker` at least every `every`
/// once the test host is ready (see [`TestHost::progress_every`]).
#[derive(Debug, Clone, Copy)]
struct Progress {
    marker: &'static str,
    every: Duration,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

/// What a finished run saw.
#[derive(Debug, Clone)]
pub struct TestHostRun {
    /// The command's exit status, from `LG_TESTHOST_STATUS=`.
    pub status: i32,
    /// Everything the test host's console printed, with `\r` removed.
    pub output: String,
    /// From starting QEMU to `LG_TESTHOST_READY`.
    pub ready_after: Option<Duration>,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

impl TestHostRun {
    /// The console lines, for `contains`-style checks.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.output.lines()
    }
}

/// Why a run gave no exit status.
#[derive(Debug, Clone)]
pub enum TestHostError {
    /// lg, the kit or the base is missing: the fix is `cargo xtask test`.
    NotPrepared(Error),
    /// Packing the run's initramfs or starting QEMU failed.
    Setup(Error),
    /// The test host came up without `/dev/kvm`.
    NoKvm { output: String },
    /// The time limit passed, or the run's progress line was `silent` for
    /// `limit`; QEMU was killed.
    TimedOut {
        limit: Duration,
        silent: Option<&'static str>,
        output: String,
    },
    /// QEMU ended without a status marker: the test host crashed or hung up.
    NoStatus {
        qemu: String,
        stderr: String,
        output: String,
    },
}

impl TestHostError {
    /// Everything the console printed before the failure.
    pub fn output(&self) -> &str {
        match self {
            TestHostError::NotPrepared(_) | TestHostError::Setup(_) => "",
            TestHostError::NoKvm { output }
            | TestHostError::TimedOut { output, .. }
            | TestHostError::NoStatus { output, .. } => output,
        }
    }

    /// Whether QEMU ended because the test host's own kernel panicked.
    pub fn test_host_panicked(&self) -> bool {
        matches!(self, TestHostError::NoStatus { qemu, output, .. }
            if qemu.starts_with("QEMU exit") && output.contains(TEST_HOST_PANIC))
    }

    /// Whether the run hit its time limit after the test host's own kernel
    /// said it had stopped making progress (an RCU stall, a soft lockup, a
    /// task blocked in the kernel for minutes), or was ended by its
    /// [`silence_limit`](TestHost::silence_limit): a test host whose every
    /// step has a shorter limit of its own has stopped altogether.
    pub fn test_host_stalled(&self) -> bool {
        self.test_host_went_silent()
            || matches!(self, TestHostError::TimedOut { output, .. }
                if TEST_HOST_STALL.iter().any(|warning| output.contains(warning)))
    }

    /// Whether the run's [`silence_limit`](TestHost::silence_limit) ended it.
    pub fn test_host_went_silent(&self) -> bool {
        matches!(
            self,
            TestHostError::TimedOut {
                silent: Some(ANY_LINE),
                ..
            }
        )
    }

    /// A panic, a stall or a silence of the test host's own kernel: see
    /// [`TestHost::run`] for why none is lg's.
    pub fn test_host_failed_by_itself(&self) -> bool {
        self.own_failure().is_some()
    }
}

/// What the test host's kernel prints as it panics (with `panic=-1` and
/// `-no-reboot`, QEMU then exits). A guest's panic inside lg prints the same
/// words, but lg then exits and the test host reports its status, so only
/// a run with no status counts.
const TEST_HOST_PANIC: &str = "Kernel panic - not syncing";

/// The progress marker of [`TestHost::silence_limit`]: every line holds it.
const ANY_LINE: &str = "";

/// What the test host's kernel prints when a CPU or a task stops making
/// progress: RCU's stall detector (`rcu: INFO: rcu_preempt detected stalls
/// on CPUs/tasks`, `... self-detected stall on CPU`), the soft-lockup
/// watchdog, and the hung-task detector. A guest inside lg prints the first
/// two too, but a guest that stalls does not stop lg's test from reaching
/// its status; only a run that then hit its limit counts.
const TEST_HOST_STALL: [&str; 3] = [
    "detected stall",
    "soft lockup - CPU#",
    " blocked for more than ",
];

/// Whether a console line is part of a kernel's report that it stopped
/// making progress: such a line is no sign of progress itself. (A test host
/// in CI printed RCU's two-line stall report every 63 s for 14 minutes and
/// nothing else, so that it never went silent.)
fn reports_a_stall(line: &str) -> bool {
    line.contains("rcu: ") || TEST_HOST_STALL.iter().any(|warning| line.contains(warning))
}

/// How many times [`TestHost::run`] boots a test host again after its own
/// kernel failed. A CI run once lost the first boot of a test host to an
/// RCU stall and its second to the stack-guard panic; a third boot makes
/// that about as rare again.
pub const BOOTS_AFTER_OWN_FAILURE: u32 = 2;

/// A failure of the test host's own, for which [`TestHost::run`] boots it
/// again: see there for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnFailure {
    Panic,
    Stall,
    Silence,
    /// More guests were lost (triple-faulted, or stopped until their lg
    /// was killed) than the run expected ([`TestHost::retry_lost_guests`]).
    LostGuests {
        lost: usize,
        expected: usize,
    },
}

impl OwnFailure {
    /// What `crashes.log` calls it.
    fn logged_as(self) -> &'static str {
        match self {
            OwnFailure::Panic => "test host kernel panic",
            OwnFailure::Stall => "test host kernel stall",
            OwnFailure::Silence => "test host kernel silence",
            OwnFailure::LostGuests { .. } => "test host lost guest",
        }
    }

    /// What happened, as the sentence that says it is booted again starts.
    fn told(self) -> String {
        match self {
            OwnFailure::Panic => "the test host's own kernel panicked".into(),
            OwnFailure::Stall => "the test host's own kernel stalled until the time limit".into(),
            OwnFailure::Silence => "the test host's own kernel went silent".into(),
            OwnFailure::LostGuests { lost, expected } => format!(
                "{lost} guest(s) were lost in the test host (triple-faulted, or stopped until \
                 lg was killed) where {expected} should have been (QEMU's emulated SVM loses \
                 one now and then, README, Reliability)"
            ),
        }
    }
}

impl TestHostError {
    /// Which failure of its own ended the test host, if one did.
    fn own_failure(&self) -> Option<OwnFailure> {
        if self.test_host_panicked() {
            Some(OwnFailure::Panic)
        } else if self.test_host_went_silent() {
            Some(OwnFailure::Silence)
        } else if self.test_host_stalled() {
            Some(OwnFailure::Stall)
        } else {
            None
        }
    }
}

/// Appends a retried boot to `target/testhost/crashes.log`, so that their
/// rate stays visible after the run that retried them passed.
fn record_retry(shell_command: &str, failure: OwnFailure, output: &str) {
    use std::io::Write;
    let path = dir().join("crashes.log");
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let first_line = shell_command.lines().next().unwrap_or("");
    let entry = format!(
        "--- {} at {when} (Unix time), retried; command began: {first_line}{}\n",
        failure.logged_as(),
        tail(output)
    );
    let _ = fs::create_dir_all(dir());
    if let Ok(mut log) = fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = log.write_all(entry.as_bytes());
    }
}

/// What lg prints when its guest triple-faulted (`crates/switcher`).
const TRIPLE_FAULT: &str = "lg: the guest triple-faulted";

/// What a script prints when it killed an lg at its time limit, its guest
/// having stopped (the end-to-end tests' prelude does, `tests/lib.rs`).
pub const GUEST_STOPPED: &str = "LG_GUEST_STOPPED ";

/// Whether a console line tells of a guest lost: one that triple-faulted,
/// or one whose lg had to be killed at its time limit.
fn tells_of_a_lost_guest(line: &str) -> bool {
    line.contains(TRIPLE_FAULT) || line.starts_with(GUEST_STOPPED)
}

/// What is left of the whole run's time `limit`, counted from `started`.
fn limit_left(limit: Option<Duration>, started: Instant) -> Duration {
    limit.map_or(Duration::MAX, |limit| {
        limit.saturating_sub(started.elapsed())
    })
}

/// The last lines of a console transcript, to end an error message with.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(25);
    lines[start..]
        .iter()
        .map(|l| format!("\n    | {l}"))
        .collect()
}

impl fmt::Display for TestHostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestHostError::NotPrepared(e) => write!(f, "the test host is not ready: {e}"),
            TestHostError::Setup(e) => write!(f, "cannot start the test host: {e}"),
            TestHostError::NoKvm { output } => write!(
                f,
                "the test host has no /dev/kvm (kvm-amd did not load under QEMU's emulated SVM); \
                 its console ended with:{}",
                tail(output)
            ),
            TestHostError::TimedOut {
                limit,
                silent,
                output,
            } => {
                let seconds = limit.as_secs();
                let why = match silent {
                    None => format!("ran past its {seconds} s limit"),
                    Some(ANY_LINE) if output.lines().any(reports_a_stall) => {
                        format!("printed nothing but stall warnings for {seconds} s")
                    }
                    Some(ANY_LINE) => format!("printed nothing for {seconds} s"),
                    Some(marker) => format!("printed no `{marker}` line for {seconds} s"),
                };
                write!(
                    f,
                    "the test host {why} and was killed; its console ended with:{}",
                    tail(output)
                )
            }
            TestHostError::NoStatus {
                qemu,
                stderr,
                output,
            } => {
                write!(
                    f,
                    "the test host ended ({qemu}) without reporting the command's exit status, \
                     so it crashed or powered off early; its console ended with:{}",
                    tail(output)
                )?;
                if !stderr.trim().is_empty() {
                    write!(f, "\n  QEMU said: {}", stderr.trim())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for TestHostError {}

impl From<Error> for TestHostError {
    fn from(e: Error) -> Self {
        TestHostError::Setup(e)
    }
}

impl TestHost {
    /// 4 GiB, 2 CPUs, 300 s, console echoed line by line, lg required.
    pub fn new() -> Self {
        TestHost {
            extra_files: Vec::new(),
            timeout: Duration::from_secs(300),
            memory_mb: 4096,
            cpus: 2,
            echo: Echo::Lines,
            lg: Lg::Required,
            progress: None,
            expected_lost_guests: None,
        }
    }

    /// Ends the run as timed out when, once the test host is ready, no
    /// console line holding `marker` comes for `every`: for a long run
    /// that reports each step (the soak's cycles), so that a test host
    /// that stalled is found in minutes rather than at a limit sized for
    /// the whole run.
    pub fn progress_every(mut self, marker: &'static str, every: Duration) -> Self {
        self.progress = Some(Progress { marker, every });
        self
    }

    /// Ends the run when, once the test host is ready, its console prints
    /// nothing at all for `quiet`, and counts that as the test host's own
    /// failure ([`run`](Self::run) boots it again). A kernel's stall
    /// warnings do not count as lines here. For a script each
    /// of whose steps has a shorter limit of its own (the end-to-end tests'
    /// `timeout -s KILL` around every lg), so that only a test host that
    /// stopped can be silent that long. Replaces
    /// [`progress_every`](Self::progress_every).
    pub fn silence_limit(self, quiet: Duration) -> Self {
        self.progress_every(ANY_LINE, quiet)
    }

    /// Counts a run in which more than `expected` guests were lost as the
    /// test host's own failure too: [`run`](Self::run) boots it again. A
    /// guest is lost when lg says it triple-faulted, or when the script
    /// says it killed lg at a time limit (a line starting
    /// [`GUEST_STOPPED`]). QEMU's emulated SVM now and then corrupts a
    /// guest right after an emulated port access (seen at `io_serial_in`
    /// and `io_serial_out`, the UART's, README, Reliability), which then
    /// triple-faults or spins where it cannot wake (with the test host's
    /// own `rip` and `CR3`), for no fault of lg's. A triple fault or a hang
    /// that lg causes comes back on every boot and is still reported. For
    /// scripts whose every guest is expected to live but for `expected`
    /// that are made to triple-fault or hang (the end-to-end tests).
    pub fn retry_lost_guests(mut self, expected: usize) -> Self {
        self.expected_lost_guests = Some(expected);
        self
    }

    /// Puts the file or directory `host` at `inside` in the test host.
    pub fn file(mut self, host: impl Into<PathBuf>, inside: &str) -> Self {
        self.extra_files.push((host.into(), inside.to_string()));
        self
    }

    /// The hard time limit for the whole run, boot included.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// The test host's memory; a guest needs its own size plus some headroom.
    pub fn memory_mb(mut self, megabytes: u32) -> Self {
        self.memory_mb = megabytes;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn echo(mut self, echo: Echo) -> Self {
        self.echo = echo;
        self
    }

    /// Whether a missing `target/release/lg` stops the run (it does by default).
    pub fn lg(mut self, lg: Lg) -> Self {
        self.lg = lg;
        self
    }

    /// Boots a test host, runs `shell_command` with `sh` on its console, and
    /// returns its exit status and everything the console printed.
    ///
    /// Uses what `cargo xtask test` prepared (lg, the kit, Debian's kernel)
    /// and never runs cargo: `cargo test` holds the build directory's lock.
    ///
    /// A test host that fails by itself is booted again, twice at most
    /// ([`BOOTS_AFTER_OWN_FAILURE`]), and the last boot's result is
    /// returned. QEMU's emulated SVM, rarely, leaves the test host's kernel
    /// in a state it cannot survive (seen: a page fault in the world switch
    /// that recursed until the stack guard page, once in some hundred
    /// boots), which says nothing about lg and would fail every test
    /// sharing that host. lg is a user process there and cannot panic that
    /// kernel by itself; a crash that lg did cause through a KVM bug comes
    /// back, fails every boot, and is reported. The same defect also stalls
    /// the test host's kernel instead (a CPU found spinning in the world
    /// switch with interrupts lost, RCU stall warnings every minute until
    /// the time limit), so a run that hit its limit after such warnings is
    /// booted again too; and it stops a test host altogether (both vCPUs
    /// halted, QEMU idle, not one more line), which a run with a
    /// [`silence_limit`](Self::silence_limit) counts the same (stall
    /// warnings are not lines there, so a stalled host is ended at that
    /// limit too). With [`retry_lost_guests`](Self::retry_lost_guests), a
    /// run that lost more guests than it expected is booted again as
    /// well. Every retry is logged in
    /// `target/testhost/crashes.log` with the console that showed it.
    pub fn run(&self, shell_command: &str) -> Result<TestHostRun, TestHostError> {
        let base = self.base()?;
        let boots = 1 + BOOTS_AFTER_OWN_FAILURE;
        let mut boot = 1;
        loop {
            let result = self.boot(&base, Some(shell_command), false);
            let failure = match &result {
                Ok(run) => self.lost_guests(run),
                Err(error) => error.own_failure(),
            };
            match failure {
                Some(failure) if boot < boots => {
                    let output = match &result {
                        Ok(run) => &run.output,
                        Err(error) => error.output(),
                    };
                    progress(format!(
                        "testhost: {}, so the test host is booted once more (boot {} of at \
                         most {boots}); boot {boot}'s console ended with:{}",
                        failure.told(),
                        boot + 1,
                        tail(output)
                    ));
                    record_retry(shell_command, failure, output);
                    boot += 1;
                }
                _ => return result,
            }
        }
    }

    /// A run that lost more guests than
    /// [`retry_lost_guests`](Self::retry_lost_guests) allowed.
    fn lost_guests(&self, run: &TestHostRun) -> Option<OwnFailure> {
        let expected = self.expected_lost_guests?;
        let lost = run
            .lines()
            .filter(|line| tells_of_a_lost_guest(line))
            .count();
        (lost > expected).then_some(OwnFailure::LostGuests { lost, expected })
    }

    /// [`run`](Self::run) without booting once more after the test host's
    /// own kernel panicked: for a caller that goes on from where the
    /// crashed host stopped rather than from the start (`cargo xtask
    /// soak`). The crash is still logged in `target/testhost/crashes.log`.
    pub fn run_once(&self, shell_command: &str) -> Result<TestHostRun, TestHostError> {
        let base = self.base()?;
        let run = self.boot(&base, Some(shell_command), false);
        if let Err(crash) = &run {
            if let Some(failure) = crash.own_failure() {
                record_retry(shell_command, failure, crash.output());
            }
        }
        run
    }

    /// Boots a test host on this terminal: its console is stdin and stdout,
    /// with no time limit. Runs `shell_command` if given (its status is
    /// returned), else an interactive shell (no status).
    pub fn interactive(&self, shell_command: Option<&str>) -> Result<Option<i32>, TestHostError> {
        let base = self.base()?;
        match self.boot(&base, shell_command, true) {
            Ok(run) => Ok(Some(run.status)),
            Err(TestHostError::NoStatus { .. }) if shell_command.is_none() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn base(&self) -> Result<Base, TestHostError> {
        let packages = debian::fetched().map_err(TestHostError::NotPrepared)?;
        let kit = Kit::existing().map_err(TestHostError::NotPrepared)?;
        Base::ensure(&packages, &kit, self.lg).map_err(|e| match self.lg {
            Lg::Required if !crate::lg_binary().is_file() => TestHostError::NotPrepared(e),
            _ => TestHostError::Setup(e),
        })
    }

    fn boot(
        &self,
        base: &Base,
        shell_command: Option<&str>,
        interactive: bool,
    ) -> Result<TestHostRun, TestHostError> {
        let chosen = Qemu::chosen()?;
        let _slot = Slot::acquire();
        let initrd = RunInitrd::create(base, shell_command, &self.extra_files)?;

        let mut qemu = chosen.command();
        qemu.args(["-accel", "tcg", "-cpu", TESTHOST_CPU])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            // The recipe's -nographic, spelled out without one side effect:
            // with graphics off, SeaBIOS writes to the serial port too,
            // terminal resets (ESC c) included, which would clear the
            // user's terminal and litter every transcript. The serial port
            // keeps QEMU's monitor multiplexed in (Ctrl-A X quits).
            .args(["-display", "none", "-vga", "none", "-serial", "mon:stdio"])
            .args(["-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&base.bzimage)
            .arg("-initrd")
            .arg(&initrd.path)
            .args(["-append", TESTHOST_CMDLINE])
            .stdin(if interactive {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If xtask is killed (a `timeout`, a cancelled CI job), QEMU must not
        // live on as an orphan burning two CPUs until its own time runs out.
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the prctl system call, which is async-signal-safe and uses
        // no memory shared with the parent.
        unsafe {
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        progress(format!(
            "testhost: booting the test host ({}, TCG with nested SVM)...",
            chosen.binary.display()
        ));
        let started = Instant::now();
        let mut child =
            KillOnDrop(qemu.spawn().map_err(|e| {
                Error::new(format!("cannot start {}: {e}", chosen.binary.display()))
            })?);
        let echo = if interactive { Echo::Raw } else { self.echo };
        let (lines, stdout_reader) = read_console(&mut child.0, echo)?;
        let stderr_reader = collect_stderr(&mut child.0, echo == Echo::Raw);

        let limit = (!interactive).then_some(self.timeout);
        let mut transcript = Transcript::default();
        // When the run was killed for a time limit, how long it had run.
        let mut timed_out_after: Option<Duration> = None;
        let watch = self.progress.filter(|_| limit.is_some());
        // Counted from the test host's readiness, then from each progress line.
        let mut last_progress: Option<Instant> = None;
        loop {
            let progress_wait = match (watch, last_progress) {
                (Some(watch), Some(last)) => Some(watch.every.saturating_sub(last.elapsed())),
                _ => None,
            };
            let whole_wait = limit_left(limit, started);
            let wait = match (transcript.status, limit) {
                (Some(_), _) => POWEROFF_GRACE.saturating_sub(transcript.since_status()),
                (None, Some(_)) => progress_wait.map_or(whole_wait, |wait| wait.min(whole_wait)),
                (None, None) => Duration::from_secs(3600),
            };
            match lines.recv_timeout(wait) {
                Ok(line) => {
                    if watch
                        .is_some_and(|watch| line.contains(watch.marker) && !reports_a_stall(&line))
                    {
                        last_progress = Some(Instant::now());
                    }
                    if transcript.add(line, started) == Some(READY) {
                        last_progress = Some(Instant::now());
                        if let Some(ready) = transcript.ready_after {
                            progress(format!(
                                "testhost: ready after {:.1} s",
                                ready.as_secs_f64()
                            ));
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if transcript.status.is_none() && limit.is_some() {
                        timed_out_after = Some(started.elapsed());
                        break;
                    }
                    if transcript.status.is_some() {
                        // The status is in; QEMU just would not power off.
                        break;
                    }
                }
            }
        }
        // A run killed for a time limit is killed now: a stopped test host
        // would only use up the grace a powering-off one is given.
        let exit = child.finish(if timed_out_after.is_some() {
            Duration::ZERO
        } else if transcript.status.is_some() {
            POWEROFF_GRACE
        } else {
            Duration::from_secs(10)
        });
        let _ = stdout_reader.join();
        let stderr = stderr_reader.join().unwrap_or_default();
        let elapsed = started.elapsed();
        let output = transcript.lines.join("\n");

        if let Some(after) = timed_out_after {
            // Killed before the whole run's limit: at the progress deadline.
            let silent = after < self.timeout;
            return Err(match watch {
                Some(watch) if silent => TestHostError::TimedOut {
                    limit: watch.every,
                    silent: Some(watch.marker),
                    output,
                },
                _ => TestHostError::TimedOut {
                    limit: self.timeout,
                    silent: None,
                    output,
                },
            });
        }
        if transcript.no_kvm {
            return Err(TestHostError::NoKvm { output });
        }
        match transcript.status {
            Some(status) => Ok(TestHostRun {
                status,
                output,
                ready_after: transcript.ready_after,
                elapsed,
            }),
            None => Err(TestHostError::NoStatus {
                qemu: match exit {
                    Some(status) => format!("QEMU {status}"),
                    None => "QEMU did not exit and was killed".to_string(),
                },
                stderr,
                output,
            }),
        }
    }
}

/// A run's initramfs: the base, then the run's own archive. Deleted on drop.
struct RunInitrd {
    path: PathBuf,
}

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl RunInitrd {
    fn create(
        base: &Base,
        shell_command: Option<&str>,
        extra_files: &[(PathBuf, String)],
    ) -> Result<RunInitrd, Error> {
        let mut archive = Archive::new();
        if let Some(script) = shell_command {
            archive.file("/testcmd", 0o755, format!("{script}\n").as_bytes());
        }
        for (host, inside) in extra_files {
            add_host_path(&mut archive, host, inside)?;
        }
        let mut bytes = fs::read(&base.initramfs)
            .context(|| format!("cannot read {}", base.initramfs.display()))?;
        // The kernel only looks for the next archive's magic at a 4-byte
        // boundary; zeros between archives are skipped.
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(&archive.finish());

        let runs = dir().join("runs");
        fs::create_dir_all(&runs).context(|| format!("cannot create {}", runs.display()))?;
        remove_abandoned_runs(&runs);
        let path = runs.join(format!(
            "{}-{}.cpio",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, bytes).context(|| format!("cannot write {}", path.display()))?;
        Ok(RunInitrd { path })
    }
}

impl Drop for RunInitrd {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes run initramfs left by processes that died without cleaning up
/// (a killed `cargo test`), which would otherwise pile up at ~40 MB each.
/// Names are `<pid>-<n>.cpio`; a run whose process is alive is left alone.
fn remove_abandoned_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, _)) = name.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Adds a file, symlink or directory tree from this machine at `inside`.
fn add_host_path(archive: &mut Archive, host: &Path, inside: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(host)
        .context(|| format!("cannot add {} to the test host", host.display()))?;
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(host).context(|| format!("cannot read link {}", host.display()))?;
        archive.symlink(inside, &target.to_string_lossy());
    } else if meta.is_dir() {
        archive.dir(inside, mode);
        let mut entries: Vec<_> = fs::read_dir(host)
            .context(|| format!("cannot list {}", host.display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            add_host_path(
                archive,
                &entry.path(),
                &format!("{}/{name}", inside.trim_end_matches('/')),
            )?;
        }
    } else if meta.is_file() {
        let bytes = fs::read(host).context(|| format!("cannot read {}", host.display()))?;
        archive.file(inside, mode, &bytes);
    } else {
        return Err(Error::new(format!(
            "{} is neither a file, a directory nor a symlink, so it cannot go into the test host",
            host.display()
        )));
    }
    Ok(())
}

/// A place in the queue of test hosts: each one is an emulated machine that
/// keeps `-smp` host CPUs busy, so running more than the machine has cores
/// only makes every run slower (and nearer its time limit).
struct Slot;

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl Slot {
    fn acquire() -> Slot {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let limit = (cores / 2).max(1);
        let (count, freed) = &SLOTS;
        let mut running = count.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= limit {
            running = freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (count, freed) = &SLOTS;
        let mut running = count.lock().unwrap_or_else(|e| e.into_inner());
        *running = running.saturating_sub(1);
        freed.notify_one();
    }
}

/// Whether stdin is a terminal, for choosing the interactive test host.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Prepares everything a test host needs from this machine: the guest kit,
/// Debian's kernel and busybox, and the base (lg as `lg` says).
pub fn prepare(lg: Lg) -> Result<Base, Error> {
    command::ensure_debian_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    let kit = Kit::prepare()?;
    let packages = if debian::apt_available() {
        debian::fetch()?
    } else {
        debian::fetched().map_err(|_| {
            Error::new(
                "the test host boots Debian's cloud kernel and its kvm-amd module, \
                 and this machine has no apt-get to fetch them",
            )
        })?
    };
    Base::ensure(&packages, &kit, lg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_status(qemu: &str, output: &str) -> TestHostError {
        TestHostError::NoStatus {
            qemu: qemu.to_string(),
            stderr: String::new(),
            output: output.to_string(),
        }
    }

    #[test]
    fn only_a_test_host_that_panicked_and_exited_is_booted_again() {
        let panicked = "LG_TESTHOST_READY\n[ 28.5] BUG: TASK stack guard page was hit\n\
                        [ 29.0] Kernel panic - not syncing: corrupted stack end detected";
        assert!(no_status("QEMU exit status: 0", panicked).test_host_panicked());
        // Killed after a hang: not a panic of the test host's own.
        assert!(!no_status("QEMU did not exit and was killed", panicked).test_host_panicked());
        assert!(!no_status("QEMU signal: 9 (SIGKILL)", panicked).test_host_panicked());
        // Powered off early without a panic: a real failure.
        assert!(!no_status("QEMU exit status: 0", "LG_TESTHOST_READY\n").test_host_panicked());
        // A run with a status never gets here, and other errors never retry.
        let timed_out = TestHostError::TimedOut {
            limit: Duration::from_secs(1),
            silent: None,
            output: panicked.to_string(),
        };
        assert!(!timed_out.test_host_panicked());
    }

    #[test]
    fn only_a_run_that_hit_its_limit_after_a_stall_warning_is_booted_again() {
        let timed_out = |output: &str| TestHostError::TimedOut {
            limit: Duration::from_secs(1),
            silent: None,
            output: output.to_string(),
        };
        for warning in [
            "[ 118.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[ 118.2] rcu: INFO: rcu_preempt self-detected stall on CPU",
            "[ 140.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [vcpu0:93]",
            "[ 245.9] INFO: task vcpu0:93 blocked for more than 122 seconds.",
        ] {
            let stalled = timed_out(&format!("LG_TESTHOST_READY\n{warning}\n"));
            assert!(stalled.test_host_stalled(), "{warning}");
            assert!(stalled.test_host_failed_by_itself(), "{warning}");
        }
        // A run that hit its limit with no such warning is lg's (or the
        // test's) hang: reported at once.
        assert!(!timed_out("LG_TESTHOST_READY\nlg: waiting\n").test_host_failed_by_itself());
        // A stall the test host came through, in a run that ended with a
        // status, never gets here; one in a run that ended without a status
        // but no panic is not retried either.
        let stalled_then_powered_off = no_status(
            "QEMU exit status: 0",
            "LG_TESTHOST_READY\n[ 118.2] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n",
        );
        assert!(!stalled_then_powered_off.test_host_failed_by_itself());

        // A run ended for want of progress lines counts the same way.
        let silent = |output: &str| TestHostError::TimedOut {
            limit: Duration::from_secs(450),
            silent: Some("LG_SOAK "),
            output: output.to_string(),
        };
        let stalled = silent("[ 193.4] watchdog: BUG: soft lockup - CPU#1 stuck for 26s!\n");
        assert!(stalled.test_host_stalled());
        assert!(stalled
            .to_string()
            .starts_with("the test host printed no `LG_SOAK ` line for 450 s and was killed"));
        assert!(!silent("LG_SOAK kill 3 found=1\n").test_host_stalled());
    }

    #[test]
    fn a_test_host_that_fell_silent_is_booted_again_and_says_so() {
        // As net.rs's test host did in CI: a guest triple-faulted, then both
        // of the test host's vCPUs halted and not one more line came.
        let fell_silent = TestHostError::TimedOut {
            limit: Duration::from_secs(360),
            silent: Some(ANY_LINE),
            output: "LG_TESTHOST_READY\nLG_E2E_BEGIN tunnet\nLG_NET_SERVING\n".to_string(),
        };
        assert!(fell_silent.test_host_failed_by_itself());
        assert!(fell_silent.test_host_went_silent());
        assert!(!fell_silent.test_host_panicked());
        assert!(fell_silent
            .to_string()
            .starts_with("the test host printed nothing for 360 s and was killed"));
        // One that printed only stall warnings (CI, inspect.rs's first
        // boot) says so.
        let stalled = TestHostError::TimedOut {
            limit: Duration::from_secs(360),
            silent: Some(ANY_LINE),
            output: "LG_TESTHOST_READY\n\
                     [ 56.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
                     [ 56.5] rcu: \t0-...0: (122 ticks this GP) softirq=724/726\n"
                .to_string(),
        };
        assert!(stalled.test_host_went_silent());
        assert!(stalled.to_string().starts_with(
            "the test host printed nothing but stall warnings for 360 s and was killed"
        ));
        let host = TestHost::new().silence_limit(Duration::from_secs(360));
        let watch = host.progress.expect("a silence limit watches the console");
        assert!(["LG_TESTHOST_READY", "[ 2.5] virtio_blk", ""]
            .iter()
            .all(|line| line.contains(watch.marker)));
    }

    fn finished(output: &str) -> TestHostRun {
        TestHostRun {
            status: 1,
            output: output.to_string(),
            ready_after: None,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_run_that_lost_more_guests_than_expected_is_booted_again() {
        let one_lost = finished(
            "LG_E2E_BEGIN boot\n[ 1.2] Linux version 6.1.0\n\
             lg: the guest triple-faulted on vCPU 0 (last RIP 0xffffffff8170c3a5)\n\
             LG_E2E_END boot 2\n",
        );
        let none_lost = finished("LG_E2E_BEGIN boot\nLG_GUEST_INIT_OK\nLG_E2E_END boot 0\n");
        // Not asked for: never.
        assert_eq!(TestHost::new().lost_guests(&one_lost), None);
        let none_expected = TestHost::new().retry_lost_guests(0);
        assert_eq!(
            none_expected.lost_guests(&one_lost),
            Some(OwnFailure::LostGuests {
                lost: 1,
                expected: 0
            })
        );
        assert_eq!(none_expected.lost_guests(&none_lost), None);
        let one_stopped = finished(
            "LG_E2E_BEGIN boot\nLG_E2E_HUNG boot still running 10 s before its 120 s limit\n\
             \nLG_GUEST_STOPPED boot: lg was killed at its 120 s limit\nLG_E2E_END boot 137\n",
        );
        assert_eq!(
            none_expected.lost_guests(&one_stopped),
            Some(OwnFailure::LostGuests {
                lost: 1,
                expected: 0
            })
        );
        // Only at the start of a line, as the prelude prints it.
        assert_eq!(
            none_expected.lost_guests(&finished("echo LG_GUEST_STOPPED boot\n")),
            None
        );
        // firmware.rs makes one guest triple-fault on purpose.
        assert_eq!(
            TestHost::new().retry_lost_guests(1).lost_guests(&one_lost),
            None
        );
        let told = OwnFailure::LostGuests {
            lost: 1,
            expected: 0,
        }
        .told();
        assert!(told.starts_with("1 guest(s) were lost in the test host (triple-faulted, or"));
        assert_eq!(
            OwnFailure::LostGuests {
                lost: 1,
                expected: 0
            }
            .logged_as(),
            "test host lost guest"
        );
    }

    #[test]
    fn each_failure_of_the_test_hosts_own_is_named_once() {
        let panicked = no_status(
            "QEMU exit status: 0",
            "[ 29.0] Kernel panic - not syncing: corrupted stack end detected",
        );
        assert_eq!(panicked.own_failure(), Some(OwnFailure::Panic));
        let stalled = TestHostError::TimedOut {
            limit: Duration::from_secs(930),
            silent: None,
            output: "[ 56.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:".into(),
        };
        assert_eq!(stalled.own_failure(), Some(OwnFailure::Stall));
        let silent = TestHostError::TimedOut {
            limit: Duration::from_secs(360),
            silent: Some(ANY_LINE),
            output: "[ 56.5] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:".into(),
        };
        assert_eq!(silent.own_failure(), Some(OwnFailure::Silence));
        assert_eq!(no_status("QEMU exit status: 0", "").own_failure(), None);
        for (failure, logged) in [
            (OwnFailure::Panic, "test host kernel panic"),
            (OwnFailure::Stall, "test host kernel stall"),
            (OwnFailure::Silence, "test host kernel silence"),
        ] {
            assert_eq!(failure.logged_as(), logged);
        }
    }

    #[test]
    fn stall_warnings_are_not_progress() {
        for report in [
            "[   56.547763] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[   56.549423] rcu: \t0-...0: (122 ticks this GP) idle=5c64/1/0x4000000000000000",
            "[  118.2] rcu: INFO: rcu_preempt self-detected stall on CPU",
            "[  140.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [vcpu0:93]",
            "[  245.9] INFO: task vcpu0:93 blocked for more than 122 seconds.",
        ] {
            assert!(reports_a_stall(report), "{report}");
        }
        for progress in [
            "LG_TESTHOST_READY",
            "LG_E2E_BEGIN inspect",
            "[    2.5] virtio_blk virtio1: [vda] 8192 512-byte logical blocks",
            "",
        ] {
            assert!(!reports_a_stall(progress), "{progress}");
        }
    }
}
