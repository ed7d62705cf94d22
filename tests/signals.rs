//! Signals: SIGTERM and SIGINT ask the guest to shut down (its ACPI power
//! button) and lg ends with it; a guest that ignores the button, or a
//! second signal, ends lg anyway within a bounded time; SIGHUP is ignored
//! only when lg was started with it ignored (`nohup`).
//!
//! One test host; each guest idles (`lgtest=idle`) in the background with
//! its console in a file, and the script signals lg and reports how it
//! ended:
//! - `term`: SIGTERM; the guest sees the button and powers off: status 0;
//! - `int-ignored`: SIGINT to a guest that ignores the button
//!   (`lgbutton=ignore`): lg ends by itself after its grace period, 3;
//! - `term-twice`: two SIGTERMs to such a guest: the second ends lg at
//!   once, 3, well before the grace period;
//! - seccomp (here because it needs a running lg): every thread of the
//!   `term` guest's lg is under a filter, and `LG_SECCOMP=test`, which
//!   makes one forbidden call after the filter is in, ends lg with status 2
//!   and a sentence naming the call.
//! - `nohup`: lg started with SIGHUP ignored (as `nohup` starts it)
//!   survives SIGHUP, then SIGTERM ends it.

use std::sync::OnceLock;

use lg_e2e::{script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

const BODY: &str = r#"
K="/kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 lgtest=idle"
# Starts a guest in the background with console in /tmp/$1.log and extra
# kernel words $2; waits for it to idle.
start() {
	lg run 256 $K $2 </dev/null >/tmp/$1.log 2>&1 &
	pid=$!
	tries=0
	until grep -q LG_IDLE /tmp/$1.log || [ $tries -ge 200 ]; do sleep 1; tries=$((tries + 1)); done
}
# Waits up to $2 seconds for process $1 to end; prints how long it took.
# (Not `kill -0`: an ended child stays a zombie until `wait`, and answers.)
running() { [ -e /proc/$1/status ] && ! grep -q '^State:.*Z' /proc/$1/status; }
ended_within() {
	waited=0
	while running $1 && [ $waited -lt $2 ]; do sleep 1; waited=$((waited + 1)); done
	echo $waited
}
report() {
	wait $pid
	status=$?
	echo "LG_SIGNALS $1 status=$status seconds=$2"
	sed "s/^/LG_CONSOLE_$1 /" /tmp/$1.log | grep -E 'lg: |LG_POWER_BUTTON' | head -5
}

start term ""
# While it runs: every thread of lg is under its seccomp filter (mode 2).
for task in /proc/$pid/task/*; do
	echo "LG_SECCOMP_THREAD $(cat $task/comm) $(sed -n 's/^Seccomp:[[:space:]]*//p' $task/status)"
done
kill -TERM $pid
report term $(ended_within $pid 60)

start int-ignored lgbutton=ignore
kill -INT $pid
report int-ignored $(ended_within $pid 60)

start term-twice lgbutton=ignore
kill -TERM $pid
sleep 1
kill -TERM $pid
report term-twice $(ended_within $pid 60)

# As nohup(1) does (busybox here has no nohup): SIGHUP ignored across exec.
LG_SECCOMP=test lg run 256 $K </dev/null >/tmp/seccomp.log 2>&1
echo "LG_SIGNALS seccomp-test status=$? seconds=0"
sed 's/^/LG_CONSOLE_seccomp-test /' /tmp/seccomp.log | grep 'lg: '

(trap '' HUP; exec lg run 256 $K </dev/null >/tmp/nohup.log 2>&1) &
pid=$!
tries=0
until grep -q LG_IDLE /tmp/nohup.log || [ $tries -ge 200 ]; do sleep 1; tries=$((tries + 1)); done
kill -HUP $pid
sleep 3
running $pid && echo "LG_NOHUP_SURVIVED_SIGHUP"
kill -TERM $pid
wait $pid
echo "LG_SIGNALS nohup status=$? seconds=0"
"#;

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        TestHost::new()
            .timeout(test_host_limit(5, 0))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(BODY))
            .map_err(|e| e.to_string())
    })
}

/// (status, seconds) of the run named `name`.
fn ended(name: &str) -> (i32, u64) {
    let output = &test_host().output;
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("LG_SIGNALS {name} ")))
        .unwrap_or_else(|| panic!("no report for `{name}`:\n{output}"));
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no {key} in `{line}`"))
    };
    (field("status=") as i32, field("seconds=") as u64)
}

fn console(name: &str) -> String {
    let prefix = format!("LG_CONSOLE_{name} ");
    test_host()
        .output
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sigterm_shuts_the_guest_down_through_its_power_button() {
    let (status, _) = ended("term");
    assert_eq!(status, 0, "{}", console("term"));
    assert!(
        console("term").contains("LG_POWER_BUTTON"),
        "{}",
        console("term")
    );
}

#[test]
fn a_guest_that_ignores_the_button_is_ended_after_the_grace_period() {
    let (status, seconds) = ended("int-ignored");
    assert_eq!(status, 3, "{}", console("int-ignored"));
    assert!(
        console("int-ignored").contains("did not shut down within"),
        "{}",
        console("int-ignored")
    );
    assert!(seconds < 60, "lg took {seconds} s");
}

#[test]
fn a_second_signal_ends_lg_at_once() {
    let (status, seconds) = ended("term-twice");
    assert_eq!(status, 3, "{}", console("term-twice"));
    // The grace period is 10 s; the second signal came 1 s after the first.
    assert!(seconds < 9, "lg took {seconds} s after the second signal");
}

#[test]
fn every_thread_is_confined_and_a_refused_call_ends_lg_in_one_sentence() {
    let output = &test_host().output;
    let threads: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("LG_SECCOMP_THREAD "))
        .collect();
    // The main thread, a vCPU, the signal, input and control threads at least.
    assert!(threads.len() >= 5, "{threads:?}");
    for thread in &threads {
        assert!(
            thread.ends_with(" 2"),
            "a thread without its filter: {thread}"
        );
    }
    assert!(
        threads.iter().any(|t| t.starts_with("vcpu0 ")),
        "{threads:?}"
    );
    let (status, _) = ended("seccomp-test");
    assert_eq!(status, 2, "{}", console("seccomp-test"));
    assert!(
        console("seccomp-test").contains("lg: seccomp refused system call 110"),
        "{}",
        console("seccomp-test")
    );
}

#[test]
fn under_nohup_sighup_is_ignored() {
    assert!(
        test_host().output.contains("LG_NOHUP_SURVIVED_SIGHUP"),
        "{}",
        test_host().output
    );
    assert_eq!(ended("nohup").0, 0);
}
