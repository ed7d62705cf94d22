//! Reaching into running vCPUs: pause, resume, run code on a vCPU's own
//! thread, and stop them all for a debugger.
//!
//! A vCPU's registers can only be read on its own thread, and that thread
//! spends its life inside `KVM_RUN`, where the guest may stay for as long as
//! it likes (a guest idling in HLT does not come back at all). So `lg regs`,
//! `lg pause`, the page-table walk (which needs CR3) and the gdb stub all go
//! through one small handshake:
//!
//! 1. the asker queues a *job* (a closure given the vCPU's `VcpuFd`) in the
//!    shared [`VcpuControl`] state, or sets `paused`;
//! 2. it *kicks* the vCPU thread with a signal whose handler does nothing,
//!    so `KVM_RUN` returns `EINTR` and the thread comes back to its loop;
//! 3. before every `KVM_RUN` the thread calls [`VcpuControl::checkpoint`],
//!    which runs the queued jobs and, while the guest is paused (or this
//!    vCPU is held by a debugger), parks the thread on a condition variable;
//! 4. the asker waits on the same condition variable for its job to be done,
//!    and takes the job's result from a channel.
//!
//! A kick can land while the thread is outside `KVM_RUN` (handling an exit)
//! and be lost; the thread then enters `KVM_RUN` and would sleep there. So
//! the asker re-sends the kick every few milliseconds until it is answered,
//! rather than relying on one signal: simple, and correct without
//! `immediate_exit`, which would need the vCPU's `kvm_run` page from another
//! thread.
//!
//! Debugging adds three things (the KVM side of breakpoints is
//! [`crate::debug`]'s): the breakpoints in force, which tell a debug exit
//! that is the debugger's from one that is the guest's own; per-vCPU
//! `held` and `stepping`, for gdb's "step this vCPU, keep that one"; and a
//! queue of stops. A vCPU that stops for the debugger pauses the whole
//! guest (gdb's all-stop mode) and queues the stop for the debugger's
//! thread, which takes it with [`VcpuControl::wait_debug_event`].

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_debug_exit_arch, kvm_fpu, kvm_guest_debug, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::debug::{self, Breakpoints, DebugStop};

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

/// Work for a vCPU's own thread, run at its next checkpoint.
type Job = Box<dyn FnOnce(&VcpuFd) + Send>;

/// How one vCPU goes on when a debugger lets the guest run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAction {
    /// Stays where it is (gdb's scheduler locking).
    Stay,
    /// Runs until something stops the guest.
    Continue,
    /// Runs one instruction, then stops the guest.
    Step,
}

/// What a debugger waiting on the guest hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugEvent {
    /// vCPU `vcpu` stopped for `stop`; the guest is pausing.
    Stop { vcpu: usize, stop: DebugStop },
    /// The guest has ended.
    Ended,
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
    /// The debugger's breakpoints, for telling its debug exits from the
    /// guest's own.
    breakpoints: Breakpoints,
    /// Stops the debugger has not taken yet, oldest first.
    stops: VecDeque<(usize, DebugStop)>,
}

#[derive(Default)]
struct VcpuState {
    /// The vCPU's thread, once it has started (the kick's target).
    thread: Option<libc::pthread_t>,
    /// Parked at a checkpoint, outside `KVM_RUN`.
    parked: bool,
    /// Kept parked even while the guest runs: a debugger said so.
    held: bool,
    /// Single-stepping for a debugger.
    stepping: bool,
    /// What `KVM_SET_GUEST_DEBUG` last gave this vCPU.
    guest_debug: kvm_guest_debug,
    /// Jobs waiting for the next checkpoint, and how many were ever queued
    /// and done: an asker waits until `jobs_done` reaches its job's number.
    jobs: VecDeque<Job>,
    jobs_queued: u64,
    jobs_done: u64,
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
                breakpoints: Breakpoints::default(),
                stops: VecDeque::new(),
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
    /// `KVM_RUN`. Called before the vCPUs start, it makes them park before
    /// their first instruction.
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

