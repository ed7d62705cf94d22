//! lg's end-to-end tests: what a user does, done by the real lg on real kernels.
//!
//! Each test file boots one nested test host (see xtask's `testhost`
//! module: QEMU emulating AMD SVM, so its `/dev/kvm` runs stock kernels,
//! which this machine's `kvm_pvm` cannot) and runs a shell script in it that
//! calls lg several times: a test host takes 10-20 s to boot under emulation,
//! so the checks that can share one do. The script marks each lg run
//! (`lg_case NAME ARGS...`) on the console; the `#[test]` functions of the
//! file each take one case from the shared transcript ([`cases`]) and check
//! it, so a failure still names the one behaviour that broke.
//!
//! Inside the test host lg is `/bin/lg` and the guest kit is `/kit/bzImage`
//! and `/kit/initrd.cpio.gz`; the guest's `/init` prints `LG_GUEST_INIT_OK`
//! and obeys `lgtest=poweroff|reboot|meminfo|nproc` (xtask/src/guest-init.sh).
//!
//! Run them with `cargo xtask test`, which first builds lg, the kit and the
//! test host; the tests themselves never run cargo.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Shell functions every script starts with.
///
/// `lg_case NAME ARGS...` runs `lg ARGS` with the console as its terminal,
/// between `LG_E2E_BEGIN NAME` and `LG_E2E_END NAME STATUS`.
/// `lg_fail NAME ARGS...` does the same with lg's stderr captured, each line
/// printed as `LG_E2E_STDERR <line>`, for runs that must be refused.
/// Each lg gets a time limit of its own (killed: status 137), so one hung
/// guest fails its case and not the whole file: `lg_e2e_lg LIMIT NAME
/// ARGS...` runs it so for `lg_case` and for scripts that need their own
/// redirections (the hostile case). 10 s before the limit, a watcher
/// beside lg (`lg_e2e_watch`) prints every running guest's registers and
/// exit counts, and where each of lg's threads waits in the kernel, as
/// `LG_E2E_HUNG NAME ...` lines, so a case that hung shows whether its
/// guest was spinning or halted, or lg was stuck; an lg killed at its
/// limit then gets a `LG_GUEST_STOPPED NAME` line, which
/// `TestHost::retry_lost_guests` counts as a lost guest.
/// The script exits with the first non-zero `lg_case` status.
const PRELUDE: &str = r#"
lg_case_limit=LG_CASE_LIMIT
lg_fail_limit=LG_FAIL_LIMIT
lg_e2e_status=0
lg_e2e_watch() {
	trap 'kill $lg_e2e_sleep 2>/dev/null; exit 0' TERM
	sleep $(($1 - 10)) &
	lg_e2e_sleep=$!
	wait $lg_e2e_sleep
	printf '\nLG_E2E_HUNG %s still running 10 s before its %s s limit\n' "$2" "$1"
	for sock in /run/lg/*.sock; do
		[ -S "$sock" ] || continue
		guest=${sock##*/}
		guest=${guest%.sock}
		{ timeout 5 lg regs "$guest"; timeout 5 lg stat "$guest"; } 2>&1 |
			sed "s/^/LG_E2E_HUNG $2 $guest /"
	done
	for pid in $(pidof lg); do
		for task in /proc/$pid/task/*; do
			echo "lg $pid thread ${task##*/} $(cat $task/comm)" \
				"$(sed -n 's/^State:\t//p' $task/status) in $(cat $task/wchan)"
		done
	done 2>&1 | sed "s/^/LG_E2E_HUNG $2 /"
}
lg_e2e_lg() {
	lg_e2e_limit=$1 lg_e2e_name=$2
	shift 2
	lg_e2e_watch $lg_e2e_limit "$lg_e2e_name" &
	lg_e2e_watcher=$!
	timeout -s KILL $lg_e2e_limit lg "$@"
	lg_e2e_lg_status=$?
	kill $lg_e2e_watcher 2>/dev/null
	wait $lg_e2e_watcher 2>/dev/null
	[ $lg_e2e_lg_status = 137 ] &&
		printf '\nLG_GUEST_STOPPED %s: lg was killed at its %s s limit\n' "$lg_e2e_name" $lg_e2e_limit
	return $lg_e2e_lg_status
}
lg_case() {
	name=$1; shift
	echo "LG_E2E_BEGIN $name"
	lg_e2e_lg $lg_case_limit "$name" "$@"
	status=$?
	printf '\nLG_E2E_END %s %s\n' "$name" "$status"
	[ "$lg_e2e_status" = 0 ] && lg_e2e_status=$status
	return 0
}
lg_fail() {
	name=$1; shift
	echo "LG_E2E_BEGIN $name"
	timeout -s KILL $lg_fail_limit lg "$@" </dev/null 2>/tmp/lg-e2e.stderr
	status=$?
	sed 's/^/LG_E2E_STDERR /' /tmp/lg-e2e.stderr
	printf '\nLG_E2E_END %s %s\n' "$name" "$status"
}
"#;

