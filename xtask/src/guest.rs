//! The guest kit: the kernel and initramfs lg boots in its tests and demos.
//!
//! `target/guest/` holds what `lg run` needs to boot a real guest:
//! - `bzImage`: Debian's cloud kernel, unmodified, because lg's promise is to
//!   boot the kernels people run;
//! - `rootfs.ext4`: a root filesystem image (busybox and an `/sbin/init`)
//!   for `--block=... root=/dev/vda`; see `rootfs.rs`.
//! - `initrd.cpio.gz`: busybox, that kernel's virtio modules, and an `/init`
//!   (`guest-init.sh`) that prints `LG_GUEST_INIT_OK` and obeys `lgtest=...`,
//!   so a test learns from the console what the guest saw;
//! - `kernel-version`: the kernel release, for messages and bug reports.
//!
//! Without apt (not Debian), the kit can be the user's own kernel and
//! initramfs instead: `cargo xtask guest --kernel FILE --initrd FILE`.
//! Rebuilding is skipped when the recipe (`kit.stamp`) is unchanged, and
//! outputs are rewritten only when their bytes change, so their mtimes tell
//! the test host (which packs the kit) whether it must repack.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cpio::{self, Archive};
use crate::debian::{self, Packages};
use crate::error::Context;
use crate::modules::ModuleTree;
use crate::{progress, show_path, Error};

/// The guest's `/init`.
const GUEST_INIT: &str = include_str!("guest-init.sh");

/// A guest program that maps a page at a fixed address with a known
/// pattern, for the tests of `lg translate` and `lg dump-pagetables`;
/// compiled by [`build_guest_program`] into `/bin/lg-pattern`.
const LG_PATTERN_SOURCE: &str = include_str!("lg-pattern.rs");

/// A guest program for `cargo xtask bench`'s random-read figure: 4 KiB
/// O_DIRECT reads at pseudo-random offsets, counted for N seconds;
/// compiled the same way into `/bin/lg-randread`.
const LG_RANDREAD_SOURCE: &str = include_str!("lg-randread.rs");

/// A guest program for tests/hostile.rs: as root, it takes virtio devices
/// from their drivers and programs them with broken queues; compiled the
/// same way into `/bin/lg-hostile`.
const LG_HOSTILE_SOURCE: &str = include_str!("lg-hostile.rs");

/// The drivers the cloud kernel builds as modules, in the order they depend
/// on each other: virtio (PCI transport, then the devices), and pvpanic,
/// through which a panicking guest tells lg; and the power button.
const GUEST_MODULES: [&str; 15] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio-rng",
    "pvpanic",
    "pvpanic-mmio",
    // The ACPI power button (`lg stop`) and the input events init waits on.
    "button",
    "evdev",
];

/// The first line of `kit.stamp` for a kit made of the user's own files.
const USER_KIT: &str = "user-provided kit";

/// The guest kit's files on the build machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kit {
    pub bzimage: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
}

impl Kit {
    /// `target/guest/`.
    /// The kit's root filesystem image (`--block=` it with `root=/dev/vda`);
    /// built with Debian's kit, absent from a kit of the user's own.
    pub fn rootfs() -> PathBuf {
        Self::dir().join("rootfs.ext4")
    }

    pub fn dir() -> PathBuf {
        crate::target_dir().join("guest")
    }

    fn stamp_path() -> PathBuf {
        Self::dir().join("kit.stamp")
    }

    fn at_usual_paths(kernel_version: String) -> Kit {
        Kit {
            bzimage: Self::dir().join("bzImage"),
            initrd: Self::dir().join("initrd.cpio.gz"),
            kernel_version,
        }
    }

