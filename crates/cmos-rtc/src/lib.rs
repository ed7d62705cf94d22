//! # cmos-rtc: the guest's wall clock
//!
//! A PC keeps the date in a battery-backed MC146818 clock behind ports 0x70
//! (register index) and 0x71 (data). KVM does not emulate it, and a stock
//! kernel reads it once at boot to set the system time; without it the guest
//! would believe it is 1970 (or warn that the RTC is unusable). This is the
//! smallest clock that tells the truth: each read of a time register reports
//! the host's current UTC time, in BCD and 24-hour mode as firmware leaves it,
//! with the update-in-progress flag always clear. Alarms, periodic interrupts
//! and writes to the time are not offered; the CMOS RAM bytes read back what
//! was written.

use std::time::{SystemTime, UNIX_EPOCH};

/// The index port; bit 7 of a write there is the NMI mask, not part of the index.
pub const INDEX_PORT: u16 = 0x70;
/// The data port for the register last selected.
pub const DATA_PORT: u16 = 0x71;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Divider on (32.768 kHz base), 1024 Hz rate, update-in-progress clear.
const STATUS_A_VALUE: u8 = 0x26;
/// 24-hour mode, BCD, no interrupts enabled.
const STATUS_B_VALUE: u8 = 0x02;
/// Valid RAM and time: the battery is good.
const STATUS_D_VALUE: u8 = 0x80;

/// The clock and its 128 bytes of CMOS RAM.
pub struct CmosRtc {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for CmosRtc {
    fn default() -> Self {
        CmosRtc::new()
    }
}

impl CmosRtc {
    /// A clock that reads the host's time.
    pub fn new() -> CmosRtc {
        CmosRtc::with_clock(host_unix_seconds)
    }

    /// A clock that reads `now` (seconds since 1970), for tests.
    pub fn with_clock(now: fn() -> u64) -> CmosRtc {
        CmosRtc {
            index: 0,
            ram: [0; 128],
            now,
        }
    }

    /// The guest reads a byte from `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            INDEX_PORT => self.index,
            DATA_PORT => self.register(self.index),
            _ => 0xff,
        }
    }

    /// The guest writes `value` to `port`.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            INDEX_PORT => self.index = value & 0x7f,
            // The time and status registers are the clock's own; the rest
            // is RAM the guest may use as it likes.
            DATA_PORT if self.index > STATUS_D && self.index != CENTURY => {
                self.ram[usize::from(self.index)] = value;
            }
            _ => {}
        }
    }

    fn register(&self, index: u8) -> u8 {
        let time = CivilTime::from_unix((self.now)());
        match index {
            SECONDS => bcd(time.second),
            MINUTES => bcd(time.minute),
            HOURS => bcd(time.hour),
            WEEKDAY => bcd(time.weekday),
            DAY_OF_MONTH => bcd(time.day),
            MONTH => bcd(time.month),
            YEAR => bcd((time.year % 100) as u8),
            CENTURY => bcd((time.year / 100) as u8),
            STATUS_A => STATUS_A_VALUE,
            STATUS_B => STATUS_B_VALUE,
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALUE,
            other => self.ram[usize::from(other & 0x7f)],
        }
    }
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// A UTC date and time, as the clock's registers hold it.
#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday, as the MC146818 counts
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    /// Converts seconds since 1970 to a calendar date: Howard Hinnant's
    /// days-from-civil algorithm, run backwards.
    fn from_unix(seconds: u64) -> CivilTime {
        let days = (seconds / 86_400) as i64;
        let secs_of_day = seconds % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u8;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        } as u8;
        let year = (year_of_era + era * 400 + i64::from(month <= 2)) as u32;
        CivilTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (weekday 5 when Sunday is 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            hour: (secs_of_day / 3600) as u8,
            minute: (secs_of_day / 60 % 60) as u8,
            second: (secs_of_day % 60) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26 12:34:56 UTC, a Thursday.
    fn fixed() -> u64 {
        1_795_696_496
    }

    fn read_register(rtc: &mut CmosRtc, index: u8) -> u8 {
        rtc.write(INDEX_PORT, index);
        rtc.read(DATA_PORT)
    }

    #[test]
    fn reports_the_date_in_bcd() {
        let mut rtc = CmosRtc::with_clock(fixed);
        assert_eq!(read_register(&mut rtc, SECONDS), 0x56);
        assert_eq!(read_register(&mut rtc, MINUTES), 0x34);
        assert_eq!(read_register(&mut rtc, HOURS), 0x12);
        assert_eq!(read_register(&mut rtc, DAY_OF_MONTH), 0x26);
        assert_eq!(read_register(&mut rtc, MONTH), 0x11);
        assert_eq!(read_register(&mut rtc, YEAR), 0x26);
        assert_eq!(read_register(&mut rtc, CENTURY), 0x20);
        assert_eq!(read_register(&mut rtc, WEEKDAY), 5);
    }

    #[test]
    fn is_never_mid_update_and_always_valid() {
        let mut rtc = CmosRtc::new();
        assert_eq!(read_register(&mut rtc, STATUS_A) & 0x80, 0);
        assert_eq!(read_register(&mut rtc, STATUS_D), 0x80);
        assert_eq!(read_register(&mut rtc, STATUS_B) & 0x04, 0, "BCD mode");
    }

    #[test]
    fn epoch_and_leap_days_convert() {
        assert_eq!(
            CivilTime::from_unix(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        let leap = CivilTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn cmos_ram_keeps_what_the_guest_wrote_and_the_clock_ignores_writes() {
        let mut rtc = CmosRtc::with_clock(fixed);
        rtc.write(INDEX_PORT, 0x40);
        rtc.write(DATA_PORT, 0x99);
        assert_eq!(read_register(&mut rtc, 0x40), 0x99);
        rtc.write(INDEX_PORT, SECONDS);
        rtc.write(DATA_PORT, 0x00);
        assert_eq!(read_register(&mut rtc, SECONDS), 0x56);
        // The NMI-mask bit of the index port is not part of the index.
        rtc.write(INDEX_PORT, 0x80 | 0x40);
        assert_eq!(rtc.read(DATA_PORT), 0x99);
    }
}
