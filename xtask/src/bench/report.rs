//! What `cargo xtask bench` measured: the `LG_BENCH` lines the test hosts
//! printed, read back into figures, and written out as a Markdown table
//! (what the README's Performance section quotes) and as JSON, every sample
//! included, so two runs can be compared.
//!
//! Two tables: lg beside QEMU (a column per hypervisor, and the ratio
//! lg / QEMU), and lg alone (lg's start-up, lazy RAM, many guests), each
//! figure against issue 8's target where it has one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{
    Devices, Part, Vmm, BOOT, BOOT_ARGS, DISK_MB, GUEST_MB, IDLE, LAZY_GUEST_MB, LAZY_HELD_MB,
    LAZY_TOUCH_MB, LG, MANY_GUESTS, MANY_GUEST_MB, NET, NET_MB, NET_RUNS, ONE_RUNS, QEMU_MICROVM,
    QEMU_PC, SHELL_ARGS, STAGGER_SECONDS, TESTHOST_MB,
};
use crate::error::Context;
use crate::{command, shell, show_path, Error};

/// The many-guests modes, as the script and the figures' keys say them.
pub const AT_ONCE: &str = "at-once";
pub const STAGGERED: &str = "staggered";

/// A column of the table beside QEMU: one hypervisor configuration.
#[derive(Debug, Clone)]
struct Column {
    vmm: Vmm,
    /// The commands, as run in the test host: the boot figure's, the idle
    /// guest's and the network guest's.
    commands: [(&'static str, String); 3],
    /// Why it has no figures, when it has none.
    unavailable: Option<String>,
}

/// One row: a figure, its samples per column (lg alone: just `lg`).
#[derive(Debug, Clone)]
struct Figure {
    key: String,
    title: String,
    unit: &'static str,
    /// Samples by column key.
    samples: BTreeMap<&'static str, Vec<f64>>,
    /// Issue 8's target, when it has one: the median must be below it.
    target_below: Option<f64>,
}

impl Figure {
    fn new(key: &str, title: &str, unit: &'static str) -> Figure {
        Figure {
            key: key.to_string(),
            title: title.to_string(),
            unit,
            samples: BTreeMap::new(),
            target_below: None,
        }
    }

    fn below(mut self, target: f64) -> Figure {
        self.target_below = Some(target);
        self
    }

    fn median(&self, column: &str) -> Option<f64> {
        median(self.samples.get(column)?)
    }

    /// lg's median over `column`'s.
    fn ratio(&self, column: &str) -> Option<f64> {
        let (lg, other) = (self.median(LG.key)?, self.median(column)?);
        (other > 0.0).then_some(lg / other)
    }

    /// The target column of the lg-alone table.
    fn verdict(&self) -> String {
        let (Some(target), Some(value)) = (self.target_below, self.median(LG.key)) else {
            return match self.target_below {
                Some(target) => format!("under {}: not measured", number(target)),
                None => String::new(),
            };
        };
        if value < target {
            format!("under {}: met", number(target))
        } else {
            format!(
                "under {}: missed by {} ({:.0}% over)",
                number(target),
                number(value - target),
                (value / target - 1.0) * 100.0
            )
        }
    }
}

/// One of the many guests: its ts stamps (seconds) and exit status.
#[derive(Debug, Clone, PartialEq)]
struct ManyGuest {
    start: f64,
    init: Option<f64>,
    end: f64,
    status: String,
}

/// Everything one `cargo xtask bench` measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub command: String,
    pub runs: u32,
    /// Seconds since the epoch when the report was made.
    pub when: u64,
    pub kernel: String,
    parts: Vec<Part>,
    /// This machine's `/proc/loadavg` when the bench started and ended.
    load_before: String,
    load_after: String,
    /// The lg commit when the bench started (lg is built then), and when it
    /// ended, if the tree moved in between.
    commit: String,
    commit_after: Option<String>,
    columns: Vec<Column>,
    /// lg beside QEMU.
    figures: Vec<Figure>,
    /// lg alone, with issue 8's targets.
    lg_only: Vec<Figure>,
    /// The test host's own read of the disk image, MiB/s per run.
    host_read: Vec<f64>,
    /// The many guests, by mode.
    many: BTreeMap<String, Vec<ManyGuest>>,
    /// Test hosts whose kernel crashed: what ran, and the crash's first line.
    crashes: Vec<(String, String)>,
    /// lg's start-up lines, each with its steps (`LG_BENCH_STARTUP`).
    startup_steps: Vec<String>,
    /// `LG_BENCH fail` lines and the console lines that explain them.
    failures: Vec<String>,
}

impl Report {
    /// An empty report for `vmms` (lg first), before any test host ran.
    pub(super) fn new(vmms: &[Vmm], options: &super::Options) -> Report {
        let many = |mode: &str, what: &str| {
            let at_once = mode == AT_ONCE;
            let ratio = Figure::new(
                &format!("many_{mode}_ratio"),
                &format!(
                    "{what}: time for all / time for one{}",
                    if at_once { "" } else { " (stagger included)" }
                ),
                "x",
            );
            vec![
                Figure::new(
                    &format!("many_{mode}_reached"),
                    &format!("{what}: guests that reached /init (of {MANY_GUESTS})"),
                    "guests",
                ),
                Figure::new(
                    &format!("many_{mode}_all_init_ms"),
                    &format!("{what}: first start to the last guest's /init"),
                    "ms",
                ),
                Figure::new(
                    &format!("many_{mode}_all_exit_ms"),
                    &format!("{what}: first start to the last guest's exit"),
                    "ms",
                ),
                Figure::new(
                    &format!("many_{mode}_per_guest_ms"),
                    &format!("{what}: each guest's own start to /init (median)"),
                    "ms",
                ),
                if at_once { ratio.below(3.0) } else { ratio },
            ]
        };
        let mut lg_only = vec![
            Figure::new(
                "startup_ms",
                "lg's start-up: the process's start to the first KVM_RUN (boot figure's guests, -v)",
                "ms",
            )
            .below(10.0),
            Figure::new(
                "lazy_testhost_available_mib",
                &format!(
                    "lazy RAM: the test host's MemAvailable ({LAZY_HELD_MB} of its \
                     {TESTHOST_MB} MiB held)"
                ),
                "MiB",
            ),
            Figure::new(
                "lazy_memtotal_mib",
                &format!("lazy RAM: the guest's MemTotal (lg run {LAZY_GUEST_MB})"),
                "MiB",
            ),
            Figure::new(
                "lazy_rss_mib",
                "lazy RAM: lg's RSS, guest at its shell",
                "MiB",
            ),
            Figure::new(
                "lazy_guest_ram_mib",
                "lazy RAM: guest RAM resident, at its shell",
                "MiB",
            ),
            Figure::new(
                "lazy_rss_touched_mib",
                &format!("lazy RAM: lg's RSS once the guest filled {LAZY_TOUCH_MB} MiB"),
                "MiB",
            ),
            Figure::new(
                "one_init_ms",
                &format!(
                    "one {MANY_GUEST_MB} MiB guest alone: start to /init (median of {ONE_RUNS})"
                ),
                "ms",
            ),
        ];
        lg_only.extend(many(AT_ONCE, &format!("{MANY_GUESTS} at once")));
        lg_only.extend(many(
            STAGGERED,
            &format!("{MANY_GUESTS} staggered {STAGGER_SECONDS} s apart"),
        ));
        let command = |vmm: Vmm, args: &str, devices: Devices| {
            shell::join(&vmm.command(GUEST_MB, args, devices))
        };
        Report {
            command: options.command.clone(),
            runs: options.runs,
            when: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kernel: String::new(),
            parts: options.parts.clone(),
            load_before: load(),
            load_after: String::new(),
            commit: commit(),
            commit_after: None,
            columns: vmms
                .iter()
                .map(|&vmm| Column {
                    vmm,
                    commands: [
                        ("boot", command(vmm, BOOT_ARGS, BOOT)),
                        ("idle", command(vmm, SHELL_ARGS, IDLE)),
                        ("net", command(vmm, SHELL_ARGS, NET)),
                    ],
                    unavailable: None,
                })
                .collect(),
            figures: vec![
                Figure::new("boot_init_ms", "boot: start to guest /init", "ms"),
                Figure::new("boot_exit_ms", "boot: start to exit (poweroff)", "ms"),
                Figure::new(
                    "memory_overhead_mib",
                    "memory overhead: RSS - guest RAM",
                    "MiB",
                ),
                Figure::new("rss_mib", "RSS, idle guest at its shell", "MiB"),
                Figure::new("guest_ram_mib", "guest RAM resident", "MiB"),
                Figure::new("block_read_mib_s", "block: dd read, O_DIRECT", "MiB/s"),
                Figure::new(
                    "block_write_mib_s",
                    "block: dd write, O_DIRECT + fsync",
                    "MiB/s",
                ),
                Figure::new(
                    "block_randread_iops",
                    "block: 4 KiB random read, O_DIRECT, QD1",
                    "IOPS",
                ),
                Figure::new("net_down_mib_s", "net: TCP host to guest (wget)", "MiB/s"),
                Figure::new("net_up_mib_s", "net: TCP guest to host (wget)", "MiB/s"),
            ],
            lg_only,
            host_read: Vec::new(),
            many: BTreeMap::new(),
            crashes: Vec::new(),
            startup_steps: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Reads the `LG_BENCH` lines of a test host's transcript.
    pub(super) fn read(&mut self, output: &str) {
        for line in output.lines() {
            if let Some(at) = line.find("LG_BENCH_LOG ") {
                self.failures
                    .push(format!("    | {}", &line[at + "LG_BENCH_LOG ".len()..]));
                continue;
            }
            if let Some(at) = line.find("LG_BENCH_STARTUP ") {
                let text = line[at + "LG_BENCH_STARTUP ".len()..].trim_end_matches('\r');
                self.startup_steps.push(format!("  {text}"));
                continue;
            }
            let Some(at) = line.find("LG_BENCH ") else {
                continue;
            };
            let words: Vec<&str> = line[at + "LG_BENCH ".len()..].split_whitespace().collect();
            self.read_words(&words);
        }
    }

    fn read_words(&mut self, words: &[&str]) {
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<f64>().ok());
        let kind = words.first().copied().unwrap_or_default();
        let key = words.get(1).copied().unwrap_or_default();
        let warm_up = words.get(2) == Some(&"0");
        let mib_s = |bytes: Option<f64>, seconds: Option<f64>| match (bytes, seconds) {
            (Some(b), Some(s)) if s > 0.0 => Some(b / 1048576.0 / s),
            _ => None,
        };
        match kind {
            "fail" => self.failures.push(format!("  {}", words[1..].join(" "))),
            "hostread" => {
                if let Some(rate) = mib_s(number(2), number(3)) {
                    self.host_read.push(rate);
                }
            }
            "boot" if key == "one" => {
                if let (false, Some(init)) = (warm_up, number(3)) {
                    self.add_lg_only("one_init_ms", init);
                }
            }
            "startup" if key == LG.key && !warm_up => {
                if let Some(ms) = number(3) {
                    self.add_lg_only("startup_ms", ms);
                }
            }
            "lazyhost" => {
                if let Some(kb) = number(2) {
                    self.add_lg_only("lazy_testhost_available_mib", kb / 1024.0);
                }
            }
            "lazymem" | "lazytouched" => {
                if let (Some(rss), Some(guest_rss)) = (number(3), number(5)) {
                    if kind == "lazymem" {
                        self.add_lg_only("lazy_rss_mib", rss / 1024.0);
                        self.add_lg_only("lazy_guest_ram_mib", guest_rss / 1024.0);
                    } else {
                        self.add_lg_only("lazy_rss_touched_mib", rss / 1024.0);
                    }
                }
            }
            "lazymemtotal" => {
                if let Some(kb) = number(3) {
                    self.add_lg_only("lazy_memtotal_mib", kb / 1024.0);
                }
            }
            "manyguest" => {
                if let (Some(start), Some(init), Some(end)) = (number(3), number(4), number(5)) {
                    self.many
                        .entry(key.to_string())
                        .or_default()
                        .push(ManyGuest {
                            start,
                            init: (init > 0.0).then_some(init),
                            end,
                            status: words.get(6).unwrap_or(&"").to_string(),
                        });
                }
            }
            _ => {
                let Some(vmm) = self.columns.iter().map(|c| c.vmm).find(|v| v.key == key) else {
                    return;
                };
                let mut add = |figure: &str, value: f64| {
                    if let Some(f) = self.figures.iter_mut().find(|f| f.key == figure) {
                        f.samples.entry(vmm.key).or_default().push(value);
                    }
                };
                match kind {
                    "boot" if !warm_up => {
                        if let (Some(init), Some(exit)) = (number(3), number(4)) {
                            add("boot_init_ms", init);
                            add("boot_exit_ms", exit);
                        }
                    }
                    "mem" => {
                        if let (Some(rss), Some(guest_rss)) = (number(3), number(5)) {
                            add("memory_overhead_mib", (rss - guest_rss) / 1024.0);
                            add("rss_mib", rss / 1024.0);
                            add("guest_ram_mib", guest_rss / 1024.0);
                        }
                    }
                    "blk" | "blkwrite" | "netdown" | "netup" => {
                        let figure = match kind {
                            "blk" => "block_read_mib_s",
                            "blkwrite" => "block_write_mib_s",
                            "netdown" => "net_down_mib_s",
                            _ => "net_up_mib_s",
                        };
                        if let Some(rate) = mib_s(number(3), number(4)) {
                            add(figure, rate);
                        }
                    }
                    "randread" => {
                        if let Some(iops) = number(3) {
                            add("block_randread_iops", iops);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn add_lg_only(&mut self, key: &str, value: f64) {
        if let Some(figure) = self.lg_only.iter_mut().find(|f| f.key == key) {
            figure.samples.entry(LG.key).or_default().push(value);
        }
    }

    /// Whether every one of the many guests of `mode` reached `/init`.
    pub(super) fn all_reached(&self, mode: &str) -> bool {
        self.many.get(mode).is_some_and(|guests| {
            guests.len() == MANY_GUESTS as usize && guests.iter().all(|g| g.init.is_some())
        })
    }

    pub(super) fn failure(&mut self, text: String) {
        self.failures.push(format!("  {text}"));
    }

    pub(super) fn crash(&mut self, what: &str, bug: &str) {
        self.crashes.push((what.to_string(), bug.to_string()));
    }

    /// Adds QEMU's columns, without figures, for `reason`.
    pub(super) fn qemu_unavailable(&mut self, reason: &str) {
        for vmm in [QEMU_PC, QEMU_MICROVM] {
            self.columns.push(Column {
                vmm,
                commands: [
                    ("boot", String::new()),
                    ("idle", String::new()),
                    ("net", String::new()),
                ],
                unavailable: Some(reason.to_string()),
            });
        }
    }

    /// Once every test host has run: the many-guest figures from their
    /// stamps, the columns that measured nothing, the load now.
    pub(super) fn finish(&mut self) {
        let one = self
            .lg_only
            .iter()
            .find(|f| f.key == "one_init_ms")
            .and_then(|f| f.median(LG.key));
        let modes: Vec<(String, Vec<ManyGuest>)> = self
            .many
            .iter()
            .map(|(m, g)| (m.clone(), g.clone()))
            .collect();
        for (mode, guests) in modes {
            let reached: Vec<&ManyGuest> = guests.iter().filter(|g| g.init.is_some()).collect();
            self.add_lg_only(&format!("many_{mode}_reached"), reached.len() as f64);
            let first = guests.iter().map(|g| g.start).fold(f64::INFINITY, f64::min);
            let per_guest: Vec<f64> = reached
                .iter()
                .filter_map(|g| Some((g.init? - g.start) * 1000.0))
                .collect();
            if let Some(per) = median(&per_guest) {
                self.add_lg_only(&format!("many_{mode}_per_guest_ms"), per);
            }
            if reached.len() == MANY_GUESTS as usize && guests.len() == reached.len() {
                let last_init = reached.iter().filter_map(|g| g.init).fold(0.0, f64::max);
                let last_exit = guests.iter().map(|g| g.end).fold(0.0, f64::max);
                let all = (last_init - first) * 1000.0;
                self.add_lg_only(&format!("many_{mode}_all_init_ms"), all);
                self.add_lg_only(
                    &format!("many_{mode}_all_exit_ms"),
                    (last_exit - first) * 1000.0,
                );
                if let Some(one) = one.filter(|&one| one > 0.0) {
                    self.add_lg_only(&format!("many_{mode}_ratio"), all / one);
                }
            }
            for (i, guest) in guests.iter().enumerate() {
                if guest.init.is_none() {
                    self.failures.push(format!(
                        "  {mode}: guest {} never reached /init (exit status {})",
                        i + 1,
                        guest.status
                    ));
                }
            }
        }
        let measured = |key: &str| {
            self.figures
                .iter()
                .any(|f| f.samples.get(key).is_some_and(|s| !s.is_empty()))
        };
        let silent: Vec<usize> = (0..self.columns.len())
            .filter(|&i| !measured(self.columns[i].vmm.key))
            .collect();
        if self.beside_qemu() {
            for i in silent {
                self.columns[i].unavailable.get_or_insert_with(|| {
                    "it measured nothing: see the failures below the tables".to_string()
                });
            }
        }
        self.load_after = load();
        let now = commit();
        self.commit_after = (now != self.commit).then_some(now);
    }

    fn beside_qemu(&self) -> bool {
        self.parts.iter().any(|p| p.beside_qemu())
    }

    /// The others' columns: every one but lg's.
    fn peers(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.vmm != LG)
    }

    /// Both tables, with the machine and the command above them.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.command);
        let _ = write!(out, "lg: {}", self.commit);
        if let Some(after) = &self.commit_after {
            let _ = write!(out, " (the tree was at {after} when the bench ended)");
        }
        out.push('\n');
        let _ = writeln!(out, "machine: {}", machine());
        let _ = writeln!(
            out,
            "load (this machine's /proc/loadavg): {} before, {} after",
            self.load_before, self.load_after
        );
        let _ = writeln!(
            out,
            "test host: QEMU TCG -cpu {} (nested SVM), 2 vCPUs, {TESTHOST_MB} MiB; \
             guest: the kit ({}), 1 vCPU",
            crate::testhost::TESTHOST_CPU,
            self.kernel
        );
        if self.beside_qemu() {
            let _ = writeln!(
                out,
                "\nlg beside QEMU, guest {GUEST_MB} MiB: median of {} runs each (boot: after one \
                 warm-up boot; net: of {}); ratio = lg / peer (MiB/s and IOPS: higher is better)\n",
                self.runs,
                self.runs.min(NET_RUNS)
            );
            let mut header = vec!["figure".to_string(), "lg".to_string()];
            for column in self.peers() {
                header.push(column.vmm.title.to_string());
                header.push("ratio".to_string());
            }
            let mut rows = vec![header];
            for figure in &self.figures {
                if figure.samples.is_empty() {
                    continue;
                }
                let mut row = vec![
                    format!("{} ({})", figure.title, figure.unit),
                    cell(figure.median(LG.key)),
                ];
                for column in self.peers() {
                    row.push(cell(figure.median(column.vmm.key)));
                    row.push(
                        figure
                            .ratio(column.vmm.key)
                            .map_or("-".to_string(), |r| format!("{r:.2}")),
                    );
                }
                rows.push(row);
            }
            markdown(&mut out, &rows);
            if let Some(read) = median(&self.host_read) {
                let _ = writeln!(
                    out,
                    "\nthe test host's own read of the {DISK_MB} MiB image (page cache): \
                     {read:.0} MiB/s"
                );
            }
            let _ = writeln!(out, "\ncommands, in the test host:");
            for column in &self.columns {
                match &column.unavailable {
                    None => {
                        for (what, command) in &column.commands {
                            let _ = writeln!(out, "  {} ({what}): {command}", column.vmm.title);
                        }
                    }
                    Some(reason) => {
                        let _ = writeln!(out, "  {}: unavailable: {reason}", column.vmm.title);
                    }
                }
            }
            let _ = writeln!(
                out,
                "  (idle: the {DISK_MB} MiB disk in the test host's RAM; net: {NET_MB} MiB each \
                 way, busybox wget -O /dev/null from busybox httpd; QEMU's tap qtap0 gets \
                 192.168.19.1/24 from the script)"
            );
        }
        let rows: Vec<Vec<String>> = self
            .lg_only
            .iter()
            .filter(|f| {
                // A target missed for want of a sample is said too, when
                // its part ran.
                let part = match f.key.as_str() {
                    "startup_ms" => Part::Boot,
                    _ => Part::Many,
                };
                !f.samples.is_empty() || (f.target_below.is_some() && self.parts.contains(&part))
            })
            .map(|f| {
                vec![
                    format!("{} ({})", f.title, f.unit),
                    cell(f.median(LG.key)),
                    f.verdict(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            let _ = writeln!(out, "\nlg alone\n");
            let mut all = vec![vec![
                "figure".to_string(),
                "lg".to_string(),
                "target".to_string(),
            ]];
            all.extend(rows);
            markdown(&mut out, &all);
        }
        for (what, bug) in &self.crashes {
            let _ = writeln!(
                out,
                "\n{what}: blocked by the nested environment: the test host's kernel crashed \
                 ({bug})"
            );
        }
        if !self.startup_steps.is_empty() {
            let _ = writeln!(out, "\nlg's start-up, step by step (ms):");
            for line in &self.startup_steps {
                let _ = writeln!(out, "{line}");
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for line in &self.failures {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// The report as JSON: every sample, the medians and the ratios.
    pub fn json(&self) -> String {
        let mut out = String::from("{\n");
        let _ = writeln!(out, "  \"command\": {},", json_string(&self.command));
        let _ = writeln!(out, "  \"time\": {},", json_string(&utc_stamp(self.when)));
        let _ = writeln!(out, "  \"machine\": {},", json_string(&machine()));
        let _ = writeln!(
            out,
            "  \"load_before\": {},",
            json_string(&self.load_before)
        );
        let _ = writeln!(out, "  \"load_after\": {},", json_string(&self.load_after));
        let _ = writeln!(out, "  \"lg_commit\": {},", json_string(&self.commit));
        let _ = writeln!(
            out,
            "  \"lg_commit_at_end\": {},",
            json_string(self.commit_after.as_deref().unwrap_or(&self.commit))
        );
        let _ = writeln!(out, "  \"guest_kernel\": {},", json_string(&self.kernel));
        let _ = writeln!(out, "  \"guest_mb\": {GUEST_MB},");
        let _ = writeln!(out, "  \"runs\": {},", self.runs);
        let _ = writeln!(
            out,
            "  \"parts\": [{}],",
            json_list(self.parts.iter().map(|p| json_string(p.name())))
        );
        out.push_str("  \"columns\": [\n");
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|column| {
                format!(
                    "    {{\"key\": {}, \"title\": {}, \"command\": {}, \"commands\": {{{}}}, \
                     \"unavailable\": {}}}",
                    json_string(column.vmm.key),
                    json_string(column.vmm.title),
                    json_string(&column.commands[0].1),
                    json_list(column.commands.iter().map(|(what, command)| format!(
                        "{}: {}",
                        json_string(what),
                        json_string(command)
                    ))),
                    column
                        .unavailable
                        .as_deref()
                        .map_or("null".to_string(), json_string)
                )
            })
            .collect();
        out.push_str(&columns.join(",\n"));
        out.push_str("\n  ],\n  \"figures\": [\n");
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|figure| {
                let columns = self.columns.iter().map(|column| {
                    let key = column.vmm.key;
                    let ratio = match column.vmm == LG {
                        true => "null".to_string(),
                        false => json_number(figure.ratio(key)),
                    };
                    format!(
                        "{}: {{\"median\": {}, \"ratio\": {ratio}, \"samples\": [{}]}}",
                        json_string(key),
                        json_number(figure.median(key)),
                        json_samples(figure.samples.get(key))
                    )
                });
                format!(
                    "    {{\"key\": {}, \"title\": {}, \"unit\": {}, \"columns\": {{{}}}}}",
                    json_string(&figure.key),
                    json_string(&figure.title),
                    json_string(figure.unit),
                    json_list(columns)
                )
            })
            .collect();
        out.push_str(&figures.join(",\n"));
        out.push_str("\n  ],\n  \"lg_only\": [\n");
        let lg_only: Vec<String> = self
            .lg_only
            .iter()
            .map(|figure| {
                format!(
                    "    {{\"key\": {}, \"title\": {}, \"unit\": {}, \"target_below\": {}, \
                     \"median\": {}, \"samples\": [{}]}}",
                    json_string(&figure.key),
                    json_string(&figure.title),
                    json_string(figure.unit),
                    json_number(figure.target_below),
                    json_number(figure.median(LG.key)),
                    json_samples(figure.samples.get(LG.key))
                )
            })
            .collect();
        out.push_str(&lg_only.join(",\n"));
        out.push_str("\n  ],\n");
        let _ = writeln!(
            out,
            "  \"testhost_read_mib_s\": {{\"median\": {}, \"samples\": [{}]}},",
            json_number(median(&self.host_read)),
            json_samples(Some(&self.host_read))
        );
        let _ = writeln!(
            out,
            "  \"crashes\": [{}],",
            json_list(self.crashes.iter().map(|(what, bug)| format!(
                "{{\"what\": {}, \"first_line\": {}}}",
                json_string(what),
                json_string(bug)
            )))
        );
        let _ = writeln!(
            out,
            "  \"startup_steps\": [{}],",
            json_list(self.startup_steps.iter().map(|f| json_string(f.trim())))
        );
        let _ = writeln!(
            out,
            "  \"failures\": [{}]",
            json_list(self.failures.iter().map(|f| json_string(f.trim())))
        );
        out.push_str("}\n");
        out
    }

    /// Writes the JSON to `target/bench/<UTC time>.json` and `latest.json`;
    /// returns the first path.
    pub fn write_json(&self) -> Result<PathBuf, Error> {
        let dir = crate::target_dir().join("bench");
        fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        let json = self.json();
        let path = dir.join(format!("{}.json", utc_stamp(self.when)));
        for file in [&path, &dir.join("latest.json")] {
            fs::write(file, &json).context(|| format!("cannot write {}", show_path(file)))?;
        }
        Ok(path)
    }
}

/// Appends `rows` (the first is the header) as a Markdown table: the first
/// column left-aligned, the others right-aligned, padded to line up.
fn markdown(out: &mut String, rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                0 => format!("{c:<w$}", w = widths[i]),
                _ => format!("{c:>w$}", w = widths[i]),
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| match i {
                    0 => "-".repeat(w + 2),
                    _ => format!("{}:", "-".repeat(w + 1)),
                })
                .collect();
            let _ = writeln!(out, "|{}|", rule.join("|"));
        }
    }
}

fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or("-".to_string(), number)
}

/// A figure as the tables print it: whole above 100 (and whole numbers),
/// one decimal below, two below 10 (start-up times are a few milliseconds).
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        _ if v.fract() == 0.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{:.3}", v),
        _ => "null".to_string(),
    }
}

fn json_samples(samples: Option<&Vec<f64>>) -> String {
    json_list(samples.into_iter().flatten().map(|s| json_number(Some(*s))))
}

fn json_list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// This machine's load averages (1, 5, 15 minutes).
fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// This machine in one line: CPU model, cores, kernel.
fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

/// The lg commit measured, `+dirty` when the tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        command::stdout_of(
            std::process::Command::new("git")
                .current_dir(crate::workspace_root())
                .args(args),
        )
        .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty();
    format!("{head}{}", if dirty { "+dirty" } else { "" })
}

/// `20260601T134502Z` for seconds since the epoch (UTC; file names sort by time).
fn utc_stamp(seconds: u64) -> String {
    let days = (seconds / 86400) as i64;
    let time = seconds % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use super::super::Options;
    use super::*;

    fn report(output: &str, vmms: &[Vmm], parts: &[Part]) -> Report {
        let options = Options {
            runs: 2,
            parts: parts.to_vec(),
            command: "cargo xtask bench".to_string(),
        };
        let mut report = Report::new(vmms, &options);
        report.read(output);
        report.finish();
        report
    }

    fn figure<'a>(report: &'a Report, key: &str) -> &'a Figure {
        report
            .figures
            .iter()
            .chain(&report.lg_only)
            .find(|f| f.key == key)
            .unwrap()
    }

