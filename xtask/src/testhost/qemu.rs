//! Which QEMU boots the test host: Debian's `qemu-system-x86_64` on `$PATH`,
//! or another build named by the environment, run side by side with it.
//!
//! The test host is only as good as QEMU's emulation of AMD SVM, and that
//! improves from release to release (7.2 does not stop a nested guest at a
//! breakpoint; 9.1 and later do). Trying a newer QEMU must not mean
//! replacing the machine's own, which other runs may be using, so:
//!
//! - `LG_TESTHOST_QEMU=/path/to/qemu-system-x86_64` picks the binary;
//! - `LG_TESTHOST_QEMU_DATA=DIR[:DIR...]` gives it its firmware (SeaBIOS,
//!   `linuxboot_dma.bin`, ...) through one `-L DIR` each, for a build whose
//!   compiled-in data directory holds another release's files.
//!
//! For example, Debian's backports unpacked with `dpkg-deb -x` into
//! `/opt/qemu-bpo/root` (`qemu-system-x86`, `qemu-system-common`,
//! `qemu-system-data`, `seabios`, and `qemu-system-gui` and
//! `qemu-system-modules-opengl` for their modules):
//! `LG_TESTHOST_QEMU=/opt/qemu-bpo/root/usr/bin/qemu-system-x86_64
//! LG_TESTHOST_QEMU_DATA=/opt/qemu-bpo/root/usr/share/qemu:/opt/qemu-bpo/root/usr/share/seabios
//! QEMU_MODULE_DIR=/opt/qemu-bpo/root/usr/lib/x86_64-linux-gnu/qemu`.
//! The last is QEMU's own: a build that finds a module of another release
//! (Debian's, in its compiled-in directory) refuses it and may abort, so it
//! must find its own first. Cleaner still is a wrapper script, named by
//! `LG_TESTHOST_QEMU`, that runs QEMU under `unshare -m` with the unpacked
//! `usr/lib/x86_64-linux-gnu/qemu`, `usr/share/qemu` and `usr/share/seabios`
//! bind-mounted over Debian's: that QEMU alone then sees its own files.

use std::path::PathBuf;
use std::process::Command;

use crate::command;
use crate::Error;

/// The environment variable naming the test host's QEMU binary.
pub const QEMU_VAR: &str = "LG_TESTHOST_QEMU";
/// The environment variable listing its firmware directories.
pub const QEMU_DATA_VAR: &str = "LG_TESTHOST_QEMU_DATA";

/// The QEMU a test host boots in.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    /// Each one becomes `-L DIR`, in order.
    pub data_dirs: Vec<PathBuf>,
}

impl Qemu {
    /// The QEMU the environment chooses, checked to exist; see the module
    /// documentation.
    pub fn chosen() -> Result<Qemu, Error> {
        let binary = match std::env::var_os(QEMU_VAR).filter(|v| !v.is_empty()) {
            Some(named) => {
                let named = PathBuf::from(named);
                let found = if named.components().count() > 1 {
                    Some(named.clone()).filter(|p| p.is_file())
                } else {
                    command::find_in_path(&named.to_string_lossy())
                };
                found.ok_or_else(|| {
                    Error::new(format!(
                        "{QEMU_VAR}={} names no QEMU binary: there is no such file",
                        named.display()
                    ))
                })?
            }
            None => command::find_in_path("qemu-system-x86_64").ok_or_else(|| {
                Error::new("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
            })?,
        };
        let mut data_dirs = Vec::new();
        if let Some(dirs) = std::env::var_os(QEMU_DATA_VAR) {
            for dir in std::env::split_paths(&dirs).filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(Error::new(format!(
                        "{QEMU_DATA_VAR} names {}, which is not a directory",
                        dir.display()
                    )));
                }
                data_dirs.push(dir);
            }
        }
        Ok(Qemu { binary, data_dirs })
    }

    /// A command running this QEMU with its firmware directories.
    pub fn command(&self) -> Command {
        let mut qemu = Command::new(&self.binary);
        for dir in &self.data_dirs {
            qemu.arg("-L").arg(dir);
        }
        qemu
    }

    /// QEMU's (major, minor) version, from `--version`'s
    /// "QEMU emulator version 10.0.2 (...)".
    pub fn version(&self) -> Result<(u32, u32), Error> {
        let said = command::stdout_of(Command::new(&self.binary).arg("--version"))?;
        parse_version(&said).ok_or_else(|| {
            Error::new(format!(
                "{} --version said no version number: {:?}",
                self.binary.display(),
                said.lines().next().unwrap_or("")
            ))
        })
    }
}

fn parse_version(said: &str) -> Option<(u32, u32)> {
    let number = said
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)?;
    let mut parts = number.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_of_debians_qemus() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"),
            Some((7, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some((10, 0))
        );
        assert_eq!(parse_version("qemu: unknown option"), None);
        assert_eq!(parse_version("QEMU emulator version x.y"), None);
    }
}
