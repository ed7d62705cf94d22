//! Debian's cloud kernel and static busybox: fetched once with apt, unpacked, kept.
//!
//! Both the guest and the nested test host boot Debian's `linux-image-cloud-amd64`
//! kernel (small, virtio as modules, 8250 console and ext4 built in), and both
//! initramfs are busybox. Taking them from Debian's archive, rather than building
//! a kernel, makes the first `cargo xtask test` on a fresh machine a 30 MB
//! download instead of a half-hour compile, and tests lg against the kernel
//! people actually run.
//!
//! The metapackage `linux-image-cloud-amd64` names a versioned package
//! (`linux-image-6.1.0-NN-cloud-amd64`); that name is what we download and
//! cache. `.deb` files stay in `target/guest/debs/` and are unpacked with
//! `dpkg-deb -x` into `target/guest/unpacked/<package>/`, so a second run
//! touches the network only when Debian moved to a new kernel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::command::{self, have, run_quiet, stdout_of};
use crate::error::Context;
use crate::{progress, Error};

/// The metapackage that always depends on Debian's current cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The unpacked Debian packages xtask builds initramfs from.
#[derive(Debug, Clone)]
pub struct Packages {
    /// The versioned kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Where the kernel package was unpacked (holds `boot/` and `lib/modules/`).
    pub kernel_root: PathBuf,
    /// Where busybox-static was unpacked (holds `bin/busybox`).
    pub busybox_root: PathBuf,
}

impl Packages {
    /// The kernel release, the directory name under `lib/modules/`.
    pub fn kernel_release(&self) -> Result<String, Error> {
        let modules = self.kernel_root.join("lib/modules");
        let mut releases: Vec<String> = fs::read_dir(&modules)
            .context(|| format!("cannot list {}", modules.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("kernel").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        releases.sort();
        releases.pop().ok_or_else(|| {
            Error::new(format!(
                "{} holds no kernel modules; remove it and run `cargo xtask guest` again",
                modules.display()
            ))
        })
    }

    /// The kernel's bzImage, `boot/vmlinuz-<release>`.
    pub fn vmlinuz(&self) -> Result<PathBuf, Error> {
        let path = self
            .kernel_root
            .join("boot")
            .join(format!("vmlinuz-{}", self.kernel_release()?));
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::new(format!(
                "{} is missing from the unpacked {}",
                path.display(),
                self.kernel_package
            )))
        }
    }

    /// The directory holding the kernel's modules, `lib/modules/<release>/kernel`.
    pub fn modules_dir(&self) -> Result<PathBuf, Error> {
        Ok(self
            .kernel_root
            .join("lib/modules")
            .join(self.kernel_release()?)
            .join("kernel"))
    }

    /// The static busybox binary.
    pub fn busybox(&self) -> Result<PathBuf, Error> {
        let path = self.busybox_root.join("bin/busybox");
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::new(format!(
                "{} is missing from the unpacked {BUSYBOX_PACKAGE}",
                path.display()
            )))
        }
    }
}

/// Whether this machine has the apt and dpkg tools [`fetch`] needs.
pub fn apt_available() -> bool {
    have("apt-get") && have("apt-cache") && have("dpkg-deb")
}

fn guest_dir() -> PathBuf {
    crate::target_dir().join("guest")
}

fn debs_dir() -> PathBuf {
    guest_dir().join("debs")
}

fn unpacked_dir() -> PathBuf {
    guest_dir().join("unpacked")
}

/// Records which kernel package [`fetch`] chose, so [`fetched`] can find it
/// without asking apt (the e2e tests must not need apt or the network).
fn kernel_record() -> PathBuf {
    unpacked_dir().join("kernel-package")
}

/// What [`fetch`] found, so one `cargo xtask` asks apt only once (a second
/// `apt-cache depends` costs another second).
static FETCHED: Mutex<Option<Packages>> = Mutex::new(None);

/// Resolves, downloads (if not cached) and unpacks the cloud kernel and busybox.
pub fn fetch() -> Result<Packages, Error> {
    let mut fetched = FETCHED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(packages) = fetched.as_ref() {
        return Ok(packages.clone());
    }
    let packages = fetch_uncached()?;
    *fetched = Some(packages.clone());
    Ok(packages)
}

fn fetch_uncached() -> Result<Packages, Error> {
    let kernel_package = resolve_kernel_package()?;
    let kernel_root = download_and_unpack(&kernel_package)?;
    let busybox_root = download_and_unpack(BUSYBOX_PACKAGE)?;
    fs::write(kernel_record(), format!("{kernel_package}\n"))
        .context(|| format!("cannot write {}", kernel_record().display()))?;
    Ok(Packages {
        kernel_package,
        kernel_root,
        busybox_root,
    })
}

/// The packages a previous [`fetch`] unpacked, found without apt or network.
pub fn fetched() -> Result<Packages, Error> {
    let not_fetched = || {
        Error::new(format!(
            "Debian's cloud kernel and busybox are not unpacked under {}: run `cargo xtask test` \
             (or `cargo xtask guest`) first",
            unpacked_dir().display()
        ))
    };
    let kernel_package = fs::read_to_string(kernel_record())
        .map_err(|_| not_fetched())?
        .trim()
        .to_string();
    let packages = Packages {
        kernel_root: unpacked_dir().join(&kernel_package),
        busybox_root: unpacked_dir().join(BUSYBOX_PACKAGE),
        kernel_package,
    };
    if packages.kernel_root.is_dir() && packages.busybox_root.is_dir() {
        Ok(packages)
    } else {
        Err(not_fetched())
    }
}

