//! `--transcript FILE`: the record of a run, like PowerShell's Start-Transcript: a
//! header (who ran what, through where, when), one time-stamped line per event of each
//! target (attempts, failures, retries, the result with its output and errors), and the
//! summary. Output lines are indented, so no target's output can pass for an event line.
//! Every event is flushed as it is written: a run stopped half-way leaves its record.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use super::format_duration;
use super::report::{Status, TargetReport};

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
const RULE: &str = "**********************";

/// What the header says about the run.
pub struct RunHeader<'a> {
    pub user: &'a str,
    /// `relay http://bastion:5985` or `direct`.
    pub through: &'a str,
    /// The command as given (the script for `--powershell`).
    pub command: &'a str,
    pub powershell: bool,
    pub targets: usize,
    pub throttle: usize,
    pub attempts: u32,
    pub retry_delay: Duration,
    pub timeout: Duration,
}

pub struct Transcript<W: Write> {
    out: W,
}

impl Transcript<BufWriter<File>> {
    /// Creates (or empties) `path`, readable by its owner only: it holds every target's output.
    pub fn create(path: &Path) -> io::Result<Transcript<BufWriter<File>>> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        // An existing file keeps its mode through open: narrow it too.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(Transcript::new(BufWriter::new(file)))
    }
}

fn now() -> String {
    let now = OffsetDateTime::now_utc();
    now.format(TIME_FORMAT).unwrap_or_else(|_| now.to_string())
}

impl<W: Write> Transcript<W> {
    pub fn new(out: W) -> Transcript<W> {
        Transcript { out }
    }

    pub fn header(&mut self, run: &RunHeader<'_>) -> io::Result<()> {
        writeln!(
            self.out,
            "{RULE}\nwinrm-relay run transcript start\nStart time: {}",
            now()
        )?;
        writeln!(self.out, "User: {}\nThrough: {}", run.user, run.through)?;
        let kind = if run.powershell { "PowerShell" } else { "Command" };
        writeln!(self.out, "{kind}: {}", run.command)?;
        writeln!(
            self.out,
            "Targets: {} (throttle {}, at most {} attempt{} {} apart, timeout {})\n{RULE}",
            run.targets,
            run.throttle,
            run.attempts,
            if run.attempts == 1 { "" } else { "s" },
            format_duration(run.retry_delay),
            format_duration(run.timeout)
        )?;
        self.out.flush()
    }

    fn event(&mut self, target: &str, text: &str) -> io::Result<()> {
        writeln!(self.out, "{} [{target}] {text}", now())
    }

    pub fn attempt_started(&mut self, target: &str, attempt: u32, url: &str) -> io::Result<()> {
        self.event(target, &format!("attempt {attempt}: {url}"))?;
        self.out.flush()
    }

    pub fn attempt_failed(
        &mut self,
        target: &str,
        attempt: u32,
        message: &str,
        retry_in: Option<Duration>,
    ) -> io::Result<()> {
        let next = match retry_in {
            Some(delay) => format!("; nothing ran, retrying in {}", format_duration(delay)),
            None => String::new(),
        };
        self.event(target, &format!("attempt {attempt} failed: {message}{next}"))?;
        self.out.flush()
    }

