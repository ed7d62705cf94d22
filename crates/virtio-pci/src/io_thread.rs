//! A device's I/O thread: the one place a device's queues are served, off
//! the vCPUs. Every device starts one when the guest sets DRIVER_OK and
//! stops it on reset, and every one sleeps the same way between batches:
//! in `poll` on a stop signal and the eventfds that announce work (the
//! queues' doorbells, which KVM signals without a VM exit, and whatever
//! else the device waits for).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::device::ActivateError;
use crate::interrupt::Interrupt;

/// The hypervisor's word at the start of a device's I/O thread: lg narrows
/// there what the thread may do (its device-I/O seccomp filter), which
/// only the thread itself can do. A device calls [`IoThreadStart::run`] as
/// its thread's first act and needs to know nothing more; a failure is the
/// hypervisor's to handle, and `run` does not return from it.
#[derive(Clone)]
pub struct IoThreadStart(Arc<dyn Fn() + Send + Sync>);

impl IoThreadStart {
    pub fn new(start: impl Fn() + Send + Sync + 'static) -> IoThreadStart {
        IoThreadStart(Arc::new(start))
    }

    /// A start that does nothing, for hypervisors that confine no thread.
    pub fn nothing() -> IoThreadStart {
        IoThreadStart::new(|| {})
    }

    /// Called on the I/O thread, first.
    pub fn run(&self) {
        (self.0)()
    }
}

/// A device's I/O thread and the eventfd that tells it to stop: what every
/// device starts in `activate` and ends in `reset`.
pub struct IoThread {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl IoThread {
    /// Starts the thread `name`, which runs `start` and then `serve`.
    /// `serve` is given the eventfd that [`IoThread::stop`] signals, and
    /// must return once it fires. `role` names the thread in the error
    /// ("the disk's I/O thread").
    pub fn spawn(
        name: &str,
        role: &str,
        start: IoThreadStart,
        serve: impl FnOnce(EventFd) + Send + 'static,
    ) -> Result<IoThread, ActivateError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| ActivateError(format!("cannot create an eventfd: {e}")))?;
        let thread_stop = stop
            .try_clone()
            .map_err(|e| ActivateError(format!("cannot share an eventfd: {e}")))?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                start.run();
                serve(thread_stop)
            })
            .map_err(|e| ActivateError(format!("cannot start {role}: {e}")))?;
        Ok(IoThread { stop, thread })
    }

    /// Tells the thread to stop and waits until it has: after this the
    /// device no longer touches guest memory.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
    }
}

/// Sleeps until `stop` or one of `wakers` fires, and clears the wakers
/// that did: the caller's loop then serves whatever they announced, having
/// served first what came before it slept. Returns whether to go on: false
/// once `stop` has fired, or when `thread` cannot wait, which leaves the
/// device reported broken.
pub fn wait_for_work(
    stop: &EventFd,
    wakers: &[&EventFd],
    interrupt: &Interrupt,
    thread: &str,
) -> bool {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop)
        .chain(wakers.iter().copied())
        .map(|fd| pollfd(fd.as_raw_fd(), libc::POLLIN))
        .collect();
    if poll(&mut fds, -1).is_err() {
        interrupt.report_broken(&format!("{thread} cannot wait for events"));
        return false;
    }
    if fds[0].revents != 0 {
        return false;
    }
    for (waker, fd) in wakers.iter().zip(&fds[1..]) {
        if fd.revents != 0 {
            let _ = waker.read();
        }
    }
    true
}

/// What `poll` is to wait for on `fd` (a negative `fd` is skipped).
pub fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits for `fds` for at most `timeout_ms` (-1: for ever). An interrupted
/// wait returns with no events, and the caller simply looks again.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    // SAFETY: `fds` is a live, correctly sized array of pollfd for the
    // duration of the call; poll only writes their revents.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
        for fd in fds {
            fd.revents = 0;
        }
    }
    Ok(())
}
