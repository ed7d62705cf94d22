//! Guest memory: the guest sees the RAM it was given, including above the
//! 32-bit PCI hole.
//!
//! `lgtest=meminfo` makes the guest print `LG_MEMTOTAL_KB=` from
//! /proc/meminfo. MemTotal is the RAM the kernel manages, a little less than
//! what lg gave (the kernel's own image and early reservations are not
//! counted), so the checks are ranges. 3500 MiB does not fit below the hole
//! at 3 GiB, so that guest only sees all of it if lg's e820 map places the
//! rest above 4 GiB and the memory there works.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, Case, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let body = format!(
            "lg_case mem256 {}\nlg_case mem3500 {}\n",
            boot_kit(256, "lgtest=meminfo"),
            boot_kit(3500, "lgtest=meminfo"),
        );
        // Room for a 3500 MiB guest next to the test host's own kernel and
        // initramfs (which lives in RAM).
        TestHost::new()
            .memory_mb(5120)
            .timeout(test_host_limit(2, 0))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body))
            .map_err(|e| e.to_string())
    })
}

/// MemTotal in MiB as the guest printed it.
fn memtotal_mib(case: &Case) -> u64 {
    match case.number_after("LG_MEMTOTAL_KB=") {
        Some(kb) => kb / 1024,
        None => panic!(
            "the guest never printed LG_MEMTOTAL_KB=\n{}",
            case.describe()
        ),
    }
}

#[test]
fn a_256_mib_guest_sees_about_256_mib() {
    let guest = case(&test_host().output, "mem256");
    let mib = memtotal_mib(&guest);
    assert!(
        (200..256).contains(&mib),
        "a 256 MiB guest reports MemTotal {mib} MiB, expected 200..256\n{}",
        guest.describe()
    );
    assert_eq!(guest.status, Some(0), "{}", guest.describe());
}

#[test]
fn a_3500_mib_guest_sees_its_memory_across_the_pci_hole() {
    let guest = case(&test_host().output, "mem3500");
    let mib = memtotal_mib(&guest);
    assert!(
        (3300..3500).contains(&mib),
        "a 3500 MiB guest reports MemTotal {mib} MiB, expected 3300..3500 \
         (RAM above 4 GiB missing?)\n{}",
        guest.describe()
    );
    assert_eq!(guest.status, Some(0), "{}", guest.describe());
}