    /// The kit a previous `cargo xtask guest` or `cargo xtask test` made.
    pub fn existing() -> Result<Kit, Error> {
        let version = fs::read_to_string(Self::dir().join("kernel-version"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        let kit = Self::at_usual_paths(version);
        if kit.bzimage.is_file() && kit.initrd.is_file() && !kit.kernel_version.is_empty() {
            Ok(kit)
        } else {
            Err(Error::new(format!(
                "the guest kit ({}/bzImage and initrd.cpio.gz) is missing: run `cargo xtask test` \
                 (or `cargo xtask guest`) first",
                show_path(&Self::dir())
            )))
        }
    }

    /// The kit for `cargo xtask run` and `cargo xtask test`: the user's own if
    /// they installed one, else Debian's, fetched and built as needed.
    pub fn prepare() -> Result<Kit, Error> {
        let stamp = fs::read_to_string(Self::stamp_path()).unwrap_or_default();
        if stamp.starts_with(USER_KIT) {
            if let Ok(kit) = Self::existing() {
                progress(format!(
                    "guest kit: using your own kernel and initramfs in {} \
                     (`cargo xtask guest` goes back to Debian's)",
                    show_path(&Self::dir())
                ));
                return Ok(kit);
            }
        }
        if !debian::apt_available() {
            return Err(no_apt());
        }
        Self::build_from_debian(&debian::fetch()?)
    }

    /// Builds the kit from Debian's cloud kernel and busybox-static.
    pub fn build_from_debian(packages: &Packages) -> Result<Kit, Error> {
        let release = packages.kernel_release()?;
        let vmlinuz = packages.vmlinuz()?;
        let busybox = packages.busybox()?;
        let kit = Self::at_usual_paths(release.clone());
        fs::create_dir_all(Self::dir())
            .context(|| format!("cannot create {}", Self::dir().display()))?;
        crate::rootfs::build(&Self::dir(), &busybox)?;
        let recipe = format!(
            "kernel {}\nbusybox {}\nmodules {}\n--- init ---\n{GUEST_INIT}\n--- lg-pattern ---\n{LG_PATTERN_SOURCE}\n--- lg-randread ---\n{LG_RANDREAD_SOURCE}\n--- lg-hostile ---\n{LG_HOSTILE_SOURCE}",
            unpacked_from(&packages.kernel_root),
            unpacked_from(&packages.busybox_root),
            GUEST_MODULES.join(" "),
        );
        let stamp = fs::read_to_string(Self::stamp_path()).unwrap_or_default();
        if stamp == recipe && Self::existing().is_ok_and(|existing| existing == kit) {
            return Ok(kit);
        }

        progress(format!("guest kit: building initramfs for {release}"));
        let modules = ModuleTree::index(&packages.modules_dir()?)?.select(&GUEST_MODULES)?;
        let mut archive = Archive::new();
        add_busybox_root(&mut archive, &busybox)?;
        archive.file("/init", 0o755, GUEST_INIT.as_bytes());
        archive.file(
            "/bin/lg-pattern",
            0o755,
            &build_guest_program("lg-pattern", LG_PATTERN_SOURCE)?,
        );
        archive.file(
            "/bin/lg-randread",
            0o755,
            &build_guest_program("lg-randread", LG_RANDREAD_SOURCE)?,
        );
        archive.file(
            "/bin/lg-hostile",
            0o755,
            &build_guest_program("lg-hostile", LG_HOSTILE_SOURCE)?,
        );
        archive.file("/etc/lg-modules", 0o644, modules.load_order().as_bytes());
        for module in &modules.modules {
            archive.file(
                &format!("/lib/modules/{}.ko", module.file_stem),
                0o644,
                &module.bytes,
            );
        }
        let initrd = cpio::gzip(&archive.finish())?;

        fs::create_dir_all(Self::dir())
            .context(|| format!("cannot create {}", Self::dir().display()))?;
        let kernel = fs::read(&vmlinuz).context(|| format!("cannot read {}", vmlinuz.display()))?;
        write_if_changed(&kit.bzimage, &kernel)?;
        write_if_changed(&kit.initrd, &initrd)?;
        write_if_changed(&Self::dir().join("kernel-version"), release.as_bytes())?;
        fs::write(Self::stamp_path(), recipe)
            .context(|| format!("cannot write {}", Self::stamp_path().display()))?;
        Ok(kit)
    }

    /// Makes the user's kernel and initramfs the kit (copies them in).
    pub fn install_user(kernel: &Path, initrd: &Path) -> Result<Kit, Error> {
        let kernel_bytes =
            fs::read(kernel).context(|| format!("cannot read --kernel {}", kernel.display()))?;
        let version = bzimage_version(&kernel_bytes).ok_or_else(|| {
            Error::new(format!(
                "--kernel {} is not a bzImage (no \"HdrS\" boot header at offset 0x202)",
                kernel.display()
            ))
        })?;
        let initrd_bytes =
            fs::read(initrd).context(|| format!("cannot read --initrd {}", initrd.display()))?;
        let kit = Self::at_usual_paths(version.clone());
        fs::create_dir_all(Self::dir())
            .context(|| format!("cannot create {}", Self::dir().display()))?;
        write_if_changed(&kit.bzimage, &kernel_bytes)?;
        write_if_changed(&kit.initrd, &initrd_bytes)?;
        write_if_changed(&Self::dir().join("kernel-version"), version.as_bytes())?;
        let stamp = format!(
            "{USER_KIT}\nkernel {}\ninitrd {}\n",
            kernel.display(),
            initrd.display()
        );
        fs::write(Self::stamp_path(), stamp)
            .context(|| format!("cannot write {}", Self::stamp_path().display()))?;
        Ok(kit)
    }
}

/// Compiles a guest program (`lg-pattern.rs`, `lg-randread.rs`,
/// `lg-hostile.rs`) for the guest: with rustc alone (it has no
/// dependencies), statically linked so the initramfs needs no libc.
fn build_guest_program(name: &str, text: &str) -> Result<Vec<u8>, Error> {
    let dir = crate::target_dir().join("guest-programs");
    fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    let source = dir.join(format!("{name}.rs"));
    let binary = dir.join(name);
    fs::write(&source, text).context(|| format!("cannot write {}", source.display()))?;
    // rustc beside the cargo running us, so the toolchain is the same one.
    let rustc = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|cargo| Some(cargo.parent()?.join("rustc")))
        .filter(|rustc| rustc.is_file())
        .unwrap_or_else(|| PathBuf::from("rustc"));
    crate::command::run_quiet(
        std::process::Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .args(["-C", "strip=symbols", "-C", "debuginfo=0", "-o"])
            .arg(&binary)
            .arg(&source),
    )?;
    fs::read(&binary).context(|| format!("cannot read {}", binary.display()))
}

/// The error for a machine without apt: the one way forward, in one sentence.
pub fn no_apt() -> Error {
    Error::new(
        "this machine has no apt-get (or dpkg-deb) to fetch Debian's cloud kernel and busybox, \
         so give the guest kit your own: cargo xtask guest --kernel FILE --initrd FILE",
    )
}

/// Busybox and the skeleton of a root filesystem, shared by the guest's and
/// the test host's initramfs.
pub(crate) fn add_busybox_root(archive: &mut Archive, busybox: &Path) -> Result<(), Error> {
    let bytes = fs::read(busybox).context(|| format!("cannot read {}", busybox.display()))?;
    for dir in [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/mnt", "/root", "/etc",
    ] {
        archive.dir(dir, if dir == "/tmp" { 0o1777 } else { 0o755 });
    }
    // The kernel opens /dev/console for init's stdio before /init can mount
    // devtmpfs.
    archive.char_device("/dev/console", 0o600, 5, 1);
    archive.file("/bin/busybox", 0o755, &bytes);
    // /init is a shell script, so sh must exist before `busybox --install`.
    archive.symlink("/bin/sh", "busybox");
    Ok(())
}

/// Which `.deb` a tree was unpacked from (changes when Debian updates it).
fn unpacked_from(root: &Path) -> String {
    fs::read_to_string(root.join(".unpacked-from"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| root.display().to_string())
}

/// Writes `bytes` to `path` unless it already holds exactly them, so that
/// mtimes change only with content. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, Error> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let scratch = path.with_extension(format!("partial-{}", std::process::id()));
    fs::write(&scratch, bytes).context(|| format!("cannot write {}", scratch.display()))?;
    fs::rename(&scratch, path).context(|| format!("cannot move {} into place", path.display()))?;
    Ok(true)
}

/// The kernel release a bzImage announces in its boot header (the first word
/// of the string at 0x200 + `kernel_version`), or `None` if it has no header.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    let unknown = || "unknown".to_string();
    if pointer == 0 {
        return Some(unknown());
    }
    let Some(text) = image.get(0x200 + pointer..) else {
        return Some(unknown());
    };
    let end = text
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(text.len().min(256));
    let text = String::from_utf8_lossy(&text[..end]).into_owned();
    Some(
        text.split_whitespace()
            .next()
            .map_or_else(unknown, str::to_string),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_from_a_boot_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let version = b"6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        image[0x500..0x500 + version.len()].copy_from_slice(version);
        assert_eq!(
            bzimage_version(&image).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn a_text_file_is_not_a_bzimage() {
        assert_eq!(bzimage_version(b"hello, I am not a kernel\n"), None);
        assert_eq!(bzimage_version(&[0u8; 0x1000]), None);
    }

    #[test]
    fn guest_init_reports_and_never_exits() {
        assert!(GUEST_INIT.starts_with("#!/bin/sh\n"));
        assert!(GUEST_INIT.contains("\necho LG_GUEST_INIT_OK\n"));
        assert!(GUEST_INIT.trim_end().ends_with("poweroff -f"));
    }
}
