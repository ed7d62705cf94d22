//! # gdb-stub: gdb, talking to a running guest
//!
//! lguest had no debugger; you read the oops and guessed. QEMU taught
//! kernel developers to expect `target remote :1234`, and lg keeps that
//! habit: `lg run --gdb=PORT` listens for gdb's remote serial protocol on
//! 127.0.0.1:PORT, and `lg gdb NAME` carries the same protocol over a
//! running guest's control socket (`target remote | lg gdb NAME`).
//!
//! The protocol itself (packets, acknowledgements, `qSupported`, `vCont`,
//! target descriptions) is the `gdbstub` crate's; this crate is what it
//! talks to, in reading order:
//!
//! - [`memory`]: guest memory by *virtual* address, through the stopped
//!   vCPU's page tables, every range checked to be guest RAM;
//! - [`registers`]: KVM's register structs in gdb's x86-64 layout;
//! - [`breakpoints`]: software breakpoints, `int3` bytes planted through
//!   [`memory`] with the bytes they replaced;
//! - `target`: the guest as a gdbstub multi-threaded target (each vCPU a
//!   thread), and the event loop that waits for a vCPU to stop, or for
//!   gdb's Ctrl-C, while the guest runs.
//!
//! The KVM half (debug registers, `KVM_SET_GUEST_DEBUG`, what a debug exit
//! means, and parking every vCPU when one stops) is the switcher's
//! (`switcher::debug`, `switcher::vcpu_control`).
//!
//! One gdb at a time: [`Debugger::attach`] hands out one [`Session`]. While
//! gdb is attached the guest runs only when gdb says so; when gdb detaches,
//! or its connection drops, every breakpoint is taken out and the guest
//! runs on. gdb's `kill` detaches too: ending the guest is `lg stop`'s job.

pub mod breakpoints;
pub mod memory;
pub mod registers;
mod target;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{DisconnectReason, GdbStub};
use shadow_mmu::GuestMemory;
use switcher::VcpuControl;

use target::{GuestEventLoop, GuestTarget};

/// A guest gdb can attach to.
pub struct Debugger {
    vcpus: Arc<VcpuControl>,
    memory: Arc<GuestMemory>,
    attached: Mutex<bool>,
    detached: Condvar,
}

/// gdb's claim on the guest, from [`Debugger::attach`] until it is served
/// or dropped.
pub struct Session {
    debugger: Arc<Debugger>,
}

impl Debugger {
    pub fn new(vcpus: Arc<VcpuControl>, memory: Arc<GuestMemory>) -> Arc<Debugger> {
        Arc::new(Debugger {
            vcpus,
            memory,
            attached: Mutex::new(false),
            detached: Condvar::new(),
        })
    }

    /// Claims the guest for one gdb, or says another is attached.
    pub fn attach(self: &Arc<Self>) -> Result<Session, String> {
        let mut attached = self.lock();
        if *attached {
            return Err("gdb is already attached to this guest (one at a time)".into());
        }
        *attached = true;
        Ok(Session {
            debugger: Arc::clone(self),
        })
    }

    pub fn is_attached(&self) -> bool {
        *self.lock()
    }

