//! `winrm-relay run`: one command on many targets, through the relay (CredSSP to
//! `/wsman/<target>`, so the relay authenticates to each target as the caller) or, with
//! `--direct`, to the targets themselves (Negotiate/NTLM).
//!
//! Built on the relay's own cores: [`crate::upstream::TargetConnection`] authenticates and
//! seals (its CredSSP initiator towards the relay, its NTLM client towards targets), and
//! `proto::wsman` builds the WinRS envelopes and reads the answers.
//!
//! - [`session`]: one target: connect, create a shell, run, collect, delete. Reusable as
//!   it is by anything that needs a fast WinRM client (the benchmarks' load generator).
//! - [`failure`]: how far an attempt got and whether it may be retried.
//! - [`schedule`]: throttle, retries, Ctrl-C; results streamed as targets finish.
//! - [`report`], [`transcript`], [`console`]: what is printed and recorded.
//! - [`powershell`]: `--powershell` command lines and CLIXML error streams.
//!
//! Exit status: 0 every target ok, 1 any failed, 2 usage or credential errors (the relay
//! refusing the logon included), 130 interrupted.

mod console;
pub mod failure;
pub mod powershell;
pub mod report;
pub mod schedule;
pub mod session;
pub mod transcript;

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::resolve::{CaFile, TargetTls, TlsTrust};
use crate::vault::DelegatedCredentials;
use console::{Console, Progress};
use report::{Format, Report, Stopped};
use schedule::Job;
pub use session::{run_command, CommandLine, CommandOutput, Endpoint, Relay, Session};
use transcript::{RunHeader, Transcript};

/// Exit status of an interrupted run, as shells report a command ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
const EXIT_USAGE: u8 = 2;

/// `winrm-relay run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target_list").required(true).args(["targets", "targets_file"]))]
pub struct RunArgs {
    /// The relay, `http[s]://bastion[:port]`; each target is reached at /wsman/<target>.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "direct",
        conflicts_with = "direct"
    )]
    relay: Option<String>,
    /// Talk to the targets themselves (Negotiate/NTLM over HTTP, port 5985 unless
    /// `host:port`), without a relay.
    #[arg(long)]
    direct: bool,
    /// Who to log on as: DOMAIN\user or user@DOMAIN.
    #[arg(long, value_name = "DOMAIN\\USER")]
    user: String,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Targets, comma-separated: names the relay knows, host names, addresses, `host:port`.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    targets: Vec<String>,
    /// A file with one target per line (`#` comments and blank lines ignored).
    #[arg(long, value_name = "FILE")]
    targets_file: Option<PathBuf>,
    /// Targets running at once (one session each).
    #[arg(long, default_value_t = 5, value_name = "N")]
    throttle: usize,
    /// Attempts per target in all (1 = no retry). Only attempts where nothing ran are
    /// retried: a command that started never runs twice.
    #[arg(long, default_value_t = 3, value_name = "N")]
    retries: u32,
    /// Wait between attempts: 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg, value_name = "TIME")]
    retry_delay: Duration,
    /// Longest one attempt on one target may take, command included.
    #[arg(long, default_value = "120s", value_parser = parse_duration_arg, value_name = "TIME")]
    timeout: Duration,
    /// table (default on a terminal), json (one array) or jsonl (default otherwise: one
    /// object per line as each target finishes).
    #[arg(long, value_enum, value_name = "FORMAT")]
    output: Option<Format>,
    /// Write everything (command, each target's attempts, output and errors) to FILE,
    /// time-stamped, like Start-Transcript.
    #[arg(long, value_name = "FILE")]
    transcript: Option<PathBuf>,
    /// Run COMMAND as a PowerShell script: powershell.exe -EncodedCommand in a cmd shell,
    /// its CLIXML error stream turned into text.
    #[arg(long)]
    powershell: bool,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// PEM CA certificates to trust for an https relay, besides the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// What to run: cmd.exe receives COMMAND and ARGS joined by spaces (with --powershell,
    /// the script).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `5s`, `500ms`, `2m`, `1h`, or a number of seconds.
fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number and a unit, like 5s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {s:?}"))
}

/// `5s`, `1.5s`, `250ms`: how the help and the transcript write durations.
pub(crate) fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// The targets, in the order given, each once.
fn target_list(listed: &[String], file: Option<&Path>) -> Result<Vec<String>, String> {
    let from_file;
    let names: Box<dyn Iterator<Item = &str>> = match file {
        Some(path) => {
            from_file = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Box::new(from_file.lines().filter(|l| !l.trim_start().starts_with('#')))
        }
        None => Box::new(listed.iter().map(String::as_str)),
    };
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for name in names.map(str::trim).filter(|n| !n.is_empty()) {
        crate::resolve::host::parse_host_port(name).map_err(|e| format!("invalid target {name:?}: {e}"))?;
        if seen.insert(name.to_ascii_lowercase()) {
            targets.push(name.to_string());
        }
    }
    if targets.is_empty() {
        return Err("no targets: give --targets web01,web02 or --targets-file FILE".into());
    }
    Ok(targets)
}

/// Everything checked before the password is asked for.
struct Plan {
    targets: Vec<(String, Endpoint)>,
    domain: String,
    user: String,
    command: CommandLine,
    /// The command as the user gave it, for the transcript.
    given: String,
    through: String,
    format: Format,
    progress: bool,
}

fn plan(args: &RunArgs) -> Result<Plan, String> {
    let names = target_list(&args.targets, args.targets_file.as_deref())?;
    if args.throttle == 0 {
        return Err("--throttle must be at least 1".into());
    }
    if args.retries == 0 {
        return Err("--retries counts attempts in all: at least 1 (1 = no retry)".into());
    }
    if args.timeout.is_zero() {
        return Err("--timeout must be more than 0".into());
    }
    let (domain, user) = crate::config::users::parse_user_name(&args.user).map_err(|e| e.to_string())?;
    let given = args.command.join(" ");
    let command = if args.powershell {
        CommandLine {
            command: powershell::command_line(&given)?,
            arguments: Vec::new(),
        }
    } else {
        let (first, rest) = args.command.split_first().ok_or("no command given after --")?;
        CommandLine {
            command: first.clone(),
            arguments: rest.to_vec(),
        }
    };
    let (targets, through) = match (&args.relay, args.direct) {
        (Some(url), false) => {
            let relay = Relay::parse(url, || {
                let ca_file = args.ca_file.as_deref().map(CaFile::load).transpose()?;
                TargetTls::new(TlsTrust::Roots(ca_file)).map_err(|e| e.to_string())
            })?;
            let targets = names
                .into_iter()
                .map(|name| {
                    let endpoint = Endpoint::through_relay(&relay, &name, args.timeout);
                    (name, endpoint)
                })
                .collect();
            (targets, format!("relay {url}"))
        }
        (None, true) => {
            let mut targets = Vec::with_capacity(names.len());
            for name in names {
                let endpoint = Endpoint::direct(&name, args.timeout)?;
                targets.push((name, endpoint));
            }
            (targets, "direct to each target".to_string())
        }
        _ => return Err("give --relay URL, or --direct".into()),
    };
    let stdout_terminal = std::io::stdout().is_terminal();
    Ok(Plan {
        targets,
        domain,
        user,
        command,
        given,
        through,
        format: args
            .output
            .unwrap_or(if stdout_terminal { Format::Table } else { Format::Jsonl }),
        progress: !args.no_progress && stdout_terminal && std::io::stderr().is_terminal(),
    })
}

