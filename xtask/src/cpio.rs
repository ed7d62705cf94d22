//! The newc cpio archive, the format of every initramfs xtask builds.
//!
//! The kernel unpacks an initramfs from "newc" cpio (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`): a 110-byte
//! ASCII header per entry, the name, the data, each padded to 4 bytes, and a
//! `TRAILER!!!` entry at the end. Writing it here rather than piping
//! `find | cpio` lets us own every detail that matters: entries owned by
//! root whatever the builder's uid, a `/dev/console` node without needing
//! `mknod`, parent directories always before their children (the kernel's
//! unpacker does not create missing parents), and zero timestamps so the
//! same inputs give the same bytes.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::Error;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc archive being built in memory.
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    pub fn new() -> Self {
        Archive {
            bytes: Vec::new(),
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its missing parents).
    pub fn dir(&mut self, path: &str, mode: u32) {
        let name = normalize(path);
        if name.is_empty() || self.dirs.contains(&name) {
            return;
        }
        self.parents(&name);
        self.entry(&name, S_IFDIR | (mode & 0o7777), 2, (0, 0), b"");
        self.dirs.insert(name);
    }

    /// Adds a regular file (and its missing parent directories).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let name = normalize(path);
        self.parents(&name);
        self.entry(&name, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    /// Adds a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let name = normalize(path);
        self.parents(&name);
        self.entry(&name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// Adds a character device node, such as `/dev/console` (5, 1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let name = normalize(path);
        self.parents(&name);
        self.entry(&name, S_IFCHR | (mode & 0o7777), 1, (major, minor), b"");
    }

    /// Ends the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.bytes
    }

    fn parents(&mut self, name: &str) {
        let mut prefix = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if !self.dirs.contains(&prefix) {
                let dir = prefix.clone();
                self.entry(&dir, S_IFDIR | 0o755, 2, (0, 0), b"");
                self.dirs.insert(dir);
            }
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let inode = self.next_inode;
        self.next_inode += 1;
        let fields = [
            inode,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so the archive is reproducible
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // with its NUL
            0,                     // check: unused by newc
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }
}

/// Compresses an archive with gzip, the initramfs compression every kernel
/// config enables. `-n` leaves out name and time, keeping the output
/// reproducible; Debian's gzip is an essential package, always there.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let spawn_error = |e: std::io::Error| Error::new(format!("cannot run gzip: {e}"));
    let mut child = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(Error::new("gzip has no stdin"));
    };
    // Fed from a thread: gzip's output pipe fills while we are still writing.
    let output = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || stdin.write_all(data));
        let output = child.wait_with_output();
        let fed = feeder.join().unwrap_or(Ok(()));
        fed.and(output)
    })
    .map_err(|e| Error::new(format!("gzip failed: {e}")))?;
    if !output.status.success() {
        return Err(Error::new(format!(
            "gzip failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// Archive names are relative: `/bin/sh` is stored as `bin/sh`.
fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) triples, the way the kernel walks the archive.
    fn entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name_start = at + 110;
            let name =
                String::from_utf8(bytes[name_start..name_start + namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            at = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn parents_come_before_children_and_only_once() {
        let mut archive = Archive::new();
        archive.file("/lib/modules/kvm.ko", 0o644, b"kvm");
        archive.file("/lib/modules/kvm-amd.ko", 0o644, b"amd");
        archive.symlink("/bin/sh", "busybox");
        let names: Vec<String> = entries(&archive.finish())
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/kvm.ko",
                "lib/modules/kvm-amd.ko",
                "bin",
                "bin/sh"
            ]
        );
    }

    #[test]
    fn entries_keep_type_mode_and_data() {
        let mut archive = Archive::new();
        archive.file("init", 0o755, b"#!/bin/sh\n");
        archive.char_device("/dev/console", 0o600, 5, 1);
        archive.symlink("/bin/lguest", "lg");
        let entries = entries(&archive.finish());
        assert_eq!(
            entries[0],
            ("init".to_string(), S_IFREG | 0o755, b"#!/bin/sh\n".to_vec())
        );
        assert_eq!(
            entries[2],
            ("dev/console".to_string(), S_IFCHR | 0o600, vec![])
        );
        assert_eq!(
            entries[4],
            ("bin/lguest".to_string(), S_IFLNK | 0o777, b"lg".to_vec())
        );
    }

    #[test]
    fn same_inputs_same_bytes() {
        let build = || {
            let mut archive = Archive::new();
            archive.file("/a/b", 0o644, b"x");
            archive.finish()
        };
        assert_eq!(build(), build());
    }
}
