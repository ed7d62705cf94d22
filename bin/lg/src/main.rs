//! # lg: the launcher
//!
//! This is where a person meets lg. lguest's launcher was one C file that
//! parsed the command line, mapped the guest's memory, loaded the kernel and
//! then sat in a loop serving the guest's devices. lg's binary does the same
//! job, but each of those parts lives in its own crate and this one only
//! wires them together:
//!
//! - [`cli`]: the command line (`lg run 64 bzImage root=/dev/vda`).
//! - [`classic`]: lguest's own command line, when lg is started as `lguest`
//!   (`lguest 64 vmlinux --block=rootfile root=/dev/vda`).
//! - [`launch`]: the order things happen in, from the kernel file to
//!   `KVM_RUN` and the exit status.
//! - [`platform`]: the devices on the guest's I/O ports and the PCI bus, and
//!   the switch that routes each exit to one of them.
//! - [`hooks`]: how the virtio transport reaches KVM (MSI vectors, INTx,
//!   queue doorbells).
//! - [`terminal`]: the person's terminal: raw mode for typing into the guest,
//!   and putting it back however lg ends.
//! - [`privileges`]: `--chroot` and `--username`, giving up what lg no
//!   longer needs once the guest is set up.
//! - [`seccomp`]: the system calls lg may still make once the guest runs.
//! - [`startup`]: lg's own start-up time, step by step, to the first
//!   `KVM_RUN`.
//! - [`network`]: `--tunnet`, the guest's network cards on host taps.
//! - [`inspect`]: what a running lg answers on its control socket;
//!   [`commands`]: `lg ps`, `lg stop`, `lg regs`, `lg dump-pagetables`... the
//!   commands that ask it, and `lg gdb`, which carries gdb's protocol to it
//!   (the stub itself is the `gdb-stub` crate, `--gdb=PORT`'s too).
//!
//! Exit statuses (also in `lg run --help`): 0 the guest powered off or
//! rebooted; 1 lg refused to start (bad input, or a host that cannot run the
//! guest); 2 the guest crashed, a vCPU failed or seccomp refused a call;
//! 3 the user stopped lg (Ctrl-A x, `lg stop --force`, a second signal); 4
//! the guest kernel panicked.

mod classic;
mod cli;
mod commands;
mod hooks;
mod inspect;
mod launch;
mod network;
mod platform;
mod privileges;
mod seccomp;
mod startup;
mod terminal;

use std::process::ExitCode;

/// Every thread's stack, unless the user set `RUST_MIN_STACK`: a little
/// under Rust's default of 2 MiB. A stack of exactly 2 MiB that happens to
/// start on a 2 MiB boundary (as one placed right below the guest's RAM,
/// which lg aligns so, or below a malloc arena, is) gets one transparent
/// huge page under THP `always`: 2 MiB resident for the few KiB a thread
/// uses, which made lg's memory overhead 5.8 MiB instead of 3.4. A stack
/// smaller than a huge page can never hold one.
const THREAD_STACK_BYTES: usize = 2 * 1024 * 1024 - 64 * 1024;

fn main() -> ExitCode {
    // First, so the start-up figure (`-v`) sees what came before `main`.
    startup::begin();
    // Before any thread exists, which is also what makes changing the
    // environment safe; std reads it at the first spawn.
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        std::env::set_var("RUST_MIN_STACK", THREAD_STACK_BYTES.to_string());
    }
    // Every option and path is parsed as text, so a word that is not UTF-8
    // (a byte-string file name) is refused by name rather than left to
    // `std::env::args`, which would panic.
    let args: Vec<String> = match std::env::args_os()
        .enumerate()
        .map(|(at, word)| word.into_string().map_err(|word| (at, word)))
        .collect()
    {
        Ok(args) => args,
        Err((at, word)) => {
            eprintln!(
                "lg: argument {at} ({}) is not valid UTF-8, which lg cannot take:                  rename the file or pass it through a link with a UTF-8 name",
                word.to_string_lossy()
            );
            return ExitCode::from(launch::EXIT_REFUSED);
        }
    };
    // Started as `lguest` (or `lg lguest ...`): lguest's classic syntax.
    let parsed = match classic::classic_arguments(&args) {
        Some(words) => classic::parse(words).map(cli::Command::Run),
        None => cli::parse(&args),
    };
    let command = match parsed {
        Ok(command) => command,
        Err(cli::ParseOutcome::Help(text)) => {
            // Not println!: help piped into `head` must not panic on EPIPE.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{text}");
            return ExitCode::SUCCESS;
        }
        Err(cli::ParseOutcome::Error(message)) => {
            eprintln!("lg: {message}");
            return ExitCode::from(launch::EXIT_REFUSED);
        }
    };
    match command {
        cli::Command::Run(run) => launch::run(run),
        other => commands::run(other),
    }
}
