//! lg's own start-up time: from the process's start to the boot vCPU's
//! first `KVM_RUN`, and where it went.
//!
//! Issue 8 asks that lg itself cost under 10 ms before the guest runs, and
//! a figure that leaves out part of the road would flatter it. So the clock
//! starts when the kernel created the process, not at `main`: `execve`,
//! the dynamic loader's relocations and Rust's runtime set-up all count.
//! Linux keeps that instant only in clock ticks (`/proc/self/stat`'s
//! `starttime`, 10 ms apart), too coarse for a 10 ms figure; but it also
//! keeps, in nanoseconds, how long the process has been on a CPU and how
//! long it waited for one (`/proc/self/schedstat`). Before `main` lg never
//! sleeps (the loader reads files already in the page cache), so the sum of
//! the two, read as `main` begins, is the time since the process started.
//! Where that file is missing (a kernel without `CONFIG_SCHED_INFO`) the
//! coarse `starttime` serves, and the line says so.
//!
//! The launcher marks the end of each set-up step with [`step`]; the boot
//! vCPU's thread calls [`first_kvm_run`] just before it enters the guest,
//! which logs (with `-v`) one line with the total and each step's share.
//! `cargo xtask bench` reads that line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps so far: each name with the instant it ended.
struct Timeline {
    /// When the process started, on `Instant`'s (monotonic) clock, and how
    /// that was found.
    origin: Option<(Instant, &'static str)>,
    /// When `main` began.
    main: Option<Instant>,
    steps: Vec<(&'static str, Instant)>,
}

static TIMELINE: Mutex<Timeline> = Mutex::new(Timeline {
    origin: None,
    main: None,
    steps: Vec::new(),
});

/// Called first thing in `main`: notes when `main` began and when the
/// process did.
pub fn begin() {
    let origin = process_start();
    let main = Instant::now();
    if let Ok(mut timeline) = TIMELINE.lock() {
        timeline.origin = origin;
        timeline.main = Some(main);
    }
}

/// Marks the end of the set-up step `name`, which began where the previous
/// one ended.
pub fn step(name: &'static str) {
    let now = Instant::now();
    if let Ok(mut timeline) = TIMELINE.lock() {
        timeline.steps.push((name, now));
    }
}

/// Called on the boot vCPU's thread just before its first `KVM_RUN`: logs
/// the start-up line.
pub fn first_kvm_run() {
    let now = Instant::now();
    let Ok(timeline) = TIMELINE.lock() else {
        return;
    };
    if let Some(line) = timeline.describe(now) {
        log::info!("{line}");
    }
}

impl Timeline {
    /// `start-up: 12.34 ms from the process's start to the first KVM_RUN
    /// (before main 1.2, kernel read 3.4, ...)`, or nothing before `begin`.
    fn describe(&self, first_run: Instant) -> Option<String> {
        let main = self.main?;
        let (origin, how) = self.origin.unwrap_or((main, "main()"));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut parts = vec![format!("before main {:.2}", ms(main - origin))];
        let mut previous = main;
        for &(name, at) in &self.steps {
            parts.push(format!(
                "{name} {:.2}",
                ms(at.saturating_duration_since(previous))
            ));
            previous = previous.max(at);
        }
        parts.push(format!(
            "vCPU thread to KVM_RUN {:.2}",
            ms(first_run.saturating_duration_since(previous))
        ));
        Some(format!(
            "start-up: {:.2} ms from {how} to the first KVM_RUN ({} ms)",
            ms(first_run.saturating_duration_since(origin)),
            parts.join(", ")
        ))
    }
}

/// When the process started, on `Instant`'s clock, and the words that say
/// how it was found.
fn process_start() -> Option<(Instant, &'static str)> {
    if let Some(lived) = schedstat_lifetime() {
        let now = Instant::now();
        return now.checked_sub(lived).map(|at| (at, "the process's start"));
    }
    let lived = stat_lifetime()?;
    let now = Instant::now();
    now.checked_sub(lived)
        .map(|at| (at, "the process's start (to 10 ms)"))
}

/// The process's time on a CPU plus its time waiting for one, from
/// `/proc/self/schedstat` ("on-CPU ns, waiting ns, timeslices").
fn schedstat_lifetime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    parse_schedstat(&text)
}

fn parse_schedstat(text: &str) -> Option<Duration> {
    let mut fields = text.split_whitespace();
    let on_cpu: u64 = fields.next()?.parse().ok()?;
    let waiting: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_nanos(on_cpu.checked_add(waiting)?))
}

/// How long ago the process started by `/proc/self/stat`'s `starttime`
/// (clock ticks since boot), against `CLOCK_BOOTTIME`, the clock it uses.
fn stat_lifetime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let started = parse_starttime(&text, ticks_per_second)?;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let now = Duration::new(u64::try_from(now.tv_sec).ok()?, now.tv_nsec as u32);
    now.checked_sub(started)
}

/// `starttime` (field 22) of a `/proc/PID/stat` line as time since boot.
/// The command name (field 2) is in parentheses and may hold spaces, so
/// fields are counted after its closing parenthesis.
fn parse_starttime(text: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 is the first after the name; field 22 is 19 further on.
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    if ticks_per_second == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_adds_time_on_a_cpu_and_time_waiting() {
        assert_eq!(
            parse_schedstat("109193 3256075 2\n"),
            Some(Duration::from_nanos(109_193 + 3_256_075))
        );
        assert_eq!(parse_schedstat("12\n"), None);
        assert_eq!(parse_schedstat("x 1 1\n"), None);
    }

    #[test]
    fn starttime_is_found_after_a_command_name_with_spaces() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 2264576 \
                    1000 100 18446744073709551615\n";
        assert_eq!(
            parse_starttime(line, 100),
            Some(Duration::from_secs_f64(22645.76))
        );
        assert_eq!(parse_starttime("42 (lg) S 1", 100), None);
    }

    #[test]
    fn the_line_gives_the_total_and_each_step() {
        let origin = Instant::now();
        let main = origin + Duration::from_millis(2);
        let timeline = Timeline {
            origin: Some((origin, "the process's start")),
            main: Some(main),
            steps: vec![
                ("kernel read", main + Duration::from_millis(3)),
                ("VM created", main + Duration::from_millis(7)),
            ],
        };
        let line = timeline.describe(main + Duration::from_millis(8)).unwrap();
        assert_eq!(
            line,
            "start-up: 10.00 ms from the process's start to the first KVM_RUN \
             (before main 2.00, kernel read 3.00, VM created 4.00, \
             vCPU thread to KVM_RUN 1.00 ms)"
        );
        let empty = Timeline {
            origin: None,
            main: None,
            steps: Vec::new(),
        };
        assert_eq!(empty.describe(main), None);
    }
}
