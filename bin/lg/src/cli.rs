//! The command line.
//!
//! `lg` is a multicall binary with subcommands; for now there is one, `run`.
//! lguest's habit is kept: after the memory size and the kernel, every word
//! is the kernel's command line. Options take `--name=value` or
//! `--name value`; argh, which builds the help text, only knows the second
//! form, so the first is split before argh sees it.
//!
//! Whatever the syntax (`lg run` here, lguest's classic line in
//! [`crate::classic`]), the result is one [`Run`]: the rest of lg never
//! knows which syntax the person used. The values that have a syntax of
//! their own (`--tunnet`) are checked here, as they are parsed; what needs
//! the host (files, users, memory) is checked by `launch` before KVM.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use argh::FromArgs;

/// lg: a minimal hypervisor for Linux developers (lguest's successor, on KVM).
#[derive(FromArgs, Debug)]
#[argh(
    example = "boot a kernel with an initramfs on the serial console:\n  lg run 256 bzImage --initrd=initrd.cpio.gz console=ttyS0",
    note = "Run `lg <command> --help` for each command's options.\nRun as `lguest` (a link to lg), or as `lg lguest ARGS...`, lg takes lguest's classic\ncommand line instead: `lguest --help` shows it. See also lg(1)."
)]
pub struct Lg {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Run(Run),
    Ps(Ps),
    Stop(Stop),
    Pause(Pause),
    Resume(Resume),
    Regs(Regs),
    DumpPageTables(DumpPageTables),
    Translate(Translate),
    Stat(Stat),
    Gdb(Gdb),
}

/// list the running guests.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "ps")]
pub struct Ps {}

/// shut a guest down: press its ACPI power button and wait for it to end.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(
    subcommand,
    name = "stop",
    note = "Without --force the guest's kernel is asked to power off, as a power button would\n(its userspace must act on the button: systemd-logind and acpid do). lg stop waits up to\n--timeout seconds for the guest to end; --force ends lg at once, like pulling the plug."
)]
pub struct Stop {
    /// end the guest at once instead of asking it
    #[argh(switch)]
    pub force: bool,
    /// how long to wait for the guest to end, in seconds (default 60)
    #[argh(option, default = "60")]
    pub timeout: u64,
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// stop a guest's vCPUs where they are.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "pause")]
pub struct Pause {
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// let a paused guest run again.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "resume")]
pub struct Resume {
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// print a vCPU's registers.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "regs")]
pub struct Regs {
    /// which vCPU (default 0)
    #[argh(option, default = "0")]
    pub cpu: u32,
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// print the virtual memory a vCPU's page tables map, as merged ranges.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(
    subcommand,
    name = "dump-pagetables",
    note = "Addresses are hexadecimal, with or without 0x. Each line is a range of pages with the\nsame size and flags: START-END, length, page size, flags (RW USR NX GLB PCD PWT A D),\nand where it lands in guest-physical memory (... when that is not contiguous).",
    example = "lg dump-pagetables mybox --range=ffff888000000000-ffff888100000000"
)]
pub struct DumpPageTables {
    /// which vCPU's tables (default 0)
    #[argh(option, default = "0")]
    pub cpu: u32,
    /// walk the tables at this guest-physical address instead of the vCPU's CR3
    #[argh(option, from_str_fn(hex_address))]
    pub cr3: Option<u64>,
    /// only virtual addresses START <= va < END: --range=START-END
    #[argh(option, from_str_fn(hex_range))]
    pub range: Option<(u64, u64)>,
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// show how one virtual address translates, level by level.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(
    subcommand,
    name = "translate",
    example = "lg translate mybox ffffffff81000000"
)]
pub struct Translate {
    /// which vCPU's tables (default 0)
    #[argh(option, default = "0")]
    pub cpu: u32,
    /// walk the tables at this guest-physical address instead of the vCPU's CR3
    #[argh(option, from_str_fn(hex_address))]
    pub cr3: Option<u64>,
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
    /// the virtual address, in hexadecimal
    #[argh(positional, from_str_fn(hex_address))]
    pub address: u64,
}

/// print a guest's exit and device counters.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "stat")]
pub struct Stat {
    /// print them again every second, with the rate of each, until the guest ends
    #[argh(switch)]
    pub watch: bool,
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// connect gdb to a running guest: in gdb, `target remote | lg gdb NAME`.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(
    subcommand,
    name = "gdb",
    note = "lg gdb carries gdb's remote serial protocol between its standard input and output and\nthe guest's control socket; gdb starts it itself. The vCPUs are gdb's threads (vCPU n is\nthread n+1); memory is read and written by virtual address through the vCPU's page tables.\nThe guest stops when gdb attaches and runs on, every breakpoint removed, when gdb detaches.\n`monitor regs` shows the current vCPU's control registers too.",
    example = "gdb vmlinux -ex 'target remote | lg gdb mybox'"
)]
pub struct Gdb {
    /// the guest (see lg ps)
    #[argh(positional)]
    pub name: String,
}

