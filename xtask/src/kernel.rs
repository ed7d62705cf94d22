//! `cargo xtask kernel`: a guest kernel of one's own, every lg driver built in.
//!
//! The guest kit boots Debian's cloud kernel, whose virtio drivers are
//! modules, so it needs an initramfs to load them. lguest's own example
//! needed none: `lguest 64 vmlinux --block=rootfile root=/dev/vda`. That
//! takes a kernel with lg's drivers built in, and this module builds one:
//! Linux from Debian's `linux-source-6.1` package (fetched with apt like the
//! kit, so there is no other download), configured as `make tinyconfig`
//! (the smallest kernel Kconfig makes, so a 2-core machine builds it in
//! minutes) plus the fragment `kernel-patches/lg.config`, built with
//! `make bzImage`, which leaves both a bzImage and the ELF vmlinux.
//!
//! Everything lives under `target/kernel/`:
//! - `linux-source-6.1/`: the unpacked source, with any
//!   `kernel-patches/*.patch` applied, unpacked again only when the source
//!   package or a patch changes;
//! - `build/`: Kbuild's output directory (`O=`), kept between builds so a
//!   changed lg.config recompiles only what the change touches;
//! - `bzImage`, `vmlinux`, `config`: the results, copied out of `build/`;
//! - `kernel.stamp`: the recipe of the last good build, so an unchanged
//!   source and lg.config build nothing.
//!
//! A good build is also kept outside the checkout, in the machine's cache
//! (`$LG_CACHE_DIR`, else `$XDG_CACHE_HOME/lg`, else `~/.cache/lg`, under
//! `kernel/`), with its recipe: `cargo xtask test` builds this kernel for
//! its kernel tests, and CI starts each run from a fresh clone, so without
//! the cache every run on the same machine would spend its minutes
//! compiling the same kernel again. A cached kernel is used only when its
//! recipe (source package, patches, lg.config) is exactly this checkout's.
//!
//! Kconfig silently drops a symbol it does not know or whose dependencies
//! are off. So after configuring, every line of lg.config is checked against
//! the final `.config`, and a build that lost one stops, naming it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::command::{self, have, run_quiet, run_visible};
use crate::error::Context;
use crate::guest::{bzimage_version, write_if_changed};
use crate::{debian, progress, show_path, Error};

/// Debian's package holding the kernel source, as `usr/src/<it>.tar.xz`.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The configuration lg.config is merged onto: `make tinyconfig` builds in
/// about a tenth of the objects of `x86_64_defconfig`, and lg.config adds
/// back exactly what lg's machine needs.
const BASE_CONFIG: &str = "tinyconfig";

/// Kbuild's architecture. `x86_64`, not `x86`: with `ARCH=x86`, tinyconfig
/// asks the 64BIT question and answers no.
const ARCH: &str = "ARCH=x86_64";

/// The programs the build runs, and the Debian package of each. gcc and
/// make compile; flex and bison build Kconfig itself; bc computes the
/// timer constants; xz compresses the bzImage (tinyconfig picks XZ);
/// patch applies `kernel-patches/*.patch`. No libssl-dev or cpio: they are
/// for module signing and in-kernel headers, which a kernel without
/// modules does not do.
const BUILD_TOOLS: [(&str, &str); 7] = [
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("xz", "xz-utils"),
    ("patch", "patch"),
];

/// The headers the build compiles against: objtool, which x86-64 builds
/// run over every object, reads ELF with libelf.
const BUILD_HEADERS: [(&str, &str); 1] = [("gelf.h", "libelf-dev")];

/// `target/kernel/`.
pub fn dir() -> PathBuf {
    crate::target_dir().join("kernel")
}

/// The built bzImage, `target/kernel/bzImage`.
pub fn bzimage() -> PathBuf {
    dir().join("bzImage")
}

/// The built ELF kernel, `target/kernel/vmlinux`.
pub fn vmlinux() -> PathBuf {
    dir().join("vmlinux")
}

/// `kernel-patches/`, beside the crates.
pub fn patches_dir() -> PathBuf {
    crate::workspace_root().join("kernel-patches")
}

/// `kernel-patches/lg.config`.
pub fn fragment_path() -> PathBuf {
    patches_dir().join("lg.config")
}

