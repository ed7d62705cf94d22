//! Inspecting live guests: `lg ps`, `lg stop`, `lg pause`/`resume`,
//! `lg regs`, `lg translate`, `lg dump-pagetables`, `lg stat`, each asking a
//! running lg through its control socket.
//!
//! One test host runs three named guests at once:
//! - `alpha` runs the kit's `lg-pattern`, which maps a page at a fixed user
//!   address, fills it with a known pattern and keeps touching it (so
//!   vCPU 0's CR3 is its page tables): `lg translate` must land on bytes
//!   holding the pattern, and `lg dump-pagetables` must show the page as
//!   USR RW, and the kernel's direct map of the same frame as NX, not USR;
//! - `beta` prints a tick every second: its exit counts must rise between
//!   two `lg stat`s, stop rising while it is paused, and `lg stop` (the
//!   ACPI power button) must shut it down with status 0;
//! - `gamma` powers off at once, and so must not be in `lg ps`.
//!
//! Then: a second `alpha` is refused, `lg stop --force alpha` ends it with
//! status 3, and a socket left by a `kill -9`ed lg is replaced by the next
//! guest of that name.

use std::sync::OnceLock;

use lg_e2e::{case, script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

const KIT: &str = "/kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1";

fn body() -> String {
    format!(
        r#"
K="{KIT}"
# Waits up to $2 seconds for file $1 to contain $3.
wait_for() {{
	tries=0
	until grep -q "$3" "$1" || [ $tries -ge "$2" ]; do sleep 1; tries=$((tries + 1)); done
}}
# Prints command $2...'s output with each line prefixed by $1, then its status.
show() {{
	prefix=$1; shift
	"$@" >/tmp/show.out 2>&1
	status=$?
	sed "s/^/$prefix /" /tmp/show.out
	echo "$prefix-STATUS $status"
}}
ticks() {{ grep -c LG_TICK= /tmp/beta.log; }}

# One guest starts at a time: the test host's nested KVM (kvm-amd on
# QEMU's emulated SVM) has been seen to crash when three boot at once.
lg run --name=alpha 256 $K lgtest=pattern </dev/null >/tmp/alpha.log 2>&1 &
alpha=$!
wait_for /tmp/alpha.log 200 LG_PATTERN_READY
lg run --name=beta 256 $K lgtest=ticker </dev/null >/tmp/beta.log 2>&1 &
beta=$!
wait_for /tmp/beta.log 200 LG_TICK=2
lg run --name=gamma 128 $K lgtest=poweroff </dev/null >/tmp/gamma.log 2>&1
echo "LG_GAMMA_STATUS=$?"
show LG_PS lg ps
# If a guest is missing from ps, its console says why.
for guest in alpha beta; do
	tail -n 25 /tmp/$guest.log | sed "s/^/LG_LOG_$guest /"
done

va=$(sed -n 's/.*LG_PATTERN_READY va=\(0x[0-9a-f]*\).*/\1/p' /tmp/alpha.log | head -1)
echo "LG_PATTERN_VA=$va"
show LG_TRANSLATE lg translate alpha "$va"
show LG_DUMP lg dump-pagetables alpha
show LG_REGS lg regs alpha

show LG_STAT1 lg stat beta
sleep 3
show LG_STAT2 lg stat beta
show LG_PAUSE lg pause beta
show LG_PS_PAUSED lg ps
before=$(ticks)
sleep 3
show LG_REGS_PAUSED lg regs beta --cpu=0
after=$(ticks)
echo "LG_TICKS_WHILE_PAUSED=$((after - before))"
show LG_RESUME lg resume beta
sleep 3
echo "LG_TICKS_AFTER_RESUME=$(($(ticks) - after))"
show LG_STOP lg stop beta
# lg stop waits at most 60 s; a guest still running then is a failure,
# not a reason to hang the test host.
kill -9 $beta 2>/dev/null
wait $beta
echo "LG_BETA_STATUS=$?"
grep -q LG_POWER_BUTTON /tmp/beta.log && echo LG_BETA_SAW_THE_BUTTON

lg_fail twice run --name=alpha 128 $K lgtest=poweroff
show LG_FORCE lg stop --force alpha
kill -9 $alpha 2>/dev/null
wait $alpha
echo "LG_ALPHA_STATUS=$?"
show LG_PS_EMPTY lg ps

lg run --name=delta 128 $K lgtest=idle </dev/null >/tmp/delta.log 2>&1 &
delta=$!
wait_for /tmp/delta.log 200 LG_IDLE
kill -9 $delta
wait $delta
[ -S /run/lg/delta.sock ] && echo LG_STALE_SOCKET_LEFT
show LG_PS_STALE lg ps
lg_case delta-again run --name=delta 128 $K lgtest=poweroff
lg_fail unknown stop nosuchguest
"#
    )
}

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        TestHost::new()
            .timeout(test_host_limit(6, 2))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body()))
            .map_err(|e| e.to_string())
    })
}

