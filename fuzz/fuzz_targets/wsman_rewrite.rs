//! Rewriting wsa:To: never panic, and on a parseable request change nothing
//! but the To value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::wsman::{parse_request, rewrite_to, RequestInfo};

/// What `to` reads back as once escaped into XML and parsed again.
fn expected_to(to: &str) -> String {
    let sanitized: String = to
        .chars()
        .map(|c| {
            let forbidden =
                ((c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFE}' || c == '\u{FFFF}';
            if forbidden {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    sanitized
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    // First byte: length of the replacement URL taken from the input.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 96).min(rest.len());
    let (to, xml) = rest.split_at(n);
    let to = String::from_utf8_lossy(to);

    let Ok(out) = rewrite_to(xml, &to) else {
        return;
    };
    let Ok(before) = parse_request(xml) else {
        return;
    };
    if before.to.is_none() {
        assert_eq!(out, xml);
        return;
    }
    let after = parse_request(&out).expect("rewritten request must still parse");
    assert_eq!(after.to.as_deref(), Some(expected_to(&to).as_str()));
    assert_eq!(
        RequestInfo {
            to: before.to.clone(),
            ..after
        },
        before
    );
});