    /// Runs `job` on vCPU `index`'s own thread, outside `KVM_RUN`, and
    /// returns what it returned. This is the one way to call a vCPU ioctl
    /// from another thread. The vCPU is kicked out of the guest for it if
    /// need be, and goes on as before afterwards (parked if it was).
    pub fn on_vcpu<R: Send + 'static>(
        &self,
        index: usize,
        job: impl FnOnce(&VcpuFd) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (send, receive) = mpsc::channel();
        let mut state = self.lock();
        let count = state.vcpus.len();
        let Some(vcpu) = state.vcpus.get_mut(index) else {
            return Err(no_such_vcpu(index, count));
        };
        vcpu.jobs.push_back(Box::new(move |fd| {
            // The asker may have given up waiting; then nobody listens.
            let _ = send.send(job(fd));
        }));
        vcpu.jobs_queued += 1;
        let ticket = vcpu.jobs_queued;
        let _state = self.wait_for(state, index..index + 1, |vcpu| vcpu.jobs_done >= ticket)?;
        receive
            .try_recv()
            .map_err(|_| format!("vCPU {index} dropped the request"))
    }

    /// The registers of vCPU `index`, taken on its own thread.
    pub fn registers(&self, index: usize) -> Result<Registers, String> {
        self.on_vcpu(index, snapshot)?
    }

    /// Loads `registers` into vCPU `index` (for a debugger; the vCPU should
    /// be paused, or the guest will not expect the change).
    pub fn set_registers(&self, index: usize, registers: Registers) -> Result<(), String> {
        self.on_vcpu(index, move |fd| {
            fd.set_sregs(&registers.sregs)
                .map_err(|e| format!("KVM refused the special registers: {e}"))?;
            fd.set_regs(&registers.regs)
                .map_err(|e| format!("KVM refused the registers: {e}"))
        })?
    }

    /// The x87 and SSE state of vCPU `index`.
    pub fn fpu(&self, index: usize) -> Result<kvm_fpu, String> {
        self.on_vcpu(index, |fd| {
            fd.get_fpu()
                .map_err(|e| format!("cannot read the FPU registers: {e}"))
        })?
    }

    /// Loads the x87 and SSE state of vCPU `index`.
    pub fn set_fpu(&self, index: usize, fpu: kvm_fpu) -> Result<(), String> {
        self.on_vcpu(index, move |fd| {
            fd.set_fpu(&fpu)
                .map_err(|e| format!("KVM refused the FPU registers: {e}"))
        })?
    }

    /// Lets a guest paused for a debugger run again: every vCPU gets
    /// `breakpoints`, and goes on as `actions` says (one per vCPU; a vCPU
    /// without one continues). Stops queued while the guest was pausing are
    /// dropped: a vCPU that was at a breakpoint hits it again.
    pub fn resume_debugged(
        &self,
        breakpoints: &Breakpoints,
        actions: &[RunAction],
    ) -> Result<(), String> {
        let count = self.vcpu_count();
        let action = |index: usize| actions.get(index).copied().unwrap_or(RunAction::Continue);
        for index in 0..count {
            let wanted = breakpoints.guest_debug(action(index) == RunAction::Step);
            self.set_guest_debug(index, wanted)?;
        }
        let mut state = self.lock();
        state.breakpoints = breakpoints.clone();
        state.stops.clear();
        for (index, vcpu) in state.vcpus.iter_mut().enumerate() {
            vcpu.held = action(index) == RunAction::Stay;
            vcpu.stepping = action(index) == RunAction::Step;
        }
        state.paused = false;
        self.changed.notify_all();
        Ok(())
    }

    /// Ends debugging: no breakpoints, no single-step, no held vCPU, and
    /// the guest running. Goes as far as it can when a vCPU does not answer,
    /// and says which did not.
    pub fn stop_debugging(&self) -> Result<(), String> {
        if self.lock().ended {
            // Nothing left to run, or to take breakpoints out of.
            return Ok(());
        }
        let mut first_error = None;
        for index in 0..self.vcpu_count() {
            if let Err(e) = self.set_guest_debug(index, kvm_guest_debug::default()) {
                first_error.get_or_insert(e);
            }
        }
        let mut state = self.lock();
        state.breakpoints = Breakpoints::default();
        state.stops.clear();
        for vcpu in &mut state.vcpus {
            vcpu.held = false;
            vcpu.stepping = false;
        }
        state.paused = false;
        self.changed.notify_all();
        first_error.map_or(Ok(()), Err)
    }

    /// Gives vCPU `index` the debug settings `wanted`, unless it has them.
    fn set_guest_debug(&self, index: usize, wanted: kvm_guest_debug) -> Result<(), String> {
        let current = self.lock().vcpus.get(index).map(|vcpu| vcpu.guest_debug);
        if current == Some(wanted) {
            return Ok(());
        }
        let applied = self.on_vcpu(index, move |fd| apply_guest_debug(fd, wanted))??;
        if let Some(vcpu) = self.lock().vcpus.get_mut(index) {
            vcpu.guest_debug = applied;
        }
        Ok(())
    }

    /// Waits up to `timeout` for a vCPU to stop for the debugger, or for
    /// the guest to end; `None` if neither happened.
    pub fn wait_debug_event(&self, timeout: Duration) -> Option<DebugEvent> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some((vcpu, stop)) = state.stops.pop_front() {
                return Some(DebugEvent::Stop { vcpu, stop });
            }
            if state.ended {
                return Some(DebugEvent::Ended);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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

    /// Called by vCPU `index`'s thread before each `KVM_RUN`: runs the jobs
    /// queued for it, and parks while the guest is paused or the vCPU held.
    pub(crate) fn checkpoint(&self, index: usize, fd: &VcpuFd) {
        let mut state = self.lock();
        loop {
            let paused = state.paused;
            let Some(vcpu) = state.vcpus.get_mut(index) else {
                return;
            };
            if let Some(job) = vcpu.jobs.pop_front() {
                // Not under the lock: a job is an ioctl or two, but other
                // vCPUs and askers need not wait for it.
                drop(state);
                job(fd);
                state = self.lock();
                if let Some(vcpu) = state.vcpus.get_mut(index) {
                    vcpu.jobs_done += 1;
                }
                self.changed.notify_all();
                continue;
            }
            if !paused && !vcpu.held {
                vcpu.parked = false;
                return;
            }
            if !vcpu.parked {
                vcpu.parked = true;
                self.changed.notify_all();
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Called by vCPU `index`'s thread on `KVM_EXIT_DEBUG`. A stop the
    /// debugger asked for pauses the guest (the other vCPUs are kicked now;
    /// the debugger's `pause` makes sure they park) and is queued for the
    /// debugger; any other debug exception goes back to the guest.
    pub(crate) fn debug_exit(&self, index: usize, fd: &VcpuFd, exit: &kvm_debug_exit_arch) {
        let mut state = self.lock();
        let Some(vcpu) = state.vcpus.get(index) else {
            return;
        };
        let current = vcpu.guest_debug;
        match debug::classify(exit, &state.breakpoints, vcpu.stepping) {
            Some(stop) => {
                state.stops.push_back((index, stop));
                state.paused = true;
                for (other, vcpu) in state.vcpus.iter().enumerate() {
                    if let (true, Some(thread)) = (other != index, vcpu.thread) {
                        kick(thread);
                    }
                }
                self.changed.notify_all();
            }
            None => {
                drop(state);
                if let Err(e) = fd.set_guest_debug(&debug::reinjection(exit, &current)) {
                    log::warn!(
                        "vCPU {index}: cannot hand debug exception {} at {:#x} back to the guest: {e}",
                        exit.exception,
                        exit.pc
                    );
                }
            }
        }
    }

    /// Called when the guest has ended, so askers stop waiting.
    pub(crate) fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }
}

fn no_such_vcpu(index: usize, count: usize) -> String {
    format!(
        "there is no vCPU {index} (the guest has {count}: 0 to {})",
        count.saturating_sub(1)
    )
}

/// Sets `wanted` on the vCPU, without IRQ blocking if this kernel predates
/// it; returns what was set.
fn apply_guest_debug(fd: &VcpuFd, wanted: kvm_guest_debug) -> Result<kvm_guest_debug, String> {
    match fd.set_guest_debug(&wanted) {
        Ok(()) => Ok(wanted),
        Err(e) if e.errno() == libc::EINVAL => {
            let older = debug::without_irq_blocking(wanted);
            if older == wanted {
                return Err(format!("KVM refused the debug settings: {e}"));
            }
            fd.set_guest_debug(&older)
                .map(|()| older)
                .map_err(|e| format!("KVM refused the debug settings: {e}"))
        }
        Err(e) => Err(format!("KVM refused the debug settings: {e}")),
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
        assert_eq!(
            control.wait_debug_event(Duration::ZERO),
            Some(DebugEvent::Ended)
        );
        assert_eq!(control.stop_debugging(), Ok(()));
    }

    mod on_kvm {
        //! The debugging handshake on a real vCPU running a few real-mode
        //! instructions: no kernel needed, only a /dev/kvm that can run
        //! real mode (even these machines' kvm_pvm can). Skipped, with a
        //! word, where there is none.

        use std::sync::Arc;

        use shadow_mmu::GuestMemory;

        use super::*;
        use crate::cpu::Vcpu;
        use crate::debug::HwBreakpoint;
        use crate::run::{self, ExitHandler, ExitStats, GuestEnd, PortAction};

        /// nop; nop; inc ax; mov dx, 0x604; out dx, al; jmp $
        const CODE: [u8; 9] = [0x90, 0x90, 0x40, 0xba, 0x04, 0x06, 0xee, 0xeb, 0xfe];
        const CODE_AT: u64 = 0x1000;
        const POWER_OFF_PORT: u16 = 0x604;

        struct PowerOffPort;

        impl ExitHandler for PowerOffPort {
            fn port_in(&self, _: u16, data: &mut [u8]) {
                data.fill(0xff);
            }
            fn port_out(&self, port: u16, _: &[u8]) -> PortAction {
                match port {
                    POWER_OFF_PORT => PortAction::End(GuestEnd::PowerOff),
                    _ => PortAction::Continue,
                }
            }
            fn mmio_read(&self, _: u64, data: &mut [u8]) {
                data.fill(0xff);
            }
            fn mmio_write(&self, _: u64, _: &[u8]) -> PortAction {
                PortAction::Continue
            }
        }

        fn real_mode_guest() -> Option<(kvm_ioctls::VmFd, GuestMemory, Vcpu)> {
            crate::test_guest::real_mode_guest(&CODE, CODE_AT)
        }

        #[test]
        fn a_breakpoint_and_a_step_stop_the_guest_and_detaching_lets_it_end() {
            let Some((_vm, _memory, vcpu)) = real_mode_guest() else {
                eprintln!("skipped: no /dev/kvm that runs real mode here");
                return;
            };
            let control = Arc::new(VcpuControl::new(1));
            // As --gdb-wait does: parked before the first instruction.
            control.pause().unwrap();
            let runner = {
                let control = Arc::clone(&control);
                let stats: Arc<[ExitStats]> = Arc::new([ExitStats::default()]);
                std::thread::spawn(move || {
                    run::run(vec![vcpu], Arc::new(PowerOffPort), stats, control)
                })
            };
            let wait = || control.wait_debug_event(Duration::from_secs(10));
            assert_eq!(control.registers(0).unwrap().regs.rip, CODE_AT);

            let mut breakpoints = Breakpoints::default();
            breakpoints
                .add_hardware(HwBreakpoint::execute(CODE_AT + 2))
                .unwrap();
            control
                .resume_debugged(&breakpoints, &[RunAction::Continue])
                .unwrap();
            assert_eq!(
                wait(),
                Some(DebugEvent::Stop {
                    vcpu: 0,
                    stop: DebugStop::HardwareBreakpoint {
                        slot: 0,
                        addr: CODE_AT + 2
                    }
                })
            );
            control.pause().unwrap();
            let stopped = control.registers(0).unwrap().regs;
            assert_eq!((stopped.rip, stopped.rax), (CODE_AT + 2, 0));

            control
                .resume_debugged(&Breakpoints::default(), &[RunAction::Step])
                .unwrap();
            assert_eq!(
                wait(),
                Some(DebugEvent::Stop {
                    vcpu: 0,
                    stop: DebugStop::Step
                })
            );
            control.pause().unwrap();
            let stepped = control.registers(0).unwrap().regs;
            assert_eq!((stepped.rip, stepped.rax), (CODE_AT + 3, 1));

            control.stop_debugging().unwrap();
            assert_eq!(runner.join().unwrap(), GuestEnd::PowerOff);
            assert_eq!(wait(), Some(DebugEvent::Ended));
        }
    }
}
