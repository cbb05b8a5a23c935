//! The client side of WinRS: the envelopes a WinRM client sends to run one command in a
//! cmd shell (Create, Command, Receive until the command is done, Signal terminate,
//! Delete), and the Receive response read back into the caller's output buffers.
//!
//! One [`WinrsRequests`] per shell builds every envelope into the same buffer, so a
//! session that runs many commands does not allocate an envelope per request.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;

use super::fault::{push_escaped, push_message_id};
use super::scan::{attr, is_xml_space, path_is, scan, Item, Ns};
use super::{WsmanError, BODY, DELETE_ACTION, ENVELOPE};

pub const CMD_RESOURCE_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
const CREATE_ACTION: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
const COMMAND_ACTION: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
const RECEIVE_ACTION: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
const SIGNAL_ACTION: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
const TERMINATE_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";
const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

/// The largest response asked for: WinRM's default `MaxEnvelopeSizekb` (500), so that a
/// chatty command needs as few Receive round trips as the service allows.
pub const CLIENT_MAX_ENVELOPE_SIZE: usize = 512_000;

/// How long Create, Command, Signal and Delete may take on the service.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// UTF-8: output comes back in the encoding the client decodes.
const UTF8_CODEPAGE: &str = "65001";

/// Builds the envelopes of one shell on one endpoint into one reused buffer.
pub struct WinrsRequests {
    /// `wsa:To`, escaped once.
    to: String,
    buffer: String,
}

/// The header fields that differ between WinRS requests.
struct Header<'a> {
    action: &'a str,
    shell_id: Option<&'a str>,
    timeout: Duration,
    options: &'a [(&'a str, &'a str)],
}

impl WinrsRequests {
    /// Requests addressed to `to` (the endpoint's URL).
    pub fn new(to: &str) -> WinrsRequests {
        let mut escaped = String::with_capacity(to.len());
        push_escaped(&mut escaped, to);
        WinrsRequests {
            to: escaped,
            buffer: String::with_capacity(4096),
        }
    }

    /// Create a cmd shell with stdin, stdout and stderr, its output in UTF-8.
    pub fn create_shell(&mut self) -> &[u8] {
        self.start(&Header {
            action: CREATE_ACTION,
            shell_id: None,
            timeout: OPERATION_TIMEOUT,
            options: &[("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", UTF8_CODEPAGE)],
        });
        self.buffer.push_str(
            "<s:Body><rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>\
             <rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell></s:Body></s:Envelope>",
        );
        self.buffer.as_bytes()
    }

    /// Run `command` with `arguments` in the shell; cmd.exe receives them joined by spaces.
    pub fn command(&mut self, shell_id: &str, command: &str, arguments: &[String]) -> &[u8] {
        self.start(&Header {
            action: COMMAND_ACTION,
            shell_id: Some(shell_id),
            timeout: OPERATION_TIMEOUT,
            options: &[("WINRS_CONSOLEMODE_STDIN", "TRUE"), ("WINRS_SKIP_CMD_SHELL", "FALSE")],
        });
        self.buffer.push_str("<s:Body><rsp:CommandLine><rsp:Command>");
        push_escaped(&mut self.buffer, command);
        self.buffer.push_str("</rsp:Command>");
        for argument in arguments {
            self.buffer.push_str("<rsp:Arguments>");
            push_escaped(&mut self.buffer, argument);
            self.buffer.push_str("</rsp:Arguments>");
        }
        self.buffer.push_str("</rsp:CommandLine></s:Body></s:Envelope>");
        self.buffer.as_bytes()
    }

    /// Wait up to `timeout` for output or the end of the command.
    pub fn receive(&mut self, shell_id: &str, command_id: &str, timeout: Duration) -> &[u8] {
        self.start(&Header {
            action: RECEIVE_ACTION,
            shell_id: Some(shell_id),
            timeout,
            options: &[],
        });
        self.buffer
            .push_str("<s:Body><rsp:Receive><rsp:DesiredStream CommandId=\"");
        push_escaped(&mut self.buffer, command_id);
        self.buffer
            .push_str("\">stdout stderr</rsp:DesiredStream></rsp:Receive></s:Body></s:Envelope>");
        self.buffer.as_bytes()
    }

