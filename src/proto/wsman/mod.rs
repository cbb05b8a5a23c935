//! WS-Management envelopes: scan requests and responses, rewrite `wsa:To`
//! and the OperationTimeout, build faults, and the client side of WinRS
//! (the requests that run a command, its output read back).
//!
//! Everything is event-based (quick-xml's `NsReader`, no DOM) and matches
//! elements on namespace URI, never on prefix: clients use `s:`, `env:`, `a:`,
//! `wsa:`, `w:`, `wsman:`, `rsp:` and `p:` freely. Input must be UTF-8, may not
//! carry a DTD (so no entity expansion), and may nest at most [`MAX_DEPTH`]
//! elements deep, with at most [`MAX_ATTRIBUTES`] attributes (of which
//! [`MAX_NAMESPACE_DECLARATIONS`] namespace declarations) per element and
//! names of at most [`MAX_NAME_LEN`] bytes.
//!
//! Where a value that drives a policy decision could be read two ways (two
//! `wsa:To` headers, two ShellId selectors, two `CommandLine`s), parsing fails
//! instead of guessing: the relay and the target must see the same request.

use std::time::Duration;

use thiserror::Error;

mod delete;
mod duration;
mod fault;
mod identify;
mod rewrite;
mod scan;
mod shell;
mod streams;
mod winrs;

pub use delete::{delete_shell_request, DELETE_ACTION};
pub use duration::parse_duration;
pub use fault::{fault_envelope, new_message_id, FaultKind};
pub use identify::identify_response;
pub use rewrite::{rewrite_request, RewritePoints};
pub use shell::{is_shell_resource, shell_kind, ShellKind};
pub use streams::{shell_io, ShellIo, StreamChunk};
pub use winrs::{read_receive_response, CommandProgress, WinrsRequests, CLIENT_MAX_ENVELOPE_SIZE, CMD_RESOURCE_URI};

use scan::{attr, is_xml_space, path_is, scan, Elem, Item, Ns};

/// Deepest element nesting accepted; real envelopes stay under 12.
pub const MAX_DEPTH: usize = 64;
/// Most attributes on one element; real envelopes carry at most a dozen (the
/// root's namespace declarations).
pub const MAX_ATTRIBUTES: usize = 64;
/// Most namespace declarations on one element.
pub const MAX_NAMESPACE_DECLARATIONS: usize = 32;
/// Longest qualified element or attribute name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WsmanError {
    #[error("envelope is empty")]
    Empty,
    #[error("envelope is not valid utf-8")]
    NotUtf8,
    #[error("malformed xml {0}")]
    Xml(String),
    #[error("dtd and entity declarations are not allowed")]
    Doctype,
    #[error("xml nests deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("an element carries more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("an element declares more than {MAX_NAMESPACE_DECLARATIONS} namespaces")]
    TooManyNamespaces,
    #[error("an element or attribute name is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("root element is not a soap 1.2 envelope")]
    NotSoapEnvelope,
    #[error("envelope has more than one {0}")]
    Duplicate(&'static str),
    #[error("conflicting {0} values")]
    Conflict(&'static str),
    #[error("missing wsa:Action header")]
    MissingAction,
    #[error("identify request carries other content")]
    AmbiguousIdentify,
    #[error("invalid operation timeout {0:?}")]
    InvalidTimeout(String),
    #[error("invalid MaxEnvelopeSize {0:?}: expected a number of bytes")]
    InvalidMaxEnvelopeSize(String),
    #[error("an output stream is not valid base64: {0}")]
    InvalidStream(String),
}

/// What the relay needs to know about a request before forwarding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// Full wsa:Action URI ("" for Identify).
    pub action: String,
    pub message_id: Option<String>,
    pub to: Option<String>,
    pub resource_uri: Option<String>,
    /// w:SelectorSet/w:Selector[@Name="ShellId"].
    pub shell_id: Option<String>,
    /// Command: rsp:CommandLine/rsp:Command + each rsp:Arguments, joined by single
    /// spaces (an empty rsp:Command, as PSRP sends, is left out).
    pub command_line: Option<String>,
    /// rsp:CommandLine/@CommandId, or Receive/Signal/Send's CommandId attribute.
    pub command_id: Option<String>,
    /// w:OperationTimeout, xs:duration like PT20.000S / PT60S.
    pub operation_timeout: Option<Duration>,
    /// w:MaxEnvelopeSize: the largest response the client accepts, in bytes.
    pub max_envelope_size: Option<usize>,
    /// A Create's rsp:CompressionType header (`xpress` from Windows clients): the
    /// client asks for its shell's streams to be compressed.
    pub compression_type: Option<String>,
    /// Body is wsmid:Identify.
    pub is_identify: bool,
    /// Why the ResourceURI cannot be taken as the one the target acts on,
    /// besides being absent or empty: see [`RequestInfo::resource_uri_problem`].
    pub resource_uri_defect: Option<&'static str>,
    /// Why a ShellId selector is present but cannot be read: see
    /// [`RequestInfo::shell_id_problem`].
    pub shell_id_defect: Option<&'static str>,
    /// Where [`rewrite_request`] edits these very bytes.
    pub rewrite_points: RewritePoints,
}

