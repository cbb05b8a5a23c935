//! What a request to a PowerShell shell asks the target to run, read before it is
//! forwarded, for a command policy to judge.
//!
//! Only under a command policy, and on the relay's own copy of the client's streams
//! (the audit's reader runs after the target answered; this one must run before). A
//! CREATE_PIPELINE is judged when its last fragment arrives: the Command and the Sends
//! that carry its earlier fragments are forwarded, since a target cannot run a pipeline
//! it has not received whole; the request that completes it is refused if the policy
//! says so, and every later request on that pipeline is refused too, so that a
//! different ending cannot be tried on the pieces already at the target. Anything the
//! relay cannot read (bad framing, a stream that is no base64, a bound, a pipeline whose
//! Command names no CommandId) is refused: a pipeline it cannot read, it cannot judge.
//! So is a fragment sent twice: the reading moves on with every request it passes, so a
//! client resending what the target never got (it could not be reached) is refused too.

use std::collections::HashMap;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use crate::policy::script::Argument;
use crate::policy::PsCommand;
use crate::proto::psrp::{decode_base64, decompress_stream, Parameter, Pipeline, StreamAssembler, CREATE_PIPELINE};
use crate::proto::wsman::{self, RequestInfo};

/// The largest fragment, message or decompressed stream the policy reads: past it the
/// request is refused.
const BOUND: usize = 16 << 20;

/// The bytes all of a session's followed streams may hold, unfinished.
const MAX_HELD: usize = 64 << 20;

/// A shell id and a pipeline's CommandId (upper case), or `None` for the pool.
type Key = (String, Option<String>);

/// The client's streams of a session's PowerShell shells, as the command policy follows
/// them.
#[derive(Debug, Default)]
pub(crate) struct PolicyStreams {
    streams: HashMap<Key, Followed>,
    /// The streams the last [`PolicyStreams::read`] touched: refused together.
    touched: Vec<Key>,
}

#[derive(Debug)]
enum Followed {
    Reading(StreamAssembler),
    /// A pipeline on it was refused: nothing more goes through.
    Refused,
}

/// What one request asks a PowerShell shell to run.
#[derive(Debug)]
pub(crate) enum Asked {
    /// No pipeline completes in it.
    Nothing,
    /// The commands of the pipelines it completes.
    Pipelines(Vec<PsCommand>),
    /// It cannot be read; why.
    Unreadable(String),
    /// It continues a stream on which a pipeline was refused; which.
    Closed(String),
}

