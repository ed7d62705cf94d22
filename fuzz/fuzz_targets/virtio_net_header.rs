//! virtio-net's header and frames, both ways: the transmit queue's chains
//! (a `virtio_net_hdr_v1` and a frame, split however the guest likes) go
//! out to the host's end of a socketpair standing in for the tap, and
//! packets of the input's lengths come in through it to the receive
//! queue's buffers, mergeable or not. Both queues are configured and
//! filled by the input. Every packet that reaches the host must be one lg
//! could send to a tap: a header and at most the largest frame.

#![no_main]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use lg_fuzz::{guest_with, Input, QueueSetup};
use libfuzzer_sys::fuzz_target;
use virtio_net::fuzzing::{Receive, Transmit};
use virtio_net::{NetStats, MAX_PACKET_LEN, VNET_HDR_LEN};

/// Two connected, non-blocking packet sockets: one packet per read and
/// write, as a tap gives.
fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints, which is what
    // socketpair fills in.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair succeeded, so both are fresh descriptors that
    // nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sends one packet from the host's end; a full socket drops it, as a
/// busy tap would never have produced it.
fn host_send(fd: BorrowedFd<'_>, packet: &[u8]) {
    // SAFETY: `packet` is a valid buffer of `packet.len()` bytes for the
    // duration of the call, and `fd` is open while borrowed.
    unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
}

/// Reads one packet at the host's end, if there is one; its length.
fn host_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for
    // the duration of the call, and `fd` is open while borrowed.
    let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(got).ok().filter(|&n| n > 0)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let rx_setup = QueueSetup::read(&mut input);
    let tx_setup = QueueSetup::read(&mut input);
    let mergeable = input.u8() & 1 != 0;
    // Up to 8 packets from the host, each of any length the tap could
    // give (0 to a byte more than the largest packet), patterned so a
    // misplaced copy shows.
    let lengths: Vec<usize> = (0..input.u8() % 9)
        .map(|_| usize::from(input.u16()) % (MAX_PACKET_LEN + 2))
        .collect();
    let mem = guest_with(input.rest());
    let rx_queue = rx_setup.enable(&mem);
    let tx_queue = tx_setup.enable(&mem);

    let (device, host) = socketpair();
    let stats = NetStats::default();
    let mut packet = vec![0u8; MAX_PACKET_LEN + 1];
    for (i, len) in lengths.iter().enumerate() {
        for (j, byte) in packet[..*len].iter_mut().enumerate() {
            *byte = (j as u8).wrapping_mul(31) ^ i as u8;
        }
        host_send(host.as_fd(), &packet[..*len]);
    }

    if let Some(mut queue) = rx_queue {
        let mut rx = Receive::new(mergeable);
        for _ in 0..3 {
            if rx
                .process(&mut queue, &mem, device.as_fd(), &stats)
                .is_err()
            {
                break;
            }
        }
    }
    if let Some(mut queue) = tx_queue {
        let mut tx = Transmit::default();
        for _ in 0..3 {
            if tx
                .process(&mut queue, &mem, device.as_fd(), &stats)
                .is_err()
            {
                break;
            }
            while let Some(len) = host_recv(host.as_fd(), &mut packet) {
                assert!(
                    (VNET_HDR_LEN..=MAX_PACKET_LEN).contains(&len),
                    "lg sent the tap a {len}-byte packet"
                );
            }
        }
    }
});
