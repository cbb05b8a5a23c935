//! `winrm-relay user add|remove|list`: edit the users file (DOMAIN\user:<NT hash> lines).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::common::{read_password_stdin, PasswordError};
use crate::config::{UsersError, UsersFile};

#[derive(Debug, Args)]
pub(super) struct UsersFileArg {
    /// Users file; created with mode 0600 if missing.
    #[arg(long, value_name = "FILE")]
    users_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(super) enum UserCommand {
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

#[derive(Debug, thiserror::Error)]
enum UserCliError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("passwords do not match")]
    Mismatch,
    #[error("no user {0}")]
    NoSuchUser(String),
}

/// Exit 0 once the file is written (or listed), else 1 with the reason.
pub(super) fn run(action: UserCommand) -> ExitCode {
    match user(action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
                println!("{}", entry.principal());
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

fn prompt_password() -> Result<SecretString, UserCliError> {
    let first = Zeroizing::new(rpassword::prompt_password("Password: ").map_err(PasswordError)?);
    let second = Zeroizing::new(rpassword::prompt_password("Repeat password: ").map_err(PasswordError)?);
    if *first != *second {
        return Err(UserCliError::Mismatch);
    }
    Ok(SecretString::from(first.as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        action: UserCommand,
    }

    #[test]
    fn user_add_parses() {
        let cli = Cli::try_parse_from(["user", "add", "LAB\\alice", "--users-file", "u", "--password-stdin"]).unwrap();
        let UserCommand::Add {
            name,
            file,
            password_stdin,
        } = cli.action
        else {
            panic!()
        };
        assert_eq!(
            (name.as_str(), file.users_file.as_path(), password_stdin),
            ("LAB\\alice", Path::new("u"), true)
        );
        assert!(Cli::try_parse_from(["user", "list"]).is_err());
    }

    #[test]
    fn user_commands_edit_the_file() {
        let dir = crate::config::test_dir("cli-users");
        let path = dir.join("users");
        let mut users = load_or_new(&path).unwrap();
        users.add("LAB\\alice", &SecretString::from("pw")).unwrap();
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
