//! Audit helpers for PSRP, found through the layers it wraps everything in (base64
//! fragments, then messages, then CLIXML): the PowerShell pipeline inside a
//! CREATE_PIPELINE message, and the text of what a pipeline sends back (output objects,
//! error records, its state).
//!
//! Best effort by design: whatever is malformed is skipped, never fatal.

use std::collections::HashMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// PSRP message types: the client's CREATE_PIPELINE, and what a pipeline sends back.
pub const CREATE_PIPELINE: u32 = 0x0002_1006;
pub const PIPELINE_OUTPUT: u32 = 0x0004_1004;
pub const ERROR_RECORD: u32 = 0x0004_1005;
pub const PIPELINE_STATE: u32 = 0x0004_1006;

const FRAGMENT_HEADER: usize = 21;
const MESSAGE_HEADER: usize = 40;
const FLAG_START: u8 = 0x1;
const FLAG_END: u8 = 0x2;
/// Arguments are bounded by the envelope size; this is a second fence.
const MAX_DECODED: usize = 16 * 1024 * 1024;
/// Audit lines stay readable; longer summaries are cut.
const MAX_SUMMARY: usize = 64 * 1024;
const MAX_XML_DEPTH: usize = 128;

/// Decodes base64 PSRP fragments (as in a Command's `rsp:Arguments`) and, for
/// a CREATE_PIPELINE message, returns its commands: statements joined with
/// "; ", pipeline elements with " | ", parameters rendered `-Name value`. A
/// message whose later fragments travel in Send requests yields what the
/// available fragments hold, followed by " ...".
pub fn psrp_command_summary(fragments_b64: &str) -> Option<String> {
    let bytes = decode_base64(fragments_b64)?;
    let mut defragmenter = Defragmenter::default();
    let mut messages = defragmenter.push(&bytes);
    messages.extend(defragmenter.unfinished());

    let mut out: Option<String> = None;
    for message in messages {
        if message.message_type != CREATE_PIPELINE {
            continue;
        }
        let mut summary = summarise_pipeline(&message.data);
        if !message.complete {
            summary.push_str(" ...");
        }
        if summary.trim().is_empty() {
            continue;
        }
        match out.as_mut() {
            Some(o) => {
                o.push_str("; ");
                o.push_str(&summary);
            }
            None => out = Some(summary),
        }
    }
    out.map(truncate)
}

/// One PSRP message put together from its fragments: its type and its CLIXML payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsrpMessage {
    pub message_type: u32,
    /// The payload after the message header (and its byte-order mark).
    pub data: Vec<u8>,
    /// False for a message whose last fragment never came.
    pub complete: bool,
}

/// Puts messages together from fragments that may arrive over several envelopes (a
/// Receive response holds whole fragments, a message may span several). Bounded: a
/// message growing past the decode limit is dropped.
#[derive(Debug, Default)]
pub struct Defragmenter {
    partial: HashMap<u64, Vec<u8>>,
    /// The bytes held in `partial`, kept as they change: summing them for every
    /// fragment made many small fragments cost the square of their number.
    buffered: usize,
}

impl Defragmenter {
    /// Feeds a run of whole fragments; returns the messages they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<PsrpMessage> {
        let mut done = Vec::new();
        let mut rest = bytes;
        while rest.len() >= FRAGMENT_HEADER {
            let Ok(object_id) = rest[0..8].try_into().map(u64::from_be_bytes) else {
                break;
            };
            let flags = rest[16];
            let Ok(len) = rest[17..21].try_into().map(u32::from_be_bytes) else {
                break;
            };
            let Some(blob) = FRAGMENT_HEADER
                .checked_add(len as usize)
                .and_then(|end| rest.get(FRAGMENT_HEADER..end))
            else {
                break;
            };
            rest = &rest[FRAGMENT_HEADER + blob.len()..];
            if flags & FLAG_START != 0 {
                if let Some(dropped) = self.partial.insert(object_id, Vec::new()) {
                    self.buffered -= dropped.len();
                }
            }
            let Some(buf) = self.partial.get_mut(&object_id) else {
                continue; // a middle fragment whose start we never saw
            };
            if self.buffered + blob.len() > MAX_DECODED {
                self.buffered -= buf.len();
                self.partial.remove(&object_id);
                continue;
            }
            buf.extend_from_slice(blob);
            self.buffered += blob.len();
            if flags & FLAG_END != 0 {
                if let Some(whole) = self.partial.remove(&object_id) {
                    self.buffered -= whole.len();
                    done.extend(message_of(whole, true));
                }
            }
        }
        done
    }

    /// The messages begun and not finished.
    pub fn unfinished(self) -> Vec<PsrpMessage> {
        self.partial
            .into_values()
            .filter_map(|m| message_of(m, false))
            .collect()
    }
}

