//! What the fan-out prints: one result per target as it finishes (a table row, a JSON
//! array element, a JSON line), and a summary line. Results are written as they come and
//! not kept, so memory does not grow with the number of targets.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use super::failure::Failure;
use super::session::{CommandOutput, MAX_OUTPUT};

/// How results are printed (`run --output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Target, status, exit code, time and the first line of output, one row per target.
    Table,
    /// One JSON array of results.
    Json,
    /// One JSON object per line, as each target finishes.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// The result of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub target: String,
    /// `ok` when the command ran and exited with code 0.
    pub status: Status,
    /// The command's exit code; `None` when it never ran to its end.
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub attempts: u32,
    /// From the first attempt's start to the result, retry delays included.
    pub duration_ms: u64,
    /// Why the target failed, for a person to act on.
    pub error: Option<String>,
}

impl TargetReport {
    /// A command that ran to its end: ok when it exited with 0.
    pub fn ran(target: &str, output: CommandOutput, attempts: u32, duration: Duration) -> TargetReport {
        let ok = output.exit_code == 0;
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.truncated {
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            stderr.push_str(&format!(
                "[winrm-relay: output beyond {} MiB per stream was dropped]\n",
                MAX_OUTPUT >> 20
            ));
        }
        TargetReport {
            target: target.to_string(),
            status: if ok { Status::Ok } else { Status::Failed },
            exit_code: Some(output.exit_code),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
            attempts,
            duration_ms: millis(duration),
            error: (!ok).then(|| format!("the command exited with code {}", output.exit_code)),
        }
    }

    /// A target whose last attempt failed.
    pub fn failed(target: &str, failure: &Failure, attempts: u32, duration: Duration) -> TargetReport {
        TargetReport {
            target: target.to_string(),
            status: Status::Failed,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            attempts,
            duration_ms: millis(duration),
            error: Some(failure.message.clone()),
        }
    }

    /// What the table shows of the result: the first line of output, or the error.
    fn headline(&self) -> &str {
        match (self.status, self.exit_code) {
            (Status::Ok, _) => first_line(&self.stdout).unwrap_or(""),
            (Status::Failed, Some(_)) => first_line(&self.stderr)
                .or_else(|| first_line(&self.stdout))
                .or(self.error.as_deref())
                .unwrap_or(""),
            (Status::Failed, None) => self.error.as_deref().unwrap_or(""),
        }
    }
}

fn first_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).find(|l| !l.is_empty())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Widest headline a table row shows.
const HEADLINE_CHARS: usize = 100;

/// Writes results to `out` in one format, as they come.
pub struct Report<W: Write> {
    format: Format,
    out: W,
    written: usize,
    /// The widest target name: the table's first column.
    target_width: usize,
}

impl<W: Write> Report<W> {
    pub fn new(format: Format, out: W, target_width: usize) -> Report<W> {
        Report {
            format,
            out,
            written: 0,
            target_width: target_width.max("TARGET".len()),
        }
    }

    /// The table's header; the JSON array's opening.
    pub fn start(&mut self) -> io::Result<()> {
        match self.format {
            Format::Table => writeln!(
                self.out,
                "{:<w$}  {:<6}  {:>4}  {:>7}  OUTPUT",
                "TARGET",
                "STATUS",
                "EXIT",
                "TIME",
                w = self.target_width
            )?,
            Format::Json => self.out.write_all(b"[")?,
            Format::Jsonl => {}
        }
        self.out.flush()
    }

    pub fn write(&mut self, report: &TargetReport) -> io::Result<()> {
        match self.format {
            Format::Table => {
                let exit = report.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string());
                let time = format!("{:.1}s", report.duration_ms as f64 / 1000.0);
                let status = match report.status {
                    Status::Ok => "ok",
                    Status::Failed => "failed",
                };
                writeln!(
                    self.out,
                    "{:<w$}  {:<6}  {:>4}  {:>7}  {}",
                    report.target,
                    status,
                    exit,
                    time,
                    truncate_chars(report.headline(), HEADLINE_CHARS),
                    w = self.target_width
                )?;
            }
            Format::Json => {
                self.out.write_all(if self.written == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut self.out, report)?;
            }
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, report)?;
                self.out.write_all(b"\n")?;
            }
        }
        self.written += 1;
        self.out.flush()
    }

    /// The JSON array's end.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.format == Format::Json {
            self.out.write_all(if self.written == 0 { b"]\n" } else { b"\n]\n" })?;
        }
        self.out.flush()
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub targets: usize,
    pub ok: usize,
    pub failed: usize,
    /// Targets that needed more than one attempt.
    pub retried: usize,
    /// Targets stopped half-way by Ctrl-C (their shells deleted).
    pub interrupted: usize,
}

impl Tally {
    pub fn count(&mut self, report: &TargetReport) {
        match report.status {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
        }
        if report.attempts > 1 {
            self.retried += 1;
        }
    }

    fn not_started(&self) -> usize {
        self.targets.saturating_sub(self.ok + self.failed + self.interrupted)
    }
}

/// Why the run ended before every target had its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Ctrl-C.
    Interrupted,
    /// The relay refused the credentials: other targets would only count more failed
    /// logons against the account.
    CredentialsRefused(String),
}

