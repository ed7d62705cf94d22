//! The guest's end of the control socket: claiming the name, answering one
//! request at a time, and removing the socket file when lg ends.
//!
//! Two lgs must never share a name, yet a guest killed with `kill -9` leaves
//! its socket file behind and must not lock its name forever. The file alone
//! cannot tell the two apart; a `connect` can: a live lg accepts, a dead one's
//! file refuses. So [`ControlSocket::bind`] asks before it takes a name.

use std::fs::{self, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::request::{Request, Response};
use crate::runtime::{check_name, create_private_dir, runtime_dir_path, socket_path};

/// The launcher's answer to each request. It runs on the control thread, one
/// request at a time, so it should answer promptly: every other client
/// waits behind it.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// The launcher's answer to a request that opens a stream
/// ([`Request::opens_stream`]): what will take over the connection, or the
/// sentence refusing it. It runs on the control thread, so it must return
/// at once; the [`StreamSink`] it returns is called there too, and should
/// hand the connection to a thread of its own.
pub type StreamHandler = Arc<dyn Fn(Request) -> Result<StreamSink, String> + Send + Sync>;

/// Takes over a connection once `ok` has been sent; the connection has no
/// deadline any more.
pub type StreamSink = Box<dyn FnOnce(UnixStream) + Send>;

/// The longest request line, `\n` included: far more than any request needs,
/// little enough that a confused client cannot make lg buffer without bound.
const MAX_REQUEST_BYTES: usize = 4096;
/// How long a client has to send its request and take its answer. Requests
/// are served one at a time, so this is also the longest a stuck client can
/// hold up the others.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// The runtime directory's lock file; its name does not end in `.sock`, so
/// `lg ps` passes it by.
const LOCK_FILE_NAME: &str = ".lock";
/// Pending connections the kernel queues while one is being answered.
const LISTEN_BACKLOG: libc::c_int = 16;

/// A guest's claim on its name: the bound and listening control socket,
/// not yet answering.
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// A control socket being answered on the `control` thread. Dropping it
/// removes the socket file and ends the thread.
pub struct ServingSocket {
    file: SocketFile,
    listener: Arc<UnixListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The socket file this process created, and the identity (device and
/// inode, taken right after `bind`) that tells it apart from a successor's
/// file at the same path.
struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
    removed: AtomicBool,
}

impl ControlSocket {
    /// Claims `name` in the runtime directory (see [`crate::runtime_dir`]),
    /// creating the directory if needed and replacing a stale socket left by
    /// an lg that was killed.
    pub fn bind(name: &str) -> Result<ControlSocket, String> {
        check_name(name)?;
        ControlSocket::bind_in(&runtime_dir_path()?, name)
    }

    /// [`ControlSocket::bind`] in the directory `dir`, which is created
    /// (mode 0700) if missing.
    pub fn bind_in(dir: &Path, name: &str) -> Result<ControlSocket, String> {
        check_name(name)?;
        create_private_dir(dir)?;
        let path = socket_path(dir, name);
        // Held until we return, so two lgs that both find a stale file
        // cannot both remove it and each bind, the second over the first.
        let _claim = lock_directory(dir)?;
        clear_the_way(&path, name)?;
        let listener = bind_private(&path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                // Something bound the path between our look and our bind:
                // the lock keeps out other lgs, but not other programs.
                already_running(name, &path)
            } else {
                format!("cannot create the control socket {}: {e}", path.display())
            }
        })?;
        let metadata = fs::symlink_metadata(&path).map_err(|e| {
            format!(
                "the control socket {} vanished right after it was made: {e}",
                path.display()
            )
        })?;
        Ok(ControlSocket {
            listener,
            file: SocketFile {
                path,
                device: metadata.dev(),
                inode: metadata.ino(),
                removed: AtomicBool::new(false),
            },
        })
    }

    /// Where the socket file is.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Removes the socket file now, for paths that end the process with
    /// `std::process::exit`, which runs no destructors. Calling it again, or
    /// dropping afterwards, does nothing more.
    pub fn remove(&self) {
        self.file.remove();
    }

    /// Starts answering requests on a thread named `control`: each
    /// connection's request line is parsed and handed to `handler`, whose
    /// [`Response`] is sent back before the connection is closed. A request
    /// that does not parse, and a handler that panics, are answered with
    /// `error`; neither stops the thread.
    pub fn serve(self, handler: Handler) -> Result<ServingSocket, String> {
        self.serve_handlers(handler, None)
    }

    /// [`ControlSocket::serve`], with `streams` answering the requests that
    /// open a stream (`gdb`); without it they are refused.
    pub fn serve_with_streams(
        self,
        handler: Handler,
        streams: StreamHandler,
    ) -> Result<ServingSocket, String> {
        self.serve_handlers(handler, Some(streams))
    }

    fn serve_handlers(
        self,
        handler: Handler,
        streams: Option<StreamHandler>,
    ) -> Result<ServingSocket, String> {
        let ControlSocket { listener, file } = self;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("control".to_string())
            .spawn({
                let listener = Arc::clone(&listener);
                let stopping = Arc::clone(&stopping);
                move || accept_loop(&listener, &stopping, &handler, streams.as_ref())
            })
            .map_err(|e| {
                format!(
                    "cannot start the thread answering {}: {e}",
                    file.path.display()
                )
            })?;
        Ok(ServingSocket {
            file,
            listener,
            stopping,
            thread: Some(thread),
        })
    }
}

