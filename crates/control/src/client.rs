//! The asking end: how `lg stop`, `lg regs` and the rest reach a running
//! guest, and how `lg ps` finds them all.
//!
//! "No such guest" is kept apart from every other failure because the user's
//! next step differs: for the one, check the name (`lg ps`); for the other,
//! read the sentence.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::info::GuestInfo;
use crate::request::{Request, Response};
use crate::runtime::{check_name, runtime_dir_path, socket_path};

/// How long a command waits for a guest's answer. Longer than the server's
/// own deadline, so a guest busy with another client still gets its turn.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// How long `lg ps` waits for each guest: a hung lg should cost the listing
/// a moment, not ten seconds.
const PS_DEADLINE: Duration = Duration::from_secs(2);

/// Why a request got no `ok`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// No guest of this name: no socket, or one left by an lg that is gone.
    NoSuchGuest(String),
    /// The guest answered `error`, or the exchange failed; one sentence.
    Failed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoSuchGuest(name) => {
                write!(f, "no guest named {name} is running (see lg ps)")
            }
            ClientError::Failed(sentence) => f.write_str(sentence),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends `request` to the guest called `name` and returns the body of its
/// `ok` answer.
pub fn request(name: &str, request: &Request) -> Result<String, ClientError> {
    let dir = runtime_dir_path().map_err(ClientError::Failed)?;
    request_in(&dir, name, request)
}

/// [`request`] to a guest whose socket is in `dir`.
pub fn request_in(dir: &Path, name: &str, request: &Request) -> Result<String, ClientError> {
    exchange(dir, name, request, ANSWER_DEADLINE)
}

/// Connects to guest `name`'s socket in `dir`, with `deadline` on every
/// read and write.
fn connect(dir: &Path, name: &str, deadline: Duration) -> Result<UnixStream, ClientError> {
    check_name(name).map_err(ClientError::Failed)?;
    let path = socket_path(dir, name);
    let failed = |what: &str, e: io::Error| {
        ClientError::Failed(format!(
            "cannot {what} guest {name}'s control socket {}: {e}",
            path.display()
        ))
    };
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoSuchGuest(name.to_string()))
        }
        Err(e) => return Err(failed("connect to", e)),
    };
    stream
        .set_read_timeout(Some(deadline))
        .and_then(|()| stream.set_write_timeout(Some(deadline)))
        .map_err(|e| failed("set a deadline on", e))?;
    Ok(stream)
}

/// Sends `request`, which opens a stream ([`Request::opens_stream`]), to
/// the guest called `name`, and returns the connection once the guest has
/// said `ok`: from then on it carries the stream's protocol, with no
/// deadline.
pub fn open_stream(name: &str, request: &Request) -> Result<UnixStream, ClientError> {
    let dir = runtime_dir_path().map_err(ClientError::Failed)?;
    open_stream_in(&dir, name, request)
}

/// [`open_stream`] to a guest whose socket is in `dir`.
pub fn open_stream_in(
    dir: &Path,
    name: &str,
    request: &Request,
) -> Result<UnixStream, ClientError> {
    let mut stream = connect(dir, name, ANSWER_DEADLINE)?;
    let failed =
        |what: &str, e: io::Error| ClientError::Failed(format!("cannot {what} guest {name}: {e}"));
    stream
        .write_all(format!("{}\n", request.to_line()).as_bytes())
        .map_err(|e| failed("send the request to", e))?;
    // The status line, a byte at a time: what follows it is the stream's.
    let mut status = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => status.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed("read the answer from", e)),
        }
        if status.len() > 4096 {
            return Err(ClientError::Failed(format!(
                "guest {name} answered `{}` with an endless line",
                request.to_line()
            )));
        }
    }
    match Response::from_text(&String::from_utf8_lossy(&status)) {
        Ok(Response::Ok(_)) => {}
        Ok(Response::Error(sentence)) => return Err(ClientError::Failed(sentence)),
        Err(e) => {
            return Err(ClientError::Failed(format!(
                "guest {name} gave an answer lg cannot read: {e}"
            )))
        }
    }
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| failed("lift the deadline on the stream to", e))?;
    Ok(stream)
}

