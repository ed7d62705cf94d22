//! lg's seccomp confinement, thread by thread: the process-wide filter on
//! every thread, and on top of it the narrower filter of each thread's role
//! (see `bin/lg/src/seccomp.rs`).
//!
//! One test host. A guest with a disk, an entropy device and its console
//! idles (`lgtest=idle`); the script lists each of lg's threads by name
//! with its `Seccomp:` mode and `Seccomp_filters:` count from
//! `/proc/PID/task/*/status`, makes one `lg stat` request (the control
//! thread narrows itself at its first request once lg is confined), lists
//! the threads again, and stops the guest. Then, for each role,
//! `LG_SECCOMP=test-ROLE` has the first thread of that role make one call
//! that the process-wide filter allows and the role's forbids: lg must end
//! with status 2 and a sentence naming the call and the role.
//!
//! The counts follow from how filters stack: every thread has the
//! process-wide one (1); a vCPU adds its own (2); a device thread is
//! started by a vCPU (the guest's driver sets DRIVER_OK from a vCPU), so it
//! inherits the vCPU's two and adds its own (3).

use std::sync::OnceLock;

use lg_e2e::{script, start_once, test_host_limit, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

const BODY: &str = r#"
K="/kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 lgtest=idle"
truncate -s 16M /tmp/disk.img
# Prints each thread of lg as LG_THREAD <when> <name> <mode> <filters>.
threads() {
	for task in /proc/$pid/task/*; do
		mode=$(sed -n 's/^Seccomp:[[:space:]]*//p' $task/status)
		filters=$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' $task/status)
		echo "LG_THREAD $1 $(cat $task/comm) $mode ${filters:-none}"
	done
}
# Waits up to 200 s for the file $1 to match the pattern $2.
await() {
	tries=0
	until grep -qE "$2" $1 || [ $tries -ge 200 ]; do sleep 1; tries=$((tries + 1)); done
}

lg run --name=roles --rng --block=/tmp/disk.img 256 $K </dev/null >/tmp/roles.log 2>&1 &
pid=$!
await /tmp/roles.log LG_IDLE
# The device threads start as the guest's drivers do; give the last a moment.
sleep 2
threads before
lg stat roles >/dev/null
threads after
lg stop roles
wait $pid
echo "LG_ROLES_STATUS=$?"

for role in vcpu device control; do
	LG_SECCOMP=test-$role lg run --name=t$role 256 $K </dev/null >/tmp/$role.log 2>&1 &
	pid=$!
	await /tmp/$role.log 'LG_IDLE|lg: '
	# The control thread narrows itself at its first request.
	[ $role = control ] && lg stat t$role >/dev/null 2>&1
	waited=0
	while [ -e /proc/$pid/status ] && ! grep -q '^State:.*Z' /proc/$pid/status && [ $waited -lt 60 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	kill -KILL $pid 2>/dev/null
	wait $pid
	echo "LG_TEST_ROLE $role status=$?"
	grep 'lg: ' /tmp/$role.log | sed "s/^/LG_TEST_ROLE_SAYS $role /"
done
"#;

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        TestHost::new()
            .timeout(test_host_limit(4, 0))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(BODY))
            .map_err(|e| e.to_string())
    })
}

/// Each thread listed at `when` ("before" or "after" the first control
/// request): (name, seccomp mode, filter count).
fn threads(when: &str) -> Vec<(String, String, String)> {
    let prefix = format!("LG_THREAD {when} ");
    let threads: Vec<(String, String, String)> = test_host()
        .output
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(&prefix))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((
                words.next()?.to_string(),
                words.next()?.to_string(),
                words.next()?.to_string(),
            ))
        })
        .collect();
    assert!(
        !threads.is_empty(),
        "no threads listed {when}:\n{}",
        test_host().output
    );
    threads
}

/// The filter count of the thread named `name`, listed at `when`.
fn filters(when: &str, name: &str) -> String {
    let threads = threads(when);
    threads
        .iter()
        .find(|(thread, _, _)| thread == name)
        .map(|(_, _, filters)| filters.clone())
        .unwrap_or_else(|| panic!("no thread {name} {when} the first request: {threads:?}"))
}

#[test]
fn every_thread_is_in_filter_mode_and_the_kernel_counts_its_filters() {
    for when in ["before", "after"] {
        for (name, mode, filters) in threads(when) {
            assert_eq!(mode, "2", "{name} is not under a seccomp filter");
            // Seccomp_filters appeared in Linux 5.9; the test host's kernel
            // must report it, or the counts below prove nothing.
            assert_ne!(
                filters, "none",
                "the kernel does not report Seccomp_filters"
            );
        }
    }
    assert_eq!(
        test_host()
            .output
            .lines()
            .find(|l| l.starts_with("LG_ROLES_STATUS=")),
        Some("LG_ROLES_STATUS=0"),
        "{}",
        test_host().output
    );
}

#[test]
fn threads_without_a_role_have_only_the_process_wide_filter() {
    // (`console-input` has ended by now: its standard input is /dev/null.)
    for name in ["lg", "signals"] {
        assert_eq!(filters("after", name), "1", "{name}");
    }
}

#[test]
fn a_vcpu_thread_adds_its_own_filter() {
    assert_eq!(filters("before", "vcpu0"), "2");
}

#[test]
fn each_device_thread_adds_its_own_to_the_vcpus_it_inherits() {
    for name in ["virtio-console", "virtio-blk", "virtio-rng"] {
        assert_eq!(filters("before", name), "3", "{name}");
    }
}

#[test]
fn the_control_thread_narrows_itself_at_its_first_request() {
    assert_eq!(filters("before", "control"), "1");
    assert_eq!(filters("after", "control"), "2");
}

/// lg's status and what it said under `LG_SECCOMP=test-ROLE`.
fn refusal(role: &str) -> (String, String) {
    let output = &test_host().output;
    let status = output
        .lines()
        .find_map(|l| {
            l.trim_end()
                .strip_prefix(&format!("LG_TEST_ROLE {role} status="))
        })
        .unwrap_or_else(|| panic!("no test-{role} run:\n{output}"))
        .to_string();
    let said = output
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("LG_TEST_ROLE_SAYS {role} ")))
        .collect::<Vec<_>>()
        .join("\n");
    (status, said)
}

#[test]
fn a_vcpu_thread_may_not_type_into_the_terminal() {
    let (status, said) = refusal("vcpu");
    assert_eq!(status, "2", "{said}");
    // ioctl(TIOCSTI): allowed by the process-wide filter, not by a vCPU's.
    assert!(
        said.contains("lg: seccomp refused system call 16 (ioctl 0x00005412) on a vCPU thread"),
        "{said}"
    );
}

#[test]
fn a_device_thread_may_not_touch_a_socket() {
    let (status, said) = refusal("device");
    assert_eq!(status, "2", "{said}");
    // shutdown(2) is call 48.
    assert!(
        said.contains("lg: seccomp refused system call 48 on a device I/O thread"),
        "{said}"
    );
}

#[test]
fn the_control_thread_may_not_run_a_vcpu() {
    let (status, said) = refusal("control");
    assert_eq!(status, "2", "{said}");
    // ioctl(KVM_RUN) is 0xae80.
    assert!(
        said.contains(
            "lg: seccomp refused system call 16 (ioctl 0x0000ae80) on the control thread"
        ),
        "{said}"
    );
}