/// The password: the first line of stdin, or typed at a prompt without echo.
fn password(from_stdin: bool, principal: &str) -> Result<SecretString, String> {
    let secret = if from_stdin {
        // Sized up front so the buffer is not reallocated (leaving copies) while reading.
        let mut line = Zeroizing::new(String::with_capacity(1024));
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        crate::cli::secret_from_line(&line)
    } else {
        let typed = rpassword::prompt_password(format!("Password for {principal}: "))
            .map_err(|e| format!("cannot prompt for the password ({e}): use --password-stdin"))?;
        SecretString::from(typed)
    };
    if secret.expose_secret().is_empty() {
        return Err("empty password".into());
    }
    Ok(secret)
}

pub fn run(args: RunArgs) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => return usage(message),
    };
    let principal = format!("{}\\{}", plan.domain, plan.user);
    let transcript = match args.transcript.as_deref().map(Transcript::create).transpose() {
        Ok(transcript) => transcript,
        Err(error) => return usage(format!("cannot create the transcript: {error}")),
    };
    let secret = match password(args.password_stdin, &principal) {
        Ok(secret) => secret,
        Err(message) => return usage(message),
    };
    let job = Arc::new(Job {
        credentials: DelegatedCredentials::new(plan.domain.clone(), plan.user.clone(), secret),
        command: plan.command,
        powershell: args.powershell,
        timeout: args.timeout,
        attempts: args.retries,
        retry_delay: args.retry_delay,
        throttle: args.throttle,
        via_relay: !args.direct,
    });
    let width = plan
        .targets
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let progress = plan.progress.then(|| Progress::new(plan.targets.len()));
    let mut console = Console::new(Report::new(plan.format, std::io::stdout(), width), progress, transcript);
    console.transcript(|t| {
        t.header(&RunHeader {
            user: &principal,
            through: &plan.through,
            command: &plan.given,
            powershell: args.powershell,
            targets: plan.targets.len(),
            throttle: args.throttle,
            attempts: args.retries,
            retry_delay: args.retry_delay,
            timeout: args.timeout,
        })
    });
    console.start();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if interrupt.send(()).is_err() {
                    break;
                }
            }
        });
        schedule::run(job, plan.targets, &mut console, interrupts).await
    });
    let summary = report::summary_line(&outcome.tally, outcome.stopped.as_ref(), started.elapsed());
    console.finish(&summary);
    eprintln!("{summary}");
    // Abandoned cleanups (a second Ctrl-C) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut failed = outcome.tally.failed > 0;
    if let Some(error) = &console.output_error {
        eprintln!("error: writing the results: {error}");
        failed = true;
    }
    if let Some(error) = &console.transcript_error {
        eprintln!("error: writing the transcript: {error}");
        failed = true;
    }
    match outcome.stopped {
        Some(Stopped::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Some(Stopped::CredentialsRefused(_)) => ExitCode::from(EXIT_USAGE),
        None if failed => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn the_interface_parses_with_its_defaults() {
        let args = parse(&[
            "--relay",
            "http://bastion:5985",
            "--user",
            "LAB\\alice",
            "--targets",
            "web01,web02,10.1.0.7",
            "--",
            "ipconfig",
            "/all",
        ])
        .unwrap();
        assert_eq!(args.targets, ["web01", "web02", "10.1.0.7"]);
        assert_eq!(
            (args.throttle, args.retries, args.retry_delay, args.timeout),
            (5, 3, Duration::from_secs(5), Duration::from_secs(120))
        );
        assert_eq!(args.command, ["ipconfig", "/all"]);
        assert!(!args.password_stdin && !args.direct && !args.powershell && args.output.is_none());
        let args = parse(&[
            "--direct",
            "--user",
            "alice@LAB",
            "--password-stdin",
            "--targets-file",
            "hosts.txt",
            "--throttle",
            "50",
            "--retries",
            "1",
            "--retry-delay",
            "500ms",
            "--timeout",
            "2m",
            "--output",
            "jsonl",
            "--transcript",
            "run.log",
            "--powershell",
            "--no-progress",
            "--",
            "Get-Service",
        ])
        .unwrap();
        assert_eq!(args.retry_delay, Duration::from_millis(500));
        assert_eq!(args.timeout, Duration::from_secs(120));
        assert_eq!(args.output, Some(Format::Jsonl));
    }

    #[test]
    fn usage_errors_are_refused_by_the_parser() {
        let base = ["--user", "LAB\\alice", "--targets", "web01"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&["--", "hostname"]).is_err(), "neither --relay nor --direct");
        assert!(with(&["--relay", "http://b", "--direct", "--", "hostname"]).is_err());
        assert!(with(&["--relay", "http://b"]).is_err(), "no command");
        assert!(with(&["--relay", "http://b", "--targets-file", "f", "--", "x"]).is_err());
        assert!(with(&["--relay", "http://b", "--retry-delay", "5 parsecs", "--", "x"]).is_err());
        assert!(
            parse(&["--relay", "http://b", "--user", "u", "--", "x"]).is_err(),
            "no targets"
        );
        assert!(
            with(&["--relay", "http://b", "--password", "pw", "--", "x"]).is_err(),
            "no password option"
        );
    }

    #[test]
    fn plans_check_what_the_parser_cannot() {
        let args = |extra: &[&str]| {
            parse(
                &[
                    &["--relay", "http://bastion:5985", "--user", "LAB\\alice"][..],
                    extra,
                    &["--", "hostname"],
                ]
                .concat(),
            )
            .unwrap()
        };
        let ok = plan(&args(&["--targets", "web01, web02,WEB01,,10.1.0.7:5986"])).unwrap();
        let names: Vec<&str> = ok.targets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["web01", "web02", "10.1.0.7:5986"]);
        assert_eq!(ok.targets[2].1.url(), "http://bastion:5985/wsman/10.1.0.7:5986");
        assert_eq!((ok.domain.as_str(), ok.user.as_str()), ("LAB", "alice"));
        assert_eq!(ok.command.command, "hostname");
        for (extra, why) in [
            (
                &["--targets", "web01", "--throttle", "0"][..],
                "--throttle must be at least 1",
            ),
            (&["--targets", "web01", "--retries", "0"], "at least 1 (1 = no retry)"),
            (&["--targets", "web 01"], "invalid target"),
            (&["--targets", ","], "no targets"),
            (
                &["--targets-file", "/nonexistent/hosts"],
                "cannot read /nonexistent/hosts",
            ),
        ] {
            let error = plan(&args(extra)).err().unwrap_or_default();
            assert!(error.contains(why), "{extra:?}: {error}");
        }
        let bad_user = parse(&["--relay", "http://b", "--user", "alice", "--targets", "w", "--", "x"]).unwrap();
        assert!(plan(&bad_user).err().unwrap_or_default().contains("DOMAIN\\user"));
    }

    #[test]
    fn a_targets_file_has_one_per_line_with_comments() {
        let dir = crate::config::test_dir("fanout-targets");
        let path = dir.join("hosts.txt");
        std::fs::write(&path, "# lab\nweb01\n\n  web02  \n# web03\nweb01\n").unwrap();
        assert_eq!(target_list(&[], Some(&path)).unwrap(), ["web01", "web02"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn powershell_commands_are_encoded() {
        let args = parse(&[
            "--direct",
            "--user",
            "LAB\\alice",
            "--targets",
            "web01",
            "--powershell",
            "--",
            "Get-Date;",
            "hostname",
        ])
        .unwrap();
        let plan = plan(&args).unwrap();
        assert_eq!(plan.given, "Get-Date; hostname");
        assert_eq!(
            plan.command.command,
            powershell::command_line("Get-Date; hostname").unwrap()
        );
        assert!(plan.command.arguments.is_empty());
        assert_eq!(plan.targets[0].1.url(), "http://web01:5985/wsman");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_arg("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration_arg("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration_arg("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration_arg("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration_arg("5d").is_err());
        assert!(parse_duration_arg("s").is_err());
        assert!(parse_duration_arg("-1s").is_err());
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
