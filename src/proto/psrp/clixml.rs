//! Reading CLIXML, PowerShell's serialisation: the text of the first element a
//! path of open elements matches, an object as text, and the `_xHHHH_` escapes.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

pub(super) const MAX_XML_DEPTH: usize = 128;

/// The primitive types whose text is their value.
pub(super) const PRIMITIVES: [&str; 20] = [
    "S", "I32", "I64", "U32", "U64", "I16", "U16", "By", "SB", "B", "Db", "Sg", "D", "C", "G", "URI", "Version", "XD",
    "TS", "DT",
];

/// One open element: its tag and its `N` (property name) attribute.
pub(super) struct Frame {
    pub tag: Box<str>,
    pub n: Option<Box<str>>,
}

pub(super) fn is(frame: Option<&Frame>, tag: &str, n: Option<&str>) -> bool {
    frame.is_some_and(|f| &*f.tag == tag && (n.is_none() || f.n.as_deref() == n))
}

pub(super) fn frame_of(e: &BytesStart<'_>) -> Frame {
    let tag = String::from_utf8_lossy(e.name().as_ref()).into();
    let n = e
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == b"N")
        .and_then(|a| a.unescape_value().ok())
        .map(|v| v.into_owned().into_boxed_str());
    Frame { tag, n }
}

/// A serialised object as text: a primitive's value, an object's ToString, else the first
/// Message property inside (an exception's), else a placeholder.
pub(super) fn object_text(xml: &[u8]) -> String {
    first_text(xml, |s| s.len() == 1 && PRIMITIVES.contains(&&*s[0].tag))
        .or_else(|| first_text(xml, |s| s.len() == 1 && &*s[0].tag == "Nil").map(|_| String::new()))
        .or_else(|| first_text(xml, |s| s.len() == 1 && &*s[0].tag == "SS").map(|_| "<SecureString>".into()))
        .or_else(|| {
            first_text(xml, |s| {
                s.len() == 2 && is(s.first(), "Obj", None) && is(s.get(1), "ToString", None)
            })
        })
        .or_else(|| first_text(xml, |s| is(s.last(), "S", Some("Message"))))
        .unwrap_or_else(|| "<object>".into())
}

/// The text (CLIXML escapes decoded) of the first element the stack of open elements,
/// ending with it, is `wanted` for.
pub(super) fn first_text(xml: &[u8], wanted: impl Fn(&[Frame]) -> bool) -> Option<String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut capture: Option<(usize, String)> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return None;
                }
                stack.push(frame_of(&e));
                if capture.is_none() && wanted(&stack) {
                    capture = Some((stack.len(), String::new()));
                }
            }
            Ok(Event::Empty(e)) => {
                stack.push(frame_of(&e));
                if capture.is_none() && wanted(&stack) {
                    return Some(String::new());
                }
                stack.pop();
            }
            Ok(Event::Text(t)) => {
                if let Some((depth, text)) = capture.as_mut() {
                    if *depth == stack.len() {
                        text.push_str(&t.unescape().ok()?);
                    }
                }
            }
            Ok(Event::End(_)) => {
                if let Some((depth, text)) = &capture {
                    if *depth == stack.len() {
                        return Some(decode_psrp_escapes(text));
                    }
                }
                stack.pop();
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// CLIXML escapes characters as `_xHHHH_` UTF-16 code units, including
/// `_x005F_` for a literal underscore and surrogate pairs.
pub(super) fn decode_psrp_escapes(s: &str) -> String {
    if !s.contains("_x") {
        return s.to_string();
    }
    let mut units: Vec<u16> = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && bytes.get(i + 1) == Some(&b'x') && bytes.get(i + 6) == Some(&b'_') {
            if let Some(hex) = s.get(i + 2..i + 6) {
                if hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    if let Ok(u) = u16::from_str_radix(hex, 16) {
                        units.push(u);
                        i += 7;
                        continue;
                    }
                }
            }
        }
        // Copy one whole character.
        let ch = s[i..].chars().next().unwrap_or('\u{FFFD}');
        let mut buf = [0u16; 2];
        units.extend_from_slice(ch.encode_utf16(&mut buf));
        i += ch.len_utf8().max(1);
    }
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(decode_psrp_escapes("a_x000A_b"), "a\nb");
        assert_eq!(decode_psrp_escapes("actual_x005F_x000A_string"), "actual_x000A_string");
        assert_eq!(decode_psrp_escapes("_xD801__xDC37_"), "\u{10437}");
        assert_eq!(decode_psrp_escapes("_xD801_"), "\u{FFFD}");
        assert_eq!(decode_psrp_escapes("_x12_ _xZZZZ_ é_x"), "_x12_ _xZZZZ_ é_x");
    }
}
