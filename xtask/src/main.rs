//! `cargo xtask`: the command line over the xtask library.
//!
//! Four commands, each one step of lg's story for a newcomer:
//! `run` boots a guest to a shell (the README's first command), `test` runs
//! every test (the README's second, and CI's), and `guest` and `testhost`
//! expose the two pieces those are built on, for when something needs a
//! closer look; `install` puts lg, its `lguest` link and its manual page
//! under a prefix, `bench` measures lg beside QEMU, and `kernel` builds a
//! guest kernel with lg's drivers built in, which needs no initramfs, and
//! `fuzz` runs the fuzz targets in `fuzz/` (`fuzz.rs`). The
//! argument parsing is by hand: a few commands with a flag or two each,
//! where `--` and the words after it must pass through untouched.

mod fuzz;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use xtask::command::{cargo, run_visible};
use xtask::testhost::{self, Lg};
use xtask::{debian, guest, lg_binary, progress, shell, show_path, Error, HostKvm, Kit, TestHost};

const USAGE: &str = "\
usage: cargo xtask <command>

  run [MEM] [-- KERNEL ARGS...]
        build lg and boot the guest kit to a shell on this terminal
        (MEM in MiB, default 256); inside the nested test host when this
        machine's KVM cannot run a stock kernel
  test [CARGO TEST ARGS...]
        build lg, the guest kit, the test host and (for a full run, or
        when the arguments name `kernel`) the kernel of `kernel` below,
        then `cargo test` (default `--workspace --no-fail-fast`): unit
        tests and the end-to-end tests
  guest [--kernel FILE --initrd FILE]
        fetch Debian's cloud kernel and busybox and build the guest kit in
        target/guest/, or make the kit your own kernel and initramfs
  testhost [--memory MB] [--timeout SECS] [--file HOST:INSIDE]... [-- CMD...]
        run CMD in the nested test host (QEMU TCG with nested SVM, a real
        /dev/kvm, /bin/lg and the kit in /kit) and exit with its status;
        without CMD, a shell in the test host on this terminal. --file puts
        a file or directory of this machine into the test host (default
        limits: 4096 MB, 300 s). One CMD word is a shell command line:
        -- 'ls /dev/kvm; echo hi'
  install --prefix DIR
        copy target/release/lg (build it first) to DIR/bin/lg, make
        DIR/bin/lguest a link to it (lg takes lguest's syntax under that
        name) and install the manual page as DIR/share/man/man1/lg.1
        and lguest.1
  bench [--runs N] [--only PART,...]
        build lg and the guest kit, then boot lg and QEMU (-M pc and
        -M microvm) on the same guest in one test host: boot time, memory
        overhead, block and network throughput, N runs each (default 5);
        then lg alone: lazy RAM, 8 guests at once. Parts: boot, idle, net,
        lazy, many (default: all). Prints the tables and writes them as
        JSON to target/bench/ (and latest.json)
  kernel
        build a guest kernel with every lg driver built in, from Debian's
        linux-source-6.1 (tinyconfig plus kernel-patches/lg.config):
        target/kernel/bzImage and vmlinux, which boot from a disk with no
        initramfs (--block=target/guest/rootfs.ext4 root=/dev/vda); 7 to 17
        minutes on 2 cores, then nothing until lg.config or the source
        changes; a good build is kept in the machine's cache ($LG_CACHE_DIR,
        else $XDG_CACHE_HOME/lg, else ~/.cache/lg) for every checkout
  soak [--kills N] [--boots N] [--control qemu] [--trace] [--cpus N] [--console ttyS0|hvc0]
        reliability, counted, in one test host (not CI: tens of minutes):
        N times (default 100) kill lg with SIGKILL while its guest syncs
        writes to a disk, then check the image with e2fsck and that the
        synced data is there; and N boots to /init (default 100).
        --control qemu: the boots with QEMU -M pc instead of lg, the test
        host's own failure rate; --trace: print the test host KVM's last
        trace events for a failing cycle or boot; --cpus N: the test host's
        vCPUs (default 2); --console hvc0: the kill cycles' guests print on
        the virtio console instead of the serial port (default ttyS0)
  fuzz [--seconds N] [--target NAME]
        build the fuzz targets in fuzz/ (cargo-fuzz, installed if missing)
        and run each for N seconds (default 60) on a copy of its seed
        corpus in target/fuzz-corpus/; one line per target, and a non-zero
        exit naming the input of any finding
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "run" => run(rest),
        "test" => test(rest),
        "guest" => guest(rest),
        "testhost" => testhost(rest),
        "install" => install(rest),
        "bench" => bench(rest),
        "kernel" => kernel(rest),
        "soak" => soak(rest),
        "fuzz" => fuzz::fuzz(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => {
            eprintln!("cargo xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("cargo xtask {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask run [MEM] [-- KERNEL ARGS...]`
fn run(args: &[String]) -> Result<i32, Error> {
    let (words, kernel_args) = split_at_dashes(args);
    let memory = match words {
        [] => 256,
        [memory] => parse_number("MEM", memory)?,
        [_, extra, ..] => {
            return Err(Error::new(format!(
                "unexpected `{extra}`: kernel arguments go after `--`"
            )))
        }
    };

    progress("run: building lg (cargo build --release -p lg)");
    run_visible(cargo().args(["build", "--release", "-p", "lg"]))?;
    let kit = Kit::prepare()?;

    let host = HostKvm::check();
    let Some(reason) = host.reason() else {
        let status = Command::new(lg_binary())
            .arg("run")
            .arg(memory.to_string())
            .arg(&kit.bzimage)
            .arg(format!("--initrd={}", kit.initrd.display()))
            .arg("console=ttyS0")
            .args(kernel_args)
            .status()
            .map_err(|e| Error::new(format!("cannot run {}: {e}", show_path(&lg_binary()))))?;
        return Ok(status.code().unwrap_or(1));
    };

    progress(format!(
        "run: {reason}, so the guest boots inside the nested test host \
         (QEMU emulating AMD SVM, slower than real KVM)."
    ));
    testhost::prepare(Lg::Required)?;
    let mut lg_command = vec![
        "lg".to_string(),
        "run".to_string(),
        memory.to_string(),
        "/kit/bzImage".to_string(),
        "--initrd=/kit/initrd.cpio.gz".to_string(),
        "console=ttyS0".to_string(),
    ];
    lg_command.extend(kernel_args.iter().cloned());
    let status = TestHost::new()
        .memory_mb(memory.saturating_add(1024).max(4096))
        .interactive(Some(&shell::join(&lg_command)))
        .map_err(|e| Error::new(e.to_string()))?;
    Ok(status.unwrap_or(0))
}

/// `cargo xtask test [CARGO TEST ARGS...]`
fn test(args: &[String]) -> Result<i32, Error> {
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let step = |number: usize, title: &'static str| {
        let now = Instant::now();
        progress(format!("\n==> [{number}/5] {title}"));
        move |timings: &mut Vec<(&str, Duration)>| timings.push((title, now.elapsed()))
    };

    let done = step(1, "building lg: cargo build --release -p lg");
    run_visible(cargo().args(["build", "--release", "-p", "lg"]))?;
    done(&mut timings);

    let done = step(
        2,
        "guest kit: Debian's cloud kernel and a busybox initramfs",
    );
    let kit = Kit::prepare()?;
    progress(format!(
        "guest kit: {} ({}) and {}",
        show_path(&kit.bzimage),
        kit.kernel_version,
        show_path(&kit.initrd)
    ));
    done(&mut timings);

    let done = step(
        3,
        "test host: its kernel and initramfs (busybox, kvm-amd, lg, kit)",
    );
    let base = testhost::prepare(Lg::Required)?;
    progress(format!("test host: {}", show_path(&base.initramfs)));
    done(&mut timings);

    // The kernel tests (tests/kernel.rs) boot a kernel of lg's own, which
    // takes minutes to build the first time on a machine (then it comes
    // from the machine's cache): built when every test runs, or when the
    // arguments name the kernel tests; other partial runs skip them.
    let done = step(
        4,
        "guest kernel: cargo xtask kernel (tinyconfig + kernel-patches/lg.config)",
    );
    if args.is_empty() || args.iter().any(|arg| arg.contains("kernel")) {
        let built_from = Instant::now();
        let built = xtask::kernel::build()?;
        report_kernel(&built, built_from);
    } else {
        progress("guest kernel: not needed by the tests asked for");
    }
    done(&mut timings);

    // --no-fail-fast: one failing test binary must not hide the others'
    // results, since each e2e binary is a test host boot of its own.
    let cargo_args: Vec<String> = if args.is_empty() {
        vec!["--workspace".to_string(), "--no-fail-fast".to_string()]
    } else {
        args.to_vec()
    };
    let done = step(
        5,
        "tests: cargo test (unit tests, then the end-to-end tests)",
    );
    let tested = run_visible(cargo().arg("test").args(&cargo_args));
    done(&mut timings);

    progress("\n==> timings");
    for (title, took) in &timings {
        let what = title.split(':').next().unwrap_or(title);
        progress(format!("    {:>7.1} s  {what}", took.as_secs_f64()));
    }
    progress(format!(
        "    {:>7.1} s  in all",
        started.elapsed().as_secs_f64()
    ));
    tested.map(|()| 0)
}

/// `cargo xtask guest [--kernel FILE --initrd FILE]`
fn guest(args: &[String]) -> Result<i32, Error> {
    let mut kernel: Option<PathBuf> = None;
    let mut initrd: Option<PathBuf> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match flag_name(word) {
            "--kernel" => kernel = Some(PathBuf::from(flag_value(word, &mut words)?)),
            "--initrd" => initrd = Some(PathBuf::from(flag_value(word, &mut words)?)),
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{word}` (flags: --kernel FILE --initrd FILE)"
                )))
            }
        }
    }
    let started = Instant::now();
    let kit = match (kernel, initrd) {
        (Some(kernel), Some(initrd)) => Kit::install_user(&kernel, &initrd)?,
        (None, None) => {
            if !debian::apt_available() {
                return Err(guest::no_apt());
            }
            Kit::build_from_debian(&debian::fetch()?)?
        }
        _ => {
            return Err(Error::new(
                "--kernel and --initrd go together: the kit is a kernel and its initramfs",
            ))
        }
    };
    progress(format!(
        "guest kit: {} ({}) and {} ready in {:.1} s",
        show_path(&kit.bzimage),
        kit.kernel_version,
        show_path(&kit.initrd),
        started.elapsed().as_secs_f64()
    ));
    Ok(0)
}

