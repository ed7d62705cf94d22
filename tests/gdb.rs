//! Debugging a live guest with gdb: `lg run --gdb=PORT`, and
//! `lg run --gdb-wait` with `lg gdb NAME`, driven by Debian's own gdb
//! (`gdb-minimal`, packed into this test's test host by xtask).
//!
//! One test host, two guests, one after the other:
//! - `syncer` (`--gdb=1234`, `lgtest=gdbsync`) prints where the kernel's
//!   `sync` system call is (its `/proc/kallsyms`, since KASLR moves it each
//!   boot) and waits for a line on its console. gdb attaches over TCP, sets
//!   a hardware breakpoint there and continues; the test says go; the guest
//!   runs `sync`, and gdb must report the stop at that very address, with
//!   the vCPU as its thread. A `stepi` from that stop must move RIP on.
//!   gdb then deletes the breakpoint and continues, and the guest must
//!   finish (its marker after `sync`, status 0) with gdb told that it
//!   exited. (The breakpoint and that step only where the test host's QEMU
//!   can stop a nested guest at a breakpoint: see
//!   [`test_host_has_breakpoints`].)
//! - `waiter` (`--gdb-wait`, `lgtest=poweroff`) must not run an instruction
//!   before gdb attaches through `target remote | lg gdb waiter`: the first
//!   RIP gdb sees is the kernel's entry point, the console is still empty, and
//!   a `stepi` moves RIP on. `lg pause` is refused while gdb is attached.
//!   Then gdb continues and the guest powers off.

use std::sync::OnceLock;

