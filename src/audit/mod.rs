//! Audit events, the chained JSON-lines sink, session transcripts and the live export.
//!
//! Each event is one JSON object on its own line, starting with `time` (UTC with
//! milliseconds, `2024-01-02T03:04:05.678Z`) and `seq`; fields that are `None` are left out;
//! `prev` and `hash` close it (see [`chain`]). Every event is written with a single `write`
//! on an append-mode file, so lines from concurrent sessions never interleave and a crash
//! loses at most the event being written. The chain goes on across restarts (the last
//! line is read back at open) and rotated files (a reopen keeps it; `<path>.head` keeps it
//! for a restart that finds the log moved away).
//!
//! A failed write (disk full, I/O error) makes the sink *failing*: logged once, and with
//! `[audit] on_failure = "refuse"` the server refuses requests while it lasts
//! ([`AuditSink::refuses_requests`]). The first write that succeeds again records the
//! gap as an `audit_resumed` event, so lost events are never silently missing.

pub mod chain;
pub mod psrp;
pub mod syslog;
pub mod tools;
pub mod transcript;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::{AuditConfig, AuditOnFailure};
use chain::{Head, Mac};

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
/// A shorter key would be guessable; `openssl rand -hex 32` makes a good one.
const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    SessionStart,
    AuthFailed,
    #[default]
    Request,
    Denied,
    SessionEnd,
    Cleanup,
    /// Written first once the log is writable again after failed writes; `reason` says
    /// how many events are missing and since when.
    AuditResumed,
    /// A PowerShell pipeline the relay put together in full (CREATE_PIPELINE).
    Pipeline,
    /// A PowerShell pipeline reached a final state.
    PipelineEnd,
    /// A PowerShell stream the relay could not read, and why.
    Undecodable,
}

impl AuditKind {
    /// The name written in `event`.
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::SessionStart => "session_start",
            AuditKind::AuthFailed => "auth_failed",
            AuditKind::Request => "request",
            AuditKind::Denied => "denied",
            AuditKind::SessionEnd => "session_end",
            AuditKind::Cleanup => "cleanup",
            AuditKind::AuditResumed => "audit_resumed",
            AuditKind::Pipeline => "pipeline",
            AuditKind::PipelineEnd => "pipeline_end",
            AuditKind::Undecodable => "undecodable",
        }
    }
}

/// How a caller authenticated (the audit's `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// NTLM inside CredSSP, against the users file.
    Ntlm,
    /// Kerberos inside CredSSP, a ticket for the relay's keytab.
    Kerberos,
    /// Basic over HTTPS, against the users file.
    Basic,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub event: AuditKind,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMethod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell_id: Option<String>,
    /// `pipeline`, `pipeline_end`, `undecodable`: the WS-Man CommandId (none for the pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A cmd shell's `powershell -EncodedCommand` script, decoded (its first 4 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded_script: Option<String>,
    /// `pipeline`: each command (see the README's audit section).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands: Option<serde_json::Value>,
    /// `pipeline`: some parameter is a SecureString.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_string: Option<bool>,
    /// `pipeline`: the shell's streams are Xpress-compressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<bool>,
    /// `pipeline_end`: Completed, Failed or Stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `pipeline_end`: error records, bytes of output text, input objects, host calls answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_responses: Option<u64>,
    /// `pipeline_end`: the relay never saw the pipeline's CREATE_PIPELINE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unseen: Option<bool>,
    /// `undecodable`: stdin, pr or stdout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `constrained` for a plain Kerberos logon: targets are reached by S4U2Proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<&'static str>,
    /// `session_end` of a constrained session: the S4U2Proxy tickets it held, each its
    /// service, client and times (never a key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tickets: Option<Vec<String>>,
    /// `session_start`: the caller's directory groups that some `[[allow]]` rule names, as
    /// found at logon (absent when no rule names a group or the directory could not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// A relayed request: the `[[allow]]` rule (0-based) that granted it and, for a group
    /// rule, the group through which it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Refusals before logon: how many refusals this line stands for (1 when
    /// written at once, more on a summary of a flood; see the README's limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For HTTPS targets: whether the target's certificate was verified, by
    /// a chain to a trusted CA or by its pinned fingerprint (the relay refuses
    /// to skip the check, so never `false` today).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verified: Option<bool>,
    /// `session_end`: the session's transcript file (in `[audit] transcripts`) and the
    /// SHA-256 of its contents, which binds the transcript into the chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: cannot open audit log: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: audit key file: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("{}: cannot create the transcript directory: {source}", path.display())]
    Transcripts { path: PathBuf, source: std::io::Error },
}