impl PolicyStreams {
    /// Reads what `info` (whose body is `plain`) sends to a PowerShell shell;
    /// `compressed` when the shell's streams are.
    pub(crate) fn read(&mut self, info: &RequestInfo, plain: &[u8], compressed: bool) -> Asked {
        self.touched.clear();
        let shell = info.shell_id.clone().unwrap_or_default();
        let action = info.action_name();
        let is = |name: &str| action.eq_ignore_ascii_case(name);
        if is("Delete") {
            self.streams.retain(|(s, _), _| *s != shell);
            return Asked::Nothing;
        }
        let mut asked = Vec::new();
        if is("Command") {
            let arguments = info.command_line.as_deref().unwrap_or_default();
            let Some(bytes) = decode_base64(arguments) else {
                return Asked::Unreadable("the Command's arguments are not base64".into());
            };
            let Some(command_id) = info.command_id.as_deref() else {
                // Nothing to follow the pipeline's stream by: it must be whole here.
                return match read_whole(&bytes, &mut asked) {
                    Err(why) => Asked::Unreadable(why),
                    Ok(false) => Asked::Unreadable(
                        "a pipeline that continues in Sends, on a Command without a CommandId to follow it by".into(),
                    ),
                    Ok(true) if asked.is_empty() => Asked::Unreadable("the Command carries no pipeline".into()),
                    Ok(true) => Asked::Pipelines(asked),
                };
            };
            let key = (shell, Some(command_id.to_ascii_uppercase()));
            // A Command starts its pipeline's stream afresh, unless one was refused on it.
            if matches!(self.streams.get(&key), Some(Followed::Reading(_))) {
                self.streams.remove(&key);
            }
            if let Err(why) = self.feed(key.clone(), &bytes, &mut asked) {
                return Asked::Unreadable(why);
            }
            if asked.is_empty() && !self.streams.contains_key(&key) {
                return Asked::Unreadable("the Command carries no pipeline".into());
            }
        } else if is("Send") {
            let io = match wsman::shell_io(plain) {
                Ok(io) => io,
                Err(e) => return Asked::Unreadable(format!("the Send's streams cannot be read: {e}")),
            };
            if io.streams.len() != stream_elements(plain) {
                return Asked::Unreadable("a Send stream is not base64".into());
            }
            for chunk in &io.streams {
                let command_id = chunk.command_id.as_deref().or(info.command_id.as_deref());
                let key = (shell.clone(), command_id.map(str::to_ascii_uppercase));
                let data = if compressed {
                    match decompress_stream(&chunk.data, BOUND) {
                        Ok(plain) => plain,
                        Err(e) => return Asked::Unreadable(format!("a compressed Send stream: {e}")),
                    }
                } else {
                    chunk.data.clone()
                };
                if let Err(why) = self.feed(key, &data, &mut asked) {
                    return Asked::Unreadable(why);
                }
            }
        } else if is("Create") || is("Connect") || is("Reconnect") {
            // A pool's opening and reconnecting messages travel in creationXml and
            // connectXml: a pipeline there would run as one sent in a Send.
            for text in opening_xml(plain) {
                let Some(bytes) = decode_base64(&text) else {
                    return Asked::Unreadable("the shell's creationXml or connectXml is not base64".into());
                };
                match read_whole(&bytes, &mut asked) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Asked::Unreadable("the shell's creationXml or connectXml ends inside a message".into())
                    }
                    Err(why) => return Asked::Unreadable(why),
                }
            }
        }
        if let Some(refused) = self
            .touched
            .iter()
            .find(|k| matches!(self.streams.get(*k), Some(Followed::Refused)))
        {
            return Asked::Closed(format!(
                "a pipeline on {} was refused before: nothing more is sent on it",
                refused.1.as_deref().unwrap_or("the runspace pool")
            ));
        }
        if asked.is_empty() {
            Asked::Nothing
        } else {
            Asked::Pipelines(asked)
        }
    }

    /// The streams the last read touched were refused: so is all that follows on them.
    pub(crate) fn refuse_touched(&mut self) {
        for key in self.touched.drain(..) {
            self.streams.insert(key, Followed::Refused);
        }
    }

    /// Appends `bytes` to the stream `key`, adding the commands of the pipelines they
    /// complete to `asked`.
    fn feed(&mut self, key: Key, bytes: &[u8], asked: &mut Vec<PsCommand>) -> Result<(), String> {
        self.touched.push(key.clone());
        let held: usize = self.held();
        let followed = self
            .streams
            .entry(key.clone())
            .or_insert_with(|| Followed::Reading(StreamAssembler::strict()));
        let Followed::Reading(assembler) = followed else {
            return Ok(());
        };
        if held + bytes.len() > MAX_HELD {
            return Err(format!(
                "the session's PowerShell streams hold more than {MAX_HELD} bytes unread"
            ));
        }
        let pushed = assembler.push(bytes, BOUND).map_err(|e| e.to_string())?;
        if let Some(dropped) = pushed.dropped.first() {
            return Err(dropped.to_string());
        }
        if assembler.held() == 0 {
            self.streams.remove(&key);
        }
        for message in pushed.messages.iter().filter(|m| m.message_type == CREATE_PIPELINE) {
            asked.extend(commands_of(&message.data)?);
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.streams
            .values()
            .map(|f| match f {
                Followed::Reading(a) => a.held(),
                Followed::Refused => 0,
            })
            .sum()
    }
}

/// Reads `bytes` that stand alone, adding the commands of their pipelines to `asked`;
/// `false` when they end inside a message.
fn read_whole(bytes: &[u8], asked: &mut Vec<PsCommand>) -> Result<bool, String> {
    let mut once = StreamAssembler::strict();
    let pushed = once.push(bytes, BOUND).map_err(|e| e.to_string())?;
    if let Some(dropped) = pushed.dropped.first() {
        return Err(dropped.to_string());
    }
    for message in pushed.messages.iter().filter(|m| m.message_type == CREATE_PIPELINE) {
        asked.extend(commands_of(&message.data)?);
    }
    Ok(once.held() == 0)
}