impl RequestInfo {
    /// Last path segment of the action ("Create", "Command", ...), "Identify"
    /// when `is_identify`.
    pub fn action_name(&self) -> &str {
        if self.is_identify {
            return "Identify";
        }
        let a = self.action.trim_end_matches('/');
        a.rsplit('/').next().unwrap_or(a)
    }

    /// Why the relay cannot tell which resource the request acts on, if so:
    /// anything but exactly one DMTF WS-Man ResourceURI header, non-empty and
    /// plain text. A target that honours a header the relay ignores would act
    /// on a resource no rule was checked against. Identify has none.
    pub fn resource_uri_problem(&self) -> Option<String> {
        if self.is_identify {
            return None;
        }
        let why = match (self.resource_uri_defect, self.resource_uri.as_deref()) {
            (Some(defect), _) => defect,
            (None, None) => "the request has no ResourceURI header",
            (None, Some("")) => "the ResourceURI header is empty",
            (None, Some(_)) => return None,
        };
        Some(format!(
            "{why}: the relay forwards only requests with exactly one ResourceURI header in the WS-Man \
             namespace {}",
            scan::NS_WSMAN
        ))
    }

    /// Why the relay cannot tell which shell the request acts on, if so: a
    /// ShellId selector it cannot read, or none on an action that needs one.
    /// Without a readable ShellId the relay cannot check that the shell
    /// belongs to the caller's session.
    pub fn shell_id_problem(&self) -> Option<String> {
        if let Some(defect) = self.shell_id_defect {
            return Some(format!(
                "{defect}: the relay reads a shell's id only from <w:SelectorSet><w:Selector Name=\"ShellId\">"
            ));
        }
        (self.needs_shell_id() && self.shell_id.as_deref().is_none_or(str::is_empty)).then(|| {
            format!(
                "{} acts on a shell but names none: a ShellId selector is required",
                self.action_name()
            )
        })
    }

    /// The shell operations, and Delete on a shell resource, act on the shell
    /// the ShellId selector names. Judged by the action's last segment and
    /// without regard to case, as the relay names actions everywhere else: an
    /// action URI under another prefix, or spelt differently, that a target may
    /// still dispatch as a shell operation cannot slip past the ownership check.
    pub fn needs_shell_id(&self) -> bool {
        const SHELL_OPERATIONS: [&str; 7] = [
            "Command",
            "Receive",
            "Send",
            "Signal",
            "Connect",
            "Reconnect",
            "Disconnect",
        ];
        if self.is_identify {
            return false;
        }
        let operation = self.action_name();
        if SHELL_OPERATIONS.iter().any(|op| op.eq_ignore_ascii_case(operation)) {
            return true;
        }
        operation.eq_ignore_ascii_case("Delete") && self.resource_uri.as_deref().is_some_and(is_shell_resource)
    }

    /// The largest response the relay accepts from the target for this
    /// request, in bytes of SOAP: the client's MaxEnvelopeSize, at most the
    /// relay's own `relay_max` (also the default), and never below the 8192
    /// bytes WS-Man services require, so that a target's fault about a
    /// smaller size still gets through.
    pub fn response_limit(&self, relay_max: usize) -> usize {
        const MIN_ENVELOPE: usize = 8192;
        self.max_envelope_size
            .map_or(relay_max, |asked| asked.min(relay_max))
            .max(MIN_ENVELOPE)
    }

