//! `winrm-relay kerberos test`: domain mode (`[kerberos]`) checks.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use secrecy::SecretString;

use super::common::{current_thread_runtime, read_password_stdin, ConfigArg, PasswordError};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(super) enum KerberosCommand {
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

pub(super) fn run(command: KerberosCommand) -> ExitCode {
    match command {
        KerberosCommand::Test {
            name,
            config,
            password_stdin,
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
    let domain = &kerberos.domain;
    let who = crate::identity::Principal::parse(name).canonical(Some(domain));
    if !who.domain().is_empty() && who.domain() != domain.netbios {
        eprintln!(
            "error: {name} is not of the domain {} ({}): the configured KDCs only know its users",
            domain.netbios, domain.realm
        );
        return ExitCode::from(2);
    }
    let password = match if password_stdin {
        read_password_stdin()
    } else {
        rpassword::prompt_password(format!("Password for {}\\{}: ", domain.netbios, who.user()))
            .map(SecretString::from)
            .map_err(PasswordError)
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
        &domain.realm,
        who.user(),
        secrecy::ExposeSecret::expose_secret(&password),
    ));
    println!("{}@{}: {outcome}", who.user(), domain.realm);
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