/// An event that did not reach the audit log; the sink is failing until a write succeeds.
#[derive(Debug, thiserror::Error)]
#[error("{label}: cannot write audit event: {source}")]
pub struct AuditWriteError {
    label: String,
    source: std::io::Error,
}

#[derive(Debug)]
enum Output {
    File(File),
    Memory(Arc<Mutex<Vec<u8>>>),
}

impl Output {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            // One write_all on an O_APPEND file: whole lines, in order.
            Output::File(f) => f.write_all(line).and_then(|()| f.flush()),
            Output::Memory(buf) => {
                buf.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(line);
                Ok(())
            }
        }
    }
}

/// Since when writes fail, and how many events were not written.
#[derive(Debug)]
struct Failure {
    since: String,
    error: String,
    lost: u64,
}

#[derive(Debug)]
struct State {
    out: Output,
    failure: Option<Failure>,
    /// The last line written: the next one chains to it.
    head: Head,
    /// `<path>.head`, rewritten after every line; `None` in memory or when it cannot be
    /// opened (logged).
    head_file: Option<File>,
    /// Set when `<path>.head` could not be written, so that it is logged once.
    head_file_failed: bool,
}

pub struct AuditSink {
    label: String,
    /// The configured path, reopened by [`AuditSink::reopen`]; `None` in memory.
    path: Option<PathBuf>,
    on_failure: AuditOnFailure,
    mac: Mac,
    state: Mutex<State>,
    /// Mirrors `state.failure.is_some()` so the per-request check takes no lock while healthy.
    failing: AtomicBool,
    /// Every line written also goes there (syslog), without waiting.
    export: Option<syslog::Exporter>,
    write_failures: Counter,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("label", &self.label)
            .field("keyed", &matches!(self.mac, Mac::Keyed(_)))
            .finish_non_exhaustive()
    }
}

/// Read side of [`AuditSink::in_memory`].
#[derive(Debug, Clone)]
pub struct AuditCapture(Arc<Mutex<Vec<u8>>>);

impl AuditCapture {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).lines().map(str::to_string).collect()
    }
}

/// Opens (creating with mode 0600) `path` for appending, warning when an existing file is
/// readable by others.
fn open_append(path: &Path) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Commands can carry secrets; an existing log keeps its mode, so say so.
        if let Ok(meta) = file.metadata() {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:04o}", mode & 0o7777),
                    "audit log is readable by group or others"
                );
            }
        }
    }
    Ok(file)
}

/// `<path>.head`, opened for rewriting in place (mode 0600); `None` (logged) when it
/// cannot be: the chain then goes on from the log's last line only.
fn open_head_file(path: &Path) -> Option<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot open the audit chain's head file");
            None
        }
    }
}

/// The HMAC key: the file's bytes without trailing whitespace, refused when others may
/// read it (whoever has the key can rewrite the log undetected) or when it is short.
pub fn read_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, AuditError> {
    let error = |message: String| AuditError::Key {
        path: path.to_path_buf(),
        message,
    };
    let data = Zeroizing::new(std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read: {e}")))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(error(format!(
                "mode {:04o} lets group or others read it: chmod 600",
                mode & 0o7777
            )));
        }
    }
    let key = Zeroizing::new(data.trim_ascii_end().to_vec());
    if key.len() < MIN_KEY_LEN {
        return Err(error(format!(
            "shorter than {MIN_KEY_LEN} bytes: make one with `openssl rand -hex 32`"
        )));
    }
    Ok(key)
}

/// A time as the audit writes times.
pub fn format_time(at: std::time::SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    at.format(TIME_FORMAT).unwrap_or_else(|_| at.to_string())
}

fn now() -> String {
    let now = OffsetDateTime::now_utc();
    now.format(TIME_FORMAT).unwrap_or_else(|_| now.to_string())
}

