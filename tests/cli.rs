//! The command line a person types, checked on this very machine.
//!
//! lg checks all of its input before it opens `/dev/kvm`, so none of this
//! needs a test host or a KVM that works: `target/release/lg` runs here
//! directly, as `lg` and as `lguest` (a symlink and a hard link to it, made
//! in a scratch directory). The story:
//! - a table of bad command lines, each refused with a non-zero status and
//!   one line on stderr, starting with `lg: `, that names the culprit, and
//!   nothing left behind;
//! - lguest's classic line and the `lg run` line describe the same guest
//!   (`--dry-run` prints lg's parsed configuration);
//! - the help of `lg`, `lg run` and `lguest`, and the manual page;
//! - and, in the one section at the end that boots the nested test host,
//!   `--chroot` and `--username`: the guest runs with lg's ids dropped.
//!
//! Build lg first (`cargo build --release -p lg`, or `cargo xtask test`,
//! which also prepares the test host).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lg_e2e::{names, run_here, Outcome, SILENCE_LIMIT};
use xtask::{lg_binary, target_dir, workspace_root, Kit};

/// A refusal takes milliseconds; a run that gets this far went wrong.
const LIMIT: Duration = Duration::from_secs(30);

/// A directory of files for bad command lines, and links to lg named
/// `lguest`. lg runs with it as its working directory, so anything lg
/// leaves behind would show up in it.
struct Scratch {
    dir: PathBuf,
    kit: Kit,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let lg = lg_binary();
        assert!(
            lg.is_file(),
            "{} is missing: build it with `cargo build --release -p lg`",
            lg.display()
        );
        let kit = Kit::existing().unwrap_or_else(|e| panic!("{e}"));
        // Under target/, so the hard link to lg stays on one file system.
        let dir = target_dir()
            .join("cli-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel-dir")).unwrap();
        std::fs::write(dir.join("kernel.txt"), "this is not a kernel\n").unwrap();
        let bzimage = std::fs::read(&kit.bzimage).unwrap();
        std::fs::write(dir.join("truncated-bzImage"), &bzimage[..100_000]).unwrap();
        std::os::unix::fs::symlink(&lg, dir.join("lguest")).unwrap();
        std::fs::create_dir(dir.join("hard")).unwrap();
        if std::fs::hard_link(&lg, dir.join("hard/lguest")).is_err() {
            // Another file system after all: a copy has the same name.
            std::fs::copy(&lg, dir.join("hard/lguest")).unwrap();
        }
        Scratch { dir, kit }
    }

    /// Every path under the scratch directory.
    fn listing(&self) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, into: &mut BTreeSet<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                into.insert(path.clone());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, into);
                }
            }
        }
        let mut paths = BTreeSet::new();
        walk(&self.dir, &mut paths);
        paths
    }

    /// Replaces `{K}` (the kit's bzImage), `{I}` (its initrd) and `{S}` (this
    /// directory) in a command line, and splits it into words.
    fn words(&self, line: &str) -> Vec<String> {
        line.split_whitespace()
            .map(|word| {
                word.replace("{K}", &self.kit.bzimage.display().to_string())
                    .replace("{I}", &self.kit.initrd.display().to_string())
                    .replace("{S}", &self.dir.display().to_string())
            })
            .collect()
    }

    /// Runs lg as `program` (`lg`, or `lguest` through a link) with `line`.
    fn run(&self, program: Program, line: &str) -> Outcome {
        let path = match program {
            Program::Lg => lg_binary(),
            Program::Lguest => self.dir.join("lguest"),
            Program::LguestHardLink => self.dir.join("hard/lguest"),
        };
        run_here(
            Command::new(&path)
                .args(self.words(line))
                .current_dir(&self.dir)
                .env_remove("RUST_LOG"),
            LIMIT,
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, Debug)]
enum Program {
    /// `target/release/lg`.
    Lg,
    /// A symlink named `lguest`.
    Lguest,
    /// A hard link named `lguest`.
    LguestHardLink,
}