fn exchange(
    dir: &Path,
    name: &str,
    request: &Request,
    deadline: Duration,
) -> Result<String, ClientError> {
    let mut stream = connect(dir, name, deadline)?;
    let path = socket_path(dir, name);
    let failed = |what: &str, e: io::Error| {
        ClientError::Failed(format!(
            "cannot {what} guest {name}'s control socket {}: {e}",
            path.display()
        ))
    };
    stream
        .write_all(format!("{}\n", request.to_line()).as_bytes())
        .map_err(|e| failed("send the request to", e))?;
    // Nothing more is coming from us; a server reading past the line sees
    // the end at once.
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Failed(format!(
                "guest {name} did not answer `{}` within {} seconds",
                request.to_line(),
                deadline.as_secs()
            ))
        } else {
            failed("read the answer from", e)
        }
    })?;
    if answer.is_empty() {
        return Err(ClientError::Failed(format!(
            "guest {name} closed its control socket without answering `{}`",
            request.to_line()
        )));
    }
    match Response::from_text(&String::from_utf8_lossy(&answer)) {
        Ok(Response::Ok(body)) => Ok(body),
        Ok(Response::Error(sentence)) => Err(ClientError::Failed(sentence)),
        Err(e) => Err(ClientError::Failed(format!(
            "guest {name} gave an answer lg cannot read: {e}"
        ))),
    }
}

/// Every guest of this user that answers `info`, oldest first, with the
/// name its socket goes by. Sockets of lgs that are gone, and guests that do
/// not answer in time, are left out without a word: `lg ps` lists what runs.
pub fn running_guests() -> Result<Vec<(String, GuestInfo)>, String> {
    running_guests_in(&runtime_dir_path()?)
}

