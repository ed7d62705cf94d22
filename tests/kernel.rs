//! A kernel of one's own: the seed's example, with no initramfs at all.
//!
//! `cargo xtask kernel` builds a kernel with every lg driver built in
//! (`kernel-patches/lg.config`), leaving `target/kernel/bzImage` and the ELF
//! `target/kernel/vmlinux`. With it, lguest's classic
//! `lguest 64 vmlinux --block=rootfile root=/dev/vda` works as written: the
//! kernel finds the virtio disk itself, mounts it as root and runs its
//! `/sbin/init` (xtask/src/rootfs-init.sh), which prints `LG_ROOTFS_OK`.
//!
//! One test host, with both kernels and a copy of the kit's `rootfs.ext4`;
//! for each kernel (`vmlinux`, `bzimage`):
//! - `<kernel>-disk`: `lgtest=rootfs`, on the serial console lg adds: the
//!   disk's init runs and counts its boot on the disk;
//! - `<kernel>-hvc0`: `console=hvc0` and no `lgtest`: the init says its
//!   console is hvc0, and a line typed into lg at the shell's prompt runs in
//!   that shell, whose terminal is `/dev/hvc0`.
//!
//! - `seed`: the seed's line as written, `lguest 64 vmlinux
//!   --tunnet=192.168.19.1 --block=rootfile root=/dev/vda`: the kernel
//!   configures eth0 from the `ip=` lg adds, and the shell pings the host.
//!
//! `cargo xtask test` builds the kernel first (minutes the first time on a
//! machine, then it comes from the machine's cache) when it runs every test
//! or its arguments name `kernel`, so CI runs these. Only a plain
//! `cargo test` without `target/kernel/` gets here without the kernel: each
//! test then says it is skipped and why, and passes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use lg_e2e::{case, script, start_once, test_host_limit, with_copy_of, Case, SILENCE_LIMIT};
use xtask::{Kit, TestHost, TestHostRun};

/// The kernels under test: their case-name prefix and their file.
fn kernels() -> [(&'static str, PathBuf); 2] {
    [
        ("vmlinux", xtask::kernel::vmlinux()),
        ("bzimage", xtask::kernel::bzimage()),
    ]
}

/// Why the tests cannot run, if the kernel has not been built.
fn not_built() -> Option<String> {
    kernels()
        .iter()
        .find(|(_, path)| !path.is_file())
        .map(|(_, path)| {
            format!(
                "{} is missing: run `cargo xtask kernel` first (a few minutes)",
                xtask::show_path(path)
            )
        })
}

/// Runs `lg_case CASE LG_ARGS` and types two lines into it once the disk's
/// shell shows its prompt (`rootfs# `), as a person would; it gives up
/// waiting after 100 s, when lg's own time limit is near.
///
/// Typing any earlier would lose the line: Linux's virtio console driver
/// throws away what arrives on hvc0 before its port is set up (`in_intr`
/// finds no port and flushes the buffers), and lg hands typed bytes to the
/// guest as soon as it posts receive buffers.
const TYPE_AT_THE_PROMPT: &str = "\
{ i=0; until grep -q 'rootfs# ' /tmp/CASE.out 2>/dev/null || [ $i -ge 100 ]; do \
sleep 1; i=$((i + 1)); done; printf 'TYPED'; } | \
lg_case CASE LG_ARGS | tee /tmp/CASE.out
";

/// What the hvc0 cases type: where the shell's terminal is, then power off.
const TYPED_TTY: &str = "echo LG_SHELL_TTY=$(tty)\\npoweroff -f\\n";

/// What the seed's line types: a ping of the host's end of the tap, which
/// the kernel's own `ip=` (from lg) configured, then power off.
const TYPED_PING: &str =
    "ping -c 2 192.168.19.1 >/dev/null && echo LG_SEED_PING_OK\\npoweroff -f\\n";

/// The run's transcript, or `None` (after saying so) when there is no kernel.
fn test_host(test: &str) -> Option<&'static TestHostRun> {
    if let Some(reason) = not_built() {
        // Straight to stderr, past the test harness's capture, which would
        // hide the word "skipped" behind an "ok".
        let _ = writeln!(std::io::stderr(), "skipped {test}: {reason}");
        return None;
    }
    static RUN: OnceLock<Result<TestHostRun, String>> = OnceLock::new();
    Some(start_once(&RUN, || {
        let mut body = String::new();
        for (name, _) in kernels() {
            // 64 MiB and no --initrd, as in the seed's example.
            let run =
                format!("run --block=/disk/root.img 64 /kernel/{name} root=/dev/vda panic=-1");
            body.push_str(&format!("lg_case {name}-disk {run} lgtest=rootfs\n"));
            body.push_str(
                &TYPE_AT_THE_PROMPT
                    .replace("TYPED", TYPED_TTY)
                    .replace("CASE", &format!("{name}-hvc0"))
                    .replace("LG_ARGS", &format!("{run} console=hvc0")),
            );
        }
        // The seed's example, word for word, through lguest's syntax
        // (`lg lguest` is lg started as `lguest`).
        body.push_str(
            &TYPE_AT_THE_PROMPT
                .replace("TYPED", TYPED_PING)
                .replace("CASE", "seed")
                .replace(
                    "LG_ARGS",
                    "lguest 64 /kernel/vmlinux --tunnet=192.168.19.1 --block=/disk/root.img \
                     root=/dev/vda",
                ),
        );
        with_copy_of(&Kit::rootfs(), "kroot", |image| {
            let mut host = TestHost::new()
                .file(image, "/disk/root.img")
                .timeout(test_host_limit(5, 0))
                .silence_limit(SILENCE_LIMIT)
                .retry_lost_guests(0);
            for (name, path) in kernels() {
                host = host.file(path, &format!("/kernel/{name}"));
            }
            host.run(&script(&body)).map_err(|e| e.to_string())
        })
    }))
}