/// `apt-cache depends linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64`.
fn resolve_kernel_package() -> Result<String, Error> {
    if let Some(package) = kernel_dependency()? {
        return Ok(package);
    }
    // A fresh machine (or container) may have no package lists yet.
    apt_get_update()?;
    kernel_dependency()?.ok_or_else(|| {
        Error::new(format!(
            "apt-cache knows no {KERNEL_METAPACKAGE}, even after apt-get update: \
             is this Debian on amd64 with the main archive in its sources?"
        ))
    })
}

fn kernel_dependency() -> Result<Option<String>, Error> {
    let output =
        command::spawn_captured(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(parse_kernel_dependency(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

/// Picks the versioned kernel from `apt-cache depends` output.
fn parse_kernel_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        let value = value.trim();
        (key.trim_start_matches('|') == "Depends"
            && value.starts_with("linux-image-")
            && !value.starts_with('<'))
        .then(|| value.to_string())
    })
}

fn apt_get_update() -> Result<(), Error> {
    progress("guest kit: apt-get update (the package lists are missing or stale)");
    run_quiet(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// The unpacked tree of `package`, downloading and unpacking as needed
/// (also how `cargo xtask kernel` gets `linux-source-6.1`).
pub fn download_and_unpack(package: &str) -> Result<PathBuf, Error> {
    let deb = match cached_deb(package)? {
        Some(deb) => deb,
        None => download(package)?,
    };
    unpack(package, &deb)
}

/// A `.deb` of `package` already in `target/guest/debs/` (the newest if several).
fn cached_deb(package: &str) -> Result<Option<PathBuf>, Error> {
    let dir = debs_dir();
    if !dir.is_dir() {
        return Ok(None);
    }
    let prefix = format!("{package}_");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(&dir).context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".deb")) {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .context(|| format!("cannot stat {}", entry.path().display()))?;
        if newest.as_ref().map_or(true, |(time, _)| modified > *time) {
            newest = Some((modified, entry.path()));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

fn download(package: &str) -> Result<PathBuf, Error> {
    let size = download_size(package)
        .map(|bytes| format!(" (≈ {} MB)", (bytes + 500_000) / 1_000_000))
        .unwrap_or_default();
    progress(format!("guest kit: downloading {package}{size}"));
    // Into a scratch directory first: an interrupted download must not look cached.
    let partial = debs_dir().join(format!(".partial-{}", std::process::id()));
    fs::create_dir_all(&partial).context(|| format!("cannot create {}", partial.display()))?;
    let get = |partial: &Path| {
        run_quiet(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(partial),
        )
    };
    if get(&partial).is_err() {
        // Stale lists name a version the mirror no longer has.
        apt_get_update()?;
        get(&partial)?;
    }
    let deb = fs::read_dir(&partial)
        .context(|| format!("cannot list {}", partial.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::new(format!("apt-get download {package} produced no .deb")))?;
    let name = deb
        .file_name()
        .ok_or_else(|| Error::new(format!("odd download path {}", deb.display())))?;
    let cached = debs_dir().join(name);
    fs::rename(&deb, &cached).context(|| format!("cannot move {} into place", deb.display()))?;
    let _ = fs::remove_dir_all(&partial);
    Ok(cached)
}

/// The package's download size in bytes, from `apt-cache show`.
fn download_size(package: &str) -> Option<u64> {
    let show =
        stdout_of(Command::new("apt-cache").args(["show", "--no-all-versions", package])).ok()?;
    show.lines()
        .find_map(|l| l.strip_prefix("Size:"))
        .and_then(|s| s.trim().parse().ok())
}

/// Unpacks `deb` into `target/guest/unpacked/<package>/` unless that very
/// `.deb` is already unpacked there.
fn unpack(package: &str, deb: &Path) -> Result<PathBuf, Error> {
    let root = unpacked_dir().join(package);
    let marker = root.join(".unpacked-from");
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if fs::read_to_string(&marker).is_ok_and(|m| m.trim() == deb_name) {
        return Ok(root);
    }
    progress(format!("guest kit: unpacking {deb_name}"));
    let scratch = unpacked_dir().join(format!(".unpacking-{package}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).context(|| format!("cannot create {}", scratch.display()))?;
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&scratch))?;
    fs::write(scratch.join(".unpacked-from"), format!("{deb_name}\n"))
        .context(|| format!("cannot write into {}", scratch.display()))?;
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("cannot remove {}", root.display()))?;
    }
    fs::rename(&scratch, &root).context(|| format!("cannot move {} into place", root.display()))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_versioned_kernel() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn skips_virtual_and_unrelated_dependencies() {
        let out = "linux-image-cloud-amd64\n  Depends: <linux-image-virtual>\n  \
                   Recommends: firmware\n |Depends: linux-image-6.12.9-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.12.9-cloud-amd64")
        );
        assert_eq!(parse_kernel_dependency("E: No packages found\n"), None);
    }
}
