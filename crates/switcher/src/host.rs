//! Can this host run a stock Linux guest?
//!
//! Three things stop lg before it starts: no `/dev/kvm`, a `/dev/kvm` this
//! user may not open, and a KVM that exists but cannot run an unmodified
//! kernel. The last one is real: some cloud machines offer `/dev/kvm` through
//! `kvm_pvm`, a paravirtual KVM without VT-x or AMD-V underneath, where a
//! stock kernel crawls for a minute and then dies on an instruction the
//! emulator cannot handle. Saying so at once beats hanging.

use std::fmt;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::Path;

/// Why this host cannot run lg's guests.
#[derive(Debug, PartialEq, Eq)]
pub enum HostError {
    /// `/dev/kvm` does not exist.
    NoKvm,
    /// `/dev/kvm` exists but this user may not open it.
    KvmNotAccessible,
    /// `/dev/kvm` could not be opened for another reason.
    KvmOpen(String),
    /// `/dev/kvm` is kvm_pvm without hardware virtualization.
    PvmWithoutHardwareVirtualization,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NoKvm => write!(
                f,
                "/dev/kvm does not exist: load KVM (modprobe kvm_intel or kvm_amd) \
                 and enable virtualization in the firmware"
            ),
            HostError::KvmNotAccessible => write!(
                f,
                "/dev/kvm is not accessible to this user: add the user to the kvm group or run as root"
            ),
            HostError::KvmOpen(reason) => write!(f, "cannot open /dev/kvm: {reason}"),
            HostError::PvmWithoutHardwareVirtualization => write!(
                f,
                "this host's /dev/kvm is kvm_pvm without hardware virtualization (no vmx or svm \
                 CPU flag), which cannot run a stock Linux kernel: use a host with VT-x or AMD-V, \
                 or boot inside lg's nested test host (cargo xtask run)"
            ),
        }
    }
}

impl std::error::Error for HostError {}

/// Checks the real host: `/dev/kvm`, `/sys/module/kvm_pvm`, `/proc/cpuinfo`.
pub fn check_host() -> Result<(), HostError> {
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm");
    match kvm {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(HostError::NoKvm),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(HostError::KvmNotAccessible)
        }
        Err(e) => return Err(HostError::KvmOpen(e.to_string())),
    }
    let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    check_virtualization(pvm_loaded, &cpuinfo)
}

/// The kvm_pvm rule, apart from the files it reads so it can be tested.
fn check_virtualization(pvm_loaded: bool, cpuinfo: &str) -> Result<(), HostError> {
    if pvm_loaded && !has_hardware_virtualization(cpuinfo) {
        return Err(HostError::PvmWithoutHardwareVirtualization);
    }
    Ok(())
}

/// Whether any `flags` line of /proc/cpuinfo lists `vmx` or `svm`.
fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_vmx_or_svm_is_refused() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n";
        assert_eq!(
            check_virtualization(true, cpuinfo),
            Err(HostError::PvmWithoutHardwareVirtualization)
        );
    }

    #[test]
    fn pvm_with_svm_or_plain_kvm_is_accepted() {
        let svm = "flags\t\t: fpu svm sse2\n";
        assert_eq!(check_virtualization(true, svm), Ok(()));
        assert_eq!(check_virtualization(false, "flags\t\t: fpu\n"), Ok(()));
    }

    #[test]
    fn flag_names_must_match_whole_words() {
        assert!(!has_hardware_virtualization("flags\t\t: vmx_ept svmish\n"));
        assert!(has_hardware_virtualization("flags\t\t: a vmx b\n"));
    }

    #[test]
    fn messages_name_the_device() {
        assert!(HostError::NoKvm.to_string().starts_with("/dev/kvm"));
        assert!(HostError::PvmWithoutHardwareVirtualization
            .to_string()
            .contains("kvm_pvm"));
    }
}