    /// Stop the command (it may still run) and free its resources on the service.
    pub fn terminate(&mut self, shell_id: &str, command_id: &str) -> &[u8] {
        self.start(&Header {
            action: SIGNAL_ACTION,
            shell_id: Some(shell_id),
            timeout: OPERATION_TIMEOUT,
            options: &[],
        });
        self.buffer.push_str("<s:Body><rsp:Signal CommandId=\"");
        push_escaped(&mut self.buffer, command_id);
        let _ = write!(
            self.buffer,
            "\"><rsp:Code>{TERMINATE_SIGNAL}</rsp:Code></rsp:Signal></s:Body></s:Envelope>"
        );
        self.buffer.as_bytes()
    }

    /// Delete the shell.
    pub fn delete_shell(&mut self, shell_id: &str) -> &[u8] {
        self.start(&Header {
            action: DELETE_ACTION,
            shell_id: Some(shell_id),
            timeout: OPERATION_TIMEOUT,
            options: &[],
        });
        self.buffer.push_str("<s:Body/></s:Envelope>");
        self.buffer.as_bytes()
    }

    /// Clears the buffer and writes the envelope's start and header.
    fn start(&mut self, header: &Header<'_>) {
        self.buffer.clear();
        push_header(
            &mut self.buffer,
            &self.to,
            CMD_RESOURCE_URI,
            CLIENT_MAX_ENVELOPE_SIZE,
            header,
        );
    }
}

/// The envelope start and header of a request to the resource `resource_uri`
/// (escaped by the caller, like `to`).
fn push_header(out: &mut String, to: &str, resource_uri: &str, max_envelope: usize, header: &Header<'_>) {
    let _ = write!(
        out,
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:wsa=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:wsman=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
         xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Header>\
         <wsa:To>{to}</wsa:To>\
         <wsa:ReplyTo><wsa:Address s:mustUnderstand=\"true\">{ANONYMOUS}</wsa:Address></wsa:ReplyTo>\
         <wsman:MaxEnvelopeSize s:mustUnderstand=\"true\">{max_envelope}</wsman:MaxEnvelopeSize>\
         <wsa:MessageID>"
    );
    push_message_id(out);
    let timeout = header.timeout;
    let _ = write!(
        out,
        "</wsa:MessageID><wsman:Locale xml:lang=\"en-US\" s:mustUnderstand=\"false\"/>\
         <wsman:OperationTimeout>PT{}.{:03}S</wsman:OperationTimeout>\
         <wsman:ResourceURI s:mustUnderstand=\"true\">{resource_uri}</wsman:ResourceURI>\
         <wsa:Action s:mustUnderstand=\"true\">{}</wsa:Action>",
        timeout.as_secs(),
        timeout.subsec_millis(),
        header.action,
    );
    if let Some(shell_id) = header.shell_id {
        out.push_str("<wsman:SelectorSet><wsman:Selector Name=\"ShellId\">");
        push_escaped(out, shell_id);
        out.push_str("</wsman:Selector></wsman:SelectorSet>");
    }
    if !header.options.is_empty() {
        out.push_str("<wsman:OptionSet>");
        for (name, value) in header.options {
            let _ = write!(out, "<wsman:Option Name=\"{name}\">{value}</wsman:Option>");
        }
        out.push_str("</wsman:OptionSet>");
    }
    out.push_str("</s:Header>");
}

/// A WS-Transfer Delete of the shell `shell_id` of resource `resource_uri`, addressed to `to`.
pub(crate) fn delete_request(to: &str, resource_uri: &str, shell_id: &str) -> Vec<u8> {
    let mut out = String::with_capacity(1200);
    let (mut to_escaped, mut uri_escaped) = (String::new(), String::new());
    push_escaped(&mut to_escaped, to);
    push_escaped(&mut uri_escaped, resource_uri);
    let header = Header {
        action: DELETE_ACTION,
        shell_id: Some(shell_id),
        timeout: Duration::from_secs(20),
        options: &[],
    };
    push_header(&mut out, &to_escaped, &uri_escaped, 153_600, &header);
    out.push_str("<s:Body/></s:Envelope>");
    out.into_bytes()
}

/// Where a command stands after one Receive response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandProgress {
    /// The command is done: no more output will come.
    pub done: bool,
    /// Its exit code, once done.
    pub exit_code: Option<i64>,
}

