//! Shell input and output inside envelopes, for session transcripts: the base64
//! `rsp:Stream`s of a Send request or a Receive response, and a Signal's code.

use base64::Engine as _;

use super::scan::{attr, is_xml_space, path_is, scan, Item, Ns};
use super::{trimmed, WsmanError, BODY, ENVELOPE};

/// One `rsp:Stream` element, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    /// `stdin`, `stdout`, `stderr`, or for PowerShell `pr` and the like.
    pub name: String,
    pub command_id: Option<String>,
    /// `End="true"`: nothing follows on this stream.
    pub end: bool,
    pub data: Vec<u8>,
}

/// The shell I/O one envelope carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellIo {
    /// In document order; a stream whose text is no base64 is left out.
    pub streams: Vec<StreamChunk>,
    /// `rsp:Signal/rsp:Code`, e.g. `http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate`.
    pub signal: Option<String>,
}

/// Reads the streams of `rsp:Send` (a request) or `rsp:ReceiveResponse` (a response), and
/// the code of `rsp:Signal`.
pub fn shell_io(xml: &[u8]) -> Result<ShellIo, WsmanError> {
    const SEND: (Ns, &str) = (Ns::Shell, "Send");
    const RECEIVED: (Ns, &str) = (Ns::Shell, "ReceiveResponse");
    const STREAM: (Ns, &str) = (Ns::Shell, "Stream");
    const SIGNAL: (Ns, &str) = (Ns::Shell, "Signal");
    const CODE: (Ns, &str) = (Ns::Shell, "Code");

    let mut io = ShellIo::default();
    let mut open: Option<(StreamChunk, String)> = None;
    let mut code: Option<String> = None;
    scan(xml, |path, item| {
        match item {
            Item::Start { tag, .. } => {
                if path_is(path, &[ENVELOPE, BODY, SEND, STREAM]) || path_is(path, &[ENVELOPE, BODY, RECEIVED, STREAM])
                {
                    let chunk = StreamChunk {
                        name: attr(tag, "Name")?.map(trimmed).unwrap_or_default(),
                        command_id: attr(tag, "CommandId")?.map(trimmed),
                        end: attr(tag, "End")?
                            .is_some_and(|e| e.trim_matches(is_xml_space).eq_ignore_ascii_case("true")),
                        data: Vec::new(),
                    };
                    open = Some((chunk, String::new()));
                } else if path_is(path, &[ENVELOPE, BODY, SIGNAL, CODE]) {
                    code = Some(String::new());
                }
            }
            Item::Text(text) => {
                if let Some((_, b64)) = open.as_mut().filter(|_| path.len() == 4) {
                    b64.push_str(text);
                } else if let Some(code) = code.as_mut().filter(|_| path_is(path, &[ENVELOPE, BODY, SIGNAL, CODE])) {
                    code.push_str(text);
                }
            }
            Item::End { .. } => {
                if path.len() == 4 {
                    if let Some((mut chunk, b64)) = open.take() {
                        if let Ok(data) = decode_stream_text(&b64) {
                            chunk.data = data;
                            io.streams.push(chunk);
                        }
                    }
                    if let Some(text) = code.take() {
                        io.signal = Some(trimmed(text));
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(io)
}

/// A stream's base64 text. Clients write it on one line: decoded as it is, unless it
/// holds XML white space, which is dropped first. Building the compact copy a
/// character at a time cost the PowerShell output path a twentieth of its CPU.
fn decode_stream_text(b64: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let is_space = |b: &u8| is_xml_space(char::from(*b));
    if !b64.as_bytes().iter().any(is_space) {
        return base64::engine::general_purpose::STANDARD.decode(b64);
    }
    let compact: Vec<u8> = b64.bytes().filter(|b| !is_space(b)).collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
                      xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"";

    fn envelope(body: &str) -> Vec<u8> {
        format!("<s:Envelope {NS}><s:Header/><s:Body>{body}</s:Body></s:Envelope>").into_bytes()
    }

    #[test]
    fn receive_streams_in_order_with_their_command_and_end() {
        let xml = envelope(
            "<rsp:ReceiveResponse>\
             <rsp:Stream Name=\"stdout\" CommandId=\"C1\">aGVsbG8K</rsp:Stream>\
             <rsp:Stream Name=\"stderr\" CommandId=\"C1\">b29w\r\ncw==</rsp:Stream>\
             <rsp:Stream Name=\"stdout\" CommandId=\"C1\" End=\"true\"></rsp:Stream>\
             <rsp:Stream Name=\"stdout\" CommandId=\"C1\">not base64!</rsp:Stream>\
             <rsp:CommandState CommandId=\"C1\" State=\"x/Done\"><rsp:ExitCode>0</rsp:ExitCode></rsp:CommandState>\
             </rsp:ReceiveResponse>",
        );
        let io = shell_io(&xml).unwrap();
        let got: Vec<(&str, &[u8], bool)> = io
            .streams
            .iter()
            .map(|s| (s.name.as_str(), s.data.as_slice(), s.end))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", b"hello\n".as_slice(), false),
                ("stderr", b"oops".as_slice(), false),
                ("stdout", b"".as_slice(), true)
            ]
        );
        assert!(io.streams.iter().all(|s| s.command_id.as_deref() == Some("C1")));
        assert_eq!(io.signal, None);
    }

    #[test]
    fn send_stdin_and_signal_code() {
        let xml = envelope(
            "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"C2\" End=\"TRUE\">eWVzCg==</rsp:Stream></rsp:Send>",
        );
        let io = shell_io(&xml).unwrap();
        assert_eq!(
            io.streams,
            [StreamChunk {
                name: "stdin".into(),
                command_id: Some("C2".into()),
                end: true,
                data: b"yes\n".to_vec()
            }]
        );
        let xml = envelope(
            "<rsp:Signal CommandId=\"C2\"><rsp:Code> http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate </rsp:Code></rsp:Signal>",
        );
        assert_eq!(
            shell_io(&xml).unwrap().signal.as_deref(),
            Some("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate")
        );
        // Streams elsewhere (another namespace, another place) are not shell I/O.
        let xml = envelope("<rsp:Command><rsp:Stream Name=\"stdout\">aGk=</rsp:Stream></rsp:Command>");
        assert!(shell_io(&xml).unwrap().streams.is_empty());
        assert!(shell_io(b"<x/>").is_err());
    }
}
