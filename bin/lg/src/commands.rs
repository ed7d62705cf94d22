//! `lg ps`, `lg stop`, `lg pause`, `lg resume`, `lg regs`,
//! `lg dump-pagetables`, `lg translate`, `lg stat`, `lg gdb`: the commands
//! that look at guests other lg processes are running.
//!
//! Each is a client of a running lg's control socket (the `lg-control`
//! crate; the answers are computed in `inspect.rs`). They print what the
//! guest's lg answered, or one sentence saying why there is no answer, and
//! exit 0 or 1.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lg_control::{ClientError, Request};

use crate::cli::{Command, DumpPageTables, Gdb, Regs, Stat, Stop, Translate};

/// Runs one of the inspecting commands (never `run`).
pub fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Run(_) => Err("lg run is not an inspecting command".to_string()),
        Command::Ps(_) => ps(),
        Command::Stop(stop) => stop_guest(&stop),
        Command::Pause(pause) => ask(&pause.name, &Request::Pause)
            .map(|_| eprintln!("lg: {} is paused (lg resume {0} lets it run)", pause.name)),
        Command::Resume(resume) => ask(&resume.name, &Request::Resume).map(drop),
        Command::Regs(Regs { cpu, name }) => print_answer(&name, &Request::Regs { cpu }),
        Command::DumpPageTables(DumpPageTables {
            cpu,
            cr3,
            range,
            name,
        }) => print_answer(&name, &Request::DumpPageTables { cpu, cr3, range }),
        Command::Translate(Translate {
            cpu,
            cr3,
            name,
            address,
        }) => print_answer(
            &name,
            &Request::Translate {
                cpu,
                cr3,
                virt: address,
            },
        ),
        Command::Stat(stat) => statistics(&stat),
        Command::Gdb(Gdb { name }) => gdb_pipe(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lg: {message}");
            ExitCode::FAILURE
        }
    }
}

fn ask(name: &str, request: &Request) -> Result<String, String> {
    lg_control::request(name, request).map_err(|e| e.to_string())
}

fn print_answer(name: &str, request: &Request) -> Result<(), String> {
    let body = ask(name, request)?;
    // Not print!: output piped into `head` must not panic on EPIPE.
    let _ = std::io::stdout().write_all(body.as_bytes());
    Ok(())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64)
}

fn ps() -> Result<(), String> {
    let guests: Vec<_> = lg_control::running_guests()?
        .into_iter()
        .map(|(_, info)| info)
        .collect();
    if guests.is_empty() {
        eprintln!("lg: no guests running");
        return Ok(());
    }
    let _ = std::io::stdout().write_all(lg_control::format_ps(&guests, now_unix_ms()).as_bytes());
    Ok(())
}

/// Asks the guest to stop, then waits for its lg to end: the command's
/// success means the guest is gone, not merely that it was asked.
fn stop_guest(stop: &Stop) -> Result<(), String> {
    let request = Request::Stop { force: stop.force };
    match lg_control::request(&stop.name, &request) {
        Ok(_) => {}
        Err(_) if stop.force => {
            // The forced lg may end before it finishes answering; whether
            // it is gone is what the loop below checks.
        }
        Err(e) => return Err(e.to_string()),
    }
    let deadline = Instant::now() + Duration::from_secs(stop.timeout);
    loop {
        match lg_control::request(&stop.name, &Request::Info) {
            Err(ClientError::NoSuchGuest(_)) => {
                eprintln!("lg: {} has stopped", stop.name);
                return Ok(());
            }
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "{} did not shut down within {} s of pressing its power button \
                     (its userspace may ignore the button); lg stop --force {0} ends it at once",
                    stop.name, stop.timeout
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `lg gdb NAME`: gdb's remote protocol between this process's standard
/// input and output (gdb's end of `target remote | lg gdb NAME`) and the
/// guest's control socket, until either side closes. Unbuffered both ways:
/// gdb waits for each packet's answer, and Ctrl-C is a single byte.
fn gdb_pipe(name: &str) -> Result<(), String> {
    use std::io::Read as _;
    let stream = lg_control::open_stream(name, &Request::Gdb).map_err(|e| e.to_string())?;
    let mut to_guest = stream
        .try_clone()
        .map_err(|e| format!("cannot share the connection to {name}: {e}"))?;
    std::thread::Builder::new()
        .name("gdb-input".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_guest.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            // gdb is gone: the guest's lg sees the end and detaches.
            let _ = to_guest.shutdown(std::net::Shutdown::Write);
        })
        .map_err(|e| format!("cannot start a thread for gdb's input: {e}"))?;
    let mut from_guest = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        match from_guest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("the connection to {name} failed: {e}")),
        }
    }
}

/// `key=value` lines into an ordered map.
fn counters(body: &str) -> BTreeMap<String, u64> {
    body.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn statistics(stat: &Stat) -> Result<(), String> {
    let first = ask(&stat.name, &Request::Stat)?;
    if !stat.watch {
        let _ = std::io::stdout().write_all(first.as_bytes());
        return Ok(());
    }
    let clear_screen = crate::terminal::stdout_is_terminal();
    let mut previous = counters(&first);
    let mut previous_at = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let body = match lg_control::request(&stat.name, &Request::Stat) {
            Ok(body) => body,
            Err(ClientError::NoSuchGuest(_)) => {
                eprintln!("lg: {} has ended", stat.name);
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let now = Instant::now();
        let seconds = now.duration_since(previous_at).as_secs_f64().max(0.001);
        let current = counters(&body);
        let mut out = String::new();
        if clear_screen {
            out.push_str("\x1b[H\x1b[2J");
        }
        for (key, value) in &current {
            let rate =
                value.saturating_sub(previous.get(key).copied().unwrap_or(0)) as f64 / seconds;
            out.push_str(&format!("{key}={value}  ({rate:.0}/s)\n"));
        }
        out.push('\n');
        if std::io::stdout().write_all(out.as_bytes()).is_err() {
            return Ok(());
        }
        previous = current;
        previous_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_key_value_lines() {
        let parsed = counters("vcpu0.exits=12\nvcpu0.exits.io_in=3\nnot a counter\nx=y\n");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed["vcpu0.exits"], 12);
        assert_eq!(parsed["vcpu0.exits.io_in"], 3);
    }
}