/// Which output stream a `rsp:Stream` carries.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads a Receive response: appends the decoded output of command `command_id` to
/// `stdout` and `stderr` and says whether it is done. Streams of other commands are
/// ignored; a stream that is not valid base64 is an error.
pub fn read_receive_response(
    xml: &[u8],
    command_id: &str,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> Result<CommandProgress, WsmanError> {
    const RECEIVE: (Ns, &str) = (Ns::Shell, "ReceiveResponse");
    const STREAM: (Ns, &str) = (Ns::Shell, "Stream");
    const STATE: (Ns, &str) = (Ns::Shell, "CommandState");
    const EXIT_CODE: (Ns, &str) = (Ns::Shell, "ExitCode");

    let mut progress = CommandProgress::default();
    let mut open_stream: Option<Stream> = None;
    let mut in_exit_code = false;
    let mut text = String::new();
    scan(xml, |path, item| {
        match item {
            Item::Start { tag, .. } => {
                if path_is(path, &[ENVELOPE, BODY, RECEIVE, STREAM]) {
                    let ours = attr(tag, "CommandId")?.is_none_or(|id| id.trim_matches(is_xml_space) == command_id);
                    open_stream = match attr(tag, "Name")?.as_deref().map(|n| n.trim_matches(is_xml_space)) {
                        Some("stdout") if ours => Some(Stream::Stdout),
                        Some("stderr") if ours => Some(Stream::Stderr),
                        _ => None,
                    };
                    text.clear();
                } else if path_is(path, &[ENVELOPE, BODY, RECEIVE, STATE]) {
                    let ours = attr(tag, "CommandId")?.is_none_or(|id| id.trim_matches(is_xml_space) == command_id);
                    let state = attr(tag, "State")?.unwrap_or_default();
                    if ours && state.trim_matches(is_xml_space).ends_with("/CommandState/Done") {
                        progress.done = true;
                    }
                } else if path_is(path, &[ENVELOPE, BODY, RECEIVE, STATE, EXIT_CODE]) {
                    in_exit_code = true;
                    text.clear();
                }
            }
            Item::Text(s) => {
                let depth = path.len();
                if (open_stream.is_some() && depth == 4) || (in_exit_code && depth == 5) {
                    text.push_str(s);
                }
            }
            Item::End { .. } => {
                if path_is(path, &[ENVELOPE, BODY, RECEIVE, STREAM]) {
                    if let Some(stream) = open_stream.take() {
                        let out = match stream {
                            Stream::Stdout => &mut *stdout,
                            Stream::Stderr => &mut *stderr,
                        };
                        // Line-wrapped base64 is still base64.
                        text.retain(|c| !is_xml_space(c));
                        base64::engine::general_purpose::STANDARD
                            .decode_vec(&text, out)
                            .map_err(|e| WsmanError::InvalidStream(e.to_string()))?;
                    }
                } else if in_exit_code && path_is(path, &[ENVELOPE, BODY, RECEIVE, STATE, EXIT_CODE]) {
                    in_exit_code = false;
                    progress.exit_code = text.trim_matches(is_xml_space).parse().ok();
                }
            }
        }
        Ok(())
    })?;
    if !progress.done {
        progress.exit_code = None;
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wsman::{parse_request, parse_response};

    const TO: &str = "http://bastion:5985/wsman/web01?x=<&>";

    #[test]
    fn every_request_parses_back_as_the_relay_reads_it() {
        let mut requests = WinrsRequests::new(TO);
        let create = parse_request(requests.create_shell()).unwrap();
        assert_eq!(create.action_name(), "Create");
        assert_eq!(create.to.as_deref(), Some(TO));
        assert_eq!(create.resource_uri.as_deref(), Some(CMD_RESOURCE_URI));
        assert_eq!(create.max_envelope_size, Some(CLIENT_MAX_ENVELOPE_SIZE));
        assert_eq!(create.operation_timeout, Some(OPERATION_TIMEOUT));
        assert!(create.shell_id_problem().is_none() && create.resource_uri_problem().is_none());

        let arguments = ["/c".to_string(), "echo <a & b>".to_string()];
        let command = parse_request(requests.command("SHELL-1", "cmd.exe", &arguments)).unwrap();
        assert_eq!(command.action_name(), "Command");
        assert_eq!(command.shell_id.as_deref(), Some("SHELL-1"));
        assert_eq!(command.command_line.as_deref(), Some("cmd.exe /c echo <a & b>"));

        let receive = parse_request(requests.receive("SHELL-1", "CMD\"1", Duration::from_millis(20_500))).unwrap();
        assert_eq!(receive.action_name(), "Receive");
        assert_eq!(receive.command_id.as_deref(), Some("CMD\"1"));
        assert_eq!(receive.operation_timeout, Some(Duration::from_millis(20_500)));

        let signal = parse_request(requests.terminate("SHELL-1", "CMD-1")).unwrap();
        assert_eq!(signal.action_name(), "Signal");
        assert_eq!(signal.command_id.as_deref(), Some("CMD-1"));
        assert!(std::str::from_utf8(requests.terminate("S", "C"))
            .unwrap()
            .contains(TERMINATE_SIGNAL));

        let delete = parse_request(requests.delete_shell("SHELL-1")).unwrap();
        assert_eq!(delete.action_name(), "Delete");
        assert_eq!(delete.shell_id.as_deref(), Some("SHELL-1"));
        assert!(delete.shell_id_problem().is_none());
    }

    #[test]
    fn each_request_gets_a_fresh_message_id() {
        let mut requests = WinrsRequests::new(TO);
        let first = parse_request(requests.delete_shell("S")).unwrap().message_id;
        let second = parse_request(requests.delete_shell("S")).unwrap().message_id;
        assert_ne!(first, second);
        assert!(first.is_some_and(|id| id.starts_with("uuid:")));
    }

    #[test]
    fn create_asks_for_utf8_output() {
        let mut requests = WinrsRequests::new(TO);
        let xml = String::from_utf8(requests.create_shell().to_vec()).unwrap();
        assert!(
            xml.contains("<wsman:Option Name=\"WINRS_CODEPAGE\">65001</wsman:Option>"),
            "{xml}"
        );
        assert!(
            xml.contains("<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"),
            "{xml}"
        );
    }

    /// What Windows answers, in pieces, then done with an exit code.
    #[test]
    fn receive_collects_streams_and_the_exit_code() {
        let xml = include_bytes!("testdata/windows_cmd_receive_response.xml");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let progress = read_receive_response(xml, "789B3D38-EDB7-494D-AD3B-3D63B099CD76", &mut out, &mut err).unwrap();
        assert_eq!(
            progress,
            CommandProgress {
                done: true,
                exit_code: Some(0)
            }
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(" Volume in drive C is Windows 2016\r\n"), "{text}");
        assert!(text.ends_with("28,319,084,544 bytes free\r\n"), "{text}");
        assert!(err.is_empty());
        // The same response is what parse_response reads for the relay.
        assert_eq!(parse_response(xml).unwrap().exit_code, Some(0));
    }

    fn receive_response(body: &str) -> Vec<u8> {
        format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Header/><s:Body>\
             <rsp:ReceiveResponse>{body}</rsp:ReceiveResponse></s:Body></s:Envelope>"
        )
        .into_bytes()
    }

    #[test]
    fn receive_appends_and_ignores_other_commands() {
        let xml = receive_response(
            "<rsp:Stream Name=\"stdout\" CommandId=\"C1\">aGVs</rsp:Stream>\
             <rsp:Stream Name=\"stdout\" CommandId=\"OTHER\">eHh4</rsp:Stream>\
             <rsp:Stream Name=\"stderr\" CommandId=\"C1\">b29w\ncw==</rsp:Stream>\
             <rsp:Stream Name=\"stdout\" CommandId=\"C1\" End=\"true\"/>\
             <rsp:CommandState CommandId=\"C1\" State=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running\"/>",
        );
        let (mut out, mut err) = (b"so far: ".to_vec(), Vec::new());
        let progress = read_receive_response(&xml, "C1", &mut out, &mut err).unwrap();
        assert_eq!(progress, CommandProgress::default());
        assert_eq!(out, b"so far: hel");
        assert_eq!(err, b"oops");
    }

    #[test]
    fn a_running_command_has_no_exit_code_and_a_bad_stream_is_an_error() {
        let running = receive_response(
            "<rsp:CommandState CommandId=\"C1\" State=\".../CommandState/Running\"><rsp:ExitCode>3</rsp:ExitCode>\
             </rsp:CommandState>",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            read_receive_response(&running, "C1", &mut out, &mut err).unwrap(),
            CommandProgress::default()
        );
        let done = receive_response(
            "<rsp:CommandState CommandId=\"C1\" State=\"x/CommandState/Done\"><rsp:ExitCode>-2</rsp:ExitCode>\
             </rsp:CommandState>",
        );
        assert_eq!(
            read_receive_response(&done, "C1", &mut out, &mut err).unwrap(),
            CommandProgress {
                done: true,
                exit_code: Some(-2)
            }
        );
        let bad = receive_response("<rsp:Stream Name=\"stdout\" CommandId=\"C1\">not base64!</rsp:Stream>");
        assert!(matches!(
            read_receive_response(&bad, "C1", &mut out, &mut err),
            Err(WsmanError::InvalidStream(_))
        ));
    }
}