fn message_of(bytes: Vec<u8>, complete: bool) -> Option<PsrpMessage> {
    let header = bytes.get(..MESSAGE_HEADER)?;
    let message_type = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let data = &bytes[MESSAGE_HEADER..];
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    Some(PsrpMessage {
        message_type,
        data: data.to_vec(),
        complete,
    })
}

/// What a pipeline's output message says, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PsrpOutput {
    /// PIPELINE_OUTPUT: a string as it is, another object as its ToString.
    Output(String),
    /// ERROR_RECORD: the error's message.
    Error(String),
    /// PIPELINE_STATE: the pipeline's new state, with the error of a failed one.
    State {
        state: &'static str,
        reason: Option<String>,
    },
}

/// The text of an output, error or state message; `None` for the other kinds.
pub fn psrp_output(message: &PsrpMessage) -> Option<PsrpOutput> {
    let xml = &message.data;
    match message.message_type {
        PIPELINE_OUTPUT => Some(PsrpOutput::Output(object_text(xml))),
        ERROR_RECORD => Some(PsrpOutput::Error(object_text(xml))),
        PIPELINE_STATE => {
            let state = first_text(xml, |s| is(s.last(), "I32", Some("PipelineState")))
                .and_then(|n| n.trim().parse::<i32>().ok())
                .map_or("Unknown", pipeline_state_name);
            let reason = first_text(xml, |s| {
                s.len() >= 2
                    && is(s.get(s.len() - 2), "Obj", Some("ExceptionAsErrorRecord"))
                    && is(s.last(), "ToString", None)
            });
            Some(PsrpOutput::State { state, reason })
        }
        _ => None,
    }
}

fn pipeline_state_name(state: i32) -> &'static str {
    match state {
        0 => "NotStarted",
        1 => "Running",
        2 => "Stopping",
        3 => "Stopped",
        4 => "Completed",
        5 => "Failed",
        6 => "Disconnected",
        _ => "Unknown",
    }
}

const PRIMITIVES: [&str; 20] = [
    "S", "I32", "I64", "U32", "U64", "I16", "U16", "By", "SB", "B", "Db", "Sg", "D", "C", "G", "URI", "Version", "XD",
    "TS", "DT",
];

/// A serialised object as text: a primitive's value, an object's ToString, else the first
/// Message property inside (an exception's), else a placeholder.
fn object_text(xml: &[u8]) -> String {
    first_text(xml, |s| s.len() == 1 && PRIMITIVES.contains(&&*s[0].tag))
        .or_else(|| first_text(xml, |s| s.len() == 1 && &*s[0].tag == "Nil").map(|_| String::new()))
        .or_else(|| {
            first_text(xml, |s| {
                s.len() == 2 && is(s.first(), "Obj", None) && is(s.get(1), "ToString", None)
            })
        })
        .or_else(|| first_text(xml, |s| is(s.last(), "S", Some("Message"))))
        .unwrap_or_else(|| "<object>".into())
}

