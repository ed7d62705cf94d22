//! `--chroot` and `--username`: giving up what lg no longer needs.
//!
//! lg starts as whoever ran it, often root, because opening `/dev/kvm`, a
//! tap or a disk image may need it. Once every one of those files is open,
//! the guest is served through the file descriptors alone, and the rest of
//! lg's life is spent reading what a possibly hostile guest writes. lguest's
//! answer, kept here: after set-up, enter a directory with nothing in it
//! (`--chroot`) and become an unprivileged user (`--username`), so a bug in
//! a device reaches neither the host's files nor root's powers.
//!
//! It happens in two steps. [`Confinement::check`] runs with the rest of
//! the input checks, before any guest exists: the directory must exist and
//! the user must be known, and the user's ids and groups are looked up then,
//! while `/etc/passwd` and `/etc/group` are still the host's (after the
//! chroot they would be the directory's, or missing). [`drop`] runs once
//! the VM, its vCPUs and its devices are set up and before the first vCPU
//! runs; if any step fails, lg stops rather than run the guest with more
//! privilege than asked.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// Where lg confines itself once the guest is set up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `--chroot`: the directory, absolute.
    chroot: Option<PathBuf>,
    /// `--username`: who lg becomes.
    user: Option<TargetUser>,
}

/// The user of `--username`, looked up while the host's files are in view.
#[derive(Debug, PartialEq, Eq)]
struct TargetUser {
    name: String,
    uid: Uid,
    gid: Gid,
    /// The supplementary groups, as `initgroups` would set them.
    groups: Vec<Gid>,
}

impl Confinement {
    /// Checks `--chroot` and `--username` and looks the user up.
    pub fn check(chroot: Option<&str>, username: Option<&str>) -> Result<Self, String> {
        let chroot = chroot.map(check_directory).transpose()?;
        let user = username.map(look_up_user).transpose()?;
        Ok(Confinement { chroot, user })
    }
}

/// `--chroot=DIR`: an existing directory, made absolute.
fn check_directory(dir: &str) -> Result<PathBuf, String> {
    if dir.is_empty() {
        return Err("--chroot needs a directory: --chroot=DIR".into());
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => std::fs::canonicalize(dir)
            .map_err(|e| format!("--chroot={dir}: cannot resolve the directory: {e}")),
        Ok(_) => Err(format!("--chroot={dir}: not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("--chroot={dir}: no such directory"))
        }
        Err(e) => Err(format!("--chroot={dir}: {e}")),
    }
}

/// `--username=USER`: a user this host knows, with its groups.
fn look_up_user(name: &str) -> Result<TargetUser, String> {
    if name.is_empty() {
        return Err("--username needs a user name: --username=USER".into());
    }
    let user = match User::from_name(name) {
        Ok(Some(user)) => user,
        Ok(None) => return Err(format!("--username={name}: no such user on this host")),
        Err(e) => return Err(format!("--username={name}: cannot look the user up: {e}")),
    };
    let c_name =
        CString::new(name).map_err(|_| format!("--username={name}: not a valid user name"))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map_err(|e| format!("--username={name}: cannot list the user's groups: {e}"))?;
    Ok(TargetUser {
        name: name.to_string(),
        uid: user.uid,
        gid: user.gid,
        groups,
    })
}

/// Enters the chroot, then becomes the user: groups, then gid, then uid
/// (after the uid, lg could no longer change the others). Every thread
/// changes with it: glibc and musl apply set*id calls to the whole process.
pub fn drop(confinement: &Confinement) -> Result<(), String> {
    if let Some(dir) = &confinement.chroot {
        let shown = dir.display();
        nix::unistd::chroot(dir).map_err(|e| format!("--chroot={shown}: cannot chroot: {e}"))?;
        nix::unistd::chdir("/")
            .map_err(|e| format!("--chroot={shown}: cannot chdir to its root: {e}"))?;
        log::info!("confined to {shown}");
    }
    if let Some(user) = &confinement.user {
        let name = &user.name;
        nix::unistd::setgroups(&user.groups)
            .map_err(|e| format!("--username={name}: cannot set its groups: {e}"))?;
        nix::unistd::setresgid(user.gid, user.gid, user.gid)
            .map_err(|e| format!("--username={name}: cannot set gid {}: {e}", user.gid))?;
        nix::unistd::setresuid(user.uid, user.uid, user.uid)
            .map_err(|e| format!("--username={name}: cannot set uid {}: {e}", user.uid))?;
        // Belt and braces, as the ids are the whole point.
        if Uid::effective() != user.uid || Gid::effective() != user.gid {
            return Err(format!("--username={name}: the ids did not change"));
        }
        log::info!("running as {name} (uid {}, gid {})", user.uid, user.gid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_nothing_done() {
        assert_eq!(Confinement::check(None, None), Ok(Confinement::default()));
        assert_eq!(drop(&Confinement::default()), Ok(()));
    }

    #[test]
    fn the_chroot_must_be_an_existing_directory() {
        let checked = Confinement::check(Some("/"), None).unwrap();
        assert_eq!(checked.chroot, Some(PathBuf::from("/")));
        let missing = Confinement::check(Some("/nonexistent-lg-dir"), None).unwrap_err();
        assert!(
            missing.contains("--chroot=/nonexistent-lg-dir"),
            "{missing}"
        );
        assert!(missing.contains("no such directory"), "{missing}");
        let file = Confinement::check(Some("/proc/self/status"), None).unwrap_err();
        assert!(file.contains("not a directory"), "{file}");
        assert!(Confinement::check(Some(""), None).is_err());
    }

    #[test]
    fn the_chroot_is_made_absolute() {
        let checked = Confinement::check(Some("."), None).unwrap();
        assert!(checked.chroot.unwrap().is_absolute());
    }

    #[test]
    fn the_user_must_exist_and_is_looked_up_early() {
        let root = Confinement::check(None, Some("root")).unwrap();
        let user = root.user.unwrap();
        assert_eq!(user.uid, Uid::from_raw(0));
        assert_eq!(user.gid, Gid::from_raw(0));
        assert!(user.groups.contains(&Gid::from_raw(0)), "{:?}", user.groups);
        let unknown = Confinement::check(None, Some("nosuchuser-lg")).unwrap_err();
        assert!(unknown.contains("--username=nosuchuser-lg"), "{unknown}");
        assert!(unknown.contains("no such user"), "{unknown}");
        assert!(Confinement::check(None, Some("")).is_err());
    }
}
