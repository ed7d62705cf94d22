//! Disks come in the order they were given.
//!
//! One test host, with a copy of the kit's `rootfs.ext4` as `/disk/root.img`:
//! `--block` twice gives the guest `/dev/vda` and `/dev/vdb`, the second
//! with the second file's size.
//!
//! The kill -9 durability cycles (the guest's `lgtest=syncloop`) are not run
//! here yet: one CI run in three saw a cycle whose guest never reported
//! mounting its disk, which must be understood before the test can gate.

use std::sync::OnceLock;

use lg_e2e::{script, test_host_limit};
use xtask::{Kit, TestHost, TestHostRun};

fn test_host() -> &'static TestHostRun {
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let image = std::env::temp_dir().join(format!("lg-e2e-durable-{}.img", std::process::id()));
        std::fs::copy(Kit::rootfs(), &image)
            .map_err(|e| format!("cannot copy {}: {e}", Kit::rootfs().display()))?;
        let body = "dd if=/dev/zero of=/tmp/second.img bs=1M count=8 2>/dev/null\n\
             lg_case twodisks run --block=/disk/root.img --block=/tmp/second.img 256 \
             /kit/bzImage --initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 lgtest=twodisks\n";
        let run = TestHost::new()
            .file(&image, "/disk/root.img")
            .timeout(test_host_limit(1, 0))
            .run(&script(body))
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