/// The lines printed with `prefix `, without it.
fn shown(prefix: &str) -> Vec<String> {
    lg_e2e::shown(&test_host().output, prefix)
}

/// The exit status `show PREFIX` reported.
fn status(prefix: &str) -> Option<i32> {
    let marker = format!("{prefix}-STATUS ");
    test_host()
        .output
        .lines()
        .find_map(|line| line.strip_prefix(&marker)?.trim().parse().ok())
}

/// What the script printed after `marker`.
fn value(marker: &str) -> Option<String> {
    lg_e2e::value(&test_host().output, marker)
}

fn whole_output() -> String {
    let output = &test_host().output;
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

#[test]
fn ps_lists_the_running_guests_and_not_the_one_that_ended() {
    assert_eq!(
        value("LG_GAMMA_STATUS="),
        Some("0".into()),
        "{}",
        whole_output()
    );
    let ps = shown("LG_PS");
    assert_eq!(status("LG_PS"), Some(0), "{ps:?}");
    assert!(ps[0].starts_with("NAME"), "{ps:?}");
    let names: Vec<&str> = ps[1..]
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["alpha", "beta"],
        "{ps:?}\nalpha's console ends:\n{}\nbeta's console ends:\n{}",
        shown("LG_LOG_alpha").join("\n"),
        shown("LG_LOG_beta").join("\n")
    );
    assert!(
        ps[1].contains("256M") && ps[1].contains("bzImage"),
        "{ps:?}"
    );
}

