//! The test host's guard against its own failures, shown on a real one.
//!
//! QEMU's emulated SVM sometimes stops the test host altogether: both of
//! its vCPUs halted, not one more console line (README, Reliability). The
//! end-to-end tests give their test hosts a silence limit
//! (`lg_e2e::SILENCE_LIMIT`), which ends such a run long before its whole
//! limit and boots the test host once more. Here a script that deliberately
//! prints nothing plays the stopped host: it must be ended at the silence
//! limit, not at its whole limit, booted a second time, reported with the
//! limit that ended it, and logged in `target/testhost/crashes.log`.

use std::time::Duration;

use xtask::{TestHost, TestHostError};

#[test]
fn a_silent_test_host_is_ended_at_its_silence_limit_and_booted_once_more() {
    let quiet = Duration::from_secs(20);
    // Names this run in crashes.log, among other tests' entries.
    let marker = format!("# silent on purpose, lg-e2e pid {}", std::process::id());
    let script = format!("{marker}\nsleep 600\n");
    let error = TestHost::new()
        .timeout(Duration::from_secs(900))
        .silence_limit(quiet)
        .run(&script)
        // Without the silence limit the sleep would end in time and the
        // run would pass.
        .expect_err("a script that sleeps 600 s cannot finish within a 20 s silence limit");
    assert!(
        error.test_host_went_silent()
            && matches!(error, TestHostError::TimedOut { limit, .. } if limit == quiet),
        "the silence limit should have ended the run: {error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("the test host printed nothing for 20 s and was killed"),
        "{error}"
    );
    // Only the retry logs (TestHost::run): the entry says it was booted
    // once more.
    let log = std::fs::read_to_string(xtask::testhost::dir().join("crashes.log"))
        .expect("the first boot's silence should be logged in crashes.log");
    let entry = log
        .split("--- ")
        .find(|entry| entry.contains(&marker))
        .unwrap_or_else(|| panic!("no crashes.log entry for this run:\n{log}"));
    assert!(
        entry.starts_with("test host kernel silence at "),
        "the entry should name a silence: {entry}"
    );
}
