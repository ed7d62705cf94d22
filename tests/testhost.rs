//! The test host's guard against its own failures, shown on a real one.
//!
//! QEMU's emulated SVM sometimes stops the test host altogether: both of
//! its vCPUs halted, not one more console line, or one CPU stuck and the
//! other printing RCU's stall warning every minute and nothing else
//! (README, Reliability). The end-to-end tests give their test hosts a
//! silence limit (`lg_e2e::SILENCE_LIMIT`), in which stall warnings do not
//! count as lines; it ends such a run long before its whole limit and
//! boots the test host again. Here a script that prints nothing but stall
//! warnings plays the stalled host: it must be ended at the silence limit,
//! not at its whole limit, booted again as often as `TestHost::run`
//! allows, reported with the limit that ended it, and logged in
//! `target/testhost/crashes.log` once for each boot that was retried.
//!
//! The same emulated SVM now and then loses a guest to a triple fault
//! right after a port access (README, Reliability), so the tests also ask
//! `TestHost::retry_lost_guests`: a run in which more guests triple-faulted
//! than expected is booted again. Here a guest made to triple-fault (Linux's
//! `reboot=t` resets by a triple fault) must be booted three times, with
//! two log entries, and its third run returned for the test to judge.
//!
//! A guest may also stop where it cannot wake. `lg_case` then shows the
//! guest's registers and exit counts before its limit and says it killed
//! lg (`LG_GUEST_STOPPED`), which counts as a lost guest too: shown here
//! with an idle guest under a short limit.

use std::time::Duration;

use lg_e2e::{boot_kit, case, script, KILLED_BY_TIMEOUT};

use xtask::testhost::{BOOTS_AFTER_OWN_FAILURE, GUEST_STOPPED};
use xtask::{TestHost, TestHostError};

#[test]
fn a_test_host_printing_only_stall_warnings_is_ended_at_its_silence_limit_and_booted_again() {
    let quiet = Duration::from_secs(20);
    // Names this run in crashes.log, among other tests' entries.
    let marker = format!("# stalled on purpose, lg-e2e pid {}", std::process::id());
    // The two lines the stalled test host printed in CI, every 5 s for
    // 600 s: if they counted as lines, the script would end in time and
    // the run would pass.
    let script = format!(
        "{marker}\n\
         i=0\n\
         while [ $i -lt 120 ]; do\n\
         \techo '[   56.547763] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:'\n\
         \techo '[   56.549423] rcu: \t0-...0: (122 ticks this GP) idle=5c64/1/0x4000000000000000'\n\
         \tsleep 5\n\
         \ti=$((i + 1))\n\
         done\n"
    );
    let error = TestHost::new()
        .timeout(Duration::from_secs(900))
        .silence_limit(quiet)
        .run(&script)
        .expect_err("stall warnings alone cannot keep a run within its silence limit");
    assert!(
        error.test_host_went_silent()
            && matches!(error, TestHostError::TimedOut { limit, .. } if limit == quiet),
        "the silence limit should have ended the run: {error}"
    );
    assert!(
        error.to_string().starts_with(
            "the test host printed nothing but stall warnings for 20 s and was killed"
        ),
        "{error}"
    );
    for entry in retries_logged(&marker) {
        assert!(
            entry.starts_with("test host kernel silence at "),
            "the entry should name a silence: {entry}"
        );
    }
}

#[test]
fn a_run_that_lost_a_guest_it_did_not_expect_is_booted_again() {
    let marker = format!(
        "# a guest lost on purpose, lg-e2e pid {}",
        std::process::id()
    );
    let script = format!(
        "{marker}\nlg {} </dev/null\necho LG_LOST_GUEST_STATUS=$?\n",
        boot_kit(128, "quiet reboot=t lgtest=reboot")
    );
    let run = TestHost::new()
        .timeout(Duration::from_secs(300))
        .retry_lost_guests(0)
        .run(&script)
        .expect("each boot's lg should report its status");
    // The third boot's run comes back as it was, for the test to judge.
    assert!(
        run.output.contains("lg: the guest triple-faulted")
            && run.output.contains("LG_LOST_GUEST_STATUS=2"),
        "the guest should have triple-faulted and lg ended with status 2:\n{}",
        run.output
    );
    for entry in retries_logged(&marker) {
        assert!(
            entry.starts_with("test host lost guest at ")
                && entry.contains("lg: the guest triple-faulted"),
            "the entry should name the lost guest and show lg's line: {entry}"
        );
    }
}

/// The `crashes.log` entries of the run whose script began with `marker`,
/// checked to be one for each boot but the last: only a retry logs
/// (`TestHost::run`).
fn retries_logged(marker: &str) -> Vec<String> {
    let log = std::fs::read_to_string(xtask::testhost::dir().join("crashes.log"))
        .expect("the retried boots should be logged in crashes.log");
    let entries: Vec<String> = log
        .split("--- ")
        .filter(|entry| entry.contains(marker))
        .map(str::to_string)
        .collect();
    assert_eq!(
        entries.len(),
        BOOTS_AFTER_OWN_FAILURE as usize,
        "one crashes.log entry for each boot that was retried:\n{log}"
    );
    entries
}

#[test]
fn a_case_still_running_at_its_limit_shows_its_guest_and_counts_as_stopped() {
    // An idle guest plays a hung one, under a limit short enough for a
    // test: lg_case's watcher prints the guest's registers and exit
    // counts, and where lg's threads wait, 10 s before the limit; then the
    // case says it killed lg.
    let body = format!(
        "lg_case_limit=40\nlg_case idle {}\n",
        boot_kit(128, "quiet lgtest=idle")
    );
    let run = TestHost::new()
        .timeout(Duration::from_secs(300))
        // Expected here, so one boot; a second lost guest would be retried.
        .retry_lost_guests(1)
        .run(&script(&body))
        .expect("the test host should report the script's status");
    let idle = case(&run.output, "idle");
    let story = idle.describe();
    assert_eq!(idle.status, Some(KILLED_BY_TIMEOUT), "{story}");
    assert!(
        idle.printed("LG_IDLE"),
        "the guest should have booted\n{story}"
    );
    let hung: Vec<&String> = idle
        .console
        .iter()
        .filter(|line| line.starts_with("LG_E2E_HUNG idle "))
        .collect();
    assert!(
        hung.first()
            .is_some_and(|line| line.contains("still running 10 s before its 40 s limit")),
        "the watcher should say the case is still running\n{story}"
    );
    for what in ["RIP:", "CR3:", "vcpu0.exits=", " thread "] {
        assert!(
            hung.iter().any(|line| line.contains(what)),
            "the watcher should show the guest's {what}\n{story}"
        );
    }
    assert!(
        idle.printed(&format!(
            "{GUEST_STOPPED}idle: lg was killed at its 40 s limit"
        )),
        "a case killed at its limit should say so\n{story}"
    );
}
