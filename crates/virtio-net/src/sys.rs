//! The system calls on the tap's descriptor: one packet per `read` and
//! `write` (the network thread's `poll` is every device thread's, in
//! virtio-pci).
//!
//! std has no safe way to read from or write to a borrowed raw descriptor
//! without wrapping it in a `File` (which would close it when dropped), so
//! these are the few thin `libc` calls, each retried on EINTR so that
//! callers see only errors that mean something.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Reads one packet into `buf`; returns its length (0 at end of file, which
/// a tap never reports but a socketpair whose other end closed does).
pub(crate) fn read_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for
        // the duration of the call, and `fd` is open for as long as it is
        // borrowed.
        let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            return Ok(got as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes `packet` as one packet.
pub(crate) fn write_packet(fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `packet` is a valid buffer of `packet.len()` bytes for the
        // duration of the call, and `fd` is open for as long as it is
        // borrowed.
        let sent = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Whether a failed write means "the host's queue is full, try again when
/// it drains" rather than "this packet will never go".
pub(crate) fn is_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::ENOBUFS)
    ) || error.kind() == io::ErrorKind::WouldBlock
}
