//! `cargo xtask fuzz`: every fuzz target in `fuzz/`, for a while each.
//!
//! Issue 9 asks that whatever a guest or a file controls be fuzzed: the
//! descriptor walk, virtio-blk's request header, virtio-net's header, PCI
//! configuration space, virtio's common configuration, the bzImage and ELF
//! parsers, and lguest's classic command line. `fuzz/` holds one cargo-fuzz
//! target for each (its README-level story is in `fuzz/Cargo.toml` and
//! each target's `//!`); this command builds them and runs each for the
//! same number of seconds, one after another, so that the whole pass is
//! as long as the person asked for times the number of targets.
//!
//! The toolchain is stable Rust, and libFuzzer's instrumentation wants
//! nightly flags (`-Zsanitizer=address`), so the build alone runs with
//! `RUSTC_BOOTSTRAP=1`; stable ships the AddressSanitizer runtime, so the
//! targets run under ASan as well as with overflow checks and debug
//! assertions. cargo-fuzz comes from crates.io, installed on first use
//! at a pinned version into cargo's own bin directory.
//!
//! The seed corpora in `fuzz/corpus/` stay small and in git; each run
//! copies them into `target/fuzz-corpus/`, where what libFuzzer finds
//! accumulates from run to run out of git's sight. A finding (a crash, a
//! panic, an ASan report, a leak, a run over 10 s or an allocation over
//! 256 MiB) stops that target, and its input is kept in
//! `target/fuzz-artifacts/TARGET/`: `cargo xtask fuzz` names the file and
//! exits non-zero. Replay one with
//! `target/fuzz/x86_64-unknown-linux-gnu/release/TARGET FILE`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use xtask::command::{cargo, describe, run_visible};
use xtask::error::Context;
use xtask::{progress, show_path, target_dir, workspace_root, Error};

/// The targets, in the order the guest meets them.
pub const TARGETS: &[&str] = &[
    "classic_cmdline",
    "bzimage",
    "elf",
    "pci_config",
    "virtio_common_config",
    "virtqueue_chain",
    "virtio_blk_request",
    "virtio_net_header",
];

/// The cargo-fuzz xtask installs when there is none: the version `fuzz/`
/// was written against.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The triple cargo-fuzz builds for, which names its output directory.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// libFuzzer's limits: a single input running longer than this many
/// seconds is a hang, and one allocation over this many MiB is a guest or
/// file making lg allocate without a bound.
const TIMEOUT_SECONDS: u32 = 10;
const MALLOC_LIMIT_MB: u32 = 256;
const RSS_LIMIT_MB: u32 = 2048;

/// `cargo xtask fuzz [--seconds N] [--target NAME]`
pub fn fuzz(args: &[String]) -> Result<i32, Error> {
    let mut seconds: u64 = 60;
    let mut only: Option<String> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (word.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| words.next().cloned())
                .ok_or_else(|| Error::new(format!("{name} needs a value")))
        };
        match name {
            "--seconds" => {
                let text = value()?;
                seconds = text.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    Error::new(format!(
                        "--seconds {text}: expected a whole number of seconds above 0"
                    ))
                })?;
            }
            "--target" => {
                let target = value()?;
                if !TARGETS.contains(&target.as_str()) {
                    return Err(Error::new(format!(
                        "there is no fuzz target `{target}` (targets: {})",
                        TARGETS.join(", ")
                    )));
                }
                only = Some(target);
            }
            _ => {
                return Err(Error::new(format!(
                    "unknown argument `{word}` (flags: --seconds N, --target NAME)"
                )))
            }
        }
    }
    let targets: Vec<&str> = match &only {
        Some(target) => vec![target.as_str()],
        None => TARGETS.to_vec(),
    };

    let started = Instant::now();
    ensure_cargo_fuzz()?;
    progress("fuzz: building the targets (cargo fuzz build, AddressSanitizer)");
    let build_dir = target_dir().join("fuzz");
    let mut build = cargo();
    build
        .args(["fuzz", "build", "--fuzz-dir", "fuzz", "--target-dir"])
        .arg(&build_dir)
        // cargo-fuzz's default of 1 serialises each crate's code
        // generation: slower to build, for slightly faster targets, and
        // CI's pass is mostly build.
        .args(["--codegen-units", "16"])
        .env("RUSTC_BOOTSTRAP", "1");
    if let Some(target) = &only {
        build.arg(target);
    }
    run_visible(&mut build)?;
    let built = started.elapsed();
    progress(format!("fuzz: built in {:.0} s", built.as_secs_f64()));

    let mut findings = Vec::new();
    for target in &targets {
        let outcome = run_target(&build_dir, target, seconds)?;
        let result = match &outcome.finding {
            None => "no finding".to_string(),
            Some(file) => format!("FINDING {}", show_path(file)),
        };
        progress(format!(
            "fuzz: {target:<22} {:>9} runs  cov {:>5}  ft {:>6}  corpus {:>5}  {result}",
            outcome.runs, outcome.coverage, outcome.features, outcome.corpus
        ));
        if let Some(file) = outcome.finding {
            findings.push((target, file, outcome.log));
        }
    }

    progress(format!(
        "fuzz: {} target(s), {seconds} s each, {} finding(s); {:.0} s in all (build {:.0} s)",
        targets.len(),
        findings.len(),
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    ));
    for (target, file, log) in &findings {
        progress(format!(
            "fuzz: {target} failed on {}; libFuzzer's report is in {}; replay it with {} {}",
            show_path(file),
            show_path(log),
            show_path(&binary(&build_dir, target)),
            show_path(file)
        ));
    }
    // The closing line in the form CI reads: a target passes when its run
    // ended without a finding.
    progress(format!(
        "fuzz: {} passed, {} failed",
        targets.len() - findings.len(),
        findings.len()
    ));
    Ok(if findings.is_empty() { 0 } else { 1 })
}

