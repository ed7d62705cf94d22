//! On this very machine, lg either boots the guest or says in one sentence
//! why this host's KVM cannot.
//!
//! The development and CI machines are VMs whose `/dev/kvm` is `kvm_pvm`
//! without VT-x or AMD-V underneath; there a stock kernel crawls for a minute
//! and then dies (see /work/shared/notes/testing-on-these-machines.md). lg
//! must refuse such a host at once, by name, instead of hanging. On a host
//! with real hardware virtualization the same command boots the guest kit
//! and powers off, and must not blame kvm_pvm. No test host here: this is
//! about the machine lg runs on.

use std::process::Command;
use std::time::Duration;

use lg_e2e::{run_here, Outcome};
use xtask::{lg_binary, HostKvm, Kit};

/// Long enough for a real KVM to boot the kit; a refusal takes milliseconds.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs lg on this machine with the guest kit, killing it after [`LIMIT`].
fn run_lg_here() -> Outcome {
    let lg = lg_binary();
    assert!(
        lg.is_file(),
        "{} is missing: run `cargo xtask test`, which builds it",
        lg.display()
    );
    let kit = Kit::existing().unwrap_or_else(|e| panic!("{e}"));
    run_here(
        Command::new(&lg)
            .arg("run")
            .arg("256")
            .arg(&kit.bzimage)
            .arg(format!("--initrd={}", kit.initrd.display()))
            .args(["console=ttyS0", "panic=-1", "lgtest=poweroff"]),
        LIMIT,
    )
}

#[test]
fn lg_boots_here_or_says_why_this_kvm_cannot() {
    let host = HostKvm::check();
    let outcome = run_lg_here();
    let story = format!(
        "this host: {host:?}\nlg's status: {:?}\nlg's stderr:\n{}\nlg's stdout (end):\n{}",
        outcome.status,
        outcome.stderr,
        outcome
            .stdout
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stderr_lines: Vec<&str> = outcome.stderr.lines().collect();
    match host {
        HostKvm::PvmOnly => {
            assert!(
                matches!(outcome.status, Some(s) if s != 0),
                "on kvm_pvm lg must refuse to start (non-zero status, at once)\n{story}"
            );
            assert_eq!(
                stderr_lines.len(),
                1,
                "lg should refuse in one line\n{story}"
            );
            assert!(
                stderr_lines[0].starts_with("lg: ") && stderr_lines[0].contains("kvm_pvm"),
                "lg's refusal should start with `lg: ` and name kvm_pvm\n{story}"
            );
        }
        HostKvm::NoAccess(_) => {
            assert!(
                matches!(outcome.status, Some(s) if s != 0),
                "without a usable /dev/kvm lg must refuse to start\n{story}"
            );
            assert!(
                outcome.stderr.contains("/dev/kvm") && !outcome.stderr.contains("kvm_pvm"),
                "lg should name /dev/kvm, not kvm_pvm\n{story}"
            );
        }
        HostKvm::Usable => {
            assert!(
                !outcome.stderr.contains("kvm_pvm"),
                "this KVM has hardware virtualization; lg must not blame kvm_pvm\n{story}"
            );
            assert_eq!(
                outcome.status,
                Some(0),
                "the guest kit should boot and power off here\n{story}"
            );
            assert!(
                outcome.stdout.contains("LG_GUEST_INIT_OK"),
                "the guest's /init should run\n{story}"
            );
        }
    }
}
