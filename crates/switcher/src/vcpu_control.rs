//! Reaching into running vCPUs: pause, resume, and read their registers.
//!
//! A vCPU's registers can only be read on its own thread, and that thread
//! spends its life inside `KVM_RUN`, where the guest may stay for as long as
//! it likes (a guest idling in HLT does not come back at all). So `lg regs`,
//! `lg pause` and the page-table walk (which needs CR3) go through a small
//! handshake:
//!
//! 1. the asker records what it wants in the shared [`VcpuControl`] state;
//! 2. it *kicks* the vCPU thread with a signal whose handler does nothing,
//!    so `KVM_RUN` returns `EINTR` and the thread comes back to its loop;
//! 3. before every `KVM_RUN` the thread calls [`VcpuControl::checkpoint`],
//!    which serves what was asked (a register snapshot) and, while the
//!    guest is paused, parks the thread on a condition variable;
//! 4. the asker waits on the same condition variable for the answer.
//!
//! A kick can land while the thread is outside `KVM_RUN` (handling an exit)
//! and be lost; the thread then enters `KVM_RUN` and would sleep there. So
//! the asker re-sends the kick every few milliseconds until it is answered,
//! rather than relying on one signal: simple, and correct without
//! `immediate_exit`, which would need the vCPU's `kvm_run` page from another
//! thread.

use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// How long an asker waits for a vCPU before giving up with an error: a
/// vCPU thread that does not answer in this long is stuck in the host.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an unanswered kick is repeated.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// A vCPU's registers at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Registers {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
}

/// The shared state between the vCPU threads and whoever inspects them.
pub struct VcpuControl {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Whether the guest should be paused; each vCPU parks at its next
    /// checkpoint.
    paused: bool,
    vcpus: Vec<VcpuState>,
    /// The guest has ended: nobody will answer any more.
    ended: bool,
}

#[derive(Default)]
struct VcpuState {
    /// The vCPU's thread, once it has started (the kick's target).
    thread: Option<libc::pthread_t>,
    /// Parked at a checkpoint because the guest is paused.
    parked: bool,
    /// A register snapshot has been asked for.
    snapshot_wanted: bool,
    /// The snapshot, once taken.
    snapshot: Option<Result<Registers, String>>,
}

impl VcpuControl {
    /// Control over `vcpus` vCPUs, none started yet.
    pub fn new(vcpus: usize) -> VcpuControl {
        install_kick_handler();
        VcpuControl {
            state: Mutex::new(State {
                paused: false,
                vcpus: (0..vcpus).map(|_| VcpuState::default()).collect(),
                ended: false,
            }),
            changed: Condvar::new(),
        }
    }

    pub fn vcpu_count(&self) -> usize {
        self.lock().vcpus.len()
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Pauses the guest: returns once every vCPU is parked outside
    /// `KVM_RUN`.
    pub fn pause(&self) -> Result<(), String> {
        let mut state = self.lock();
        state.paused = true;
        let all = 0..state.vcpus.len();
        self.wait_for(state, all, |vcpu| vcpu.parked || vcpu.thread.is_none())
            .map(drop)
    }

    /// Lets a paused guest run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// The registers of vCPU `index`, taken on its own thread.
    pub fn registers(&self, index: usize) -> Result<Registers, String> {
        let mut state = self.lock();
        let count = state.vcpus.len();
        let Some(vcpu) = state.vcpus.get_mut(index) else {
            return Err(format!(
                "there is no vCPU {index} (the guest has {count}: 0 to {})",
                count - 1
            ));
        };
        vcpu.snapshot = None;
        vcpu.snapshot_wanted = true;
        let mut state = self.wait_for(state, index..index + 1, |vcpu| vcpu.snapshot.is_some())?;
        state.vcpus[index]
            .snapshot
            .take()
            .unwrap_or_else(|| Err("the snapshot vanished".into()))
    }

    /// Kicks the vCPUs in `which` until each satisfies `answered`, or the
    /// guest ends, or time runs out.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        which: std::ops::Range<usize>,
        answered: impl Fn(&VcpuState) -> bool,
    ) -> Result<MutexGuard<'a, State>, String> {
        self.changed.notify_all();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if state.ended {
                return Err("the guest has ended".into());
            }
            let waiting: Vec<usize> = which
                .clone()
                .filter(|&i| !answered(&state.vcpus[i]))
                .collect();
            let Some(&first) = waiting.first() else {
                return Ok(state);
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "vCPU {first} did not answer within {ANSWER_TIMEOUT:?}"
                ));
            }
            for &i in &waiting {
                if let Some(thread) = state.vcpus[i].thread {
                    kick(thread);
                }
            }
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by vCPU `index`'s thread when it starts.
    pub(crate) fn register_thread(&self, index: usize) {
        if let Some(vcpu) = self.lock().vcpus.get_mut(index) {
            // SAFETY: pthread_self has no preconditions.
            vcpu.thread = Some(unsafe { libc::pthread_self() });
        }
    }

    /// Called by vCPU `index`'s thread before each `KVM_RUN`: serves any
    /// snapshot asked for, and parks while the guest is paused.
    pub(crate) fn checkpoint(&self, index: usize, fd: &VcpuFd) {
        let mut state = self.lock();
        loop {
            let paused = state.paused;
            let Some(vcpu) = state.vcpus.get_mut(index) else {
                return;
            };
            if vcpu.snapshot_wanted {
                vcpu.snapshot_wanted = false;
                vcpu.snapshot = Some(snapshot(fd));
                self.changed.notify_all();
            }
            if !paused {
                if vcpu.parked {
                    vcpu.parked = false;
                }
                return;
            }
            if !vcpu.parked {
                vcpu.parked = true;
                self.changed.notify_all();
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Called when the guest has ended, so askers stop waiting.
    pub(crate) fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }
}

fn snapshot(fd: &VcpuFd) -> Result<Registers, String> {
    let regs = fd
        .get_regs()
        .map_err(|e| format!("cannot read the registers: {e}"))?;
    let sregs = fd
        .get_sregs()
        .map_err(|e| format!("cannot read the special registers: {e}"))?;
    Ok(Registers { regs, sregs })
}

/// The signal that kicks a vCPU out of `KVM_RUN`: the first real-time
/// signal, which nothing else in lg uses.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread, which lives until the process
    // ends (lg never joins or detaches them before exit), and the signal
    // has a handler installed, so it cannot kill the process.
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Installs the do-nothing handler, without SA_RESTART so `KVM_RUN`
/// returns `EINTR` instead of being restarted.
fn install_kick_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is an async-signal-safe function that does
        // nothing; sigaction only reads `action`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_that_does_not_exist_is_named() {
        let control = VcpuControl::new(2);
        let error = control.registers(5).unwrap_err();
        assert!(
            error.contains("no vCPU 5") && error.contains("0 to 1"),
            "{error}"
        );
    }

    #[test]
    fn pausing_vcpus_that_never_started_returns_at_once() {
        let control = VcpuControl::new(2);
        control.pause().unwrap();
        assert!(control.is_paused());
        control.resume();
        assert!(!control.is_paused());
    }

    #[test]
    fn an_ended_guest_answers_nothing() {
        let control = VcpuControl::new(1);
        control.end();
        assert_eq!(control.registers(0).unwrap_err(), "the guest has ended");
    }
}