impl AuditSink {
    /// Opens (creating with mode 0600) the configured path for appending; the chain goes
    /// on from the file's last line, else from `<path>.head`, else it starts.
    pub fn open(config: &AuditConfig) -> Result<AuditSink, AuditError> {
        let mac = match &config.hmac_key_file {
            Some(path) => Mac::keyed(&read_key(path)?),
            None => Mac::Sha256,
        };
        let open_error = |source| AuditError::Open {
            path: config.path.clone(),
            source,
        };
        let (last, torn) = chain::last_head(&config.path).map_err(open_error)?;
        let head_path = chain::head_path(&config.path);
        let head = last
            .or_else(|| chain::read_head_record(&head_path))
            .unwrap_or_else(Head::genesis);
        let mut file = open_append(&config.path)?;
        if torn {
            // A write cut short (a crash, a full disk) stays a line of its own, which
            // verification reports, instead of spoiling the next one.
            file.write_all(b"\n").map_err(open_error)?;
            tracing::warn!(audit_log = %config.path.display(), "the audit log ends with an incomplete line");
        }
        let mut sink = AuditSink::with_output(
            config.path.display().to_string(),
            Some(config.path.clone()),
            config.on_failure,
            Output::File(file),
            mac,
        );
        let state = sink.state.get_mut().unwrap_or_else(|p| p.into_inner());
        state.head = head;
        // Only beside a regular file: a device (a test's /dev/full) has no directory of its own.
        if std::fs::metadata(&config.path).is_ok_and(|m| m.is_file()) {
            state.head_file = open_head_file(&head_path);
        }
        Ok(sink)
    }

