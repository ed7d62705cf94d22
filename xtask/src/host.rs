//! Can this machine's `/dev/kvm` boot a stock kernel, or do we need the test host?
//!
//! `cargo xtask run` boots the guest directly when it can, because that is
//! what a user of lg does. It cannot when `/dev/kvm` is missing or closed to
//! us, or when it is `kvm_pvm` without VT-x/AMD-V underneath: the development
//! and CI machines are such VMs, and there a stock kernel crawls for a
//! minute and dies on an instruction the emulator cannot handle (see
//! /work/shared/notes/testing-on-these-machines.md). lg makes the same check
//! before it starts; xtask repeats it, rather than depending on lg's crates,
//! so that it works even while lg does not build.

use std::fs::OpenOptions;
use std::path::Path;

/// What this machine's KVM can do for lg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// `/dev/kvm` opens read-write and has hardware virtualization behind it.
    Usable,
    /// `/dev/kvm` is missing or cannot be opened read-write.
    NoAccess(String),
    /// `/dev/kvm` is `kvm_pvm` and the CPU shows neither `vmx` nor `svm`.
    PvmOnly,
}

impl HostKvm {
    /// Checks `/dev/kvm`, `/sys/module/kvm_pvm` and `/proc/cpuinfo`.
    pub fn check() -> HostKvm {
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            return HostKvm::NoAccess(format!("cannot open /dev/kvm read-write ({e})"));
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        classify(Path::new("/sys/module/kvm_pvm").exists(), &cpuinfo)
    }

    /// Whether this is the `kvm_pvm` case lg must refuse by name.
    pub fn is_pvm_only(&self) -> bool {
        matches!(self, HostKvm::PvmOnly)
    }

    /// Why lg cannot boot a stock kernel here, as a clause for a sentence.
    pub fn reason(&self) -> Option<String> {
        match self {
            HostKvm::Usable => None,
            HostKvm::NoAccess(why) => Some(why.clone()),
            HostKvm::PvmOnly => Some(
                "this machine's /dev/kvm is kvm_pvm without VT-x or AMD-V, \
                 which cannot run a stock kernel"
                    .to_string(),
            ),
        }
    }
}

/// The kvm_pvm rule, apart from the files it reads so it can be tested.
fn classify(pvm_loaded: bool, cpuinfo: &str) -> HostKvm {
    if pvm_loaded && !has_hardware_virtualization(cpuinfo) {
        HostKvm::PvmOnly
    } else {
        HostKvm::Usable
    }
}

/// Whether a `flags` line of /proc/cpuinfo lists `vmx` or `svm`.
pub fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .filter_map(|line| line.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_vmx_or_svm_is_refused() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n";
        assert_eq!(classify(true, cpuinfo), HostKvm::PvmOnly);
    }

    #[test]
    fn hardware_virtualization_or_no_pvm_is_fine() {
        assert_eq!(classify(true, "flags\t\t: fpu svm npt\n"), HostKvm::Usable);
        assert_eq!(classify(false, "flags\t\t: fpu\n"), HostKvm::Usable);
        assert!(!has_hardware_virtualization("model name\t: vmx-like cpu\n"));
    }
}