/// Installs cargo-fuzz with `cargo install` unless `cargo fuzz` already
/// works: on a fresh CI machine it lands in cargo's bin directory, which is
/// on the PATH of everything that runs cargo.
fn ensure_cargo_fuzz() -> Result<(), Error> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    progress(format!(
        "fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io (once per machine)"
    ));
    run_visible(cargo().args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Where cargo-fuzz leaves `target`'s binary.
fn binary(build_dir: &Path, target: &str) -> PathBuf {
    build_dir.join(TRIPLE).join("release").join(target)
}

/// What one target's run came to.
struct Outcome {
    runs: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
    /// The input libFuzzer saved for a finding.
    finding: Option<PathBuf>,
    /// libFuzzer's own output.
    log: PathBuf,
}

/// Runs `target` for `seconds` on a copy of its seed corpus.
fn run_target(build_dir: &Path, target: &str, seconds: u64) -> Result<Outcome, Error> {
    let root = workspace_root();
    let seeds = root.join("fuzz").join("corpus").join(target);
    let corpus = target_dir().join("fuzz-corpus").join(target);
    let artifacts = target_dir().join("fuzz-artifacts").join(target);
    let logs = target_dir().join("fuzz-logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).context(|| format!("cannot create {}", show_path(dir)))?;
    }
    copy_seeds(&seeds, &corpus)?;
    // A finding from an earlier run would be taken for this run's.
    let before = artifact_files(&artifacts)?;

    let log = logs.join(format!("{target}.log"));
    let log_file =
        std::fs::File::create(&log).context(|| format!("cannot create {}", show_path(&log)))?;
    let mut run = Command::new(binary(build_dir, target));
    run.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .context(|| format!("cannot share {}", show_path(&log)))?,
        )
        .stderr(log_file);
    let status = run
        .status()
        .map_err(|e| Error::new(format!("cannot run `{}`: {e}", describe(&run))))?;
    let output =
        std::fs::read_to_string(&log).context(|| format!("cannot read {}", show_path(&log)))?;

    let new: Vec<PathBuf> = artifact_files(&artifacts)?
        .into_iter()
        .filter(|file| !before.contains(file))
        .collect();
    let finding = match (status.success(), new.into_iter().next()) {
        (true, _) => None,
        (false, Some(file)) => Some(file),
        // libFuzzer failed without saving an input (it could not start,
        // say): the log is the finding.
        (false, None) => Some(log.clone()),
    };
    let last_status = output
        .lines()
        .rev()
        .find(|line| line.starts_with('#') && line.contains(" cov: "));
    let field = |name: &str| last_status.and_then(|line| number_after(line, name));
    Ok(Outcome {
        runs: output
            .lines()
            .find_map(|line| number_after(line, "stat::number_of_executed_units:"))
            .unwrap_or(0),
        coverage: field("cov:").unwrap_or(0),
        features: field("ft:").unwrap_or(0),
        corpus: field("corp:").unwrap_or(0),
        finding,
        log,
    })
}

/// The number after `name` in `line` (`corp: 12/345b` gives 12).
fn number_after(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(name)? + name.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Copies the seeds into the run's corpus (files already there, seeds
/// or what earlier runs found, stay).
fn copy_seeds(seeds: &Path, corpus: &Path) -> Result<(), Error> {
    let entries =
        std::fs::read_dir(seeds).context(|| format!("cannot list {}", show_path(seeds)))?;
    for entry in entries {
        let entry = entry.context(|| format!("cannot list {}", show_path(seeds)))?;
        let to = corpus.join(entry.file_name());
        std::fs::copy(entry.path(), &to).context(|| {
            format!(
                "cannot copy {} to {}",
                show_path(&entry.path()),
                show_path(&to)
            )
        })?;
    }
    Ok(())
}

/// The files libFuzzer saved in `dir` for findings (crash-, leak-,
/// timeout-, oom-); not the slow-unit- ones, which are only slow.
fn artifact_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).context(|| format!("cannot list {}", show_path(dir)))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("cannot list {}", show_path(dir)))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["crash-", "leak-", "timeout-", "oom-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            files.push(entry.path());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn reads_libfuzzer_status_lines() {
        let line =
            "#39142\tREDUCE cov: 316 ft: 551 corp: 80/4336b lim: 177 exec/s: 3558 rss: 356Mb";
        assert_eq!(number_after(line, "cov:"), Some(316));
        assert_eq!(number_after(line, "ft:"), Some(551));
        assert_eq!(number_after(line, "corp:"), Some(80));
        assert_eq!(
            number_after(
                "stat::number_of_executed_units: 197760",
                "stat::number_of_executed_units:"
            ),
            Some(197760)
        );
        assert_eq!(number_after(line, "oom:"), None);
    }
}
