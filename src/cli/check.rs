//! `winrm-relay check`: validate a config file and what `serve` would load with it.

use std::process::ExitCode;

use super::common::{current_thread_runtime, ConfigArg};
use crate::config::{Config, UsersFile};
use crate::directory::Directory;

#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Also ask the services the config names: the [directory] has every group a rule names.
    #[arg(long)]
    pub(super) online: bool,
}

/// Exit 0 with a one-line summary, or 1 with every problem found, one per line.
pub(super) fn run(args: &CheckArgs) -> ExitCode {
    let path = args.config.config.as_path();
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
            Ok(users) => {
                let domain = config.kerberos.as_ref().map(|k| &k.domain);
                if let Some(Err(e)) = domain.map(|domain| users.check_in(users_file, domain)) {
                    problems.push(format!("users file: {e}"));
                }
            }
            Err(e) => problems.push(format!("users file: {e}")),
        }
    }
    if let Some((keytab, realm)) = config
        .kerberos
        .as_ref()
        .and_then(|k| Some((k.keytab.as_ref()?, k.domain.realm.as_str())))
    {
        match crate::kerberos::keytab::load_keytab(keytab, realm) {
            Ok(loaded) => {
                for principal in &loaded.principals {
                    println!("keytab {}: {principal}", keytab.display());
                }
                let constrained = config
                    .kerberos
                    .as_ref()
                    .is_some_and(|k| k.delegation == crate::config::Delegation::Constrained);
                match &loaded.account {
                    Some(account) => println!(
                        "keytab {}: relay account for constrained delegation: {}",
                        keytab.display(),
                        account.display()
                    ),
                    None if constrained => {
                        let error = crate::kerberos::keytab::KeytabFileError::NoAccount {
                            path: keytab.clone(),
                            realm: realm.to_string(),
                        };
                        problems.push(format!("keytab: {error}"));
                    }
                    None => {}
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
    if args.online {
        problems.extend(online_problems(&config));
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

/// `--online`: every group a rule names exists in the `[directory]`.
fn online_problems(config: &Config) -> Vec<String> {
    let groups = config.policy.groups();
    let (Some(directory), Some(kerberos)) = (&config.directory, &config.kerberos) else {
        return Vec::new();
    };
    if groups.is_empty() {
        return Vec::new();
    }
    let Some(runtime) = current_thread_runtime() else {
        return vec!["cannot start the runtime for the online checks".into()];
    };
    let found = runtime.block_on(Directory::default().missing_groups(directory, &kerberos.domain, &groups));
    match found {
        Ok(missing) => {
            for group in groups.iter().filter(|g| !missing.contains(g)) {
                println!("group {group}: found in the directory");
            }
            missing
                .iter()
                .map(|group| format!("group {group}: not found in the directory ({})", directory.describe()))
                .collect()
        }
        Err(error) => vec![format!("groups cannot be checked: {error}")],
    }
}