fn build_dir() -> PathBuf {
    dir().join("build")
}

fn stamp_path() -> PathBuf {
    dir().join("kernel.stamp")
}

/// The machine's cache of the last good build, shared by every checkout:
/// `$LG_CACHE_DIR/kernel`, else `$XDG_CACHE_HOME/lg/kernel`, else
/// `~/.cache/lg/kernel`; `None` when none of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    let set = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = set("LG_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|dir| dir.join("lg")))
        .or_else(|| set("HOME").map(|home| home.join(".cache/lg")))?;
    Some(base.join("kernel"))
}

/// The files a build leaves in `target/kernel/`, each kept in the cache too.
fn results() -> [PathBuf; 3] {
    [bzimage(), vmlinux(), dir().join("config")]
}

/// Copies a cached build of exactly `recipe` into `target/kernel/`; false
/// when the cache holds no such build.
fn take_from_cache(recipe: &str) -> Result<bool, Error> {
    let Some(cache) = cache_dir() else {
        return Ok(false);
    };
    if !fs::read_to_string(cache.join("recipe")).is_ok_and(|cached| cached == recipe) {
        return Ok(false);
    }
    fs::create_dir_all(dir()).context(|| format!("cannot create {}", dir().display()))?;
    for result in results() {
        let name = result.file_name().unwrap_or_default();
        let Ok(bytes) = fs::read(cache.join(name)) else {
            return Ok(false);
        };
        write_if_changed(&result, &bytes)?;
    }
    fs::write(stamp_path(), recipe)
        .context(|| format!("cannot write {}", stamp_path().display()))?;
    Ok(true)
}

/// Keeps the build in `target/kernel/` in the cache, replacing whatever was
/// there. The files go into a scratch directory renamed into place, so a
/// reader never finds half a build; a cache that cannot be written only
/// costs the next checkout a build, so that is a warning, not an error.
fn keep_in_cache(recipe: &str) {
    let Some(cache) = cache_dir() else {
        return;
    };
    if fs::read_to_string(cache.join("recipe")).is_ok_and(|cached| cached == recipe) {
        return;
    }
    let scratch = cache.with_extension(format!("partial-{}", std::process::id()));
    let kept = (|| -> std::io::Result<()> {
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        for result in results() {
            fs::copy(
                &result,
                scratch.join(result.file_name().unwrap_or_default()),
            )?;
        }
        fs::write(scratch.join("recipe"), recipe)?;
        if cache.exists() {
            fs::remove_dir_all(&cache)?;
        }
        fs::rename(&scratch, &cache)
    })();
    if let Err(e) = kept {
        let _ = fs::remove_dir_all(&scratch);
        progress(format!(
            "kernel: warning: cannot keep the build in {}: {e}",
            cache.display()
        ));
    }
}

/// What [`build`] leaves behind.
#[derive(Debug, Clone)]
pub struct Built {
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    /// The kernel release its boot header announces (`6.1.192`).
    pub release: String,
    /// How long `make bzImage` took, or `None` if nothing had changed.
    pub make_time: Option<Duration>,
    /// Whether the build came from the machine's cache ([`cache_dir`]).
    pub from_cache: bool,
}