    #[test]
    fn utc_stamps_sort_by_time() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114T221320Z");
    }

    #[test]
    fn medians_and_ratios_come_from_the_bench_lines() {
        let output = "\
LG_BENCH boot lg 0 9000.0 9500.0 0
LG_BENCH boot lg 1 100.0 150.0 0
LG_BENCH boot lg 2 300.0 350.0 0
LG_BENCH boot pc 1 400.0 500.0 0
LG_BENCH mem lg 1 266240 262144 262144
LG_BENCH startup lg 0 99.0
LG_BENCH startup lg 1 3.25
LG_BENCH_STARTUP lg 1 start-up: 3.25 ms from the process's start to the first KVM_RUN (before main 1.00, vCPU thread to KVM_RUN 2.25 ms)
LG_BENCH blk pc 1 67108864 0.5
LG_BENCH blkwrite lg 1 67108864 2
LG_BENCH randread pc 1 2500
LG_BENCH netdown lg 1 67108864 0.25
LG_BENCH netup pc 1 67108864 1
LG_BENCH hostread 1 67108864 0.25
LG_BENCH fail pc 2 boot: no LG_GUEST_INIT_OK (exit status 137)
LG_BENCH_LOG pc qemu-system-x86_64: oops
";
        let report = report(output, &[LG, QEMU_PC], &[Part::Boot, Part::Idle, Part::Net]);
        // The warm-up (run 0) is left out.
        assert_eq!(figure(&report, "boot_init_ms").median("lg"), Some(200.0));
        assert_eq!(figure(&report, "boot_init_ms").ratio("pc"), Some(0.5));
        assert_eq!(
            figure(&report, "memory_overhead_mib").median("lg"),
            Some(4.0)
        );
        assert_eq!(
            figure(&report, "block_read_mib_s").median("pc"),
            Some(128.0)
        );
        assert_eq!(
            figure(&report, "block_write_mib_s").median("lg"),
            Some(32.0)
        );
        assert_eq!(
            figure(&report, "block_randread_iops").median("pc"),
            Some(2500.0)
        );
        assert_eq!(figure(&report, "net_down_mib_s").median("lg"), Some(256.0));
        assert_eq!(figure(&report, "net_up_mib_s").median("pc"), Some(64.0));
        assert_eq!(figure(&report, "startup_ms").median("lg"), Some(3.25));
        assert_eq!(figure(&report, "startup_ms").verdict(), "under 10: met");
        assert_eq!(report.host_read, [256.0]);
        assert_eq!(report.failures.len(), 2);
        let table = report.table();
        assert!(table.contains("| figure"));
        // A Markdown table: number columns right-aligned.
        assert!(table.contains("-:|-"), "{table}");
        assert!(table.contains("| 3.25 |"), "{table}");
        assert!(
            table.contains("  lg 1 start-up: 3.25 ms from the process's start"),
            "{table}"
        );
        let json = report.json();
        assert!(json.contains("\"median\": 200.000"));
        assert!(json.contains("\"key\": \"startup_ms\""));
    }

