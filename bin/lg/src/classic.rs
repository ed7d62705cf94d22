//! `lguest`: the classic command line.
//!
//! lguest's Launcher took `lguest [--verbose] [--tunnet=...] [--block=FILE]
//! [--initrd=FILE] [--rng] [--chroot=DIR] [--username=USER] <mem-in-mb>
//! vmlinux [args...]`, and people have that line in their notes, shell
//! history and scripts. lg keeps it working: started as `lguest` (a symlink
//! or hard link to lg, which `cargo xtask install` makes), or as
//! `lg lguest ARGS...`, lg reads the line the way lguest's `getopt_long` did
//! and hands the rest of lg the same [`Run`] that `lg run` would.
//!
//! What lguest's getopt did, and this parser does too: options may come
//! anywhere, before or after `<mem-in-mb> vmlinux` (the seed's own example
//! is `lguest 64 vmlinux --tunnet=192.168.19.1 --block=rootfile
//! root=/dev/vda`); a long option takes `--name=value` or `--name value`; a
//! short one `-bFILE` or `-b FILE`, and switches cluster (`-vr`); every word
//! that is not an option is, after the memory size and the kernel, the
//! kernel's command line, in order; a `--` ends the options, so a kernel
//! word starting with `-` goes after it. Unlike getopt, lg does not take
//! abbreviations (`--verb`): an option is spelled out or refused.

use crate::cli::{ParseOutcome, Run, Tunnet};

/// The name that selects the classic syntax, as a program name or as lg's
/// first word.
const CLASSIC_NAME: &str = "lguest";

/// lguest's own usage line, with lg's reading of `--tunnet` (the MAC optional).
const USAGE: &str = "\
usage: lguest [--verbose] [--tunnet=(<ipaddr>[:<macaddr>]|bridge:<bridgename>[:<macaddr>])]
              [--block=<filename>|--initrd=<filename>]... [--rng]
              [--chroot=<dir>] [--username=<user>] <mem-in-mb> vmlinux [args...]";

/// `lguest --help`.
const HELP: &str = "\
lguest (lg): boot a Linux kernel in a new guest, with lguest's classic command line, on KVM.

Options may come before or after <mem-in-mb> and vmlinux. Every other word after vmlinux is
the kernel's command line, in order; lg adds console=ttyS0 when it names no console=.
A `--` ends the options: the words after it go to the kernel as they are.
vmlinux is a bzImage or an ELF vmlinux with a 64-bit entry; <mem-in-mb> is the guest's RAM.

