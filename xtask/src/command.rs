//! Running Debian's tools (apt-get, dpkg-deb, gzip, ldd, xz, cargo) from xtask.
//!
//! xtask leans on tools that already do their job well instead of
//! reimplementing them. What it must add is a good failure: which command,
//! run how, said what. Chatty tools (apt-get) run with their output captured
//! and shown only when they fail, so a cached `cargo xtask test` stays quiet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::Error;

/// Whether `program` is on `$PATH`.
pub fn have(program: &str) -> bool {
    find_in_path(program).is_some()
}

/// The full path of `program` on `$PATH`, if any.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// How a command reads in a message: `apt-get download busybox-static`.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` with its output captured; on failure the error quotes the
/// last lines of what it printed.
pub fn run_quiet(cmd: &mut Command) -> Result<Output, Error> {
    let output = spawn_captured(cmd)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failed(cmd, &output))
    }
}

/// Runs `cmd` and returns its stdout as text; fails like [`run_quiet`].
pub fn stdout_of(cmd: &mut Command) -> Result<String, Error> {
    let output = run_quiet(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd` with its output captured, whatever its exit status.
pub fn spawn_captured(cmd: &mut Command) -> Result<Output, Error> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot run `{}`: {e}", describe(cmd))))
}

/// Runs `cmd` with the terminal's stdio, for commands whose progress the
/// user wants to see (cargo).
pub fn run_visible(cmd: &mut Command) -> Result<(), Error> {
    let status = cmd
        .status()
        .map_err(|e| Error::new(format!("cannot run `{}`: {e}", describe(cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("`{}` failed ({status})", describe(cmd))))
    }
}

/// The error for a command that ran and failed, quoting its last words.
pub fn failed(cmd: &Command, output: &Output) -> Error {
    let mut said = String::from_utf8_lossy(&output.stderr).into_owned();
    said.push_str(&String::from_utf8_lossy(&output.stdout));
    let tail: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(6)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if tail.is_empty() {
        Error::new(format!("`{}` failed ({})", describe(cmd), output.status))
    } else {
        Error::new(format!(
            "`{}` failed ({}):\n    {}",
            describe(cmd),
            output.status,
            tail.join("\n    ")
        ))
    }
}

/// The cargo that started us (`$CARGO`), or `cargo` from `$PATH`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::workspace_root());
    cmd
}

/// Makes sure each `(program, Debian package)` pair's program is on `$PATH`,
/// installing the missing packages with apt-get when lg's build runs as root
/// on Debian, so the README's commands work on a fresh machine; otherwise
/// says in one sentence what to install.
pub fn ensure_debian_packages(needed: &[(&str, &str)]) -> Result<(), Error> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !have("apt-get") || !root {
        return Err(Error::new(format!(
            "this needs Debian's {list}: install it (sudo apt-get install {list})"
        )));
    }
    crate::progress(format!("host tools: installing {list} with apt-get"));
    run_visible(Command::new("apt-get").args(["update", "-q"]))?;
    run_visible(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