    /// The OperationTimeout the relay honours: the client's, at most `max`
    /// (a client may ask for up to u64::MAX seconds, which no deadline
    /// arithmetic survives). [`rewrite_request`] tells the target the same.
    pub fn operation_timeout_within(&self, max: Duration) -> Option<Duration> {
        self.operation_timeout.map(|asked| asked.min(max))
    }
}

/// What the relay reads back from a target's response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseInfo {
    pub relates_to: Option<String>,
    /// s:Fault with Code/Subcode/Reason and WSManFault detail.
    pub fault: Option<FaultInfo>,
    /// Create response: rsp:Shell/rsp:ShellId or the ResourceCreated SelectorSet ShellId.
    pub created_shell_id: Option<String>,
    /// Command response rsp:CommandId; for a Receive response, the CommandId
    /// attribute of rsp:CommandState.
    pub command_id: Option<String>,
    /// rsp:CommandState State ends with "/CommandState/Done".
    pub command_done: bool,
    /// rsp:CommandState/rsp:ExitCode.
    pub exit_code: Option<i64>,
    /// The created (or described) rsp:Shell's rsp:CompressionMode:
    /// `XpressCompression` when its streams are compressed, `NoCompression`.
    pub compression_mode: Option<String>,
}

impl ResponseInfo {
    /// Whether the shell this Create response made compresses its streams: as
    /// the target says, else as the client asked (`request_type`, the Create's
    /// rsp:CompressionType).
    pub fn shell_compressed(&self, request_type: Option<&str>) -> bool {
        match self.compression_mode.as_deref() {
            Some(mode) => mode.eq_ignore_ascii_case("XpressCompression"),
            None => request_type.is_some_and(|t| t.eq_ignore_ascii_case("xpress")),
        }
    }
}

/// The parts of a SOAP fault worth logging and acting on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultInfo {
    /// Local name of the first s:Subcode/s:Value, e.g. "TimedOut".
    pub subcode: Option<String>,
    /// f:WSManFault/@Code, e.g. 2150858793.
    pub wsman_code: Option<u64>,
    /// s:Reason/s:Text.
    pub reason: Option<String>,
}

impl FaultInfo {
    /// The Receive poll timeout every client expects and retries; not an error.
    pub fn is_timed_out(&self) -> bool {
        self.wsman_code == Some(FaultKind::TimedOut.wsman_code()) || self.subcode.as_deref() == Some("TimedOut")
    }
}

const ENVELOPE: (Ns, &str) = (Ns::Soap, "Envelope");
const HEADER: (Ns, &str) = (Ns::Soap, "Header");
const BODY: (Ns, &str) = (Ns::Soap, "Body");

/// Stores `value` in an empty slot; a second occurrence is an error.
fn set_once(slot: &mut Option<String>, value: String, what: &'static str) -> Result<(), WsmanError> {
    if slot.is_some() {
        return Err(WsmanError::Duplicate(what));
    }
    *slot = Some(value);
    Ok(())
}