/// Builds `target/kernel/bzImage` and `vmlinux` unless a build from the
/// same source, patches and lg.config is already there.
pub fn build() -> Result<Built, Error> {
    if !debian::apt_available() {
        return Err(Error::new(format!(
            "this machine has no apt-get (or dpkg-deb) to fetch Debian's {SOURCE_PACKAGE}, \
             the kernel source `cargo xtask kernel` builds"
        )));
    }
    command::ensure_debian_packages(&BUILD_TOOLS)?;
    ensure_headers(&BUILD_HEADERS)?;

    let fragment_text = fs::read_to_string(fragment_path())
        .context(|| format!("cannot read {}", fragment_path().display()))?;
    let fragment = parse_fragment(&fragment_text)
        .map_err(|e| Error::new(format!("{}: {e}", show_path(&fragment_path()))))?;
    let patches = patches()?;

    let package = debian::download_and_unpack(SOURCE_PACKAGE)?;
    let recipe = format!(
        "{}base {BASE_CONFIG} {ARCH}\n--- lg.config ---\n{fragment_text}",
        source_recipe(&package, &patches)
    );
    let built_here = fs::read_to_string(stamp_path()).is_ok_and(|stamp| stamp == recipe)
        && results().iter().all(|result| result.is_file());
    if built_here || take_from_cache(&recipe)? {
        keep_in_cache(&recipe);
        return Ok(Built {
            bzimage: bzimage(),
            vmlinux: vmlinux(),
            release: release_of(&bzimage())?,
            make_time: None,
            from_cache: !built_here,
        });
    }

    let source = unpack_source(&package, &patches)?;

    configure(&source, &fragment)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    progress(format!(
        "kernel: make -j{jobs} bzImage (tinyconfig + lg.config; minutes, not seconds)"
    ));
    let started = Instant::now();
    run_visible(make(&source).arg(format!("-j{jobs}")).arg("bzImage"))?;
    let make_time = started.elapsed();

    let build = build_dir();
    for (from, to) in [
        (build.join("arch/x86/boot/bzImage"), bzimage()),
        (build.join("vmlinux"), vmlinux()),
        (build.join(".config"), dir().join("config")),
    ] {
        let bytes = fs::read(&from).context(|| format!("cannot read {}", from.display()))?;
        write_if_changed(&to, &bytes)?;
    }
    fs::write(stamp_path(), &recipe)
        .context(|| format!("cannot write {}", stamp_path().display()))?;
    keep_in_cache(&recipe);
    Ok(Built {
        bzimage: bzimage(),
        vmlinux: vmlinux(),
        release: release_of(&bzimage())?,
        make_time: Some(make_time),
        from_cache: false,
    })
}

/// `make -C <source> O=target/kernel/build ARCH=x86_64`.
fn make(source: &Path) -> Command {
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(source)
        .arg(format!("O={}", build_dir().display()))
        .arg(ARCH);
    make
}

/// `make tinyconfig`, lg.config merged on top, `make olddefconfig`, and the
/// check that every line of lg.config survived.
fn configure(source: &Path, fragment: &[Setting]) -> Result<(), Error> {
    let build = build_dir();
    fs::create_dir_all(&build).context(|| format!("cannot create {}", build.display()))?;
    progress(format!(
        "kernel: configuring (make {BASE_CONFIG}, then {})",
        show_path(&fragment_path())
    ));
    run_quiet(make(source).arg(BASE_CONFIG))?;
    run_quiet(
        Command::new(source.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(&build)
            .arg(build.join(".config"))
            .arg(fragment_path())
            .current_dir(&build),
    )?;
    run_quiet(make(source).arg("olddefconfig"))?;
    let config_path = build.join(".config");
    let config = fs::read_to_string(&config_path)
        .context(|| format!("cannot read {}", config_path.display()))?;
    let lost = settings_lost(fragment, &config);
    if lost.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "Kconfig did not keep {} of {} (misspelt, or a dependency is off; see {})",
            lost.join(", "),
            show_path(&fragment_path()),
            show_path(&config_path)
        )))
    }
}

/// One line of lg.config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The symbol with its prefix, `CONFIG_VIRTIO_BLK`.
    pub symbol: String,
    /// `=y` (built in) or `is not set`.
    pub enabled: bool,
}

/// Reads a fragment: blank lines, `#` comments, `CONFIG_X=y` and
/// `# CONFIG_X is not set`, each symbol once. Anything else (a module `=m`,
/// a value, a stray word) is refused with its line number, since lg's
/// kernel builds every driver in and Kconfig would not say a word.
pub fn parse_fragment(text: &str) -> Result<Vec<Setting>, String> {
    let mut settings: Vec<Setting> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_end();
        let setting = if let Some(rest) = line.strip_prefix("# CONFIG_") {
            match rest.strip_suffix(" is not set") {
                Some(name) if is_symbol(name) => Setting {
                    symbol: format!("CONFIG_{name}"),
                    enabled: false,
                },
                _ => {
                    return Err(format!(
                        "line {number} is a malformed `# CONFIG_X is not set`"
                    ))
                }
            }
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            match line
                .strip_prefix("CONFIG_")
                .and_then(|rest| rest.strip_suffix("=y"))
            {
                Some(name) if is_symbol(name) => Setting {
                    symbol: format!("CONFIG_{name}"),
                    enabled: true,
                },
                _ => {
                    return Err(format!(
                        "line {number} (`{line}`) is neither `CONFIG_X=y` nor \
                         `# CONFIG_X is not set`"
                    ))
                }
            }
        };
        if settings.iter().any(|s| s.symbol == setting.symbol) {
            return Err(format!(
                "line {number} sets {} a second time",
                setting.symbol
            ));
        }
        settings.push(setting);
    }
    Ok(settings)
}

