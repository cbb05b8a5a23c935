//! What several front-ends share: the `--config` argument, reading a password, a
//! runtime on this thread. A leaf: the front-ends import it, it imports none of them.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

/// The config file commands read when `--config` is not given.
pub(super) const DEFAULT_CONFIG: &str = "config/relay.example.toml";

#[derive(Debug, Args)]
pub(super) struct ConfigArg {
    /// Config file (relative paths inside it are relative to the working directory).
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub(super) config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read password: {0}")]
pub(super) struct PasswordError(pub(super) std::io::Error);

/// `--password-stdin`: the first line of stdin, without its line ending.
pub(super) fn read_password_stdin() -> Result<SecretString, PasswordError> {
    crate::vault::read_password_line(&mut std::io::stdin().lock()).map_err(PasswordError)
}

/// A runtime on this thread, or `None` once the reason is printed.
pub(super) fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}
