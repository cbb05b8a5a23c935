//! What `winrm-relay audit show|list|verify` do: read transcripts and check the audit
//! chain. Each prints its result to stdout and returns a finding (a broken chain, an
//! altered transcript) or an error as [`ToolError`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{chain, transcript};
use crate::config::Config;

/// Where transcripts (and the audit log, to check them against) are.
#[derive(Debug, Clone)]
pub struct Place {
    /// Relay config naming `[audit] transcripts` and `path`.
    pub config: PathBuf,
    /// Transcript directory, instead of the config's.
    pub transcripts: Option<PathBuf>,
}

/// Why an `audit` subcommand failed: what it was run to find, or what kept it from looking.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}: no [audit] transcripts directory configured; pass --transcripts DIR")]
    NoTranscripts(String),
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no transcript of session {0} in {1}")]
    NoSuchSession(String, String),
    #[error("invalid --since {0:?}: expected 2024-01-02, 2024-01-02T03:04[:05] or a time ago like 30m, 12h, 7d")]
    Since(String),
    #[error("invalid --user pattern {0:?}: {1}")]
    User(String, glob::PatternError),
    #[error("{0}")]
    Key(#[from] super::AuditError),
    #[error("{0}")]
    Finding(String),
}

/// `audit verify`: `files`, oldest first, as one hash chain; the key and the transcript
/// directory given, else those of `config`.
pub fn verify(
    files: &[PathBuf],
    key: Option<PathBuf>,
    transcripts: Option<PathBuf>,
    config: Option<&Path>,
) -> Result<(), ToolError> {
    let audit = config.map(Config::load).transpose()?.map(|c| c.audit);
    let key = key.or_else(|| audit.as_ref().and_then(|a| a.hmac_key_file.clone()));
    let transcripts = transcripts.or_else(|| audit.as_ref().and_then(|a| a.transcripts.clone()));
    let key = key.as_deref().map(super::read_key).transpose()?;
    match chain::verify(files, key.as_deref().map(Vec::as_slice), transcripts.as_deref()) {
        Ok(verified) => {
            if let Some((seq, prev)) = verified.first.as_ref().filter(|(seq, _)| *seq > 1) {
                println!("note: the first line (seq {seq}) continues a chain from earlier files (prev {prev})");
            }
            let bound = if transcripts.is_some() {
                format!(", {} transcripts match their hash", verified.transcripts_checked)
            } else {
                String::new()
            };
            println!(
                "ok: {} lines in {} files, last seq {}, last hash {}{bound}",
                verified.lines,
                files.len(),
                verified.head.seq,
                verified.head.hash
            );
            Ok(())
        }
        Err(finding) => Err(ToolError::Finding(finding.to_string())),
    }
}

fn transcripts_dir(place: &Place) -> Result<(PathBuf, Option<PathBuf>), ToolError> {
    let config = match Config::load(&place.config) {
        Ok(config) => Some(config),
        // An explicit directory needs no config (a copy on an auditor's machine).
        Err(_) if place.transcripts.is_some() => None,
        Err(error) => return Err(error.into()),
    };
    let audit_log = config.as_ref().map(|c| c.audit.path.clone());
    match place
        .transcripts
        .clone()
        .or_else(|| config.and_then(|c| c.audit.transcripts))
    {
        Some(dir) => Ok((dir, audit_log)),
        None => Err(ToolError::NoTranscripts(place.config.display().to_string())),
    }
}