/// An address as kernel developers write them: hexadecimal, `0x` optional
/// (`/proc/kallsyms` and oops messages print them bare).
pub fn hex_address(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    u64::from_str_radix(&digits, 16).map_err(|_| format!("`{text}` is not a hexadecimal address"))
}

/// `START-END`, both hexadecimal, START below END.
fn hex_range(text: &str) -> Result<(u64, u64), String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not a range START-END"))?;
    let (start, end) = (hex_address(start)?, hex_address(end)?);
    if start >= end {
        return Err(format!("`{text}`: the range's start must be below its end"));
    }
    Ok((start, end))
}

/// boot a Linux kernel in a new guest.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(
    subcommand,
    name = "run",
    example = "lg run 256 bzImage --initrd=initrd.cpio.gz console=ttyS0\nlg run 64 vmlinux console=ttyS0 earlyprintk=ttyS0 panic=-1\nlg run --dry-run 256 bzImage --initrd=initrd.cpio.gz root=/dev/vda",
    note = "MEM_MB is the guest's RAM in MiB. KERNEL is a bzImage or an ELF vmlinux with a 64-bit entry.\nEvery word after KERNEL is the kernel's command line (lg adds console=ttyS0 when it names\nno console=); options may also come after KERNEL, before the first kernel word.\nThe guest's serial port (ttyS0) is lg's standard output; when standard input is a terminal,\nwhat you type goes to the guest (Ctrl-A x quits lg, Ctrl-A Ctrl-A sends Ctrl-A).\n--block=FILE[,ro][,direct]: a disk (/dev/vda, /dev/vdb, ... in order): ro makes it read-only,\ndirect bypasses the host's page cache (O_DIRECT). --rng: /dev/hwrng, fed from the host's\ngetrandom. --tunnet=IP gives the tap IP/24 and adds ip=<next address>::IP:255.255.255.0::eth0:off\nto the kernel's command line unless it has an ip= already (ip=off: none).\n--gdb=PORT: gdb's remote protocol on 127.0.0.1:PORT (target remote :PORT); --gdb-wait: the vCPUs\nwait for gdb (on the port, or lg gdb NAME) before their first instruction.",
    error_code(0, "the guest powered off or rebooted"),
    error_code(
        1,
        "lg refused to start: bad input, or a host that cannot run the guest"
    ),
    error_code(
        2,
        "the guest crashed (a triple fault), a vCPU failed, or lg's seccomp filter refused a call"
    ),
    error_code(
        3,
        "the user stopped lg: Ctrl-A x, lg stop --force, a second SIGINT/SIGTERM/SIGHUP (the first presses the guest's power button)"
    ),
    error_code(4, "the guest kernel panicked (reported through pvpanic)")
)]
pub struct Run {
    /// an initial RAM disk for the kernel (at most one): --initrd=FILE
    #[argh(option, short = 'i', arg_name = "FILE")]
    pub initrd: Option<String>,

    /// a virtio block device backed by FILE (repeatable): --block=FILE
    #[argh(option, short = 'b', arg_name = "FILE")]
    pub block: Vec<String>,

    /// a virtio network device on a new tap (repeatable), as lguest's:
    /// --tunnet=IP[:MAC] (the host's end gets IP) or --tunnet=bridge:NAME[:MAC]
    #[argh(option, short = 't', arg_name = "SPEC", from_str_fn(checked_tunnet))]
    pub tunnet: Vec<String>,

    /// a virtio random-number device fed from the host
    #[argh(switch, short = 'r')]
    pub rng: bool,