/// A CREATE_PIPELINE's commands, every statement of `Cmds` and `ExtraCmds`.
fn commands_of(data: &[u8]) -> Result<Vec<PsCommand>, String> {
    let pipeline = Pipeline::parse_strict(data).ok_or_else(|| {
        "a CREATE_PIPELINE the relay cannot read as PowerShell would: malformed CLIXML, no command, or a \
         construct it does not judge (an object reference, CDATA, a list other than LST, a property \
         spelled otherwise or given twice)"
            .to_string()
    })?;
    let mut commands = Vec::new();
    for command in pipeline.commands() {
        if command.name.is_empty() {
            return Err("a pipeline command without a name".into());
        }
        let mut arguments = Vec::new();
        for Parameter { name, value } in &command.parameters {
            // The reader names what is not a primitive value: a script block, a
            // hashtable or another object is code or structure, not a literal.
            if matches!(value.as_deref(), Some("<object>" | "<bytes>")) {
                return Err(format!(
                    "{} is given an object (a script block, a hashtable...) as {}, not a literal value",
                    command.name,
                    name.as_deref()
                        .map_or_else(|| "a positional argument".to_string(), |n| format!("-{n}"))
                ));
            }
            arguments.push(match (name, value) {
                (Some(name), value) => Argument::Parameter {
                    name: name.clone(),
                    value: value.clone(),
                },
                (None, value) => Argument::Value(value.clone().unwrap_or_default()),
            });
        }
        commands.push(PsCommand {
            name: command.name.clone(),
            is_script: command.is_script,
            arguments,
        });
    }
    Ok(commands)
}

/// How many elements named `Stream` the body holds: each must be one the relay read.
fn stream_elements(xml: &[u8]) -> usize {
    let mut reader = Reader::from_reader(xml);
    let mut count = 0;
    loop {
        match reader.read_event() {
            Ok(XmlEvent::Start(e) | XmlEvent::Empty(e)) if e.local_name().as_ref() == b"Stream" => count += 1,
            Ok(XmlEvent::Eof) | Err(_) => return count,
            Ok(_) => {}
        }
    }
}