/// The case `<kernel>-<what>` of the run.
fn kernel_case(run: &TestHostRun, kernel: &str, what: &str) -> Case {
    case(&run.output, &format!("{kernel}-{what}"))
}

#[test]
fn the_kernel_boots_the_disk_with_no_initramfs() {
    let Some(run) = test_host("the_kernel_boots_the_disk_with_no_initramfs") else {
        return;
    };
    for (kernel, _) in kernels() {
        let disk = kernel_case(run, kernel, "disk");
        assert!(
            disk.printed("LG_ROOTFS_OK"),
            "{kernel} never ran the disk's /sbin/init\n{}",
            disk.describe()
        );
        assert!(
            disk.printed("LG_ROOTFS_BOOTS="),
            "{kernel}: the disk's init should count its boot on the disk\n{}",
            disk.describe()
        );
        assert!(
            !disk.printed("Unpacking initramfs") && !disk.printed("Trying to unpack rootfs"),
            "{kernel} unpacked an initramfs, but lg was given none\n{}",
            disk.describe()
        );
        assert_eq!(disk.status, Some(0), "{kernel}\n{}", disk.describe());
    }
}

#[test]
fn with_console_hvc0_the_shell_is_on_hvc0() {
    let Some(run) = test_host("with_console_hvc0_the_shell_is_on_hvc0") else {
        return;
    };
    for (kernel, _) in kernels() {
        let hvc0 = kernel_case(run, kernel, "hvc0");
        assert!(
            hvc0.printed("LG_ROOTFS_CONSOLE=hvc0"),
            "{kernel}: the kernel's console should be hvc0\n{}",
            hvc0.describe()
        );
        assert!(
            hvc0.printed("LG_SHELL_TTY=/dev/hvc0"),
            "{kernel}: a line typed at the prompt should run in a shell on /dev/hvc0\n{}",
            hvc0.describe()
        );
        assert_eq!(hvc0.status, Some(0), "{kernel}\n{}", hvc0.describe());
    }
}

#[test]
fn the_seeds_example_line_boots_with_its_disk_and_network() {
    let Some(run) = test_host("the_seeds_example_line_boots_with_its_disk_and_network") else {
        return;
    };
    let seed = case(&run.output, "seed");
    assert!(seed.printed("LG_ROOTFS_OK"), "{}", seed.describe());
    assert!(
        seed.printed("LG_SEED_PING_OK"),
        "the guest could not ping the host's end of its tap\n{}",
        seed.describe()
    );
    assert_eq!(seed.status, Some(0), "{}", seed.describe());
}