    /// once the guest is set up, confine lg to DIR (chroot): --chroot=DIR
    #[argh(option, short = 'c', arg_name = "DIR")]
    pub chroot: Option<String>,

    /// once the guest is set up, run as USER (uid, gid and groups): --username=USER
    #[argh(option, short = 'u', arg_name = "USER")]
    pub username: Option<String>,

    /// the guest's name for lg ps, lg stop, lg regs... (default lg-PID): --name=NAME
    #[argh(option, arg_name = "NAME")]
    pub name: Option<String>,

    /// check everything, print the guest lg would boot, and exit 0 without starting it
    #[argh(switch)]
    pub dry_run: bool,

    /// how many vCPUs (default 1): --cpus=N
    #[argh(option, arg_name = "N", default = "1")]
    pub cpus: u8,

    /// log device set-up, each new kind of guest exit, and the exit summary
    #[argh(switch, short = 'v')]
    pub verbose: bool,

    /// listen for gdb on 127.0.0.1:PORT (in gdb: target remote :PORT): --gdb=PORT
    #[argh(option, arg_name = "PORT")]
    pub gdb: Option<u16>,

    /// keep the vCPUs from running their first instruction until gdb attaches
    /// (through --gdb=PORT or lg gdb NAME)
    #[argh(switch)]
    pub gdb_wait: bool,

    /// guest RAM in MiB
    #[argh(positional, arg_name = "MEM_MB")]
    pub memory: String,

    /// the kernel: a bzImage or an ELF vmlinux
    #[argh(positional, arg_name = "KERNEL")]
    pub kernel: String,

    /// the kernel command line
    #[argh(positional, greedy, arg_name = "kernel-args")]
    pub kernel_args: Vec<String>,
}

/// Options that take a value, so `--name=value` can be split.
const RUN_VALUE_OPTIONS: &[&str] = &[
    "--initrd",
    "--cpus",
    "--block",
    "--tunnet",
    "--chroot",
    "--username",
    "--name",
    "--gdb",
    // The inspecting commands'.
    "--cpu",
    "--cr3",
    "--range",
    "--timeout",
];

/// What came of parsing, when it was not a command to carry out.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// `--help` was asked for: print this and succeed.
    Help(String),
    /// The command line is wrong; one sentence saying how.
    Error(String),
}

/// Parses `args` (including the program name in `args[0]`).
pub fn parse(args: &[String]) -> Result<Command, ParseOutcome> {
    let program = "lg";
    let split = split_option_values(args.get(1..).unwrap_or_default());
    if split.is_empty() {
        return Err(ParseOutcome::Error(
            "no command given: try `lg run MEM_MB KERNEL [kernel args...]` or `lg --help`".into(),
        ));
    }
    let words: Vec<&str> = split.iter().map(String::as_str).collect();
    match Lg::from_args(&[program], &words) {
        Ok(lg) => Ok(lg.command),
        Err(early) if early.status.is_ok() => Err(ParseOutcome::Help(early.output)),
        Err(early) => {
            // argh's first line is the sentence; when it ends in a colon,
            // the lines after it are what it is about (the missing MEM_MB).
            let mut lines = early
                .output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty());
            let mut first_line = lines.next().unwrap_or("bad arguments").to_string();
            if first_line.ends_with(':') {
                let listed: Vec<&str> = lines.collect();
                first_line = format!("{first_line} {}", listed.join(", "));
            }
            let first_line = first_line.trim_end_matches('.');
            let help_hint = match words.first() {
                Some(&"run") => "lg run --help",
                _ => "lg --help",
            };
            Err(ParseOutcome::Error(format!(
                "{first_line} (see `{help_hint}`)"
            )))
        }
    }
}

/// A network device as lguest's `--tunnet` described it: a tap whose host end
/// has an IPv4 address, or a tap added to an existing bridge; either may fix
/// the guest's MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tunnet {
    /// `--tunnet=IP[:MAC]`: the host's end of the tap gets `address`.
    Address { address: Ipv4Addr, mac: Option<Mac> },
    /// `--tunnet=bridge:NAME[:MAC]`: the tap joins bridge `name`.
    Bridge { name: String, mac: Option<Mac> },
}

/// A MAC address, `xx:xx:xx:xx:xx:xx`.
pub type Mac = [u8; 6];

/// The longest name a Linux network interface may have (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;

