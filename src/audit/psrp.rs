//! PowerShell sessions as the audit records them: what an allowed request and
//! its answer carry is fed to the session's [`SessionReader`], and the events
//! it returns become the audit's `pipeline`, `pipeline_end` and `undecodable`
//! lines (and, in [`super::transcript`], the transcript's records).

use serde_json::{json, Value};

use super::{AuditEvent, AuditKind};
use crate::proto::psrp::{self, Direction, Event, EventKind, Pipeline, SessionReader, StreamData};
use crate::proto::wsman::{self, RequestInfo, ResponseInfo};

/// Script text and summaries in audit lines stop here; the transcript has it all.
pub const AUDIT_TEXT_MAX: usize = 4096;

/// Feeds one request to a PowerShell shell and its answer to the reader; only
/// what the target accepted (`succeeded`) is read.
pub fn read(
    reader: &mut SessionReader,
    info: &RequestInfo,
    answer: &ResponseInfo,
    request: &[u8],
    response: &[u8],
    succeeded: bool,
) -> Vec<Event> {
    if !succeeded {
        return Vec::new();
    }
    let shell_id = info.shell_id.as_deref();
    match (info.action_name(), shell_id) {
        ("Create", _) => {
            if let Some(created) = answer.created_shell_id.as_deref() {
                reader.shell_created(created, answer.shell_compressed(info.compression_type.as_deref()));
            }
            Vec::new()
        }
        ("Command", Some(shell_id)) => {
            let Some(command_id) = info.command_id.as_deref().or(answer.command_id.as_deref()) else {
                return Vec::new();
            };
            reader.command(shell_id, command_id, info.command_line.as_deref().unwrap_or_default())
        }
        ("Send", Some(shell_id)) => streams(reader, shell_id, Direction::ToServer, request),
        ("Receive", Some(shell_id)) => streams(reader, shell_id, Direction::ToClient, response),
        ("Delete", Some(shell_id)) => {
            reader.shell_deleted(shell_id);
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn streams(reader: &mut SessionReader, shell_id: &str, direction: Direction, xml: &[u8]) -> Vec<Event> {
    let io = match wsman::shell_io(xml) {
        Ok(io) => io,
        Err(error) => {
            return vec![Event {
                shell_id: shell_id.to_string(),
                command_id: None,
                kind: EventKind::Undecodable {
                    stream: "envelope".into(),
                    reason: format!("the streams cannot be read: {error}"),
                },
            }]
        }
    };
    let data: Vec<StreamData<'_>> = io
        .streams
        .iter()
        .map(|s| StreamData {
            name: &s.name,
            command_id: s.command_id.as_deref(),
            data: &s.data,
        })
        .collect();
    reader.streams(shell_id, direction, &data)
}

/// A pipeline's commands as the audit writes them (a script's `name` is its
/// first 4 KiB, `script` is true), or with `script_text` as the transcript
/// does: `script` then holds the whole script text.
pub fn commands_json(pipeline: &Pipeline, script_text: bool) -> Value {
    pipeline
        .commands()
        .map(|c| {
            let parameters: Vec<Value> = c
                .parameters
                .iter()
                .map(|p| json!({"name": p.name, "value": p.value}))
                .collect();
            let mut out = json!({"script": c.is_script, "parameters": parameters});
            if c.is_script {
                out["script_sha256"] = c.script_sha256().into();
                out["script_bytes"] = c.name.len().into();
                out["name"] = psrp::truncate(c.name.clone(), AUDIT_TEXT_MAX).into();
                if script_text {
                    out["script"] = c.name.clone().into();
                }
            } else {
                out["name"] = c.name.clone().into();
            }
            out
        })
        .collect()
}

/// The audit lines of the reader's events: `base` carries the session, user,
/// source and target.
pub fn audit_events(base: &AuditEvent, events: &[Event]) -> Vec<AuditEvent> {
    events
        .iter()
        .filter_map(|e| {
            let mut line = AuditEvent {
                shell_id: Some(e.shell_id.clone()),
                command_id: e.command_id.clone(),
                ..base.clone()
            };
            match &e.kind {
                EventKind::Pipeline { pipeline, compressed } => {
                    line.event = AuditKind::Pipeline;
                    line.command = Some(psrp::truncate(pipeline.summary(), AUDIT_TEXT_MAX));
                    line.commands = Some(commands_json(pipeline, false));
                    line.secure_string = pipeline.secure_string.then_some(true);
                    line.compressed = compressed.then_some(true);
                }
                EventKind::End(end) => {
                    line.event = AuditKind::PipelineEnd;
                    line.state = Some(end.state.to_string());
                    line.reason.clone_from(&end.reason);
                    line.errors = Some(end.errors);
                    line.output_bytes = Some(end.output_bytes);
                    line.input_objects = (end.input_objects > 0).then_some(end.input_objects);
                    line.host_responses = (end.host_responses > 0).then_some(end.host_responses);
                    line.unseen = end.unseen.then_some(true);
                }
                EventKind::Undecodable { stream, reason } => {
                    line.event = AuditKind::Undecodable;
                    line.stream = Some(stream.clone());
                    line.reason = Some(reason.clone());
                }
                _ => return None,
            }
            Some(line)
        })
        .collect()
}
