//! `winrm-relay serve`: run the relay until a signal stops it.

use std::path::Path;
use std::process::ExitCode;

use super::common::current_thread_runtime;
use crate::config::Config;

/// Exit 0 after a clean stop, 1 when the relay fails, 2 when the config cannot be loaded.
pub(super) fn run(path: &Path) -> ExitCode {
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
