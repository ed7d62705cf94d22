//! lguest's classic command line (`lguest 64 vmlinux --tunnet=... root=/dev/vda`)
//! and lg's own (`lg run ...`), parsed from any words. The parsers live in
//! the `lg` binary, so this target compiles `bin/lg/src/cli.rs` and
//! `classic.rs` into itself, unchanged; the input's words are separated by
//! NUL bytes, as in argv. Any words must give a `Run` or one sentence of
//! error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../bin/lg/src/cli.rs"]
mod cli;

#[allow(dead_code)]
#[path = "../../bin/lg/src/classic.rs"]
mod classic;

/// `cli::describe` (what `--dry-run` prints) asks the launcher for the
/// kernel's command line; this target never calls it, and compiling the
/// launcher in would bring KVM with it. If a parser ever starts calling
/// these, the run panics here and the fuzzer reports it.
#[allow(dead_code)]
mod launch {
    use crate::cli::Tunnet;

    pub(crate) enum ConsoleDevice {
        Serial,
        Hvc,
    }

    pub(crate) fn kernel_command_line(_: &[String], _: &[Tunnet]) -> (String, ConsoleDevice) {
        unreachable!("the parsers reached the launcher's command line")
    }
}

/// A parse's outcome must be usable: an error is one line of text.
fn check(outcome: Result<cli::Run, cli::ParseOutcome>) {
    match outcome {
        Ok(run) => {
            let _ = cli::tunnets(&run);
            let _ = cli::devices(&run);
        }
        Err(cli::ParseOutcome::Error(message)) => {
            assert!(!message.is_empty(), "an empty error message");
        }
        Err(cli::ParseOutcome::Help(_)) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let words: Vec<String> = text.split('\0').map(str::to_string).collect();
    // As `lguest WORDS...`.
    check(classic::parse(&words));
    // As `lg WORDS...`, which may itself be `lg lguest ...`.
    let mut args = vec!["lg".to_string()];
    args.extend(words);
    match classic::classic_arguments(&args) {
        Some(classic_words) => check(classic::parse(classic_words)),
        None => match cli::parse(&args) {
            Ok(cli::Command::Run(run)) => check(Ok(run)),
            Ok(_) => {}
            Err(outcome) => check(Err(outcome)),
        },
    }
});
