//! What a guest says about itself (`info`), and `lg ps`'s table of them.
//!
//! The body is `key=value` lines rather than a serialization format so it
//! reads well through `socat` and needs no parser crate; a key this version
//! does not know is skipped, so an older `lg ps` can still list a newer lg.

use std::fmt::Write as _;
use std::path::Path;

/// A running guest, as `lg ps` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestInfo {
    pub name: String,
    /// The lg process running the guest.
    pub pid: u32,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// When the guest started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The kernel image, as given on lg's command line.
    pub kernel: String,
    /// `running` or `paused`.
    pub state: String,
    /// One short description per device, e.g. `console`, `blk:/tmp/disk.img`.
    pub devices: Vec<String>,
}

const KEYS: [&str; 8] = [
    "name",
    "pid",
    "memory_mib",
    "vcpus",
    "started_unix_ms",
    "kernel",
    "state",
    "devices",
];

impl GuestInfo {
    /// The `info` body: one `key=value` line per field, devices
    /// comma-separated on one `devices=` line. A value cannot hold a line
    /// break, nor a device description a comma: each becomes a space.
    pub fn to_body(&self) -> String {
        let devices: Vec<String> = self
            .devices
            .iter()
            .map(|device| device.replace(',', " "))
            .collect();
        let values = [
            self.name.clone(),
            self.pid.to_string(),
            self.memory_mib.to_string(),
            self.vcpus.to_string(),
            self.started_unix_ms.to_string(),
            self.kernel.clone(),
            self.state.clone(),
            devices.join(","),
        ];
        let mut body = String::new();
        for (key, value) in KEYS.iter().zip(values) {
            let _ = writeln!(body, "{key}={}", value.replace(['\n', '\r'], " "));
        }
        body
    }

    /// Reads an `info` body. Every field must be there; unknown keys are
    /// skipped.
    pub fn from_body(body: &str) -> Result<GuestInfo, String> {
        let mut values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for line in body.lines().filter(|line| !line.trim().is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!(
                    "the guest's info has the line `{line}`, which is not key=value"
                ));
            };
            if let Some(index) = KEYS.iter().position(|known| *known == key) {
                values[index] = Some(value);
            }
        }
        let field = |index: usize| {
            values[index].ok_or_else(|| format!("the guest's info lacks `{}=`", KEYS[index]))
        };
        let number = |index: usize| -> Result<u64, String> {
            let value = field(index)?;
            value.parse().map_err(|_| {
                format!(
                    "the guest's info says `{}={value}`, which is not a number",
                    KEYS[index]
                )
            })
        };
        let small_number = |index: usize| -> Result<u32, String> {
            let value = number(index)?;
            u32::try_from(value).map_err(|_| {
                format!(
                    "the guest's info says `{}={value}`, which is too large",
                    KEYS[index]
                )
            })
        };
        let devices = field(7)?;
        Ok(GuestInfo {
            name: field(0)?.to_string(),
            pid: small_number(1)?,
            memory_mib: number(2)?,
            vcpus: small_number(3)?,
            started_unix_ms: number(4)?,
            kernel: field(5)?.to_string(),
            state: field(6)?.to_string(),
            devices: if devices.is_empty() {
                Vec::new()
            } else {
                devices.split(',').map(str::to_string).collect()
            },
        })
    }
}

