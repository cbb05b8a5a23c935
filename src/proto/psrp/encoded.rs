//! `powershell -EncodedCommand <base64>` on a cmd shell's command line (what
//! pywinrm's `run_ps` and Ansible's winrm connection send): the script inside,
//! base64 of UTF-16LE.

use super::decode_base64;

/// The programs that take `-EncodedCommand`, with or without a path.
const PROGRAMS: [&str; 4] = ["powershell", "powershell.exe", "pwsh", "pwsh.exe"];

/// The script a `powershell[.exe]|pwsh[.exe] ... -EncodedCommand <base64>`
/// command line runs, decoded; `None` for any other command line. The switch
/// is read as PowerShell reads it: any case, `-` or `/`, `-ec`, or any prefix
/// of `EncodedCommand` (`-e`, `-enc`).
pub fn encoded_command(command_line: &str) -> Option<String> {
    let mut words = words(command_line);
    let program = words.next()?;
    let base = program
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(&program)
        .to_ascii_lowercase();
    if !PROGRAMS.contains(&base.as_str()) {
        return None;
    }
    while let Some(word) = words.next() {
        let Some(switch) = word.strip_prefix("--").or_else(|| word.strip_prefix(['-', '/'])) else {
            continue;
        };
        let switch = switch.to_ascii_lowercase();
        if switch == "ec" || (!switch.is_empty() && "encodedcommand".starts_with(&switch)) {
            return decode(&words.next()?);
        }
        // What follows these is the command itself, not switches.
        if matches!(switch.as_str(), "command" | "c" | "file" | "f") {
            return None;
        }
    }
    None
}

fn decode(value: &str) -> Option<String> {
    // One word: PowerShell reads spaced groups as one stream, the WS-Man decoder
    // each group on its own, and the two can differ.
    if value.contains(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let bytes = decode_base64(value)?;
    // UTF-16 comes in pairs of bytes: PowerShell would run a U+FFFD glued to the
    // last word, which is not the script judged here.
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// Splits a command line into words as Windows does, near enough for this:
/// whitespace apart, double quotes grouping (and removed).
fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = line.chars().peekable();
    std::iter::from_fn(move || {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        chars.peek()?;
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                break;
            } else {
                word.push(c);
            }
            chars.next();
        }
        Some(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn enc(script: &str) -> String {
        let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn every_spelling_of_program_and_switch() {
        let s = enc("Get-Process; whoami");
        for line in [
            format!("powershell -EncodedCommand {s}"),
            format!("PowerShell.exe -NoProfile -NonInteractive -enc {s}"),
            format!("pwsh -e {s}"),
            format!("pwsh.exe -EC {s}"),
            format!("\"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe\" -ExecutionPolicy Bypass -ENCODEDCOMMAND {s}"),
            format!("/usr/bin/pwsh /enc {s}"),
            format!("powershell -encodedc {s}"),
        ] {
            assert_eq!(encoded_command(&line).as_deref(), Some("Get-Process; whoami"), "{line}");
        }
    }

    #[test]
    fn other_command_lines_are_not_decoded() {
        let s = enc("x");
        for line in [
            format!("cmd /c powershell -enc {s}"),
            format!("powershell -Command -enc {s}"),
            format!("powershell -ExecutionPolicy {s}"),
            "powershell -enc".to_string(),
            "powershell -enc not!base64".to_string(),
            "mypowershell -enc AAAA".to_string(),
            String::new(),
        ] {
            assert_eq!(encoded_command(&line), None, "{line}");
        }
    }

    #[test]
    fn an_odd_number_of_bytes_is_not_a_script() {
        let mut bytes: Vec<u8> = "whoami".encode_utf16().flat_map(u16::to_le_bytes).collect();
        bytes.push(b'x');
        let s = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(encoded_command(&format!("powershell -enc {s}")), None);
    }
}