impl Tunnet {
    /// Parses lguest's syntax. The error says what is wrong, without
    /// repeating the whole value (callers name the option and value).
    pub fn parse(text: &str) -> Result<Tunnet, String> {
        if text.is_empty() {
            return Err("needs IP[:MAC] or bridge:NAME[:MAC]".into());
        }
        if let Some(rest) = text.strip_prefix("bridge:") {
            let (name, mac) = match rest.split_once(':') {
                Some((name, mac)) => (name, Some(parse_mac(mac)?)),
                None => (rest, None),
            };
            if name.is_empty() {
                return Err("the bridge's name is missing (bridge:NAME[:MAC])".into());
            }
            let bad_char = |c: char| c == '/' || c.is_whitespace() || c.is_control();
            if name.len() > MAX_INTERFACE_NAME || name.chars().any(bad_char) {
                return Err(format!(
                    "`{name}` cannot be a network interface's name \
                     (at most {MAX_INTERFACE_NAME} characters, no `/` or spaces)"
                ));
            }
            return Ok(Tunnet::Bridge {
                name: name.to_string(),
                mac,
            });
        }
        let (address, mac) = match text.split_once(':') {
            Some((address, mac)) => (address, Some(parse_mac(mac)?)),
            None => (text, None),
        };
        let address: Ipv4Addr = address.parse().map_err(|_| {
            format!("`{address}` is not an IPv4 address (expected IP[:MAC] or bridge:NAME[:MAC])")
        })?;
        Ok(Tunnet::Address { address, mac })
    }
}

/// Parses `xx:xx:xx:xx:xx:xx`, two hex digits each.
fn parse_mac(text: &str) -> Result<Mac, String> {
    let bad = || format!("`{text}` is not a MAC address (expected xx:xx:xx:xx:xx:xx in hex)");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// argh's check of `--tunnet`: the text is kept, once its syntax is right.
fn checked_tunnet(text: &str) -> Result<String, String> {
    Tunnet::parse(text).map(|_| text.to_string())
}

/// The `--tunnet` values, parsed (argh has already checked their syntax).
pub fn tunnets(run: &Run) -> Vec<Tunnet> {
    run.tunnet
        .iter()
        .filter_map(|text| Tunnet::parse(text).ok())
        .collect()
}

/// The guest's devices, in PCI order after the UART, as `--dry-run` and
/// `lg ps` name them.
pub fn devices(run: &Run) -> Vec<String> {
    let mut devices = vec![
        "serial ttyS0".to_string(),
        "virtio console hvc0".to_string(),
    ];
    devices.extend(run.block.iter().map(|file| format!("virtio block {file}")));
    devices.extend(run.tunnet.iter().map(|spec| format!("virtio net {spec}")));
    if run.rng {
        devices.push("virtio rng".to_string());
    }
    devices
}

/// What `--dry-run` prints: the guest lg would boot, one `name: value` per
/// line, with the kernel's command line exactly as the kernel will get it.
/// The same for `lg run` and `lguest`, so the two can be compared.
pub fn describe(run: &Run) -> String {
    let memory = run
        .memory
        .parse::<u64>()
        .map_or_else(|_| run.memory.clone(), |mib| format!("{mib} MiB"));
    let (cmdline, console) = crate::launch::kernel_command_line(&run.kernel_args, &tunnets(run));
    let devices = devices(run);
    let none = || "none".to_string();
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name}: {value}");
    };
    line("memory", memory);
    line("kernel", run.kernel.clone());
    line("initrd", run.initrd.clone().unwrap_or_else(none));
    line("vcpus", run.cpus.to_string());
    line("devices", devices.join(", "));
    let terminal = match console {
        crate::launch::ConsoleDevice::Serial => "ttyS0",
        crate::launch::ConsoleDevice::Hvc => "hvc0",
    };
    line("terminal", terminal.to_string());
    line("chroot", run.chroot.clone().unwrap_or_else(none));
    line("username", run.username.clone().unwrap_or_else(none));
    line(
        "verbose",
        if run.verbose { "yes" } else { "no" }.to_string(),
    );
    if let Some(port) = run.gdb {
        let wait = if run.gdb_wait {
            ", the vCPUs wait for it"
        } else {
            ""
        };
        line("gdb", format!("127.0.0.1:{port}{wait}"));
    } else if run.gdb_wait {
        line("gdb", "lg gdb NAME, the vCPUs wait for it".to_string());
    }
    line("command line", cmdline);
    out
}