    /// A sink that keeps lines in memory, for tests.
    pub fn in_memory() -> (AuditSink, AuditCapture) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = AuditSink::with_output(
            "memory".into(),
            None,
            AuditOnFailure::Refuse,
            Output::Memory(buf.clone()),
            Mac::Sha256,
        );
        (sink, AuditCapture(buf))
    }

    fn with_output(
        label: String,
        path: Option<PathBuf>,
        on_failure: AuditOnFailure,
        out: Output,
        mac: Mac,
    ) -> AuditSink {
        AuditSink {
            label,
            path,
            on_failure,
            mac,
            state: Mutex::new(State {
                out,
                failure: None,
                head: Head::genesis(),
                head_file: None,
                head_file_failed: false,
            }),
            failing: AtomicBool::new(false),
            export: None,
            write_failures: Counter::default(),
        }
    }

    /// Every line written from now on also goes to `exporter`.
    pub fn exporting_to(mut self, exporter: syslog::Exporter) -> AuditSink {
        self.export = Some(exporter);
        self
    }

    /// Events that could not be written, for the metrics.
    pub fn write_failures(&self) -> Counter {
        self.write_failures.clone()
    }

    /// The live export, if any, for the metrics.
    pub fn exporter(&self) -> Option<&syslog::Exporter> {
        self.export.as_ref()
    }

    /// At shutdown: lets the live export send what is queued, at most `deadline`.
    pub async fn flush_export(&self, deadline: std::time::Duration) {
        if let Some(export) = &self.export {
            export.flush(deadline).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock must not stop auditing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one event as a JSON line. A failure is logged (once, when the log starts
    /// failing) and makes the sink failing; see [`AuditSink::try_emit`] to act on it.
    pub fn emit(&self, event: &AuditEvent) {
        let _ = self.try_emit(event);
    }

    /// Appends one event as a JSON line, or says it could not. For events that must be
    /// written before the relay acts, e.g. a request before it is forwarded.
    pub fn try_emit(&self, event: &AuditEvent) -> Result<(), AuditWriteError> {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize audit event");
                return Err(self.write_error(std::io::Error::other(e)));
            }
        };
        let mut state = self.lock();
        // A gap in the trail is recorded before the events that follow it.
        let written = self
            .write_resumed(&mut state)
            .and_then(|()| self.write_chained(&mut state, event.event, &body));
        written.map_err(|e| self.fail(&mut state, e))
    }

    /// Seals `body` onto the chain and writes it; the chain moves on only once it is written.
    fn write_chained(&self, state: &mut State, kind: AuditKind, body: &[u8]) -> std::io::Result<()> {
        let time = now();
        let (line, head) = chain::seal(&state.head, &self.mac, &time, body);
        state.out.write_line(&line)?;
        state.head = head;
        if let Some(file) = &state.head_file {
            #[cfg(unix)]
            let written = std::os::unix::fs::FileExt::write_all_at(file, &chain::head_record(&state.head), 0);
            #[cfg(not(unix))]
            let written: std::io::Result<()> = Ok(());
            match written {
                Ok(()) => state.head_file_failed = false,
                Err(error) if !state.head_file_failed => {
                    state.head_file_failed = true;
                    tracing::warn!(%error, "cannot update the audit chain's head file");
                }
                Err(_) => {}
            }
        }
        if let Some(export) = &self.export {
            export.send(kind, &time, line.strip_suffix(b"\n").unwrap_or(&line));
        }
        Ok(())
    }

    /// Whether the last write failed (and no write succeeded since).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Call before forwarding a request: true when the request must be refused because
    /// the log cannot be written and `[audit] on_failure = "refuse"`. While failing, each
    /// call retries the log (writing the `audit_resumed` record), so the relay serves
    /// again as soon as the log is writable.
    pub fn refuses_requests(&self) -> bool {
        if self.on_failure == AuditOnFailure::Continue || !self.is_failing() {
            return false;
        }
        let mut state = self.lock();
        // A failed retry loses no event: nothing to count.
        self.write_resumed(&mut state).is_err()
    }

    /// Reopens the configured path (after logrotate moved the file), creating it with
    /// mode 0600; the chain goes on in the new file. If that fails the previous file
    /// stays in use. Logs the outcome either way.
    pub fn reopen(&self) -> Result<(), AuditError> {
        let Some(path) = &self.path else { return Ok(()) };
        match open_append(path) {
            Ok(file) => {
                let head_file = file
                    .metadata()
                    .is_ok_and(|m| m.is_file())
                    .then(|| open_head_file(&chain::head_path(path)))
                    .flatten();
                let mut state = self.lock();
                state.out = Output::File(file);
                state.head_file = head_file;
                drop(state);
                tracing::info!(audit_log = %self.label, "audit log reopened");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot reopen the audit log; still writing to the previous file");
                Err(error)
            }
        }
    }

    /// After failures, writes the `audit_resumed` record saying how many events were lost;
    /// its success ends the failing state.
    fn write_resumed(&self, state: &mut State) -> std::io::Result<()> {
        let Some(failure) = &state.failure else { return Ok(()) };
        let lost = failure.lost;
        let event = AuditEvent {
            event: AuditKind::AuditResumed,
            reason: Some(format!(
                "{lost} audit events could not be written since {} ({})",
                failure.since, failure.error
            )),
            ..AuditEvent::default()
        };
        let body = serde_json::to_vec(&event)?;
        self.write_chained(state, AuditKind::AuditResumed, &body)?;
        state.failure = None;
        self.failing.store(false, Ordering::Release);
        tracing::warn!(audit_log = %self.label, lost, "audit log is writable again");
        Ok(())
    }

    /// Records a failed write; logs only when the log starts failing, not per event.
    fn fail(&self, state: &mut State, error: std::io::Error) -> AuditWriteError {
        self.write_failures.inc();
        match &mut state.failure {
            Some(failure) => failure.lost += 1,
            None => {
                let consequence = match self.on_failure {
                    AuditOnFailure::Refuse => "refusing requests until it can (audit.on_failure = \"refuse\")",
                    AuditOnFailure::Continue => "requests go on unaudited (audit.on_failure = \"continue\")",
                };
                tracing::error!(audit_log = %self.label, %error, "audit log cannot be written: {consequence}");
                state.failure = Some(Failure {
                    since: now(),
                    error: error.to_string(),
                    lost: 1,
                });
                self.failing.store(true, Ordering::Release);
            }
        }
        self.write_error(error)
    }

    fn write_error(&self, source: std::io::Error) -> AuditWriteError {
        AuditWriteError {
            label: self.label.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn line_has_time_first_and_omits_none() {
        let (sink, capture) = AuditSink::in_memory();
        sink.emit(&AuditEvent {
            event: AuditKind::SessionStart,
            session: "s1".into(),
            user: Some("LAB\\alice".into()),
            exit_code: Some(-1),
            ..Default::default()
        });
        let lines = capture.lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("{\"time\":\""), "{}", lines[0]);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["event", "exit_code", "hash", "prev", "seq", "session", "time", "user"]
        );
        assert_eq!(obj["event"], "session_start");
        assert_eq!(obj["user"], "LAB\\alice");
        let time = obj["time"].as_str().unwrap();
        // 2024-01-02T03:04:05.678Z
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    }

    #[test]
    fn auth_methods_are_named_as_documented() {
        let (sink, capture) = AuditSink::in_memory();
        for auth in [AuthMethod::Ntlm, AuthMethod::Kerberos, AuthMethod::Basic] {
            sink.emit(&AuditEvent {
                auth: Some(auth),
                ..Default::default()
            });
        }
        let names: Vec<String> = capture
            .lines()
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["auth"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["ntlm", "kerberos", "basic"]);
    }

    #[test]
    fn kinds_are_snake_case() {
        let names: Vec<Value> = [
            AuditKind::SessionStart,
            AuditKind::AuthFailed,
            AuditKind::Request,
            AuditKind::Denied,
            AuditKind::SessionEnd,
            AuditKind::Cleanup,
            AuditKind::AuditResumed,
        ]
        .iter()
        .map(|k| serde_json::to_value(k).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                "session_start",
                "auth_failed",
                "request",
                "denied",
                "session_end",
                "cleanup",
                "audit_resumed"
            ]
        );
    }

    #[test]
    fn newlines_in_fields_stay_on_one_line() {
        let (sink, capture) = AuditSink::in_memory();
        sink.emit(&AuditEvent {
            command: Some("whoami\n{\"event\":\"forged\"}".into()),
            ..Default::default()
        });
        assert_eq!(capture.lines().len(), 1);
    }

    fn config(path: &Path, on_failure: AuditOnFailure) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            on_failure,
            hmac_key_file: None,
            transcripts: None,
            transcript_max_bytes: crate::config::DEFAULT_TRANSCRIPT_MAX_BYTES,
            record_host_responses: false,
            syslog: None,
        }
    }

    fn event(session: &str) -> AuditEvent {
        AuditEvent {
            session: session.into(),
            ..Default::default()
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Collects what the sink logs while `f` runs.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn write_failures_make_the_sink_failing_and_are_logged_once() {
        // /dev/full opens in append mode and fails every write with ENOSPC, like a full disk.
        let full = Path::new("/dev/full");
        let refuse = AuditSink::open(&config(full, AuditOnFailure::Refuse)).unwrap();
        assert!(!refuse.is_failing() && !refuse.refuses_requests());
        let logs = logs_of(|| {
            let e = refuse.try_emit(&event("s1")).unwrap_err();
            assert!(
                e.to_string().starts_with("/dev/full: cannot write audit event: "),
                "{e}"
            );
            refuse.emit(&event("s2"));
            refuse.emit(&event("s3"));
            assert!(refuse.refuses_requests());
        });
        assert!(refuse.is_failing() && refuse.refuses_requests());
        assert_eq!(logs.matches("audit log cannot be written").count(), 1, "{logs}");
        assert!(logs.contains("refusing requests until it can"), "{logs}");

        let go_on = AuditSink::open(&config(full, AuditOnFailure::Continue)).unwrap();
        let logs = logs_of(|| go_on.emit(&event("s1")));
        assert!(go_on.is_failing());
        assert!(!go_on.refuses_requests(), "on_failure = continue must not refuse");
        assert!(logs.contains("requests go on unaudited"), "{logs}");
    }

    #[cfg(unix)]
    #[test]
    fn sink_recovers_and_records_the_gap() {
        let dir = crate::config::test_dir("audit-recover");
        // The configured path first names a device that fails writes, then a writable file.
        let path = dir.join("audit.jsonl");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("lost-1"));
        sink.emit(&event("lost-2"));
        assert!(sink.refuses_requests());
        std::fs::remove_file(&path).unwrap();
        sink.reopen().unwrap();
        // Reopening alone is not proof: the first write that succeeds is.
        assert!(sink.is_failing());
        let logs = logs_of(|| assert!(!sink.refuses_requests()));
        assert!(!sink.is_failing());
        assert!(
            logs.contains("audit log is writable again") && logs.contains("lost=2"),
            "{logs}"
        );
        sink.try_emit(&event("kept")).unwrap();
        let written = lines(&path);
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[0]["event"], "audit_resumed");
        let reason = written[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("2 audit events could not be written since "),
            "{reason}"
        );
        assert_eq!(written[1]["session"], "kept");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn continue_mode_recovers_on_the_next_event() {
        let dir = crate::config::test_dir("audit-continue");
        let path = dir.join("audit.jsonl");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Continue)).unwrap();
        sink.emit(&event("lost"));
        std::fs::remove_file(&path).unwrap();
        sink.reopen().unwrap();
        sink.emit(&event("kept"));
        assert!(!sink.is_failing());
        let kinds: Vec<String> = lines(&path).iter().map(|l| l["event"].to_string()).collect();
        assert_eq!(kinds, ["\"audit_resumed\"", "\"request\""]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = crate::config::test_dir("audit-rotate");
        let path = dir.join("audit.jsonl");
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("before"));
        // logrotate renames the file; the open handle still writes to it until reopened.
        let rotated = dir.join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.emit(&event("still-old"));
        sink.reopen().unwrap();
        sink.emit(&event("after"));
        let sessions = |p: &Path| -> Vec<String> { lines(p).iter().map(|l| l["session"].to_string()).collect() };
        assert_eq!(sessions(&rotated), ["\"before\"", "\"still-old\""]);
        assert_eq!(sessions(&path), ["\"after\""]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failed_reopen_keeps_the_previous_file() {
        let dir = crate::config::test_dir("audit-reopen-fails");
        let logs_dir = dir.join("logs");
        std::fs::create_dir(&logs_dir).unwrap();
        let path = logs_dir.join("audit.jsonl");
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        // The directory moves away: the configured path cannot be created any more.
        let moved = dir.join("moved");
        std::fs::rename(&logs_dir, &moved).unwrap();
        let e = sink.reopen().unwrap_err();
        assert!(e.to_string().contains("cannot open audit log"), "{e}");
        sink.try_emit(&event("kept")).unwrap();
        assert_eq!(lines(&moved.join("audit.jsonl"))[0]["session"], "kept");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_sink_appends_with_mode_0600() {
        let dir = crate::config::test_dir("audit-file");
        let path = dir.join("audit.jsonl");
        for i in 0..2 {
            let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
            sink.emit(&AuditEvent {
                session: format!("s{i}"),
                status: Some(200),
                ..Default::default()
            });
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let sessions: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["session"].to_string())
            .collect();
        assert_eq!(sessions, ["\"s0\"", "\"s1\""]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = AuditSink::open(&config(&dir.join("missing/dir/audit.jsonl"), AuditOnFailure::Refuse)).unwrap_err();
        assert!(e.to_string().contains("cannot open audit log"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_chain_goes_on_across_restarts_rotation_and_a_log_moved_away() {
        let dir = crate::config::test_dir("audit-chain");
        let path = dir.join("audit.jsonl");
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("one"));
        drop(sink);
        // A restart reads the last line back.
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("two"));
        // logrotate moves the file, SIGHUP reopens: the new file's first line names the old last hash.
        let rotated = dir.join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.reopen().unwrap();
        sink.emit(&event("three"));
        drop(sink);
        // Moved away while the relay was down: the head file carries the chain on.
        let older = dir.join("audit.jsonl.0");
        std::fs::rename(&path, &older).unwrap();
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("four"));
        let seqs: Vec<u64> = [&rotated, &older, &path]
            .iter()
            .flat_map(|p| lines(p))
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let verified = chain::verify(&[rotated, older, path], None, None).unwrap();
        assert_eq!(verified.lines, 4);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_stays_on_its_own_and_the_chain_goes_on() {
        let dir = crate::config::test_dir("audit-torn");
        let path = dir.join("audit.jsonl");
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("one"));
        drop(sink);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":\"2024")
            .unwrap();
        let sink = AuditSink::open(&config(&path, AuditOnFailure::Refuse)).unwrap();
        sink.emit(&event("two"));
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!((last["seq"].as_u64(), last["session"].as_str()), (Some(2), Some("two")));
        let finding = chain::verify(&[path], None, None).unwrap_err();
        assert_eq!(finding.line, 2, "{finding}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn keyed_sinks_write_hmac_lines_and_refuse_weak_key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::config::test_dir("audit-key");
        let key = dir.join("audit.key");
        std::fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.join("audit.jsonl");
        let mut keyed = config(&path, AuditOnFailure::Refuse);
        keyed.hmac_key_file = Some(key.clone());
        let e = AuditSink::open(&keyed).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sink = AuditSink::open(&keyed).unwrap();
        sink.emit(&event("one"));
        let line = &lines(&path)[0];
        assert!(line["hash"].as_str().unwrap().starts_with("hmac-sha256:"), "{line}");
        assert!(!format!("{sink:?}").contains("0011"), "the key must not be printed");
        let bytes = read_key(&key).unwrap();
        assert!(chain::verify(std::slice::from_ref(&path), Some(&bytes), None).is_ok());
        std::fs::write(&key, "short").unwrap();
        assert!(AuditSink::open(&keyed)
            .unwrap_err()
            .to_string()
            .contains("shorter than 16"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn failed_writes_are_counted_and_do_not_advance_the_chain() {
        let (sink, capture) = AuditSink::in_memory();
        sink.emit(&event("one"));
        let full = AuditSink::open(&config(Path::new("/dev/full"), AuditOnFailure::Continue)).unwrap();
        full.emit(&event("lost"));
        full.emit(&event("lost"));
        assert_eq!(full.write_failures().get(), 2);
        assert_eq!(full.lock().head, Head::genesis());
        assert_eq!(capture.lines().len(), 1);
    }
}