/// The text (CLIXML escapes decoded) of the first element the stack of open elements,
/// ending with it, is `wanted` for.
fn first_text(xml: &[u8], wanted: impl Fn(&[Frame]) -> bool) -> Option<String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut capture: Option<(usize, String)> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return None;
                }
                stack.push(frame_of(&e));
                if capture.is_none() && wanted(&stack) {
                    capture = Some((stack.len(), String::new()));
                }
            }
            Ok(Event::Empty(e)) => {
                stack.push(frame_of(&e));
                if capture.is_none() && wanted(&stack) {
                    return Some(String::new());
                }
                stack.pop();
            }
            Ok(Event::Text(t)) => {
                if let Some((depth, text)) = capture.as_mut() {
                    if *depth == stack.len() {
                        text.push_str(&t.unescape().ok()?);
                    }
                }
            }
            Ok(Event::End(_)) => {
                if let Some((depth, text)) = &capture {
                    if *depth == stack.len() {
                        return Some(decode_psrp_escapes(text));
                    }
                }
                stack.pop();
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if s.len() / 4 * 3 > MAX_DECODED {
        return None;
    }
    // Several rsp:Arguments arrive joined by spaces, each padded on its own.
    let mut out = Vec::new();
    for token in s.split_ascii_whitespace() {
        out.extend(ENGINE.decode(token).ok()?);
    }
    (!out.is_empty()).then_some(out)
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_SUMMARY {
        let mut cut = MAX_SUMMARY;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

#[derive(Default)]
struct Command {
    text: String,
    params: Vec<Param>,
}

#[derive(Default)]
struct Param {
    name: Option<String>,
    value: Option<String>,
}

struct Statement {
    in_extra: bool,
    commands: Vec<Command>,
}

/// What the current text belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Cmd,
    ParamName,
    ParamValue,
}

struct Frame {
    tag: Box<str>,
    n: Option<Box<str>>,
}

fn is(frame: Option<&Frame>, tag: &str, n: Option<&str>) -> bool {
    frame.is_some_and(|f| &*f.tag == tag && (n.is_none() || f.n.as_deref() == n))
}

/// Walks the CLIXML of a CREATE_PIPELINE payload. Shape:
/// `Obj N="PowerShell"/MS/Obj N="Cmds"/LST/Obj/MS/{S N="Cmd", Obj N="Args"/LST/Obj/MS/{N, V}}`,
/// with several statements listed under `Obj N="ExtraCmds"` (whose first entry
/// the top-level `Cmds` repeats).
fn summarise_pipeline(xml: &[u8]) -> String {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut statements: Vec<Statement> = Vec::new();
    let mut slot: Option<(Slot, usize)> = None;
    let mut text = String::new();

    loop {
        let (start, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::Text(t)) => {
                if slot.is_some_and(|(_, d)| d == stack.len()) {
                    if let Ok(s) = t.unescape() {
                        text.push_str(&s);
                    }
                }
                continue;
            }
            Ok(Event::End(_)) => {
                if let Some((kind, depth)) = slot {
                    if depth == stack.len() {
                        store(&mut statements, kind, Some(decode_psrp_escapes(&text)));
                        slot = None;
                        text.clear();
                    }
                }
                stack.pop();
                continue;
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => continue,
        };
        if stack.len() >= MAX_XML_DEPTH {
            break;
        }
        let frame = frame_of(&start);
        let n = frame.n.as_deref();
        let len = stack.len();
        let parent = len.checked_sub(1).and_then(|i| stack.get(i));
        let grand = len.checked_sub(2).and_then(|i| stack.get(i));
        let great = len.checked_sub(3).and_then(|i| stack.get(i));

        if &*frame.tag == "Obj" && n == Some("Cmds") {
            let in_extra = stack.iter().any(|f| is(Some(f), "Obj", Some("ExtraCmds")));
            statements.push(Statement {
                in_extra,
                commands: Vec::new(),
            });
        } else if &*frame.tag == "Obj" && is(parent, "LST", None) && is(grand, "Obj", Some("Cmds")) {
            if let Some(st) = statements.last_mut() {
                st.commands.push(Command::default());
            }
        } else if &*frame.tag == "Obj" && is(parent, "LST", None) && is(grand, "Obj", Some("Args")) {
            if let Some(cmd) = statements.last_mut().and_then(|s| s.commands.last_mut()) {
                cmd.params.push(Param::default());
            }
        } else if is(parent, "MS", None) && is(grand, "Obj", None) {
            let in_cmd = is(great, "LST", None) && stack.len() >= 4 && is(stack.get(len - 4), "Obj", Some("Cmds"));
            let in_arg = is(great, "LST", None) && stack.len() >= 4 && is(stack.get(len - 4), "Obj", Some("Args"));
            let kind = match n {
                Some("Cmd") if in_cmd => Some(Slot::Cmd),
                Some("N") if in_arg => Some(Slot::ParamName),
                Some("V") if in_arg => Some(Slot::ParamValue),
                _ => None,
            };
            if let Some(kind) = kind {
                match &*frame.tag {
                    // Nil: positional parameter (N) or switch (V).
                    "Nil" => store(&mut statements, kind, None),
                    "S" | "I32" | "I64" | "U32" | "U64" | "I16" | "U16" | "By" | "SB" | "B" | "Db" | "Sg" | "D"
                    | "C" | "G" | "URI" | "Version" | "XD" | "TS" | "DT" => {
                        if empty {
                            store(&mut statements, kind, Some(String::new()));
                        } else {
                            slot = Some((kind, stack.len() + 1));
                            text.clear();
                        }
                    }
                    "SS" => store(&mut statements, kind, Some("<SecureString>".into())),
                    "BA" => store(&mut statements, kind, Some("<bytes>".into())),
                    _ => store(&mut statements, kind, Some("<object>".into())),
                }
            }
        }
        if !empty {
            stack.push(frame);
        }
    }
    render(&statements)
}

fn frame_of(e: &BytesStart<'_>) -> Frame {
    let tag = String::from_utf8_lossy(e.name().as_ref()).into();
    let n = e
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == b"N")
        .and_then(|a| a.unescape_value().ok())
        .map(|v| v.into_owned().into_boxed_str());
    Frame { tag, n }
}