impl ServingSocket {
    /// Where the socket file is.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Removes the socket file now; see [`ControlSocket::remove`]. The thread
    /// goes on answering connections already queued, but no new client can
    /// find the guest.
    pub fn remove(&self) {
        self.file.remove();
    }

    /// Removes the file and wakes the control thread out of `accept` so it
    /// ends; returns the thread, which the caller may join. Drop does this
    /// without joining: the thread might be inside a handler waiting on the
    /// very code that is dropping us.
    fn stop(&mut self) -> Option<JoinHandle<()>> {
        self.file.remove();
        self.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket makes a blocked
        // accept(2) return EINVAL, which the loop takes as its cue to end.
        // SAFETY: the descriptor belongs to `self.listener`, which is alive;
        // shutdown(2) changes the socket's state but not the descriptor.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        self.thread.take()
    }
}

impl Drop for ServingSocket {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SocketFile {
    /// Removes the file if it is still the one we bound; a file some later
    /// lg put at the same path is that lg's, and is left alone.
    fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        match fs::symlink_metadata(&self.path) {
            Ok(metadata) if metadata.dev() == self.device && metadata.ino() == self.inode => {
                if let Err(e) = fs::remove_file(&self.path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::warn!(
                            "cannot remove the control socket {}: {e}",
                            self.path.display()
                        );
                    }
                }
            }
            Ok(_) => log::debug!(
                "{} is another lg's control socket now; leaving it",
                self.path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot look at the control socket {} to remove it: {e}",
                self.path.display()
            ),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn already_running(name: &str, path: &Path) -> String {
    format!(
        "a guest named {name} is already running (its control socket is {})",
        path.display()
    )
}

/// Takes the runtime directory's lock file, which serialises claiming names;
/// the lock goes when the returned file is closed.
fn lock_directory(dir: &Path) -> Result<fs::File, String> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
    loop {
        // SAFETY: flock(2) on a descriptor `lock` owns; it touches no memory.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(lock);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("cannot lock {}: {e}", lock_path.display()));
        }
    }
}

/// Makes sure nothing live is at `path`: a live lg's socket is an error, a
/// dead one's is removed, anything that is not a socket is an error.
fn clear_the_way(path: &Path, name: &str) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {}
        Ok(_) => {
            return Err(format!(
                "{} is in the way of guest {name}'s control socket: it exists and is not a socket",
                path.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
    }
    match UnixStream::connect(path) {
        // The live lg sees a connection that sends nothing, and lets it go.
        Ok(_) => Err(already_running(name, path)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "cannot remove the stale control socket {}: {e}",
                        path.display()
                    ))
                }
            }
            log::info!(
                "replaced the stale control socket {} (the lg that made it is gone)",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot tell whether a guest named {name} is already running: connecting to {} failed: {e}",
            path.display()
        )),
    }
}

