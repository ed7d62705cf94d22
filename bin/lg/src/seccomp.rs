//! Confining lg with seccomp once the guest is set up.
//!
//! Everything lg needs to open (the kernel, the disks, `/dev/kvm`, the taps,
//! the control socket) is open before the first `KVM_RUN`. From then on lg
//! only moves bytes between descriptors it holds, maps memory, runs threads
//! and talks to KVM; a guest that found a bug in a device model should find
//! that the process it took over cannot open a file, start a program or
//! make a new network connection. So [`confine`] installs one seccomp
//! filter on every thread (`SECCOMP_FILTER_FLAG_TSYNC`; threads started
//! later inherit it) that allows the system calls in [`ALLOWED`] and
//! nothing else: the union of what every thread needs.
//!
//! Most threads need much less, so each thread with a [`Role`] narrows
//! itself further as it starts doing it ([`confine_thread`]): filters
//! stack, the kernel runs them all and the strictest answer wins, so a
//! role's filter can only take calls away. A vCPU keeps `KVM_RUN` and the
//! ioctls of its exits; a device's I/O thread keeps reads, writes, flushes
//! and polls on the descriptors it was given; the control thread keeps
//! accepting and answering its socket. Each role allows `ioctl` only with
//! the request numbers it issues, so no thread of lg can, for instance,
//! push keystrokes into the user's terminal (`TIOCSTI`). Two rules of the
//! kernel's shape the roles:
//!
//! - a thread hands its filters to the threads it starts, so a role's list
//!   holds its children's needs too. Device threads are started by a vCPU
//!   (the guest's driver sets DRIVER_OK from a vCPU exit), so the vCPU role
//!   allows what device threads do, and they narrow themselves again;
//! - TSYNC refuses while any thread has a filter the installing thread
//!   lacks, so no role filter goes on before [`confine`]. Threads started
//!   earlier (`signals`, `console-input`, `gdb-listen`) keep the
//!   process-wide filter alone, except the control thread, which narrows
//!   itself at its first request after [`confine`].
//!
//! The threads start their roles through hooks in the crates that start
//! them, which know nothing of seccomp: `switcher::ExitHandler::
//! vcpu_thread_started` (`platform.rs`), `virtio_pci::TransportHooks::
//! io_thread_start` (`hooks.rs`), and the control socket's handler
//! (`inspect.rs`).
//!
//! A refused call does not fail quietly: the kernel sends SIGSYS, and
//! [`on_refused_call`] says which call (and which ioctl request), on which
//! role's thread, and ends lg with status 2, so a missing entry in a list
//! is found by the first test that needs it rather than by a guest
//! behaving oddly. The lists were measured with `LG_SECCOMP=log` (the
//! kernel logs each call a filter would refuse, with the thread's name)
//! over every device and control request, and read off the code.
//!
//! `LG_SECCOMP=off` turns the filters off (for debugging lg itself with
//! tools that need more calls, such as strace's own); `LG_SECCOMP=log` lets
//! refused calls through and has the kernel log them (`dmesg`), to find what
//! a new feature needs; `LG_SECCOMP=test` installs the filter and then makes
//! one forbidden call (`getppid`), to show that the filter is live and what
//! a refusal looks like; `LG_SECCOMP=test-vcpu`, `test-device` and
//! `test-control` do the same with a call that only the role's filter
//! forbids, made by the first thread to take the role (the end-to-end
//! tests use them).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use kvm_bindings::{
    kvm_coalesced_mmio_zone, kvm_fpu, kvm_guest_debug, kvm_ioeventfd, kvm_irq_level,
    kvm_irq_routing, kvm_irqfd, kvm_regs, kvm_sregs, KVMIO,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

/// The status lg ends with when the filter refuses a call: the same as a
/// failed vCPU, since lg can no longer vouch for its devices.
const EXIT_REFUSED_CALL: i32 = 2;

