//! The command policy's script reader (`policy::script::read_script`): never panics, and
//! never accepts a script that a second, stricter reading refuses.
//!
//! The second reading is written apart from the reader: it only tracks quoted strings
//! and comments, and outside them refuses every character that can start PowerShell
//! language (variables, subexpressions, script blocks, calls, redirection, arrays, type
//! literals, escapes), splatting, the `--` tokens and control characters. Whatever the
//! reader accepts must pass it, whatever the quoting tricks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::policy::script::read_script;

fn single_quote(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

fn double_quote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

fn dash(c: char) -> bool {
    matches!(c, '-' | '\u{2013}' | '\u{2014}' | '\u{2015}')
}

/// `None` when the script holds no language outside strings and comments; else where.
fn stricter_refusal(text: &str) -> Option<usize> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let word_start = |i: usize| i == 0 || matches!(chars[i - 1], ' ' | '\t' | '\r' | '\n' | ';' | '|');
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if single_quote(c) {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Some(i),
                    Some(&q) if single_quote(q) => {
                        if chars.get(i + 1).is_some_and(|&n| single_quote(n)) {
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    Some(_) => i += 1,
                }
            }
        } else if double_quote(c) {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Some(i),
                    Some('$') | Some('`') => return Some(i),
                    Some(&q) if double_quote(q) => {
                        if chars.get(i + 1).is_some_and(|&n| double_quote(n)) {
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    Some(_) => i += 1,
                }
            }
        } else if c == '#' && word_start(i) {
            while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                i += 1;
            }
            continue;
        } else if c == '<' && next == Some('#') {
            i += 2;
            while !(chars.get(i) == Some(&'#') && chars.get(i + 1) == Some(&'>')) {
                if i >= chars.len() {
                    return Some(i);
                }
                i += 1;
            }
            i += 1;
        } else if "$(){}[]`&<>,".contains(c)
            || (c == '@' && word_start(i))
            || (dash(c) && next.is_some_and(dash) && word_start(i))
            || (c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(commands) = read_script(&text) {
        assert_eq!(stricter_refusal(&text), None, "accepted {text:?} as {commands:?}");
        for command in &commands {
            assert!(!command.name.is_empty(), "an empty command name in {text:?}");
        }
    }
});