/// Binds a Unix stream socket at `path` and makes the file mode 0600 before
/// listening, so there is no moment at which another user could connect.
/// `UnixListener::bind` listens at once, hence the system calls by hand.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let address = unix_address(path)?;
    // SAFETY: socket(2) takes only integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), so it is open and nothing
    // else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address_len =
        std::mem::offset_of!(libc::sockaddr_un, sun_path) + path.as_os_str().len() + 1;
    // SAFETY: `address` is an initialised sockaddr_un whose path is
    // NUL-terminated within `address_len` bytes, all inside the struct;
    // bind(2) only reads it.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(address).cast::<libc::sockaddr>(),
            address_len as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let listening = fs::set_permissions(path, Permissions::from_mode(0o600)).and_then(|()| {
        // SAFETY: listen(2) on the socket we own, bound just above.
        if unsafe { libc::listen(socket.as_raw_fd(), LISTEN_BACKLOG) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    });
    if let Err(e) = listening {
        // We made the file and nobody can have connected; do not leave it.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(socket))
}

/// `path` as a `sockaddr_un`, or an error if it does not fit.
fn unix_address(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain integers and bytes, valid when all zero.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte of sun_path is kept for the terminating NUL.
    if bytes.len() >= address.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the path is {} bytes long, but a Unix socket's may be at most {}; \
                 choose a shorter name or runtime directory",
                bytes.len(),
                address.sun_path.len() - 1
            ),
        ));
    }
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path contains a NUL byte",
        ));
    }
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(address)
}

fn accept_loop(
    listener: &UnixListener,
    stopping: &AtomicBool,
    handler: &Handler,
    streams: Option<&StreamHandler>,
) {
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => answer(stream, handler, streams),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, most likely: pause rather than spin,
                // and try again, since the guest itself is unaffected.
                log::warn!("the control socket cannot accept a connection: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one connection: one request line in, one response out; or, for a
/// request that opens a stream, `ok` and the connection handed over.
fn answer(stream: UnixStream, handler: &Handler, streams: Option<&StreamHandler>) {
    // A socket without a deadline would let one silent client block all.
    if let Err(e) = stream
        .set_read_timeout(Some(CLIENT_DEADLINE))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_DEADLINE)))
    {
        log::warn!("cannot set a deadline on a control connection, so dropping it: {e}");
        return;
    }
    let response = match read_request_line(&stream) {
        // Connected and left without a word: another lg checking that this
        // name is taken.
        Ok(None) => return,
        Ok(Some(line)) => match Request::parse(&line) {
            Ok(request) if request.opens_stream() => match open_stream(streams, request) {
                Ok(sink) => return hand_over(stream, sink),
                Err(sentence) => Response::Error(sentence),
            },
            Ok(request) => call_handler(handler, request),
            Err(sentence) => Response::Error(sentence),
        },
        Err(sentence) => Response::Error(sentence),
    };
    if let Err(e) = (&stream).write_all(response.to_text().as_bytes()) {
        log::debug!("a control client left before its answer was sent: {e}");
        return;
    }
    discard_unread(&stream);
}

