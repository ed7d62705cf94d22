//! Confining lg with seccomp once the guest is set up.
//!
//! Everything lg needs to open (the kernel, the disks, `/dev/kvm`, the taps,
//! the control socket) is open before the first `KVM_RUN`. From then on lg
//! only moves bytes between descriptors it holds, maps memory, runs threads
//! and talks to KVM; a guest that found a bug in a device model should find
//! that the process it took over cannot open a file, start a program or
//! make a new network connection. So [`confine`] installs one seccomp
//! filter on every thread (`SECCOMP_FILTER_FLAG_TSYNC`; threads started
//! later inherit it) that allows the system calls below and nothing else.
//!
//! A refused call does not fail quietly: the kernel sends SIGSYS, and
//! [`on_refused_call`] says which call, on which thread, and ends lg with
//! status 2, so a missing entry in the list is found by the first test that
//! needs it rather than by a guest behaving oddly.
//!
//! `LG_SECCOMP=off` turns the filter off (for debugging lg itself with
//! tools that need more calls, such as strace's own); `LG_SECCOMP=log` lets
//! refused calls through and has the kernel log them (`dmesg`), to find what
//! a new feature needs; `LG_SECCOMP=test` installs the filter and then makes
//! one forbidden call (`getppid`), to show that the filter is live and what
//! a refusal looks like (the end-to-end tests use it).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The status lg ends with when the filter refuses a call: the same as a
/// failed vCPU, since lg can no longer vouch for its devices.
const EXIT_REFUSED_CALL: i32 = 2;

/// The system calls lg makes after set-up, by what needs them.
const ALLOWED: &[(libc::c_long, &str)] = &[
    // Moving bytes: the console, disks, taps, eventfds, the control socket.
    (libc::SYS_read, "devices"),
    (libc::SYS_write, "devices"),
    (libc::SYS_readv, "devices"),
    (libc::SYS_writev, "devices"),
    (libc::SYS_pread64, "virtio-blk"),
    (libc::SYS_pwrite64, "virtio-blk"),
    (libc::SYS_preadv, "virtio-blk"),
    (libc::SYS_pwritev, "virtio-blk"),
    (libc::SYS_preadv2, "virtio-blk"),
    (libc::SYS_pwritev2, "virtio-blk"),
    (libc::SYS_lseek, "virtio-blk"),
    (libc::SYS_fsync, "virtio-blk flush"),
    (libc::SYS_fdatasync, "virtio-blk flush"),
    (libc::SYS_fallocate, "virtio-blk discard and write-zeroes"),
    (libc::SYS_flock, "a disk's lock, released when lg ends"),
    (libc::SYS_fstat, "std's reads"),
    (
        libc::SYS_newfstatat,
        "the control socket's removal checks its inode",
    ),
    (
        libc::SYS_statx,
        "the control socket's removal checks its inode",
    ),
    (libc::SYS_unlink, "removing the control socket"),
    (libc::SYS_unlinkat, "removing the control socket"),
    (libc::SYS_close, "every thread"),
    (libc::SYS_fcntl, "std's descriptors"),
    (libc::SYS_poll, "device threads wait on eventfds and taps"),
    (libc::SYS_ppoll, "device threads wait on eventfds and taps"),
    (
        libc::SYS_eventfd2,
        "a device reset by the guest makes new eventfds",
    ),
    (libc::SYS_getrandom, "virtio-rng, and std's hash maps"),
    // KVM (KVM_RUN, registers, interrupt lines, irqfds, ioeventfds), the
    // terminal's modes, and the tap's offloads.
    (libc::SYS_ioctl, "KVM, the terminal, the tap"),
    // The control socket's thread.
    (libc::SYS_accept, "the control socket"),
    (libc::SYS_accept4, "the control socket"),
    (libc::SYS_recvfrom, "the control socket"),
    (libc::SYS_sendto, "the control socket"),
    (libc::SYS_recvmsg, "the control socket"),
    (libc::SYS_sendmsg, "the control socket"),
    (libc::SYS_shutdown, "the control socket"),
    (libc::SYS_setsockopt, "the control socket's timeouts"),
    (libc::SYS_getsockopt, "the control socket's timeouts"),
    // Memory: the allocator, thread stacks.
    (libc::SYS_mmap, "memory"),
    (libc::SYS_munmap, "memory"),
    (libc::SYS_mprotect, "memory (thread stack guards)"),
    (libc::SYS_mremap, "memory"),
    (libc::SYS_madvise, "memory"),
    (libc::SYS_brk, "memory"),
    // Threads: devices start theirs when the guest's driver starts them.
    (libc::SYS_clone, "threads"),
    (libc::SYS_clone3, "threads"),
    (libc::SYS_set_robust_list, "threads"),
    (libc::SYS_rseq, "threads"),
    (libc::SYS_prctl, "naming threads"),
    (libc::SYS_sched_getaffinity, "threads"),
    (libc::SYS_sched_yield, "locks"),
    (libc::SYS_futex, "locks"),
    (libc::SYS_gettid, "threads"),
    (libc::SYS_getpid, "signals"),
    (libc::SYS_tgkill, "kicking a vCPU out of KVM_RUN"),
    (libc::SYS_tkill, "kicking a vCPU out of KVM_RUN"),
    (libc::SYS_rt_sigprocmask, "signal masks"),
    (libc::SYS_rt_sigaction, "signal handlers"),
    (libc::SYS_rt_sigreturn, "returning from a signal handler"),
    (libc::SYS_rt_sigtimedwait, "the signal thread's sigwait"),
    (libc::SYS_sigaltstack, "threads' signal stacks"),
    (libc::SYS_restart_syscall, "interrupted sleeps"),
    (libc::SYS_exit, "threads"),
    (libc::SYS_exit_group, "lg's end"),
    // Time.
    (libc::SYS_clock_gettime, "time"),
    (libc::SYS_gettimeofday, "time"),
    (libc::SYS_clock_nanosleep, "sleeps"),
    (libc::SYS_nanosleep, "sleeps"),
];

