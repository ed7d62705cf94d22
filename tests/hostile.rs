//! A hostile guest: root inside the guest takes lg's virtio devices from
//! their drivers and programs them with broken queues, and lg stays up.
//!
//! One test host. The `hostile` case boots the kit with a disk, `--rng`, a
//! network card on a tap (`--tunnet`) and `lgtest=hostile`: the guest's
//! `/bin/lg-hostile` (xtask/src/lg-hostile.rs) unbinds the disk, the
//! entropy device, the console and the network card in turn, maps each
//! one's BAR and runs every attack in [`BREAKING`] and [`SURVIVED`] on a
//! freshly reset device, printing one
//! `LG_HOSTILE <device> <attack> status=0x..` line each. Then `/init`
//! gives the devices back to their drivers and uses each once more, and
//! powers off. lg's stderr is kept apart from the console, so its warnings
//! can be counted. The `after` case boots an ordinary guest in the same
//! test host: whatever the hostile one did stayed inside its lg.
//!
//! What lg must do (virtio 1.2 §2.1.2 and §4.1.4.3): a queue the guest
//! broke sets DEVICE_NEEDS_RESET (0x40) in the status, logs one warning
//! naming the device, and the device works again after a reset; a write to
//! a queue that does not exist, or a notify for one, changes nothing.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, Case, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

/// The devices lg-hostile attacks, by the name it prints and lg logs.
const DEVICES: [(&str, &str); 4] = [
    ("blk", "virtio-blk"),
    ("rng", "virtio-rng"),
    ("console", "virtio-console"),
    ("net", "virtio-net"),
];

/// Attacks after which the device must report DEVICE_NEEDS_RESET.
const BREAKING: [&str; 13] = [
    "ring-outside-ram",
    "used-ring-outside-ram",
    "ring-wraps",
    "queue-size-not-power-of-two",
    "queue-size-too-big",
    "desc-outside-ram",
    "desc-loop",
    "desc-next-out-of-range",
    "addr-len-wraps",
    "huge-chain-length",
    "avail-idx-jump",
    "avail-head-out-of-range",
    "driver-ok-without-features-ok",
];

/// Attacks after which the device must still serve a good request (and
/// `good-request`, the control, run first and last).
const SURVIVED: [&str; 3] = [
    "good-request",
    "notify-missing-queue",
    "queue-select-beyond",
];

/// How long the hostile guest may take: the boot, then 17 attacks on each
/// of four devices, each a few milliseconds unless lg fails to react
/// (two seconds then).
const HOSTILE_LIMIT_SECS: u64 = 300;

/// The hostile run, marked (and watched) like `lg_case` but with lg's
/// stderr kept in a file and printed as `LG_E2E_STDERR` lines, so warnings
/// can be counted apart from the guest's console.
const HOSTILE_CASE: &str = r#"
dd if=/dev/zero of=/tmp/hostile.img bs=512 count=2048 2>/dev/null
printf LGDISKOK | dd of=/tmp/hostile.img conv=notrunc 2>/dev/null
echo "LG_E2E_BEGIN hostile"
lg_e2e_lg HOSTILE_LIMIT hostile HOSTILE_ARGS </dev/null 2>/tmp/hostile.stderr
status=$?
sed 's/^/LG_E2E_STDERR /' /tmp/hostile.stderr
printf '\nLG_E2E_END hostile %s\n' "$status"
"#;

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        // 256 MiB: lg-hostile's huge-chain-length needs 130 MiB of RAM for
        // its buffers to lie inside it.
        // The network card's transmit queue is the one attacked (its
        // receive queue waits for packets); lg's good request there goes
        // out on the tap, which --tunnet brings up.
        let hostile = boot_kit(256, "lgtest=hostile lghostile=blk,rng,console,net").replacen(
            "run ",
            "run --block=/tmp/hostile.img --rng --tunnet=192.168.19.1 ",
            1,
        );
        let body = HOSTILE_CASE
            .replace("HOSTILE_LIMIT", &HOSTILE_LIMIT_SECS.to_string())
            .replace("HOSTILE_ARGS", &hostile)
            + &format!(
                "lg_case after {}\n",
                boot_kit(256, "lgtest=rng").replacen("run ", "run --rng ", 1)
            );
        TestHost::new()
            // The hostile case's own limit, plus one ordinary case.
            .timeout(test_host_limit(1, 0) + std::time::Duration::from_secs(HOSTILE_LIMIT_SECS))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body))
            .map_err(|e| e.to_string())
    })
}

/// What reaches lg's standard output through virtio-console rather than
/// the serial port: lg-hostile's good request on the console's transmit
/// queue, and `/init`'s line to `/dev/hvc0` at the end.
const HVC_TRANSMIT: &str = "LG_HOSTILE_HVC_TRANSMIT\n";
const VIA_HVC0: &str = "LG_HOSTILE_VIA_HVC0\n";

/// The hostile case, with what came through virtio-console taken out of
/// the console lines and counted: the serial port trickles out its bytes
/// while the virtio console writes its buffer at once, so those lines can
/// land in the middle of a serial one.
struct Hostile {
    case: Case,
    hvc_transmits: usize,
    via_hvc0: usize,
}

