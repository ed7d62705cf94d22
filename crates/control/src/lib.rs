//! # lg-control: talking to a running lg
//!
//! lguest's Launcher was one process with one guest and a terminal; to know
//! what the guest was doing you looked at that terminal. lg keeps that shape
//! but adds a small door: every running guest listens on a control socket,
//! so other lg commands, run as separate processes, can ask it things:
//! `lg ps`, `lg stop NAME`, `lg pause NAME`, `lg resume NAME`, `lg regs NAME`,
//! `lg dump-pagetables NAME`, `lg translate NAME VA`, `lg stat NAME`,
//! `lg gdb NAME`.
//!
//! This crate owns the socket's place, its lifecycle, the protocol and the
//! client. It knows nothing of KVM: the launcher answers each [`Request`]
//! through a handler closure given to [`ControlSocket::serve`], and takes
//! over the connection of a request that opens a stream (`gdb`) through a
//! second one given to [`ControlSocket::serve_with_streams`].
//!
//! ## Where the sockets live
//!
//! One directory per user, made with mode 0700 if missing (see
//! [`runtime_dir`]):
//!
//! - `$LG_RUNTIME_DIR`, when set and non-empty: an override for tests and
//!   for anyone who wants several independent sets of guests;
//! - else `$XDG_RUNTIME_DIR/lg`, when `XDG_RUNTIME_DIR` is set and non-empty
//!   (systemd sets it for every login session);
//! - else `/run/lg` when running as root;
//! - else lg refuses, and asks the user to set `XDG_RUNTIME_DIR`.
//!
//! A guest named NAME listens on `<dir>/NAME.sock`, mode 0600. Names are
//! checked by [`check_name`]; a guest not given one is called
//! [`default_name`]`(pid)`, `lg-PID`.
//!
//! ## The protocol
//!
//! Plain text, so `socat - UNIX-CONNECT:$XDG_RUNTIME_DIR/lg/NAME.sock` is a
//! client. One request per connection:
//!
//! 1. The client connects and sends one request line: words separated by
//!    spaces, ended by `\n` (or by closing its sending side), at most 4096
//!    bytes, within 5 seconds of connecting.
//! 2. The server answers with a status line, either `ok` or
//!    `error <one sentence>`, then the body: UTF-8 text, any number of lines,
//!    each ended by `\n`. An error has no body.
//! 3. The server closes the connection; the end of the body is the end of
//!    the stream.
//!
//! One request is different: after `gdb`'s `ok` line the connection stays
//! open and carries gdb's remote serial protocol both ways, with no
//! deadline, until either end closes it ([`Request::opens_stream`];
//! [`open_stream`] is the client's side). `lg gdb NAME` pipes its standard
//! input and output to it, so `target remote | lg gdb NAME` in gdb attaches.
//! A client must send nothing after the request line until it has read
//! `ok`.
//!
//! The requests ([`Request`]); numbers are decimal or `0x` hex, `cpu=`
//! defaults to 0 when left out, and `key=value` words may come in any order:
//!
//! | request line | body of the `ok` answer |
//! |---|---|
//! | `info` | [`GuestInfo`] as `key=value` lines |
//! | `stop` | empty; the guest is asked to shut down as if its power button was pressed |
//! | `stop force` | empty; lg ends the guest at once |
//! | `pause` | empty; every vCPU stops running guest code |
//! | `resume` | empty; the vCPUs run again |
//! | `regs cpu=N` | the vCPU's registers, as `lg regs` prints them |
//! | `dump-pagetables cpu=N [cr3=A] [range=START-END]` | the page tables under CR3 (the vCPU's own unless `cr3=` is given), limited to the virtual addresses `START <= va < END` if `range=` is given |
//! | `translate cpu=N [cr3=A] VA` | the walk of virtual address VA to its physical address |
//! | `stat` | counters, as `key=value` lines |
//! | `gdb` | none: after `ok`, the connection is a gdb remote-protocol stream to the guest (`error gdb is already attached ...` if one is) |
//!
//! For example:
//!
//! ```text
//! $ echo info | socat - UNIX-CONNECT:/run/user/1000/lg/web.sock
//! ok
//! name=web
//! pid=4242
//! memory_mib=256
//! vcpus=2
//! started_unix_ms=1767225600000
//! kernel=/boot/vmlinuz
//! state=running
//! devices=console,rng,blk:/tmp/disk.img
//! $ echo 'regs cpu=9' | socat - UNIX-CONNECT:/run/user/1000/lg/web.sock
//! error the guest has no vCPU 9 (it has 2).
//! ```
//!
//! ## Who removes the socket file
//!
//! Only the process that created it, and only while the file is still the one
//! it created: [`ControlSocket`] remembers the socket file's device and inode
//! right after `bind`, and removes the path only if they still match. A guest
//! killed with `kill -9` leaves its file behind; the next lg to take that name
//! finds nobody listening (`connect` is refused), calls it stale and replaces
//! it, and the old process, were it somehow still around, would not remove
//! its successor's socket. Claiming a name (look, maybe remove, bind) is done
//! under an exclusive `flock` of `<dir>/.lock`, so two lgs starting at once
//! with the same name cannot both take it.

mod client;
mod info;
mod request;
mod runtime;
mod server;
#[cfg(test)]
mod test_dir;

pub use client::{
    open_stream, open_stream_in, request, request_in, running_guests, running_guests_in,
    ClientError,
};
pub use info::{format_ps, GuestInfo};
pub use request::{Request, Response};
pub use runtime::{check_name, default_name, runtime_dir};
pub use server::{ControlSocket, Handler, ServingSocket, StreamHandler, StreamSink};