/// Turns `--initrd=FILE` into `--initrd FILE` for the options that take a
/// value, up to the kernel's first word. Kernel arguments such as `root=/dev/vda`
/// never start with `--`, and a `--` already ends lg's options.
fn split_option_values(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 2);
    for arg in args {
        match arg.split_once('=') {
            Some((name, value)) if RUN_VALUE_OPTIONS.contains(&name) => {
                out.push(name.to_string());
                out.push(value.to_string());
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, ParseOutcome> {
        let args: Vec<String> = std::iter::once("lg")
            .chain(words.iter().copied())
            .map(String::from)
            .collect();
        parse(&args)
    }

    fn run_of(words: &[&str]) -> Run {
        match parse_words(words) {
            Ok(Command::Run(run)) => run,
            other => panic!("expected a run command, got {other:?}"),
        }
    }

    #[test]
    fn everything_after_the_kernel_is_the_command_line() {
        let run = run_of(&[
            "run",
            "64",
            "bzImage",
            "root=/dev/vda",
            "console=ttyS0",
            "quiet",
        ]);
        assert_eq!(run.memory, "64");
        assert_eq!(run.kernel, "bzImage");
        assert_eq!(run.kernel_args, ["root=/dev/vda", "console=ttyS0", "quiet"]);
        assert_eq!(run.initrd, None);
    }

    #[test]
    fn options_take_equals_or_a_separate_value() {
        let run = run_of(&[
            "run",
            "--initrd=/kit/initrd.cpio.gz",
            "256",
            "bzImage",
            "console=ttyS0",
        ]);
        assert_eq!(run.initrd.as_deref(), Some("/kit/initrd.cpio.gz"));
        let run = run_of(&["run", "--cpus", "2", "256", "bzImage"]);
        assert_eq!(run.cpus, 2);
    }

    #[test]
    fn options_may_follow_the_kernel_as_in_lguest() {
        let run = run_of(&["run", "256", "bzImage", "--initrd=i.gz", "console=ttyS0"]);
        assert_eq!(run.initrd.as_deref(), Some("i.gz"));
        assert_eq!(run.kernel_args, ["console=ttyS0"]);
    }

    #[test]
    fn unknown_options_are_one_sentence_naming_them() {
        match parse_words(&["run", "--frobnicate", "64", "bzImage"]) {
            Err(ParseOutcome::Error(message)) => {
                assert!(message.contains("--frobnicate"), "{message}");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn missing_kernel_and_no_command_are_errors() {
        assert!(matches!(
            parse_words(&["run", "64"]),
            Err(ParseOutcome::Error(_))
        ));
        assert!(matches!(parse_words(&[]), Err(ParseOutcome::Error(_))));
        assert!(matches!(parse_words(&["fly"]), Err(ParseOutcome::Error(_))));
    }

    #[test]
    fn gdb_takes_a_port_and_waiting_is_a_switch() {
        let run = run_of(&["run", "--gdb=1234", "--gdb-wait", "64", "bzImage"]);
        assert_eq!((run.gdb, run.gdb_wait), (Some(1234), true));
        let run = run_of(&["run", "--gdb", "1234", "64", "bzImage", "quiet"]);
        assert_eq!((run.gdb, run.gdb_wait), (Some(1234), false));
        assert!(describe(&run).contains("gdb: 127.0.0.1:1234\n"));
        assert!(!describe(&run_of(&["run", "64", "bzImage"])).contains("gdb"));
        assert!(matches!(
            parse_words(&["run", "--gdb=70000", "64", "bzImage"]),
            Err(ParseOutcome::Error(_))
        ));
        assert!(matches!(
            parse_words(&["gdb", "mybox"]),
            Ok(Command::Gdb(Gdb { name })) if name == "mybox"
        ));
    }

    #[test]
    fn help_is_not_an_error() {
        match parse_words(&["run", "--help"]) {
            Err(ParseOutcome::Help(text)) => {
                assert!(text.contains("MEM_MB"), "{text}");
                assert!(text.contains("--initrd"), "{text}");
            }
            other => panic!("expected help, got {other:?}"),
        }
    }
}