/// How long one `lg_case` may take: a guest boots in 10-30 s in the test host.
pub const CASE_LIMIT: Duration = Duration::from_secs(120);

/// How long one `lg_fail` may take: refusing bad input should be instant.
pub const FAIL_LIMIT: Duration = Duration::from_secs(60);

/// A test-host script: the prelude, `body`, and the exit status rule.
pub fn script(body: &str) -> String {
    let prelude = PRELUDE
        .replace("LG_CASE_LIMIT", &CASE_LIMIT.as_secs().to_string())
        .replace("LG_FAIL_LIMIT", &FAIL_LIMIT.as_secs().to_string());
    format!("{prelude}\n{body}\nexit $lg_e2e_status\n")
}

/// The time limit for a test host running `cases` lg_case and `fails`
/// lg_fail runs: enough for each to use its own limit, plus the boot, so a
/// hung guest is reported as its case rather than as a killed test host.
pub fn test_host_limit(cases: u32, fails: u32) -> Duration {
    Duration::from_secs(90) + CASE_LIMIT * cases + FAIL_LIMIT * fails
}

/// How long a test host may print nothing before it counts as stopped
/// (`TestHost::silence_limit`): longer than any step of any script may be
/// quiet (every lg runs under a limit of its own, [`CASE_LIMIT`] or
/// [`FAIL_LIMIT`]; the longest other step, the hostile guest's, under
/// 300 s), so only a test host whose emulated CPUs stopped (seen in CI: both
/// halted, QEMU idle) is this quiet. `TestHost::run` then boots it again,
/// minutes before its whole limit would have come. (Every file also asks
/// for `TestHost::retry_lost_guests`: a guest the emulated SVM lost, to
/// a triple fault or a hang, is not lg's failure either.)
pub const SILENCE_LIMIT: Duration = Duration::from_secs(360);

