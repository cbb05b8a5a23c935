//! `winrm-relay audit show|list|verify`: read transcripts and check the audit chain
//! ([`crate::audit::tools`]).
//!
//! Exit codes: 0 fine, 1 a finding (a broken chain, an altered transcript) or an error,
//! 2 usage errors (as clap reports them).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::common::DEFAULT_CONFIG;
use crate::audit::tools::{self, Place};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// A session's timeline from its transcript: who, from where, to which targets, each
    /// command with its output and exit code; checked against the audit log's hash of it.
    Show {
        /// Session id, as in the audit log's `session`.
        session: String,
        #[command(flatten)]
        place: PlaceArgs,
        /// Print the timeline as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Find sessions in the transcript directory, oldest first.
    List {
        /// Only this user (DOMAIN\user, case-insensitive; globs like 'LAB\ops-*').
        #[arg(long)]
        user: Option<String>,
        /// Only sessions that used this target.
        #[arg(long)]
        target: Option<String>,
        /// Only sessions that started at or after this time: 2024-01-02, 2024-01-02T03:04[:05]
        /// (UTC), or a time ago such as 30m, 12h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        place: PlaceArgs,
        /// Print the sessions as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Check audit log files, oldest first, as one hash chain: exit 0 when intact, else 1
    /// naming the first bad line and what is wrong with it (edited, removed, reordered).
    Verify {
        /// Audit log files in order, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The relay's `[audit] hmac_key_file`, for keyed logs.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Also check each transcript bound by a `session_end` line against its hash.
        #[arg(long, value_name = "DIR")]
        transcripts: Option<PathBuf>,
        /// Take the key file and the transcript directory from this relay config.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Where transcripts (and the audit log, to check them against) are.
#[derive(Debug, Args)]
pub(super) struct PlaceArgs {
    /// Relay config naming `[audit] transcripts` and `path`.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Transcript directory, instead of the config's.
    #[arg(long, value_name = "DIR")]
    transcripts: Option<PathBuf>,
}

impl From<PlaceArgs> for Place {
    fn from(place: PlaceArgs) -> Place {
        Place {
            config: place.config,
            transcripts: place.transcripts,
        }
    }
}

pub(super) fn run(command: AuditCommand) -> ExitCode {
    let result = match command {
        AuditCommand::Show { session, place, json } => tools::show(&session, &place.into(), json),
        AuditCommand::List {
            user,
            target,
            since,
            place,
            json,
        } => tools::list(
            user.as_deref(),
            target.as_deref(),
            since.as_deref(),
            &place.into(),
            json,
        ),
        AuditCommand::Verify {
            files,
            key,
            transcripts,
            config,
        } => tools::verify(&files, key, transcripts, config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
