//! The guest as gdbstub sees it: a multi-threaded target whose threads are
//! the vCPUs (vCPU n is gdb's thread n + 1, since gdb's thread ids start at
//! 1), and the blocking event loop that waits for them.
//!
//! Every method here runs on the session's thread while the guest is
//! stopped (gdb's all-stop mode), and reaches a vCPU only through
//! [`VcpuControl`]: registers are read and written by a job on the vCPU's own
//! thread, memory through the stopped vCPU's page tables ([`crate::memory`]).
//! Nothing the guest holds in its registers or memory can make this code
//! panic; a request that cannot be met is an error packet for gdb.

use std::io;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints as BreakpointsExt, BreakpointsOps, HwBreakpoint as HwBreakpointExt,
    HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use shadow_mmu::GuestMemory;
use switcher::{
    Breakpoints, DebugEvent, DebugStop, HwBreakpoint, HwKind, Registers, RunAction, VcpuControl,
};

use crate::breakpoints::SoftwareBreakpoints;
use crate::memory::{self, AddressSpace};
use crate::registers;

/// How often the event loop looks at the connection while the guest runs
/// (for gdb's Ctrl-C): short enough to feel immediate.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// EFAULT, the error gdb gets for memory it cannot have.
const BAD_ADDRESS: u8 = 14;

/// The guest, while gdb is attached.
pub(crate) struct GuestTarget {
    vcpus: Arc<VcpuControl>,
    memory: Arc<GuestMemory>,
    software: SoftwareBreakpoints,
    /// Hardware breakpoints and watchpoints (the software list is filled
    /// in from `software` when the guest resumes).
    hardware: Breakpoints,
    /// What gdb called each watchpoint (x86 cannot watch reads alone, so a
    /// read watchpoint is a read-or-write one underneath).
    watch_kinds: [Option<WatchKind>; switcher::debug::HW_SLOTS],
    /// How each vCPU goes on at the next resume; `None`: as gdbstub's
    /// default (continue, or stay under scheduler locking).
    actions: Vec<Option<RunAction>>,
    scheduler_locked: bool,
    /// Registers read since the guest stopped, per vCPU.
    cached: Vec<Option<Registers>>,
    /// The vCPU gdb last looked at: whose page tables place a software
    /// breakpoint, and which thread a Ctrl-C stop names.
    current: usize,
    /// Detached already: the guest is gdb's no more.
    detached: bool,
}

impl GuestTarget {
    pub(crate) fn new(vcpus: Arc<VcpuControl>, memory: Arc<GuestMemory>) -> GuestTarget {
        let count = vcpus.vcpu_count();
        GuestTarget {
            vcpus,
            memory,
            software: SoftwareBreakpoints::default(),
            hardware: Breakpoints::default(),
            watch_kinds: [None; switcher::debug::HW_SLOTS],
            actions: vec![None; count],
            scheduler_locked: false,
            cached: vec![None; count],
            current: 0,
            detached: false,
        }
    }

    /// Takes every breakpoint out and lets the guest run as if gdb had
    /// never come. Also done on drop, so a session that ends by a panic or
    /// a dropped connection still leaves the guest clean.
    pub(crate) fn detach(&mut self) {
        if std::mem::replace(&mut self.detached, true) {
            return;
        }
        self.software.remove_all(&self.memory);
        self.hardware = Breakpoints::default();
        self.watch_kinds = [None; switcher::debug::HW_SLOTS];
        if let Err(e) = self.vcpus.stop_debugging() {
            log::warn!("gdb: while detaching: {e}");
        }
    }

