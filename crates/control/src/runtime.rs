//! Where control sockets live, and what a guest may be called.
//!
//! The directory is per user, like every other runtime socket on a systemd
//! machine: the user's own lg commands find each other's guests there, and no
//! other user can reach them. Choosing it reads the environment; everything
//! else in this crate takes the directory as a parameter, so tests (which run
//! in parallel, in one process, sharing one environment) each use their own.

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The environment variable that overrides the runtime directory outright.
pub(crate) const OVERRIDE_VARIABLE: &str = "LG_RUNTIME_DIR";
/// Where root's guests live when no `XDG_RUNTIME_DIR` is set (as under sudo).
const ROOT_RUNTIME_DIR: &str = "/run/lg";
/// The longest guest name: short enough that `<dir>/<name>.sock` fits the
/// 108 bytes of `sun_path` under any reasonable runtime directory.
const MAX_NAME_LEN: usize = 64;

/// The directory holding the control sockets of this user's guests, created
/// with mode 0700 if it is missing.
///
/// It is `$LG_RUNTIME_DIR` when that is set and non-empty, else
/// `$XDG_RUNTIME_DIR/lg` when that is set and non-empty, else `/run/lg` for
/// root; anyone else without `XDG_RUNTIME_DIR` gets an error saying so.
pub fn runtime_dir() -> Result<PathBuf, String> {
    let dir = runtime_dir_path()?;
    create_private_dir(&dir)?;
    Ok(dir)
}

/// The runtime directory, without creating it: a client that finds it
/// missing knows no guest is running and need not leave a directory behind.
pub(crate) fn runtime_dir_path() -> Result<PathBuf, String> {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and
    // cannot fail.
    let euid = unsafe { libc::geteuid() };
    choose_runtime_dir(
        std::env::var_os(OVERRIDE_VARIABLE),
        std::env::var_os("XDG_RUNTIME_DIR"),
        euid == 0,
    )
}

fn choose_runtime_dir(
    override_dir: Option<OsString>,
    xdg_runtime_dir: Option<OsString>,
    is_root: bool,
) -> Result<PathBuf, String> {
    if let Some(dir) = override_dir.filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = xdg_runtime_dir.filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("lg"));
    }
    if is_root {
        return Ok(PathBuf::from(ROOT_RUNTIME_DIR));
    }
    Err(format!(
        "lg needs a private directory for its control sockets, but XDG_RUNTIME_DIR is not set; \
         set it (usually to /run/user/$(id -u)) or set {OVERRIDE_VARIABLE} to a directory of your own"
    ))
}

/// Creates `dir` (and any missing parents) with mode 0700, so only this user
/// can reach the sockets inside; an existing directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            format!(
                "cannot create lg's runtime directory {}: {e}",
                dir.display()
            )
        })
}

/// Where the guest called `name` listens.
pub(crate) fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Checks that `name` can name a guest: 1 to 64 characters from
/// `A-Z a-z 0-9 _ . -`, not starting with `.` or `-` (so it is neither a
/// hidden file nor mistaken for an option on a command line).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a guest's name cannot be empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the guest name `{name}` is {} characters long, but at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "the guest name `{name}` contains {bad:?}, but only letters, digits, `_`, `.` and `-` are allowed"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!(
            "the guest name `{name}` starts with `{}`, which a name may not",
            &name[..1]
        ));
    }
    Ok(())
}

/// The name of a guest started without `--name`: its lg's process id.
pub fn default_name(pid: u32) -> String {
    format!("lg-{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn good_names_pass() {
        for name in ["web", "a", "lg-4242", "kernel_6.12-rc1", "A.b-c_d", "0"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
        assert_eq!(check_name(&"x".repeat(64)), Ok(()));
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert!(check_name("").unwrap_err().contains("empty"));
        assert!(check_name(&"x".repeat(65))
            .unwrap_err()
            .contains("65 characters"));
        assert!(check_name("a/b").unwrap_err().contains("'/'"));
        assert!(check_name("a b").unwrap_err().contains("' '"));
        assert!(check_name("naïve").unwrap_err().contains("'ï'"));
        assert!(check_name(".hidden")
            .unwrap_err()
            .contains("starts with `.`"));
        assert!(check_name("-v").unwrap_err().contains("starts with `-`"));
        assert!(check_name("..").is_err());
    }

    #[test]
    fn default_name_is_the_pid() {
        assert_eq!(default_name(4242), "lg-4242");
        assert_eq!(check_name(&default_name(u32::MAX)), Ok(()));
    }

    #[test]
    fn runtime_dir_prefers_the_override_then_xdg_then_root() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            choose_runtime_dir(some("/tmp/mine"), some("/run/user/1000"), true),
            Ok(PathBuf::from("/tmp/mine"))
        );
        assert_eq!(
            choose_runtime_dir(some(""), some("/run/user/1000"), false),
            Ok(PathBuf::from("/run/user/1000/lg"))
        );
        assert_eq!(
            choose_runtime_dir(None, some(""), true),
            Ok(PathBuf::from("/run/lg"))
        );
        let error = choose_runtime_dir(None, None, false).unwrap_err();
        assert!(error.contains("XDG_RUNTIME_DIR is not set"), "{error}");
    }

    #[test]
    fn runtime_dir_is_created_private() {
        let base = crate::test_dir::TestDir::new("runtime");
        let dir = base.path().join("a/lg");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A second call finds it there and is content.
        create_private_dir(&dir).unwrap();
    }

    #[test]
    fn a_file_in_the_way_of_the_runtime_dir_is_named() {
        let base = crate::test_dir::TestDir::new("runtime-file");
        let file = base.path().join("lg");
        std::fs::write(&file, b"").unwrap();
        let error = create_private_dir(&file).unwrap_err();
        assert!(error.contains(&file.display().to_string()), "{error}");
    }
}