/// The one test-host run a file's tests share, in `run`: started by
/// `start` for whichever test asks first. A run that could not be started
/// fails every test that asks, each with the reason.
pub fn start_once<T>(
    run: &'static OnceLock<Result<T, String>>,
    start: impl FnOnce() -> Result<T, String>,
) -> &'static T {
    match run.get_or_init(start) {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `run` with a scratch copy of the disk image `image`, named after
/// `name`, and removes the copy afterwards: a guest that writes to its disk
/// must not write to the kit's.
pub fn with_copy_of<T>(
    image: &Path,
    name: &str,
    run: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, String> {
    let copy = std::env::temp_dir().join(format!("lg-e2e-{name}-{}.img", std::process::id()));
    std::fs::copy(image, &copy).map_err(|e| format!("cannot copy {}: {e}", image.display()))?;
    let result = run(&copy);
    let _ = std::fs::remove_file(&copy);
    result
}

/// What a program run on this machine, not in a test host, left.
pub struct Outcome {
    /// None: killed after its time limit, or by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` on this machine with no input and its output captured,
/// killing it once it has run for `limit`.
pub fn run_here(command: &mut Command, limit: Duration) -> Outcome {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    // Both pipes read at once, so that neither fills while lg writes the
    // other.
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if started.elapsed() < limit => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// `lg` arguments that boot the guest kit with `memory_mb` MiB of RAM and
/// `kernel_args` appended to the usual command line.
pub fn boot_kit(memory_mb: u32, kernel_args: &str) -> String {
    format!(
        "run {memory_mb} /kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 \
         {kernel_args}"
    )
}

/// Status when `timeout -s KILL` stopped lg: 128 + SIGKILL.
pub const KILLED_BY_TIMEOUT: i32 = 137;

/// One lg run from a script's transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    /// lg's exit status; `None` if the transcript ends inside the case.
    pub status: Option<i32>,
    /// Console lines between the markers: the guest's serial output and,
    /// for `lg_case`, lg's own stderr.
    pub console: Vec<String>,
    /// lg's stderr lines, for `lg_fail`.
    pub stderr: Vec<String>,
}

impl Case {
    /// Whether any console line contains `needle`.
    pub fn printed(&self, needle: &str) -> bool {
        self.console.iter().any(|line| line.contains(needle))
    }

    /// What follows `marker` on the first console line holding it, up to
    /// the marker's next appearance on that line.
    pub fn text_after(&self, marker: &str) -> Option<&str> {
        self.console
            .iter()
            .find_map(|line| line.split(marker).nth(1))
    }

    /// The number right after the first `marker` on the console
    /// (`LG_MEMTOTAL_KB=` → 249856).
    pub fn number_after(&self, marker: &str) -> Option<u64> {
        self.console.iter().find_map(|line| {
            let at = line.find(marker)?;
            let digits: String = line[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
    }

    pub fn timed_out(&self) -> bool {
        self.status == Some(KILLED_BY_TIMEOUT)
    }

    /// The case, told for an assertion message: status, stderr, the end of
    /// the console.
    pub fn describe(&self) -> String {
        let status = match self.status {
            None => "no exit status (the test host ended inside this case)".to_string(),
            Some(KILLED_BY_TIMEOUT) => "killed by its time limit (status 137)".to_string(),
            Some(status) => format!("exit status {status}"),
        };
        let mut text = format!("case `{}`: {status}", self.name);
        if !self.stderr.is_empty() {
            text.push_str("\n  stderr:");
            for line in &self.stderr {
                text.push_str(&format!("\n    {line}"));
            }
        }
        let start = self.console.len().saturating_sub(40);
        if !self.console.is_empty() {
            text.push_str(&format!(
                "\n  console (last {} lines):",
                self.console.len() - start
            ));
            for line in &self.console[start..] {
                text.push_str(&format!("\n    | {line}"));
            }
        }
        text
    }
}

/// Splits a transcript into its cases, in order.
pub fn cases(transcript: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut open: Option<Case> = None;
    for line in transcript.lines() {
        if let Some(at) = line.find("LG_E2E_BEGIN ") {
            if let Some(unfinished) = open.take() {
                cases.push(unfinished);
            }
            open = Some(Case {
                name: line[at + "LG_E2E_BEGIN ".len()..].trim().to_string(),
                status: None,
                console: Vec::new(),
                stderr: Vec::new(),
            });
        } else if let Some(at) = line.find("LG_E2E_END ") {
            let mut words = line[at + "LG_E2E_END ".len()..].split_whitespace();
            let (name, status) = (words.next(), words.next());
            match open.take() {
                Some(mut case) if Some(case.name.as_str()) == name => {
                    case.status = status.and_then(|s| s.parse().ok());
                    cases.push(case);
                }
                other => open = other,
            }
        } else if let Some(case) = open.as_mut() {
            match line.strip_prefix("LG_E2E_STDERR ") {
                Some(stderr) => case.stderr.push(stderr.to_string()),
                None => case.console.push(line.to_string()),
            }
        }
    }
    if let Some(unfinished) = open {
        cases.push(unfinished);
    }
    for case in &mut cases {
        // printf's leading newline before the end marker leaves one empty line.
        if case.console.last().is_some_and(|l| l.is_empty()) {
            case.console.pop();
        }
    }
    cases
}

/// The lines of `transcript` that start with `prefix ` (what a script's
/// `show PREFIX command` or `show_file PREFIX file` printed), without it
/// and without the console's trailing white space.
pub fn shown(transcript: &str, prefix: &str) -> Vec<String> {
    let marker = format!("{prefix} ");
    transcript
        .lines()
        .filter_map(|line| line.strip_prefix(&marker).map(|l| l.trim_end().to_string()))
        .collect()
}

/// What follows `marker` on the first line of `transcript` that has it,
/// trimmed: `LG_SYNC_ADDR=` gives the address the script printed after it.
pub fn value(transcript: &str, marker: &str) -> Option<String> {
    transcript.lines().find_map(|line| {
        let at = line.find(marker)?;
        Some(line[at + marker.len()..].trim().to_string())
    })
}

/// Whether lg's refusal `line` names `culprit`: as a substring for paths and words, as a
/// whole token for numbers (so `0` is not found inside `0x1000000`).
pub fn names(line: &str, culprit: &str) -> bool {
    if culprit.chars().all(|c| c.is_ascii_digit()) {
        line.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|token| token == culprit)
    } else {
        line.contains(culprit)
    }
}

/// The case called `name`, or a panic that shows the whole transcript's end.
pub fn case(transcript: &str, name: &str) -> Case {
    match cases(transcript).into_iter().find(|c| c.name == name) {
        Some(case) => case,
        None => {
            let lines: Vec<&str> = transcript.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n    | ");
            panic!("the test host never ran case `{name}`; its console ended with:\n    | {tail}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSCRIPT: &str = "\
LG_TESTHOST_READY
LG_E2E_BEGIN poweroff
[    0.000000] Linux version 6.1.0-56-cloud-amd64
LG_GUEST_INIT_OK
LG_MEMTOTAL_KB=233412
[    2.1] LG_MEMTOTAL_KB=233412

LG_E2E_END poweroff 0
LG_E2E_BEGIN missing-kernel
LG_E2E_STDERR lg: /tmp/nope: No such file or directory

LG_E2E_END missing-kernel 1
LG_E2E_BEGIN hung
[    1.0] something
LG_E2E_END hung 137
LG_E2E_BEGIN crashed
half a line";

    #[test]
    fn splits_a_transcript_into_cases() {
        let cases = cases(TRANSCRIPT);
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["poweroff", "missing-kernel", "hung", "crashed"]);

        assert_eq!(cases[0].status, Some(0));
        assert!(cases[0].printed("Linux version"));
        assert!(cases[0].printed("LG_GUEST_INIT_OK"));
        assert_eq!(cases[0].number_after("LG_MEMTOTAL_KB="), Some(233412));
        assert_eq!(cases[0].console.len(), 4);

        assert_eq!(cases[1].status, Some(1));
        assert_eq!(
            cases[1].stderr,
            ["lg: /tmp/nope: No such file or directory"]
        );
        assert!(cases[1].console.is_empty());

        assert!(cases[2].timed_out());
        assert_eq!(cases[3].status, None);
        assert!(cases[3].describe().contains("no exit status"));
    }

    #[test]
    fn scripts_start_with_the_prelude_and_exit_with_the_first_failure() {
        let script = script("lg_case x run 1 k");
        assert!(script.contains("lg_case() {"));
        assert!(script.contains("lg_case_limit=120\n"));
        assert!(!script.contains("LG_CASE_LIMIT"));
        assert!(script.trim_end().ends_with("exit $lg_e2e_status"));
        assert_eq!(
            boot_kit(256, "lgtest=poweroff"),
            "run 256 /kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 \
             lgtest=poweroff"
        );
    }

    #[test]
    fn a_program_run_here_leaves_its_status_and_both_outputs() {
        let mut sh = Command::new("sh");
        let outcome = run_here(
            sh.args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        );
        assert_eq!(outcome.status, Some(3));
        assert_eq!(
            (outcome.stdout.as_str(), outcome.stderr.as_str()),
            ("out\n", "err\n")
        );
    }

    #[test]
    fn a_program_run_here_past_its_limit_is_killed() {
        let outcome = run_here(Command::new("sleep").arg("60"), Duration::from_millis(50));
        assert_eq!(outcome.status, None);
    }

    #[test]
    fn shown_lines_and_values_are_found_by_their_markers() {
        let transcript = "LG_PS NAME PID\nLG_PS alpha 42  \nLG_PSX no\nboot: LG_ADDR= 0xffff \n";
        assert_eq!(shown(transcript, "LG_PS"), ["NAME PID", "alpha 42"]);
        assert_eq!(value(transcript, "LG_ADDR="), Some("0xffff".into()));
        assert_eq!(value(transcript, "LG_NONE="), None);
    }

    #[test]
    fn a_number_is_named_only_as_a_whole_token() {
        assert!(names("lg: memory 0 MiB is too small", "0"));
        assert!(!names("lg: 0x1000000 is taken", "0"));
        assert!(names(
            "lg: /tmp/no-such-kernel: not found",
            "no-such-kernel"
        ));
        assert!(names("lg: guest memory must be at least 1 MiB, not 0", "0"));
        assert!(!names("lg: the kernel loads at 0x1000000", "0"));
        assert!(names(
            "lg: /tmp/kernel.txt is not a kernel",
            "/tmp/kernel.txt"
        ));
    }
}