/// `lg ps`'s table: a header and one aligned row per guest, or nothing at
/// all for no guests (the caller says `no guests running` on stderr, so a
/// script reading stdout sees an empty list).
pub fn format_ps(guests: &[GuestInfo], now_unix_ms: u64) -> String {
    if guests.is_empty() {
        return String::new();
    }
    let header = [
        "NAME", "PID", "MEMORY", "VCPUS", "UPTIME", "STATE", "KERNEL", "DEVICES",
    ]
    .map(str::to_string);
    let mut rows = vec![header];
    for guest in guests {
        let kernel = Path::new(&guest.kernel)
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| guest.kernel.clone());
        let uptime_ms = now_unix_ms.saturating_sub(guest.started_unix_ms);
        rows.push([
            or_dash(guest.name.clone()),
            guest.pid.to_string(),
            format_memory(guest.memory_mib),
            guest.vcpus.to_string(),
            format_uptime(uptime_ms / 1000),
            or_dash(guest.state.clone()),
            or_dash(kernel),
            or_dash(guest.devices.join(",")),
        ]);
    }
    let mut widths = [0; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

/// An empty cell would shift the eye to the next column; a dash holds it.
fn or_dash(cell: String) -> String {
    if cell.is_empty() {
        "-".to_string()
    } else {
        cell
    }
}

/// Memory as it is given on lg's command line: `256M`, or `2G` when whole
/// gibibytes.
fn format_memory(mib: u64) -> String {
    let (gib, rest) = (mib / 1024, mib % 1024);
    if gib > 0 && rest == 0 {
        format!("{gib}G")
    } else {
        format!("{mib}M")
    }
}

/// An uptime in its two largest units, like `ps` and `docker ps`: `4s`,
/// `12m03s`, `2h05m`, `3d04h`.
fn format_uptime(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MINUTE, s % MINUTE),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> GuestInfo {
        GuestInfo {
            name: "web".to_string(),
            pid: 4242,
            memory_mib: 256,
            vcpus: 2,
            started_unix_ms: 1_767_225_600_000,
            kernel: "/boot/vmlinuz-6.12".to_string(),
            state: "running".to_string(),
            devices: vec![
                "console".to_string(),
                "rng".to_string(),
                "blk:/tmp/disk.img".to_string(),
            ],
        }
    }

    #[test]
    fn info_survives_its_body() {
        let info = web();
        assert_eq!(GuestInfo::from_body(&info.to_body()), Ok(info));
        let bare = GuestInfo {
            devices: Vec::new(),
            kernel: "my kernel with spaces".to_string(),
            ..web()
        };
        assert_eq!(GuestInfo::from_body(&bare.to_body()), Ok(bare));
    }

    #[test]
    fn info_body_is_key_value_lines() {
        assert_eq!(
            web().to_body(),
            "name=web\npid=4242\nmemory_mib=256\nvcpus=2\nstarted_unix_ms=1767225600000\n\
             kernel=/boot/vmlinuz-6.12\nstate=running\ndevices=console,rng,blk:/tmp/disk.img\n"
        );
    }

    #[test]
    fn line_breaks_and_commas_cannot_break_the_body() {
        let odd = GuestInfo {
            kernel: "/tmp/a\nname=evil".to_string(),
            devices: vec!["blk:/tmp/a,b.img".to_string(), "console".to_string()],
            ..web()
        };
        let read = GuestInfo::from_body(&odd.to_body()).unwrap();
        assert_eq!(read.name, "web");
        assert_eq!(read.kernel, "/tmp/a name=evil");
        assert_eq!(read.devices, ["blk:/tmp/a b.img", "console"]);
    }

    #[test]
    fn unknown_keys_are_skipped_and_missing_ones_named() {
        let newer = format!("{}balloon_mib=12\n", web().to_body());
        assert_eq!(GuestInfo::from_body(&newer), Ok(web()));
        let without_pid = web().to_body().replace("pid=4242\n", "");
        assert!(GuestInfo::from_body(&without_pid)
            .unwrap_err()
            .contains("`pid=`"));
        let bad_vcpus = web().to_body().replace("vcpus=2", "vcpus=two");
        assert!(GuestInfo::from_body(&bad_vcpus)
            .unwrap_err()
            .contains("`vcpus=two`"));
        assert!(GuestInfo::from_body("hello\n")
            .unwrap_err()
            .contains("`hello`"));
    }

    #[test]
    fn uptime_shows_its_two_largest_units() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(4), "4s");
        assert_eq!(format_uptime(59), "59s");
        assert_eq!(format_uptime(60), "1m00s");
        assert_eq!(format_uptime(12 * 60 + 3), "12m03s");
        assert_eq!(format_uptime(2 * 3600 + 5 * 60 + 59), "2h05m");
        assert_eq!(format_uptime(86_399), "23h59m");
        assert_eq!(format_uptime(3 * 86_400 + 4 * 3600 + 1), "3d04h");
        assert_eq!(format_uptime(400 * 86_400), "400d00h");
    }

    #[test]
    fn memory_reads_like_the_command_line() {
        assert_eq!(format_memory(256), "256M");
        assert_eq!(format_memory(1536), "1536M");
        assert_eq!(format_memory(2048), "2G");
    }

    #[test]
    fn ps_table_is_aligned() {
        let db = GuestInfo {
            name: "database-primary".to_string(),
            pid: 17,
            memory_mib: 4096,
            vcpus: 16,
            started_unix_ms: web().started_unix_ms - 3 * 86_400_000,
            kernel: "bzImage".to_string(),
            state: "paused".to_string(),
            devices: Vec::new(),
        };
        let now = web().started_unix_ms + 4_000;
        let table = format_ps(&[web(), db], now);
        let expected = "\
NAME              PID   MEMORY  VCPUS  UPTIME  STATE    KERNEL        DEVICES
web               4242  256M    2      4s      running  vmlinuz-6.12  console,rng,blk:/tmp/disk.img
database-primary  17    4G      16     3d00h   paused   bzImage       -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn ps_of_nothing_is_nothing() {
        assert_eq!(format_ps(&[], 0), "");
    }

    #[test]
    fn a_clock_behind_the_start_is_zero_uptime() {
        let table = format_ps(&[web()], 0);
        assert!(table.lines().nth(1).unwrap().contains(" 0s "), "{table}");
    }
}
