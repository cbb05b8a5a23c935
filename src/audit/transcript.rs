//! Session transcripts: per session, one JSON-lines file (mode 0600) in `[audit]
//! transcripts` with, in order and time-stamped, who connected from where, each target,
//! shell and command line, what the commands printed and were sent, exit codes, signals
//! and the end. What the old way did with `Start-Transcript` on a jump host, out of the
//! admin's reach.
//!
//! Every record has `time` and `type`: `session` (first), `target`, `shell`, `command`,
//! `stdout`, `stderr`, `stdin` (`text`, or `base64` for bytes that are not UTF-8),
//! `exit`, `state` (a PowerShell pipeline's), `signal`, `close`, `cut` and `end` (last).
//! PowerShell sessions are read by the session's PSRP reader ([`super::psrp`]): each
//! `pipeline` (its commands, scripts whole), then its output (strings and other objects
//! as `stdout` text, their ToString), error records as `stderr` text, `state`s, `input`
//! (pipeline input objects), `host_response` (a prompt answered; its `text` only with
//! `[audit] record_host_responses`), `undecodable` streams and `pipeline_end`.
//!
//! Output beyond `transcript_max_bytes` is not recorded: a `cut` record says so, and
//! commands, exits and signals go on being recorded. The file's SHA-256, computed as it
//! is written, goes into the audit log's `session_end`, which binds it into the chain.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::proto::psrp::{Event, EventKind};
use crate::proto::wsman::{self, RequestInfo, ResponseInfo, ShellKind, StreamChunk};

/// Where transcripts go and how much output each keeps, as the relay started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub max_output: u64,
    /// Record what a host prompt was answered (`[audit] record_host_responses`).
    pub record_host_responses: bool,
}

/// A transcript's file name: when the session began, then its id, so that a directory
/// listing is in time order.
fn file_name(started: &str, session: &str) -> String {
    let stamp: String = started.chars().filter(|c| c.is_ascii_alphanumeric()).take(15).collect();
    format!("{stamp}Z-{session}.jsonl")
}

/// The session id in a transcript's file name.
pub fn session_of(name: &str) -> Option<&str> {
    name.strip_suffix(".jsonl")?
        .split_once("Z-")
        .map(|(_, session)| session)
}

/// One request and its answer, as the pipeline saw them.
pub struct Exchange<'a> {
    pub info: &'a RequestInfo,
    /// The command line as audited (a PowerShell pipeline decoded).
    pub command: Option<&'a str>,
    pub target: &'a str,
    pub request: &'a [u8],
    pub succeeded: bool,
    pub response: &'a [u8],
    pub answer: &'a ResponseInfo,
    /// What the session's PSRP reader made of this exchange.
    pub psrp: &'a [Event],
}

struct OpenShell {
    powershell: bool,
}

/// An open transcript; see the module documentation.
pub struct Transcript {
    name: String,
    path: PathBuf,
    /// `None` once a write failed: the file is incomplete and its hash would not bind it.
    file: Option<File>,
    hasher: Sha256,
    output_written: u64,
    max_output: u64,
    cut_bytes: u64,
    record_host_responses: bool,
    targets: Vec<String>,
    shells: HashMap<String, OpenShell>,
}

/// What [`Transcript::finish`] hands to the `session_end` audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub name: String,
    /// `None` when the transcript could not be written in full.
    pub sha256: Option<String>,
}

