//! Runs one command on many targets: at most `throttle` at once (a semaphore permit per
//! running target), each retried while nothing ran on it, results handed to an
//! [`Observer`] as each target finishes. Only the running targets are held in memory.
//!
//! Ctrl-C (an interrupt on the channel given to [`run`]) stops starting targets and
//! cancels the running ones, which delete their shells; a second one abandons them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::failure::{Cause, Failure, Stage};
use super::powershell;
use super::report::{Stopped, Tally, TargetReport};
use super::session::{run_command, CommandLine, Endpoint};
use crate::vault::DelegatedCredentials;

/// What runs on every target, and how.
pub struct Job {
    pub credentials: DelegatedCredentials,
    pub command: CommandLine,
    /// The command is a PowerShell script: its CLIXML error stream is made readable.
    pub powershell: bool,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts in all per target (retries only where nothing ran).
    pub attempts: u32,
    pub retry_delay: Duration,
    pub throttle: usize,
    /// Endpoints are the relay: its refusing the credentials stops the run.
    pub via_relay: bool,
}

/// Told what happens, in order per target, from one task (the caller's).
pub trait Observer {
    fn attempt_started(&mut self, target: &str, attempt: u32, url: &str);
    fn attempt_failed(&mut self, target: &str, attempt: u32, failure: &Failure, retry_in: Option<Duration>);
    fn finished(&mut self, report: &TargetReport, cleanup_problem: Option<&str>);
    /// Stopped half-way by Ctrl-C; not a result.
    fn interrupted(&mut self, target: &str);
}

/// How the run went.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tally: Tally,
    pub stopped: Option<Stopped>,
}

enum Event {
    Started {
        index: usize,
        attempt: u32,
    },
    Failed {
        index: usize,
        attempt: u32,
        failure: Failure,
        retry_in: Option<Duration>,
    },
    Finished {
        index: usize,
        report: TargetReport,
        cleanup_problem: Option<String>,
        credentials_refused: bool,
    },
    Interrupted {
        index: usize,
    },
}

/// Runs `job` on `targets` (name and endpoint each). `interrupts` delivers Ctrl-C.
pub async fn run(
    job: Arc<Job>,
    targets: Vec<(String, Endpoint)>,
    observer: &mut impl Observer,
    mut interrupts: mpsc::UnboundedReceiver<()>,
) -> Outcome {
    let mut outcome = Outcome {
        tally: Tally {
            targets: targets.len(),
            ..Tally::default()
        },
        stopped: None,
    };
    let semaphore = Arc::new(Semaphore::new(job.throttle.max(1)));
    let cancel = CancellationToken::new();
    let (events, mut received) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut reported = vec![false; targets.len()];
    let mut next = 0usize;
    let mut abandoned = false;
    loop {
        let may_start = outcome.stopped.is_none() && next < targets.len();
        if !may_start && tasks.is_empty() {
            break;
        }
        tokio::select! {
            // Events first: a task's last event is handled before its end.
            biased;
            Some(event) = received.recv() => {
                handle(event, &targets, &job, observer, &mut outcome, &mut reported);
            }
            Some(()) = interrupts.recv() => {
                if outcome.stopped == Some(Stopped::Interrupted) {
                    // A second Ctrl-C: stop waiting for shells to be deleted.
                    tasks.abort_all();
                    abandoned = true;
                } else {
                    outcome.stopped = Some(Stopped::Interrupted);
                    cancel.cancel();
                }
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, problem) = match joined {
                    Ok((id, ())) => (id, None),
                    Err(error) => (error.id(), Some(error)),
                };
                let Some(index) = running.remove(&id) else { continue };
                if let Some(error) = problem {
                    if !reported[index] {
                        reported[index] = true;
                        if error.is_cancelled() {
                            outcome.tally.interrupted += 1;
                            observer.interrupted(&targets[index].0);
                        } else {
                            let failure = Failure::new(Stage::Connect, Cause::Other, format!("internal error: {error}"));
                            let report = TargetReport::failed(&targets[index].0, &failure, 1, Duration::ZERO);
                            outcome.tally.count(&report);
                            observer.finished(&report, None);
                        }
                    }
                }
            }
            permit = semaphore.clone().acquire_owned(), if may_start => {
                let Ok(permit) = permit else { break };
                let index = next;
                next += 1;
                let (target, endpoint) = targets[index].clone();
                let (job, events, cancel) = (job.clone(), events.clone(), cancel.clone());
                let handle = tasks.spawn(async move {
                    run_target(index, &target, &endpoint, &job, &events, &cancel).await;
                    drop(permit);
                });
                running.insert(handle.id(), index);
            }
        }
    }
    // Events sent just before the last task ended.
    drop(events);
    while let Some(event) = received.recv().await {
        handle(event, &targets, &job, observer, &mut outcome, &mut reported);
    }
    if abandoned {
        outcome.stopped = Some(Stopped::Interrupted);
    }
    outcome
}

fn handle(
    event: Event,
    targets: &[(String, Endpoint)],
    job: &Job,
    observer: &mut impl Observer,
    outcome: &mut Outcome,
    reported: &mut [bool],
) {
    match event {
        Event::Started { index, attempt } => {
            let (name, endpoint) = &targets[index];
            observer.attempt_started(name, attempt, endpoint.url());
        }
        Event::Failed {
            index,
            attempt,
            failure,
            retry_in,
        } => observer.attempt_failed(&targets[index].0, attempt, &failure, retry_in),
        Event::Finished {
            index,
            report,
            cleanup_problem,
            credentials_refused,
        } => {
            reported[index] = true;
            outcome.tally.count(&report);
            observer.finished(&report, cleanup_problem.as_deref());
            if credentials_refused && job.via_relay && outcome.stopped.is_none() {
                let why = report.error.clone().unwrap_or_default();
                outcome.stopped = Some(Stopped::CredentialsRefused(why));
            }
        }
        Event::Interrupted { index } => {
            reported[index] = true;
            outcome.tally.interrupted += 1;
            observer.interrupted(&targets[index].0);
        }
    }
}