fn read_records(path: &Path) -> Result<(Vec<Value>, Vec<u8>), ToolError> {
    let data = std::fs::read(path).map_err(|source| ToolError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let records = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((records, data))
}

/// The transcripts in `dir` with their session ids, in file name (so start time) order.
fn transcript_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, ToolError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ToolError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let session = transcript::session_of(&name)?.to_string();
            Some((e.path(), session))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn find_transcript(dir: &Path, session: &str) -> Result<PathBuf, ToolError> {
    transcript_files(dir)?
        .into_iter()
        .find(|(_, s)| s.eq_ignore_ascii_case(session))
        .map(|(path, _)| path)
        .ok_or_else(|| ToolError::NoSuchSession(session.to_string(), dir.display().to_string()))
}

/// What the audit log says of a transcript: the hash its `session_end` bound.
enum Binding {
    Matches,
    Differs(String),
    NotFound,
    NotChecked,
}

fn binding(audit_log: Option<&Path>, session: &str, sha256: &str) -> Binding {
    let Some(log) = audit_log else {
        return Binding::NotChecked;
    };
    let Ok(data) = std::fs::read(log) else {
        return Binding::NotChecked;
    };
    let end = data
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find(|e| e["event"] == "session_end" && e["session"] == session);
    match end.as_ref().and_then(|e| e["transcript_sha256"].as_str()) {
        Some(bound) if bound == sha256 => Binding::Matches,
        Some(bound) => Binding::Differs(bound.to_string()),
        None => Binding::NotFound,
    }
}

/// A record's data as bytes: `text`, or `base64`.
fn data_of(record: &Value) -> Vec<u8> {
    if let Some(text) = record["text"].as_str() {
        return text.as_bytes().to_vec();
    }
    record["base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

fn clock(record: &Value) -> &str {
    let time = record["time"].as_str().unwrap_or_default();
    time.get(11..23).unwrap_or(time)
}

/// `audit show`: a session's timeline, checked against the audit log's hash of it.
pub fn show(session: &str, place: &Place, as_json: bool) -> Result<(), ToolError> {
    let (dir, audit_log) = transcripts_dir(place)?;
    let path = find_transcript(&dir, session)?;
    let (records, data) = read_records(&path)?;
    let sha256 = hex::encode(Sha256::digest(&data));
    let session = transcript::session_of(path.file_name().and_then(|n| n.to_str()).unwrap_or_default())
        .unwrap_or(session)
        .to_string();
    let bound = binding(audit_log.as_deref(), &session, &sha256);
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        writeln!(out, "{}", timeline_json(&records, &path, &sha256, &bound))
    } else {
        write_timeline(&mut out, &records, &path, &sha256, &bound)
    };
    if let Err(error) = written {
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(ToolError::Finding(format!("cannot print: {error}")));
        }
    }
    match bound {
        Binding::Differs(bound) => Err(ToolError::Finding(format!(
            "{} was altered: its SHA-256 is {sha256}, the audit log's session_end bound {bound}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn binding_text(bound: &Binding) -> String {
    match bound {
        Binding::Matches => "matches the audit log's session_end".into(),
        Binding::Differs(b) => format!("DIFFERS from the audit log's session_end ({b})"),
        Binding::NotFound => "not in the audit log yet (session still open, or the log was rotated)".into(),
        Binding::NotChecked => "not checked against the audit log (none configured, or not readable)".into(),
    }
}

fn write_timeline(
    out: &mut impl Write,
    records: &[Value],
    path: &Path,
    sha256: &str,
    bound: &Binding,
) -> std::io::Result<()> {
    let head = records.first().cloned().unwrap_or_default();
    let end = records.iter().rev().find(|r| r["type"] == "end");
    let targets: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "target")
        .filter_map(|r| r["target"].as_str())
        .collect();
    writeln!(out, "session    {}", head["session"].as_str().unwrap_or("?"))?;
    writeln!(out, "user       {}", head["user"].as_str().unwrap_or("?"))?;
    writeln!(out, "source     {}", head["source"].as_str().unwrap_or("?"))?;
    writeln!(out, "targets    {}", targets.join(", "))?;
    writeln!(out, "started    {}", head["time"].as_str().unwrap_or("?"))?;
    match end {
        Some(end) => writeln!(
            out,
            "ended      {} ({})",
            end["time"].as_str().unwrap_or("?"),
            end["reason"].as_str().unwrap_or("?")
        )?,
        None => writeln!(out, "ended      not yet (or the relay stopped without ending it)")?,
    }
    writeln!(
        out,
        "transcript {} (sha256 {sha256}: {})",
        path.display(),
        binding_text(bound)
    )?;
    writeln!(out)?;
    let mut at_line_start = true;
    let mut stream = "";
    for record in records {
        let kind = record["type"].as_str().unwrap_or_default();
        if matches!(kind, "stdout" | "stderr" | "stdin" | "input") {
            // Another stream starts on a line of its own.
            if kind != stream && !at_line_start {
                writeln!(out)?;
                at_line_start = true;
            }
            stream = kind;
            let data = data_of(record);
            let text = String::from_utf8_lossy(&data);
            let prefix = match kind {
                "stderr" => "stderr| ",
                "stdin" => "stdin| ",
                "input" => "input| ",
                _ => "",
            };
            for piece in text.split_inclusive('\n') {
                if at_line_start {
                    write!(out, "{prefix}")?;
                }
                write!(out, "{piece}")?;
                at_line_start = piece.ends_with('\n');
            }
            continue;
        }
        let line = match kind {
            "shell" => format!(
                "{} opened shell {} ({})",
                record["target"].as_str().unwrap_or("?"),
                record["shell_id"].as_str().unwrap_or("?"),
                record["shell"].as_str().unwrap_or("?")
            ),
            "command" => {
                let refused = record["refused"]
                    .as_str()
                    .map(|r| format!("  (refused: {r})"))
                    .unwrap_or_default();
                format!(
                    "{} $ {}{refused}",
                    record["target"].as_str().unwrap_or("?"),
                    record["command"].as_str().unwrap_or_default()
                )
            }
            "exit" => format!("exit code {}", record["exit_code"]),
            "state" => match record["reason"].as_str() {
                Some(reason) => format!("pipeline {} ({reason})", record["state"].as_str().unwrap_or("?")),
                None => format!("pipeline {}", record["state"].as_str().unwrap_or("?")),
            },
            "signal" => format!("signal {}", record["signal"].as_str().unwrap_or("?")),
            "host_response" => format!("host prompt {} answered", record["method"].as_str().unwrap_or("?")),
            "undecodable" => format!(
                "{} stream not readable: {}",
                record["stream"].as_str().unwrap_or("?"),
                record["reason"].as_str().unwrap_or("?")
            ),
            "close" => format!("closed shell {}", record["shell_id"].as_str().unwrap_or("?")),
            "cut" => format!("-- {} --", record["reason"].as_str().unwrap_or("output cut")),
            "end" => format!("session ended: {}", record["reason"].as_str().unwrap_or("?")),
            _ => continue,
        };
        stream = "";
        if !at_line_start {
            writeln!(out)?;
            at_line_start = true;
        }
        writeln!(out, "[{}] {line}", clock(record))?;
    }
    if !at_line_start {
        writeln!(out)?;
    }
    Ok(())
}

fn timeline_json(records: &[Value], path: &Path, sha256: &str, bound: &Binding) -> Value {
    let head = records.first().cloned().unwrap_or_default();
    let end = records.iter().rev().find(|r| r["type"] == "end").cloned();
    let targets: Vec<Value> = records
        .iter()
        .filter(|r| r["type"] == "target")
        .map(|r| r["target"].clone())
        .collect();
    let mut commands: Vec<Value> = Vec::new();
    for record in records {
        let kind = record["type"].as_str().unwrap_or_default();
        if kind == "command" {
            commands.push(json!({
                "time": record["time"], "target": record["target"], "shell_id": record["shell_id"],
                "command_id": record["command_id"], "command": record["command"], "refused": record["refused"],
                "stdout": "", "stderr": "", "stdin": "", "exit_code": null, "state": null, "signals": [],
            }));
            continue;
        }
        let Some(command) = commands
            .iter_mut()
            .rev()
            .find(|c| !record["command_id"].is_null() && c["command_id"] == record["command_id"])
        else {
            continue;
        };
        match kind {
            "stdout" | "stderr" | "stdin" => {
                let text = String::from_utf8_lossy(&data_of(record)).into_owned();
                let so_far = command[kind].as_str().unwrap_or_default().to_string();
                command[kind] = Value::String(so_far + &text);
            }
            "exit" => command["exit_code"] = record["exit_code"].clone(),
            "state" => command["state"] = record["state"].clone(),
            "signal" => {
                if let Some(signals) = command["signals"].as_array_mut() {
                    signals.push(record["signal"].clone());
                }
            }
            _ => {}
        }
    }
    let integrity = match bound {
        Binding::Matches => "matches",
        Binding::Differs(_) => "differs",
        Binding::NotFound => "not_in_audit_log",
        Binding::NotChecked => "not_checked",
    };
    json!({
        "session": head["session"], "user": head["user"], "source": head["source"],
        "started": head["time"], "ended": end.as_ref().map(|e| e["time"].clone()),
        "end_reason": end.as_ref().map(|e| e["reason"].clone()), "targets": targets,
        "transcript": path.display().to_string(), "sha256": sha256, "audit_log_binding": integrity,
        "output_cut": records.iter().any(|r| r["type"] == "cut"),
        "commands": commands, "records": records,
    })
}

/// `--since` as a time prefix comparable with the records' `time`.
fn since_threshold(since: &str) -> Result<String, ToolError> {
    let bad = || ToolError::Since(since.to_string());
    let units = [('s', 1u64), ('m', 60), ('h', 3600), ('d', 86_400)];
    if let Some((unit, secs)) = units.iter().find(|(u, _)| since.ends_with(*u)) {
        let count: u64 = since.strip_suffix(*unit).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let ago = time::OffsetDateTime::now_utc() - Duration::from_secs(count.saturating_mul(*secs).min(1 << 40));
        return ago.format(super::TIME_FORMAT).map_err(|_| bad());
    }
    let trimmed = since.trim_end_matches('Z');
    let shape = "dddd-dd-ddTdd:dd:dd";
    let fits = [10, 16, 19].contains(&trimmed.len())
        && trimmed.chars().zip(shape.chars()).all(|(c, s)| match s {
            'd' => c.is_ascii_digit(),
            other => c == other,
        });
    if !fits {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

/// `audit list`: the sessions in the transcript directory, oldest first; `user` is a
/// glob, `since` a date, a time or an age.
pub fn list(
    user: Option<&str>,
    target: Option<&str>,
    since: Option<&str>,
    place: &Place,
    as_json: bool,
) -> Result<(), ToolError> {
    let (dir, _) = transcripts_dir(place)?;
    let since = since.map(since_threshold).transpose()?;
    let user = user
        .map(|u| glob::Pattern::new(&u.to_ascii_lowercase()).map_err(|e| ToolError::User(u.to_string(), e)))
        .transpose()?;
    let mut sessions = Vec::new();
    for (path, _) in transcript_files(&dir)? {
        let Ok((records, _)) = read_records(&path) else {
            continue;
        };
        let head = records.first().cloned().unwrap_or_default();
        let started = head["time"].as_str().unwrap_or_default().to_string();
        let targets: Vec<String> = records
            .iter()
            .filter(|r| r["type"] == "target")
            .filter_map(|r| r["target"].as_str().map(str::to_string))
            .collect();
        if let Some(since) = &since {
            if started.get(..since.len()).unwrap_or(&started) < since.as_str() {
                continue;
            }
        }
        if let Some(pattern) = &user {
            if !pattern.matches(&head["user"].as_str().unwrap_or_default().to_ascii_lowercase()) {
                continue;
            }
        }
        if let Some(target) = target {
            if !targets.iter().any(|t| t.eq_ignore_ascii_case(target)) {
                continue;
            }
        }
        let end = records.iter().rev().find(|r| r["type"] == "end");
        sessions.push(json!({
            "session": head["session"], "user": head["user"], "source": head["source"], "started": started,
            "ended": end.map(|e| e["time"].clone()), "targets": targets,
            "commands": records.iter().filter(|r| r["type"] == "command").count(),
            "transcript": path.display().to_string(),
        }));
    }
    if as_json {
        println!("{}", Value::Array(sessions));
        return Ok(());
    }
    for s in &sessions {
        let targets: Vec<&str> = s["targets"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{}  {}  {}  from {}  to {}  {} commands{}",
            s["session"].as_str().unwrap_or("?"),
            s["started"].as_str().unwrap_or("?"),
            s["user"].as_str().unwrap_or("?"),
            s["source"].as_str().unwrap_or("?"),
            if targets.is_empty() {
                "-".to_string()
            } else {
                targets.join(",")
            },
            s["commands"],
            if s["ended"].is_null() { "  (open)" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_ages() {
        assert_eq!(since_threshold("2024-01-02").unwrap(), "2024-01-02");
        assert_eq!(since_threshold("2024-01-02T03:04").unwrap(), "2024-01-02T03:04");
        assert_eq!(since_threshold("2024-01-02T03:04:05Z").unwrap(), "2024-01-02T03:04:05");
        let hour_ago = since_threshold("1h").unwrap();
        assert_eq!(hour_ago.len(), 24);
        assert!(hour_ago < since_threshold("1m").unwrap());
        for bad in ["yesterday", "2024-1-2", "2024-01-02T03", "5w", "h"] {
            assert!(since_threshold(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_timeline_shows_commands_with_their_output_and_exit() {
        let records: Vec<Value> = [
            json!({"time": "2024-01-02T03:04:05.000Z", "type": "session", "session": "s1", "user": "LAB\\alice", "source": "10.0.0.1:5000"}),
            json!({"time": "2024-01-02T03:04:05.100Z", "type": "target", "target": "web01"}),
            json!({"time": "2024-01-02T03:04:05.200Z", "type": "command", "target": "web01", "command_id": "C1", "command": "echo hi"}),
            json!({"time": "2024-01-02T03:04:05.300Z", "type": "stdout", "command_id": "C1", "text": "hi"}),
            json!({"time": "2024-01-02T03:04:05.300Z", "type": "stderr", "command_id": "C1", "base64": "b29wcwo="}),
            json!({"time": "2024-01-02T03:04:05.400Z", "type": "exit", "command_id": "C1", "exit_code": 1}),
            json!({"time": "2024-01-02T03:04:06.000Z", "type": "end", "reason": "connection closed"}),
        ]
        .into();
        let mut out = Vec::new();
        write_timeline(&mut out, &records, Path::new("t.jsonl"), "abc", &Binding::Matches).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("user       LAB\\alice\n"), "{text}");
        assert!(text.contains("targets    web01\n"), "{text}");
        assert!(
            text.contains("[03:04:05.200] web01 $ echo hi\nhi\nstderr| oops\n[03:04:05.400] exit code 1\n"),
            "{text}"
        );
        assert!(text.contains("matches the audit log"), "{text}");
        let doc = timeline_json(&records, Path::new("t.jsonl"), "abc", &Binding::NotFound);
        assert_eq!(doc["commands"][0]["stdout"], "hi");
        assert_eq!(doc["commands"][0]["stderr"], "oops\n");
        assert_eq!(doc["commands"][0]["exit_code"], 1);
        assert_eq!(doc["audit_log_binding"], "not_in_audit_log");
    }
}
