//! The `KVM_RUN` loop: one thread per vCPU, each exit handed to the devices.
//!
//! KVM runs the guest until it touches something KVM does not emulate: an I/O
//! port or an MMIO address that belongs to one of lg's devices, or an event
//! only userspace can decide about (power-off, a triple fault). Each such
//! exit comes back here, on the vCPU's own thread, and is dispatched to the
//! [`ExitHandler`]. A vCPU thread that sees the guest end reports it on a
//! channel; the first report ends the guest as a whole. A debug exit (a
//! breakpoint or a single step, see [`crate::debug`]) goes to
//! [`VcpuControl`], which pauses the guest for the debugger.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::coalesced::{CoalescedRing, CoalescedWrite, REPLAY_PERIOD};
use crate::cpu::Vcpu;
use crate::vcpu_control::VcpuControl;

/// How the guest's life ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest powered itself off.
    PowerOff,
    /// The guest asked to be reset.
    Reboot,
    /// The guest kernel panicked and said so (pvpanic).
    Panic,
    /// The guest or a vCPU failed; the string says how, in one sentence.
    Crash(String),
}

/// What the switcher should do after a device handled a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PortAction {
    /// Resume the guest.
    #[default]
    Continue,
    /// The write ended the guest (a power-off or reset register).
    End(GuestEnd),
}

/// The devices, as the switcher sees them: something that answers port and
/// MMIO accesses. Called concurrently from every vCPU thread.
pub trait ExitHandler: Send + Sync {
    /// The guest reads `data.len()` bytes from I/O port `port`.
    fn port_in(&self, port: u16, data: &mut [u8]);
    /// The guest writes `data` to I/O port `port`.
    fn port_out(&self, port: u16, data: &[u8]) -> PortAction;
    /// The guest reads `data.len()` bytes at guest-physical `addr`, which is
    /// not RAM.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest writes `data` at guest-physical `addr`, which is not RAM.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> PortAction;
    /// Writes KVM kept in the coalesced ring instead of exiting, oldest
    /// first (see [`crate::coalesced`]), handed over before the exit that
    /// follows them. Each goes to [`port_out`](Self::port_out) or
    /// [`mmio_write`](Self::mmio_write) in turn unless the handler takes
    /// the batch at once; the first write that ends the guest decides.
    fn coalesced_writes(&self, writes: &[CoalescedWrite]) -> PortAction {
        each_coalesced_write(self, writes)
    }
    /// Called every [`REPLAY_PERIOD`] from the thread that waits for the
    /// guest's end (after replaying the coalesced ring), and once more when
    /// the guest has ended: where a device passes on output it has been
    /// holding back (lg's UART holds its console's line until its end).
    fn pass_on_held_output(&self) {}
    /// Called on vCPU `index`'s thread before anything else: the
    /// launcher's chance to narrow what the thread may do (lg's vCPU
    /// seccomp filter). An error ends the guest as a crash of that vCPU.
    fn vcpu_thread_started(&self, _index: u8) -> Result<(), String> {
        Ok(())
    }
}

/// Hands each of `writes` to `handler`'s [`port_out`](ExitHandler::port_out)
/// or [`mmio_write`](ExitHandler::mmio_write) in turn, as if each had
/// exited; the first write that ends the guest decides.
pub fn each_coalesced_write<H: ExitHandler + ?Sized>(
    handler: &H,
    writes: &[CoalescedWrite],
) -> PortAction {
    let mut first_end = PortAction::Continue;
    for write in writes {
        let action = if write.pio {
            handler.port_out(write.address as u16, write.data())
        } else {
            handler.mmio_write(write.address, write.data())
        };
        if first_end == PortAction::Continue {
            first_end = action;
        }
    }
    first_end
}

/// How many exits of each kind one vCPU caused, for `--verbose` and
/// `lg stat`.
#[derive(Default, Debug)]
pub struct ExitStats {
    pub port_in: AtomicU64,
    pub port_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub halt: AtomicU64,
    pub interrupted: AtomicU64,
    /// Breakpoints and single steps (`KVM_EXIT_DEBUG`), the debugger's or
    /// the guest's own.
    pub debug: AtomicU64,
    pub other: AtomicU64,
}