/// What `LG_SECCOMP` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Enforce,
    Log,
    Off,
    /// Enforce, then make a forbidden call.
    Test,
}

fn mode() -> Result<Mode, String> {
    parse_mode(std::env::var("LG_SECCOMP").ok().as_deref())
}

fn parse_mode(value: Option<&str>) -> Result<Mode, String> {
    match value {
        None | Some("") | Some("on") => Ok(Mode::Enforce),
        Some("log") => Ok(Mode::Log),
        Some("off") => Ok(Mode::Off),
        Some("test") => Ok(Mode::Test),
        Some(other) => Err(format!(
            "LG_SECCOMP={other}: expected on (the default), log, off or test"
        )),
    }
}

/// The filter, as BPF.
fn program(mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = ALLOWED
        .iter()
        .map(|&(call, _)| (call, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}"))
}

/// Installs the filter on every thread of lg. Called once the guest is set
/// up and the privileges are dropped, before the vCPUs start.
pub fn confine() -> Result<(), String> {
    let mode = mode()?;
    let mismatch = match mode {
        Mode::Off => {
            log::warn!("LG_SECCOMP=off: lg runs without its seccomp filter");
            return Ok(());
        }
        Mode::Log => SeccompAction::Log,
        Mode::Enforce | Mode::Test => {
            install_refusal_handler();
            SeccompAction::Trap
        }
    };
    let program = program(mismatch)?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    log::info!(
        "seccomp: {} system calls allowed on every thread",
        ALLOWED.len()
    );
    if mode == Mode::Test {
        // SAFETY: getppid has no preconditions; the filter refuses it, and
        // the SIGSYS handler ends lg.
        unsafe { libc::getppid() };
    }
    Ok(())
}

fn install_refusal_handler() {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only calls async-signal-safe functions (write, _exit).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_refused_call
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
    }
}

/// Where the number of the refused call sits in a SIGSYS `siginfo_t` on
/// x86-64: after si_signo, si_errno, si_code (and padding to 8), the
/// `_sigsys` member holds the call's address, then the call number.
const SIGSYS_SYSCALL_OFFSET: usize = 24;

/// SIGSYS: the filter refused a call. Says which, and ends lg.
extern "C" fn on_refused_call(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut message = [0u8; 128];
    let mut length = 0;
    let mut push = |bytes: &[u8]| {
        for &byte in bytes {
            if length < message.len() {
                message[length] = byte;
                length += 1;
            }
        }
    };
    push(b"\r\nlg: seccomp refused system call ");
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS with
    // SA_SIGINFO; the call number is an int at SIGSYS_SYSCALL_OFFSET.
    let call = unsafe {
        info.cast::<u8>()
            .add(SIGSYS_SYSCALL_OFFSET)
            .cast::<libc::c_int>()
            .read_unaligned()
    };
    push(decimal(call as i64).as_slice());
    push(b" (see `man 2 syscall`); lg stops rather than run without its confinement\n");
    // SAFETY: write and _exit are async-signal-safe; `message` is a live
    // buffer of at least `length` bytes.
    unsafe {
        libc::write(2, message.as_ptr().cast(), length);
        libc::_exit(EXIT_REFUSED_CALL);
    }
}

/// `n` in decimal, without allocating (for the signal handler).
fn decimal(n: i64) -> DecimalDigits {
    let mut digits = DecimalDigits {
        bytes: [0; 20],
        len: 0,
    };
    let negative = n < 0;
    let mut rest = n.unsigned_abs();
    let mut reversed = [0u8; 20];
    let mut count = 0;
    loop {
        reversed[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 || count == reversed.len() {
            break;
        }
    }
    if negative && count < reversed.len() {
        reversed[count] = b'-';
        count += 1;
    }
    for i in 0..count {
        digits.bytes[i] = reversed[count - 1 - i];
    }
    digits.len = count;
    digits
}

struct DecimalDigits {
    bytes: [u8; 20],
    len: usize,
}

impl DecimalDigits {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_without_allocating() {
        assert_eq!(decimal(0).as_slice(), b"0");
        assert_eq!(decimal(257).as_slice(), b"257");
        assert_eq!(decimal(-12).as_slice(), b"-12");
    }

    #[test]
    fn the_filter_compiles_and_lists_each_call_once() {
        assert!(program(SeccompAction::Trap).is_ok());
        let mut calls: Vec<libc::c_long> = ALLOWED.iter().map(|&(call, _)| call).collect();
        calls.sort_unstable();
        calls.dedup();
        assert_eq!(calls.len(), ALLOWED.len());
        // What lg must never be able to do once confined.
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_getppid,
        ] {
            assert!(!calls.contains(&forbidden), "{forbidden} is allowed");
        }
    }

    #[test]
    fn lg_seccomp_takes_on_log_or_off() {
        assert_eq!(parse_mode(None), Ok(Mode::Enforce));
        assert_eq!(parse_mode(Some("on")), Ok(Mode::Enforce));
        assert_eq!(parse_mode(Some("log")), Ok(Mode::Log));
        assert_eq!(parse_mode(Some("off")), Ok(Mode::Off));
        assert_eq!(parse_mode(Some("test")), Ok(Mode::Test));
        assert!(parse_mode(Some("maybe"))
            .unwrap_err()
            .contains("LG_SECCOMP=maybe"));
    }
}