/// Reads away whatever the client sent beyond its request line. Closing a
/// Unix socket with unread data makes the client's next read fail with
/// ECONNRESET, even before it has read the answer waiting for it; a client
/// that sent too much should still learn why it was refused.
fn discard_unread(stream: &UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    // Only what has already arrived, and not without bound: a client that
    // keeps sending gets its reset.
    let mut scratch = [0u8; MAX_REQUEST_BYTES];
    for _ in 0..16 {
        match (&*stream).read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What will take over the connection of a stream request, or why none.
fn open_stream(streams: Option<&StreamHandler>, request: Request) -> Result<StreamSink, String> {
    let line = request.to_line();
    let Some(streams) = streams else {
        return Err(format!("this lg does not serve `{line}`"));
    };
    panic::catch_unwind(AssertUnwindSafe(|| streams(request))).unwrap_or_else(|_| {
        Err(format!(
            "lg failed while answering `{line}` (it panicked; see lg's output)"
        ))
    })
}

/// Sends `ok` and gives the connection, deadlines lifted, to `sink`.
fn hand_over(stream: UnixStream, sink: StreamSink) {
    if let Err(e) = (&stream).write_all(b"ok\n") {
        log::debug!("a control client left before its stream opened: {e}");
        return;
    }
    if let Err(e) = stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
    {
        log::warn!("cannot lift the deadline on a control stream, so dropping it: {e}");
        return;
    }
    sink(stream);
}

fn call_handler(handler: &Handler, request: Request) -> Response {
    let line = request.to_line();
    // A bug in one answer must not take away the control socket for the
    // rest of the guest's life; the panic message is already on stderr.
    panic::catch_unwind(AssertUnwindSafe(|| handler(request))).unwrap_or_else(|_| {
        Response::Error(format!(
            "lg failed while answering `{line}` (it panicked; see lg's output)"
        ))
    })
}

/// The request line, without its `\n`; `None` if the client sent nothing at
/// all. A line cut short by the client closing its end counts as complete,
/// so `printf info | socat ...` works too. Read a byte at a time, so that
/// nothing past the line is taken from the socket: after a stream request,
/// what follows belongs to the stream.
fn read_request_line(stream: &UnixStream) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= MAX_REQUEST_BYTES {
        match (&*stream).read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no complete request line arrived within {} seconds",
                    CLIENT_DEADLINE.as_secs()
                ))
            }
            Err(e) => return Err(format!("the request could not be read: {e}")),
        }
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "the request is longer than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| "the request is not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn echo_handler() -> Handler {
        Arc::new(|request: Request| match request {
            Request::Info => Response::Ok("name=test\n".to_string()),
            Request::Regs { cpu: 9 } => Response::Error("the guest has no vCPU 9".to_string()),
            Request::Stat => panic!("a handler bug"),
            other => Response::Ok(other.to_line()),
        })
    }

    /// What a client like `socat` sees for `sent`.
    fn raw_exchange(path: &Path, sent: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(sent).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn a_served_socket_answers_requests() {
        let dir = TestDir::new("serve");
        let serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        assert_eq!(serving.path(), dir.path().join("web.sock"));
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
        assert_eq!(
            raw_exchange(serving.path(), b"regs   cpu=2\n"),
            "ok\nregs cpu=2\n"
        );
        assert_eq!(
            raw_exchange(serving.path(), b"regs cpu=9\n"),
            "error the guest has no vCPU 9\n"
        );
        // No newline, but the client closed its end: still a request.
        assert_eq!(raw_exchange(serving.path(), b"pause"), "ok\npause\n");
    }

    #[test]
    fn malformed_requests_get_an_error_line() {
        let dir = TestDir::new("malformed");
        let serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        let answer = raw_exchange(serving.path(), b"reboot now\n");
        assert!(
            answer.starts_with("error unknown request `reboot`"),
            "{answer}"
        );
        assert_eq!(answer.lines().count(), 1);
        let answer = raw_exchange(serving.path(), b"\xff\xfe\n");
        assert_eq!(answer, "error the request is not UTF-8 text\n");
        let answer = raw_exchange(serving.path(), &[b'x'; 5000]);
        assert_eq!(answer, "error the request is longer than 4096 bytes\n");
        // The thread lived through all of that.
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
    }

    #[test]
    fn a_panicking_handler_is_an_error_not_the_end() {
        let dir = TestDir::new("panic");
        let serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        let answer = raw_exchange(serving.path(), b"stat\n");
        assert!(
            answer.starts_with("error lg failed while answering `stat`"),
            "{answer}"
        );
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
    }

    #[test]
    fn a_silent_client_does_not_get_an_answer_or_block_the_probe() {
        let dir = TestDir::new("probe");
        let serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        assert_eq!(raw_exchange(serving.path(), b""), "");
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
    }

    #[test]
    fn the_socket_is_private() {
        let dir = TestDir::new("mode");
        let socket = ControlSocket::bind_in(dir.path(), "web").unwrap();
        let metadata = fs::metadata(socket.path()).unwrap();
        assert!(metadata.file_type().is_socket());
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_live_name_cannot_be_taken_twice() {
        let dir = TestDir::new("twice");
        let first = ControlSocket::bind_in(dir.path(), "web").unwrap();
        let path = first.path().to_path_buf();
        let error = ControlSocket::bind_in(dir.path(), "web").err().unwrap();
        assert_eq!(
            error,
            format!(
                "a guest named web is already running (its control socket is {})",
                path.display()
            )
        );
        // Also while it is being served, and the first keeps its file.
        let serving = first.serve(echo_handler()).unwrap();
        assert!(ControlSocket::bind_in(dir.path(), "web").is_err());
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
    }

    #[test]
    fn racing_claims_on_a_stale_name_leave_exactly_one_winner() {
        let dir = TestDir::new("race");
        drop(UnixListener::bind(dir.path().join("web.sock")).unwrap());
        let claims: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                thread::spawn(move || ControlSocket::bind_in(&dir, "web"))
            })
            .collect();
        let results: Vec<_> = claims.into_iter().map(|t| t.join().unwrap()).collect();
        let winners = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(winners, 1);
        for result in &results {
            if let Err(error) = result {
                assert!(
                    error.starts_with("a guest named web is already running"),
                    "{error}"
                );
            }
        }
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = TestDir::new("stale");
        let path = dir.path().join("web.sock");
        // What a killed lg leaves: a socket file nobody listens on.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        assert_eq!(raw_exchange(serving.path(), b"info\n"), "ok\nname=test\n");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_named() {
        let dir = TestDir::new("notsock");
        let path = dir.path().join("web.sock");
        fs::write(&path, b"precious").unwrap();
        let error = ControlSocket::bind_in(dir.path(), "web").err().unwrap();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn a_bad_name_is_refused_before_anything_is_made() {
        let dir = TestDir::new("badname");
        assert!(ControlSocket::bind_in(dir.path(), "../escape").is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!dir.path().parent().unwrap().join("escape.sock").exists());
    }

    #[test]
    fn a_path_too_long_for_a_socket_is_an_error() {
        let dir = TestDir::new("long");
        let deep = dir.path().join("d".repeat(60));
        let error = ControlSocket::bind_in(&deep, &"n".repeat(64))
            .err()
            .unwrap();
        assert!(error.contains("at most 107"), "{error}");
    }

    #[test]
    fn the_file_goes_when_the_socket_is_dropped() {
        let dir = TestDir::new("drop");
        let socket = ControlSocket::bind_in(dir.path(), "unserved").unwrap();
        let path = socket.path().to_path_buf();
        drop(socket);
        assert!(!path.exists());

        let serving = ControlSocket::bind_in(dir.path(), "served")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        let path = serving.path().to_path_buf();
        drop(serving);
        assert!(!path.exists());
    }

    #[test]
    fn remove_is_idempotent_and_spares_a_successor() {
        let dir = TestDir::new("remove");
        let first = ControlSocket::bind_in(dir.path(), "web").unwrap();
        first.remove();
        assert!(!first.path().exists());
        first.remove();
        // A successor takes the name; the first's drop must leave it be.
        let successor = ControlSocket::bind_in(dir.path(), "web").unwrap();
        drop(first);
        assert!(successor.path().exists());

        // Even one that never called remove: same path, different inode.
        // (Renamed rather than deleted, so the new file cannot reuse the
        // inode number.)
        let serving = successor.serve(echo_handler()).unwrap();
        let path = serving.path().to_path_buf();
        fs::rename(&path, dir.path().join("moved-away")).unwrap();
        let third = ControlSocket::bind_in(dir.path(), "web").unwrap();
        drop(serving);
        assert!(third.path().exists());
    }

    #[test]
    fn stopping_ends_the_control_thread() {
        let dir = TestDir::new("stop");
        let mut serving = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve(echo_handler())
            .unwrap();
        let thread = serving.stop().unwrap();
        assert_eq!(thread.thread().name(), Some("control"));
        thread.join().unwrap();
    }
}