/// `12 targets: 11 ok, 1 failed (2 retried) in 4.2 s`, and how it stopped early.
pub fn summary_line(tally: &Tally, stopped: Option<&Stopped>, wall: Duration) -> String {
    let mut line = format!(
        "{} target{}: {} ok, {} failed",
        tally.targets,
        if tally.targets == 1 { "" } else { "s" },
        tally.ok,
        tally.failed
    );
    if tally.retried > 0 {
        line.push_str(&format!(" ({} retried)", tally.retried));
    }
    if tally.interrupted > 0 {
        line.push_str(&format!(", {} stopped (shells deleted)", tally.interrupted));
    }
    if tally.not_started() > 0 {
        line.push_str(&format!(", {} not started", tally.not_started()));
    }
    line.push_str(&format!(" in {:.1} s", wall.as_secs_f64()));
    match stopped {
        Some(Stopped::Interrupted) => line.push_str("; interrupted"),
        Some(Stopped::CredentialsRefused(why)) => line.push_str(&format!("; stopped: {why}")),
        None => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::failure::{Cause, Stage};

    fn ok_report() -> TargetReport {
        let output = CommandOutput {
            exit_code: 0,
            stdout: b"\r\nWEB01\r\nsecond line\r\n".to_vec(),
            stderr: Vec::new(),
            ..CommandOutput::default()
        };
        TargetReport::ran("web01", output, 1, Duration::from_millis(1234))
    }

    fn unreachable_report() -> TargetReport {
        let failure = Failure::new(
            Stage::Connect,
            Cause::Unreachable,
            "cannot connect to down:5985: Connection refused",
        );
        TargetReport::failed("down", &failure, 3, Duration::from_millis(10_050))
    }

    #[test]
    fn results_carry_every_field() {
        let ok = ok_report();
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({
                "target": "web01", "status": "ok", "exit_code": 0, "stdout": "\r\nWEB01\r\nsecond line\r\n",
                "stderr": "", "attempts": 1, "duration_ms": 1234, "error": null
            })
        );
        assert_eq!(
            serde_json::to_value(unreachable_report()).unwrap(),
            serde_json::json!({
                "target": "down", "status": "failed", "exit_code": null, "stdout": "", "stderr": "",
                "attempts": 3, "duration_ms": 10050, "error": "cannot connect to down:5985: Connection refused"
            })
        );
    }

    #[test]
    fn a_non_zero_exit_code_fails_and_truncation_is_said() {
        let output = CommandOutput {
            exit_code: 3,
            stdout: b"partial".to_vec(),
            stderr: b"boom".to_vec(),
            truncated: true,
            ..CommandOutput::default()
        };
        let report = TargetReport::ran("web02", output, 1, Duration::ZERO);
        assert_eq!(report.status, Status::Failed);
        assert_eq!(report.exit_code, Some(3));
        assert_eq!(report.error.as_deref(), Some("the command exited with code 3"));
        assert_eq!(
            report.stderr,
            "boom\n[winrm-relay: output beyond 8 MiB per stream was dropped]\n"
        );
        assert_eq!(report.headline(), "boom");
    }

    fn render(format: Format, reports: &[TargetReport]) -> String {
        let mut report = Report::new(format, Vec::new(), 5);
        report.start().unwrap();
        for r in reports {
            report.write(r).unwrap();
        }
        report.finish().unwrap();
        String::from_utf8(report.out).unwrap()
    }

    #[test]
    fn table_rows_show_the_first_line_or_the_error() {
        assert_eq!(
            render(Format::Table, &[ok_report(), unreachable_report()]),
            "TARGET  STATUS  EXIT     TIME  OUTPUT\n\
             web01   ok         0     1.2s  WEB01\n\
             down    failed     -    10.1s  cannot connect to down:5985: Connection refused\n"
        );
        let mut long = ok_report();
        long.stdout = "é".repeat(150);
        let row = render(Format::Table, &[long]);
        assert!(row.contains(&format!("{}…\n", "é".repeat(HEADLINE_CHARS))), "{row}");
    }

    #[test]
    fn json_is_one_array_and_jsonl_one_object_per_line() {
        let json = render(Format::Json, &[ok_report(), unreachable_report()]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            serde_json::to_value([ok_report(), unreachable_report()]).unwrap()
        );
        assert_eq!(render(Format::Json, &[]), "[]\n");
        let jsonl = render(Format::Jsonl, &[ok_report(), unreachable_report()]);
        let lines: Vec<&str> = jsonl.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[1]).unwrap()["target"],
            "down"
        );
    }

    #[test]
    fn the_summary_says_totals_time_and_how_it_stopped() {
        let mut tally = Tally {
            targets: 12,
            ..Tally::default()
        };
        for _ in 0..11 {
            tally.count(&ok_report());
        }
        tally.count(&unreachable_report());
        assert_eq!(
            summary_line(&tally, None, Duration::from_millis(4240)),
            "12 targets: 11 ok, 1 failed (1 retried) in 4.2 s"
        );
        let tally = Tally {
            targets: 10,
            ok: 4,
            failed: 1,
            retried: 0,
            interrupted: 2,
        };
        assert_eq!(
            summary_line(&tally, Some(&Stopped::Interrupted), Duration::from_secs(3)),
            "10 targets: 4 ok, 1 failed, 2 stopped (shells deleted), 3 not started in 3.0 s; interrupted"
        );
        let refused = Stopped::CredentialsRefused("the relay refused the logon of LAB\\alice".into());
        let tally = Tally {
            targets: 1,
            failed: 1,
            ..Tally::default()
        };
        assert_eq!(
            summary_line(&tally, Some(&refused), Duration::from_millis(300)),
            "1 target: 0 ok, 1 failed in 0.3 s; stopped: the relay refused the logon of LAB\\alice"
        );
    }
}
