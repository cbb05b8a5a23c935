//! Command line: `serve`, `check`, `user add|remove|list`, `run` (see [`crate::fanout`]),
//! `audit show|list|verify` and `kerberos test`.
//!
//! Exit codes: 0 success, 1 failure (server error, config problems found by `check`,
//! users-file errors), 2 usage errors and a config `serve` cannot load; `run` adds 130
//! when interrupted and counts the relay refusing the credentials as 2.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::config::{Config, UsersError, UsersFile};

/// The config file commands read when `--config` is not given.
pub(crate) const DEFAULT_CONFIG: &str = "config/relay.example.toml";

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
    Check(ConfigArg),
    /// Manage the users file (DOMAIN\user:<NT hash> lines).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Run one command on many targets through the relay (or --direct), throttled, retried, reported.
    Run(crate::fanout::RunArgs),
    /// Read session transcripts and check the audit log's hash chain.
    Audit {
        #[command(subcommand)]
        action: crate::audit::tools::AuditCommand,
    },
    /// Domain mode ([kerberos]) checks.
    Kerberos {
        #[command(subcommand)]
        action: KerberosCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KerberosCommand {
    /// One AS exchange for a domain user against the configured KDCs: says
    /// whether the domain accepts the password, and if not why.
    Test {
        /// DOMAIN\user, user@REALM or user (of [kerberos] realm).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file (relative paths inside it are relative to the working directory).
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct UsersFileArg {
    /// Users file; created with mode 0600 if missing.
    #[arg(long, value_name = "FILE")]
    users_file: PathBuf,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user or replace their password.
    Add {
        /// DOMAIN\user (or user@DOMAIN).
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Remove {
        /// DOMAIN\user (or user@DOMAIN).
        name: String,
        #[command(flatten)]
        file: UsersFileArg,
    },
    /// List user names (never hashes).
    List {
        #[command(flatten)]
        file: UsersFileArg,
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
        Command::Serve(c) => serve(&c.config, cli.log_format),
        Command::Check(c) => check(&c.config),
        Command::Run(args) => crate::fanout::run(args),
        Command::User { action } => match user(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Audit { action } => crate::audit::tools::run(action),
        Command::Kerberos {
            action:
                KerberosCommand::Test {
                    name,
                    config,
                    password_stdin,
                },
        } => kerberos_test(&name, &config.config, password_stdin),
    }
}

/// `kerberos test`: exit 0 when the domain issued a TGT, 1 otherwise (the
/// line printed says why), 2 when the config cannot be used.
fn kerberos_test(name: &str, path: &Path, password_stdin: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(kerberos) = &config.kerberos else {
        eprintln!("error: {}: no [kerberos] table", path.display());
        return ExitCode::from(2);
    };
    // The realm targets get tickets in, with the KDC transport built at load.
    let Some(realm) = &config.defaults.kerberos else {
        eprintln!("error: {}: [kerberos] kdc lists no KDC", path.display());
        return ExitCode::from(2);
    };
    let transport = &realm.kdc;
    let names = crate::proto::credssp::DomainNames {
        realm: kerberos.realm.clone(),
        netbios: kerberos.netbios.clone(),
    };
    let who = crate::proto::credssp::Principal::parse(name).canonical(Some(&names));
    if !who.domain.is_empty() && who.domain != kerberos.netbios {
        eprintln!(
            "error: {name} is not of the domain {} ({}): the configured KDCs only know its users",
            kerberos.netbios, kerberos.realm
        );
        return ExitCode::from(2);
    }
    let password = match if password_stdin {
        read_password_stdin()
    } else {
        rpassword::prompt_password(format!("Password for {}\\{}: ", kerberos.netbios, who.user))
            .map(SecretString::from)
            .map_err(UserCliError::Password)
    } {
        Ok(password) => password,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let outcome = runtime.block_on(crate::kerberos::probe::as_exchange(
        transport,
        &kerberos.realm,
        &who.user,
        secrecy::ExposeSecret::expose_secret(&password),
    ));
    println!("{}@{}: {outcome}", who.user, kerberos.realm);
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

/// A runtime on this thread, or `None` once the reason is printed.
fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

fn serve(path: &Path, log_format: LogFormat) -> ExitCode {
    init_tracing(log_format);
    crate::hardening::harden_process().log();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Accepting, signals and `/metrics`; the connections run on the
    // server's worker threads.
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(crate::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::check(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    // Also what `serve` loads next: catching these now saves a failed start.
    let mut problems = Vec::new();
    if let Some(users_file) = &config.auth.users_file {
        match UsersFile::load(users_file) {
            Ok(users) if users.is_empty() => problems.push(format!(
                "{}: no users; add one with `winrm-relay user add 'DOMAIN\\user' --users-file {}`",
                users_file.display(),
                users_file.display()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("users file: {e}")),
        }
    }
    if let Some((keytab, realm)) = config
        .kerberos
        .as_ref()
        .and_then(|k| Some((k.keytab.as_ref()?, k.realm.as_str())))
    {
        match crate::kerberos::keytab::load_keytab(keytab, realm) {
            Ok(loaded) => {
                for principal in &loaded.principals {
                    println!("keytab {}: {principal}", keytab.display());
                }
                for warning in &loaded.warnings {
                    eprintln!("warning: keytab {}: {warning}", keytab.display());
                }
            }
            Err(e) => problems.push(format!("keytab: {e}")),
        }
    }
    let (cert, key) = (&config.listen.tls_cert, &config.listen.tls_key);
    if cert.exists() || key.exists() {
        if let Err(e) = crate::certs::load(cert, key) {
            problems.push(format!("relay certificate: {e}"));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return ExitCode::FAILURE;
    }
    println!(
        "ok: {} targets, {} allow rules",
        config.targets.len(),
        config.policy.rule_count()
    );
    ExitCode::SUCCESS
}

#[derive(Debug, thiserror::Error)]
enum UserCliError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("cannot read password: {0}")]
    Password(std::io::Error),
    #[error("passwords do not match")]
    Mismatch,
    #[error("no user {0}")]
    NoSuchUser(String),
}

fn user(action: UserCommand) -> Result<(), UserCliError> {
    match action {
        UserCommand::Add {
            name,
            file,
            password_stdin,
        } => {
            let mut users = load_or_new(&file.users_file)?;
            // Validate the name before asking for a password.
            crate::config::users::parse_user_name(&name)?;
            let password = if password_stdin {
                read_password_stdin()?
            } else {
                prompt_password()?
            };
            let replaced = users.add(&name, &password)?;
            users.save(&file.users_file)?;
            let verb = if replaced { "updated" } else { "added" };
            eprintln!("{verb} {name} in {}", file.users_file.display());
        }
        UserCommand::Remove { name, file } => {
            let mut users = UsersFile::load(&file.users_file)?;
            if !users.remove(&name)? {
                return Err(UserCliError::NoSuchUser(name));
            }
            users.save(&file.users_file)?;
            eprintln!("removed {name} from {}", file.users_file.display());
        }
        UserCommand::List { file } => {
            for entry in UsersFile::load(&file.users_file)?.entries() {
                println!("{}", entry.name());
            }
        }
    }
    Ok(())
}

fn load_or_new(path: &Path) -> Result<UsersFile, UsersError> {
    match UsersFile::load(path) {
        Err(e) if e.is_not_found() => Ok(UsersFile::new()),
        other => other,
    }
}

/// One line from stdin, without its line ending.
fn read_password_stdin() -> Result<SecretString, UserCliError> {
    // Sized up front so the buffer is not reallocated (leaving copies) while reading.
    let mut line = Zeroizing::new(String::with_capacity(1024));
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(UserCliError::Password)?;
    Ok(secret_from_line(&line))
}

pub(crate) fn secret_from_line(line: &str) -> SecretString {
    let trimmed = line.strip_suffix('\n').unwrap_or(line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    SecretString::from(trimmed.to_string())
}

fn prompt_password() -> Result<SecretString, UserCliError> {
    let first = Zeroizing::new(rpassword::prompt_password("Password: ").map_err(UserCliError::Password)?);
    let second = Zeroizing::new(rpassword::prompt_password("Repeat password: ").map_err(UserCliError::Password)?);
    if *first != *second {
        return Err(UserCliError::Mismatch);
    }
    Ok(SecretString::from(first.as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use secrecy::ExposeSecret;

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
        assert_eq!(c.config, Path::new(DEFAULT_CONFIG));
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["winrm-relay", "serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["winrm-relay", "serve", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn audit_commands_parse() {
        let cli = Cli::try_parse_from(["winrm-relay", "audit", "verify", "a.1", "a", "--key", "k"]).unwrap();
        assert!(matches!(cli.command, Command::Audit { .. }));
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "verify"]).is_err());
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "show", "abc", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["winrm-relay", "audit", "list", "--since", "1h", "--user", "LAB\\a*"]).is_ok());
    }

    #[test]
    fn user_add_parses() {
        let cli = Cli::try_parse_from([
            "winrm-relay",
            "user",
            "add",
            "LAB\\alice",
            "--users-file",
            "u",
            "--password-stdin",
        ])
        .unwrap();
        let Command::User {
            action:
                UserCommand::Add {
                    name,
                    file,
                    password_stdin,
                },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), file.users_file.as_path(), password_stdin),
            ("LAB\\alice", Path::new("u"), true)
        );
        assert!(Cli::try_parse_from(["winrm-relay", "user", "list"]).is_err());
    }

    #[test]
    fn stdin_password_loses_only_the_line_ending() {
        assert_eq!(secret_from_line("p w\r\n").expose_secret(), "p w");
        assert_eq!(secret_from_line("pw").expose_secret(), "pw");
        assert_eq!(secret_from_line(" pw \n").expose_secret(), " pw ");
    }

    #[test]
    fn user_commands_edit_the_file() {
        let dir = crate::config::test_dir("cli-users");
        let path = dir.join("users");
        let mut users = load_or_new(&path).unwrap();
        users.add("LAB\\alice", &secret_from_line("pw\n")).unwrap();
        users.save(&path).unwrap();
        let r = user(UserCommand::Remove {
            name: "lab\\bob".into(),
            file: UsersFileArg {
                users_file: path.clone(),
            },
        });
        assert!(matches!(r, Err(UserCliError::NoSuchUser(_))));
        user(UserCommand::Remove {
            name: "alice@LAB".into(),
            file: UsersFileArg {
                users_file: path.clone(),
            },
        })
        .unwrap();
        assert!(UsersFile::load(&path).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
