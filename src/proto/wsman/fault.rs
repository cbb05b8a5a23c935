//! SOAP 1.2 faults shaped like the ones Windows sends, so that pywinrm,
//! pypsrp and PowerShell show the relay's message the way they show a
//! target's.

use std::fmt::Write as _;

/// The faults the relay itself raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Policy refused the request (or the shell belongs to someone else).
    AccessDenied,
    /// Nothing to report within OperationTimeout; clients poll again.
    TimedOut,
    /// The target could not be reached or refused the delegated credentials.
    DestinationUnreachable,
    /// The envelope exceeds the configured size limit.
    EncodingLimit,
    /// Unknown ShellId or CommandId.
    InvalidSelectors,
    /// A bug or unexpected state in the relay.
    InternalError,
    /// Too many shells or requests for this user.
    QuotaLimit,
}

const WSMAN_FAULT_ACTION: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";
const ADDRESSING_FAULT_ACTION: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault";
const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

impl FaultKind {
    /// The f:WSManFault Code Windows uses for this fault (decimal on the wire).
    pub fn wsman_code(self) -> u64 {
        match self {
            // ERROR_ACCESS_DENIED.
            FaultKind::AccessDenied => 5,
            // ERROR_WSMAN_OPERATION_TIMEDOUT, 0x80338029.
            FaultKind::TimedOut => 2150858793,
            // ERROR_WSMAN_DESTINATION_UNREACHABLE, 0x80338012.
            FaultKind::DestinationUnreachable => 2150858770,
            // ERROR_WSMAN_ENCODING_LIMIT, 0x80338035.
            FaultKind::EncodingLimit => 2150858805,
            // ERROR_WSMAN_UNEXPECTED_SELECTORS, 0x8033805B: what Windows sends
            // with w:InvalidSelectors for an unknown ShellId or CommandId.
            FaultKind::InvalidSelectors => 2150858843,
            // ERROR_INTERNAL_ERROR.
            FaultKind::InternalError => 1359,
            // ERROR_WSMAN_QUOTA_LIMIT, 0x8033803F.
            FaultKind::QuotaLimit => 2150858815,
        }
    }

    /// SOAP Code value: whose fault it is.
    fn code(self) -> &'static str {
        match self {
            FaultKind::TimedOut | FaultKind::InternalError => "s:Receiver",
            _ => "s:Sender",
        }
    }

    /// Subcode QName, with the prefix declared on the envelope.
    fn subcode(self) -> &'static str {
        match self {
            FaultKind::AccessDenied => "w:AccessDenied",
            FaultKind::TimedOut => "w:TimedOut",
            FaultKind::DestinationUnreachable => "a:DestinationUnreachable",
            FaultKind::EncodingLimit => "w:EncodingLimit",
            FaultKind::InvalidSelectors => "w:InvalidSelectors",
            FaultKind::InternalError => "w:InternalError",
            FaultKind::QuotaLimit => "w:QuotaLimit",
        }
    }

    fn action(self) -> &'static str {
        match self {
            FaultKind::DestinationUnreachable => ADDRESSING_FAULT_ACTION,
            _ => WSMAN_FAULT_ACTION,
        }
    }
}

/// A complete SOAP 1.2 fault envelope like Windows sends. `message` goes into
/// both s:Reason/s:Text (pywinrm shows that) and f:Message (pypsrp and
/// PowerShell show that).
pub fn fault_envelope(kind: FaultKind, relates_to: Option<&str>, machine: &str, message: &str) -> Vec<u8> {
    let message = xml_escape(message);
    let mut x = String::with_capacity(1400 + 2 * message.len());
    x.push_str(
        "<s:Envelope xml:lang=\"en-US\" \
         xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\">",
    );
    let _ = write!(
        x,
        "<s:Header><a:Action>{}</a:Action><a:MessageID>{}</a:MessageID><a:To>{ANONYMOUS}</a:To>",
        kind.action(),
        new_message_id()
    );
    if let Some(r) = relates_to {
        let _ = write!(x, "<a:RelatesTo>{}</a:RelatesTo>", xml_escape(r));
    }
    let _ = write!(
        x,
        "</s:Header><s:Body><s:Fault>\
         <s:Code><s:Value>{}</s:Value><s:Subcode><s:Value>{}</s:Value></s:Subcode></s:Code>\
         <s:Reason><s:Text xml:lang=\"en-US\">{message}</s:Text></s:Reason>\
         <s:Detail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" \
         Code=\"{}\" Machine=\"{}\"><f:Message>{message}</f:Message></f:WSManFault></s:Detail>\
         </s:Fault></s:Body></s:Envelope>",
        kind.code(),
        kind.subcode(),
        kind.wsman_code(),
        xml_escape(machine),
    );
    x.into_bytes()
}

/// A fresh `uuid:` message id (random UUID v4, upper case like Windows).
pub fn new_message_id() -> String {
    let mut s = String::with_capacity(41);
    push_message_id(&mut s);
    s
}

/// Appends a fresh `uuid:` message id to `out`, for builders that reuse one buffer.
pub(crate) fn push_message_id(out: &mut String) {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant bits 10: a standard UUID
    out.push_str("uuid:");
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02X}");
    }
}

/// Escapes text for element content and quoted attributes, dropping
/// characters XML 1.0 cannot carry at all (a NUL in a message would otherwise
/// make the whole fault unparseable).
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    push_escaped(&mut out, s);
    out
}

/// [`xml_escape`] appending to `out`.
pub(crate) fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Keep CR from being normalised away by the receiving parser.
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}
