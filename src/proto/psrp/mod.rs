//! PowerShell remoting (PSRP), its own protocol on top of WS-Man's shell
//! streams: fragments cut from byte streams and put together into messages
//! ([`fragments`]), WinRM's Xpress compression of those streams
//! ([`compression`]), the CLIXML messages the audit reads (a CREATE_PIPELINE as
//! a [`Pipeline`], output, errors, states, input, host responses), a session's
//! streams read as they are relayed ([`SessionReader`]), and the script in a cmd
//! shell's `powershell -EncodedCommand` ([`encoded_command`]), all from the
//! base64 WinRM carries them in ([`decode_base64`]).
//!
//! Sans-IO and best effort: what is malformed is reported or skipped, never fatal.

mod clixml;
pub mod compression;
mod encoded;
pub mod fragments;
mod messages;
mod pipeline;
mod reader;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

pub use compression::{decompress_stream, CompressionError};
pub use encoded::encoded_command;
pub use fragments::{FragmentError, StreamAssembler};
pub use messages::{
    host_response, is_final_state, pipeline_input, psrp_output, HostResponse, PsrpMessage, PsrpOutput, CREATE_PIPELINE,
    ERROR_RECORD, PIPELINE_HOST_RESPONSE, PIPELINE_INPUT, PIPELINE_OUTPUT, PIPELINE_STATE, RUNSPACEPOOL_HOST_RESPONSE,
};
pub use pipeline::{Command, Parameter, Pipeline, Statement};
pub use reader::{Direction, Event, EventKind, Limits, PipelineEnd, SessionReader, StreamData};

/// A stream's or message's decoded bytes are bounded by the envelope size;
/// this is a second fence.
const MAX_DECODED: usize = 16 * 1024 * 1024;
/// Audit lines stay readable; longer summaries are cut.
const MAX_SUMMARY: usize = 64 * 1024;

/// Decodes base64 PSRP fragments (as in a Command's `rsp:Arguments`) and, for
/// a CREATE_PIPELINE message, returns its commands as [`Pipeline::summary`]
/// renders them. A message whose later fragments travel in Send requests
/// yields what the available fragments hold, followed by " ...".
pub fn psrp_command_summary(fragments_b64: &str) -> Option<String> {
    let bytes = decode_base64(fragments_b64).filter(|b| !b.is_empty())?;
    let mut assembler = StreamAssembler::default();
    let mut messages = assembler
        .push(&bytes, MAX_DECODED)
        .map(|p| p.messages)
        .unwrap_or_default();
    messages.extend(assembler.unfinished());

    let mut out: Option<String> = None;
    for message in messages {
        if message.message_type != CREATE_PIPELINE {
            continue;
        }
        let mut summary = Pipeline::parse(&message.data).summary();
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
    out.map(|s| truncate(s, MAX_SUMMARY))
}

/// Base64 as WinRM clients write it: standard alphabet, padding optional. Several
/// `rsp:Arguments` arrive joined by spaces, each padded on its own. `None` when a
/// group is not base64 or the whole would decode to more than the PSRP bound.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if text.len() / 4 * 3 > MAX_DECODED {
        return None;
    }
    let mut out = Vec::new();
    for token in text.split_ascii_whitespace() {
        out.extend(ENGINE.decode(token).ok()?);
    }
    Some(out)
}

/// `s` cut to at most `max` bytes on a character boundary, marked " ..." when cut.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use fragments::tests::{fragments, message};
    use fragments::FRAGMENT_HEADER;

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
        let xml = include_str!("../wsman/testdata/pypsrp_psrp_command_request.xml");
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
    fn messages_spanning_several_receives_are_put_together() {
        let xml = "<S>line one_x000A_line two</S>";
        let all = fragments(9, &message(PIPELINE_OUTPUT, xml), 3);
        // Whole fragments, split over two envelopes.
        let first_len = FRAGMENT_HEADER + u32::from_be_bytes(all[17..21].try_into().unwrap()) as usize;
        let mut d = StreamAssembler::default();
        assert!(d.push(&all[..first_len], MAX_DECODED).unwrap().messages.is_empty());
        let done = d.push(&all[first_len..], MAX_DECODED).unwrap().messages;
        assert_eq!(done.len(), 1);
        assert!(done[0].complete);
        assert_eq!(
            psrp_output(&done[0]),
            Some(PsrpOutput::Output("line one\nline two".into()))
        );
        assert!(d.unfinished().is_empty());
        // A middle fragment without its start is skipped.
        let mut d = StreamAssembler::default();
        assert!(d.push(&all[first_len..], MAX_DECODED).unwrap().messages.is_empty());
    }

    fn output_of(message_type: u32, xml: &str) -> Option<PsrpOutput> {
        let mut d = StreamAssembler::default();
        let done = d
            .push(&fragments(1, &message(message_type, xml), 1), MAX_DECODED)
            .ok()?
            .messages;
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
