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

/// Feeds one request to a PowerShell shell and its answer to the reader. A Send's
/// streams are read whatever the target answered: they left the relay, and one the
/// relay cannot decode is audited even when the target refuses it too. Of the rest,
/// only what the target accepted (`succeeded`) is read.
pub fn read(
    reader: &mut SessionReader,
    info: &RequestInfo,
    answer: &ResponseInfo,
    request: &[u8],
    response: &[u8],
    succeeded: bool,
) -> Vec<Event> {
    let shell_id = info.shell_id.as_deref();
    if let ("Send", Some(shell_id)) = (info.action_name(), shell_id) {
        return streams(reader, shell_id, Direction::ToServer, request);
    }
    if !succeeded {
        return Vec::new();
    }
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
            let name = match c.is_script {
                true => first_bytes(&c.name, AUDIT_TEXT_MAX).to_string(),
                false => c.name.clone(),
            };
            let mut out = json!({"name": name, "script": c.is_script, "parameters": parameters});
            if c.is_script {
                out["script_sha256"] = c.script_sha256().into();
                out["script_bytes"] = c.name.len().into();
                if script_text {
                    out["script"] = c.name.clone().into();
                }
            }
            out
        })
        .collect()
}

/// The longest start of `s` within `max` bytes, on a character boundary.
pub fn first_bytes(s: &str, max: usize) -> &str {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wsman::{parse_request, parse_response};

    const NS: &str = "xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
        xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
        xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
        xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"";
    const PS: &str = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell";

    /// A Windows client's Create (CompressionType in the header) and the target's
    /// answer (CompressionMode in the created Shell): the shell compresses.
    #[test]
    fn compression_is_read_from_the_create_and_its_response() {
        let create = format!(
            "<s:Envelope {NS}><s:Header><a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>\
             <w:ResourceURI>{PS}</w:ResourceURI>\
             <rsp:CompressionType s:mustUnderstand=\"true\">xpress</rsp:CompressionType></s:Header>\
             <s:Body><rsp:Shell ShellId=\"S1\"><rsp:InputStreams>stdin pr</rsp:InputStreams></rsp:Shell></s:Body></s:Envelope>"
        );
        let created = format!(
            "<s:Envelope {NS}><s:Header/><s:Body><x:ResourceCreated xmlns:x=\"http://schemas.xmlsoap.org/ws/2004/09/transfer\">\
             <a:ReferenceParameters><w:SelectorSet><w:Selector Name=\"ShellId\">S1</w:Selector></w:SelectorSet>\
             </a:ReferenceParameters></x:ResourceCreated><rsp:Shell><rsp:ShellId>S1</rsp:ShellId>\
             <rsp:CompressionMode>XpressCompression</rsp:CompressionMode></rsp:Shell></s:Body></s:Envelope>"
        );
        let info = parse_request(create.as_bytes()).unwrap();
        assert_eq!(info.compression_type.as_deref(), Some("xpress"));
        let answer = parse_response(created.as_bytes()).unwrap();
        assert_eq!(answer.compression_mode.as_deref(), Some("XpressCompression"));
        assert!(answer.shell_compressed(info.compression_type.as_deref()));
        let mut reader = SessionReader::default();
        assert!(read(&mut reader, &info, &answer, create.as_bytes(), created.as_bytes(), true).is_empty());
        assert!(reader.is_compressed("S1"));
        // A target that answers NoCompression wins over what the client asked.
        let refused = created.replace("XpressCompression", "NoCompression");
        assert!(!parse_response(refused.as_bytes())
            .unwrap()
            .shell_compressed(Some("xpress")));
        // Without an answer, what the client asked.
        assert!(ResponseInfo::default().shell_compressed(Some("XPRESS")));
        assert!(!ResponseInfo::default().shell_compressed(None));
    }

    /// pypsrp's recorded Command: its pipeline is read from the arguments, and becomes
    /// one `pipeline` audit line with the session's fields.
    #[test]
    fn a_recorded_command_becomes_a_pipeline_line() {
        let request = include_bytes!("../proto/wsman/testdata/pypsrp_psrp_command_request.xml");
        let info = parse_request(request).unwrap();
        let answer = ResponseInfo::default();
        let mut reader = SessionReader::default();
        let events = read(&mut reader, &info, &answer, request, b"", true);
        assert_eq!(events.len(), 1, "{events:?}");
        let base = AuditEvent {
            session: "s1".into(),
            user: Some("LAB\\alice".into()),
            target: Some("web01".into()),
            ..AuditEvent::default()
        };
        let lines = audit_events(&base, &events);
        let line = serde_json::to_value(&lines[0]).unwrap();
        assert_eq!(line["event"], "pipeline");
        assert_eq!(line["session"], "s1");
        assert_eq!(line["target"], "web01");
        assert_eq!(line["command_id"], "BDAD31FD-7B2C-467A-9B04-4924F3DB5C4F");
        assert!(line["command"]
            .as_str()
            .unwrap()
            .contains("Write-Debug \"Start Block\""));
        let first = &line["commands"][0];
        assert_eq!(first["script"], true);
        assert_eq!(first["script_sha256"].as_str().map(str::len), Some(64));
        assert!(first["script_bytes"].as_u64().unwrap() > 100);
        assert!(line.get("compressed").is_none() && line.get("secure_string").is_none());
        // A refused request (or one the target failed) is not read at all.
        let mut reader = SessionReader::default();
        assert!(read(&mut reader, &info, &answer, request, b"", false).is_empty());
    }

    #[test]
    fn long_scripts_are_cut_in_the_audit_and_whole_in_the_transcript() {
        let pipeline = Pipeline {
            statements: vec![psrp::Statement {
                commands: vec![psrp::Command {
                    name: "x".repeat(10_000),
                    is_script: true,
                    parameters: vec![psrp::Parameter {
                        name: None,
                        value: None,
                    }],
                }],
            }],
            secure_string: false,
        };
        let audit = commands_json(&pipeline, false);
        assert_eq!(audit[0]["name"].as_str().unwrap().len(), AUDIT_TEXT_MAX);
        assert_eq!(first_bytes("aé", 2), "a");
        assert_eq!(first_bytes("abc", 9), "abc");
        assert_eq!(audit[0]["script"], true);
        assert_eq!(audit[0]["script_bytes"], 10_000);
        assert_eq!(audit[0]["parameters"], json!([{"name": null, "value": null}]));
        let transcript = commands_json(&pipeline, true);
        assert_eq!(transcript[0]["script"].as_str().unwrap().len(), 10_000);
    }
}