/// `cargo xtask testhost [--memory MB] [--timeout SECS] [--file HOST:INSIDE]... [-- CMD...]`
fn testhost(args: &[String]) -> Result<i32, Error> {
    let mut host = TestHost::new().lg(Lg::Optional).echo(xtask::Echo::Raw);
    let mut command: Vec<String> = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            command.extend(words.by_ref().cloned());
            break;
        }
        if !word.starts_with('-') {
            command.push(word.clone());
            command.extend(words.by_ref().cloned());
            break;
        }
        match flag_name(word) {
            "--memory" => {
                let value = flag_value(word, &mut words)?;
                host = host.memory_mb(parse_number("--memory", &value)?);
            }
            "--file" => {
                let value = flag_value(word, &mut words)?;
                let Some((host_path, inside)) = value.rsplit_once(':') else {
                    return Err(Error::new(format!(
                        "--file {value}: give it as HOST_PATH:PATH_IN_TEST_HOST"
                    )));
                };
                if !inside.starts_with('/') {
                    return Err(Error::new(format!(
                        "--file {value}: the path in the test host must be absolute"
                    )));
                }
                host = host.file(host_path, inside);
            }
            "--timeout" => {
                let value = flag_value(word, &mut words)?;
                host = host.timeout(Duration::from_secs(
                    parse_number("--timeout", &value)?.into(),
                ));
            }
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{word}` \
                     (flags: --memory MB --timeout SECS --file HOST:INSIDE, then -- CMD)"
                )))
            }
        }
    }

    let base = testhost::prepare(Lg::Optional)?;
    if !base.has_lg {
        progress(format!(
            "testhost: warning: {} is missing, so this test host has no /bin/lg \
             (build it with `cargo build --release -p lg`)",
            show_path(&lg_binary())
        ));
    }
    if command.is_empty() {
        if !testhost::stdin_is_terminal() {
            return Err(Error::new(
                "no command given and stdin is not a terminal: pass the command after `--`",
            ));
        }
        progress("testhost: a shell in the test host on this terminal (`poweroff -f` leaves)");
        let status = host
            .interactive(None)
            .map_err(|e| Error::new(e.to_string()))?;
        return Ok(status.unwrap_or(0));
    }

    let run = host
        .run(&shell::command_line(&command))
        .map_err(|e| Error::new(e.to_string()))?;
    progress(format!(
        "testhost: the command exited with status {} ({:.1} s in all)",
        run.status,
        run.elapsed.as_secs_f64()
    ));
    Ok(run.status)
}

/// `cargo xtask install --prefix DIR`
fn install(args: &[String]) -> Result<i32, Error> {
    let mut prefix: Option<PathBuf> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match flag_name(word) {
            "--prefix" => prefix = Some(PathBuf::from(flag_value(word, &mut words)?)),
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{word}` (flags: --prefix DIR)"
                )))
            }
        }
    }
    let prefix = prefix.ok_or_else(|| Error::new("--prefix DIR is required"))?;
    let lg = lg_binary();
    if !lg.is_file() {
        return Err(Error::new(format!(
            "{} is missing: build it with `cargo build --release -p lg`",
            show_path(&lg)
        )));
    }
    let io = |what: &str, path: &std::path::Path, e: std::io::Error| {
        Error::new(format!("cannot {what} {}: {e}", path.display()))
    };
    let bin = prefix.join("bin");
    let man1 = prefix.join("share/man/man1");
    for dir in [&bin, &man1] {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    }
    // Replace rather than overwrite in place: a running lg keeps its file.
    let installed = bin.join("lg");
    let _ = std::fs::remove_file(&installed);
    std::fs::copy(&lg, &installed).map_err(|e| io("copy lg to", &installed, e))?;
    let link = bin.join("lguest");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("lg", &link).map_err(|e| io("create the link", &link, e))?;
    let page = xtask::workspace_root().join("docs/lg.1");
    let man_page = man1.join("lg.1");
    std::fs::copy(&page, &man_page).map_err(|e| io("install the manual page", &man_page, e))?;
    // lguest(1) is lg(1), by man's own `.so` include.
    let lguest_page = man1.join("lguest.1");
    std::fs::write(&lguest_page, ".so man1/lg.1\n").map_err(|e| io("write", &lguest_page, e))?;
    for path in [&installed, &link, &man_page, &lguest_page] {
        progress(format!("install: {}", path.display()));
    }
    Ok(0)
}

