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
//! [`run`] takes [`RunOptions`], which the command line (`cli/run.rs`) builds from its
//! arguments. Exit status: 0 every target ok, 1 any failed, 2 usage or credential errors
//! (the relay refusing the logon included), 130 interrupted.

mod console;
pub mod failure;
pub mod powershell;
pub mod report;
pub mod schedule;
pub mod session;
pub mod transcript;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::identity::Principal;
use crate::resolve::{CaFile, TargetTls, TlsTrust};
use crate::vault::{read_password_line, DelegatedCredentials};
use console::{Console, Progress};
use report::{Format, Report, Stopped};
use schedule::Job;
pub use session::{run_command, CommandLine, CommandOutput, Endpoint, Relay, Session};
use transcript::{RunHeader, Transcript};

/// Exit status of an interrupted run, as shells report a command ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
const EXIT_USAGE: u8 = 2;

/// What `winrm-relay run` was asked to do, as given: [`run`] checks it before asking
/// for the password.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The relay, `http[s]://bastion[:port]`; each target is reached at /wsman/<target>.
    pub relay: Option<String>,
    /// Talk to the targets themselves instead (Negotiate/NTLM); exactly one of this and
    /// `relay`.
    pub direct: bool,
    /// Who to log on as: DOMAIN\user or user@DOMAIN.
    pub user: String,
    /// Read the password from the first line of stdin instead of prompting.
    pub password_stdin: bool,
    /// Target names, host names, addresses or `host:port`; ignored with `targets_file`.
    pub targets: Vec<String>,
    /// A file with one target per line (`#` comments and blank lines ignored).
    pub targets_file: Option<PathBuf>,
    /// Targets running at once (one session each).
    pub throttle: usize,
    /// Attempts per target in all (1 = no retry); only attempts where nothing ran are
    /// retried.
    pub retries: u32,
    /// Wait between attempts.
    pub retry_delay: Duration,
    /// Longest one attempt on one target may take, command included.
    pub timeout: Duration,
    /// `None`: a table on a terminal, JSON lines otherwise.
    pub output: Option<Format>,
    /// Where to write the time-stamped record of the whole run.
    pub transcript: Option<PathBuf>,
    /// `command` is a PowerShell script.
    pub powershell: bool,
    /// No progress bar, even on a terminal.
    pub no_progress: bool,
    /// PEM CA certificates to trust for an https relay, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The command and its arguments (with `powershell`, the script's words).
    pub command: Vec<String>,
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
    principal: Principal,
    command: CommandLine,
    /// The command as the user gave it, for the transcript.
    given: String,
    through: String,
    format: Format,
    progress: bool,
}

fn plan(args: &RunOptions) -> Result<Plan, String> {
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
    let principal = crate::config::users::parse_user_name(&args.user).map_err(|e| e.to_string())?;
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
        principal,
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
        read_password_line(&mut std::io::stdin().lock())
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?
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

pub fn run(args: RunOptions) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => return usage(message),
    };
    let principal = plan.principal.to_string();
    let transcript = match args.transcript.as_deref().map(Transcript::create).transpose() {
        Ok(transcript) => transcript,
        Err(error) => return usage(format!("cannot create the transcript: {error}")),
    };
    let secret = match password(args.password_stdin, &principal) {
        Ok(secret) => secret,
        Err(message) => return usage(message),
    };
    let job = Arc::new(Job {
        credentials: DelegatedCredentials::from_principal(plan.principal.clone(), secret),
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

    /// `run`'s defaults, through the relay at `http://bastion:5985` as LAB\alice.
    fn options(targets: &[&str], command: &[&str]) -> RunOptions {
        RunOptions {
            relay: Some("http://bastion:5985".into()),
            direct: false,
            user: "LAB\\alice".into(),
            password_stdin: false,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            targets_file: None,
            throttle: 5,
            retries: 3,
            retry_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(120),
            output: None,
            transcript: None,
            powershell: false,
            no_progress: false,
            ca_file: None,
            command: command.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn plans_check_what_the_parser_cannot() {
        let hostname = |targets: &[&str]| options(targets, &["hostname"]);
        let ok = plan(&hostname(&["web01", " web02", "WEB01", "", "10.1.0.7:5986"])).unwrap();
        let names: Vec<&str> = ok.targets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["web01", "web02", "10.1.0.7:5986"]);
        assert_eq!(ok.targets[2].1.url(), "http://bastion:5985/wsman/10.1.0.7:5986");
        assert_eq!((ok.principal.domain(), ok.principal.user()), ("LAB", "alice"));
        assert_eq!(ok.command.command, "hostname");
        let throttle_0 = RunOptions {
            throttle: 0,
            ..hostname(&["web01"])
        };
        let retries_0 = RunOptions {
            retries: 0,
            ..hostname(&["web01"])
        };
        let from_missing_file = RunOptions {
            targets_file: Some("/nonexistent/hosts".into()),
            ..hostname(&[])
        };
        let neither_relay_nor_direct = RunOptions {
            relay: None,
            ..hostname(&["web01"])
        };
        for (options, why) in [
            (throttle_0, "--throttle must be at least 1"),
            (retries_0, "at least 1 (1 = no retry)"),
            (hostname(&["web 01"]), "invalid target"),
            (hostname(&["", ""]), "no targets"),
            (from_missing_file, "cannot read /nonexistent/hosts"),
            (neither_relay_nor_direct, "give --relay URL, or --direct"),
        ] {
            let error = plan(&options).err().unwrap_or_default();
            assert!(error.contains(why), "{options:?}: {error}");
        }
        let bad_user = RunOptions {
            user: "alice".into(),
            ..hostname(&["w"])
        };
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
        let options = RunOptions {
            relay: None,
            direct: true,
            powershell: true,
            ..options(&["web01"], &["Get-Date;", "hostname"])
        };
        let plan = plan(&options).unwrap();
        assert_eq!(plan.given, "Get-Date; hostname");
        assert_eq!(
            plan.command.command,
            powershell::command_line("Get-Date; hostname").unwrap()
        );
        assert!(plan.command.arguments.is_empty());
        assert_eq!(plan.targets[0].1.url(), "http://web01:5985/wsman");
    }

    #[test]
    fn durations_are_written_as_the_options_take_them() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
