//! The requests a control socket understands and the answers it gives, and
//! their one-line text form.
//!
//! The wire format is text so a person with `socat` is as good a client as
//! `lg`; this module is the one place that turns that text into a checked
//! [`Request`], so the launcher's handler never sees a raw word.

use std::fmt::Write as _;

/// One thing asked of a running guest. See the crate documentation for the
/// text of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// What the guest is: [`crate::GuestInfo`].
    Info,
    /// End the guest: politely (ACPI power button) or, with `force`, at once.
    Stop { force: bool },
    /// Stop running guest code on every vCPU.
    Pause,
    /// Run the vCPUs again after [`Request::Pause`].
    Resume,
    /// The registers of one vCPU.
    Regs { cpu: u32 },
    /// The page tables under `cr3` (the vCPU's own CR3 if `None`), limited to
    /// the virtual addresses `start <= va < end` when `range` is given.
    DumpPageTables {
        cpu: u32,
        cr3: Option<u64>,
        range: Option<(u64, u64)>,
    },
    /// The page-table walk of one virtual address.
    Translate {
        cpu: u32,
        cr3: Option<u64>,
        virt: u64,
    },
    /// The guest's counters.
    Stat,
    /// Turn this connection into a gdb remote-protocol stream to the guest
    /// (after the `ok` line); see [`Request::opens_stream`].
    Gdb,
}

/// The words a request line may start with.
const REQUEST_WORDS: [&str; 9] = [
    "info",
    "stop",
    "pause",
    "resume",
    "regs",
    "dump-pagetables",
    "translate",
    "stat",
    "gdb",
];

impl Request {
    /// The request as its line of text, without the ending `\n`.
    pub fn to_line(&self) -> String {
        match self {
            Request::Info => "info".to_string(),
            Request::Stop { force: false } => "stop".to_string(),
            Request::Stop { force: true } => "stop force".to_string(),
            Request::Pause => "pause".to_string(),
            Request::Resume => "resume".to_string(),
            Request::Regs { cpu } => format!("regs cpu={cpu}"),
            Request::DumpPageTables { cpu, cr3, range } => {
                let mut line = format!("dump-pagetables cpu={cpu}");
                if let Some(cr3) = cr3 {
                    let _ = write!(line, " cr3={cr3:#x}");
                }
                if let Some((start, end)) = range {
                    let _ = write!(line, " range={start:#x}-{end:#x}");
                }
                line
            }
            Request::Translate { cpu, cr3, virt } => {
                let mut line = format!("translate cpu={cpu}");
                if let Some(cr3) = cr3 {
                    let _ = write!(line, " cr3={cr3:#x}");
                }
                let _ = write!(line, " {virt:#x}");
                line
            }
            Request::Stat => "stat".to_string(),
            Request::Gdb => "gdb".to_string(),
        }
    }

    /// Whether the answer is not a body but the connection itself: after
    /// `ok`, both ends speak another protocol until one closes.
    pub fn opens_stream(&self) -> bool {
        matches!(self, Request::Gdb)
    }

    /// Reads a request line (a trailing `\n` or `\r\n` is allowed). Any word
    /// lg does not expect is an error naming that word.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let Some(verb) = words.next() else {
            return Err("the request is empty".to_string());
        };
        if !REQUEST_WORDS.contains(&verb) {
            return Err(unknown_request(verb));
        }
        let mut arguments = Arguments::new(verb);
        for word in words {
            arguments.add(word)?;
        }
        let request = match verb {
            "info" => Request::Info,
            "stop" => Request::Stop {
                force: arguments.flag("force"),
            },
            "pause" => Request::Pause,
            "resume" => Request::Resume,
            "regs" => Request::Regs {
                cpu: arguments.cpu()?,
            },
            "dump-pagetables" => Request::DumpPageTables {
                cpu: arguments.cpu()?,
                cr3: arguments.number("cr3")?,
                range: arguments.range()?,
            },
            "translate" => {
                let cpu = arguments.cpu()?;
                let cr3 = arguments.number("cr3")?;
                let virt = arguments.address()?;
                Request::Translate { cpu, cr3, virt }
            }
            "stat" => Request::Stat,
            "gdb" => Request::Gdb,
            _ => return Err(unknown_request(verb)),
        };
        arguments.finish()?;
        Ok(request)
    }
}

fn unknown_request(verb: &str) -> String {
    format!(
        "unknown request `{verb}` (lg understands {})",
        REQUEST_WORDS.join(", ")
    )
}

/// The words after a request's first, taken one by one as the request's
/// parser asks for them; whatever is left over is an unknown word.
struct Arguments<'a> {
    verb: &'a str,
    keyed: Vec<(&'a str, &'a str)>,
    bare: Vec<&'a str>,
}

impl<'a> Arguments<'a> {
    fn new(verb: &'a str) -> Self {
        Arguments {
            verb,
            keyed: Vec::new(),
            bare: Vec::new(),
        }
    }

