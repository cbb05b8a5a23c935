//! Audit events and the JSON-lines sink.
//!
//! Each event is one JSON object on its own line, starting with `time` (RFC 3339 UTC with
//! milliseconds); fields that are `None` are left out. Every event is written with a
//! single `write` on an append-mode file, so lines from concurrent sessions never
//! interleave and a crash loses at most the event being written. Emitting never fails the
//! caller: write errors are logged with `tracing`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub event: AuditKind,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
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
    /// For HTTPS targets: whether the target's certificate was verified, by
    /// a chain to a trusted CA or by its pinned fingerprint (the relay refuses
    /// to skip the check, so never `false` today).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verified: Option<bool>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: cannot open audit log: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
}

#[derive(Debug)]
enum Output {
    File(File),
    Memory(Arc<Mutex<Vec<u8>>>),
}

#[derive(Debug)]
pub struct AuditSink {
    label: String,
    out: Mutex<Output>,
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

impl AuditSink {
    /// Opens (creating with mode 0600) `path` for appending.
    pub fn open(path: &Path) -> Result<AuditSink, AuditError> {
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
        Ok(AuditSink {
            label: path.display().to_string(),
            out: Mutex::new(Output::File(file)),
        })
    }

    /// A sink that keeps lines in memory, for tests.
    pub fn in_memory() -> (AuditSink, AuditCapture) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = AuditSink {
            label: "memory".into(),
            out: Mutex::new(Output::Memory(buf.clone())),
        };
        (sink, AuditCapture(buf))
    }

    /// Appends one event as a JSON line. Never panics; failures are logged.
    pub fn emit(&self, event: &AuditEvent) {
        let now = OffsetDateTime::now_utc();
        let time = now.format(TIME_FORMAT).unwrap_or_else(|_| now.to_string());
        let mut line = match serde_json::to_vec(&Line { time: &time, event }) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize audit event");
                return;
            }
        };
        line.push(b'\n');
        // A panic elsewhere while holding the lock must not stop auditing.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut *out {
            // One write_all on an O_APPEND file: whole lines, in order.
            Output::File(f) => f.write_all(&line).and_then(|()| f.flush()),
            Output::Memory(buf) => {
                buf.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&line);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(audit_log = %self.label, error = %e, "cannot write audit event");
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
        assert_eq!(sorted, ["event", "exit_code", "session", "time", "user"]);
        assert_eq!(obj["event"], "session_start");
        assert_eq!(obj["user"], "LAB\\alice");
        let time = obj["time"].as_str().unwrap();
        // 2024-01-02T03:04:05.678Z
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
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
                "cleanup"
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

    #[test]
    fn file_sink_appends_with_mode_0600() {
        let dir = crate::config::test_dir("audit-file");
        let path = dir.join("audit.jsonl");
        for i in 0..2 {
            let sink = AuditSink::open(&path).unwrap();
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
        let e = AuditSink::open(&dir.join("missing/dir/audit.jsonl")).unwrap_err();
        assert!(e.to_string().contains("cannot open audit log"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