/// One allowed system call, and what needs it.
type Allowed = (libc::c_long, &'static str);

/// The system calls lg makes after set-up, by what needs them: the union
/// of every thread's needs, and all that the threads without a role (the
/// main thread, `signals`, `console-input`, `gdb-listen`) may make.
const ALLOWED: &[Allowed] = &[
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
    // terminal's modes, and the tap's offloads; each role narrows the
    // numbers (see `ioctls`).
    (libc::SYS_ioctl, "KVM, the terminal, the tap"),
    // The control socket's thread, and gdb's.
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
    (
        libc::SYS_prctl,
        "naming threads; no_new_privs before a role's filter",
    ),
    (
        libc::SYS_seccomp,
        "a thread narrowing itself to its role (filters only ever add up)",
    ),
    (
        libc::SYS_sched_getaffinity,
        "glibc's malloc sizing its arenas on a new thread",
    ),
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

/// What a thread is for, which decides the narrower filter it puts on
/// itself when it starts doing it. Filters stack: the kernel runs every
/// filter a thread has and takes the strictest answer, so a role can only
/// narrow [`ALLOWED`]. A thread also hands its filters to the threads it
/// starts, so a role's list holds what its children need as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `vcpu0`, ...: `KVM_RUN` and its exits. The guest's driver starts a
    /// device from an exit, so the device threads are its children.
    Vcpu,
    /// `virtio-console`, `virtio-blk`, `virtio-net`, `virtio-rng`.
    DeviceIo,
    /// `control`, and what it starts: `gdb` (`lg gdb NAME`) and
    /// `force-stop`.
    Control,
}

/// What every thread may do whatever its role: live (memory, locks, time),
/// end, and, on a panic, run lg's tidy-up (`launch::tidy_up`: the terminal's
/// modes back, the control socket removed), whose message would otherwise
/// be lost to a refusal. `write` and `exit_group` are also what the SIGSYS
/// handler itself needs.
const EVERY_ROLE: &[Allowed] = &[
    (libc::SYS_write, "the console, eventfds, messages"),
    (libc::SYS_close, "dropping descriptors"),
    (libc::SYS_mmap, "memory"),
    (libc::SYS_munmap, "memory"),
    (libc::SYS_mprotect, "memory"),
    (libc::SYS_mremap, "memory"),
    (libc::SYS_madvise, "memory, and a thread's stack at its end"),
    (libc::SYS_brk, "memory"),
    (libc::SYS_futex, "locks"),
    (libc::SYS_sched_yield, "locks"),
    (
        libc::SYS_sched_getaffinity,
        "glibc's malloc sizing its arenas at a thread's first allocation",
    ),
    (libc::SYS_getrandom, "std's hash maps"),
    (libc::SYS_clock_gettime, "time"),
    (libc::SYS_gettimeofday, "time"),
    (libc::SYS_clock_nanosleep, "sleeps"),
    (libc::SYS_nanosleep, "sleeps"),
    (libc::SYS_restart_syscall, "interrupted sleeps"),
    (libc::SYS_rt_sigprocmask, "signal masks"),
    (libc::SYS_rt_sigreturn, "returning from a signal handler"),
    (
        libc::SYS_sigaltstack,
        "a thread's signal stack, freed at its end",
    ),
    (libc::SYS_gettid, "locks and signals"),
    (libc::SYS_getpid, "signals"),
    (libc::SYS_exit, "a thread's end"),
    (libc::SYS_exit_group, "lg's end"),
    (libc::SYS_statx, "tidy-up: the control socket's inode"),
    (libc::SYS_newfstatat, "tidy-up: the control socket's inode"),
    (libc::SYS_unlink, "tidy-up: removing the control socket"),
];

/// What starting a thread takes, for the roles whose threads start others.
const STARTING_THREADS: &[Allowed] = &[
    (libc::SYS_clone, "starting threads"),
    (libc::SYS_clone3, "starting threads"),
    (libc::SYS_set_robust_list, "a new thread"),
    (libc::SYS_rseq, "a new thread"),
    (libc::SYS_prctl, "naming a new thread"),
];

/// The vCPU threads' own calls, beyond [`EVERY_ROLE`] and starting threads.
const VCPU: &[Allowed] = &[
    (libc::SYS_ioctl, "KVM_RUN and the ioctls of its exits"),
    (libc::SYS_read, "draining doorbells at a device reset"),
    (
        libc::SYS_eventfd2,
        "a device started by its driver gets a stop eventfd",
    ),
    (
        libc::SYS_fcntl,
        "sharing an eventfd with a device thread (F_DUPFD_CLOEXEC)",
    ),
    (
        libc::SYS_seccomp,
        "the device threads it starts narrow themselves (DeviceIo)",
    ),
    (
        libc::SYS_flock,
        "a disk's lock, let go if the last vCPU drops the machine at the end",
    ),
    // What the device threads it starts need until they narrow themselves
    // (they inherit this filter, so it must allow at least their role's).
    (libc::SYS_readv, "device threads"),
    (libc::SYS_writev, "device threads"),
    (libc::SYS_pread64, "device threads (virtio-blk)"),
    (libc::SYS_pwrite64, "device threads (virtio-blk)"),
    (libc::SYS_fdatasync, "device threads (virtio-blk)"),
    (libc::SYS_fsync, "device threads (virtio-blk)"),
    (libc::SYS_fallocate, "device threads (virtio-blk)"),
    (libc::SYS_poll, "device threads"),
    (libc::SYS_ppoll, "device threads"),
];

/// The device I/O threads' own calls, beyond [`EVERY_ROLE`]: bytes in and
/// out of the descriptors they were given, and waiting on them. No socket
/// calls (virtio-net's tap is a file: read and write), no thread, no file.
const DEVICE_IO: &[Allowed] = &[
    (libc::SYS_read, "doorbells, the stop eventfd, taps"),
    (libc::SYS_readv, "taps"),
    (libc::SYS_writev, "taps"),
    (libc::SYS_pread64, "virtio-blk reads"),
    (libc::SYS_pwrite64, "virtio-blk writes"),
    (libc::SYS_fdatasync, "virtio-blk flush"),
    (libc::SYS_fsync, "virtio-blk flush"),
    (libc::SYS_fallocate, "virtio-blk discard and write-zeroes"),
    (libc::SYS_poll, "waiting on doorbells and taps"),
    (libc::SYS_ppoll, "waiting on doorbells and taps"),
    (libc::SYS_ioctl, "an INTx interrupt line (KVM_IRQ_LINE)"),
];

/// The control thread's own calls, and its children's (`gdb` serving a
/// stream, `force-stop`), beyond [`EVERY_ROLE`] and starting threads:
/// accepting and answering connections, reading guest memory (no system
/// call: it is mapped), asking vCPUs for their registers. No file opening.
const CONTROL: &[Allowed] = &[
    (libc::SYS_accept, "the next connection"),
    (libc::SYS_accept4, "the next connection"),
    (libc::SYS_read, "requests"),
    (libc::SYS_recvfrom, "requests"),
    (libc::SYS_sendto, "answers"),
    (libc::SYS_setsockopt, "a connection's deadlines"),
    (libc::SYS_getsockopt, "a connection's deadlines"),
    (libc::SYS_shutdown, "a connection's end"),
    (libc::SYS_fcntl, "std's descriptors"),
    (libc::SYS_poll, "gdb's Ctrl-C while the guest runs"),
    (
        libc::SYS_tgkill,
        "kicking a vCPU out of KVM_RUN for its registers",
    ),
    (
        libc::SYS_tkill,
        "kicking a vCPU out of KVM_RUN for its registers",
    ),
    (
        libc::SYS_ioctl,
        "lg stop's power button (KVM_IRQ_LINE), force-stop's terminal",
    ),
];

// The KVM ioctls lg issues once set up. kvm-ioctls keeps its numbers
// private, so they are made here as it makes them: with vmm-sys-util's
// macros, KVMIO and the argument types from kvm-bindings, and the numbers
// of linux/kvm.h; `the_kvm_ioctl_numbers_are_the_ones_kvm_ioctls_sends`
// checks each against what kvm-ioctls really sends.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_iow_nr!(KVM_SET_GUEST_DEBUG, KVMIO, 0x9b, kvm_guest_debug);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    KVMIO,
    0x67,
    kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    KVMIO,
    0x68,
    kvm_coalesced_mmio_zone
);

