//! Where the fan-out's events go: results to stdout in the chosen format, the progress
//! bar to stderr (only on a terminal), and everything to the transcript.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::failure::Failure;
use super::report::{Report, Status, TargetReport};
use super::schedule::Observer;
use super::transcript::Transcript;

/// Done / failed / running, with a bar.
pub struct Progress {
    bar: ProgressBar,
    ok: usize,
    failed: usize,
    running: usize,
}

impl Progress {
    /// A bar drawn on stderr for `targets` targets.
    pub fn new(targets: usize) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(targets as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{bar:30} {pos}/{len} done: {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let mut progress = Progress {
            bar,
            ok: 0,
            failed: 0,
            running: 0,
        };
        progress.redraw();
        progress
    }

    fn redraw(&mut self) {
        self.bar.set_message(format!(
            "{} ok, {} failed, {} running",
            self.ok, self.failed, self.running
        ));
    }
}

pub struct Console<W: Write> {
    report: Report<W>,
    progress: Option<Progress>,
    transcript: Option<Transcript<BufWriter<File>>>,
    /// The first write that failed (stdout closed, disk full): said once, at the end.
    pub output_error: Option<io::Error>,
    pub transcript_error: Option<io::Error>,
}

impl<W: Write> Console<W> {
    pub fn new(
        report: Report<W>,
        progress: Option<Progress>,
        transcript: Option<Transcript<BufWriter<File>>>,
    ) -> Console<W> {
        Console {
            report,
            progress,
            transcript,
            output_error: None,
            transcript_error: None,
        }
    }

    pub fn start(&mut self) {
        let result = self.report.start();
        self.note_output(result);
    }

    pub fn transcript(&mut self, write: impl FnOnce(&mut Transcript<BufWriter<File>>) -> io::Result<()>) {
        if self.transcript_error.is_some() {
            return;
        }
        if let Some(transcript) = self.transcript.as_mut() {
            if let Err(error) = write(transcript) {
                self.transcript_error = Some(error);
            }
        }
    }

    /// Ends the output and the bar; the summary goes to the transcript too.
    pub fn finish(&mut self, summary: &str) {
        if let Some(progress) = self.progress.take() {
            progress.bar.finish_and_clear();
        }
        let result = self.report.finish();
        self.note_output(result);
        self.transcript(|t| t.footer(summary));
    }

    fn note_output(&mut self, result: io::Result<()>) {
        if let Err(error) = result {
            self.output_error.get_or_insert(error);
        }
    }
}

impl<W: Write> Observer for Console<W> {
    fn attempt_started(&mut self, target: &str, attempt: u32, url: &str) {
        if attempt == 1 {
            if let Some(progress) = self.progress.as_mut() {
                progress.running += 1;
                progress.redraw();
            }
        }
        self.transcript(|t| t.attempt_started(target, attempt, url));
    }

    fn attempt_failed(&mut self, target: &str, attempt: u32, failure: &Failure, retry_in: Option<Duration>) {
        self.transcript(|t| t.attempt_failed(target, attempt, &failure.message, retry_in));
    }

    fn finished(&mut self, report: &TargetReport, cleanup_problem: Option<&str>) {
        if self.output_error.is_none() {
            let result = match self.progress.as_ref() {
                // Printed above the bar, which is drawn again below.
                Some(progress) => progress.bar.suspend(|| self.report.write(report)),
                None => self.report.write(report),
            };
            self.note_output(result);
        }
        if let Some(progress) = self.progress.as_mut() {
            match report.status {
                Status::Ok => progress.ok += 1,
                Status::Failed => progress.failed += 1,
            }
            progress.running = progress.running.saturating_sub(1);
            progress.bar.inc(1);
            progress.redraw();
        }
        self.transcript(|t| t.result(report, cleanup_problem));
    }

    fn interrupted(&mut self, target: &str) {
        if let Some(progress) = self.progress.as_mut() {
            progress.running = progress.running.saturating_sub(1);
            progress.redraw();
        }
        self.transcript(|t| t.interrupted(target));
    }
}
