//! PSRP messages: the 40-byte header (destination, type, runspace pool and
//! pipeline ids) before a CLIXML payload, and what the audit reads out of the
//! kinds it records.

use super::clixml::{first_text, is, object_text};

/// PowerShell remoting message types the relay reads.
pub const CREATE_PIPELINE: u32 = 0x0002_1006;
pub const RUNSPACEPOOL_HOST_RESPONSE: u32 = 0x0002_1101;
pub const PIPELINE_INPUT: u32 = 0x0004_1002;
pub const PIPELINE_OUTPUT: u32 = 0x0004_1004;
pub const ERROR_RECORD: u32 = 0x0004_1005;
pub const PIPELINE_STATE: u32 = 0x0004_1006;
pub const PIPELINE_HOST_RESPONSE: u32 = 0x0004_1101;

pub(super) const MESSAGE_HEADER: usize = 40;

/// One PSRP message put together from its fragments: its type and its CLIXML payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsrpMessage {
    pub message_type: u32,
    /// The payload after the message header (and its byte-order mark).
    pub data: Vec<u8>,
    /// False for a message whose last fragment never came.
    pub complete: bool,
}

impl PsrpMessage {
    /// A message from its bytes; `None` when shorter than its header.
    pub fn from_bytes(mut bytes: Vec<u8>, complete: bool) -> Option<PsrpMessage> {
        let header = bytes.get(..MESSAGE_HEADER)?;
        let message_type = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
        let skip = if bytes[MESSAGE_HEADER..].starts_with(b"\xEF\xBB\xBF") {
            MESSAGE_HEADER + 3
        } else {
            MESSAGE_HEADER
        };
        bytes.drain(..skip);
        Some(PsrpMessage {
            message_type,
            data: bytes,
            complete,
        })
    }
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

/// Whether a pipeline in this state runs no more.
pub fn is_final_state(state: &str) -> bool {
    matches!(state, "Completed" | "Failed" | "Stopped")
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

/// The answer to a host call (`Read-Host`, `Get-Credential`, a prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResponse {
    /// The host method answered (`ReadLine`, `PromptForCredential`), or its number.
    pub method: String,
    /// The answer as text (`<SecureString>` for a secure one, never decrypted).
    pub text: String,
}

/// Reads a RUNSPACEPOOL_HOST_RESPONSE or PIPELINE_HOST_RESPONSE: `mi` the
/// method (an enum: its ToString, else its number), `mr` the return value.
pub fn host_response(message: &PsrpMessage) -> Option<HostResponse> {
    if !matches!(
        message.message_type,
        RUNSPACEPOOL_HOST_RESPONSE | PIPELINE_HOST_RESPONSE
    ) {
        return None;
    }
    let xml = &message.data;
    let in_mi = |s: &[super::clixml::Frame]| s.len() >= 2 && is(s.get(s.len() - 2), "Obj", Some("mi"));
    let method = first_text(xml, |s| in_mi(s) && is(s.last(), "ToString", None))
        .or_else(|| first_text(xml, |s| in_mi(s) && is(s.last(), "I32", None)))
        .unwrap_or_else(|| "unknown".into());
    let text = first_text(xml, |s| {
        s.last()
            .is_some_and(|f| f.n.as_deref() == Some("mr") && &*f.tag == "SS")
    })
    .map(|_| "<SecureString>".to_string())
    .or_else(|| {
        first_text(xml, |s| {
            s.last()
                .is_some_and(|f| f.n.as_deref() == Some("mr") && super::clixml::PRIMITIVES.contains(&&*f.tag))
        })
    })
    .or_else(|| {
        first_text(xml, |s| {
            s.len() >= 2 && is(s.get(s.len() - 2), "Obj", Some("mr")) && is(s.last(), "ToString", None)
        })
    })
    .unwrap_or_default();
    Some(HostResponse { method, text })
}

/// A PIPELINE_INPUT object as text.
pub fn pipeline_input(message: &PsrpMessage) -> Option<String> {
    (message.message_type == PIPELINE_INPUT).then(|| object_text(&message.data))
}