fn hostile() -> Hostile {
    let mut case = case(&test_host().output, "hostile");
    let mut text = case.console.join("\n");
    text.push('\n');
    let hvc_transmits = text.matches(HVC_TRANSMIT).count();
    let via_hvc0 = text.matches(VIA_HVC0).count();
    case.console = text
        .replace(HVC_TRANSMIT, "")
        .replace(VIA_HVC0, "")
        .lines()
        .map(str::to_string)
        .collect();
    Hostile {
        case,
        hvc_transmits,
        via_hvc0,
    }
}

/// The `LG_HOSTILE <device> <attack> ...` lines, as the rest of each line.
fn reports(case: &Case, device: &str, attack: &str) -> Vec<String> {
    let prefix = format!("LG_HOSTILE {device} {attack} ");
    case.console
        .iter()
        .filter_map(|line| {
            Some(
                line[line.find(&prefix)? + prefix.len()..]
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

/// The status a report names (`status=0x4f`).
fn status_in(report: &str) -> Option<u8> {
    let hex = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("status=0x"))?;
    u8::from_str_radix(hex, 16).ok()
}

const DEVICE_NEEDS_RESET: u8 = 0x40;

#[test]
fn every_attack_is_answered() {
    let case = hostile().case;
    let story = case.describe();
    assert!(
        case.printed("LG_HOSTILE_DONE"),
        "lg-hostile did not finish\n{story}"
    );
    assert!(
        case.printed("LG_HOSTILE_STATUS=0"),
        "lg-hostile failed\n{story}"
    );
    for (device, _) in DEVICES {
        for attack in BREAKING {
            let seen = reports(&case, device, attack);
            assert_eq!(seen.len(), 1, "{device} {attack}: one report\n{story}");
            let status =
                status_in(&seen[0]).unwrap_or_else(|| panic!("{device} {attack}: {seen:?}"));
            assert_ne!(
                status & DEVICE_NEEDS_RESET,
                0,
                "{device} {attack}: the device should need a reset, but says {}\n{story}",
                seen[0]
            );
        }
        for attack in SURVIVED {
            let seen = reports(&case, device, attack);
            let expected = if attack == "good-request" { 2 } else { 1 };
            assert_eq!(seen.len(), expected, "{device} {attack}\n{story}");
            for report in &seen {
                let status =
                    status_in(report).unwrap_or_else(|| panic!("{device} {attack}: {report}"));
                assert_eq!(
                    status & DEVICE_NEEDS_RESET,
                    0,
                    "{device} {attack}: the device should still run: {report}\n{story}"
                );
                assert!(
                    report.contains("used=1"),
                    "{device} {attack}: the device should have served the request: {report}\n{story}"
                );
                if device == "blk" {
                    assert!(
                        report.contains("blk-status=0"),
                        "{device} {attack}: {report}"
                    );
                }
                if attack == "queue-select-beyond" {
                    assert!(
                        report.contains("sizes=0,0,0"),
                        "queues that do not exist have size 0: {report}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_devices_work_again_after_the_attacks() {
    let hostile = hostile();
    let case = hostile.case;
    let story = case.describe();
    let rng = case
        .console
        .iter()
        .find_map(|l| {
            Some(
                l[l.find("LG_HOSTILE_RNG_AFTER=")? + 21..]
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_default();
    assert_eq!(rng.len(), 32, "16 bytes from /dev/hwrng, in hex\n{story}");
    assert!(
        case.printed("LG_HOSTILE_DISK_AFTER=LGDISKOK"),
        "the disk should read back after the attacks\n{story}"
    );
    assert!(
        case.printed("LG_HOSTILE_NET_AFTER=ok"),
        "the network card should reach the host again after the attacks\n{story}"
    );
    assert_eq!(
        hostile.via_hvc0, 1,
        "hvc0 should print after the attacks\n{story}"
    );
    // good-request (first and last), notify-missing-queue and
    // queue-select-beyond each print once on the console's transmit queue.
    assert_eq!(
        hostile.hvc_transmits, 4,
        "lg-hostile's good requests on the console's transmit queue\n{story}"
    );
}

#[test]
fn lg_warns_once_per_broken_device_and_exits_cleanly() {
    let case = hostile().case;
    let story = case.describe();
    assert_eq!(case.status, Some(0), "the guest powered off\n{story}");
    for (device, logged) in DEVICES {
        let warnings = case
            .stderr
            .iter()
            .filter(|l| l.contains(&format!("{logged} needs a reset")))
            .count();
        assert_eq!(
            warnings,
            BREAKING.len(),
            "one warning for each time the guest broke {device}\n{story}"
        );
    }
    // Nothing else to say: no panic, no flood of per-kick complaints.
    assert!(
        case.stderr.len() <= DEVICES.len() * BREAKING.len() + 2,
        "lg logged {} lines\n{story}",
        case.stderr.len()
    );
    assert!(
        !case.stderr.iter().any(|l| l.contains("panicked")),
        "{story}"
    );
}

#[test]
fn the_test_host_runs_another_guest_afterwards() {
    let after = case(&test_host().output, "after");
    assert_eq!(after.status, Some(0), "{}", after.describe());
    assert!(
        after.printed("LG_RNG_CURRENT=virtio_rng"),
        "{}",
        after.describe()
    );
}