fn store(statements: &mut [Statement], kind: Slot, value: Option<String>) {
    let Some(cmd) = statements.last_mut().and_then(|s| s.commands.last_mut()) else {
        return;
    };
    match kind {
        Slot::Cmd => cmd.text = value.unwrap_or_default(),
        Slot::ParamName => {
            if let Some(p) = cmd.params.last_mut() {
                p.name = value;
            }
        }
        Slot::ParamValue => {
            if let Some(p) = cmd.params.last_mut() {
                p.value = value;
            }
        }
    }
}

fn render(statements: &[Statement]) -> String {
    let extra = statements.iter().any(|s| s.in_extra);
    statements
        .iter()
        .filter(|s| s.in_extra == extra && !s.commands.is_empty())
        .map(|s| s.commands.iter().map(render_command).collect::<Vec<_>>().join(" | "))
        .collect::<Vec<_>>()
        .join("; ")
}

fn render_command(c: &Command) -> String {
    let mut out = c.text.clone();
    for p in &c.params {
        if let Some(name) = &p.name {
            out.push_str(" -");
            out.push_str(name);
        }
        if let Some(v) = &p.value {
            out.push(' ');
            out.push_str(&quote(v));
        }
    }
    out
}

fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && !v.starts_with(['<', '-'])
        && v.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | ';' | '|' | '&'));
    if plain || v.starts_with('<') && v.ends_with('>') && !v.contains(char::is_whitespace) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// CLIXML escapes characters as `_xHHHH_` UTF-16 code units, including
