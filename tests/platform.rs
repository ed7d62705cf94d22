//! The platform a stock kernel expects: the guest finds lg's virtio console
//! on PCI and uses it as `/dev/hvc0`, sees every vCPU lg gives it.
//!
//! One test host runs three guests:
//! - `lgtest=lspci`: the guest lists its PCI devices from sysfs; the virtio
//!   console (1af4:1043, class 0x0780) sits beside the host bridge.
//! - `console=hvc0`: the guest's init writes `LG_HVC0_OK` to `/dev/hvc0`,
//!   which can only reach lg's stdout through the virtio console; then, once
//!   the guest's shell prompt has appeared on hvc0, a line is typed into lg's
//!   standard input (a FIFO) and the guest's shell runs it.
//! - `--cpus=4`: the guest counts four CPUs.
//! - `--rng`: the guest's hardware RNG is virtio_rng, and `/dev/hwrng` gives
//!   bytes (lg fills them from the host's getrandom).
//! - `lgtest=clock`: Linux's `rtc_cmos` drives lg's CMOS clock as
//!   `/dev/rtc0`, which tells the test host's time, as does the guest's
//!   system clock.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

/// Boots a guest with `console=hvc0`, waits for its shell prompt on lg's
/// stdout, then types a command and `poweroff -f` into lg's stdin. Marked
/// like `lg_case` so the transcript parser finds it.
const HVC_CASE: &str = r#"
lg_hvc_case() {
	rm -f /tmp/hvc.in /tmp/hvc.out /tmp/hvc.status
	mkfifo /tmp/hvc.in
	echo "LG_E2E_BEGIN hvc"
	( timeout -s KILL $lg_case_limit lg "$@" </tmp/hvc.in >/tmp/hvc.out 2>&1
	  echo $? >/tmp/hvc.status ) &
	exec 3>/tmp/hvc.in
	waited=0
	while ! grep -q 'guest# ' /tmp/hvc.out && [ $waited -lt 120 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	printf 'echo LG_TYPED_$((6 * 7))\npoweroff -f\n' >&3
	exec 3>&-
	wait
	cat /tmp/hvc.out
	printf '\nLG_E2E_END hvc %s\n' "$(cat /tmp/hvc.status)"
}
"#;

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let body = format!(
            "{HVC_CASE}\nlg_case lspci {}\nlg_hvc_case {}\nlg_case cpus4 {}\nlg_case rng {}\n\
             echo LG_HOST_EPOCH_BEFORE=$(date +%s)\nlg_case clock {}\n\
             echo LG_HOST_EPOCH_AFTER=$(date +%s)\n",
            boot_kit(256, "lgtest=lspci"),
            boot_kit(256, "console=hvc0"),
            boot_kit(256, "lgtest=nproc").replacen("run ", "run --cpus=4 ", 1),
            boot_kit(256, "lgtest=rng").replacen("run ", "run --rng ", 1),
            boot_kit(256, "lgtest=clock"),
        );
        // Four CPUs in the test host, so lg may give the guest four.
        TestHost::new()
            .cpus(4)
            .timeout(test_host_limit(5, 0))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body))
            .map_err(|e| e.to_string())
    })
}

#[test]
fn the_guest_finds_the_virtio_console_on_pci() {
    let lspci = case(&test_host().output, "lspci");
    assert!(
        lspci.printed("LG_PCI 0000:00:00.0 0x060000 0x8086:0x0d57"),
        "the host bridge should be at 00:00.0\n{}",
        lspci.describe()
    );
    assert!(
        lspci.printed("LG_PCI 0000:00:01.0 0x078000 0x1af4:0x1043"),
        "the virtio console (1af4:1043) should be at 00:01.0\n{}",
        lspci.describe()
    );
    assert_eq!(lspci.status, Some(0), "{}", lspci.describe());
}

#[test]
fn hvc0_carries_the_guests_output_and_what_is_typed() {
    let hvc = case(&test_host().output, "hvc");
    assert!(
        hvc.printed("LG_HVC0_OK"),
        "nothing written to /dev/hvc0 reached lg's stdout\n{}",
        hvc.describe()
    );
    assert!(
        hvc.printed("LG_TYPED_42"),
        "the line typed into lg's stdin never ran in the guest's hvc0 shell\n{}",
        hvc.describe()
    );
    assert_eq!(hvc.status, Some(0), "{}", hvc.describe());
}

#[test]
fn four_vcpus_give_four_processors() {
    let cpus = case(&test_host().output, "cpus4");
    assert_eq!(
        cpus.number_after("LG_NPROC="),
        Some(4),
        "with --cpus=4 the guest should count four CPUs\n{}",
        cpus.describe()
    );
}

#[test]
fn rng_feeds_the_guests_hwrng() {
    let rng = case(&test_host().output, "rng");
    assert!(
        rng.printed("LG_RNG_CURRENT=virtio_rng"),
        "the guest's hw_random should be virtio_rng\n{}",
        rng.describe()
    );
    let bytes = rng
        .text_after("LG_RNG_BYTES=")
        .map(|hex| hex.trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        bytes.len(),
        32,
        "16 bytes from /dev/hwrng, in hex\n{}",
        rng.describe()
    );
    assert_ne!(bytes, "0".repeat(32), "random bytes are not all zero");
    assert_eq!(rng.status, Some(0), "{}", rng.describe());
}

#[test]
fn the_cmos_clock_is_the_guests_rtc0_and_tells_the_hosts_time() {
    let run = test_host();
    let clock = case(&run.output, "clock");
    // The test host's clock just before lg started and just after it ended.
    let host_epoch = |marker: &str| {
        run.lines()
            .find_map(|line| line.trim().strip_prefix(marker)?.parse::<u64>().ok())
    };
    let (Some(before), Some(after)) = (
        host_epoch("LG_HOST_EPOCH_BEFORE="),
        host_epoch("LG_HOST_EPOCH_AFTER="),
    ) else {
        panic!(
            "the test host did not print its time around the case\n{}",
            clock.describe()
        );
    };
    assert!(
        !clock.printed("probe of rtc_cmos failed"),
        "rtc_cmos should bind to lg's clock\n{}",
        clock.describe()
    );
    let rtc = clock
        .text_after("LG_RTC=")
        .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        rtc.first().copied(),
        Some("rtc_cmos"),
        "/dev/rtc0 should be rtc_cmos\n{}",
        clock.describe()
    );
    // rtc0's name is the driver and the device ("rtc_cmos 00:01"); the
    // seconds come last.
    let rtc_seconds: u64 = rtc.last().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(
        (before..=after).contains(&rtc_seconds),
        "rtc0 said {rtc_seconds} s since 1970, outside the test host's {before} to {after}\n{}",
        clock.describe()
    );
    let date = clock.number_after("LG_DATE=").unwrap_or(0);
    assert!(
        (before..=after).contains(&date),
        "the guest's system clock said {date}, outside the test host's {before} to {after}\n{}",
        clock.describe()
    );
    assert_eq!(clock.status, Some(0), "{}", clock.describe());
}