Options (each also as `--name VALUE`; the short forms are lguest's):
  -v, --verbose                 log device set-up, each new kind of guest exit and the exit
                                summary (RUST_LOG does too)
  -t, --tunnet=IP[:MAC]         a virtio network device on a new tap whose host end gets IP
      --tunnet=bridge:NAME[:MAC]
                                a virtio network device on a new tap added to bridge NAME;
                                MAC (xx:xx:xx:xx:xx:xx) fixes the guest's address
  -b, --block=FILE              a virtio block device backed by FILE (repeatable)
  -i, --initrd=FILE             an initial RAM disk (at most one)
  -r, --rng                     a virtio random-number device fed from the host
  -c, --chroot=DIR              once every file and KVM handle is open, chroot to DIR
  -u, --username=USER           then run as USER: its uid, gid and supplementary groups
lg's own additions:
      --cpus=N                  how many vCPUs (default 1)
      --dry-run                 check everything, print the guest lg would boot, exit 0
  -h, --help                    this help
--block=FILE[,ro][,direct] is a disk (/dev/vda, /dev/vdb, ...); --rng gives /dev/hwrng;
--tunnet=IP adds ip=<next address>::IP:255.255.255.0::eth0:off to the kernel's command line
unless it has an ip= (give ip=off for none).

Examples:
  lguest 256 bzImage --initrd=initrd.cpio.gz console=ttyS0
  lguest 64 vmlinux --tunnet=192.168.19.1 --block=rootfile root=/dev/vda
  lguest --chroot=/var/empty --username=nobody 256 bzImage --initrd=initrd.cpio.gz

Exit status:
  0  the guest powered off or rebooted
  1  lg refused to start: bad input, or a host that cannot run the guest
  2  the guest crashed (a triple fault), a vCPU failed, or seccomp refused a call
  3  the user stopped lg: Ctrl-A x, lg stop --force, a second SIGINT/SIGTERM/SIGHUP
     (the first presses the guest's power button; lg ends with the guest, or 10 s later)
  4  the guest kernel panicked (reported through pvpanic)

`lg lguest ARGS...` is the same as `lguest ARGS...`; `lg run --help` shows lg's own syntax;
lg(1) has both.";

/// The classic words of `args` (program name first), if lg was asked for
/// the classic syntax: started as `lguest`, or as `lg lguest ...`.
pub fn classic_arguments(args: &[String]) -> Option<&[String]> {
    let program = args.first()?;
    let name = std::path::Path::new(program).file_name()?;
    if name == CLASSIC_NAME {
        return Some(&args[1..]);
    }
    match args.get(1) {
        Some(first) if first == CLASSIC_NAME => Some(&args[2..]),
        _ => None,
    }
}

/// One option of the classic line.
struct ClassicOption {
    long: &'static str,
    short: Option<char>,
    takes_value: bool,
}

/// lguest's getopt table (`verbose`, `tunnet`, `block`, `rng`, `initrd`,
/// `username`, `chroot`), then lg's additions and `--help`.
const OPTIONS: &[ClassicOption] = &[
    option("verbose", Some('v'), false),
    option("tunnet", Some('t'), true),
    option("block", Some('b'), true),
    option("rng", Some('r'), false),
    option("initrd", Some('i'), true),
    option("username", Some('u'), true),
    option("chroot", Some('c'), true),
    option("cpus", None, true),
    option("dry-run", None, false),
    option("help", Some('h'), false),
];

const fn option(long: &'static str, short: Option<char>, takes_value: bool) -> ClassicOption {
    ClassicOption {
        long,
        short,
        takes_value,
    }
}

/// Options seen so far; becomes a [`Run`] once the positionals are known.
#[derive(Default)]
struct Options {
    verbose: bool,
    tunnet: Vec<String>,
    block: Vec<String>,
    rng: bool,
    initrd: Option<String>,
    username: Option<String>,
    chroot: Option<String>,
    cpus: Option<u8>,
    dry_run: bool,
    help: bool,
}

/// Parses the classic words (without the program name).
pub fn parse(words: &[String]) -> Result<Run, ParseOutcome> {
    let mut options = Options::default();
    let mut positional: Vec<String> = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            positional.extend(words.by_ref().cloned());
            break;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (long, None),
            };
            let Some(option) = OPTIONS.iter().find(|o| o.long == name) else {
                return Err(error(format!("unknown option `--{name}`")));
            };
            let value = match (option.takes_value, inline) {
                (true, Some(value)) => Some(value.to_string()),
                (true, None) => Some(next_value(&format!("--{name}"), &mut words)?),
                (false, None) => None,
                (false, Some(_)) => return Err(error(format!("--{name} takes no value"))),
            };
            options.apply(option, value)?;
        } else if is_short_cluster(word, positional.is_empty()) {
            let letters = &word[1..];
            for (at, letter) in letters.char_indices() {
                let Some(option) = OPTIONS.iter().find(|o| o.short == Some(letter)) else {
                    return Err(error(format!("unknown option `-{letter}` (in `{word}`)")));
                };
                if !option.takes_value {
                    options.apply(option, None)?;
                    continue;
                }
                let rest = &letters[at + letter.len_utf8()..];
                let value = if rest.is_empty() {
                    next_value(&format!("-{letter}"), &mut words)?
                } else {
                    rest.to_string()
                };
                options.apply(option, Some(value))?;
                break;
            }
        } else {
            positional.push(word.clone());
        }
        if options.help {
            return Err(ParseOutcome::Help(format!("{USAGE}\n\n{HELP}")));
        }
    }

    let mut positional = positional.into_iter();
    let Some(memory) = positional.next() else {
        return Err(error(
            "no memory size or kernel given: lguest [OPTIONS] <mem-in-mb> vmlinux [args...]",
        ));
    };
    let Some(kernel) = positional.next() else {
        return Err(error(format!(
            "no kernel given after the memory size `{memory}`: \
             lguest [OPTIONS] <mem-in-mb> vmlinux [args...]"
        )));
    };
    Ok(Run {
        initrd: options.initrd,
        block: options.block,
        tunnet: options.tunnet,
        rng: options.rng,
        chroot: options.chroot,
        username: options.username,
        dry_run: options.dry_run,
        name: None,
        cpus: options.cpus.unwrap_or(1),
        verbose: options.verbose,
        // lguest had no debugger; lg run has --gdb.
        gdb: None,
        gdb_wait: false,
        memory,
        kernel,
        kernel_args: positional.collect(),
    })
}

