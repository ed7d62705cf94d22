//! Picking kernel modules for an initramfs, dependencies first.
//!
//! Debian's cloud kernel builds virtio and KVM as modules, and busybox's
//! `insmod` loads exactly one file with no dependency resolution (there is
//! no `modules.dep` in our initramfs, and no `modprobe` to read one). So
//! the initramfs carries a flat `/lib/modules/NAME.ko` per module and a list
//! `/etc/lg-modules` in load order; `/init` insmods them in that order.
//!
//! The order starts as the caller's list and is completed with each module's
//! own `depends=` field (from its `.modinfo` section), so a kernel update that
//! adds a dependency does not silently break `/dev/kvm`. Compressed modules
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`) are decompressed here, because busybox
//! `insmod` may not know the format.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run_quiet;
use crate::error::Context;
use crate::Error;

/// One module, ready for the initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    /// The file name without `.ko`, as `insmod /lib/modules/NAME.ko` wants it.
    pub file_stem: String,
    /// The uncompressed `.ko`.
    pub bytes: Vec<u8>,
}

/// What [`ModuleTree::select`] found: modules in load order, and the names
/// it could not find (built into the kernel, or absent from it).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub modules: Vec<Module>,
    pub missing: Vec<String>,
}

impl Selection {
    /// `/etc/lg-modules`: one file stem a line, in load order.
    pub fn load_order(&self) -> String {
        self.modules
            .iter()
            .map(|m| format!("{}\n", m.file_stem))
            .collect()
    }
}

/// The `.ko` files under a kernel's `lib/modules/<release>/kernel/`, by name.
pub struct ModuleTree {
    /// Keyed by module name with `-` spelled `_`, the kernel's own spelling
    /// (`kvm-amd.ko` is module `kvm_amd`, and `depends=` uses that).
    files: HashMap<String, PathBuf>,
}

const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

impl ModuleTree {
    pub fn index(dir: &Path) -> Result<ModuleTree, Error> {
        let mut files = HashMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).context(|| format!("cannot list {}", dir.display()))? {
                let path = entry
                    .context(|| format!("cannot list {}", dir.display()))?
                    .path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(stem) = module_file_stem(&path) {
                    files.insert(canonical(&stem), path);
                }
            }
        }
        Ok(ModuleTree { files })
    }

    /// The modules named in `wanted`, each preceded by whatever it depends on,
    /// each once, in an order `insmod` accepts.
    pub fn select(&self, wanted: &[&str]) -> Result<Selection, Error> {
        let mut selection = Selection::default();
        let mut done: Vec<String> = Vec::new();
        for name in wanted {
            self.add(&canonical(name), &mut selection, &mut done, 0)?;
        }
        Ok(selection)
    }

    fn add(
        &self,
        name: &str,
        selection: &mut Selection,
        done: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), Error> {
        if done.iter().any(|d| d == name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(Error::new(format!(
                "kernel module dependencies loop around {name}"
            )));
        }
        done.push(name.to_string());
        let Some(path) = self.files.get(name) else {
            selection.missing.push(name.to_string());
            return Ok(());
        };
        let bytes = read_module(path)?;
        for dependency in depends(&bytes) {
            self.add(&canonical(&dependency), selection, done, depth + 1)?;
        }
        let file_stem = module_file_stem(path).unwrap_or_else(|| name.to_string());
        selection.modules.push(Module { file_stem, bytes });
        Ok(())
    }
}

/// `kvm-amd.ko.xz` → `kvm-amd`; `None` for anything that is not a module.
fn module_file_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .map(str::to_string)
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The uncompressed bytes of a module file.
fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match decompressor {
        None => fs::read(path).context(|| format!("cannot read {}", path.display())),
        Some(tool) => {
            if !crate::command::have(tool) {
                return Err(Error::new(format!(
                    "{} is compressed and `{tool}` is not installed (apt-get install {})",
                    path.display(),
                    match tool {
                        "xz" => "xz-utils",
                        other => other,
                    }
                )));
            }
            Ok(run_quiet(Command::new(tool).arg("-dc").arg(path))?.stdout)
        }
    }
}

/// The `depends=` field of a module's `.modinfo`: NUL-separated `key=value`
/// strings, which we can find without parsing the ELF file.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &module[start + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_module(dir: &Path, relative: &str, depends: &str) {
        let path = dir.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = b"\x7fELF junk\0license=GPL\0".to_vec();
        bytes.extend_from_slice(format!("depends={depends}\0name=x\0").as_bytes());
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fake_module(&dir, "virt/lib/irqbypass.ko", "");
        fake_module(&dir, "arch/x86/kvm/kvm.ko", "irqbypass");
        fake_module(&dir, "arch/x86/kvm/kvm-amd.ko", "kvm");
        fake_module(&dir, "net/bridge/bridge.ko", "llc,stp");
        fake_module(&dir, "net/802/stp.ko", "llc");
        fake_module(&dir, "net/llc/llc.ko", "");

        let tree = ModuleTree::index(&dir).unwrap();
        let selection = tree.select(&["kvm-amd", "bridge", "loop"]).unwrap();
        let _ = fs::remove_dir_all(&dir);

        assert_eq!(
            selection.load_order(),
            "irqbypass\nkvm\nkvm-amd\nllc\nstp\nbridge\n"
        );
        assert_eq!(selection.missing, ["loop"]);
    }

    #[test]
    fn reads_depends_from_modinfo() {
        assert_eq!(
            depends(b"xx\0depends=virtio_ring,virtio\0vermagic=6.1\0"),
            ["virtio_ring", "virtio"]
        );
        assert!(depends(b"xx\0depends=\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }
}