/// One allowed ioctl request number, and what needs it.
type AllowedIoctl = (libc::c_ulong, &'static str);

/// The ioctl request numbers a role may issue: its `ioctl` rule allows
/// these and nothing else, so no role can, say, push keystrokes into lg's
/// terminal (`TIOCSTI`) or make a new VM.
fn ioctls(role: Role) -> Vec<AllowedIoctl> {
    // launch::tidy_up on a panic, wherever it happens.
    let tidy_up = (libc::TCSETS, "tidy-up: the terminal's modes back");
    // env_logger (through anstream) asks whether stderr is a terminal each
    // time it prints a line in colour, on whichever thread logs: without
    // this, the first warning (or, with -v, the first vCPU's first exit)
    // on a terminal would end lg.
    let log_line = (libc::TCGETS, "a log line: is stderr a terminal?");
    let mut allowed = match role {
        Role::Vcpu => vec![
            (KVM_RUN(), "running the guest"),
            (
                KVM_GET_REGS(),
                "registers for lg regs and gdb, a crash's RIP",
            ),
            (KVM_SET_REGS(), "gdb writing registers"),
            (
                KVM_GET_SREGS(),
                "registers for lg regs and gdb, a crash's RIP",
            ),
            (KVM_SET_SREGS(), "gdb writing registers"),
            (KVM_GET_FPU(), "gdb reading x87 and SSE registers"),
            (KVM_SET_FPU(), "gdb writing x87 and SSE registers"),
            (KVM_SET_GUEST_DEBUG(), "gdb's breakpoints and steps"),
            (KVM_IRQ_LINE(), "the UART's and INTx interrupt lines"),
            (KVM_SET_GSI_ROUTING(), "the guest programming MSI-X"),
            (KVM_IOEVENTFD(), "doorbells follow a BAR the guest moves"),
            (
                KVM_IRQFD(),
                "MSI vectors let go of their irqfds if the last vCPU drops the machine at the end",
            ),
            (
                KVM_REGISTER_COALESCED_MMIO(),
                "the serial port's bytes wait in KVM's ring again (its driver polls)",
            ),
            (
                KVM_UNREGISTER_COALESCED_MMIO(),
                "the serial port's bytes exit again (its driver wants interrupts)",
            ),
            (libc::TUNSETOFFLOAD, "virtio-net's offloads, at DRIVER_OK"),
            tidy_up,
        ],
        Role::DeviceIo => vec![(KVM_IRQ_LINE(), "a device's INTx line"), tidy_up],
        Role::Control => vec![
            (KVM_IRQ_LINE(), "lg stop's power button"),
            (
                libc::FIONBIO,
                "reading away what a client sent past its request",
            ),
            tidy_up,
        ],
    };
    allowed.push(log_line);
    allowed
}

/// A role's system calls.
fn calls(role: Role) -> Vec<Allowed> {
    let own = match role {
        Role::Vcpu => [VCPU, STARTING_THREADS].concat(),
        Role::DeviceIo => DEVICE_IO.to_vec(),
        Role::Control => [CONTROL, STARTING_THREADS].concat(),
    };
    // Each call is in one list only (a unit test checks): its reason is
    // then the one place that says why this role has it.
    [EVERY_ROLE, own.as_slice()].concat()
}

impl Role {
    /// As the refusal message says it.
    fn as_words(self) -> &'static str {
        match self {
            Role::Vcpu => "a vCPU thread",
            Role::DeviceIo => "a device I/O thread",
            Role::Control => "the control thread",
        }
    }

    /// A call the process-wide filter allows and this role does not,
    /// harmless when made (a descriptor of -1), for `LG_SECCOMP=test-ROLE`.
    fn forbidden_probe(self) {
        match self {
            // SAFETY: ioctl on descriptor -1 touches no memory (EBADF).
            Role::Vcpu => unsafe {
                libc::ioctl(-1, libc::TIOCSTI, std::ptr::null::<u8>());
            },
            // SAFETY: shutdown on descriptor -1 only fails (EBADF).
            Role::DeviceIo => unsafe {
                libc::shutdown(-1, libc::SHUT_RDWR);
            },
            // SAFETY: ioctl on descriptor -1 touches no memory (EBADF).
            Role::Control => unsafe {
                libc::ioctl(-1, KVM_RUN(), 0);
            },
        }
    }
}