/// (case, program, command line, the culprit lg's message must name).
/// `{K}` is the guest kit's bzImage, `{I}` its initrd, `{S}` the scratch
/// directory; 256 MiB is enough for the kit's kernel, so a size is never
/// what goes wrong unless the row is about it.
const BAD: &[(&str, Program, &str, &str)] = &[
    ("no arguments", Program::Lg, "", "command"),
    ("run alone", Program::Lg, "run", "MEM_MB"),
    ("no kernel", Program::Lg, "run 256", "KERNEL"),
    ("unknown command", Program::Lg, "fly 256 {K}", "fly"),
    ("memory 0", Program::Lg, "run 0 {K}", "0"),
    ("memory abc", Program::Lg, "run abc {K}", "abc"),
    ("memory -5", Program::Lg, "run -5 {K}", "-5"),
    (
        "memory beyond the host",
        Program::Lg,
        "run 99999999999 {K}",
        "99999999999",
    ),
    (
        "kernel missing",
        Program::Lg,
        "run 256 {S}/no-such-kernel",
        "no-such-kernel",
    ),
    (
        "kernel a directory",
        Program::Lg,
        "run 256 {S}/kernel-dir",
        "kernel-dir",
    ),
    (
        "kernel a text file",
        Program::Lg,
        "run 256 {S}/kernel.txt",
        "kernel.txt",
    ),
    (
        "kernel truncated",
        Program::Lg,
        "run 256 {S}/truncated-bzImage",
        "truncated-bzImage",
    ),
    (
        "unknown option",
        Program::Lg,
        "run --frobnicate 256 {K}",
        "--frobnicate",
    ),
    (
        "tunnet empty",
        Program::Lg,
        "run 256 {K} --tunnet=",
        "--tunnet",
    ),
    (
        "tunnet bad address",
        Program::Lg,
        "run 256 {K} --tunnet=999.1.1.1",
        "999.1.1.1",
    ),
    (
        "tunnet bridge without name",
        Program::Lg,
        "run 256 {K} --tunnet=bridge:",
        "bridge",
    ),
    (
        "tunnet bad mac",
        Program::Lg,
        "run 256 {K} --tunnet=10.0.0.1:52:54:00",
        "52:54:00",
    ),
    (
        "tunnet bridge missing",
        Program::Lg,
        "run 256 {K} --tunnet=bridge:nosuchbr0",
        "nosuchbr0",
    ),
    (
        "block missing file",
        Program::Lg,
        "run 256 {K} --block={S}/no-such-disk",
        "no-such-disk",
    ),
    (
        "block not whole sectors",
        Program::Lg,
        "run 256 {K} --block={S}/kernel.txt",
        "kernel.txt",
    ),
    (
        "block unknown option",
        Program::Lg,
        "run 256 {K} --block={S}/kernel.txt,fast",
        "fast",
    ),
    (
        "initrd twice",
        Program::Lg,
        "run 256 {K} --initrd={I} --initrd={I}",
        "--initrd",
    ),
    (
        "initrd missing",
        Program::Lg,
        "run 256 {K} --initrd={S}/no-such-initrd",
        "no-such-initrd",
    ),
    ("cpus 0", Program::Lg, "run --cpus=0 256 {K}", "--cpus"),
    ("cpus 999", Program::Lg, "run --cpus=999 256 {K}", "999"),
    (
        "chroot missing",
        Program::Lg,
        "run 256 {K} --chroot=/nonexistent",
        "/nonexistent",
    ),
    (
        "chroot a file",
        Program::Lg,
        "run 256 {K} --chroot={S}/kernel.txt",
        "kernel.txt",
    ),
    (
        "unknown user",
        Program::Lg,
        "run 256 {K} --username=nosuchuser",
        "nosuchuser",
    ),
    ("lguest alone", Program::Lguest, "", "memory size"),
    ("lguest no kernel", Program::Lguest, "64", "kernel"),
    ("lguest memory abc", Program::Lguest, "abc vmlinux", "abc"),
    ("lguest memory -5", Program::Lguest, "-5 {K}", "-5"),
    (
        "lguest unknown option",
        Program::Lguest,
        "--frob 64 k",
        "--frob",
    ),
    (
        "lguest unknown short option",
        Program::Lguest,
        "-x 64 k",
        "-x",
    ),
    (
        "lguest option without value",
        Program::Lguest,
        "256 {K} --block",
        "--block",
    ),
    (
        "lguest initrd twice",
        Program::Lguest,
        "256 {K} -i {I} --initrd={I}",
        "--initrd",
    ),
    (
        "lguest switch with value",
        Program::Lguest,
        "--verbose=yes 256 {K}",
        "--verbose",
    ),
    (
        "lguest tunnet malformed",
        Program::Lguest,
        "256 {K} -t 999.1.1.1",
        "999.1.1.1",
    ),
    (
        "lguest kernel a text file",
        Program::Lguest,
        "256 kernel.txt",
        "kernel.txt",
    ),
    (
        "lguest chroot missing",
        Program::Lguest,
        "--chroot=/nonexistent 256 {K}",
        "/nonexistent",
    ),
    (
        "lguest unknown user",
        Program::Lguest,
        "256 {K} -u nosuchuser",
        "nosuchuser",
    ),
    (
        "the seed's example, with no rootfile here",
        Program::Lguest,
        "64 vmlinux --tunnet=192.168.19.1 --block=rootfile root=/dev/vda",
        "rootfile",
    ),
    (
        "lguest by hard link",
        Program::LguestHardLink,
        "64",
        "kernel",
    ),
    ("lg lguest", Program::Lg, "lguest 64", "kernel"),
];

