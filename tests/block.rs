//! Disks: `--block=FILE` becomes the guest's `/dev/vda`, its root filesystem,
//! and what the guest writes and syncs is in the file when lg is gone.
//!
//! One test host, with a copy of the guest kit's `rootfs.ext4` at
//! `/disk/root.img`:
//! - `rootfs1`, `rootfs2`: `--block=/disk/root.img root=/dev/vda` boots the
//!   image's own `/sbin/init` (the kit's initramfs loads virtio_blk and
//!   switches root), which counts its boots in a file on the disk and syncs.
//!   The second lg, a new process on the same file, must read the first
//!   one's write: the count is 2.
//! - `readonly`: `--block=...,ro` gives a disk the guest sees as read-only
//!   (`/sys/block/vda/ro` is 1) and a write to it is refused.
//! - bad disks, each refused with one sentence naming the file before any
//!   guest starts: missing, a directory, a size not a multiple of 512, the
//!   same file twice.

use std::sync::OnceLock;

use lg_e2e::{boot_kit, case, script, start_once, test_host_limit, with_copy_of, SILENCE_LIMIT};
use xtask::{Kit, TestHost, TestHostRun};

/// `lg` arguments booting the kit with `disks` (lg options, which go before
/// the kernel's words) and `kernel_args`.
fn with_disks(disks: &str, kernel_args: &str) -> String {
    boot_kit(256, kernel_args).replacen("run ", &format!("run {disks} "), 1)
}

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    start_once(&RUN, || {
        let rootfs = with_disks("--block=/disk/root.img", "root=/dev/vda lgtest=rootfs");
        let body = format!(
            "lg_case rootfs1 {rootfs}\nlg_case rootfs2 {rootfs}\n\
             lg_case readonly {}\n\
             mkdir -p /tmp/adir\n\
             dd if=/dev/zero of=/tmp/odd.img bs=1000 count=1 2>/dev/null\n\
             lg_fail missing {}\nlg_fail directory {}\nlg_fail odd {}\nlg_fail twice {}\n",
            with_disks("--block=/disk/root.img,ro", "lgtest=blockro"),
            with_disks("--block=/disk/nonexistent.img", ""),
            with_disks("--block=/tmp/adir", ""),
            with_disks("--block=/tmp/odd.img", ""),
            with_disks("--block=/disk/root.img --block=/disk/../disk/root.img", ""),
        );
        with_copy_of(&Kit::rootfs(), "root", |image| {
            TestHost::new()
                .file(image, "/disk/root.img")
                .timeout(test_host_limit(3, 4))
                .silence_limit(SILENCE_LIMIT)
                .retry_lost_guests(0)
                .run(&script(&body))
                .map_err(|e| e.to_string())
        })
    })
}

#[test]
fn the_guest_boots_from_its_disk_and_a_synced_write_survives_lg() {
    let first = case(&test_host().output, "rootfs1");
    assert!(
        first.printed("LG_ROOTFS_OK"),
        "the guest never ran the disk's /sbin/init\n{}",
        first.describe()
    );
    assert_eq!(
        first.number_after("LG_ROOTFS_BOOTS="),
        Some(1),
        "{}",
        first.describe()
    );
    assert_eq!(first.status, Some(0), "{}", first.describe());
    let second = case(&test_host().output, "rootfs2");
    assert_eq!(
        second.number_after("LG_ROOTFS_BOOTS="),
        Some(2),
        "the second lg should find the first one's synced write on the disk\n{}",
        second.describe()
    );
}

#[test]
fn a_read_only_disk_is_read_only_in_the_guest() {
    let ro = case(&test_host().output, "readonly");
    assert_eq!(ro.number_after("LG_VDA_RO="), Some(1), "{}", ro.describe());
    assert!(
        ro.printed("LG_RO_WRITE=refused"),
        "a write to a read-only disk should fail in the guest\n{}",
        ro.describe()
    );
    assert_eq!(ro.status, Some(0), "{}", ro.describe());
}

#[test]
fn bad_disks_are_refused_in_one_sentence_naming_the_file() {
    let output = &test_host().output;
    for (name, culprit) in [
        ("missing", "/disk/nonexistent.img"),
        ("directory", "/tmp/adir"),
        ("odd", "/tmp/odd.img"),
        ("twice", "/disk/root.img"),
    ] {
        let refused = case(output, name);
        assert_eq!(refused.status, Some(1), "{name}\n{}", refused.describe());
        assert_eq!(
            refused.stderr.len(),
            1,
            "{name}: one line\n{}",
            refused.describe()
        );
        assert!(
            refused.stderr[0].starts_with("lg: ") && refused.stderr[0].contains(culprit),
            "{name}: the message should name {culprit}\n{}",
            refused.describe()
        );
    }
}