/// The physical address `lg translate` printed for the pattern page.
fn pattern_phys() -> u64 {
    let translate = shown("LG_TRANSLATE");
    assert_eq!(status("LG_TRANSLATE"), Some(0), "{translate:?}");
    let arrow = translate
        .iter()
        .find_map(|line| line.split(" -> ").nth(1))
        .unwrap_or_else(|| panic!("no translation:\n{}", translate.join("\n")));
    let phys = arrow.split_whitespace().next().unwrap();
    u64::from_str_radix(phys.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn translate_lands_on_the_bytes_the_guest_program_wrote() {
    let va = value("LG_PATTERN_VA=").expect("lg-pattern's address");
    assert_eq!(va, "0x5a5a00000000", "{}", whole_output());
    let translate = shown("LG_TRANSLATE");
    let phys = pattern_phys();
    let bytes_line = format!("{phys:#x}: ");
    let bytes = translate
        .iter()
        .find(|line| line.starts_with(&bytes_line))
        .unwrap_or_else(|| panic!("no bytes shown at {phys:#x}:\n{}", translate.join("\n")));
    assert!(
        bytes.ends_with("|lg-pattern-page.|"),
        "the bytes at {phys:#x} are not the pattern:\n{}",
        translate.join("\n")
    );
    // Four levels were walked, top first.
    assert!(translate.len() >= 5, "{}", translate.join("\n"));
}

/// The dump's ranges: (start, end, the flags text, physical start).
fn dump_ranges() -> Vec<(u64, u64, String, u64)> {
    let dump = shown("LG_DUMP");
    assert_eq!(status("LG_DUMP"), Some(0), "{}", dump.join("\n"));
    let hex = |text: &str| u64::from_str_radix(text.trim_start_matches("0x"), 16).ok();
    dump.iter()
        .filter_map(|line| {
            let (left, phys) = line.split_once("  -> ")?;
            let (range, flags) = left.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            let phys = phys.trim_end_matches("...");
            Some((hex(start)?, hex(end)?, flags.to_string(), hex(phys)?))
        })
        .collect()
}

#[test]
fn dump_pagetables_shows_the_user_page_and_the_kernels_direct_map() {
    let ranges = dump_ranges();
    let dump = shown("LG_DUMP").join("\n");
    let page = ranges
        .iter()
        .find(|(start, end, _, _)| *start <= 0x5a5a_0000_0000 && 0x5a5a_0000_0000 < *end)
        .unwrap_or_else(|| panic!("the pattern page is not in the dump:\n{dump}"));
    let words: Vec<&str> = page.2.split_whitespace().collect();
    assert!(
        words.contains(&"USR") && words.contains(&"RW"),
        "the pattern page is not USR RW: {page:?}"
    );
    // The direct map: a kernel-half range (the top bit set, whether the
    // guest uses 4-level paging or, under `-cpu max`, 5-level, where the
    // kernel's half starts at 0xff00...) whose physical pages run on from
    // its start and include the pattern's frame.
    let phys = pattern_phys() & !0xfff;
    let direct = ranges
        .iter()
        .find(|(start, end, _, first)| {
            *start >= 1 << 63 && *first <= phys && phys < first + (end - start)
        })
        .unwrap_or_else(|| panic!("no kernel mapping of frame {phys:#x}:\n{dump}"));
    let words: Vec<&str> = direct.2.split_whitespace().collect();
    assert!(
        words.contains(&"NX") && !words.contains(&"USR"),
        "the direct map is not NX and kernel-only: {direct:?}"
    );
}

#[test]
fn regs_shows_a_vcpus_registers_running_or_paused() {
    for prefix in ["LG_REGS", "LG_REGS_PAUSED"] {
        let regs = shown(prefix);
        assert_eq!(status(prefix), Some(0), "{}", regs.join("\n"));
        for register in ["RIP:", "RAX:", "CR3:", "EFER:"] {
            assert!(
                regs.iter().any(|line| line.contains(register)),
                "`{prefix}` lacks {register}:\n{}",
                regs.join("\n")
            );
        }
    }
}

fn total_exits(prefix: &str) -> u64 {
    let stat = shown(prefix);
    assert_eq!(status(prefix), Some(0), "{}", stat.join("\n"));
    stat.iter()
        .find_map(|line| line.strip_prefix("vcpu0.exits=")?.parse().ok())
        .unwrap_or_else(|| panic!("no vcpu0.exits in:\n{}", stat.join("\n")))
}

#[test]
fn stat_counts_rise_while_the_guest_works() {
    let (first, second) = (total_exits("LG_STAT1"), total_exits("LG_STAT2"));
    assert!(first > 0, "no exits counted");
    assert!(second > first, "exits did not rise: {first} then {second}");
}

#[test]
fn a_paused_guest_stops_and_a_resumed_one_goes_on() {
    assert_eq!(status("LG_PAUSE"), Some(0), "{:?}", shown("LG_PAUSE"));
    let beta = shown("LG_PS_PAUSED")
        .into_iter()
        .find(|line| line.starts_with("beta "))
        .expect("beta in lg ps while paused");
    assert!(beta.contains("paused"), "{beta}");
    assert_eq!(
        value("LG_TICKS_WHILE_PAUSED="),
        Some("0".into()),
        "{}",
        whole_output()
    );
    let after: u64 = value("LG_TICKS_AFTER_RESUME=").unwrap().parse().unwrap();
    assert!(after >= 1, "no tick after resume:\n{}", whole_output());
}

#[test]
fn stop_presses_the_power_button_and_the_guest_shuts_down() {
    assert_eq!(status("LG_STOP"), Some(0), "{:?}", shown("LG_STOP"));
    assert!(
        test_host().output.contains("LG_BETA_SAW_THE_BUTTON"),
        "{}",
        whole_output()
    );
    assert_eq!(value("LG_BETA_STATUS="), Some("0".into()));
}

#[test]
fn names_are_unique_forced_stops_end_at_once_and_stale_sockets_are_replaced() {
    let output = &test_host().output;
    let twice = case(output, "twice");
    assert_eq!(twice.status, Some(1), "{}", twice.describe());
    assert!(
        twice
            .stderr
            .iter()
            .any(|l| l.contains("alpha is already running")),
        "{}",
        twice.describe()
    );
    assert_eq!(status("LG_FORCE"), Some(0), "{:?}", shown("LG_FORCE"));
    assert_eq!(value("LG_ALPHA_STATUS="), Some("3".into()));
    assert_eq!(status("LG_PS_EMPTY"), Some(0));
    assert_eq!(shown("LG_PS_EMPTY"), ["lg: no guests running"]);

    assert!(
        output.contains("LG_STALE_SOCKET_LEFT"),
        "{}",
        whole_output()
    );
    assert_eq!(shown("LG_PS_STALE"), ["lg: no guests running"]);
    let again = case(output, "delta-again");
    assert_eq!(again.status, Some(0), "{}", again.describe());
    let unknown = case(output, "unknown");
    assert_eq!(unknown.status, Some(1), "{}", unknown.describe());
    assert!(
        unknown
            .stderr
            .iter()
            .any(|l| l.contains("no guest named nosuchguest")),
        "{}",
        unknown.describe()
    );
}