    /// Waits up to `timeout` for the attached gdb (if any) to go; true if
    /// none is attached. When the guest ends, lg gives gdb this long to hear
    /// so before lg itself ends.
    pub fn wait_detached(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut attached = self.lock();
        while *attached {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            attached = self
                .detached
                .wait_timeout(attached, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Serves gdb connections from `listener` on a thread of its own
    /// (`gdb-listen`), one at a time; a connection made while gdb is
    /// attached through the control socket is closed at once.
    pub fn listen(self: &Arc<Self>, listener: TcpListener) -> Result<(), String> {
        let debugger = Arc::clone(self);
        std::thread::Builder::new()
            .name("gdb-listen".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let stream = match stream {
                        Ok(stream) => stream,
                        Err(e) => {
                            log::warn!("gdb: cannot accept a connection: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    // gdb sends small packets and waits for each answer.
                    let _ = stream.set_nodelay(true);
                    match debugger.attach() {
                        Ok(session) => session.serve(stream),
                        Err(e) => log::warn!("gdb: refused a connection: {e}"),
                    }
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the gdb listener thread: {e}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Listens on 127.0.0.1:`port` only: gdb's protocol can read and write all
/// of the guest, so it is offered to this machine alone.
pub fn bind(port: u16) -> Result<TcpListener, String> {
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(address).map_err(|e| format!("--gdb={port}: cannot listen on {address}: {e}"))
}

impl Session {
    /// Runs gdb's session on `conn` until gdb detaches, the connection
    /// drops or the guest ends. The guest is stopped first (gdb expects a
    /// stopped target when it attaches) and runs freely afterwards.
    pub fn serve<C>(self, conn: C)
    where
        C: ConnectionExt<Error = io::Error> + AsFd,
    {
        let vcpus = Arc::clone(&self.debugger.vcpus);
        if let Err(e) = vcpus.pause() {
            log::warn!("gdb: cannot stop the guest for gdb: {e}");
            return;
        }
        log::info!("gdb attached");
        let mut target = GuestTarget::new(vcpus, Arc::clone(&self.debugger.memory));
        let outcome = GdbStub::new(conn).run_blocking::<GuestEventLoop<C>>(&mut target);
        target.detach();
        match outcome {
            Ok(DisconnectReason::Kill) => {
                log::info!(
                    "gdb asked to kill the guest; lg detached instead (lg stop ends a guest)"
                )
            }
            Ok(reason) => log::info!("gdb detached ({reason:?})"),
            Err(e) => log::info!("gdb session ended: {e}"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        *self.debugger.lock() = false;
        self.debugger.detached.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugger() -> Arc<Debugger> {
        Debugger::new(
            Arc::new(VcpuControl::new(1)),
            Arc::new(GuestMemory::new(1 << 20).unwrap()),
        )
    }

    #[test]
    fn one_gdb_at_a_time() {
        let debugger = debugger();
        let session = debugger.attach().unwrap();
        assert!(debugger.is_attached());
        assert!(debugger
            .attach()
            .err()
            .unwrap()
            .contains("already attached"));
        assert!(!debugger.wait_detached(Duration::from_millis(10)));
        drop(session);
        assert!(!debugger.is_attached());
        assert!(debugger.wait_detached(Duration::ZERO));
        drop(debugger.attach().unwrap());
    }

    mod on_kvm {
        //! A whole session, gdb's packets written by hand, against a vCPU
        //! running a few 64-bit instructions on identity-mapped tables (and
        //! the same page mapped high, as a kernel's text is): no kernel
        //! needed, only a /dev/kvm (even these machines' kvm_pvm runs it).
        //! Skipped, with a word, where there is none.

        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;

        use shadow_mmu::GuestAddress;
        use switcher::{EntryState, ExitHandler, ExitStats, GuestEnd, PortAction, Vm};

        use super::*;

        /// nop; nop; inc rax; mov dx, 0x604; out dx, al; jmp $
        const CODE: [u8; 10] = [0x90, 0x90, 0x48, 0xff, 0xc0, 0x66, 0xba, 0x04, 0x06, 0xee];
        const CODE_AT: u64 = 0x10000;
        /// Where the same page is mapped in the kernel's half.
        const HIGH: u64 = 0xffff_ffff_8000_0000;

        struct PowerOffPort;

        impl ExitHandler for PowerOffPort {
            fn port_in(&self, _: u16, data: &mut [u8]) {
                data.fill(0xff);
            }
            fn port_out(&self, port: u16, _: &[u8]) -> PortAction {
                match port {
                    0x604 => PortAction::End(GuestEnd::PowerOff),
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

        /// The packet `body`, framed and checksummed.
        fn packet(body: &str) -> Vec<u8> {
            let sum = body.bytes().fold(0u8, |sum, b| sum.wrapping_add(b));
            format!("${body}#{sum:02x}").into_bytes()
        }

        /// gdb's side: sends a packet, returns the body of the answer.
        fn ask(gdb: &mut UnixStream, body: &str) -> String {
            gdb.write_all(&packet(body)).unwrap();
            answer(gdb)
        }

        /// Reads one answer (skipping acks), acknowledges it, returns its body.
        fn answer(gdb: &mut UnixStream) -> String {
            let mut byte = [0u8; 1];
            loop {
                gdb.read_exact(&mut byte).unwrap();
                if byte[0] == b'$' {
                    break;
                }
            }
            let mut body = Vec::new();
            loop {
                gdb.read_exact(&mut byte).unwrap();
                if byte[0] == b'#' {
                    break;
                }
                body.push(byte[0]);
            }
            let mut sum = [0u8; 2];
            gdb.read_exact(&mut sum).unwrap();
            // After `D`'s answer the stub may have closed its end already.
            let _ = gdb.write_all(b"+");
            String::from_utf8(run_length_decoded(&body)).unwrap()
        }

        /// gdb's run-length encoding undone: `X*c` is X and then
        /// `c - 29` more of it.
        fn run_length_decoded(body: &[u8]) -> Vec<u8> {
            let mut out: Vec<u8> = Vec::new();
            let mut bytes = body.iter();
            while let Some(&b) = bytes.next() {
                match (b, out.last().copied()) {
                    (b'*', Some(last)) => {
                        let count = bytes.next().map_or(0, |&c| c - 29);
                        out.extend(std::iter::repeat(last).take(usize::from(count)));
                    }
                    _ => out.push(b),
                }
            }
            out
        }

        #[test]
        fn gdb_stops_the_guest_at_a_breakpoint_reads_it_and_lets_it_go() {
            let memory = Arc::new(GuestMemory::new(4 << 20).unwrap());
            let table = |at: u64, index: u64, entry: u64| {
                memory
                    .write_obj(GuestAddress(at + index * 8), &entry)
                    .unwrap()
            };
            // PML4 at 0x2000; the low and the top 1 GiB both lead to one
            // PD whose first 2 MiB page is physical 0.
            table(0x2000, 0, 0x3000 | 3);
            table(0x3000, 0, 0x4000 | 3);
            table(0x2000, 511, 0x5000 | 3);
            table(0x5000, 510, 0x4000 | 3);
            table(0x4000, 0, 0x83);
            memory.write(GuestAddress(CODE_AT), &CODE).unwrap();
            let Ok(vm) = Vm::new(Arc::clone(&memory)) else {
                eprintln!("skipped: no /dev/kvm here");
                return;
            };
            let entry = EntryState {
                entry: GuestAddress(CODE_AT),
                boot_params: GuestAddress(0),
                page_table_root: GuestAddress(0x2000),
            };
            let vcpus = vm.create_vcpus(2, &entry).unwrap();
            let control = Arc::new(VcpuControl::new(2));
            control.pause().unwrap();
            let debugger = Debugger::new(Arc::clone(&control), Arc::clone(&memory));
            let (mut gdb, stub_end) = UnixStream::pair().unwrap();
            gdb.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let session = debugger.attach().unwrap();
            let stub = std::thread::spawn(move || session.serve(stub_end));
            let runner = std::thread::spawn(move || {
                let stats: Arc<[ExitStats]> = (0..2).map(|_| ExitStats::default()).collect();
                switcher::run::run(vcpus, Arc::new(PowerOffPort), stats, control)
            });

            assert_eq!(ask(&mut gdb, "?"), "T05thread:01;");
            assert_eq!(ask(&mut gdb, "qfThreadInfo"), "m01,02");
            assert_eq!(ask(&mut gdb, "qThreadExtraInfo,2"), hex("vCPU 1"));
            // The code, read through the kernel-half mapping.
            assert_eq!(
                ask(&mut gdb, &format!("m{HIGH:x},5", HIGH = HIGH + CODE_AT)),
                "909048ffc0"
            );
            // Past guest RAM and unmapped: errors, not crashes.
            assert!(ask(&mut gdb, "mffffffffc0000000,4").starts_with('E'));
            assert!(ask(&mut gdb, "M400000,1:cc").starts_with('E'));

            assert_eq!(ask(&mut gdb, &format!("Z1,{:x},1", CODE_AT + 2)), "OK");
            let stop = ask(&mut gdb, "vCont;c");
            assert!(stop.starts_with("T05thread:01;hwbreak:"), "{stop}");
            // RIP is the 17th register, after sixteen of 8 bytes (hex-encoded).
            let registers = ask(&mut gdb, "g");
            let rip = &registers[16 * 16..17 * 16];
            assert_eq!(rip, hex_le(CODE_AT + 2));

            assert_eq!(ask(&mut gdb, &format!("z1,{:x},1", CODE_AT + 2)), "OK");
            let step = ask(&mut gdb, "vCont;s:1;c");
            assert!(step.starts_with("T05thread:01;"), "{step}");
            let registers = ask(&mut gdb, "g");
            assert_eq!(&registers[16 * 16..17 * 16], hex_le(CODE_AT + 5));
            // RAX went up by one.
            assert_eq!(&registers[..16], hex_le(1));

            gdb.write_all(&packet("D")).unwrap();
            assert_eq!(answer(&mut gdb), "OK");
            assert_eq!(runner.join().unwrap(), GuestEnd::PowerOff);
            stub.join().unwrap();
            assert!(!debugger.is_attached());
        }

        fn hex(text: &str) -> String {
            text.bytes().map(|b| format!("{b:02x}")).collect()
        }

        fn hex_le(value: u64) -> String {
            value
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
    }

    #[test]
    fn the_port_is_on_the_loopback_only() {
        let listener = bind(0).unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let port = listener.local_addr().unwrap().port();
        assert!(bind(port)
            .unwrap_err()
            .starts_with(&format!("--gdb={port}: ")));
    }
}