fn is_symbol(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The settings of `fragment` that the final `config` does not honour, each
/// as its symbol.
pub fn settings_lost(fragment: &[Setting], config: &str) -> Vec<String> {
    let built_in = |symbol: &str| {
        config
            .lines()
            .any(|line| line.strip_prefix(symbol) == Some("=y"))
    };
    let set_at_all = |symbol: &str| {
        config.lines().any(|line| {
            line.strip_prefix(symbol)
                .is_some_and(|rest| rest.starts_with('='))
        })
    };
    fragment
        .iter()
        .filter(|s| {
            if s.enabled {
                !built_in(&s.symbol)
            } else {
                set_at_all(&s.symbol)
            }
        })
        .map(|s| s.symbol.clone())
        .collect()
}

/// `kernel-patches/*.patch`, by name, in the order they apply.
fn patches() -> Result<Vec<(String, String)>, Error> {
    let dir = patches_dir();
    let mut patches = Vec::new();
    for entry in fs::read_dir(&dir).context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "patch") {
            let text =
                fs::read_to_string(&path).context(|| format!("cannot read {}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            patches.push((name, text));
        }
    }
    patches.sort();
    Ok(patches)
}

/// What the unpacked tree is made of: the `.deb` and every patch's text.
fn source_recipe(package: &Path, patches: &[(String, String)]) -> String {
    let deb = fs::read_to_string(package.join(".unpacked-from")).unwrap_or_default();
    let mut recipe = format!("source {}\n", deb.trim());
    for (name, text) in patches {
        recipe.push_str(&format!("--- patch {name} ---\n{text}"));
    }
    recipe
}

/// `target/kernel/linux-source-6.1/`, unpacked from the package's tarball
/// and patched, unless the tree there came from the same package and patches.
fn unpack_source(package: &Path, patches: &[(String, String)]) -> Result<PathBuf, Error> {
    let tree = dir().join(SOURCE_PACKAGE);
    let marker = tree.join(".lg-source");
    let recipe = source_recipe(package, patches);
    if fs::read_to_string(&marker).is_ok_and(|m| m == recipe) {
        return Ok(tree);
    }
    let tarball = package.join(format!("usr/src/{SOURCE_PACKAGE}.tar.xz"));
    if !tarball.is_file() {
        return Err(Error::new(format!(
            "{} is missing from the unpacked {SOURCE_PACKAGE}",
            tarball.display()
        )));
    }
    progress(format!(
        "kernel: unpacking {} (about 1.5 GB)",
        show_path(&tarball)
    ));
    // Into a scratch directory first, so an interrupted unpack is never
    // taken for a tree.
    let scratch = dir().join(format!(".unpacking-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).context(|| format!("cannot create {}", scratch.display()))?;
    run_quiet(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&scratch),
    )?;
    let unpacked = scratch.join(SOURCE_PACKAGE);
    for (name, _) in patches {
        progress(format!("kernel: applying kernel-patches/{name}"));
        run_quiet(
            Command::new("patch")
                .args(["-p1", "--batch", "--forward", "-i"])
                .arg(patches_dir().join(name))
                .current_dir(&unpacked),
        )
        .map_err(|e| {
            Error::new(format!(
                "kernel-patches/{name} does not apply to {SOURCE_PACKAGE}: {e}"
            ))
        })?;
    }
    fs::write(unpacked.join(".lg-source"), &recipe)
        .context(|| format!("cannot write into {}", unpacked.display()))?;
    // Objects built from the old tree would look newer than the new tree's
    // files (tar keeps the archive's dates), so they go too.
    for old in [&tree, &build_dir()] {
        if old.exists() {
            fs::remove_dir_all(old).context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    fs::rename(&unpacked, &tree)
        .context(|| format!("cannot move {} into place", tree.display()))?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(tree)
}

/// Makes sure each `(header, Debian package)` pair's header is in
/// `/usr/include`, as [`command::ensure_debian_packages`] does for programs.
fn ensure_headers(needed: &[(&str, &str)]) -> Result<(), Error> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(header, _)| !Path::new("/usr/include").join(header).is_file())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !have("apt-get") || !root {
        return Err(Error::new(format!(
            "building the kernel needs Debian's {list}: install it (sudo apt-get install {list})"
        )));
    }
    progress(format!("host tools: installing {list} with apt-get"));
    run_visible(Command::new("apt-get").args(["update", "-q"]))?;
    run_visible(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The release a built bzImage announces.
fn release_of(bzimage: &Path) -> Result<String, Error> {
    let bytes = fs::read(bzimage).context(|| format!("cannot read {}", bzimage.display()))?;
    bzimage_version(&bytes).ok_or_else(|| {
        Error::new(format!(
            "{} has no boot header; remove {} and build again",
            bzimage.display(),
            stamp_path().display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LG_CONFIG: &str = include_str!("../../kernel-patches/lg.config");

    #[test]
    fn lg_config_is_only_built_in_drivers_and_explicit_noes() {
        let settings = parse_fragment(LG_CONFIG).unwrap_or_else(|e| panic!("lg.config: {e}"));
        for needed in [
            "CONFIG_64BIT",
            "CONFIG_KVM_GUEST",
            "CONFIG_ACPI",
            "CONFIG_VIRTIO_PCI",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_EXT4_FS",
            "CONFIG_DEVTMPFS_MOUNT",
            "CONFIG_BINFMT_SCRIPT",
        ] {
            assert!(
                settings.iter().any(|s| s.symbol == needed && s.enabled),
                "lg.config should build in {needed}"
            );
        }
    }

    #[test]
    fn every_setting_in_lg_config_follows_a_comment_saying_why() {
        let mut said_why = false;
        for (index, line) in LG_CONFIG.lines().enumerate() {
            let setting = line.starts_with("CONFIG_") || line.ends_with(" is not set");
            if setting {
                assert!(
                    said_why,
                    "lg.config line {}: `{line}` has no comment above it",
                    index + 1
                );
            } else {
                // A comment opens a group of settings; a blank line closes it.
                said_why = line.starts_with('#');
            }
        }
    }

    #[test]
    fn refuses_modules_values_and_repeats() {
        let bad = [
            ("CONFIG_VIRTIO_BLK=m\n", "line 1"),
            ("# why\nCONFIG_NR_CPUS=8\n", "line 2"),
            ("VIRTIO_BLK=y\n", "line 1"),
            ("CONFIG_virtio=y\n", "line 1"),
            ("# CONFIG_X is not\n", "line 1"),
            ("CONFIG_A=y\nCONFIG_A=y\n", "second time"),
        ];
        for (text, expected) in bad {
            let error = parse_fragment(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        assert_eq!(
            parse_fragment("# a comment\n\nCONFIG_A=y\n# CONFIG_B is not set\n"),
            Ok(vec![
                Setting {
                    symbol: "CONFIG_A".to_string(),
                    enabled: true
                },
                Setting {
                    symbol: "CONFIG_B".to_string(),
                    enabled: false
                },
            ])
        );
    }

    #[test]
    fn names_the_settings_kconfig_dropped() {
        let fragment =
            parse_fragment("CONFIG_A=y\nCONFIG_AB=y\nCONFIG_TYPO=y\n# CONFIG_C is not set\n")
                .unwrap();
        let config = "CONFIG_A=y\nCONFIG_ABC=y\n# CONFIG_AB is not set\nCONFIG_C=y\n";
        assert_eq!(
            settings_lost(&fragment, config),
            ["CONFIG_AB", "CONFIG_TYPO", "CONFIG_C"]
        );
        let config = "CONFIG_A=y\nCONFIG_AB=y\nCONFIG_TYPO=y\n# CONFIG_C is not set\n";
        assert!(settings_lost(&fragment, config).is_empty());
    }
}