/// Every attempt on one target, until one gets a result, a failure not worth retrying,
/// or the attempts run out.
async fn run_target(
    index: usize,
    target: &str,
    endpoint: &Endpoint,
    job: &Job,
    events: &mpsc::UnboundedSender<Event>,
    cancel: &CancellationToken,
) {
    let started = Instant::now();
    let send = |event| {
        // The receiver lives until every task ended.
        let _ = events.send(event);
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        send(Event::Started { index, attempt });
        let failure = match run_command(endpoint, &job.credentials, &job.command, job.timeout, cancel).await {
            Ok(mut output) => {
                if job.powershell {
                    output.stderr = powershell::readable_stderr(std::mem::take(&mut output.stderr));
                }
                let cleanup_problem = output.cleanup_problem.take();
                let report = TargetReport::ran(target, output, attempt, started.elapsed());
                send(Event::Finished {
                    index,
                    report,
                    cleanup_problem,
                    credentials_refused: false,
                });
                return;
            }
            Err(failure) => failure,
        };
        if failure.cause == Cause::Interrupted {
            send(Event::Interrupted { index });
            return;
        }
        let retry = failure.is_retriable() && attempt < job.attempts;
        send(Event::Failed {
            index,
            attempt,
            failure: failure.clone(),
            retry_in: retry.then_some(job.retry_delay),
        });
        if !retry {
            let report = TargetReport::failed(target, &failure, attempt, started.elapsed());
            send(Event::Finished {
                index,
                report,
                cleanup_problem: None,
                credentials_refused: failure.cause == Cause::CredentialsRefused,
            });
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(job.retry_delay) => {}
            () = cancel.cancelled() => {
                send(Event::Interrupted { index });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::report::Status;

    /// What an observer saw, in order.
    #[derive(Default)]
    struct Seen {
        lines: Vec<String>,
        reports: Vec<TargetReport>,
    }

    impl Observer for Seen {
        fn attempt_started(&mut self, target: &str, attempt: u32, _url: &str) {
            self.lines.push(format!("{target} start {attempt}"));
        }
        fn attempt_failed(&mut self, target: &str, attempt: u32, failure: &Failure, retry_in: Option<Duration>) {
            self.lines.push(format!(
                "{target} failed {attempt} {:?} retry={}",
                failure.cause,
                retry_in.is_some()
            ));
        }
        fn finished(&mut self, report: &TargetReport, _cleanup_problem: Option<&str>) {
            self.lines.push(format!("{} finished", report.target));
            self.reports.push(report.clone());
        }
        fn interrupted(&mut self, target: &str) {
            self.lines.push(format!("{target} interrupted"));
        }
    }

    fn job(attempts: u32) -> Arc<Job> {
        Arc::new(Job {
            credentials: DelegatedCredentials::new("LAB", "alice", "pw".to_string().into()),
            command: CommandLine {
                command: "hostname".into(),
                arguments: vec![],
            },
            powershell: false,
            timeout: Duration::from_secs(2),
            attempts,
            retry_delay: Duration::from_millis(50),
            throttle: 2,
            via_relay: false,
        })
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn targets(names: &[String]) -> Vec<(String, Endpoint)> {
        names
            .iter()
            .map(|n| (n.clone(), Endpoint::direct(n, Duration::from_secs(2)).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn unreachable_targets_are_retried_up_to_the_attempts_and_reported_once() {
        let names: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", closed_port())).collect();
        let mut seen = Seen::default();
        let (_interrupt, interrupts) = mpsc::unbounded_channel();
        let outcome = run(job(3), targets(&names), &mut seen, interrupts).await;
        assert_eq!(
            outcome.tally,
            Tally {
                targets: 3,
                failed: 3,
                retried: 3,
                ..Tally::default()
            }
        );
        assert_eq!(outcome.stopped, None);
        for name in &names {
            let mine: Vec<&String> = seen.lines.iter().filter(|l| l.starts_with(name.as_str())).collect();
            assert_eq!(
                mine,
                [
                    &format!("{name} start 1"),
                    &format!("{name} failed 1 Unreachable retry=true"),
                    &format!("{name} start 2"),
                    &format!("{name} failed 2 Unreachable retry=true"),
                    &format!("{name} start 3"),
                    &format!("{name} failed 3 Unreachable retry=false"),
                    &format!("{name} finished"),
                ]
            );
        }
        let report = &seen.reports[0];
        assert_eq!(
            (report.status, report.attempts, report.exit_code),
            (Status::Failed, 3, None)
        );
        assert!(report.duration_ms >= 100, "two retry delays: {}", report.duration_ms);
    }

    #[tokio::test]
    async fn an_interrupt_stops_starting_and_cancels_the_running() {
        // Accepts and never answers: every attempt waits.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let names: Vec<String> = (0..5).map(|_| format!("127.0.0.1:{port}")).collect();
        let (interrupt, interrupts) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = interrupt.send(());
            // Kept open: a closed channel is not an interrupt.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut seen = Seen::default();
        let started = Instant::now();
        let outcome = run(job(1), targets(&names), &mut seen, interrupts).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(outcome.stopped, Some(Stopped::Interrupted));
        // Throttle 2: two were running, three never started.
        assert_eq!(
            outcome.tally,
            Tally {
                targets: 5,
                interrupted: 2,
                ..Tally::default()
            }
        );
        assert!(seen.reports.is_empty());
    }
}
