//! xtask: everything lg needs around it to be built, booted and tested.
//!
//! lg is a hypervisor, so testing it means booting real kernels. This crate
//! gathers what that takes, so that two commands are enough on a fresh Debian
//! machine: `cargo xtask run` boots a guest to a shell, `cargo xtask test`
//! runs every test including the ones that boot guests.
//!
//! The story, in reading order:
//! - [`debian`]: fetch Debian's cloud kernel and a static busybox with apt, once.
//! - [`cpio`] and [`modules`]: the two things an initramfs is made of here,
//!   a newc archive and the right kernel modules in the right order.
//! - [`guest`]: the guest kit, a kernel and an initramfs whose `/init` reports
//!   back (`LG_GUEST_INIT_OK`, `lgtest=...`) so tests can tell what happened.
//! - [`host`]: can this machine's `/dev/kvm` run a stock kernel at all?
//! - [`testhost`]: when it cannot (these development machines sit on
//!   `kvm_pvm`), a nested test host: QEMU TCG emulating AMD SVM, whose own
//!   KVM runs lg and the guest kit. The end-to-end tests in `tests/` use it
//!   through [`TestHost`].
//! - [`mod@bench`]: `cargo xtask bench`, lg beside QEMU in one test host.
//! - [`kernel`]: `cargo xtask kernel`, a guest kernel with lg's drivers built
//!   in, from Debian's kernel source and `kernel-patches/lg.config`.
//!
//! The binary (`src/main.rs`) is the command line over this library.

pub mod bench;
pub mod command;
pub mod cpio;
pub mod debian;
pub mod error;
pub mod guest;
pub mod host;
pub mod kernel;
pub mod modules;
pub mod rootfs;
pub mod shell;
pub mod soak;
pub mod testhost;

use std::path::PathBuf;

pub use error::Error;
pub use guest::Kit;
pub use host::HostKvm;
pub use testhost::{Echo, TestHost, TestHostError, TestHostRun};

/// The workspace root: the directory holding the top-level `Cargo.toml`.
///
/// Taken from where this crate was compiled, so the e2e tests (which run with
/// their own package as working directory) and `cargo xtask` (which may run
/// from any subdirectory) agree on it.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match xtask_dir.parent() {
        Some(root) => root.to_path_buf(),
        None => xtask_dir,
    }
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The lg binary the tests and the test host use: `cargo build --release -p lg`'s.
pub fn lg_binary() -> PathBuf {
    target_dir().join("release").join("lg")
}

/// Prints a progress line on stderr, for steps that take more than a moment.
///
/// stderr, so that `cargo xtask testhost -- CMD > out` captures only what the
/// test host printed.
pub fn progress(message: impl std::fmt::Display) {
    eprintln!("{message}");
}

/// A path relative to the workspace root when it is inside it, for messages.
pub fn show_path(path: &std::path::Path) -> String {
    let root = workspace_root();
    match path.strip_prefix(&root) {
        Ok(relative) => relative.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}
