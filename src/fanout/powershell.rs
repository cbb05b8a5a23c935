//! `--powershell`: a script run the way pywinrm's `run_ps` and Ansible run one, as
//! `powershell.exe -NoProfile -NonInteractive -EncodedCommand <base64 of UTF-16LE>` in a
//! cmd shell (no quoting of the script can go wrong), and the CLIXML that PowerShell
//! writes its error stream in when its output is redirected, turned back into text.

use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::Reader;

/// The longest command line cmd.exe runs.
const MAX_COMMAND_LINE: usize = 8191;
const PREFIX: &str = "powershell.exe -NoProfile -NonInteractive -EncodedCommand ";
/// How PowerShell marks a serialized stream.
const CLIXML_MARKER: &[u8] = b"#< CLIXML";

/// The cmd.exe command line that runs `script`.
pub fn command_line(script: &str) -> Result<String, String> {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let line = format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(utf16));
    if line.len() > MAX_COMMAND_LINE {
        return Err(format!(
            "the script is too long for -EncodedCommand: {} characters of command line, cmd.exe runs at most \
             {MAX_COMMAND_LINE} (about {} characters of script); copy a script file to the targets and run that",
            line.len(),
            (MAX_COMMAND_LINE - PREFIX.len()) * 3 / 8
        ));
    }
    Ok(line)
}

/// `stderr` as a person reads it: the text of every serialized string in a CLIXML
/// stream (error records, warnings), lines ending in `\n`. Anything that is not CLIXML,
/// or cannot be read as such, is returned as it came.
pub fn readable_stderr(stderr: Vec<u8>) -> Vec<u8> {
    let trimmed = stderr.trim_ascii_start();
    if !trimmed.starts_with(CLIXML_MARKER) {
        return stderr;
    }
    match clixml_text(&trimmed[CLIXML_MARKER.len()..]) {
        Some(text) => text.into_bytes(),
        None => stderr,
    }
}

/// The text of the `<S>` children of each `<Objs>` document in `xml`.
fn clixml_text(xml: &[u8]) -> Option<String> {
    let mut reader = Reader::from_reader(xml);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut encoded = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(tag) => {
                depth += 1;
                in_string = depth == 2 && tag.local_name().as_ref() == b"S";
            }
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                in_string = false;
            }
            Event::Text(text) if in_string => encoded.push_str(&text.unescape().ok()?),
            Event::CData(data) if in_string => encoded.push_str(std::str::from_utf8(&data).ok()?),
            // A second `#< CLIXML` marker between documents is text outside them.
            Event::Text(_) | Event::CData(_) | Event::Empty(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Decl(_) => {}
            Event::DocType(_) => return None,
            Event::Eof if depth == 0 => break,
            Event::Eof => return None,
        }
    }
    Some(decode_escapes(&encoded).replace("\r\n", "\n"))
}

/// PowerShell's serializer writes characters XML cannot carry (CR, LF, other controls)
/// as `_xHHHH_`, UTF-16 code units in hex.
fn decode_escapes(s: &str) -> String {
    let mut units: Vec<u16> = Vec::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        let escape = rest
            .strip_prefix("_x")
            .and_then(|r| r.get(..5))
            .filter(|hex| hex.ends_with('_'))
            .and_then(|hex| u16::from_str_radix(&hex[..4], 16).ok());
        match escape {
            Some(unit) => {
                units.push(unit);
                rest = &rest[7..];
            }
            None => {
                let Some(c) = rest.chars().next() else { break };
                let mut buffer = [0u16; 2];
                units.extend_from_slice(c.encode_utf16(&mut buffer));
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_travels_as_utf16le_base64() {
        let line = command_line("Get-Service 'Spooler' | ft -a # é").unwrap();
        let encoded = line.strip_prefix(PREFIX).expect("prefix");
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        let units: Vec<u16> = bytes.chunks(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        assert_eq!(String::from_utf16(&units).unwrap(), "Get-Service 'Spooler' | ft -a # é");
        // What pywinrm's run_ps sends for the same script, after its prefix.
        assert_eq!(
            command_line("hostname").unwrap(),
            format!("{PREFIX}aABvAHMAdABuAGEAbQBlAA==")
        );
    }

    #[test]
    fn a_script_too_long_for_cmd_is_refused() {
        assert!(command_line(&"x".repeat(3000)).is_ok());
        let error = command_line(&"x".repeat(6000)).unwrap_err();
        assert!(error.contains("too long for -EncodedCommand"), "{error}");
    }

    /// What powershell.exe writes to a redirected stderr for `Get-Item C:\nope`.
    const CLIXML: &str =
        "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\">\
        <Obj S=\"progress\" RefId=\"0\"><TN RefId=\"0\"><T>System.Management.Automation.PSCustomObject</T></TN>\
        <MS><I64 N=\"SourceId\">1</I64><S N=\"Record\">Preparing modules for first use.</S></MS></Obj>\
        <S S=\"Error\">Get-Item : Cannot find path 'C:\\nope' because it does not exist._x000D__x000A_</S>\
        <S S=\"Error\">At line:1 char:1_x000D__x000A_</S>\
        <S S=\"Error\">+ Get-Item C:\\nope &amp; _x0009_tab_x000D__x000A_</S></Objs>";

    #[test]
    fn clixml_errors_become_lines_of_text() {
        let text = String::from_utf8(readable_stderr(CLIXML.as_bytes().to_vec())).unwrap();
        assert_eq!(
            text,
            "Get-Item : Cannot find path 'C:\\nope' because it does not exist.\nAt line:1 char:1\n\
             + Get-Item C:\\nope & \ttab\n"
        );
    }

    #[test]
    fn anything_else_is_left_as_it_came() {
        for other in [
            &b"plain error text\r\n"[..],
            b"#< CLIXML\r\n<Objs><S>unclosed",
            b"\xff\xfe",
        ] {
            assert_eq!(readable_stderr(other.to_vec()), other);
        }
    }

    #[test]
    fn escapes_decode_to_utf16_units() {
        assert_eq!(decode_escapes("a_x000A_b"), "a\nb");
        assert_eq!(decode_escapes("_xD83D__xDE00_"), "\u{1F600}");
        // Not an escape: left alone.
        assert_eq!(decode_escapes("_x12_ _xZZZZ_ _x0041"), "_x12_ _xZZZZ_ _x0041");
    }
}
