//! xtask's error: one sentence for the person at the terminal.
//!
//! Almost every failure here is "a tool or a file is not what we expected"
//! (no apt-get, a download failed, lg is not built yet). None of them is
//! handled by code; all of them are read by a person. So the error is a
//! message that names the culprit, built where the failure is understood.

use std::fmt;

/// A failure, described in one sentence that names its culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Attaches what we were doing to a lower-level error (usually `io::Error`).
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::new(format!("{}: {e}", what())))
    }
}