impl ExitStats {
    /// Counts one exit, and logs the first of each kind: a reader following
    /// a boot with `--verbose` sees every new kind of exit as it appears.
    fn count(&self, counter: &AtomicU64, kind: &str, vcpu: u8) {
        if counter.fetch_add(1, Ordering::Relaxed) == 0 {
            log::info!("vCPU {vcpu}: first {kind} exit");
        }
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "exits: {} port in, {} port out, {} MMIO read, {} MMIO write, {} halt, {} interrupted, {} debug, {} other",
            load(&self.port_in),
            load(&self.port_out),
            load(&self.mmio_read),
            load(&self.mmio_write),
            load(&self.halt),
            load(&self.interrupted),
            load(&self.debug),
            load(&self.other),
        )
    }
}

/// Runs every vCPU on its own thread until the guest ends, and says how it
/// ended. `stats` has one entry per vCPU; `control` lets other threads
/// pause the vCPUs and read their registers. The vCPU threads still blocked
/// in `KVM_RUN` are left behind; the caller is expected to tidy up and end
/// the process.
pub fn run(
    vcpus: Vec<Vcpu>,
    handler: Arc<dyn ExitHandler>,
    stats: Arc<[ExitStats]>,
    control: Arc<VcpuControl>,
) -> GuestEnd {
    run_noting_first_entry(vcpus, handler, stats, control, None, Box::new(|| {}))
}

/// [`run`], replaying `ring` (KVM's coalesced writes, if the caller asked
/// KVM to keep any) before each exit and every [`REPLAY_PERIOD`] while the
/// guest runs, and calling `first_entry` on vCPU 0's thread just before
/// its first `KVM_RUN` (after gdb let it go, with `--gdb-wait`): the end of
/// the launcher's start-up, which it times.
pub fn run_noting_first_entry(
    vcpus: Vec<Vcpu>,
    handler: Arc<dyn ExitHandler>,
    stats: Arc<[ExitStats]>,
    control: Arc<VcpuControl>,
    ring: Option<CoalescedRing>,
    first_entry: Box<dyn FnOnce() + Send>,
) -> GuestEnd {
    let ring = ring.map(Arc::new);
    let (ended, end) = mpsc::channel();
    let mut first_entry = Some(first_entry);
    for vcpu in vcpus {
        let handler = Arc::clone(&handler);
        let stats = Arc::clone(&stats);
        let control = Arc::clone(&control);
        let ended = ended.clone();
        let ring = ring.clone();
        let name = format!("vcpu{}", vcpu.index);
        let first_entry = if vcpu.index == 0 {
            first_entry.take()
        } else {
            None
        };
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(why) = handler.vcpu_thread_started(vcpu.index) {
                let _ = ended.send(GuestEnd::Crash(why));
                return;
            }
            let index = usize::from(vcpu.index);
            control.register_thread(index);
            let why = match stats.get(index) {
                Some(stats) => run_vcpu(
                    vcpu,
                    handler.as_ref(),
                    stats,
                    &control,
                    ring.as_deref(),
                    first_entry,
                ),
                None => GuestEnd::Crash(format!("vCPU {index} has no statistics slot")),
            };
            let _ = ended.send(why);
        });
        if let Err(e) = spawned {
            return GuestEnd::Crash(format!("cannot start a vCPU thread: {e}"));
        }
    }
    drop(ended);
    let ended_without_reason =
        || GuestEnd::Crash("every vCPU thread ended without a reason".into());
    let why = loop {
        match end.recv_timeout(REPLAY_PERIOD) {
            Ok(why) => break why,
            // The last bytes of a message the guest wrote before going
            // quiet: no exit would replay them, or pass them on.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(ring) = &ring {
                    if let PortAction::End(why) = ring.replay(|w| handler.coalesced_writes(w)) {
                        break why;
                    }
                }
                handler.pass_on_held_output();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break ended_without_reason(),
        }
    };
    handler.pass_on_held_output();
    control.end();
    why
}