/// Stores `value`; repeating the same value is fine, a different one is not.
fn set_consistent(slot: &mut Option<String>, value: String, what: &'static str) -> Result<(), WsmanError> {
    match slot {
        Some(old) if *old != value => Err(WsmanError::Conflict(what)),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// `s` without surrounding XML whitespace; most values have none, and keep
/// their allocation.
fn trimmed(s: String) -> String {
    let t = s.trim_matches(is_xml_space);
    if t.len() == s.len() {
        s
    } else {
        t.to_string()
    }
}

/// Collects the text of the element that is currently open at `depth`.
#[derive(Default)]
struct Capture {
    depth: usize,
    text: String,
    active: bool,
}

impl Capture {
    fn start(&mut self, depth: usize) {
        self.depth = depth;
        self.text.clear();
        self.active = true;
    }

    fn text(&mut self, path: &[Elem<'_>], s: &str) {
        // Only direct character data counts, not text of nested elements.
        if self.active && path.len() == self.depth {
            self.text.push_str(s);
        }
    }

    /// Returns the captured text when the captured element closes.
    fn end(&mut self, path: &[Elem<'_>]) -> Option<String> {
        if self.active && path.len() == self.depth {
            self.active = false;
            return Some(std::mem::take(&mut self.text));
        }
        None
    }
}

/// Which request field a captured text belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqField {
    Action,
    MessageId,
    To,
    ResourceUri,
    ShellId,
    Timeout,
    MaxEnvelopeSize,
    CompressionType,
    Command,
    Arguments,
}

impl ReqField {
    fn rewritable(self) -> Option<rewrite::Rewritable> {
        match self {
            ReqField::To => Some(rewrite::Rewritable::To),
            ReqField::Timeout => Some(rewrite::Rewritable::OperationTimeout),
            _ => None,
        }
    }
}

/// Scans a request envelope for routing, policy and audit fields.
pub fn parse_request(xml: &[u8]) -> Result<RequestInfo, WsmanError> {
    let mut info = RequestInfo::default();
    let mut action = None;
    let mut timeout = None;
    let mut max_envelope_size = None::<String>;
    let mut cap = Capture::default();
    let mut field = None;
    let mut headers = 0usize;
    let mut bodies = 0usize;
    let mut selector_sets = 0usize;
    let mut body_children = 0usize;
    let mut command = None::<String>;
    let mut arguments: Vec<String> = Vec::new();
    let mut command_lines = 0usize;

    scan(xml, |path, item| {
        match item {
            Item::Start { tag, span, empty } => {
                let depth = path.len();
                if cap.active && depth > cap.depth {
                    // Text split by markup may be read one way here, another there.
                    match field {
                        Some(ReqField::ResourceUri) => {
                            info.resource_uri_defect = Some("the ResourceURI header contains markup")
                        }
                        Some(ReqField::ShellId) => info.shell_id_defect = Some("the ShellId selector contains markup"),
                        _ => {}
                    }
                }
                if path_is(path, &[ENVELOPE, HEADER]) {
                    headers += 1;
                    if headers > 1 {
                        return Err(WsmanError::Duplicate("soap Header"));
                    }
                } else if path_is(path, &[ENVELOPE, BODY]) {
                    bodies += 1;
                    if bodies > 1 {
                        return Err(WsmanError::Duplicate("soap Body"));
                    }
                } else if depth == 3 && path_is(&path[..2], &[ENVELOPE, HEADER]) {
                    let last = &path[2];
                    field = match (last.ns, last.local) {
                        (Ns::Addressing, "Action") => Some(ReqField::Action),
                        (Ns::Addressing, "MessageID") => Some(ReqField::MessageId),
                        (Ns::Addressing, "To") => Some(ReqField::To),
                        (Ns::Wsman, "ResourceURI") => Some(ReqField::ResourceUri),
                        (Ns::Wsman, "OperationTimeout") => Some(ReqField::Timeout),
                        (Ns::Wsman, "MaxEnvelopeSize") => Some(ReqField::MaxEnvelopeSize),
                        (Ns::Shell, "CompressionType") => Some(ReqField::CompressionType),
                        (Ns::Wsman, "SelectorSet") => {
                            selector_sets += 1;
                            if selector_sets > 1 {
                                return Err(WsmanError::Duplicate("w:SelectorSet"));
                            }
                            None
                        }
                        (Ns::Management2005, "ResourceURI") => {
                            info.resource_uri_defect =
                                Some("the ResourceURI header is in the 2005/06 WS-Management namespace");
                            None
                        }
                        (_, "ResourceURI") => {
                            info.resource_uri_defect = Some("a ResourceURI header is outside the WS-Man namespace");
                            None
                        }
                        _ => None,
                    };
                    if field.is_some() {
                        cap.start(depth);
                    }
                    if let Some(which) = field.and_then(ReqField::rewritable) {
                        info.rewrite_points.open(which, tag, span, empty);
                    }
                } else if depth == 4
                    && path_is(&path[..2], &[ENVELOPE, HEADER])
                    && path[2].local == "SelectorSet"
                    && path[3].local == "Selector"
                {
                    match shell_id_selector(path, tag)? {
                        Selector::ShellId => {
                            field = Some(ReqField::ShellId);
                            cap.start(depth);
                        }
                        Selector::Unreadable(defect) => info.shell_id_defect = Some(defect),
                        Selector::Other => {}
                    }
                } else if depth == 3 && path_is(&path[..2], &[ENVELOPE, BODY]) {
                    body_children += 1;
                    let last = &path[2];
                    match (last.ns, last.local) {
                        (Ns::Wsmid, "Identify") => info.is_identify = true,
                        (Ns::Shell, "CommandLine") => {
                            command_lines += 1;
                            if command_lines > 1 {
                                return Err(WsmanError::Duplicate("rsp:CommandLine"));
                            }
                            if let Some(id) = attr(tag, "CommandId")? {
                                set_consistent(&mut info.command_id, trimmed(id), "CommandId")?;
                            }
                        }
                        (Ns::Shell, "Signal") => {
                            if let Some(id) = attr(tag, "CommandId")? {
                                set_consistent(&mut info.command_id, trimmed(id), "CommandId")?;
                            }
                        }
                        _ => {}
                    }
                } else if path_is(
                    path,
                    &[ENVELOPE, BODY, (Ns::Shell, "CommandLine"), (Ns::Shell, "Command")],
                ) {
                    field = Some(ReqField::Command);
                    cap.start(depth);
                } else if path_is(
                    path,
                    &[ENVELOPE, BODY, (Ns::Shell, "CommandLine"), (Ns::Shell, "Arguments")],
                ) {
                    field = Some(ReqField::Arguments);
                    cap.start(depth);
                } else if path_is(
                    path,
                    &[ENVELOPE, BODY, (Ns::Shell, "Receive"), (Ns::Shell, "DesiredStream")],
                ) || path_is(path, &[ENVELOPE, BODY, (Ns::Shell, "Send"), (Ns::Shell, "Stream")])
                {
                    if let Some(id) = attr(tag, "CommandId")? {
                        set_consistent(&mut info.command_id, trimmed(id), "CommandId")?;
                    }
                }
            }
            Item::Text(s) => cap.text(path, s),
            Item::End { span, .. } => {
                if let Some(text) = cap.end(path) {
                    if let Some(which) = field.and_then(ReqField::rewritable) {
                        info.rewrite_points.close(which, span);
                    }
                    match field.take() {
                        Some(ReqField::Action) => set_once(&mut action, trimmed(text), "wsa:Action")?,
                        Some(ReqField::MessageId) => set_once(&mut info.message_id, trimmed(text), "wsa:MessageID")?,
                        Some(ReqField::To) => set_once(&mut info.to, trimmed(text), "wsa:To")?,
                        Some(ReqField::ResourceUri) => {
                            set_once(&mut info.resource_uri, trimmed(text), "w:ResourceURI")?
                        }
                        Some(ReqField::ShellId) => set_once(&mut info.shell_id, trimmed(text), "ShellId selector")?,
                        Some(ReqField::Timeout) => set_once(&mut timeout, text, "w:OperationTimeout")?,
                        Some(ReqField::MaxEnvelopeSize) => {
                            set_once(&mut max_envelope_size, trimmed(text), "w:MaxEnvelopeSize")?
                        }
                        Some(ReqField::CompressionType) => {
                            set_once(&mut info.compression_type, trimmed(text), "rsp:CompressionType")?
                        }
                        Some(ReqField::Command) => set_once(&mut command, text, "rsp:Command")?,
                        Some(ReqField::Arguments) => arguments.push(text),
                        None => {}
                    }
                }
            }
        }
        Ok(())
    })?;

    if let Some(t) = timeout {
        let d = parse_duration(&t).ok_or_else(|| WsmanError::InvalidTimeout(t.chars().take(64).collect()))?;
        info.operation_timeout = Some(d);
    }
    if let Some(size) = max_envelope_size {
        let bytes = size
            .parse()
            .map_err(|_| WsmanError::InvalidMaxEnvelopeSize(size.chars().take(64).collect()))?;
        info.max_envelope_size = Some(bytes);
    }
    if info.is_identify {
        // An Identify may be answered without authentication, so it must not
        // double as anything else.
        if action.is_some() || body_children > 1 || command_lines > 0 {
            return Err(WsmanError::AmbiguousIdentify);
        }
    } else {
        info.action = action.filter(|a| !a.is_empty()).ok_or(WsmanError::MissingAction)?;
    }
    if command_lines > 0 {
        let mut line = command.unwrap_or_default();
        for arg in arguments.into_iter().filter(|a| !a.is_empty()) {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&arg);
        }
        info.command_line = Some(line);
    }
    Ok(info)
}

/// What one header `SelectorSet/Selector` element is to the relay.
enum Selector {
    /// `<w:SelectorSet><w:Selector Name="ShellId">`, exactly.
    ShellId,
    /// A ShellId selector in another form: a target may read it, the relay does not.
    Unreadable(&'static str),
    /// Some other selector.
    Other,
}

/// Only the exact WS-Man form names the shell; a variant (another namespace,
/// a prefixed or differently cased `Name`, a padded or differently cased
/// `ShellId`) is unreadable rather than ignored, so that the relay never
/// checks one shell while the target acts on another.
fn shell_id_selector(path: &[Elem<'_>], tag: &quick_xml::events::BytesStart<'_>) -> Result<Selector, WsmanError> {
    let mut exact = false;
    let mut variants = 0usize;
    for a in tag.attributes().with_checks(true) {
        let a = a.map_err(|e| WsmanError::Xml(e.to_string()))?;
        if !a.key.local_name().as_ref().eq_ignore_ascii_case(b"Name") {
            continue;
        }
        let value = a.unescape_value().map_err(|e| WsmanError::Xml(e.to_string()))?;
        if a.key.as_ref() == b"Name" && value == "ShellId" {
            exact = true;
        } else if value.trim_matches(is_xml_space).eq_ignore_ascii_case("ShellId") {
            variants += 1;
        }
    }
    if !exact && variants == 0 {
        return Ok(Selector::Other);
    }
    if path[2].ns != Ns::Wsman || path[3].ns != Ns::Wsman {
        return Ok(Selector::Unreadable(
            "a ShellId selector is outside the WS-Man namespace",
        ));
    }
    if variants > 0 {
        return Ok(Selector::Unreadable("a ShellId selector's name is spelt differently"));
    }
    Ok(Selector::ShellId)
}

/// Which response field a captured text belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RespField {
    RelatesTo,
    Subcode,
    Reason,
    ShellId,
    SelectorShellId,
    CommandId,
    ExitCode,
    CompressionMode,
}

/// Scans a target's response for correlation, faults and command results.
pub fn parse_response(xml: &[u8]) -> Result<ResponseInfo, WsmanError> {
    const FAULT: (Ns, &str) = (Ns::Soap, "Fault");
    const RECEIVE: (Ns, &str) = (Ns::Shell, "ReceiveResponse");
    const STATE: (Ns, &str) = (Ns::Shell, "CommandState");

    let mut info = ResponseInfo::default();
    let mut fault: Option<FaultInfo> = None;
    let mut cap = Capture::default();
    let mut field = None;
    let mut shell_id = None::<String>;
    let mut selector_shell_id = None::<String>;
    let mut state_command_id = None::<String>;
    let mut exit_code = None::<String>;
    let mut headers = 0usize;
    let mut bodies = 0usize;

    scan(xml, |path, item| {
        match item {
            Item::Start { tag, .. } => {
                let depth = path.len();
                let f = if path_is(path, &[ENVELOPE, HEADER]) {
                    headers += 1;
                    if headers > 1 {
                        return Err(WsmanError::Duplicate("soap Header"));
                    }
                    None
                } else if path_is(path, &[ENVELOPE, BODY]) {
                    bodies += 1;
                    if bodies > 1 {
                        return Err(WsmanError::Duplicate("soap Body"));
                    }
                    None
                } else if path_is(path, &[ENVELOPE, HEADER, (Ns::Addressing, "RelatesTo")]) {
                    Some(RespField::RelatesTo)
                } else if path_is(path, &[ENVELOPE, BODY, FAULT]) {
                    if fault.is_some() {
                        return Err(WsmanError::Duplicate("s:Fault"));
                    }
                    fault = Some(FaultInfo::default());
                    None
                } else if path_is(
                    path,
                    &[
                        ENVELOPE,
                        BODY,
                        FAULT,
                        (Ns::Soap, "Code"),
                        (Ns::Soap, "Subcode"),
                        (Ns::Soap, "Value"),
                    ],
                ) {
                    Some(RespField::Subcode)
                } else if path_is(path, &[ENVELOPE, BODY, FAULT, (Ns::Soap, "Reason"), (Ns::Soap, "Text")]) {
                    Some(RespField::Reason)
                } else if path_is(
                    path,
                    &[
                        ENVELOPE,
                        BODY,
                        FAULT,
                        (Ns::Soap, "Detail"),
                        (Ns::WsmanFault, "WSManFault"),
                    ],
                ) {
                    if let Some(fi) = fault.as_mut() {
                        if fi.wsman_code.is_none() {
                            fi.wsman_code = attr(tag, "Code")?.and_then(|c| c.trim().parse().ok());
                        }
                    }
                    None
                } else if path_is(path, &[ENVELOPE, BODY, (Ns::Shell, "Shell"), (Ns::Shell, "ShellId")]) {
                    Some(RespField::ShellId)
                } else if path_is(
                    path,
                    &[ENVELOPE, BODY, (Ns::Shell, "Shell"), (Ns::Shell, "CompressionMode")],
                ) {
                    Some(RespField::CompressionMode)
                } else if path_is(
                    path,
                    &[
                        ENVELOPE,
                        BODY,
                        (Ns::Transfer, "ResourceCreated"),
                        (Ns::Addressing, "ReferenceParameters"),
                        (Ns::Wsman, "SelectorSet"),
                        (Ns::Wsman, "Selector"),
                    ],
                ) {
                    (attr(tag, "Name")?.as_deref() == Some("ShellId")).then_some(RespField::SelectorShellId)
                } else if path_is(
                    path,
                    &[ENVELOPE, BODY, (Ns::Shell, "CommandResponse"), (Ns::Shell, "CommandId")],
                ) {
                    Some(RespField::CommandId)
                } else if path_is(path, &[ENVELOPE, BODY, RECEIVE, STATE]) {
                    if let Some(state) = attr(tag, "State")? {
                        if state.trim_matches(is_xml_space).ends_with("/CommandState/Done") {
                            info.command_done = true;
                        }
                    }
                    if let Some(id) = attr(tag, "CommandId")? {
                        set_once(&mut state_command_id, trimmed(id), "rsp:CommandState")?;
                    }
                    None
                } else if path_is(path, &[ENVELOPE, BODY, RECEIVE, STATE, (Ns::Shell, "ExitCode")]) {
                    Some(RespField::ExitCode)
                } else {
                    None
                };
                if f.is_some() {
                    field = f;
                    cap.start(depth);
                }
            }
            Item::Text(s) => cap.text(path, s),
            Item::End { .. } => {
                if let Some(text) = cap.end(path) {
                    match field.take() {
                        Some(RespField::RelatesTo) => set_once(&mut info.relates_to, trimmed(text), "wsa:RelatesTo")?,
                        Some(RespField::Subcode) => {
                            if let Some(fi) = fault.as_mut() {
                                if fi.subcode.is_none() {
                                    let v = trimmed(text);
                                    // A QName: keep the local part, whatever the prefix.
                                    let local = v.rsplit(':').next().unwrap_or_default();
                                    fi.subcode = Some(local.to_string());
                                }
                            }
                        }
                        Some(RespField::Reason) => {
                            if let Some(fi) = fault.as_mut() {
                                if fi.reason.is_none() {
                                    fi.reason = Some(trimmed(text));
                                }
                            }
                        }
                        Some(RespField::ShellId) => set_once(&mut shell_id, trimmed(text), "rsp:ShellId")?,
                        Some(RespField::SelectorShellId) => {
                            set_once(&mut selector_shell_id, trimmed(text), "ShellId selector")?
                        }
                        Some(RespField::CommandId) => set_once(&mut info.command_id, trimmed(text), "rsp:CommandId")?,
                        Some(RespField::ExitCode) => set_once(&mut exit_code, trimmed(text), "rsp:ExitCode")?,
                        Some(RespField::CompressionMode) => {
                            set_once(&mut info.compression_mode, trimmed(text), "rsp:CompressionMode")?
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    })?;

    info.fault = fault;
    // Windows sends both for cmd shells (the same id); PSRP Create responses
    // only carry the selector.
    info.created_shell_id = shell_id.or(selector_shell_id);
    if info.command_id.is_none() {
        info.command_id = state_command_id;
    }
    info.exit_code = exit_code.and_then(|c| c.parse().ok());
    Ok(info)
}

#[cfg(test)]
mod tests;
