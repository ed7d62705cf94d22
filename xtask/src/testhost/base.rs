//! The test host's base initramfs: busybox, KVM, lg and the guest kit.
//!
//! Everything a run needs except the command itself is packed once into
//! `target/testhost/base.cpio` and reused: busybox (the test host's whole
//! userland), `kvm-amd` and its dependencies (the point of the test host),
//! `tun`, `bridge` and `loop` for network and disk tests, `/bin/lg` with the
//! glibc it links, and the guest kit under `/kit`. (gdb, which only the gdb
//! stub's test needs, is not in the base: [`gdb_files`] lists it for that
//! test's own archive.) The base is repacked when
//! its recipe or any input changes (a stamp records each input's size and
//! mtime), so the e2e tests always test the lg that was just built, without
//! running cargo themselves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use super::dir;
use crate::command;
use crate::cpio::Archive;
use crate::debian::{self, Packages};
use crate::error::Context;
use crate::guest::{add_busybox_root, write_if_changed, Kit};
use crate::modules::ModuleTree;
use crate::{progress, show_path, Error};

/// The test host's `/init`.
const TESTHOST_INIT: &str = include_str!("init.sh");

/// KVM first (the point of the test host), then what network and disk tests need.
const TESTHOST_MODULES: [&str; 8] = [
    "irqbypass",
    "kvm",
    "kvm-amd",
    "tun",
    "llc",
    "stp",
    "bridge",
    "loop",
];

/// Debian's gdb without Python: what the gdb stub's end-to-end test drives.
const GDB_PACKAGE: &str = "gdb-minimal";

/// Whether the test host's initramfs must carry lg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lg {
    /// The e2e tests: no lg, no test.
    Required,
    /// `cargo xtask testhost` by hand while lg does not build yet: warn and go on.
    Optional,
}

/// The test host's kernel and the base part of its initramfs.
#[derive(Debug, Clone)]
pub struct Base {
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    pub has_lg: bool,
}

/// Serializes base rebuilds between the test threads of one process.
static BASE_LOCK: Mutex<()> = Mutex::new(());

impl Base {
    /// The base, repacked first if its recipe or any input (lg, the kit,
    /// busybox, the kernel) changed since it was packed.
    pub fn ensure(packages: &Packages, kit: &Kit, lg: Lg) -> Result<Base, Error> {
        let _serialized = BASE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let lg_binary = crate::lg_binary();
        let has_lg = lg_binary.is_file();
        if !has_lg && lg == Lg::Required {
            return Err(Error::new(format!(
                "{} is missing: run `cargo xtask test`, which builds it",
                show_path(&lg_binary)
            )));
        }
        let bzimage = packages.vmlinuz()?;
        let busybox = packages.busybox()?;
        if lg == Lg::Required && debian::apt_available() {
            // Fetched now, with the kit, so the tests never need apt.
            if let Err(e) = debian::download_and_unpack(GDB_PACKAGE) {
                progress(format!(
                    "testhost: warning: no {GDB_PACKAGE}, so the gdb test will fail: {e}"
                ));
            }
        }
        let base = Base {
            bzimage: bzimage.clone(),
            initramfs: dir().join("base.cpio"),
            has_lg,
        };

        let mut inputs = vec![
            bzimage,
            busybox.clone(),
            kit.bzimage.clone(),
            kit.initrd.clone(),
        ];
        if has_lg {
            inputs.push(lg_binary.clone());
        }
        let mut recipe = format!(
            "modules {}\n--- init ---\n{TESTHOST_INIT}\n--- inputs ---\n",
            TESTHOST_MODULES.join(" ")
        );
        for input in &inputs {
            recipe.push_str(&describe_input(input)?);
        }
        let stamp_path = dir().join("base.stamp");
        if base.initramfs.is_file()
            && fs::read_to_string(&stamp_path).is_ok_and(|stamp| stamp == recipe)
        {
            return Ok(base);
        }

        progress(format!(
            "testhost: packing the test host's initramfs ({})",
            if has_lg {
                "busybox, kvm-amd, lg, guest kit".to_string()
            } else {
                format!(
                    "busybox, kvm-amd, guest kit; no lg, since {} is missing",
                    show_path(&lg_binary)
                )
            }
        ));
        let modules = ModuleTree::index(&packages.modules_dir()?)?.select(&TESTHOST_MODULES)?;
        let mut archive = Archive::new();
        add_busybox_root(&mut archive, &busybox)?;
        archive.file("/init", 0o755, TESTHOST_INIT.as_bytes());
        archive.file("/etc/lg-modules", 0o644, modules.load_order().as_bytes());
        for module in &modules.modules {
            archive.file(
                &format!("/lib/modules/{}.ko", module.file_stem),
                0o644,
                &module.bytes,
            );
        }
        if has_lg {
            add_dynamic_binary(&mut archive, &lg_binary, "/bin/lg")?;
            archive.symlink("/bin/lguest", "lg");
        }
        for (from, to) in [
            (&kit.bzimage, "/kit/bzImage"),
            (&kit.initrd, "/kit/initrd.cpio.gz"),
        ] {
            let bytes = fs::read(from).context(|| format!("cannot read {}", from.display()))?;
            archive.file(to, 0o644, &bytes);
        }

        fs::create_dir_all(dir()).context(|| format!("cannot create {}", dir().display()))?;
        // Uncompressed on purpose: most of the bytes (the kit's kernel and
        // initramfs) are compressed already, and gunzip in an emulated CPU
        // costs boot time on every run, while QEMU loads a file in no time.
        write_if_changed(&base.initramfs, &archive.finish())?;
        fs::write(&stamp_path, recipe)
            .context(|| format!("cannot write {}", stamp_path.display()))?;
        Ok(base)
    }
}

