//! Bad input: lg refuses it in one sentence that names the culprit.
//!
//! A user who typoes a path or a size should read one line starting with
//! `lg: ` that points at what was wrong, and get a non-zero status, not a
//! backtrace, a usage dump or a hung guest. The wording is lg's business;
//! these tests only insist on the shape (one line, `lg: `) and that the file
//! or value at fault is named. lg checks all of this before it opens
//! `/dev/kvm` (tests/cli.rs checks the same on the build machine); these
//! cases run inside the test host too, where a real KVM exists, so nothing
//! about a KVM-capable host changes the answers.

use std::sync::OnceLock;

use lg_e2e::{case, names, script, start_once, test_host_limit, KILLED_BY_TIMEOUT, SILENCE_LIMIT};
use xtask::{TestHost, TestHostRun};

/// The files the cases need, made inside the test host.
const SETUP: &str = "\
mkdir -p /tmp/kernel-dir
echo 'this is not a kernel' >/tmp/kernel.txt
head -c 100000 /kit/bzImage >/tmp/truncated-bzImage
dd if=/dev/zero of=/tmp/big-initrd bs=1M count=128 2>/dev/null
";

/// (case, lg arguments).
const CASES: [(&str, &str); 8] = [
    ("missing-kernel", "run 256 /tmp/no-such-kernel"),
    ("kernel-is-a-directory", "run 256 /tmp/kernel-dir"),
    ("kernel-is-a-text-file", "run 256 /tmp/kernel.txt"),
    ("truncated-kernel", "run 256 /tmp/truncated-bzImage"),
    (
        "missing-initrd",
        "run 256 /kit/bzImage --initrd=/tmp/no-such-initrd",
    ),
    // 96 MiB holds the kernel (it needs about 68 MiB up from 16 MiB) but
    // not a 128 MiB initrd next to it.
    (
        "initrd-larger-than-memory",
        "run 96 /kit/bzImage --initrd=/tmp/big-initrd",
    ),
    ("memory-zero", "run 0 /kit/bzImage"),
    ("memory-not-a-number", "run abc /kit/bzImage"),
];

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let mut body = SETUP.to_string();
        for (name, args) in CASES {
            body.push_str(&format!("lg_fail {name} {args}\n"));
        }
        TestHost::new()
            .timeout(test_host_limit(0, CASES.len() as u32))
            .silence_limit(SILENCE_LIMIT)
            .retry_lost_guests(0)
            .run(&script(&body))
            .map_err(|e| e.to_string())
    })
}

/// Checks that case `name` was refused in one `lg: ` line naming one of `culprits`.
fn assert_refused(name: &str, culprits: &[&str]) {
    let refused = case(&test_host().output, name);
    let story = refused.describe();
    match refused.status {
        None => panic!("lg never finished\n{story}"),
        Some(0) => panic!("lg accepted bad input (status 0)\n{story}"),
        Some(KILLED_BY_TIMEOUT) => panic!("lg hung instead of refusing\n{story}"),
        Some(_) => {}
    }
    assert_eq!(
        refused.stderr.len(),
        1,
        "lg should explain in exactly one line of stderr\n{story}"
    );
    let line = &refused.stderr[0];
    assert!(
        line.starts_with("lg: "),
        "lg's message should start with `lg: `\n{story}"
    );
    assert!(
        culprits.iter().any(|culprit| names(line, culprit)),
        "lg's message should name the culprit ({})\n{story}",
        culprits.join(" or ")
    );
}

#[test]
fn a_missing_kernel_is_named() {
    assert_refused("missing-kernel", &["/tmp/no-such-kernel"]);
}

#[test]
fn a_directory_as_kernel_is_named() {
    assert_refused("kernel-is-a-directory", &["/tmp/kernel-dir"]);
}

#[test]
fn a_text_file_as_kernel_is_named() {
    assert_refused("kernel-is-a-text-file", &["/tmp/kernel.txt"]);
}

#[test]
fn a_truncated_bzimage_is_named() {
    assert_refused("truncated-kernel", &["/tmp/truncated-bzImage"]);
}

#[test]
fn a_missing_initrd_is_named() {
    assert_refused("missing-initrd", &["/tmp/no-such-initrd"]);
}

#[test]
fn an_initrd_larger_than_memory_is_named() {
    assert_refused("initrd-larger-than-memory", &["/tmp/big-initrd", "initrd"]);
}

#[test]
fn zero_memory_is_named() {
    assert_refused("memory-zero", &["0"]);
}

#[test]
fn memory_that_is_not_a_number_is_named() {
    assert_refused("memory-not-a-number", &["abc"]);
}