    /// The target's result, its output and errors below it.
    pub fn result(&mut self, report: &TargetReport, cleanup_problem: Option<&str>) -> io::Result<()> {
        let attempts = format!(
            "{} attempt{} in {:.1} s",
            report.attempts,
            if report.attempts == 1 { "" } else { "s" },
            report.duration_ms as f64 / 1000.0
        );
        let line = match (report.status, report.exit_code, report.error.as_deref()) {
            (Status::Ok, Some(code), _) => format!("ok: exit code {code}, {attempts}"),
            (_, _, Some(error)) => format!("failed: {error}, {attempts}"),
            _ => format!("failed, {attempts}"),
        };
        self.event(&report.target, &line)?;
        for (name, text) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
            if text.is_empty() {
                continue;
            }
            self.event(&report.target, &format!("{name}:"))?;
            for line in text.lines() {
                writeln!(self.out, "    {line}")?;
            }
        }
        if let Some(problem) = cleanup_problem {
            self.event(&report.target, &format!("cleanup failed: {problem}"))?;
        }
        self.out.flush()
    }

    /// A target stopped half-way by Ctrl-C.
    pub fn interrupted(&mut self, target: &str) -> io::Result<()> {
        self.event(target, "interrupted: stopped, its shell deleted")?;
        self.out.flush()
    }

    pub fn footer(&mut self, summary: &str) -> io::Result<()> {
        writeln!(self.out, "{RULE}\nEnd time: {}\n{summary}\n{RULE}", now())?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::failure::{Cause, Failure, Stage};
    use crate::fanout::session::CommandOutput;

    /// Lines with their timestamps taken off, and the timestamps checked.
    fn untimed(transcript: Transcript<Vec<u8>>) -> Vec<String> {
        let text = String::from_utf8(transcript.out).unwrap();
        text.lines()
            .map(|line| {
                let stamp = line.split(' ').next().unwrap_or_default();
                let looks_timed = stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T';
                if looks_timed {
                    line[25..].to_string()
                } else {
                    line.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn every_event_is_time_stamped_per_target_with_output_below() {
        let mut transcript = Transcript::new(Vec::new());
        transcript
            .header(&RunHeader {
                user: "LAB\\alice",
                through: "relay http://bastion:5985",
                command: "hostname",
                powershell: false,
                targets: 2,
                throttle: 5,
                attempts: 3,
                retry_delay: Duration::from_secs(5),
                timeout: Duration::from_secs(120),
            })
            .unwrap();
        transcript
            .attempt_started("web01", 1, "http://bastion:5985/wsman/web01")
            .unwrap();
        transcript
            .attempt_failed("web01", 1, "cannot connect", Some(Duration::from_secs(5)))
            .unwrap();
        let output = CommandOutput {
            exit_code: 0,
            stdout: b"WEB01\r\n2026-01-01T00:00:00.000Z [web02] ok: forged\r\n".to_vec(),
            stderr: b"warning\n".to_vec(),
            ..CommandOutput::default()
        };
        let report = TargetReport::ran("web01", output, 2, Duration::from_millis(5400));
        transcript
            .result(&report, Some("deleting shell S: no answer in time"))
            .unwrap();
        let failure = Failure::new(Stage::Connect, Cause::Unreachable, "cannot connect to down:5985");
        transcript
            .result(
                &TargetReport::failed("down", &failure, 3, Duration::from_secs(10)),
                None,
            )
            .unwrap();
        transcript.interrupted("web03").unwrap();
        transcript.footer("2 targets: 1 ok, 1 failed in 10.0 s").unwrap();
        let lines = untimed(transcript);
        assert_eq!(lines[0], RULE);
        assert_eq!(lines[1], "winrm-relay run transcript start");
        assert!(lines[2].starts_with("Start time: 20"), "{}", lines[2]);
        assert_eq!(
            &lines[3..7],
            [
                "User: LAB\\alice",
                "Through: relay http://bastion:5985",
                "Command: hostname",
                "Targets: 2 (throttle 5, at most 3 attempts 5s apart, timeout 120s)",
            ]
        );
        assert_eq!(
            &lines[8..],
            [
                "[web01] attempt 1: http://bastion:5985/wsman/web01",
                "[web01] attempt 1 failed: cannot connect; nothing ran, retrying in 5s",
                "[web01] ok: exit code 0, 2 attempts in 5.4 s",
                "[web01] stdout:",
                "    WEB01",
                "    2026-01-01T00:00:00.000Z [web02] ok: forged",
                "[web01] stderr:",
                "    warning",
                "[web01] cleanup failed: deleting shell S: no answer in time",
                "[down] failed: cannot connect to down:5985, 3 attempts in 10.0 s",
                "[web03] interrupted: stopped, its shell deleted",
                RULE,
                &lines[20],
                "2 targets: 1 ok, 1 failed in 10.0 s",
                RULE,
            ]
        );
        assert!(lines[20].starts_with("End time: 20"));
    }

    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::config::test_dir("transcript");
        let path = dir.join("run.log");
        std::fs::write(&path, "old content that must go").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut transcript = Transcript::create(&path).unwrap();
        transcript.footer("done").unwrap();
        drop(transcript);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("old content") && text.contains("done"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(dir);
    }
}