/// `_x005F_` for a literal underscore and surrogate pairs.
fn decode_psrp_escapes(s: &str) -> String {
    if !s.contains("_x") {
        return s.to_string();
    }
    let mut units: Vec<u16> = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && bytes.get(i + 1) == Some(&b'x') && bytes.get(i + 6) == Some(&b'_') {
            if let Some(hex) = s.get(i + 2..i + 6) {
                if hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    if let Ok(u) = u16::from_str_radix(hex, 16) {
                        units.push(u);
                        i += 7;
                        continue;
                    }
                }
            }
        }
        // Copy one whole character.
        let ch = s[i..].chars().next().unwrap_or('\u{FFFD}');
        let mut buf = [0u16; 2];
        units.extend_from_slice(ch.encode_utf16(&mut buf));
        i += ch.len_utf8().max(1);
    }
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds fragments the way pypsrp does: one fragment per message here,
    /// or split into `pieces` fragments.
    fn fragments(object_id: u64, message: &[u8], pieces: usize) -> Vec<u8> {
        let chunk = message.len().div_ceil(pieces.max(1)).max(1);
        let chunks: Vec<&[u8]> = message.chunks(chunk).collect();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&object_id.to_be_bytes());
            out.extend_from_slice(&(i as u64).to_be_bytes());
            let mut flags = 0;
            if i == 0 {
                flags |= FLAG_START;
            }
            if i + 1 == chunks.len() {
                flags |= FLAG_END;
            }
            out.push(flags);
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    fn message(msg_type: u32, xml: &str) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&2u32.to_le_bytes()); // destination: server
        m.extend_from_slice(&msg_type.to_le_bytes());
        m.extend_from_slice(&[0x11; 16]); // RPID
        m.extend_from_slice(&[0x22; 16]); // PID
        m.extend_from_slice(b"\xEF\xBB\xBF");
        m.extend_from_slice(xml.as_bytes());
        m
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    const TN: &str = "<TNRef RefId=\"0\" />";

    fn cmd(name: &str, is_script: bool, args: &str) -> String {
        format!(
            "<Obj RefId=\"8\"><MS><S N=\"Cmd\">{name}</S><B N=\"IsScript\">{is_script}</B><Nil N=\"UseLocalScope\" />\
             <Obj N=\"MergeMyResult\" RefId=\"9\"><TN RefId=\"3\"><T>System.Management.Automation.Runspaces.PipelineResultTypes</T></TN><ToString>None</ToString><I32>0</I32></Obj>\
             <Obj N=\"Args\" RefId=\"12\">{TN}<LST>{args}</LST></Obj></MS></Obj>"
        )
    }

    fn arg(n: &str, v: &str) -> String {
        format!("<Obj RefId=\"13\"><MS>{n}{v}</MS></Obj>")
    }

    fn pipeline(cmds_xml: &str, extra: &str) -> String {
        format!(
            "<Obj RefId=\"0\"><MS><B N=\"NoInput\">true</B><Obj N=\"PowerShell\" RefId=\"4\"><MS><B N=\"IsNested\">false</B>{extra}\
             <Obj N=\"Cmds\" RefId=\"7\">{TN}<LST>{cmds_xml}</LST></Obj><Nil N=\"History\" /></MS></Obj></MS></Obj>"
        )
    }

    /// The running count of buffered bytes stays the sum of what is held, through
    /// messages that finish, restart under the same ObjectId, and never end.
    #[test]
    fn the_buffered_count_follows_what_is_held() {
        let mut d = Defragmenter::default();
        let held = |d: &Defragmenter| d.partial.values().map(Vec::len).sum::<usize>();
        let whole = fragments(1, &message(CREATE_PIPELINE, "<Obj/>"), 3);
        let mut begun = fragments(2, &message(CREATE_PIPELINE, "<Obj><MS/></Obj>"), 4);
        let cut = begun.len() / 2;
        let mut fed = whole.clone();
        fed.extend_from_slice(&begun[..cut]);
        // Cut inside a fragment: the rest of that fragment is not fed.
        let done = d.push(&fed);
        assert_eq!(done.len(), 1);
        assert_eq!(d.buffered, held(&d));
        // The same ObjectId starts again: what it held is dropped from the count.
        begun.truncate(0);
        begun.extend(fragments(2, &message(CREATE_PIPELINE, "<Obj/>"), 2));
        let done = d.push(&begun);
        assert_eq!(done.len(), 1);
        assert_eq!((d.buffered, held(&d)), (0, 0));
        // Thousands of messages begun and never ended are counted once each.
        let mut starts = Vec::new();
        for id in 10..5_010u64 {
            let mut f = fragments(id, &message(CREATE_PIPELINE, "<Obj/>"), 1);
            f[16] = FLAG_START;
            starts.extend(f);
        }
        assert!(d.push(&starts).is_empty());
        assert_eq!(d.buffered, held(&d));
        assert_eq!(d.unfinished().len(), 5_000);
    }

    #[test]
    fn single_command_with_parameters() {
        let args = [
            arg("<S N=\"N\">Name</S>", "<S N=\"V\">win rm</S>"),
            arg("<S N=\"N\">Force</S>", "<Nil N=\"V\" />"),
            arg("<Nil N=\"N\" />", "<S N=\"V\">/c echo hi</S>"),
            arg("<S N=\"N\">Count</S>", "<I32 N=\"V\">3</I32>"),
            arg("<S N=\"N\">Value</S>", "<SS N=\"V\">GXD6gSYv</SS>"),
            arg("<S N=\"N\">Obj</S>", "<Obj N=\"V\" RefId=\"5\"><MS/></Obj>"),
        ]
        .concat();
        let xml = pipeline(&cmd("Get-Service", false, &args), "");
        let b = fragments(1, &message(CREATE_PIPELINE, &xml), 1);
        assert_eq!(
            psrp_command_summary(&b64(&b)).as_deref(),
            Some("Get-Service -Name 'win rm' -Force '/c echo hi' -Count 3 -Value <SecureString> -Obj <object>")
        );
    }

    #[test]
    fn pipeline_and_statements() {
        let p = [
            cmd("Get-Process", false, ""),
            cmd(
                "Select-Object",
                false,
                &arg("<S N=\"N\">First</S>", "<I32 N=\"V\">1</I32>"),
            ),
        ]
        .concat();
        let xml = pipeline(&p, "");
        let b = fragments(7, &message(CREATE_PIPELINE, &xml), 3);
        assert_eq!(
            psrp_command_summary(&b64(&b)).as_deref(),
            Some("Get-Process | Select-Object -First 1")
        );

        // ExtraCmds lists every statement; the top-level Cmds repeats the first.
        let st =
            |c: &str| format!("<Obj RefId=\"6\"><MS><Obj N=\"Cmds\" RefId=\"7\">{TN}<LST>{c}</LST></Obj></MS></Obj>");
        let extra = format!(
            "<Obj N=\"ExtraCmds\" RefId=\"5\">{TN}<LST>{}{}</LST></Obj>",
            st(&cmd("whoami.exe", false, "")),
            st(&cmd("$x_x000A_ &amp; 1", true, ""))
        );
        let xml = pipeline(&cmd("whoami.exe", false, ""), &extra);
        let b = fragments(2, &message(CREATE_PIPELINE, &xml), 1);
        assert_eq!(psrp_command_summary(&b64(&b)).as_deref(), Some("whoami.exe; $x\n & 1"));
    }

    #[test]
    fn real_pypsrp_fragment() {
        // rsp:Arguments of a pypsrp Command request (protocol 2.1 test recording).
        let xml = include_str!("testdata/pypsrp_psrp_command_request.xml");
        let args = xml
            .split("<rsp:Arguments>")
            .nth(1)
            .and_then(|s| s.split("</rsp:Arguments>").next())
            .unwrap();
        let summary = psrp_command_summary(args).unwrap();
        assert!(
            summary.starts_with("begin {\n    $DebugPreference = 'Continue'"),
            "{summary}"
        );
        assert!(summary.contains("Write-Error \"error\""), "{summary}");
    }

    #[test]
    fn incomplete_message_is_marked() {
        let xml = pipeline(
            &cmd(
                "Remove-Item",
                false,
                &arg("<S N=\"N\">Path</S>", "<S N=\"V\">C:\\x</S>"),
            ),
            "",
        );
        let full = fragments(3, &message(CREATE_PIPELINE, &xml), 4);
        // Keep only the first two fragments: the rest would follow in Send.
        let mut cut = Vec::new();
        let mut rest = full.as_slice();
        for _ in 0..2 {
            let len = u32::from_be_bytes(rest[17..21].try_into().unwrap()) as usize;
            cut.extend_from_slice(&rest[..21 + len]);
            rest = &rest[21 + len..];
        }
        let s = psrp_command_summary(&b64(&cut)).unwrap();
        assert!(s.starts_with("Remove-Item"), "{s}");
        assert!(s.ends_with(" ..."), "{s}");
    }

    #[test]
    fn other_messages_and_garbage() {
        let xml = pipeline(&cmd("Get-Date", false, ""), "");
        // INIT_RUNSPACEPOOL is not a pipeline.
        let b = fragments(1, &message(0x0001_0004, &xml), 1);
        assert_eq!(psrp_command_summary(&b64(&b)), None);
        assert_eq!(psrp_command_summary(""), None);
        assert_eq!(psrp_command_summary("not base64!"), None);
        assert_eq!(psrp_command_summary("AAAA"), None);
        // Two separately padded base64 runs joined by a space.
        let a = fragments(1, &message(CREATE_PIPELINE, &xml), 1);
        let (x, y) = a.split_at(10);
        assert_eq!(
            psrp_command_summary(&format!("{} {}", b64(x), b64(y))).as_deref(),
            Some("Get-Date")
        );
        // Every truncation of the decoded bytes is handled.
        for cut in 0..a.len() {
            let _ = psrp_command_summary(&b64(&a[..cut]));
        }
        // Fragment length pointing past the end.
        let mut bad = a.clone();
        bad[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(psrp_command_summary(&b64(&bad)), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(decode_psrp_escapes("a_x000A_b"), "a\nb");
        assert_eq!(decode_psrp_escapes("actual_x005F_x000A_string"), "actual_x000A_string");
        assert_eq!(decode_psrp_escapes("_xD801__xDC37_"), "\u{10437}");
        assert_eq!(decode_psrp_escapes("_xD801_"), "\u{FFFD}");
        assert_eq!(decode_psrp_escapes("_x12_ _xZZZZ_ é_x"), "_x12_ _xZZZZ_ é_x");
    }

    #[test]
    fn messages_spanning_several_receives_are_put_together() {
        let xml = "<S>line one_x000A_line two</S>";
        let all = fragments(9, &message(PIPELINE_OUTPUT, xml), 3);
        // Whole fragments, split over two envelopes.
        let first_len = FRAGMENT_HEADER + u32::from_be_bytes(all[17..21].try_into().unwrap()) as usize;
        let mut d = Defragmenter::default();
        assert!(d.push(&all[..first_len]).is_empty());
        let done = d.push(&all[first_len..]);
        assert_eq!(done.len(), 1);
        assert!(done[0].complete);
        assert_eq!(
            psrp_output(&done[0]),
            Some(PsrpOutput::Output("line one\nline two".into()))
        );
        assert!(d.unfinished().is_empty());
        // A middle fragment without its start is skipped.
        let mut d = Defragmenter::default();
        assert!(d.push(&all[first_len..]).is_empty());
    }

    fn output_of(message_type: u32, xml: &str) -> Option<PsrpOutput> {
        let mut d = Defragmenter::default();
        let done = d.push(&fragments(1, &message(message_type, xml), 1));
        psrp_output(done.first()?)
    }

    #[test]
    fn outputs_errors_and_states_as_text() {
        assert_eq!(
            output_of(PIPELINE_OUTPUT, "<I32>42</I32>"),
            Some(PsrpOutput::Output("42".into()))
        );
        assert_eq!(
            output_of(PIPELINE_OUTPUT, "<Nil />"),
            Some(PsrpOutput::Output(String::new()))
        );
        let process = "<Obj RefId=\"0\"><TN RefId=\"0\"><T>System.Diagnostics.Process</T></TN>\
                       <ToString>System.Diagnostics.Process (pwsh)</ToString><Props><S N=\"Name\">pwsh</S></Props></Obj>";
        assert_eq!(
            output_of(PIPELINE_OUTPUT, process),
            Some(PsrpOutput::Output("System.Diagnostics.Process (pwsh)".into()))
        );
        let error = "<Obj RefId=\"0\"><TN RefId=\"0\"><T>System.Management.Automation.ErrorRecord</T></TN><MS>\
                     <Obj N=\"Exception\" RefId=\"1\"><Props><S N=\"Message\">Cannot find path 'C:\\x'</S></Props></Obj>\
                     </MS></Obj>";
        assert_eq!(
            output_of(ERROR_RECORD, error),
            Some(PsrpOutput::Error("Cannot find path 'C:\\x'".into()))
        );
        assert_eq!(
            output_of(
                PIPELINE_STATE,
                "<Obj RefId=\"0\"><MS><I32 N=\"PipelineState\">4</I32></MS></Obj>"
            ),
            Some(PsrpOutput::State {
                state: "Completed",
                reason: None
            })
        );
        let failed =
            "<Obj RefId=\"0\"><MS><I32 N=\"PipelineState\">5</I32><Obj N=\"ExceptionAsErrorRecord\" RefId=\"1\">\
                      <ToString>The pipeline was stopped.</ToString></Obj></MS></Obj>";
        assert_eq!(
            output_of(PIPELINE_STATE, failed),
            Some(PsrpOutput::State {
                state: "Failed",
                reason: Some("The pipeline was stopped.".into())
            })
        );
        assert_eq!(output_of(CREATE_PIPELINE, "<S>x</S>"), None);
        assert_eq!(
            output_of(PIPELINE_OUTPUT, "<Obj><MS></MS></Obj>"),
            Some(PsrpOutput::Output("<object>".into()))
        );
        assert_eq!(
            output_of(PIPELINE_OUTPUT, "<S>unclosed"),
            Some(PsrpOutput::Output("<object>".into()))
        );
    }
}