/// Where a vCPU was when it shut down, as " (last RIP ...)", or nothing
/// when the registers no longer say: on AMD, KVM resets the vCPU before
/// reporting the shutdown, so it reads as a CPU fresh from reset at
/// F000:FFF0, which would only mislead.
fn last_rip(vcpu: &Vcpu) -> String {
    let regs = vcpu.fd.get_regs();
    let sregs = vcpu.fd.get_sregs();
    match (regs, sregs) {
        (Ok(regs), Ok(sregs)) if !(regs.rip == 0xfff0 && sregs.cs.base == 0xffff_0000) => {
            format!(" (last RIP {:#x})", regs.rip)
        }
        _ => String::new(),
    }
}

/// One vCPU's loop. Returns when this vCPU has seen the guest end.
fn run_vcpu(
    mut vcpu: Vcpu,
    handler: &dyn ExitHandler,
    stats: &ExitStats,
    control: &VcpuControl,
    ring: Option<&CoalescedRing>,
    mut first_entry: Option<Box<dyn FnOnce() + Send>>,
) -> GuestEnd {
    let index = vcpu.index;
    loop {
        control.checkpoint(usize::from(index), &vcpu.fd);
        if let Some(first_entry) = first_entry.take() {
            first_entry();
        }
        let exit = vcpu.fd.run();
        // What the guest wrote to coalesced ports before this exit reaches
        // the devices before the exit itself does.
        let replayed = match ring {
            Some(ring) => ring.replay(|writes| handler.coalesced_writes(writes)),
            None => PortAction::Continue,
        };
        let action = match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.count(&stats.port_in, "port in", index);
                handler.port_in(port, data);
                PortAction::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.count(&stats.port_out, "port out", index);
                handler.port_out(port, data)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.count(&stats.mmio_read, "MMIO read", index);
                handler.mmio_read(addr, data);
                PortAction::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.count(&stats.mmio_write, "MMIO write", index);
                handler.mmio_write(addr, data)
            }
            Ok(VcpuExit::Hlt) => {
                // With KVM's local APIC, HLT is handled in the kernel; an exit
                // here means the CPU halted for good.
                stats.count(&stats.halt, "halt", index);
                PortAction::End(GuestEnd::Crash(format!(
                    "vCPU {index} halted with no way to wake it"
                )))
            }
            Ok(VcpuExit::Shutdown) => {
                stats.count(&stats.other, "shutdown", index);
                PortAction::End(GuestEnd::Crash(format!(
                    "the guest triple-faulted on vCPU {index}{}",
                    last_rip(&vcpu)
                )))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                stats.count(&stats.other, "system event", index);
                PortAction::End(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => GuestEnd::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => GuestEnd::Reboot,
                    KVM_SYSTEM_EVENT_CRASH => GuestEnd::Crash("the guest reported a crash".into()),
                    other => GuestEnd::Crash(format!("unknown KVM system event {other}")),
                })
            }
            Ok(VcpuExit::Debug(exit)) => {
                // A breakpoint or a single step: the debugger's stop parks
                // this vCPU at its next checkpoint, just above.
                stats.count(&stats.debug, "debug", index);
                control.debug_exit(usize::from(index), &vcpu.fd, &exit);
                PortAction::Continue
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => PortAction::End(GuestEnd::Crash(format!(
                "KVM could not enter vCPU {index} (hardware reason {reason:#x}, host CPU {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => PortAction::End(GuestEnd::Crash(format!(
                "KVM hit an internal error running vCPU {index} (an instruction it could not emulate)"
            ))),
            Ok(other) => {
                stats.count(&stats.other, "other", index);
                log::warn!("vCPU {index}: ignoring unexpected exit {other:?}");
                PortAction::Continue
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.count(&stats.interrupted, "interrupted", index);
                PortAction::Continue
            }
            Err(e) => PortAction::End(GuestEnd::Crash(format!("KVM_RUN failed on vCPU {index}: {e}"))),
        };
        if let PortAction::End(why) = replayed {
            return why;
        }
        if let PortAction::End(why) = action {
            return why;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The coalesced ring on a real vCPU running a few real-mode
    //! instructions (no kernel needed; these machines' kvm_pvm runs them).
    //! Skipped, with a word, where there is no such /dev/kvm.

    use std::sync::Mutex;

    use super::*;

    const SERIAL: u16 = 0x3f8;
    const POWER_OFF: u16 = 0x604;
    const CODE_AT: u64 = 0x1000;
    /// mov dx, 0x3f8; mov al, 'a'; out dx, al; inc al; out dx, al;
    /// inc al; out dx, al; mov dx, 0x604; out dx, al; jmp $
    const CODE: [u8; 18] = [
        0xba, 0xf8, 0x03, 0xb0, b'a', 0xee, 0xfe, 0xc0, 0xee, 0xfe, 0xc0, 0xee, 0xba, 0x04, 0x06,
        0xee, 0xeb, 0xfe,
    ];

    /// Records every write as it reaches it, and how: alone, or replayed.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(&'static str, u16, u8)>>,
    }

    impl ExitHandler for Recorder {
        fn port_in(&self, _: u16, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn port_out(&self, port: u16, data: &[u8]) -> PortAction {
            self.seen.lock().unwrap().push(("exit", port, data[0]));
            match port {
                POWER_OFF => PortAction::End(GuestEnd::PowerOff),
                _ => PortAction::Continue,
            }
        }
        fn mmio_read(&self, _: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn mmio_write(&self, _: u64, _: &[u8]) -> PortAction {
            PortAction::Continue
        }
        fn coalesced_writes(&self, writes: &[CoalescedWrite]) -> PortAction {
            let mut seen = self.seen.lock().unwrap();
            for write in writes {
                seen.push(("ring", write.address as u16, write.data()[0]));
            }
            PortAction::Continue
        }
    }

    /// Boots CODE with writes to the serial port coalesced or not, and
    /// returns what the handler saw.
    fn run_code(coalesce: bool) -> Option<Vec<(&'static str, u16, u8)>> {
        let (vm, _memory, vcpu) = crate::test_guest::real_mode_guest(&CODE, CODE_AT)?;
        let ring = if coalesce {
            let ring = CoalescedRing::map(&vm, &vcpu).ok()??;
            CoalescedRing::coalesce_port(&vm, SERIAL, 1).ok()?;
            Some(ring)
        } else {
            None
        };
        let recorder = Arc::new(Recorder::default());
        let stats: Arc<[ExitStats]> = Arc::new([ExitStats::default()]);
        let end = run_noting_first_entry(
            vec![vcpu],
            Arc::clone(&recorder) as Arc<dyn ExitHandler>,
            Arc::clone(&stats),
            Arc::new(VcpuControl::new(1)),
            ring,
            Box::new(|| {}),
        );
        assert_eq!(end, GuestEnd::PowerOff);
        let seen = recorder.seen.lock().unwrap().clone();
        Some(seen)
    }

    #[test]
    fn coalesced_writes_reach_the_devices_in_order_before_the_next_exit() {
        let Some(plain) = run_code(false) else {
            eprintln!("skipped: no /dev/kvm that runs real mode here");
            return;
        };
        assert_eq!(
            plain,
            [
                ("exit", SERIAL, b'a'),
                ("exit", SERIAL, b'b'),
                ("exit", SERIAL, b'c'),
                ("exit", POWER_OFF, b'c'),
            ]
        );
        let Some(coalesced) = run_code(true) else {
            eprintln!("skipped: this /dev/kvm keeps no port writes (KVM_CAP_COALESCED_PIO)");
            return;
        };
        assert_eq!(
            coalesced,
            [
                ("ring", SERIAL, b'a'),
                ("ring", SERIAL, b'b'),
                ("ring", SERIAL, b'c'),
                ("exit", POWER_OFF, b'c'),
            ]
        );
    }
}
