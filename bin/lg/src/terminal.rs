//! The person's terminal.
//!
//! When lg's standard input is a terminal, the guest's console should feel
//! like a serial line plugged into it: every key goes to the guest as it is
//! typed, Ctrl-C included. That needs raw mode, and raw mode must be undone
//! however lg ends (the guest powers off, crashes, lg panics, or someone
//! sends a signal), or the person is left with a terminal that neither
//! echoes nor ends lines. So the saved settings live in one place, and every
//! way out goes through [`restore`].

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

/// The terminal's settings before lg changed them, if it did.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Ctrl-A, the prefix of lg's own keys (as in QEMU and screen).
const ESCAPE: u8 = 0x01;
/// Ctrl-A then `x` quits lg.
const QUIT_KEY: u8 = b'x';

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false)
}

/// Whether standard output is a terminal (to redraw `lg stat --watch`).
pub fn stdout_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stdout().as_fd()).unwrap_or(false)
}

/// Puts the terminal on standard input into raw mode, remembering how it was.
pub fn enter_raw_mode() -> nix::Result<()> {
    let stdin = std::io::stdin();
    let original = termios::tcgetattr(stdin.as_fd())?;
    let mut raw = original.clone();
    termios::cfmakeraw(&mut raw);
    // Keep output processing, so lg's own messages still start on a new
    // line; the guest's 8250 driver sends "\r\n" itself, which is unchanged.
    raw.output_flags |= termios::OutputFlags::OPOST | termios::OutputFlags::ONLCR;
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
}

/// Puts the terminal back as it was. Safe to call more than once, from any
/// thread.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(original) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &original);
    }
}

/// What the person typed, as the input thread sees it.
pub enum Keys<'a> {
    /// Bytes for the guest.
    ForGuest(&'a [u8]),
    /// The person asked lg to quit.
    Quit,
}

/// Splits typed bytes into what goes to the guest and lg's own keys.
#[derive(Default)]
pub struct EscapeFilter {
    after_escape: bool,
    out: Vec<u8>,
}

impl EscapeFilter {
    pub fn filter(&mut self, input: &[u8]) -> Keys<'_> {
        self.out.clear();
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    QUIT_KEY => return Keys::Quit,
                    ESCAPE => self.out.push(ESCAPE),
                    // An unknown key after Ctrl-A is swallowed with it.
                    _ => {}
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                self.out.push(byte);
            }
        }
        Keys::ForGuest(&self.out)
    }
}

/// Reads standard input until it ends, handing the bytes to `deliver`.
/// With `escape_keys`, lg's own keys are taken out, and `quit` is called
/// when the person presses Ctrl-A x. Runs on its own thread.
pub fn pump_input(escape_keys: bool, mut deliver: impl FnMut(&[u8]), quit: impl FnOnce()) {
    let mut stdin = std::io::stdin().lock();
    let mut filter = EscapeFilter::default();
    let mut buf = [0u8; 256];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if !escape_keys => deliver(&buf[..n]),
            Ok(n) => match filter.filter(&buf[..n]) {
                Keys::ForGuest(bytes) if !bytes.is_empty() => deliver(bytes),
                Keys::ForGuest(_) => {}
                Keys::Quit => {
                    quit();
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn for_guest(filter: &mut EscapeFilter, input: &[u8]) -> Option<Vec<u8>> {
        match filter.filter(input) {
            Keys::ForGuest(bytes) => Some(bytes.to_vec()),
            Keys::Quit => None,
        }
    }

    #[test]
    fn ordinary_keys_pass_through() {
        let mut filter = EscapeFilter::default();
        assert_eq!(
            for_guest(&mut filter, b"ls -l\r\x03"),
            Some(b"ls -l\r\x03".to_vec())
        );
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut filter = EscapeFilter::default();
        assert_eq!(for_guest(&mut filter, b"a\x01"), Some(b"a".to_vec()));
        assert_eq!(for_guest(&mut filter, b"x"), None);
    }

    #[test]
    fn ctrl_a_twice_sends_one_ctrl_a() {
        let mut filter = EscapeFilter::default();
        assert_eq!(
            for_guest(&mut filter, b"\x01\x01b"),
            Some(b"\x01b".to_vec())
        );
    }
}