impl Transcript {
    /// Creates `<dir>/<start>Z-<session>.jsonl` (mode 0600, never an existing file) and
    /// writes its `session` record.
    pub fn create(settings: &Settings, session: &str, user: &str, source: &str) -> std::io::Result<Transcript> {
        let started = super::now();
        let name = file_name(&started, session);
        let path = settings.dir.join(&name);
        let max_output = settings.max_output;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path)?;
        let mut transcript = Transcript {
            name,
            path,
            file: Some(file),
            hasher: Sha256::new(),
            output_written: 0,
            max_output,
            cut_bytes: 0,
            record_host_responses: settings.record_host_responses,
            targets: Vec::new(),
            shells: HashMap::new(),
        };
        transcript.write_at(
            &started,
            "session",
            json!({"session": session, "user": user, "source": source}),
        );
        Ok(transcript)
    }

    fn write(&mut self, kind: &str, fields: Value) {
        self.write_at(&super::now(), kind, fields);
    }

    fn write_at(&mut self, time: &str, kind: &str, fields: Value) {
        let Some(file) = self.file.as_mut() else { return };
        let mut record = Map::new();
        record.insert("time".into(), time.into());
        record.insert("type".into(), kind.into());
        if let Value::Object(fields) = fields {
            record.extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        match file.write_all(&line) {
            Ok(()) => self.hasher.update(&line),
            Err(error) => {
                tracing::error!(transcript = %self.path.display(), %error, "cannot write the session transcript: it stops here");
                self.file = None;
            }
        }
    }

    /// Records what one relayed request did.
    pub fn record(&mut self, exchange: &Exchange<'_>) {
        let info = exchange.info;
        if !self.targets.iter().any(|t| t.eq_ignore_ascii_case(exchange.target)) {
            self.targets.push(exchange.target.to_string());
            self.write("target", json!({"target": exchange.target}));
        }
        let shell_id = info.shell_id.as_deref();
        match info.action_name() {
            "Create" if exchange.succeeded => {
                let Some(created) = exchange.answer.created_shell_id.as_deref() else {
                    return;
                };
                let uri = info.resource_uri.as_deref().unwrap_or_default();
                let (label, powershell) = match wsman::shell_kind(uri) {
                    ShellKind::Cmd => ("cmd".to_string(), false),
                    ShellKind::PowerShell { configuration } => (format!("powershell/{configuration}"), true),
                    ShellKind::Other(uri) => (uri, false),
                };
                self.shells.insert(created.to_string(), OpenShell { powershell });
                let compressed =
                    (powershell && exchange.answer.shell_compressed(info.compression_type.as_deref())).then_some(true);
                self.write(
                    "shell",
                    json!({"target": exchange.target, "shell_id": created, "shell": label, "compressed": compressed}),
                );
            }
            "Command" => {
                let mut fields = json!({
                    "target": exchange.target,
                    "shell_id": shell_id,
                    "command_id": exchange.answer.command_id,
                    "command": exchange.command.unwrap_or_default(),
                });
                if !exchange.succeeded {
                    fields["refused"] = exchange
                        .answer
                        .fault
                        .as_ref()
                        .and_then(|f| f.reason.clone().or(f.subcode.clone()))
                        .unwrap_or_else(|| "the target refused it".into())
                        .into();
                }
                self.write("command", fields);
                self.psrp(exchange.psrp);
            }
            "Send" if exchange.succeeded => {
                // PowerShell's input is PSRP fragments (pipeline input, host replies), not text.
                if self.is_powershell(shell_id) || !exchange.psrp.is_empty() {
                    self.psrp(exchange.psrp);
                    return;
                }
                let Ok(io) = wsman::shell_io(exchange.request) else {
                    return;
                };
                for chunk in io.streams.iter().filter(|c| !c.data.is_empty()) {
                    self.output("stdin", shell_id, chunk);
                }
            }
            "Receive" if exchange.succeeded => {
                if self.is_powershell(shell_id) || !exchange.psrp.is_empty() {
                    self.psrp(exchange.psrp);
                } else {
                    let Ok(io) = wsman::shell_io(exchange.response) else {
                        return;
                    };
                    for chunk in io.streams.iter().filter(|c| !c.data.is_empty()) {
                        let kind = if chunk.name.eq_ignore_ascii_case("stderr") {
                            "stderr"
                        } else {
                            "stdout"
                        };
                        self.output(kind, shell_id, chunk);
                    }
                }
                let answer = exchange.answer;
                if answer.command_done {
                    if let Some(code) = answer.exit_code {
                        self.write(
                            "exit",
                            json!({"shell_id": shell_id, "command_id": answer.command_id, "exit_code": code}),
                        );
                    }
                }
            }
            "Signal" => {
                let signal = wsman::shell_io(exchange.request).ok().and_then(|io| io.signal);
                let name = signal.as_deref().map(|code| code.rsplit('/').next().unwrap_or(code));
                self.write(
                    "signal",
                    json!({"shell_id": shell_id, "command_id": info.command_id, "signal": name}),
                );
            }
            "Delete" if exchange.succeeded => {
                if let Some(id) = shell_id {
                    if self.shells.remove(id).is_some() {
                        self.write("close", json!({"shell_id": id}));
                    }
                }
            }
            _ => {}
        }
    }

    fn is_powershell(&self, shell_id: Option<&str>) -> bool {
        shell_id
            .and_then(|id| self.shells.get(id))
            .is_some_and(|s| s.powershell)
    }

    /// What the PSRP reader read: each pipeline, then its output, errors, states,
    /// input and end, in order.
    fn psrp(&mut self, events: &[Event]) {
        for event in events {
            let shell_id = event.shell_id.as_str();
            let command_id = event.command_id.as_deref();
            let ids = json!({"shell_id": shell_id, "command_id": command_id});
            let with = |mut fields: Value, more: Value| {
                if let (Value::Object(f), Value::Object(m)) = (&mut fields, more) {
                    f.extend(m);
                }
                fields
            };
            match &event.kind {
                EventKind::Pipeline { pipeline, .. } => {
                    let commands = super::psrp::commands_json(pipeline, true);
                    let secure = pipeline.secure_string.then_some(true);
                    self.write(
                        "pipeline",
                        with(ids, json!({"commands": commands, "secure_string": secure})),
                    );
                }
                EventKind::Unseen => {
                    self.write("pipeline", with(ids, json!({"unseen": true})));
                }
                EventKind::Output(text) => self.text_output("stdout", shell_id, command_id, text),
                EventKind::Error(text) => self.text_output("stderr", shell_id, command_id, text),
                EventKind::Input(text) => self.text_output("input", shell_id, command_id, text),
                EventKind::State { state, reason } => {
                    self.write("state", with(ids, json!({"state": state, "reason": reason})));
                }
                EventKind::HostResponse { method, text } => {
                    let text = self.record_host_responses.then_some(text);
                    self.write(
                        "host_response",
                        with(ids, json!({"method": method, "answered": true, "text": text})),
                    );
                }
                EventKind::Undecodable { stream, reason } => {
                    self.write("undecodable", with(ids, json!({"stream": stream, "reason": reason})));
                }
                EventKind::End(end) => {
                    self.write(
                        "pipeline_end",
                        with(
                            ids,
                            json!({
                                "state": end.state,
                                "reason": end.reason,
                                "errors": end.errors,
                                "output_bytes": end.output_bytes,
                                "input_objects": (end.input_objects > 0).then_some(end.input_objects),
                                "host_responses": (end.host_responses > 0).then_some(end.host_responses),
                                "unseen": end.unseen.then_some(true),
                            }),
                        ),
                    );
                }
            }
        }
    }

    fn text_output(&mut self, kind: &str, shell_id: &str, command_id: Option<&str>, text: &str) {
        let mut text = text.to_string();
        text.push('\n');
        let chunk = StreamChunk {
            name: kind.to_string(),
            command_id: command_id.map(str::to_string),
            end: false,
            data: text.into_bytes(),
        };
        self.output(kind, Some(shell_id), &chunk);
    }

    /// Output (or input) bytes, within the cap: past it, a `cut` record once, then nothing.
    fn output(&mut self, kind: &str, shell_id: Option<&str>, chunk: &StreamChunk) {
        let room = self.max_output.saturating_sub(self.output_written);
        if room == 0 {
            self.cut_bytes += chunk.data.len() as u64;
            return;
        }
        let fits = (chunk.data.len() as u64).min(room) as usize;
        let mut kept = &chunk.data[..fits];
        if fits < chunk.data.len() {
            // Cut text on a character boundary so that the record stays text.
            if let Err(e) = std::str::from_utf8(kept) {
                if std::str::from_utf8(&chunk.data).is_ok() {
                    kept = &kept[..e.valid_up_to()];
                }
            }
        }
        let data = match std::str::from_utf8(kept) {
            Ok(text) => json!({"text": text}),
            Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(kept)}),
        };
        let mut fields = json!({"shell_id": shell_id, "command_id": chunk.command_id});
        if let (Value::Object(fields), Value::Object(data)) = (&mut fields, data) {
            fields.extend(data);
        }
        if !kept.is_empty() {
            self.write(kind, fields);
        }
        self.output_written += kept.len() as u64;
        if kept.len() < chunk.data.len() {
            self.cut_bytes += (chunk.data.len() - kept.len()) as u64;
            self.write(
                "cut",
                json!({"reason": format!(
                    "output beyond audit.transcript_max_bytes ({} bytes) is not recorded; commands still are",
                    self.max_output
                )}),
            );
            self.output_written = self.max_output;
        }
    }

    /// Writes the `end` record and closes the file; returns its name and SHA-256.
    pub fn finish(mut self, reason: &str) -> Sealed {
        let cut = (self.cut_bytes > 0).then_some(self.cut_bytes);
        self.write(
            "end",
            json!({"reason": reason, "targets": self.targets, "output_not_recorded_bytes": cut}),
        );
        let complete = self.file.take().is_some_and(|mut f| f.flush().is_ok());
        Sealed {
            name: self.name,
            sha256: complete.then(|| hex::encode(self.hasher.finalize())),
        }
    }
}

