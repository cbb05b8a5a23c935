//! Command line: `serve`, `check`, `user add|remove|list`, `run` (see [`crate::fanout`]),
//! `audit show|list|verify` and `kerberos test`, one file each.
//!
//! Clap lives here and nowhere else in the crate: each front-end parses its arguments,
//! hands the library plain values and turns the outcome into an exit code. This file
//! holds the parser, the global options and the dispatch; [`common`] what several
//! front-ends share.
//!
//! Exit codes: 0 success, 1 failure (server error, config problems found by `check`,
//! users-file errors), 2 usage errors and a config `serve` cannot load; `run` adds 130
//! when interrupted and counts the relay refusing the credentials as 2.

mod audit;
mod check;
mod common;
mod kerberos;
mod run;
mod serve;
mod user;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::ConfigArg;

#[derive(Debug, Parser)]
#[command(
    name = "winrm-relay",
    version,
    about = "WinRM relay bastion: CredSSP in, delegated WS-Management out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text for people, or as JSON objects (with the session and request
    /// spans' fields) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Validate a config file and report every problem.
    Check(check::CheckArgs),
    /// Manage the users file (DOMAIN\user:<NT hash> lines).
    User {
        #[command(subcommand)]
        action: user::UserCommand,
    },
    /// Run one command on many targets through the relay (or --direct), throttled, retried, reported.
    Run(run::RunArgs),
    /// Read session transcripts and check the audit log's hash chain.
    Audit {
        #[command(subcommand)]
        action: audit::AuditCommand,
    },
    /// Domain mode ([kerberos]) checks.
    Kerberos {
        #[command(subcommand)]
        action: kerberos::KerberosCommand,
    },
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(c) => {
            // Logs are the relay's; the other commands report on stdout and stderr.
            init_tracing(cli.log_format);
            serve::run(&c.config)
        }
        Command::Check(c) => check::run(&c),
        Command::Run(args) => run::run(args),
        Command::User { action } => user::run(action),
        Command::Audit { action } => audit::run(action),
        Command::Kerberos { action } => kerberos::run(action),
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::new(quiet_security_packages(&directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second subscriber (e.g. in tests) is not worth a panic.
    let _ = match format {
        // Colour codes only on a terminal: logs in files stay greppable.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One object per line; the session's and the request's span fields in `spans`.
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(true).try_init(),
    };
}

/// sspi logs every sealed message's plaintext (users' commands and output)
/// at debug level: keep it at warn unless the operator asks for sspi by name.
fn quiet_security_packages(directives: &str) -> String {
    if directives.contains("sspi") {
        directives.to_string()
    } else {
        format!("{directives},sspi=warn")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn sspi_stays_quiet_unless_named() {
        assert_eq!(quiet_security_packages("debug"), "debug,sspi=warn");
        assert_eq!(quiet_security_packages("info,sspi=trace"), "info,sspi=trace");
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_to_example_config() {
        let cli = Cli::try_parse_from(["winrm-relay", "serve"]).unwrap();
        let Command::Serve(c) = cli.command else { panic!() };
        assert_eq!(c.config, Path::new(common::DEFAULT_CONFIG));
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["winrm-relay", "serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["winrm-relay", "serve", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn each_front_end_is_reached() {
        let command = |args: &[&str]| Cli::try_parse_from([&["winrm-relay"][..], args].concat()).map(|c| c.command);
        assert!(matches!(
            command(&["user", "add", "LAB\\alice", "--users-file", "u"]),
            Ok(Command::User { .. })
        ));
        assert!(matches!(
            command(&["run", "--direct", "--user", "LAB\\a", "--targets", "w", "--", "x"]),
            Ok(Command::Run(_))
        ));
        assert!(matches!(
            command(&["kerberos", "test", "alice", "--password-stdin"]),
            Ok(Command::Kerberos { .. })
        ));
        assert!(matches!(command(&["check", "-c", "r.toml"]), Ok(Command::Check(_))));
        assert!(matches!(
            command(&["check", "-c", "r.toml", "--online"]),
            Ok(Command::Check(c)) if c.online
        ));
    }

    #[test]
    fn audit_commands_parse() {
        let cli = Cli::try_parse_from(["winrm-relay", "audit", "verify", "a.1", "a", "--key", "k"]).unwrap();
        assert!(matches!(cli.command, Command::Audit { .. }));
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "verify"]).is_err());
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "show", "abc", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "list", "--since", "1h", "--user", "LAB\\a*"]).is_ok());
    }
}