/// What `LG_SECCOMP` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Enforce,
    Log,
    Off,
    /// Enforce, then make a forbidden call.
    Test,
    /// Enforce, and make a call this role's filter forbids once the first
    /// thread of the role has it in.
    TestRole(Role),
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
        Some("test-vcpu") => Ok(Mode::TestRole(Role::Vcpu)),
        Some("test-device") => Ok(Mode::TestRole(Role::DeviceIo)),
        Some("test-control") => Ok(Mode::TestRole(Role::Control)),
        Some(other) => Err(format!(
            "LG_SECCOMP={other}: expected on (the default), log, off, test, \
             test-vcpu, test-device or test-control"
        )),
    }
}

/// The mode [`confine`] put in force; unset before it ran. Role filters
/// follow it, and none is installed before it: the process-wide filter is
/// synchronised onto every thread (TSYNC), which the kernel refuses while
/// any thread has a filter the installing thread lacks.
static CONFINED: OnceLock<Mode> = OnceLock::new();

thread_local! {
    /// This thread's role once its filter is in, for the refusal message
    /// (const, without a destructor: readable in a signal handler).
    static ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

/// The filter allowing `calls`, and `ioctl` only with the request numbers
/// in `ioctl_numbers` when there are any.
fn compile(
    calls: &[Allowed],
    ioctl_numbers: &[AllowedIoctl],
    mismatch: SeccompAction,
) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.iter().map(|&(call, _)| (call, Vec::new())).collect();
    if rules.contains_key(&libc::SYS_ioctl) && !ioctl_numbers.is_empty() {
        let by_number = ioctl_numbers
            .iter()
            .map(|&(number, _)| {
                // The kernel takes the request as an unsigned int: compare
                // the low 32 bits, whatever the caller left above them.
                let condition = SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    u64::from(number as u32),
                )?;
                SeccompRule::new(vec![condition])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot build the seccomp filter's ioctl rules: {e}"))?;
        rules.insert(libc::SYS_ioctl, by_number);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}"))
}

/// The process-wide filter, as BPF.
fn program(mismatch: SeccompAction) -> Result<BpfProgram, String> {
    compile(ALLOWED, &[], mismatch)
}

/// A role's filter, as BPF.
fn role_program(role: Role, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    compile(&calls(role), &ioctls(role), mismatch)
        .map_err(|e| format!("{} ({role:?}): {e}", role.as_words()))
}

fn mismatch_action(mode: Mode) -> SeccompAction {
    match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    }
}