/// `cargo xtask bench [--runs N] [--only PART,...]`
fn bench(args: &[String]) -> Result<i32, Error> {
    let mut runs = 5;
    let mut parts = xtask::bench::Part::ALL.to_vec();
    let mut only = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match flag_name(word) {
            "--runs" => runs = parse_number("--runs", &flag_value(word, &mut words)?)?,
            "--only" => {
                let list = flag_value(word, &mut words)?;
                parts = xtask::bench::Part::parse_list(&list)?;
                only = Some(list);
            }
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{word}` (flags: --runs N, --only PART,...)"
                )))
            }
        }
    }
    progress("bench: building lg (cargo build --release -p lg)");
    run_visible(cargo().args(["build", "--release", "-p", "lg"]))?;
    testhost::prepare(Lg::Required)?;
    let mut command = "cargo xtask bench".to_string();
    if runs != 5 {
        command.push_str(&format!(" --runs {runs}"));
    }
    if let Some(list) = only {
        command.push_str(&format!(" --only {list}"));
    }
    let report = xtask::bench::run(&xtask::bench::Options {
        runs,
        parts,
        command,
    })?;
    print!("{}", report.table());
    let path = report.write_json()?;
    progress(format!("bench: wrote {} and latest.json", show_path(&path)));
    Ok(0)
}

/// `cargo xtask soak [--kills N] [--boots N] [--control qemu] [--trace] [--cpus N] [--console ttyS0|hvc0]`
fn soak(args: &[String]) -> Result<i32, Error> {
    let mut soak = xtask::soak::Soak {
        kills: 100,
        boots: 100,
        control: xtask::soak::Boot::Lg,
        trace: false,
        cpus: None,
        console: xtask::soak::Console::Serial,
    };
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let count = |value: Option<&String>| -> Result<u32, Error> {
            value
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::new(format!("soak: {word} needs a number")))
        };
        match word.as_str() {
            "--kills" => soak.kills = count(words.next())?,
            "--boots" => soak.boots = count(words.next())?,
            "--control" => match words.next().map(String::as_str) {
                Some("qemu") => soak.control = xtask::soak::Boot::Qemu,
                _ => return Err(Error::new("soak: --control takes `qemu`")),
            },
            "--trace" => soak.trace = true,
            "--console" => match words.next().map(String::as_str) {
                Some("ttyS0") => soak.console = xtask::soak::Console::Serial,
                Some("hvc0") => soak.console = xtask::soak::Console::Virtio,
                _ => return Err(Error::new("soak: --console takes `ttyS0` or `hvc0`")),
            },
            "--cpus" => match count(words.next())? {
                0 => return Err(Error::new("soak: --cpus needs at least 1")),
                cpus => soak.cpus = Some(cpus),
            },
            other => {
                return Err(Error::new(format!(
                    "soak: unknown argument `{other}` (usage: cargo xtask soak [--kills N] [--boots N] [--control qemu] [--trace] [--cpus N] [--console ttyS0|hvc0])"
                )))
            }
        }
    }
    run_visible(cargo().args(["build", "--release", "-p", "lg"]))?;
    Kit::prepare()?;
    testhost::prepare(Lg::Required)?;
    xtask::soak::run(soak)
}

/// `cargo xtask kernel`
fn kernel(args: &[String]) -> Result<i32, Error> {
    if let Some(word) = args.first() {
        return Err(Error::new(format!(
            "unexpected `{word}`: `cargo xtask kernel` takes no arguments \
             (it builds from kernel-patches/lg.config)"
        )));
    }
    let started = Instant::now();
    let built = xtask::kernel::build()?;
    report_kernel(&built, started);
    Ok(0)
}

/// Says which kernel [`xtask::kernel::build`] left, and how it came to be.
fn report_kernel(built: &xtask::kernel::Built, started: Instant) {
    let size = |path: &std::path::Path| {
        std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1_000_000.0)
    };
    let how = match built.make_time {
        Some(make) => format!(
            "built in {:.0} s ({:.0} s of it make bzImage)",
            started.elapsed().as_secs_f64(),
            make.as_secs_f64()
        ),
        None if built.from_cache => format!(
            "taken from the machine's cache ({}): the same source, patches and lg.config",
            xtask::kernel::cache_dir()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default()
        ),
        None => "up to date: lg.config and the source are unchanged".to_string(),
    };
    progress(format!(
        "kernel: Linux {} in {} ({:.1} MB) and {} ({:.1} MB), {how}",
        built.release,
        show_path(&built.bzimage),
        size(&built.bzimage),
        show_path(&built.vmlinux),
        size(&built.vmlinux),
    ));
}

/// Splits `A B -- C D` into `[A, B]` and `[C, D]`.
fn split_at_dashes(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[]),
    }
}

/// `--flag` of `--flag=value`.
fn flag_name(word: &str) -> &str {
    word.split_once('=').map_or(word, |(flag, _)| flag)
}

/// The value of `--flag=value`, or of `--flag value` (taking the next word).
fn flag_value<'a>(
    word: &str,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<String, Error> {
    if let Some((_, value)) = word.split_once('=') {
        return Ok(value.to_string());
    }
    rest.next()
        .cloned()
        .ok_or_else(|| Error::new(format!("{word} needs a value")))
}

fn parse_number(what: &str, text: &str) -> Result<u32, Error> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::new(format!(
            "{what} must be a positive whole number, not `{text}`"
        ))),
    }
}