/// Creates the transcript directory (mode 0700) when missing.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::psrp::SessionReader;
    use crate::proto::wsman::{parse_request, parse_response};

    const NS: &str = "xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
        xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
        xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
        xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"";
    const CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";

    fn request(action: &str, uri: &str, shell: Option<&str>, body: &str) -> Vec<u8> {
        let selector = shell
            .map(|s| format!("<w:SelectorSet><w:Selector Name=\"ShellId\">{s}</w:Selector></w:SelectorSet>"))
            .unwrap_or_default();
        format!(
            "<s:Envelope {NS}><s:Header><a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/{action}</a:Action>\
             <w:ResourceURI>{uri}</w:ResourceURI>{selector}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
        .into_bytes()
    }

    fn response(body: &str) -> Vec<u8> {
        format!("<s:Envelope {NS}><s:Header/><s:Body>{body}</s:Body></s:Envelope>").into_bytes()
    }

    thread_local! {
        /// The session's PSRP reader, as the pipeline keeps it (each test runs on a thread of its own).
        static READER: std::cell::RefCell<SessionReader> = std::cell::RefCell::default();
    }

    fn feed(t: &mut Transcript, req: &[u8], resp: &[u8], command: Option<&str>) {
        let info = parse_request(req).unwrap();
        let answer = parse_response(resp).unwrap();
        let succeeded = answer.fault.is_none();
        let powershell = matches!(
            wsman::shell_kind(info.resource_uri.as_deref().unwrap_or_default()),
            ShellKind::PowerShell { .. }
        );
        let events = match powershell {
            true => READER.with_borrow_mut(|r| crate::audit::psrp::read(r, &info, &answer, req, resp, succeeded)),
            false => Vec::new(),
        };
        t.record(&Exchange {
            info: &info,
            command,
            target: "web01",
            request: req,
            succeeded,
            response: resp,
            answer: &answer,
            psrp: &events,
        });
    }

    fn records(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn settings(dir: &Path, max_output: u64) -> Settings {
        Settings {
            dir: dir.to_path_buf(),
            max_output,
            record_host_responses: false,
        }
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn cmd_session(t: &mut Transcript, output: &[u8]) {
        let create = request("Create", CMD, None, "<rsp:Shell/>");
        feed(
            t,
            &create,
            &response("<rsp:Shell><rsp:ShellId>S1</rsp:ShellId></rsp:Shell>"),
            None,
        );
        let command = request(
            "Command",
            CMD,
            Some("S1"),
            "<rsp:CommandLine><rsp:Command>echo</rsp:Command><rsp:Arguments>hi</rsp:Arguments></rsp:CommandLine>",
        );
        feed(
            t,
            &command,
            &response("<rsp:CommandResponse><rsp:CommandId>C1</rsp:CommandId></rsp:CommandResponse>"),
            Some("echo hi"),
        );
        let send = request(
            "Send",
            CMD,
            Some("S1"),
            &format!(
                "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"C1\">{}</rsp:Stream></rsp:Send>",
                b64(b"input\n")
            ),
        );
        feed(t, &send, &response("<rsp:SendResponse/>"), None);
        let receive = request(
            "Receive",
            CMD,
            Some("S1"),
            "<rsp:Receive><rsp:DesiredStream CommandId=\"C1\">stdout stderr</rsp:DesiredStream></rsp:Receive>",
        );
        let out = response(&format!(
            "<rsp:ReceiveResponse><rsp:Stream Name=\"stdout\" CommandId=\"C1\">{}</rsp:Stream>\
             <rsp:Stream Name=\"stderr\" CommandId=\"C1\">{}</rsp:Stream>\
             <rsp:CommandState CommandId=\"C1\" State=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done\">\
             <rsp:ExitCode>3</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>",
            b64(output),
            b64(b"\xff\xfe")
        ));
        feed(t, &receive, &out, None);
        let signal = request("Signal", CMD, Some("S1"), "<rsp:Signal CommandId=\"C1\"><rsp:Code>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate</rsp:Code></rsp:Signal>");
        feed(t, &signal, &response("<rsp:SignalResponse/>"), None);
    }

    #[test]
    fn a_cmd_session_is_recorded_in_order_and_hashed() {
        let dir = crate::config::test_dir("transcript-cmd");
        let mut t = Transcript::create(&settings(&dir, 1 << 20), "abc", "LAB\\alice", "127.0.0.1:5000").unwrap();
        cmd_session(&mut t, b"hello\n");
        let sealed = t.finish("connection closed");
        let path = dir.join(&sealed.name);
        assert_eq!(session_of(&sealed.name), Some("abc"));
        let data = std::fs::read(&path).unwrap();
        assert_eq!(sealed.sha256.unwrap(), hex::encode(Sha256::digest(&data)));
        // Readable as it stands: every record opens with its time and type.
        for line in String::from_utf8(data).unwrap().lines() {
            assert!(
                line.starts_with("{\"time\":\"") && line.contains("\",\"type\":\""),
                "{line}"
            );
        }
        let r = records(&path);
        let kinds: Vec<&str> = r.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["session", "target", "shell", "command", "stdin", "stdout", "stderr", "exit", "signal", "end"]
        );
        assert_eq!(
            (r[0]["user"].as_str(), r[0]["source"].as_str()),
            (Some("LAB\\alice"), Some("127.0.0.1:5000"))
        );
        assert_eq!(r[2]["shell"], "cmd");
        assert_eq!(
            (r[3]["command"].as_str(), r[3]["command_id"].as_str()),
            (Some("echo hi"), Some("C1"))
        );
        assert_eq!(r[4]["text"], "input\n");
        assert_eq!(r[5]["text"], "hello\n");
        assert_eq!(r[6]["base64"], b64(b"\xff\xfe"));
        assert_eq!(r[7]["exit_code"], 3);
        assert_eq!(r[8]["signal"], "terminate");
        assert_eq!(r[9]["targets"], json!(["web01"]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn output_past_the_cap_is_cut_once_and_commands_go_on() {
        let dir = crate::config::test_dir("transcript-cap");
        let mut t = Transcript::create(&settings(&dir, 14), "cap", "u", "s").unwrap();
        cmd_session(&mut t, "0123456é89abcdef".as_bytes());
        // Another command after the cut is still recorded.
        let command = request(
            "Command",
            CMD,
            Some("S1"),
            "<rsp:CommandLine><rsp:Command>whoami</rsp:Command></rsp:CommandLine>",
        );
        feed(
            &mut t,
            &command,
            &response("<rsp:CommandResponse><rsp:CommandId>C2</rsp:CommandId></rsp:CommandResponse>"),
            Some("whoami"),
        );
        let path = dir.join(t.finish("done").name);
        let r = records(&path);
        let kinds: Vec<&str> = r.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["session", "target", "shell", "command", "stdin", "stdout", "cut", "exit", "signal", "command", "end"]
        );
        // 6 bytes of stdin, then 7 of stdout: the é does not fit whole, so it is left out.
        assert_eq!(r[5]["text"], "0123456");
        assert_eq!(r[9]["command"], "whoami");
        assert_eq!(r[10]["output_not_recorded_bytes"], 17 - 7 + 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn fragment(object_id: u64, message_type: u32, xml: &str) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&1u32.to_le_bytes());
        message.extend_from_slice(&message_type.to_le_bytes());
        message.extend_from_slice(&[0x11; 32]);
        message.extend_from_slice(b"\xEF\xBB\xBF");
        message.extend_from_slice(xml.as_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&object_id.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.push(3);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(&message);
        out
    }

    #[test]
    fn powershell_output_objects_errors_and_state_become_text() {
        let dir = crate::config::test_dir("transcript-psrp");
        let ps = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell";
        let mut t = Transcript::create(&settings(&dir, 1 << 20), "ps", "u", "s").unwrap();
        let create = request("Create", ps, None, "<rsp:Shell/>");
        let created = response("<x:ResourceCreated xmlns:x=\"http://schemas.xmlsoap.org/ws/2004/09/transfer\"><a:ReferenceParameters><w:SelectorSet><w:Selector Name=\"ShellId\">P1</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>");
        feed(&mut t, &create, &created, None);
        let command = request(
            "Command",
            ps,
            Some("P1"),
            "<rsp:CommandLine CommandId=\"K1\"><rsp:Command/><rsp:Arguments>AAAA</rsp:Arguments></rsp:CommandLine>",
        );
        feed(
            &mut t,
            &command,
            &response("<rsp:CommandResponse><rsp:CommandId>K1</rsp:CommandId></rsp:CommandResponse>"),
            Some("Write-Output hi"),
        );
        let mut stream = fragment(1, 0x0004_1004, "<S>hello_x000A_world</S>");
        stream.extend(fragment(2, 0x0004_1005, "<Obj RefId=\"0\"><TN RefId=\"0\"><T>System.Management.Automation.ErrorRecord</T></TN><ToString>it broke</ToString></Obj>"));
        let state = fragment(
            3,
            0x0004_1006,
            "<Obj RefId=\"0\"><MS><I32 N=\"PipelineState\">4</I32></MS></Obj>",
        );
        let receive = request(
            "Receive",
            ps,
            Some("P1"),
            "<rsp:Receive><rsp:DesiredStream CommandId=\"K1\">stdout</rsp:DesiredStream></rsp:Receive>",
        );
        let out = response(&format!(
            "<rsp:ReceiveResponse><rsp:Stream Name=\"stdout\" CommandId=\"K1\">{}</rsp:Stream>\
             <rsp:Stream Name=\"stdout\" CommandId=\"K1\">{}</rsp:Stream></rsp:ReceiveResponse>",
            b64(&stream),
            b64(&state)
        ));
        feed(&mut t, &receive, &out, None);
        let path = dir.join(t.finish("done").name);
        let r = records(&path);
        let kinds: Vec<&str> = r.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "session",
                "target",
                "shell",
                "command",
                "stdout",
                "stderr",
                "state",
                "pipeline_end",
                "end"
            ]
        );
        assert_eq!(r[2]["shell"], "powershell/Microsoft.PowerShell");
        assert_eq!(r[3]["command"], "Write-Output hi");
        assert_eq!(r[4]["text"], "hello\nworld\n");
        assert_eq!(r[5]["text"], "it broke\n");
        assert_eq!(r[6]["state"], "Completed");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A pipeline whose CREATE_PIPELINE straddles the Command and a Send, its input and
    /// a prompt answered: each recorded in order, the answer's text only when asked for.
    #[test]
    fn a_powershell_pipeline_its_input_and_host_answers_are_recorded() {
        for record_host_responses in [false, true] {
            let dir = crate::config::test_dir("transcript-psrp-pipeline");
            let ps = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell";
            let settings = Settings {
                record_host_responses,
                ..settings(&dir, 1 << 20)
            };
            let mut t = Transcript::create(&settings, "pp", "u", "s").unwrap();
            let create = request("Create", ps, None, "<rsp:Shell/>");
            let created = response("<rsp:Shell><rsp:ShellId>P2</rsp:ShellId></rsp:Shell>");
            feed(&mut t, &create, &created, None);
            let script = format!("{}; echo HIDDEN-PAYLOAD-RAN", "#".repeat(300));
            let pipeline = fragment(
                0x7_0000_0001,
                0x0002_1006,
                &format!(
                    "<Obj RefId=\"0\"><MS><Obj N=\"PowerShell\" RefId=\"1\"><MS><Obj N=\"Cmds\" RefId=\"2\"><LST>\
                     <Obj RefId=\"3\"><MS><S N=\"Cmd\">{script}</S><B N=\"IsScript\">true</B></MS></Obj>\
                     </LST></Obj></MS></Obj></MS></Obj>"
                ),
            );
            // The Command carries the first 10 bytes: not even the fragment header.
            let command = request(
                "Command",
                ps,
                Some("P2"),
                &format!(
                    "<rsp:CommandLine CommandId=\"K2\"><rsp:Command/><rsp:Arguments>{}</rsp:Arguments></rsp:CommandLine>",
                    b64(&pipeline[..10])
                ),
            );
            feed(
                &mut t,
                &command,
                &response("<rsp:CommandResponse><rsp:CommandId>K2</rsp:CommandId></rsp:CommandResponse>"),
                Some(" ..."),
            );
            let mut sent = pipeline[10..].to_vec();
            sent.extend(fragment(0x7_0000_0002, 0x0004_1002, "<S>piped in</S>"));
            sent.extend(fragment(
                0x7_0000_0003,
                0x0004_1101,
                "<Obj RefId=\"0\"><MS><S N=\"mr\">typed answer</S><Obj N=\"mi\" RefId=\"1\">\
                 <ToString>ReadLine</ToString><I32>11</I32></Obj></MS></Obj>",
            ));
            let send = request(
                "Send",
                ps,
                Some("P2"),
                &format!(
                    "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"K2\">{}</rsp:Stream></rsp:Send>",
                    b64(&sent)
                ),
            );
            feed(&mut t, &send, &response("<rsp:SendResponse/>"), None);
            let done = fragment(
                0x7_0000_0004,
                0x0004_1006,
                "<Obj RefId=\"0\"><MS><I32 N=\"PipelineState\">4</I32></MS></Obj>",
            );
            let receive = request(
                "Receive",
                ps,
                Some("P2"),
                "<rsp:Receive><rsp:DesiredStream CommandId=\"K2\">stdout</rsp:DesiredStream></rsp:Receive>",
            );
            let out = response(&format!(
                "<rsp:ReceiveResponse><rsp:Stream Name=\"stdout\" CommandId=\"K2\">{}</rsp:Stream></rsp:ReceiveResponse>",
                b64(&done)
            ));
            feed(&mut t, &receive, &out, None);
            let path = dir.join(t.finish("done").name);
            let r = records(&path);
            let kinds: Vec<&str> = r.iter().map(|r| r["type"].as_str().unwrap()).collect();
            assert_eq!(
                kinds,
                [
                    "session",
                    "target",
                    "shell",
                    "command",
                    "pipeline",
                    "input",
                    "host_response",
                    "state",
                    "pipeline_end",
                    "end"
                ]
            );
            assert_eq!(
                (r[4]["shell_id"].as_str(), r[4]["command_id"].as_str()),
                (Some("P2"), Some("K2"))
            );
            assert_eq!(r[4]["commands"][0]["script"].as_str(), Some(script.as_str()));
            assert_eq!(r[5]["text"], "piped in\n");
            assert_eq!(
                (r[6]["method"].as_str(), r[6]["answered"].as_bool()),
                (Some("ReadLine"), Some(true))
            );
            assert_eq!(r[6]["text"].as_str(), record_host_responses.then_some("typed answer"));
            assert_eq!(
                (r[8]["input_objects"].as_u64(), r[8]["host_responses"].as_u64()),
                (Some(1), Some(1))
            );
            assert_eq!(r[8]["state"], "Completed");
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
