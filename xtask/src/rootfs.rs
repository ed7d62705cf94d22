//! The guest kit's root filesystem image: `target/guest/rootfs.ext4`.
//!
//! lguest's own example boots `--block=rootfile root=/dev/vda`: a disk image
//! as the guest's root. This image is the smallest such root: busybox and an
//! `/sbin/init` (xtask/src/rootfs-init.sh), in an ext4 filesystem that
//! `mke2fs -d` fills from a directory, so no root privileges or loop mounts
//! are needed on the build machine. The kit's initramfs loads virtio_blk and
//! switches to it when the kernel command line says `root=/dev/vda`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command;
use crate::error::Context;
use crate::{progress, Error};

/// The image's `/sbin/init`.
const ROOTFS_INIT: &str = include_str!("rootfs-init.sh");
/// The image's size: room for busybox and for tests to write files.
const ROOTFS_SIZE: &str = "32M";

/// Builds `rootfs.ext4` in `kit_dir` from `busybox` unless an image from the
/// same inputs is already there. Returns its path.
pub fn build(kit_dir: &Path, busybox: &Path) -> Result<PathBuf, Error> {
    command::ensure_debian_packages(&[("mke2fs", "e2fsprogs")])?;
    let image = kit_dir.join("rootfs.ext4");
    let stamp_path = kit_dir.join("rootfs.stamp");
    let busybox_bytes =
        fs::read(busybox).context(|| format!("cannot read {}", busybox.display()))?;
    let recipe = format!(
        "busybox {} bytes\nsize {ROOTFS_SIZE}\n--- init ---\n{ROOTFS_INIT}",
        busybox_bytes.len()
    );
    if image.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == recipe) {
        return Ok(image);
    }
    progress("guest kit: building rootfs.ext4 (busybox on ext4, with mke2fs -d)");
    let staging = kit_dir.join("rootfs");
    if staging.exists() {
        fs::remove_dir_all(&staging).context(|| format!("cannot clear {}", staging.display()))?;
    }
    for dir in [
        "bin", "sbin", "proc", "sys", "dev", "root", "tmp", "var", "etc", "mnt",
    ] {
        let path = staging.join(dir);
        fs::create_dir_all(&path).context(|| format!("cannot create {}", path.display()))?;
    }
    let installed = staging.join("bin/busybox");
    fs::write(&installed, &busybox_bytes)
        .context(|| format!("cannot write {}", installed.display()))?;
    set_mode(&installed, 0o755)?;
    // The applets init needs before it could run `busybox --install`.
    for applet in [
        "sh", "mount", "sync", "poweroff", "reboot", "cat", "echo", "setsid", "cttyhack",
    ] {
        let link = staging.join("bin").join(applet);
        symlink("busybox", &link).context(|| format!("cannot create {}", link.display()))?;
    }
    let init = staging.join("sbin/init");
    fs::write(&init, ROOTFS_INIT).context(|| format!("cannot write {}", init.display()))?;
    set_mode(&init, 0o755)?;

    let fresh = kit_dir.join("rootfs.ext4.new");
    let _ = fs::remove_file(&fresh);
    command::run_visible(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "lgroot", "-d"])
            .arg(&staging)
            .arg(&fresh)
            .arg(ROOTFS_SIZE),
    )?;
    fs::rename(&fresh, &image).context(|| format!("cannot write {}", image.display()))?;
    fs::write(&stamp_path, recipe).context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok(image)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("cannot set the mode of {}", path.display()))
}