/// Whether `word` is short options (`-v`, `-vr`, `-bFILE`). A lone `-` is
/// a word, as in getopt; so is a negative number where the memory size is
/// due, so that `lguest -5 vmlinux` is refused as a bad size, not a bad option.
fn is_short_cluster(word: &str, memory_due: bool) -> bool {
    let Some(letters) = word.strip_prefix('-') else {
        return false;
    };
    if letters.is_empty() {
        return false;
    }
    !(memory_due && letters.chars().all(|c| c.is_ascii_digit()))
}

/// The value of an option given as a separate word.
fn next_value<'a>(
    option: &str,
    words: &mut impl Iterator<Item = &'a String>,
) -> Result<String, ParseOutcome> {
    words
        .next()
        .cloned()
        .ok_or_else(|| error(format!("{option} needs a value")))
}

/// A parse error, with the way to the help.
fn error(message: impl std::fmt::Display) -> ParseOutcome {
    ParseOutcome::Error(format!("{message} (see `lguest --help`)"))
}

impl Options {
    fn apply(&mut self, option: &ClassicOption, value: Option<String>) -> Result<(), ParseOutcome> {
        let value = value.unwrap_or_default();
        let once = |slot: &mut Option<String>, value: String| match slot {
            Some(first) => Err(error(format!(
                "--{} given twice (`{first}` and `{value}`): lg takes one",
                option.long
            ))),
            None => {
                *slot = Some(value);
                Ok(())
            }
        };
        match option.long {
            "verbose" => self.verbose = true,
            "rng" => self.rng = true,
            "dry-run" => self.dry_run = true,
            "help" => self.help = true,
            "block" => self.block.push(value),
            "tunnet" => {
                Tunnet::parse(&value).map_err(|e| error(format!("--tunnet={value}: {e}")))?;
                self.tunnet.push(value);
            }
            "initrd" => once(&mut self.initrd, value)?,
            "username" => once(&mut self.username, value)?,
            "chroot" => once(&mut self.chroot, value)?,
            "cpus" => {
                if self.cpus.is_some() {
                    return Err(error("--cpus given twice: lg takes one"));
                }
                let cpus = value.parse().map_err(|_| {
                    error(format!(
                        "--cpus={value}: not a number of vCPUs from 1 to 255"
                    ))
                })?;
                self.cpus = Some(cpus);
            }
            other => unreachable!("option --{other} is in OPTIONS but not handled"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Command};

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn classic(line: &str) -> Result<Run, ParseOutcome> {
        parse(&strings(&line.split_whitespace().collect::<Vec<_>>()))
    }

    fn classic_run(line: &str) -> Run {
        classic(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
    }

    fn lg_run(line: &str) -> Run {
        let args = strings(
            &std::iter::once("lg")
                .chain(line.split_whitespace())
                .collect::<Vec<_>>(),
        );
        match cli::parse(&args) {
            Ok(Command::Run(run)) => run,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error_of(line: &str) -> String {
        match classic(line) {
            Err(ParseOutcome::Error(message)) => {
                assert!(!message.contains('\n'), "{message}");
                message
            }
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn the_seeds_example_is_the_same_guest_as_lg_run() {
        let classic =
            classic_run("64 vmlinux --tunnet=192.168.19.1 --block=rootfile root=/dev/vda");
        assert_eq!(classic.memory, "64");
        assert_eq!(classic.kernel, "vmlinux");
        assert_eq!(classic.tunnet, ["192.168.19.1"]);
        assert_eq!(classic.block, ["rootfile"]);
        assert_eq!(classic.kernel_args, ["root=/dev/vda"]);
        assert_eq!(
            classic,
            lg_run("run 64 vmlinux --tunnet=192.168.19.1 --block=rootfile root=/dev/vda")
        );
    }

    #[test]
    fn options_may_come_anywhere_and_kernel_words_keep_their_order() {
        let run = classic_run("-v 64 bzImage quiet --initrd i.gz root=/dev/vda -r ro --cpus=2");
        assert!(run.verbose && run.rng);
        assert_eq!(run.initrd.as_deref(), Some("i.gz"));
        assert_eq!(run.cpus, 2);
        assert_eq!(run.kernel_args, ["quiet", "root=/dev/vda", "ro"]);
        assert_eq!(
            run,
            lg_run("run -v -r --initrd i.gz --cpus 2 64 bzImage quiet root=/dev/vda ro")
        );
    }

    #[test]
    fn short_options_take_attached_or_separate_values_and_cluster() {
        let run = classic_run("-vrbdisk.img -t bridge:br0 -c /var/empty -unobody -i i.gz 64 k");
        assert!(run.verbose && run.rng);
        assert_eq!(run.block, ["disk.img"]);
        assert_eq!(run.tunnet, ["bridge:br0"]);
        assert_eq!(run.chroot.as_deref(), Some("/var/empty"));
        assert_eq!(run.username.as_deref(), Some("nobody"));
        assert_eq!(run.initrd.as_deref(), Some("i.gz"));
    }

    #[test]
    fn a_double_dash_ends_the_options() {
        let run = classic_run("64 k -- -s --block=x");
        assert_eq!(run.kernel_args, ["-s", "--block=x"]);
        assert!(run.block.is_empty());
    }

    #[test]
    fn the_program_name_or_first_word_selects_the_classic_syntax() {
        let args = strings(&["/usr/local/bin/lguest", "64", "k"]);
        assert_eq!(classic_arguments(&args), Some(&args[1..]));
        let args = strings(&["lg", "lguest", "64", "k"]);
        assert_eq!(classic_arguments(&args), Some(&args[2..]));
        let args = strings(&["lg", "run", "64", "k"]);
        assert_eq!(classic_arguments(&args), None);
        let args = strings(&["./lguest-old", "64", "k"]);
        assert_eq!(classic_arguments(&args), None);
    }

    #[test]
    fn bad_lines_are_one_sentence_naming_the_culprit() {
        assert!(error_of("").contains("no memory size"));
        assert!(error_of("64").contains("`64`"));
        assert!(error_of("--frob 64 k").contains("--frob"));
        assert!(error_of("-x 64 k").contains("-x"));
        assert!(error_of("64 k --initrd=a --initrd=b").contains("--initrd given twice"));
        assert!(error_of("64 k --block").contains("--block needs a value"));
        assert!(error_of("64 k --verbose=yes").contains("--verbose"));
        assert!(error_of("64 k --tunnet=").contains("--tunnet"));
        assert!(error_of("64 k --tunnet=999.1.1.1").contains("999.1.1.1"));
        assert!(error_of("64 k --tunnet=bridge:").contains("bridge"));
        assert!(error_of("64 k --tunnet=10.0.0.1:00:11").contains("00:11"));
        assert!(error_of("64 k --cpus=999").contains("--cpus=999"));
    }

    #[test]
    fn a_negative_memory_size_is_left_for_the_size_check() {
        assert_eq!(classic_run("-5 k").memory, "-5");
    }

    #[test]
    fn help_shows_the_usage_line_and_exit_statuses() {
        match classic("64 k --help") {
            Err(ParseOutcome::Help(text)) => {
                assert!(text.starts_with("usage: lguest [--verbose]"), "{text}");
                assert!(text.contains("--tunnet=bridge:NAME[:MAC]"), "{text}");
                assert!(text.contains("4  the guest kernel panicked"), "{text}");
            }
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[test]
    fn tunnet_syntax_is_lguests() {
        use std::net::Ipv4Addr;
        assert_eq!(
            Tunnet::parse("192.168.19.1"),
            Ok(Tunnet::Address {
                address: Ipv4Addr::new(192, 168, 19, 1),
                mac: None
            })
        );
        assert_eq!(
            Tunnet::parse("192.168.19.1:52:54:00:12:34:56"),
            Ok(Tunnet::Address {
                address: Ipv4Addr::new(192, 168, 19, 1),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            })
        );
        assert_eq!(
            Tunnet::parse("bridge:br0:52:54:00:12:34:56"),
            Ok(Tunnet::Bridge {
                name: "br0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            })
        );
        for bad in [
            "",
            "999.1.1.1",
            "bridge:",
            "bridge::52:54:00:12:34:56",
            "bridge:a-very-long-bridge-name",
            "10.0.0.1:52:54:00:12:34",
            "10.0.0.1:52:54:00:12:34:5g",
            "10.0.0.1:",
        ] {
            assert!(Tunnet::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