/// The text of every `creationXml` and `connectXml` element.
fn opening_xml(xml: &[u8]) -> Vec<String> {
    let mut reader = Reader::from_reader(xml);
    let mut found = Vec::new();
    let mut open: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(XmlEvent::Start(e)) if matches!(e.local_name().as_ref(), b"creationXml" | b"connectXml") => {
                open = Some(String::new());
            }
            Ok(XmlEvent::Text(t)) => {
                if let (Some(text), Ok(s)) = (open.as_mut(), t.unescape()) {
                    text.push_str(&s);
                }
            }
            Ok(XmlEvent::End(_)) => found.extend(open.take()),
            Ok(XmlEvent::Eof) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const START: u8 = 1;
    const END: u8 = 2;

    fn fragment(object_id: u64, fragment_id: u64, flags: u8, blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&object_id.to_be_bytes());
        out.extend_from_slice(&fragment_id.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        out.extend_from_slice(blob);
        out
    }

    fn message(xml: &str) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&CREATE_PIPELINE.to_le_bytes());
        m.extend_from_slice(&[0x11; 32]);
        m.extend_from_slice(xml.as_bytes());
        m
    }

    fn pipeline(commands: &[(&str, bool, &str)]) -> String {
        let cmds: String = commands
            .iter()
            .map(|(name, script, args)| {
                format!(
                    "<Obj RefId=\"8\"><MS><S N=\"Cmd\">{name}</S><B N=\"IsScript\">{script}</B>\
                     <Obj N=\"Args\" RefId=\"12\"><LST>{args}</LST></Obj></MS></Obj>"
                )
            })
            .collect();
        format!("<Obj RefId=\"0\"><MS><Obj N=\"PowerShell\" RefId=\"4\"><MS><Obj N=\"Cmds\" RefId=\"7\"><LST>{cmds}</LST></Obj></MS></Obj></MS></Obj>")
    }

    const NAME_SPOOLER: &str = "<Obj RefId=\"13\"><MS><S N=\"N\">Name</S><S N=\"V\">Spooler</S></MS></Obj>";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn command(command_id: Option<&str>, arguments: &[u8]) -> RequestInfo {
        RequestInfo {
            action: "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command".into(),
            shell_id: Some("S1".into()),
            command_id: command_id.map(Into::into),
            command_line: Some(b64(arguments)),
            ..RequestInfo::default()
        }
    }

    fn send(command_id: &str, data: &[u8]) -> (RequestInfo, Vec<u8>) {
        let info = RequestInfo {
            action: "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send".into(),
            shell_id: Some("S1".into()),
            ..RequestInfo::default()
        };
        let xml = format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Header/><s:Body><rsp:Send>\
             <rsp:Stream Name=\"stdin\" CommandId=\"{command_id}\">{}</rsp:Stream></rsp:Send></s:Body></s:Envelope>",
            b64(data)
        );
        (info, xml.into_bytes())
    }

    fn names(asked: Asked) -> Vec<String> {
        match asked {
            Asked::Pipelines(commands) => commands.into_iter().map(|c| c.name).collect(),
            other => panic!("no pipeline: {other:?}"),
        }
    }

    fn unreadable(asked: Asked) -> String {
        match asked {
            Asked::Unreadable(why) => why,
            other => panic!("read: {other:?}"),
        }
    }

    #[test]
    fn a_whole_pipeline_in_the_command_is_read() {
        let xml = pipeline(&[("Restart-Service", false, NAME_SPOOLER), ("Out-Default", false, "")]);
        let mut streams = PolicyStreams::default();
        let asked = streams.read(
            &command(Some("C1"), &fragment(9, 0, START | END, &message(&xml))),
            b"",
            false,
        );
        let Asked::Pipelines(commands) = asked else {
            panic!("{asked:?}")
        };
        assert_eq!(commands[0].name, "Restart-Service");
        assert_eq!(
            commands[0].arguments,
            [Argument::Parameter {
                name: "Name".into(),
                value: Some("Spooler".into())
            }]
        );
        assert_eq!(commands[1].name, "Out-Default");
    }

    #[test]
    fn a_pipeline_continued_in_sends_is_read_when_whole() {
        let m = message(&pipeline(&[("Stop-Computer", false, "")]));
        let (a, b) = m.split_at(m.len() / 2);
        let mut streams = PolicyStreams::default();
        let first = streams.read(&command(Some("c1"), &fragment(4, 0, START, a)), b"", false);
        assert!(matches!(first, Asked::Nothing), "{first:?}");
        let (info, xml) = send("C1", &fragment(4, 1, END, b));
        assert_eq!(names(streams.read(&info, &xml, false)), ["Stop-Computer"]);
        // Refused: what follows on that pipeline is refused too.
        streams.refuse_touched();
        let (info, xml) = send(
            "C1",
            &fragment(5, 0, START | END, &message(&pipeline(&[("Get-Service", false, "")]))),
        );
        assert!(matches!(streams.read(&info, &xml, false), Asked::Closed(_)));
        let again = streams.read(&command(Some("C1"), &fragment(6, 0, START | END, &m)), b"", false);
        assert!(matches!(again, Asked::Closed(_)), "{again:?}");
    }

    #[test]
    fn what_cannot_be_followed_is_unreadable() {
        let m = message(&pipeline(&[("Get-Service", false, "")]));
        let (a, b) = m.split_at(10);
        let mut streams = PolicyStreams::default();
        // A continuation the relay cannot follow by CommandId.
        let why = unreadable(streams.read(&command(None, &fragment(1, 0, START, a)), b"", false));
        assert!(why.contains("without a CommandId"), "{why}");
        // Not a pipeline at all.
        let other = fragment(1, 0, START | END, &[7u8; 48]);
        assert!(unreadable(streams.read(&command(Some("C2"), &other), b"", false)).contains("no pipeline"));
        // A fragment sent again with other bytes is not taken as a retransmit.
        streams.read(&command(Some("C3"), &fragment(2, 0, START, a)), b"", false);
        let (info, xml) = send(
            "C3",
            &[fragment(2, 0, START, b"other"), fragment(2, 1, END, b)].concat(),
        );
        assert!(unreadable(streams.read(&info, &xml, false)).contains("not read"));
        // A message whose ObjectId was used before.
        let (info, xml) = send(
            "C4",
            &[fragment(3, 0, START | END, &m), fragment(3, 0, START | END, &m)].concat(),
        );
        assert!(unreadable(streams.read(&info, &xml, false)).contains("put together before"));
        // CLIXML that does not read to its end, and objects as values.
        let broken = message("<Obj><MS><Obj N=\"Cmds\"><LST>");
        let why = unreadable(streams.read(&command(Some("C5"), &fragment(7, 0, START | END, &broken)), b"", false));
        assert!(why.contains("malformed CLIXML"), "{why}");
        let sbk = "<Obj RefId=\"13\"><MS><S N=\"N\">ScriptBlock</S><SBK N=\"V\">Stop-Computer</SBK></MS></Obj>";
        let xml = pipeline(&[("Invoke-Command", false, sbk)]);
        let why = unreadable(streams.read(
            &command(Some("C6"), &fragment(8, 0, START | END, &message(&xml))),
            b"",
            false,
        ));
        assert!(why.contains("an object"), "{why}");
        // A stream that is no base64.
        let (info, _) = send("C7", b"");
        let xml = b"<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Body><rsp:Send>\
             <rsp:Stream Name=\"stdin\">AAA*</rsp:Stream></rsp:Send></s:Body></s:Envelope>";
        assert!(unreadable(streams.read(&info, xml, false)).contains("not base64"));
    }

    /// A compressed shell's stream as WinRM frames it, each chunk stored raw (both sizes equal).
    fn stored(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(65_536) {
            let size = ((chunk.len() - 1) as u16).to_le_bytes();
            out.extend_from_slice(&size);
            out.extend_from_slice(&size);
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn a_compressed_shells_sends_are_read_decompressed() {
        let m = message(&pipeline(&[("Stop-Computer", false, "")]));
        let (a, b) = m.split_at(50);
        let mut streams = PolicyStreams::default();
        assert!(matches!(
            streams.read(&command(Some("C1"), &fragment(4, 0, START, a)), b"", true),
            Asked::Nothing
        ));
        let (info, xml) = send("C1", &stored(&fragment(4, 1, END, b)));
        assert_eq!(names(streams.read(&info, &xml, true)), ["Stop-Computer"]);
        // The same bytes not framed as the shell compresses them: refused, not skipped.
        let mut streams = PolicyStreams::default();
        let (info, xml) = send("C2", &[0xFF; 8]);
        assert!(unreadable(streams.read(&info, &xml, true)).starts_with("a compressed Send stream"));
    }

    #[test]
    fn a_command_without_command_id_leaves_the_pool_stream_alone() {
        let m = message(&pipeline(&[("Stop-Computer", false, "")]));
        let (a, b) = m.split_at(30);
        let mut streams = PolicyStreams::default();
        let (mut info, xml) = send("x", &fragment(3, 0, START, a));
        let pool_xml = String::from_utf8(xml).unwrap().replace(" CommandId=\"x\"", "");
        info.command_id = None;
        assert!(matches!(
            streams.read(&info, pool_xml.as_bytes(), false),
            Asked::Nothing
        ));
        let whole = fragment(4, 0, START | END, &message(&pipeline(&[("Get-Service", false, "")])));
        assert_eq!(names(streams.read(&command(None, &whole), b"", false)), ["Get-Service"]);
        let (_, xml) = send("x", &fragment(3, 1, END, b));
        let rest = String::from_utf8(xml).unwrap().replace(" CommandId=\"x\"", "");
        assert_eq!(names(streams.read(&info, rest.as_bytes(), false)), ["Stop-Computer"]);
    }

    #[test]
    fn a_pipeline_in_creation_xml_is_read() {
        let m = message(&pipeline(&[("Stop-Computer", false, "")]));
        let xml = format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body><rsp:Shell \
             xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><creationXml \
             xmlns=\"http://schemas.microsoft.com/powershell\">{}</creationXml></rsp:Shell></s:Body></s:Envelope>",
            b64(&fragment(1, 0, START | END, &m))
        );
        let info = RequestInfo {
            action: "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create".into(),
            ..RequestInfo::default()
        };
        assert_eq!(
            names(PolicyStreams::default().read(&info, xml.as_bytes(), false)),
            ["Stop-Computer"]
        );
    }
}
