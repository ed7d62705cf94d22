//! Booting: lg starts a stock Debian kernel, its userspace runs, and when the
//! guest powers off or reboots, lg ends with status 0.
//!
//! One test host runs four guests: `lgtest=poweroff` shows the kernel's own
//! boot messages and the guest's `/init` marker reaching lg's stdout (and,
//! with `-v`, that the console's bytes mostly waited in KVM's coalesced
//! ring rather than exiting one by one);
//! `lgtest=reboot` that a reset ends lg as cleanly as a power-off does;
//! `--cpus=2` that a second vCPU comes up (the guest counts them); and a
//! guest at its interactive shell that what is piped into lg's standard input
//! is typed into the guest's console. Then the ways a guest ends: a kernel
//! panic (reported through pvpanic, status 4), and `poweroff` and `reboot`
//! without `-f`, through the guest's init as a distribution would.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let body = format!(
            "lg_case poweroff {}\nlg_case reboot {}\nlg_case smp {}\n\
             printf 'echo LG_TYPED_$((6 * 7))\\npoweroff -f\\n' | lg_case typed {}\n\
             lg_case panic {}\nlg_case shutdown {}\nlg_case restart {}\n",
            boot_kit(256, "lgtest=poweroff").replacen("run ", "run -v ", 1),
            boot_kit(256, "lgtest=reboot"),
            boot_kit(256, "lgtest=nproc").replacen("run ", "run --cpus=2 ", 1),
            boot_kit(256, "quiet"),
            boot_kit(256, "lgtest=panic"),
            boot_kit(256, "lgtest=shutdown"),
            boot_kit(256, "lgtest=restart"),
        );
        TestHost::new()
            .timeout(test_host_limit(7, 0))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body))
            .map_err(|e| e.to_string())
    })
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

/// The first `N port in, M port out` of lg's `-v` exit counts.
fn port_exits(case: &lg_e2e::Case) -> Option<(u64, u64)> {
    case.console.iter().find_map(|line| {
        let counts = &line[line.find("exits: ")? + "exits: ".len()..];
        let mut words = counts.split(|c: char| c == ',' || c.is_whitespace());
        let port_in = words.next()?.parse().ok()?;
        let rest: Vec<&str> = words.filter(|w| !w.is_empty()).collect();
        // ["port", "in", M, "port", "out", ...]
        let port_out = rest.get(2)?.parse().ok()?;
        Some((port_in, port_out))
    })
}

#[test]
fn the_consoles_bytes_wait_in_kvms_ring_instead_of_exiting_each() {
    let poweroff = case(&test_host().output, "poweroff");
    let console_bytes: usize = poweroff
        .console
        .iter()
        .skip_while(|line| !line.contains("Linux version"))
        .map(|line| line.len() + 1)
        .sum();
    let Some((port_in, port_out)) = port_exits(&poweroff) else {
        panic!("lg -v printed no exit counts\n{}", poweroff.describe());
    };
    // The kernel's console reads LSR before each byte (an exit each) and
    // writes the byte (kept by KVM): without the ring, there would be about
    // as many port writes as reads, and at least one per byte printed.
    assert!(
        console_bytes > 10_000 && port_out * 4 < port_in && (port_out as usize) < console_bytes / 4,
        "{port_in} port reads and {port_out} port writes exited for {console_bytes} bytes of \
         console: the serial port's writes were not kept in KVM's coalesced ring\n{}",
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
    // The script exits with the first non-zero lg status, and every guest
    // before the panic ends with 0: so the test host's status is the panic's
    // 4, which shows lg's status travels from the test host to here.
    let run = test_host();
    assert_eq!(
        run.status, 4,
        "the script's status should be the first non-zero lg status (the panic's)"
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

#[test]
fn a_kernel_panic_ends_lg_with_the_panic_status() {
    let panic = case(&test_host().output, "panic");
    assert!(
        panic.printed("Kernel panic"),
        "the guest should have panicked (echo c > /proc/sysrq-trigger)\n{}",
        panic.describe()
    );
    assert!(
        panic.printed("lg: the guest kernel panicked"),
        "lg should say the guest panicked\n{}",
        panic.describe()
    );
    assert_eq!(
        panic.status,
        Some(4),
        "a panic ends lg with status 4\n{}",
        panic.describe()
    );
}

#[test]
fn poweroff_and_reboot_through_init_end_lg_with_status_0() {
    for name in ["shutdown", "restart"] {
        let run = case(&test_host().output, name);
        assert!(run.printed("LG_GUEST_INIT_OK"), "{}", run.describe());
        assert_eq!(
            run.status,
            Some(0),
            "`{name}` through init\n{}",
            run.describe()
        );
    }
}