    #[test]
    fn lazy_ram_and_many_guests_are_lg_alone() {
        let mut output = String::from(
            "\
LG_BENCH lazyhost 1000000 870400
LG_BENCH lazymem lg 1 153600 2097152 131072
LG_BENCH lazymemtotal lg 1 2009088
LG_BENCH lazytouched lg 1 419840 2097152 393216
LG_BENCH boot one 0 50000 51000 0
LG_BENCH boot one 1 10000 11000 0
LG_BENCH boot one 2 12000 13000 0
LG_BENCH boot one 3 11000 12000 0
",
        );
        for i in 1..=MANY_GUESTS {
            let init = 100.0 + f64::from(i) * 2.0;
            output.push_str(&format!(
                "LG_BENCH manyguest at-once {i} 100.000000 {init:.6} {:.6} 0\n",
                init + 1.0
            ));
        }
        let report = report(&output, &[LG], &[Part::Lazy, Part::Many]);
        assert_eq!(
            figure(&report, "lazy_testhost_available_mib").median("lg"),
            Some(850.0)
        );
        assert_eq!(figure(&report, "lazy_rss_mib").median("lg"), Some(150.0));
        assert_eq!(
            figure(&report, "lazy_memtotal_mib").median("lg"),
            Some(1962.0)
        );
        assert_eq!(
            figure(&report, "lazy_rss_touched_mib").median("lg"),
            Some(410.0)
        );
        assert_eq!(figure(&report, "one_init_ms").median("lg"), Some(11000.0));
        assert!(report.all_reached(AT_ONCE));
        assert_eq!(
            figure(&report, "many_at-once_reached").median("lg"),
            Some(8.0)
        );
        let all = figure(&report, "many_at-once_all_init_ms")
            .median("lg")
            .unwrap();
        assert!((all - 16000.0).abs() < 0.01, "{all}");
        let ratio = figure(&report, "many_at-once_ratio");
        assert!((ratio.median("lg").unwrap() - 16.0 / 11.0).abs() < 1e-6);
        assert_eq!(ratio.verdict(), "under 3: met");
        let table = report.table();
        assert!(!table.contains("lg beside QEMU"), "{table}");
        assert!(
            table.contains("8 at once: time for all / time for one"),
            "{table}"
        );
    }

    #[test]
    fn a_crash_and_a_missed_target_are_said_plainly() {
        let output = "LG_BENCH manyguest at-once 1 100.0 0.000000 500.0 137\n";
        let mut report = report(output, &[LG], &[Part::Many]);
        report.crash("8 at once", "BUG: TASK stack guard page was hit");
        assert!(!report.all_reached(AT_ONCE));
        let table = report.table();
        assert!(
            table.contains("blocked by the nested environment"),
            "{table}"
        );
        assert!(table.contains("guest 1 never reached /init"), "{table}");
        let mut slow = Figure::new("x", "x", "ms").below(10.0);
        slow.samples.insert("lg", vec![12.5]);
        assert_eq!(slow.verdict(), "under 10: missed by 2.50 (25% over)");
    }
}
