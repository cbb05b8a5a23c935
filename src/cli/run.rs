//! `winrm-relay run`: one command on many targets ([`crate::fanout`]).
//!
//! Exit status: 0 every target ok, 1 any failed, 2 usage or credential errors (the relay
//! refusing the logon included), 130 interrupted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::fanout::report::Format;
use crate::fanout::RunOptions;

/// `winrm-relay run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target_list").required(true).args(["targets", "targets_file"]))]
pub(super) struct RunArgs {
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
    output: Option<OutputFormat>,
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

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum OutputFormat {
    /// Target, status, exit code, time and the first line of output, one row per target.
    Table,
    /// One JSON array of results.
    Json,
    /// One JSON object per line, as each target finishes.
    Jsonl,
}

impl From<OutputFormat> for Format {
    fn from(format: OutputFormat) -> Format {
        match format {
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
            OutputFormat::Jsonl => Format::Jsonl,
        }
    }
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> RunOptions {
        RunOptions {
            relay: args.relay,
            direct: args.direct,
            user: args.user,
            password_stdin: args.password_stdin,
            targets: args.targets,
            targets_file: args.targets_file,
            throttle: args.throttle,
            retries: args.retries,
            retry_delay: args.retry_delay,
            timeout: args.timeout,
            output: args.output.map(Format::from),
            transcript: args.transcript,
            powershell: args.powershell,
            no_progress: args.no_progress,
            ca_file: args.ca_file,
            command: args.command,
        }
    }
}

pub(super) fn run(args: RunArgs) -> ExitCode {
    crate::fanout::run(args.into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

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
        assert_eq!(args.output, Some(OutputFormat::Jsonl));
        let options = RunOptions::from(args);
        assert_eq!(options.output, Some(Format::Jsonl));
        assert_eq!(
            (options.direct, options.throttle, options.retries, options.command),
            (true, 50, 1, vec!["Get-Service".to_string()])
        );
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
    fn durations() {
        assert_eq!(parse_duration_arg("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration_arg("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration_arg("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration_arg("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration_arg("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration_arg("5d").is_err());
        assert!(parse_duration_arg("s").is_err());
        assert!(parse_duration_arg("-1s").is_err());
    }
}