    fn vcpu(&self, tid: Tid) -> Result<usize, TargetError<String>> {
        let index = tid.get() - 1;
        if index < self.cached.len() {
            Ok(index)
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn registers(&mut self, index: usize) -> Result<Registers, TargetError<String>> {
        if let Some(registers) = self.cached[index] {
            return Ok(registers);
        }
        let registers = self.vcpus.registers(index).map_err(|e| {
            log::warn!("gdb: cannot read vCPU {index}'s registers: {e}");
            TargetError::NonFatal
        })?;
        self.cached[index] = Some(registers);
        Ok(registers)
    }

    fn address_space(&mut self, index: usize) -> Result<AddressSpace, TargetError<String>> {
        let sregs = self.registers(index)?.sregs;
        AddressSpace::of(&sregs).map_err(|e| {
            log::info!("gdb: vCPU {index}'s memory: {e}");
            TargetError::Errno(BAD_ADDRESS)
        })
    }

    /// Pauses every vCPU, after a stop: gdb's all-stop mode.
    fn stop_all(&mut self) {
        if let Err(e) = self.vcpus.pause() {
            log::warn!("gdb: not every vCPU stopped: {e}");
        }
        self.cached.iter_mut().for_each(|cached| *cached = None);
    }

    fn breakpoints(&self) -> Breakpoints {
        Breakpoints {
            software: self.software.addresses(),
            hardware: self.hardware.hardware,
        }
    }

    fn set_action(&mut self, tid: Tid, action: RunAction) -> Result<(), String> {
        let index = tid.get() - 1;
        match self.actions.get_mut(index) {
            Some(slot) => {
                *slot = Some(action);
                Ok(())
            }
            None => Err(format!("gdb resumed thread {tid}, which is no vCPU")),
        }
    }

    /// What gdb hears of a vCPU's stop.
    fn stop_reason(&mut self, index: usize, stop: DebugStop) -> MultiThreadStopReason<u64> {
        self.current = index;
        let tid = tid_of(index);
        match stop {
            DebugStop::SoftwareBreakpoint { .. } => MultiThreadStopReason::SwBreak(tid),
            DebugStop::HardwareBreakpoint { .. } => MultiThreadStopReason::HwBreak(tid),
            DebugStop::Watchpoint { slot, addr, kind } => MultiThreadStopReason::Watch {
                tid,
                kind: self.watch_kinds[slot].unwrap_or(match kind {
                    HwKind::Write => WatchKind::Write,
                    _ => WatchKind::ReadWrite,
                }),
                addr,
            },
            DebugStop::Step => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
        }
    }
}

impl Drop for GuestTarget {
    fn drop(&mut self) {
        self.detach();
    }
}

fn tid_of(index: usize) -> Tid {
    NonZeroUsize::new(index + 1).unwrap_or(NonZeroUsize::MIN)
}

impl Target for GuestTarget {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for GuestTarget {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let index = self.vcpu(tid)?;
        self.current = index;
        let registers = self.registers(index)?;
        let fpu = self.vcpus.fpu(index).map_err(|e| {
            log::warn!("gdb: {e}");
            TargetError::NonFatal
        })?;
        *regs = registers::to_gdb(&registers.regs, &registers.sregs, &fpu);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let index = self.vcpu(tid)?;
        let mut registers = self.registers(index)?;
        let fail = |e: String| {
            log::warn!("gdb: cannot write vCPU {index}'s registers: {e}");
            TargetError::NonFatal
        };
        let mut fpu = self.vcpus.fpu(index).map_err(fail)?;
        let old_fpu = fpu;
        registers::from_gdb(regs, &mut registers.regs, &mut fpu);
        let space = self.address_space(index).ok();
        for (segment, selector) in registers::changed_segments(regs, &registers.sregs) {
            let loaded = registers::load_segment(segment, selector, &registers.sregs, |at| {
                let space = space.ok_or("the vCPU's paging mode is not modelled")?;
                let mut bytes = [0u8; 8];
                match memory::read(&self.memory, &space, at, &mut bytes) {
                    (8, _) => Ok(u64::from_le_bytes(bytes)),
                    (_, error) => Err(format!("cannot read the GDT at {at:#x}: {error:?}")),
                }
            })
            .map_err(fail)?;
            *segment.of(&mut registers.sregs) = loaded;
        }
        self.cached[index] = None;
        self.vcpus.set_registers(index, registers).map_err(fail)?;
        if fpu != old_fpu {
            self.vcpus.set_fpu(index, fpu).map_err(fail)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let index = self.vcpu(tid)?;
        self.current = index;
        let space = self.address_space(index)?;
        match memory::read(&self.memory, &space, start, data) {
            (0, Some(error)) if !data.is_empty() => {
                log::debug!("gdb: read at {start:#x}: {error}");
                Err(TargetError::Errno(BAD_ADDRESS))
            }
            (read, _) => Ok(read),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let index = self.vcpu(tid)?;
        self.current = index;
        let space = self.address_space(index)?;
        memory::write(&self.memory, &space, start, data).map_err(|error| {
            log::info!("gdb: write at {start:#x} refused: {error}");
            TargetError::Errno(BAD_ADDRESS)
        })
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), String> {
        (0..self.cached.len()).for_each(|index| thread_is_active(tid_of(index)));
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for GuestTarget {
    fn resume(&mut self) -> Result<(), String> {
        let default = if self.scheduler_locked {
            RunAction::Stay
        } else {
            RunAction::Continue
        };
        let actions: Vec<RunAction> = self.actions.iter().map(|a| a.unwrap_or(default)).collect();
        self.cached.iter_mut().for_each(|cached| *cached = None);
        self.vcpus.resume_debugged(&self.breakpoints(), &actions)
    }

    fn clear_resume_actions(&mut self) -> Result<(), String> {
        self.actions.iter_mut().for_each(|action| *action = None);
        self.scheduler_locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), String> {
        // A signal means nothing to a CPU: gdb passes one on only if told
        // to, and there is no process to deliver it to.
        self.set_action(tid, RunAction::Continue)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GuestTarget {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), String> {
        self.set_action(tid, RunAction::Step)
    }
}

impl MultiThreadSchedulerLocking for GuestTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), String> {
        self.scheduler_locked = true;
        Ok(())
    }
}

impl ThreadExtraInfo for GuestTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, String> {
        let text = format!("vCPU {}", tid.get() - 1);
        let len = text.len().min(buf.len());
        buf[..len].copy_from_slice(&text.as_bytes()[..len]);
        Ok(len)
    }
}

impl BreakpointsExt for GuestTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GuestTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let space = self.address_space(self.current)?;
        match self.software.plant(&self.memory, &space, addr) {
            Ok(()) => Ok(true),
            Err(error) => {
                log::info!("gdb: no software breakpoint at {addr:#x}: {error}");
                Err(TargetError::Errno(BAD_ADDRESS))
            }
        }
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.software.remove(&self.memory, addr))
    }
}

impl HwBreakpointExt for GuestTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .hardware
            .add_hardware(HwBreakpoint::execute(addr))
            .is_ok())
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.hardware.remove_hardware(HwBreakpoint::execute(addr)))
    }
}