    fn add(&mut self, word: &'a str) -> Result<(), String> {
        match word.split_once('=') {
            Some((key, value)) => {
                if self.keyed.iter().any(|(k, _)| *k == key) {
                    return Err(format!(
                        "`{key}=` is given twice in the {} request",
                        self.verb
                    ));
                }
                self.keyed.push((key, value));
            }
            None => self.bare.push(word),
        }
        Ok(())
    }

    fn take_keyed(&mut self, key: &str) -> Option<&'a str> {
        let index = self.keyed.iter().position(|(k, _)| *k == key)?;
        Some(self.keyed.remove(index).1)
    }

    fn flag(&mut self, word: &str) -> bool {
        match self.bare.iter().position(|w| *w == word) {
            Some(index) => {
                self.bare.remove(index);
                true
            }
            None => false,
        }
    }

    /// `cpu=N`, 0 when left out: most guests a developer pokes at have one.
    fn cpu(&mut self) -> Result<u32, String> {
        let Some(cpu) = self.number("cpu")? else {
            return Ok(0);
        };
        u32::try_from(cpu).map_err(|_| format!("`cpu={cpu}` is not a vCPU number"))
    }

    fn number(&mut self, key: &str) -> Result<Option<u64>, String> {
        let Some(value) = self.take_keyed(key) else {
            return Ok(None);
        };
        parse_number(value)
            .map(Some)
            .ok_or_else(|| format!("`{key}={value}` is not a number (use decimal or 0x hex)"))
    }

    /// `range=START-END`, a half-open range of virtual addresses.
    fn range(&mut self) -> Result<Option<(u64, u64)>, String> {
        let Some(value) = self.take_keyed("range") else {
            return Ok(None);
        };
        let bounds = value
            .split_once('-')
            .and_then(|(start, end)| Some((parse_number(start)?, parse_number(end)?)));
        match bounds {
            Some((start, end)) if start < end => Ok(Some((start, end))),
            Some(_) => Err(format!(
                "`range={value}` is empty: its start must be below its end"
            )),
            None => Err(format!(
                "`range={value}` is not a range (write START-END, in decimal or 0x hex)"
            )),
        }
    }

    /// The one bare word of a `translate`: the virtual address.
    fn address(&mut self) -> Result<u64, String> {
        if self.bare.is_empty() {
            return Err(format!("the {} request needs a virtual address", self.verb));
        }
        let word = self.bare.remove(0);
        parse_number(word)
            .ok_or_else(|| format!("`{word}` is not a virtual address (use decimal or 0x hex)"))
    }

    /// Every word must have been taken; the first one left is the error.
    fn finish(self) -> Result<(), String> {
        if let Some(word) = self.bare.first() {
            return Err(format!(
                "unknown word `{word}` in the {} request",
                self.verb
            ));
        }
        if let Some((key, value)) = self.keyed.first() {
            return Err(format!(
                "unknown word `{key}={value}` in the {} request",
                self.verb
            ));
        }
        Ok(())
    }
}

/// A number in decimal or `0x` hex, as a developer copies it from a log.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// What the guest answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `ok`, then the body.
    Ok(String),
    /// `error`, then one sentence saying what went wrong.
    Error(String),
}

impl Response {
    /// The response as sent: the status line, then the body, which ends
    /// with `\n` unless it is empty.
    pub fn to_text(&self) -> String {
        match self {
            Response::Ok(body) if body.is_empty() || body.ends_with('\n') => format!("ok\n{body}"),
            Response::Ok(body) => format!("ok\n{body}\n"),
            Response::Error(sentence) => {
                // The sentence must stay on the status line.
                format!("error {}\n", sentence.trim().replace(['\n', '\r'], " "))
            }
        }
    }