/// [`running_guests`] whose sockets are in `dir`; a missing `dir` means none.
pub fn running_guests_in(dir: &Path) -> Result<Vec<(String, GuestInfo)>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "cannot list lg's runtime directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut guests = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|file_name| file_name.strip_suffix(".sock"))
        else {
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        let info = exchange(dir, name, &Request::Info, PS_DEADLINE)
            .map_err(|e| e.to_string())
            .and_then(|body| GuestInfo::from_body(&body));
        match info {
            Ok(info) => guests.push((name.to_string(), info)),
            Err(e) => log::debug!("leaving guest {name} out of the list: {e}"),
        }
    }
    guests.sort_by(|(a_name, a), (b_name, b)| {
        (a.started_unix_ms, a_name).cmp(&(b.started_unix_ms, b_name))
    });
    Ok(guests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{ControlSocket, Handler, ServingSocket};
    use crate::test_dir::TestDir;
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    fn guest(name: &str, started_unix_ms: u64) -> GuestInfo {
        GuestInfo {
            name: name.to_string(),
            pid: 1000,
            memory_mib: 256,
            vcpus: 1,
            started_unix_ms,
            kernel: "/boot/vmlinuz".to_string(),
            state: "running".to_string(),
            devices: vec!["console".to_string()],
        }
    }

    fn serve_guest(dir: &Path, info: GuestInfo) -> ServingSocket {
        let name = info.name.clone();
        let handler: Handler = Arc::new(move |request| match request {
            Request::Info => Response::Ok(info.to_body()),
            Request::Regs { cpu } => Response::Error(format!("the guest has no vCPU {cpu}")),
            other => Response::Ok(format!("did {}", other.to_line())),
        });
        ControlSocket::bind_in(dir, &name)
            .unwrap()
            .serve(handler)
            .unwrap()
    }

    #[test]
    fn info_comes_back_as_the_guest_sent_it() {
        let dir = TestDir::new("client-info");
        let _web = serve_guest(dir.path(), guest("web", 5));
        let body = request_in(dir.path(), "web", &Request::Info).unwrap();
        assert_eq!(GuestInfo::from_body(&body), Ok(guest("web", 5)));
        assert_eq!(
            request_in(dir.path(), "web", &Request::Stop { force: true }),
            Ok("did stop force\n".to_string())
        );
    }

    #[test]
    fn an_error_answer_is_failed_with_the_guests_sentence() {
        let dir = TestDir::new("client-error");
        let _web = serve_guest(dir.path(), guest("web", 5));
        let error = request_in(dir.path(), "web", &Request::Regs { cpu: 9 }).unwrap_err();
        assert_eq!(
            error,
            ClientError::Failed("the guest has no vCPU 9".to_string())
        );
        assert_eq!(error.to_string(), "the guest has no vCPU 9");
    }

    #[test]
    fn a_missing_or_stale_guest_is_no_such_guest() {
        let dir = TestDir::new("client-missing");
        let error = request_in(dir.path(), "ghost", &Request::Info).unwrap_err();
        assert_eq!(error, ClientError::NoSuchGuest("ghost".to_string()));
        assert_eq!(
            error.to_string(),
            "no guest named ghost is running (see lg ps)"
        );
        drop(UnixListener::bind(dir.path().join("stale.sock")).unwrap());
        assert_eq!(
            request_in(dir.path(), "stale", &Request::Info),
            Err(ClientError::NoSuchGuest("stale".to_string()))
        );
    }

    #[test]
    fn a_guest_that_never_answers_is_a_failure_in_time() {
        let dir = TestDir::new("client-hung");
        // Listening, but nobody accepts or answers.
        let _listener = UnixListener::bind(dir.path().join("hung.sock")).unwrap();
        let error = exchange(
            dir.path(),
            "hung",
            &Request::Info,
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("guest hung did not answer `info` within"),
            "{error}"
        );
    }

    #[test]
    fn ps_lists_answering_guests_oldest_first() {
        let dir = TestDir::new("client-ps");
        let _young = serve_guest(dir.path(), guest("young", 300));
        let _old = serve_guest(dir.path(), guest("old", 100));
        let _middle = serve_guest(dir.path(), guest("middle", 200));
        drop(UnixListener::bind(dir.path().join("dead.sock")).unwrap());
        fs::write(dir.path().join("notes.txt"), b"not a guest").unwrap();
        let guests = running_guests_in(dir.path()).unwrap();
        let names: Vec<&str> = guests.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["old", "middle", "young"]);
        assert_eq!(guests[0].1, guest("old", 100));
    }

    #[test]
    fn a_stream_request_hands_over_the_connection_after_ok() {
        let dir = TestDir::new("client-stream");
        let handler: Handler = Arc::new(|_| Response::Ok(String::new()));
        let streams: crate::StreamHandler = Arc::new(|request| {
            assert_eq!(request, Request::Gdb);
            Ok(Box::new(|mut stream: UnixStream| {
                std::thread::spawn(move || {
                    // An echo, a byte at a time, as gdb's packets go.
                    let mut byte = [0u8; 1];
                    while let Ok(1) = stream.read(&mut byte) {
                        if stream.write_all(&byte).is_err() {
                            break;
                        }
                    }
                });
            }) as crate::StreamSink)
        });
        let _web = ControlSocket::bind_in(dir.path(), "web")
            .unwrap()
            .serve_with_streams(handler, streams)
            .unwrap();
        let mut stream = open_stream_in(dir.path(), "web", &Request::Gdb).unwrap();
        stream.write_all(b"$qSupported#37").unwrap();
        let mut echoed = [0u8; 14];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"$qSupported#37");
        // The ordinary requests are still answered meanwhile.
        assert_eq!(
            request_in(dir.path(), "web", &Request::Info),
            Ok(String::new())
        );
    }

    #[test]
    fn a_refused_or_unserved_stream_is_the_guests_sentence() {
        let dir = TestDir::new("client-nostream");
        let _plain = serve_guest(dir.path(), guest("plain", 1));
        let error = open_stream_in(dir.path(), "plain", &Request::Gdb).unwrap_err();
        assert_eq!(
            error,
            ClientError::Failed("this lg does not serve `gdb`".to_string())
        );
        let handler: Handler = Arc::new(|_| Response::Ok(String::new()));
        let streams: crate::StreamHandler =
            Arc::new(|_| Err("gdb is already attached to this guest".to_string()));
        let _busy = ControlSocket::bind_in(dir.path(), "busy")
            .unwrap()
            .serve_with_streams(handler, streams)
            .unwrap();
        assert_eq!(
            open_stream_in(dir.path(), "busy", &Request::Gdb).unwrap_err(),
            ClientError::Failed("gdb is already attached to this guest".to_string())
        );
        assert_eq!(
            open_stream_in(dir.path(), "ghost", &Request::Gdb).unwrap_err(),
            ClientError::NoSuchGuest("ghost".to_string())
        );
    }

    #[test]
    fn ps_of_a_missing_directory_is_empty() {
        let dir = TestDir::new("client-nodir");
        assert_eq!(
            running_guests_in(&dir.path().join("absent")),
            Ok(Vec::new())
        );
    }
}