#[test]
fn bad_command_lines_are_refused_in_one_line_naming_the_culprit() {
    assert!(BAD.len() >= 25);
    let scratch = Scratch::new("bad");
    let before = scratch.listing();
    let mut failures = Vec::new();
    for &(case, program, line, culprit) in BAD {
        let outcome = scratch.run(program, line);
        let story = format!(
            "{case}: {program:?} {line}\n  status {:?}\n  stderr {:?}\n  stdout {:?}",
            outcome.status, outcome.stderr, outcome.stdout
        );
        let lines: Vec<&str> = outcome.stderr.lines().collect();
        let problem = match outcome.status {
            None => Some("lg did not finish (killed)"),
            Some(0) => Some("lg accepted it (status 0)"),
            Some(_) if lines.len() != 1 => Some("stderr is not exactly one line"),
            Some(_) if !lines[0].starts_with("lg: ") => Some("the line does not start with `lg: `"),
            Some(_) if !names(lines[0], culprit) => Some("the line does not name the culprit"),
            Some(_) if !outcome.stdout.is_empty() => Some("lg printed on stdout"),
            Some(_) if scratch.listing() != before => Some("lg left something behind"),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            failures.push(format!("{problem} (culprit {culprit:?})\n{story}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad command lines were not refused properly:\n\n{}",
        failures.len(),
        BAD.len(),
        failures.join("\n\n")
    );
}

#[test]
fn an_argument_that_is_not_utf8_is_refused_by_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let scratch = Scratch::new("utf8");
    // A kernel path with a byte that is not UTF-8 (Latin-1's 'é').
    let output = Command::new(lg_binary())
        .args([
            OsStr::new("run"),
            OsStr::new("64"),
            OsStr::from_bytes(b"kernel-\xe9"),
        ])
        .current_dir(&scratch.dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run lg");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(lines.len(), 1, "one sentence, not a panic: {stderr}");
    assert!(
        lines[0].starts_with("lg: argument 3 (kernel-") && lines[0].contains("not valid UTF-8"),
        "{stderr}"
    );
}

/// Runs lg with `--dry-run`, which must succeed, and returns what it printed
/// (on stdout; `--verbose` logs go to stderr).
fn dry_run(scratch: &Scratch, program: Program, line: &str) -> String {
    let outcome = scratch.run(program, line);
    assert_eq!(
        outcome.status,
        Some(0),
        "{program:?} {line}: --dry-run should succeed\nstderr:\n{}",
        outcome.stderr
    );
    outcome.stdout
}

#[test]
fn the_classic_line_and_lg_run_describe_the_same_guest() {
    let scratch = Scratch::new("same-guest");
    let pairs = [
        (
            "256 {K} --initrd={I} console=ttyS0 quiet --dry-run",
            "run --dry-run 256 {K} --initrd={I} console=ttyS0 quiet",
        ),
        (
            // Options before, between and after the kernel words, short forms.
            "-v 256 {K} quiet -i {I} root=/dev/vda --cpus 1 --dry-run",
            "run -v --dry-run --cpus 1 --initrd {I} 256 {K} quiet root=/dev/vda",
        ),
        (
            "--dry-run --chroot={S} --username=root 256 {K} -- -s panic=-1",
            "run --dry-run --chroot {S} --username root 256 {K} -- -s panic=-1",
        ),
    ];
    for (classic, lg_run) in pairs {
        let from_classic = dry_run(&scratch, Program::Lguest, classic);
        assert_eq!(
            from_classic,
            dry_run(&scratch, Program::Lg, lg_run),
            "`lguest {classic}` and `lg {lg_run}` should describe the same guest"
        );
        assert_eq!(
            from_classic,
            dry_run(&scratch, Program::Lg, &format!("lguest {classic}")),
            "`lg lguest` should read the line as `lguest` does"
        );
        assert_eq!(
            from_classic,
            dry_run(&scratch, Program::LguestHardLink, classic),
            "a hard link named lguest should read the line as the symlink does"
        );
    }
}

#[test]
fn the_dry_run_shows_the_command_line_the_kernel_gets() {
    let scratch = Scratch::new("dry-run");
    let shown = dry_run(
        &scratch,
        Program::Lguest,
        "256 {K} -i {I} quiet --dry-run root=/dev/vda -- -s",
    );
    let field = |name: &str| -> String {
        shown
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no `{name}:` line in\n{shown}"))
            .to_string()
    };
    assert_eq!(field("memory"), "256 MiB");
    assert_eq!(field("kernel"), scratch.kit.bzimage.display().to_string());
    assert_eq!(field("initrd"), scratch.kit.initrd.display().to_string());
    assert_eq!(field("vcpus"), "1");
    // lg adds the serial console when the line names none.
    assert_eq!(
        field("command line"),
        "quiet root=/dev/vda -s console=ttyS0"
    );
    assert_eq!(field("terminal"), "ttyS0");

    let shown = dry_run(&scratch, Program::Lg, "run --dry-run 256 {K} console=hvc0");
    assert!(shown.contains("command line: console=hvc0\n"), "{shown}");
    assert!(shown.contains("terminal: hvc0\n"), "{shown}");
}

/// Runs `program --help`-like lines, which succeed and print on stdout.
fn help(scratch: &Scratch, program: Program, line: &str) -> String {
    let outcome = scratch.run(program, line);
    assert_eq!(
        (outcome.status, outcome.stderr.as_str()),
        (Some(0), ""),
        "{program:?} {line} should print help and succeed"
    );
    outcome.stdout
}

#[test]
fn help_shows_the_syntax_an_example_and_the_exit_statuses() {
    let scratch = Scratch::new("help");
    let lg = help(&scratch, Program::Lg, "--help");
    assert!(lg.contains("run") && lg.contains("lguest"), "{lg}");

    let run = help(&scratch, Program::Lg, "run --help");
    for expected in [
        "MEM_MB",
        "--initrd",
        "--block",
        "--tunnet",
        "--rng",
        "--chroot",
        "--username",
        "--dry-run",
        "lg run 256 bzImage",
        "4 the guest kernel panicked",
    ] {
        assert!(
            run.contains(expected),
            "`lg run --help` lacks {expected:?}:\n{run}"
        );
    }

    let lguest = help(&scratch, Program::Lguest, "--help");
    assert!(lguest.starts_with("usage: lguest [--verbose]"), "{lguest}");
    for expected in [
        "-t, --tunnet=IP[:MAC]",
        "-b, --block=FILE",
        "-i, --initrd=FILE",
        "-r, --rng",
        "-c, --chroot=DIR",
        "-u, --username=USER",
        "lguest 64 vmlinux --tunnet=192.168.19.1 --block=rootfile root=/dev/vda",
        "0  the guest powered off or rebooted",
        "1  lg refused to start",
        "2  the guest crashed",
        "3  the user stopped lg",
        "4  the guest kernel panicked",
    ] {
        assert!(
            lguest.contains(expected),
            "`lguest --help` lacks {expected:?}:\n{lguest}"
        );
    }
    assert_eq!(lguest, help(&scratch, Program::Lg, "lguest 64 k -h"));
}

#[test]
fn the_manual_page_has_its_sections() {
    let page_path = workspace_root().join("docs/lg.1");
    let page = std::fs::read_to_string(&page_path)
        .unwrap_or_else(|e| panic!("{}: {e}", page_path.display()));
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(
            page.lines().any(|line| line == format!(".SH {section}")),
            "lg(1) lacks its {section} section"
        );
    }
    for option in [
        "initrd",
        "block",
        "tunnet",
        "rng",
        "chroot",
        "username",
        "dry\\-run",
    ] {
        assert!(
            page.contains(&format!("\\-\\-{option}")),
            "lg(1) lacks --{option}"
        );
    }
    // Where man is installed, the page must also render without complaint.
    let rendered = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page_path)
        .env("MANPAGER", "cat")
        .output();
    if let Ok(rendered) = rendered {
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(
            rendered.status.success() && text.contains("EXIT STATUS"),
            "man -l {} failed:\n{}",
            page_path.display(),
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(
            rendered.stderr.is_empty(),
            "man -l warns about lg(1):\n{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
}

// --- In the test host: the guest runs after lg gives up its privileges ---
//
// The one part of this file that needs a KVM that runs stock kernels, so
// the one part that boots the nested test host (see tests/lib.rs). lg is
// started as `lguest` with `--chroot` and `--username` of a user the script
// adds; while the guest sits at its shell, `/proc/PID/status` shows lg's
// ids, and the guest's `/init` has printed its marker, so the guest ran
// after the drop.

/// The user and groups the script gives the test host.
const DROP_UID: u32 = 4321;
const DROP_GID: u32 = 4321;
const DROP_EXTRA_GID: u32 = 4322;

const PRIVILEGE_DROP: &str = r#"
echo 'lguser:x:4321:4321::/:/bin/false' >>/etc/passwd
echo 'lgusers:x:4321:' >>/etc/group
echo 'lgextra:x:4322:lguser' >>/etc/group
mkdir -p /tmp/empty
ln -s /bin/lg /tmp/lguest
sleep 600 | /tmp/lguest --chroot=/tmp/empty --username=lguser 256 /kit/bzImage \
	--initrd=/kit/initrd.cpio.gz console=ttyS0 panic=-1 quiet >/tmp/guest.out 2>&1 &
for i in $(seq 150); do
	grep -q LG_GUEST_INIT_OK /tmp/guest.out && break
	sleep 1
done
pid=$(pidof lg lguest | cut -d' ' -f1)
echo "LG_PRIV_PID $pid"
grep -E '^(Uid|Gid|Groups):' /proc/$pid/status | sed 's/^/LG_PRIV_STATUS /'
grep -q LG_GUEST_INIT_OK /tmp/guest.out && echo LG_PRIV_GUEST_RAN
sed 's/^/LG_PRIV_OUT /' /tmp/guest.out | tail -20
kill $pid
"#;

#[test]
fn in_the_test_host_the_guest_runs_as_the_user_lg_dropped_to() {
    let run = xtask::TestHost::new()
        .timeout(Duration::from_secs(400))
        .silence_limit(SILENCE_LIMIT)
        .retry_lost_guests(0)
        .run(PRIVILEGE_DROP)
        .unwrap_or_else(|e| panic!("{e}"));
    let output = &run.output;
    let status_line = |field: &str| -> Vec<u32> {
        output
            .lines()
            .find_map(|line| line.split("LG_PRIV_STATUS ").nth(1)?.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} line from /proc/PID/status:\n{output}"))
            .split_whitespace()
            .map(|id| id.parse().unwrap())
            .collect()
    };
    assert!(
        output.contains("LG_PRIV_GUEST_RAN"),
        "the guest's /init never ran under lg --chroot --username:\n{output}"
    );
    assert_eq!(status_line("Uid:"), [DROP_UID; 4], "{output}");
    assert_eq!(status_line("Gid:"), [DROP_GID; 4], "{output}");
    let mut groups = status_line("Groups:");
    groups.sort_unstable();
    assert_eq!(groups, [DROP_GID, DROP_EXTRA_GID], "{output}");
}