    /// Reads a whole response, as received up to the end of the stream.
    pub fn from_text(text: &str) -> Result<Response, String> {
        let (status, body) = text.split_once('\n').unwrap_or((text, ""));
        if status == "ok" {
            return Ok(Response::Ok(body.to_string()));
        }
        if let Some(sentence) = status.strip_prefix("error ") {
            return Ok(Response::Error(sentence.to_string()));
        }
        if text.is_empty() {
            return Err("the guest closed the connection without answering".to_string());
        }
        Err(format!(
            "the guest answered `{}`, which is neither `ok` nor `error`",
            status.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind_of_request() -> Vec<Request> {
        vec![
            Request::Info,
            Request::Stop { force: false },
            Request::Stop { force: true },
            Request::Pause,
            Request::Resume,
            Request::Regs { cpu: 0 },
            Request::Regs { cpu: 7 },
            Request::DumpPageTables {
                cpu: 0,
                cr3: None,
                range: None,
            },
            Request::DumpPageTables {
                cpu: 1,
                cr3: Some(0x1000),
                range: Some((0xffff_8000_0000_0000, 0xffff_9000_0000_0000)),
            },
            Request::DumpPageTables {
                cpu: 2,
                cr3: None,
                range: Some((0, 0x20_0000)),
            },
            Request::Translate {
                cpu: 0,
                cr3: None,
                virt: 0xffff_ffff_8100_0000,
            },
            Request::Translate {
                cpu: 3,
                cr3: Some(0x2_3000),
                virt: 0,
            },
            Request::Stat,
            Request::Gdb,
        ]
    }

    #[test]
    fn every_request_survives_its_line() {
        for request in every_kind_of_request() {
            let line = request.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Request::parse(&line), Ok(request.clone()), "{line}");
            assert_eq!(
                Request::parse(&format!("{line}\r\n")),
                Ok(request),
                "{line}"
            );
        }
    }

    #[test]
    fn lines_read_as_the_documentation_says() {
        assert_eq!(Request::parse("info\n"), Ok(Request::Info));
        assert_eq!(
            Request::parse("stop force"),
            Ok(Request::Stop { force: true })
        );
        assert_eq!(Request::parse("regs"), Ok(Request::Regs { cpu: 0 }));
        assert_eq!(Request::parse("regs cpu=0x2"), Ok(Request::Regs { cpu: 2 }));
        assert_eq!(
            Request::parse(
                "dump-pagetables range=0xffff800000000000-0xffff900000000000 cpu=0 cr3=4096"
            ),
            Ok(Request::DumpPageTables {
                cpu: 0,
                cr3: Some(0x1000),
                range: Some((0xffff_8000_0000_0000, 0xffff_9000_0000_0000)),
            })
        );
        assert_eq!(
            Request::parse("translate 0XFFFFFFFF81000000   cpu=1"),
            Ok(Request::Translate {
                cpu: 1,
                cr3: None,
                virt: 0xffff_ffff_8100_0000
            })
        );
    }

    #[test]
    fn to_line_writes_documented_words() {
        assert_eq!(
            Request::DumpPageTables {
                cpu: 0,
                cr3: Some(0x1000),
                range: Some((0xffff_8000_0000_0000, 0xffff_9000_0000_0000)),
            }
            .to_line(),
            "dump-pagetables cpu=0 cr3=0x1000 range=0xffff800000000000-0xffff900000000000"
        );
        assert_eq!(
            Request::Translate {
                cpu: 0,
                cr3: None,
                virt: 0xffff_ffff_8100_0000
            }
            .to_line(),
            "translate cpu=0 0xffffffff81000000"
        );
    }

    #[test]
    fn junk_is_an_error_naming_the_culprit() {
        let cases = [
            ("", "empty"),
            ("   \n", "empty"),
            ("reboot", "`reboot`"),
            ("reboot cpu=1 cpu=1", "`reboot`"),
            ("info please", "`please`"),
            ("stop now", "`now`"),
            ("pause cpu=1", "`cpu=1`"),
            ("regs cpu=", "`cpu=`"),
            ("regs cpu=zero", "`cpu=zero`"),
            ("regs cpu=0x", "`cpu=0x`"),
            ("regs cpu=4294967296", "`cpu=4294967296`"),
            ("regs cpu=1 cpu=2", "`cpu=`"),
            ("regs cpu=-1", "`cpu=-1`"),
            ("dump-pagetables cr3=0xg", "`cr3=0xg`"),
            ("dump-pagetables range=0x1000", "`range=0x1000`"),
            (
                "dump-pagetables range=0x2000-0x1000",
                "`range=0x2000-0x1000`",
            ),
            ("dump-pagetables range=5-5", "`range=5-5`"),
            ("dump-pagetables depth=3", "`depth=3`"),
            ("translate cpu=0", "virtual address"),
            ("translate kernel_start", "`kernel_start`"),
            ("translate 0x1000 0x2000", "`0x2000`"),
            ("translate 0x10000000000000000", "`0x10000000000000000`"),
            ("stat all", "`all`"),
            ("gdb cpu=1", "`cpu=1`"),
        ];
        for (line, culprit) in cases {
            let error = Request::parse(line).unwrap_err();
            assert!(error.contains(culprit), "{line:?} gave {error:?}");
        }
    }

    #[test]
    fn only_gdb_opens_a_stream() {
        for request in every_kind_of_request() {
            assert_eq!(
                request.opens_stream(),
                request == Request::Gdb,
                "{request:?}"
            );
        }
    }

    #[test]
    fn responses_survive_their_text() {
        let cases = [
            Response::Ok(String::new()),
            Response::Ok("name=web\npid=1\n".to_string()),
            Response::Error("the guest has no vCPU 9".to_string()),
        ];
        for response in cases {
            assert_eq!(Response::from_text(&response.to_text()), Ok(response));
        }
    }

    #[test]
    fn response_text_is_as_documented() {
        assert_eq!(Response::Ok(String::new()).to_text(), "ok\n");
        assert_eq!(Response::Ok("a=1".to_string()).to_text(), "ok\na=1\n");
        assert_eq!(
            Response::Error("two\nlines".to_string()).to_text(),
            "error two lines\n"
        );
        assert!(Response::from_text("")
            .unwrap_err()
            .contains("without answering"));
        assert!(Response::from_text("okay\n")
            .unwrap_err()
            .contains("`okay`"));
    }
}
