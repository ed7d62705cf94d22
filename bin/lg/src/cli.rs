//! The command line.
//!
//! `lg` is a multicall binary with subcommands; for now there is one, `run`.
//! lguest's habit is kept: after the memory size and the kernel, every word
//! is the kernel's command line. Options take `--name=value` or
//! `--name value`; argh, which builds the help text, only knows the second
//! form, so the first is split before argh sees it.

use argh::FromArgs;

/// lg: a minimal hypervisor for Linux developers (lguest's successor, on KVM).
#[derive(FromArgs, Debug)]
#[argh(
    example = "boot a kernel with an initramfs on the serial console:\n  lg run 256 bzImage --initrd=initrd.cpio.gz console=ttyS0",
    note = "Run `lg <command> --help` for each command's options."
)]
pub struct Lg {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Run(Run),
}

/// boot a Linux kernel in a new guest.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "run",
    example = "lg run 256 bzImage --initrd=initrd.cpio.gz console=ttyS0\nlg run 64 vmlinux console=ttyS0 earlyprintk=ttyS0 panic=-1",
    note = "MEM_MB is the guest's RAM in MiB. KERNEL is a bzImage or an ELF vmlinux with a 64-bit entry.\nEvery word after KERNEL is the kernel's command line.\nThe guest's serial port (ttyS0) is lg's standard output; when standard input is a terminal,\nwhat you type goes to the guest (Ctrl-A x quits lg, Ctrl-A Ctrl-A sends Ctrl-A).",
    error_code(0, "the guest powered off or rebooted"),
    error_code(
        1,
        "lg refused to start: bad input, or a host that cannot run the guest"
    ),
    error_code(2, "the guest crashed (a triple fault) or a vCPU failed"),
    error_code(3, "the user stopped lg: Ctrl-A x, SIGINT, SIGTERM or SIGHUP"),
    error_code(4, "the guest kernel panicked (reported through pvpanic)")
)]
pub struct Run {
    /// an initial RAM disk for the kernel: --initrd=FILE
    #[argh(option, arg_name = "FILE")]
    pub initrd: Option<String>,

    /// how many vCPUs (default 1): --cpus=N
    #[argh(option, arg_name = "N", default = "1")]
    pub cpus: u8,

    /// log device set-up, each new kind of guest exit, and the exit summary
    #[argh(switch, short = 'v')]
    pub verbose: bool,

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

/// Options of `lg run` that take a value, so `--name=value` can be split.
const RUN_VALUE_OPTIONS: &[&str] = &["--initrd", "--cpus"];

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
            let first_line = early
                .output
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim();
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
