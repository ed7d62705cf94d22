//! Booting: lg starts a stock Debian kernel, its userspace runs, and when the
//! guest powers off or reboots, lg ends with status 0.
//!
//! One test host runs four guests: `lgtest=poweroff` shows the kernel's own
//! boot messages and the guest's `/init` marker reaching lg's stdout;
//! `lgtest=reboot` that a reset ends lg as cleanly as a power-off does;
//! `--cpus=2` that a second vCPU comes up (the guest counts them); and a
//! guest at its interactive shell that what is piped into lg's standard input
//! is typed into the guest's console.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, test_host_limit};
use xtask::{TestHost, TestHostRun};

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let body = format!(
            "lg_case poweroff {}\nlg_case reboot {}\nlg_case smp {}\n\
             printf 'echo LG_TYPED_$((6 * 7))\\npoweroff -f\\n' | lg_case typed {}\n",
            boot_kit(256, "lgtest=poweroff"),
            boot_kit(256, "lgtest=reboot"),
            boot_kit(256, "lgtest=nproc").replacen("run ", "run --cpus=2 ", 1),
            boot_kit(256, "quiet"),
        );
        TestHost::new()
            .timeout(test_host_limit(4, 0))
            .run(&script(&body))
            .map_err(|e| e.to_string())
    });
    match run {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_kernel_boots_and_its_init_runs() {
    let poweroff = case(&test_host().output, "poweroff");
    assert!(
        poweroff.printed("Linux version"),
        "the guest kernel's boot messages never reached lg's stdout\n{}",
        poweroff.describe()
    );
    assert!(
        poweroff.printed("LG_GUEST_INIT_OK"),
        "the guest's /init never ran (no LG_GUEST_INIT_OK)\n{}",
        poweroff.describe()
    );
}

#[test]
fn poweroff_in_the_guest_ends_lg_with_status_0() {
    let poweroff = case(&test_host().output, "poweroff");
    assert_eq!(
        poweroff.status,
        Some(0),
        "`poweroff -f` in the guest should end lg with status 0\n{}",
        poweroff.describe()
    );
}

#[test]
fn reboot_in_the_guest_ends_lg_with_status_0() {
    let reboot = case(&test_host().output, "reboot");
    assert!(
        reboot.printed("LG_GUEST_INIT_OK"),
        "the guest's /init never ran (no LG_GUEST_INIT_OK)\n{}",
        reboot.describe()
    );
    assert_eq!(
        reboot.status,
        Some(0),
        "`reboot -f` in the guest should end lg with status 0\n{}",
        reboot.describe()
    );
}

#[test]
fn the_test_host_reports_lgs_status() {
    // The script exits with the first failing lg's status, so a run of only
    // clean guests reports 0: the status path from lg to here works.
    let run = test_host();
    assert_eq!(
        run.status, 0,
        "the script's status should be lg's (0 for both guests)"
    );
}

#[test]
fn a_second_vcpu_comes_up() {
    let smp = case(&test_host().output, "smp");
    assert_eq!(
        smp.number_after("LG_NPROC="),
        Some(2),
        "with --cpus=2 the guest should count two CPUs\n{}",
        smp.describe()
    );
    assert_eq!(smp.status, Some(0), "{}", smp.describe());
}

#[test]
fn what_is_piped_into_lg_is_typed_into_the_guest() {
    let typed = case(&test_host().output, "typed");
    // The guest's shell computes 42 from what it was sent: the line did not
    // merely echo back, it ran.
    assert!(
        typed.printed("LG_TYPED_42"),
        "the guest's shell never ran the piped command\n{}",
        typed.describe()
    );
    assert_eq!(
        typed.status,
        Some(0),
        "the piped `poweroff -f` should end lg with 0\n{}",
        typed.describe()
    );
}
