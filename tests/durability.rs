//! What the guest has synced survives lg being killed, and disks come in
//! the order they were given.
//!
//! One test host, with a copy of the kit's `rootfs.ext4` as `/disk/root.img`:
//! - `twodisks`: `--block` twice gives the guest `/dev/vda` and `/dev/vdb`,
//!   the second with the second file's size.
//! - twenty kill cycles: a guest counts up in a file on `/dev/vda`, syncing
//!   each value and saying so on the console; lg is killed with SIGKILL at
//!   a random moment after the first sync; the next guest, a fresh lg on the
//!   same image, must find at least the last value reported synced. ext4
//!   replays its journal on each mount, so every cycle also checks that a
//!   killed lg leaves a filesystem the guest kernel can mount.

use std::sync::OnceLock;

use lg_e2e::{script, test_host_limit};
use xtask::{Kit, TestHost, TestHostRun};

/// How many times lg is killed.
const KILLS: u32 = 20;

/// The test-host side of the kill cycles: boots the sync loop, waits for its
/// first synced value, kills lg after a random pause of up to a second, and
/// prints `LG_CYCLE <n> found=<counter at boot> synced=<last reported>`.
const KILL_CYCLES: &str = r#"
lg_kill_cycles() {
	cycle=1
	while [ $cycle -le $1 ]; do
		rm -f /tmp/cycle.out
		lg run --block=/disk/root.img 256 /kit/bzImage --initrd=/kit/initrd.cpio.gz \
			console=ttyS0 panic=-1 quiet lgtest=syncloop </dev/null >/tmp/cycle.out 2>&1 &
		pid=$!
		waited=0
		while ! grep -q 'LG_SYNCED=' /tmp/cycle.out && [ $waited -lt 1200 ]; do
			sleep 0.1
			waited=$((waited + 1))
		done
		sleep 0.$((RANDOM % 10))
		kill -9 $pid
		wait $pid 2>/dev/null
		found=$(grep -o 'LG_FOUND=[0-9]*' /tmp/cycle.out | head -n 1 | cut -d= -f2)
		synced=$(grep -o 'LG_SYNCED=[0-9]*' /tmp/cycle.out | tail -n 1 | cut -d= -f2)
		echo "LG_CYCLE $cycle found=${found:-none} synced=${synced:-none}"
		cycle=$((cycle + 1))
	done
	# One more boot reads what the last killed lg left.
	lg run --block=/disk/root.img 256 /kit/bzImage --initrd=/kit/initrd.cpio.gz \
		console=ttyS0 panic=-1 quiet lgtest=syncloop </dev/null >/tmp/cycle.out 2>&1 &
	pid=$!
	waited=0
	while ! grep -q 'LG_FOUND=\|LG_MOUNT_FAILED' /tmp/cycle.out && [ $waited -lt 1200 ]; do
		sleep 0.1
		waited=$((waited + 1))
	done
	kill -9 $pid
	wait $pid 2>/dev/null
	found=$(grep -o 'LG_FOUND=[0-9]*' /tmp/cycle.out | head -n 1 | cut -d= -f2)
	echo "LG_CYCLE final found=${found:-none}"
}
"#;

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let image = std::env::temp_dir().join(format!("lg-e2e-durable-{}.img", std::process::id()));
        std::fs::copy(Kit::rootfs(), &image)
            .map_err(|e| format!("cannot copy {}: {e}", Kit::rootfs().display()))?;
        let body = format!(
            "{KILL_CYCLES}\n\
             dd if=/dev/zero of=/tmp/second.img bs=1M count=8 2>/dev/null\n\
             lg_case twodisks run --block=/disk/root.img --block=/tmp/second.img 256 \
             /kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 lgtest=twodisks\n\
             lg_kill_cycles {KILLS}\n"
        );
        let run = TestHost::new()
            .file(&image, "/disk/root.img")
            .timeout(test_host_limit(KILLS + 2, 0))
            .run(&script(&body))
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&image);
        run
    });
    match run {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn two_disks_are_vda_and_vdb_in_order() {
    let twodisks = lg_e2e::case(&test_host().output, "twodisks");
    assert!(
        twodisks.printed("LG_DISKS=vda vdb"),
        "--block twice should give vda and vdb\n{}",
        twodisks.describe()
    );
    // 8 MiB is 16384 sectors: vdb is the second file, not the first.
    assert_eq!(
        twodisks.number_after("LG_VDB_SECTORS="),
        Some(16384),
        "{}",
        twodisks.describe()
    );
}

/// One kill cycle: the counter the guest found at boot, and the last value
/// it reported synced before lg was killed.
type Cycle = (Option<u64>, Option<u64>);

/// Each cycle, then what the final boot found.
fn cycles(output: &str) -> (Vec<Cycle>, Option<u64>) {
    let number = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|value| value.parse().ok())
    };
    let mut cycles = Vec::new();
    let mut last = None;
    for line in output.lines().filter(|l| l.starts_with("LG_CYCLE ")) {
        if line.starts_with("LG_CYCLE final") {
            last = number(line, "found=");
        } else {
            cycles.push((number(line, "found="), number(line, "synced=")));
        }
    }
    (cycles, last)
}

#[test]
fn what_the_guest_synced_survives_kill_9_twenty_times() {
    let output = &test_host().output;
    let (cycles, last) = cycles(output);
    assert_eq!(
        cycles.len(),
        KILLS as usize,
        "every cycle should report\n{output}"
    );
    let mut previous_synced = 0;
    for (i, (found, synced)) in cycles.iter().enumerate() {
        let found =
            found.unwrap_or_else(|| panic!("cycle {}: the guest never mounted its disk", i + 1));
        let synced = synced.unwrap_or_else(|| panic!("cycle {}: the guest never synced", i + 1));
        assert!(
            found >= previous_synced,
            "cycle {}: the disk had {found}, but {previous_synced} had been synced before lg was killed",
            i + 1
        );
        assert!(
            synced > found,
            "cycle {}: counting went on from what was found",
            i + 1
        );
        previous_synced = synced;
    }
    let last = last.expect("the final boot should mount the disk and read the counter");
    assert!(
        last >= previous_synced,
        "after the last kill the disk had {last}, but {previous_synced} had been synced"
    );
}