/// Installs the filter on every thread of lg. Called once the guest is set
/// up and the privileges are dropped, before the vCPUs start.
pub fn confine() -> Result<(), String> {
    let mode = mode()?;
    if mode == Mode::Off {
        let _ = CONFINED.set(mode);
        log::warn!("LG_SECCOMP=off: lg runs without its seccomp filter");
        return Ok(());
    }
    if mode != Mode::Log {
        install_refusal_handler();
    }
    let program = program(mismatch_action(mode))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    let _ = CONFINED.set(mode);
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

/// Narrows the calling thread to `role`'s filter, on top of the
/// process-wide one. Does nothing before [`confine`] ran, with
/// `LG_SECCOMP=off`, or on a thread that already has a role.
pub fn confine_thread(role: Role) -> Result<(), String> {
    let Some(&mode) = CONFINED.get() else {
        return Ok(());
    };
    if mode == Mode::Off || ROLE.with(Cell::get).is_some() {
        return Ok(());
    }
    let program = role_program(role, mismatch_action(mode))?;
    seccompiler::apply_filter(&program).map_err(|e| {
        format!(
            "cannot install the seccomp filter of {}: {e}",
            role.as_words()
        )
    })?;
    ROLE.with(|current| current.set(Some(role)));
    log::debug!(
        "seccomp: {} narrowed to {} system calls",
        role.as_words(),
        calls(role).len()
    );
    if mode == Mode::TestRole(role) {
        role.forbidden_probe();
    }
    Ok(())
}

/// [`confine_thread`] for threads that cannot report an error to anyone
/// who could act on it (a device's I/O thread): a thread that cannot be
/// narrowed must not go on, so lg ends, tidily, with status 2.
pub fn confine_thread_or_end(role: Role) {
    if let Err(message) = confine_thread(role) {
        crate::launch::tidy_up();
        eprintln!("\r\nlg: {message}");
        std::process::exit(EXIT_REFUSED_CALL);
    }
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
extern "C" fn on_refused_call(
    _: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let mut message = [0u8; 256];
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
    if i64::from(call) == libc::SYS_ioctl && !context.is_null() {
        // A role refuses ioctls by request number: say which one. The
        // number is the call's second argument, in RSI when it was made.
        // SAFETY: with SA_SIGINFO the third argument is the interrupted
        // thread's ucontext_t, which the kernel wrote for this handler.
        let request = unsafe {
            (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSI as usize]
        };
        push(b" (ioctl ");
        push(hexadecimal(request as u32).as_slice());
        push(b")");
    }
    if let Some(role) = ROLE.with(Cell::get) {
        push(b" on ");
        push(role.as_words().as_bytes());
    }
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

/// `n` as 0x and eight hex digits, without allocating.
fn hexadecimal(n: u32) -> DecimalDigits {
    let mut digits = DecimalDigits {
        bytes: [0; 20],
        len: 10,
    };
    digits.bytes[0] = b'0';
    digits.bytes[1] = b'x';
    for i in 0..8 {
        let nibble = (n >> (28 - 4 * i)) & 0xf;
        digits.bytes[2 + i] = b"0123456789abcdef"[nibble as usize];
    }
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
        assert_eq!(hexadecimal(0x5412).as_slice(), b"0x00005412");
        assert_eq!(hexadecimal(0xc008_ae67).as_slice(), b"0xc008ae67");
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
    fn every_role_filter_compiles_and_narrows_the_process_wide_one() {
        for role in [Role::Vcpu, Role::DeviceIo, Role::Control] {
            assert!(role_program(role, SeccompAction::Trap).is_ok(), "{role:?}");
            assert!(role_program(role, SeccompAction::Log).is_ok(), "{role:?}");
            let calls = calls(role);
            for &(call, why) in &calls {
                assert!(
                    ALLOWED.iter().any(|&(allowed, _)| allowed == call),
                    "{role:?} allows {call} ({why}), which the process-wide filter refuses"
                );
            }
            let mut numbers: Vec<libc::c_long> = calls.iter().map(|&(call, _)| call).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), calls.len(), "{role:?} lists a call twice");
            assert!(calls.len() < ALLOWED.len(), "{role:?} narrows nothing");
            let mut requests: Vec<libc::c_ulong> = ioctls(role).iter().map(|&(n, _)| n).collect();
            requests.sort_unstable();
            requests.dedup();
            assert_eq!(
                requests.len(),
                ioctls(role).len(),
                "{role:?} lists an ioctl twice"
            );
            assert!(
                !requests.contains(&libc::TIOCSTI),
                "{role:?} may type into the terminal"
            );
        }
    }

    fn allows(role: Role, call: libc::c_long) -> bool {
        calls(role).iter().any(|&(allowed, _)| allowed == call)
    }

    #[test]
    fn each_role_keeps_only_what_its_threads_and_their_children_need() {
        // A device thread is started by a vCPU thread and inherits its
        // filter: the vCPU's must allow everything a device thread's does,
        // and the call that installs the device thread's own.
        for &(call, why) in &calls(Role::DeviceIo) {
            assert!(
                allows(Role::Vcpu, call),
                "a device thread needs {call} ({why})"
            );
        }
        for &(number, why) in &ioctls(Role::DeviceIo) {
            assert!(
                ioctls(Role::Vcpu).iter().any(|&(n, _)| n == number),
                "a device thread needs ioctl {number:#x} ({why})"
            );
        }
        assert!(allows(Role::Vcpu, libc::SYS_seccomp));
        // Once narrowed, no thread narrows again, and none opens a file,
        // runs a program or makes a socket.
        for role in [Role::DeviceIo, Role::Control] {
            assert!(!allows(role, libc::SYS_seccomp), "{role:?}");
        }
        for role in [Role::Vcpu, Role::DeviceIo, Role::Control] {
            for call in [libc::SYS_openat, libc::SYS_execve, libc::SYS_socket] {
                assert!(!allows(role, call), "{role:?} allows {call}");
            }
        }
        // Device threads start no thread and touch no socket.
        for call in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_accept4,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_shutdown,
        ] {
            assert!(!allows(Role::DeviceIo, call), "device threads allow {call}");
        }
        // vCPUs take no connection; the control thread runs no guest.
        assert!(!allows(Role::Vcpu, libc::SYS_accept4));
        assert!(!ioctls(Role::Control).iter().any(|&(n, _)| n == KVM_RUN()));
    }

    /// Calls `ask` (one kvm-ioctls method) on a thread whose filter makes
    /// ioctl request `number`, and only it, fail with an unusual errno:
    /// the call fails with that errno exactly when kvm-ioctls sends
    /// `number`.
    fn sends(number: libc::c_ulong, ask: impl FnOnce() -> Option<i32> + Send) -> bool {
        const MARK: u32 = 133; // EHWPOISON: nothing KVM says to these calls.
        let condition = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(number as u32),
        )
        .unwrap();
        let rules = [(
            libc::SYS_ioctl,
            vec![SeccompRule::new(vec![condition]).unwrap()],
        )]
        .into_iter()
        .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(MARK),
            TargetArch::x86_64,
        )
        .unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    seccompiler::apply_filter(&program).unwrap();
                    ask() == Some(MARK as i32)
                })
                .join()
                .unwrap()
        })
    }

    #[test]
    fn the_kvm_ioctl_numbers_are_the_ones_kvm_ioctls_sends() {
        use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_sregs};
        use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch};
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipped: no /dev/kvm here");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let event = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let errno = |e: kvm_ioctls::Error| Some(e.errno());
        assert!(sends(KVM_RUN(), || vcpu.run().err().and_then(errno)));
        assert!(sends(KVM_GET_REGS(), || vcpu
            .get_regs()
            .err()
            .and_then(errno)));
        assert!(sends(KVM_SET_REGS(), || vcpu
            .set_regs(&kvm_regs::default())
            .err()
            .and_then(errno)));
        assert!(sends(KVM_GET_SREGS(), || vcpu
            .get_sregs()
            .err()
            .and_then(errno)));
        assert!(sends(KVM_SET_SREGS(), || vcpu
            .set_sregs(&kvm_sregs::default())
            .err()
            .and_then(errno)));
        assert!(sends(KVM_GET_FPU(), || vcpu
            .get_fpu()
            .err()
            .and_then(errno)));
        assert!(sends(KVM_SET_FPU(), || vcpu
            .set_fpu(&kvm_fpu::default())
            .err()
            .and_then(errno)));
        assert!(sends(KVM_SET_GUEST_DEBUG(), || vcpu
            .set_guest_debug(&kvm_guest_debug::default())
            .err()
            .and_then(errno)));
        assert!(sends(KVM_IRQ_LINE(), || vm
            .set_irq_line(4, true)
            .err()
            .and_then(errno)));
        let routing = kvm_bindings::KvmIrqRouting::new(0).unwrap();
        assert!(sends(KVM_SET_GSI_ROUTING(), || vm
            .set_gsi_routing(&routing)
            .err()
            .and_then(errno)));
        assert!(sends(KVM_IOEVENTFD(), || vm
            .register_ioevent(&event, &IoEventAddress::Mmio(0x1000), NoDatamatch)
            .err()
            .and_then(errno)));
        assert!(sends(KVM_IRQFD(), || vm
            .register_irqfd(&event, 40)
            .err()
            .and_then(errno)));
        assert!(sends(KVM_REGISTER_COALESCED_MMIO(), || vm
            .register_coalesced_mmio(IoEventAddress::Pio(0x3f8), 1)
            .err()
            .and_then(errno)));
        assert!(sends(KVM_UNREGISTER_COALESCED_MMIO(), || vm
            .unregister_coalesced_mmio(IoEventAddress::Pio(0x3f8), 1)
            .err()
            .and_then(errno)));
        // And the check itself can fail: KVM_RUN's number is not GET_REGS's.
        assert!(!sends(KVM_RUN(), || vcpu.get_regs().err().and_then(errno)));
    }

    #[test]
    fn lg_seccomp_takes_on_log_or_off() {
        assert_eq!(parse_mode(None), Ok(Mode::Enforce));
        assert_eq!(parse_mode(Some("on")), Ok(Mode::Enforce));
        assert_eq!(parse_mode(Some("log")), Ok(Mode::Log));
        assert_eq!(parse_mode(Some("off")), Ok(Mode::Off));
        assert_eq!(parse_mode(Some("test")), Ok(Mode::Test));
        assert_eq!(
            parse_mode(Some("test-vcpu")),
            Ok(Mode::TestRole(Role::Vcpu))
        );
        assert_eq!(
            parse_mode(Some("test-device")),
            Ok(Mode::TestRole(Role::DeviceIo))
        );
        assert_eq!(
            parse_mode(Some("test-control")),
            Ok(Mode::TestRole(Role::Control))
        );
        assert!(parse_mode(Some("maybe"))
            .unwrap_err()
            .contains("LG_SECCOMP=maybe"));
    }
}