/// gdb and every library it links, as (file on this machine, path in the
/// test host) pairs for [`super::TestHost::file`]: gdb lands at `/bin/gdb`,
/// the libraries where `ldd` found them. Only the test that drives gdb
/// carries its 25 MB; the base, which every test boots, does not.
pub fn gdb_files() -> Result<Vec<(PathBuf, String)>, Error> {
    let root = debian::download_and_unpack(GDB_PACKAGE)?;
    let gdb = root.join("usr/bin/gdb");
    if !gdb.is_file() {
        return Err(Error::new(format!(
            "{} is missing from the unpacked {GDB_PACKAGE}",
            gdb.display()
        )));
    }
    let mut files = vec![(gdb.clone(), "/bin/gdb".to_string())];
    for library in shared_libraries(&gdb)? {
        // The file itself: a run's archive keeps symlinks as symlinks, and
        // the library's name is usually one.
        let file = fs::canonicalize(&library)
            .context(|| format!("cannot find {}, which gdb links", library.display()))?;
        files.push((file, library.to_string_lossy().into_owned()));
    }
    Ok(files)
}

/// An input as the base's stamp records it: path, size, mtime.
fn describe_input(path: &Path) -> Result<String, Error> {
    let meta = fs::metadata(path).context(|| format!("cannot stat {}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok(format!(
        "{} {} {}.{:09}\n",
        path.display(),
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// Puts a dynamically linked binary at `inside`, with every library `ldd`
/// lists and the dynamic loader, each at its path on this machine (the
/// loader's path is baked into the binary; the libraries' directories are
/// the loader's defaults, since the initramfs has no ld.so.cache).
fn add_dynamic_binary(archive: &mut Archive, binary: &Path, inside: &str) -> Result<(), Error> {
    let bytes = fs::read(binary).context(|| format!("cannot read {}", binary.display()))?;
    archive.file(inside, 0o755, &bytes);
    for library in shared_libraries(binary)? {
        let bytes = fs::read(&library).context(|| {
            format!(
                "cannot read {}, which {} links",
                library.display(),
                binary.display()
            )
        })?;
        archive.file(&library.to_string_lossy(), 0o755, &bytes);
    }
    Ok(())
}

/// The files `ldd` says `binary` loads; none for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let output = command::spawn_captured(Command::new("ldd").arg(binary))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(command::failed(Command::new("ldd").arg(binary), &output));
    }
    parse_ldd(&text).map_err(|library| {
        Error::new(format!(
            "{} needs {library}, which this machine does not have (ldd says \"not found\")",
            binary.display()
        ))
    })
}

/// Paths from `ldd` output, or the name of a library it could not find.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                target.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 has no file: the kernel maps it.
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::super::console::{NO_KVM, READY};
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(ldd).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1"
        );
    }

    #[test]
    fn testhost_init_reports_its_markers_and_never_exits() {
        for marker in [READY, "LG_TESTHOST_STATUS=%s", NO_KVM] {
            assert!(TESTHOST_INIT.contains(marker), "{marker}");
        }
        assert!(TESTHOST_INIT.trim_end().ends_with("poweroff -f"));
    }
}