/// The debug registers' view of a gdb watchpoint.
fn watchpoint(addr: u64, len: u64, kind: WatchKind) -> HwBreakpoint {
    HwBreakpoint {
        addr,
        len,
        kind: match kind {
            WatchKind::Write => HwKind::Write,
            WatchKind::Read | WatchKind::ReadWrite => HwKind::Access,
        },
    }
}

impl HwWatchpoint for GuestTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        match self.hardware.add_hardware(watchpoint(addr, len, kind)) {
            Ok(slot) => {
                self.watch_kinds[slot] = Some(kind);
                Ok(true)
            }
            Err(error) => {
                // gdb falls back to software watchpoints (single-stepping).
                log::info!("gdb: no hardware watchpoint at {addr:#x}: {error}");
                Ok(false)
            }
        }
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let bp = watchpoint(addr, len, kind);
        if let Some(slot) = self.hardware.hardware.iter().position(|s| *s == Some(bp)) {
            self.watch_kinds[slot] = None;
        }
        Ok(self.hardware.remove_hardware(bp))
    }
}

impl MonitorCmd for GuestTarget {
    /// `monitor regs`: lg's own register dump of the current vCPU (with the
    /// control registers gdb's x86-64 layout has no room for).
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), String> {
        let cmd = String::from_utf8_lossy(cmd);
        match cmd.trim() {
            "regs" => {
                let index = self.current;
                match self.registers(index) {
                    Ok(r) => {
                        gdbstub::outputln!(out, "vCPU {index}:");
                        for line in switcher::format_registers(&r.regs, &r.sregs).lines() {
                            gdbstub::outputln!(out, "{line}");
                        }
                    }
                    Err(_) => gdbstub::outputln!(out, "cannot read vCPU {index}'s registers"),
                }
            }
            _ => {
                gdbstub::outputln!(out, "lg's monitor commands:");
                gdbstub::outputln!(
                    out,
                    "  monitor regs   the current vCPU's registers, control registers included"
                );
            }
        }
        Ok(())
    }
}

/// gdbstub's blocking event loop over connection `C`.
pub(crate) struct GuestEventLoop<C>(PhantomData<C>);

impl<C: ConnectionExt<Error = io::Error> + AsFd> BlockingEventLoop for GuestEventLoop<C> {
    type Target = GuestTarget;
    type Connection = C;
    type StopReason = MultiThreadStopReason<u64>;

    /// Waits for a vCPU to stop, the guest to end, or gdb to say something
    /// (a Ctrl-C), whichever comes first.
    fn wait_for_stop_reason(
        target: &mut GuestTarget,
        conn: &mut C,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<String, io::Error>> {
        loop {
            match target.vcpus.wait_debug_event(POLL_INTERVAL) {
                Some(DebugEvent::Stop { vcpu, stop }) => {
                    target.stop_all();
                    return Ok(Event::TargetStopped(target.stop_reason(vcpu, stop)));
                }
                Some(DebugEvent::Ended) => {
                    return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(0)))
                }
                None => {}
            }
            if readable(conn).map_err(WaitForStopReasonError::Connection)? {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    /// gdb's Ctrl-C: stop every vCPU where it is.
    fn on_interrupt(target: &mut GuestTarget) -> Result<Option<Self::StopReason>, String> {
        target.stop_all();
        Ok(Some(MultiThreadStopReason::SignalWithThread {
            tid: tid_of(target.current),
            signal: Signal::SIGINT,
        }))
    }
}

/// Whether the connection has something to read (or has closed, which a
/// read then reports), without waiting.
fn readable(conn: &impl AsFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    let ready = nix::poll::poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(ready > 0)
}