use lg_e2e::{script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

const KIT: &str = "/kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1";

/// gdb's own time limit in the test host: one hung gdb must not hang the run.
const GDB_LIMIT_S: u32 = 180;

/// Whether the test host can stop its guests at a hardware breakpoint. It
/// is QEMU's TCG emulating AMD SVM, and Debian 12's QEMU 7.2 cannot, whatever
/// lg does: its VMRUN loads the guest's DR7 without arming DR0-DR3 (fixed
/// upstream in 9.1 by "target/i386: disable/enable breakpoints on
/// vmentry/vmexit"). Debian's bookworm-backports has 10.0, which stops
/// there; `LG_TESTHOST_QEMU` runs such a build beside the system's (see
/// `xtask::testhost::Qemu`). Hardware breakpoints are also tested on this
/// machine's own /dev/kvm, by the `on_kvm` tests of the switcher
/// (`vcpu_control`) and of `gdb-stub`.
///
/// Software breakpoints (`break`) are not tested here on any QEMU: 7.2 and
/// 10.0 alike raise a nested guest's `int3` through SVM's INTn intercept
/// (TCG translates it as `int n`) instead of the `#BP` exception intercept
/// KVM sets for them, so the guest gets the `int3` itself and oopses
/// (seen on 10.0 with `break *` at the same address). Single-stepping
/// needs no breakpoint and works on both: `waiter` below steps there.
fn test_host_has_breakpoints() -> bool {
    // The QEMU the test host boots in, which `LG_TESTHOST_QEMU` may choose.
    let version = xtask::testhost::Qemu::chosen().and_then(|qemu| qemu.version());
    match version {
        Ok(version) => version >= (9, 1),
        Err(e) => panic!("{e}"),
    }
}

fn body() -> String {
    // Without breakpoints, gdb still attaches, looks and lets the guest go
    // (its one `continue` then lasts until the guest ends).
    let (set_breakpoint, at_the_stop) = if test_host_has_breakpoints() {
        (
            "-ex \"hbreak *0x$addr\"",
            "-ex 'info registers rip' -ex stepi -ex 'info registers rip' -ex delete \
             -ex continue",
        )
    } else {
        ("", "")
    };
    format!(
        r#"
K="{KIT}"
# Waits up to $2 seconds for file $1 to contain $3.
wait_for() {{
	tries=0
	until grep -q "$3" "$1" || [ $tries -ge "$2" ]; do sleep 1; tries=$((tries + 1)); done
}}
# Prints file $2 with each line prefixed by $1.
show_file() {{ sed "s/^/$1 /" "$2"; }}

# --gdb=PORT: a hardware breakpoint on the sync system call, and a step
# from it. (The address,
# not `:1234`: the test host has no /etc/hosts to say what localhost is.)
mkfifo /tmp/syncer.in
lg run -v --name=syncer --gdb=1234 256 $K lgtest=gdbsync </tmp/syncer.in >/tmp/syncer.log 2>&1 &
syncer=$!
# Held open, so lg's standard input stays open until the test says go.
exec 3>/tmp/syncer.in
# An lg that died early must not take the script with it (SIGPIPE on the
# go below) before its log is shown.
trap '' PIPE
wait_for /tmp/syncer.log 300 LG_KSYM_SYNC=
addr=$(sed -n 's/.*LG_KSYM_SYNC=\([0-9a-f][0-9a-f]*\).*/\1/p' /tmp/syncer.log | head -n 1)
echo "LG_SYNC_ADDR=0x$addr"
timeout -s KILL {GDB_LIMIT_S} gdb -batch -nx \
	-ex 'set pagination off' \
	-ex 'target remote 127.0.0.1:1234' \
	-ex 'info threads' \
	{set_breakpoint} \
	-ex continue \
	{at_the_stop} \
	>/tmp/gdb1.out 2>&1 &
gdb1=$!
# gdb has the guest stopped from the moment it attaches, and sets its
# breakpoint before it lets the guest go on: any "go" after this is safe.
wait_for /tmp/syncer.log 120 'gdb attached'
echo go >&3
wait $gdb1
echo "LG_GDB1_STATUS=$?"
show_file LG_GDB1 /tmp/gdb1.out
exec 3>&-
# A guest still waiting for its go (gdb never attached) is a failure, not
# a reason to hang the test host.
(sleep 120; kill -9 $syncer) 2>/dev/null &
wait $syncer
echo "LG_SYNCER_STATUS=$?"
show_file LG_SYNCER /tmp/syncer.log

# --gdb-wait and lg gdb NAME.
lg run --name=waiter --gdb-wait 128 $K lgtest=poweroff </dev/null >/tmp/waiter.log 2>&1 &
waiter=$!
wait_for /tmp/waiter.log 60 'wait for gdb'
timeout -s KILL {GDB_LIMIT_S} gdb -batch -nx \
	-ex 'set pagination off' \
	-ex 'target remote | lg gdb waiter' \
	-ex 'info registers rip' \
	-ex 'shell lg pause waiter; echo LG_PAUSE_STATUS=$?' \
	-ex stepi \
	-ex 'info registers rip' \
	-ex continue \
	>/tmp/gdb2.out 2>&1
echo "LG_GDB2_STATUS=$?"
show_file LG_GDB2 /tmp/gdb2.out
(sleep 120; kill -9 $waiter) 2>/dev/null &
wait $waiter
echo "LG_WAITER_STATUS=$?"
show_file LG_WAITER /tmp/waiter.log
"#
    )
}

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let files = xtask::testhost::gdb_files().map_err(|e| e.to_string())?;
        files
            .into_iter()
            .fold(TestHost::new(), |host, (file, inside)| {
                host.file(file, &inside)
            })
            .timeout(test_host_limit(4, 0))
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

/// What the script printed after `marker`.
fn value(marker: &str) -> Option<String> {
    lg_e2e::value(&test_host().output, marker)
}

fn tell(prefixes: &[&str]) -> String {
    prefixes
        .iter()
        .map(|prefix| format!("{prefix}:\n  {}", shown(prefix).join("\n  ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The values of `rip` gdb printed (`rip 0x... 0x...`), in order.
fn rips(prefix: &str) -> Vec<u64> {
    shown(prefix)
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "rip").then_some(())?;
            u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

/// Where the guest's `/proc/kallsyms` put `__x64_sys_sync`.
fn sync_address() -> u64 {
    let addr = value("LG_SYNC_ADDR=").expect("the guest's address of __x64_sys_sync");
    let why = || tell(&["LG_SYNCER"]);
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("no address in /proc/kallsyms: {addr:?}\n{}", why()));
    assert!(
        addr >= 0xffff_ffff_8000_0000,
        "{addr:#x} is no kernel text address"
    );
    addr
}

#[test]
fn gdb_stops_at_a_hardware_breakpoint_on_the_sync_system_call() {
    if !test_host_has_breakpoints() {
        eprintln!(
            "skipped: the test host's QEMU (before 9.1) cannot stop a nested guest at a \
             breakpoint; see test_host_has_breakpoints"
        );
        return;
    }
    let addr = sync_address();
    let gdb = shown("LG_GDB1");
    let why = || tell(&["LG_GDB1", "LG_SYNCER"]);
    assert!(
        gdb.iter()
            .any(|l| l.starts_with("Hardware assisted breakpoint 1 at")),
        "{}",
        why()
    );
    // "Breakpoint 1, 0x... in ?? ()" (with "Thread N hit " before it when
    // the guest has more than one vCPU).
    let stop = format!("Breakpoint 1, {addr:#x}");
    assert!(
        gdb.iter().any(|l| l.contains(&stop)),
        "gdb did not report the breakpoint:\n{}",
        why()
    );
    assert_eq!(rips("LG_GDB1").first(), Some(&addr), "{}", why());
}

#[test]
fn stepi_from_the_breakpoint_runs_one_instruction_of_the_kernel() {
    if !test_host_has_breakpoints() {
        eprintln!(
            "skipped: the test host's QEMU (before 9.1) cannot stop a nested guest at a \
             breakpoint to step from; see test_host_has_breakpoints"
        );
        return;
    }
    let addr = sync_address();
    let why = || tell(&["LG_GDB1", "LG_SYNCER"]);
    // The breakpoint's stop, then one instruction on: still in the kernel,
    // and not where it stood (nor stuck on the breakpoint gdb lifts for the
    // step).
    let rips = rips("LG_GDB1");
    assert_eq!(rips.len(), 2, "{}", why());
    assert_eq!(rips[0], addr, "{}", why());
    assert_ne!(rips[1], addr, "stepi did not move RIP:\n{}", why());
    assert!(rips[1] >= 0xffff_ffff_8000_0000, "{}", why());
}

#[test]
fn gdb_attaches_over_tcp_and_continue_lets_the_guest_finish() {
    let why = || tell(&["LG_GDB1", "LG_SYNCER"]);
    // The vCPU is gdb's thread 1.
    assert!(
        shown("LG_GDB1")
            .iter()
            .any(|l| l.contains("Thread 1.1 (vCPU 0)")),
        "{}",
        why()
    );
    assert!(
        shown("LG_SYNCER")
            .iter()
            .any(|l| l.contains("LG_SYNC_DONE")),
        "the guest did not get past sync:\n{}",
        why()
    );
    assert_eq!(value("LG_SYNCER_STATUS="), Some("0".into()), "{}", why());
    assert!(
        shown("LG_GDB1")
            .iter()
            .any(|l| l.contains("exited normally")),
        "gdb was not told the guest ended:\n{}",
        why()
    );
    assert_eq!(value("LG_GDB1_STATUS="), Some("0".into()), "{}", why());
}

#[test]
fn gdb_wait_holds_the_first_instruction_for_gdb_through_lg_gdb() {
    let why = || tell(&["LG_GDB2", "LG_WAITER"]);
    let rips = rips("LG_GDB2");
    assert_eq!(rips.len(), 2, "{}", why());
    // The boot CPU stands at the kernel's 64-bit entry, which lg enters
    // below 4 GiB, physically; one instruction later it is elsewhere.
    assert!(rips[0] != 0 && rips[0] < 1 << 32, "{}", why());
    assert_ne!(rips[0], rips[1], "{}", why());
    assert_eq!(value("LG_PAUSE_STATUS="), Some("1".into()), "{}", why());
    assert!(
        shown("LG_GDB2")
            .iter()
            .any(|l| l.contains("exited normally")),
        "{}",
        why()
    );
    assert_eq!(value("LG_WAITER_STATUS="), Some("0".into()), "{}", why());
    // Nothing the guest printed came before gdb let it go: lg's own line
    // saying it waits is the first in its output.
    let waiter = shown("LG_WAITER");
    assert!(
        waiter.first().is_some_and(|l| l.contains("wait for gdb")),
        "{}",
        why()
    );
}
