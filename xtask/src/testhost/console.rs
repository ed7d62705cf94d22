//! Reading the test host's console: echo it, keep it, find the markers.
//!
//! QEMU's serial port is its stdout. A thread reads it as it comes, echoes
//! it (line by line for tests, byte for byte for a terminal) and hands each
//! line, `\r` removed, to the run, which looks for the lines the test host's
//! `/init` prints: `LG_TESTHOST_READY`, `LG_TESTHOST_STATUS=<n>`,
//! `LG_TESTHOST_NO_KVM`.

use std::io::{Read, Write};
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Error;

pub(super) const READY: &str = "LG_TESTHOST_READY";
pub(super) const STATUS: &str = "LG_TESTHOST_STATUS=";
pub(super) const NO_KVM: &str = "LG_TESTHOST_NO_KVM";

/// Where a run's console output goes as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Line by line through `print!`, which the test harness captures and
    /// shows only for a failing test.
    Lines,
    /// Byte for byte to stdout, as a terminal wants it (`cargo xtask testhost`).
    Raw,
    /// Line by line on stderr, so that the command's own stdout stays its
    /// result (`cargo xtask bench` prints its table there).
    Stderr,
    /// Not at all; it is still in [`crate::TestHostRun::output`].
    Off,
}

/// The markers seen so far in a run's console output.
#[derive(Default)]
pub(super) struct Transcript {
    pub(super) lines: Vec<String>,
    pub(super) ready_after: Option<Duration>,
    pub(super) status: Option<i32>,
    status_at: Option<Instant>,
    pub(super) no_kvm: bool,
}

impl Transcript {
    /// Records a line; returns the marker it carried, if any.
    pub(super) fn add(&mut self, line: String, started: Instant) -> Option<&'static str> {
        let mut marker = None;
        if line.contains(READY) && self.ready_after.is_none() {
            self.ready_after = Some(started.elapsed());
            marker = Some(READY);
        }
        if let Some(status) = parse_status(&line) {
            self.status = Some(status);
            self.status_at = Some(Instant::now());
            marker = Some(STATUS);
        }
        if line.contains(NO_KVM) {
            self.no_kvm = true;
            marker = Some(NO_KVM);
        }
        self.lines.push(line);
        marker
    }

    pub(super) fn since_status(&self) -> Duration {
        self.status_at.map(|at| at.elapsed()).unwrap_or_default()
    }
}

/// `...LG_TESTHOST_STATUS=3...` → 3, wherever the marker sits in the line
/// (a kernel message may have been printed in front of it).
fn parse_status(line: &str) -> Option<i32> {
    let at = line.rfind(STATUS)?;
    let digits: String = line[at + STATUS.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Starts a thread that reads QEMU's serial output, echoes it, and sends
/// each line (`\r` removed) to the returned channel; it ends at EOF.
pub(super) fn read_console(
    child: &mut Child,
    echo: Echo,
) -> Result<(mpsc::Receiver<String>, JoinHandle<()>), Error> {
    let Some(mut stdout) = child.stdout.take() else {
        return Err(Error::new("QEMU's stdout is not a pipe"));
    };
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        let mut partial: Vec<u8> = Vec::new();
        let send = |bytes: &[u8]| {
            let line: String = String::from_utf8_lossy(bytes)
                .chars()
                .filter(|&c| c != '\r')
                .collect();
            match echo {
                Echo::Lines => println!("{line}"),
                Echo::Stderr => eprintln!("{line}"),
                Echo::Raw | Echo::Off => {}
            }
            let _ = sender.send(line);
        };
        loop {
            let n = match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if echo == Echo::Raw {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buffer[..n]);
                let _ = out.flush();
            }
            partial.extend_from_slice(&buffer[..n]);
            while let Some(newline) = partial.iter().position(|&b| b == b'\n') {
                let rest = partial.split_off(newline + 1);
                partial.truncate(newline);
                send(&partial);
                partial = rest;
            }
        }
        if !partial.is_empty() {
            send(&partial);
        }
    });
    Ok((receiver, reader))
}

/// Collects QEMU's stderr (its own complaints), echoing it in raw mode.
pub(super) fn collect_stderr(child: &mut Child, echo: bool) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut collected = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if echo {
                    let _ = std::io::stderr().write_all(&buffer[..n]);
                }
                collected.extend_from_slice(&buffer[..n]);
            }
        }
        String::from_utf8_lossy(&collected).into_owned()
    })
}

/// QEMU, killed if the run is abandoned (a panicking test, a timeout).
pub(super) struct KillOnDrop(pub(super) Child);

impl KillOnDrop {
    /// Waits up to `grace` for QEMU to exit, then kills it. `None` if killed.
    pub(super) fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_marker_is_found_anywhere_in_the_line() {
        assert_eq!(parse_status("LG_TESTHOST_STATUS=0"), Some(0));
        assert_eq!(
            parse_status("[ 12.3] kvm: something LG_TESTHOST_STATUS=42"),
            Some(42)
        );
        assert_eq!(parse_status("LG_TESTHOST_STATUS="), None);
        assert_eq!(parse_status("LG_TESTHOST_READY"), None);
    }
}
