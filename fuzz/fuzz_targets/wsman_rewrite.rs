//! Rewriting wsa:To and the OperationTimeout: never panic, and on a parseable
//! request change nothing but the To value and a timeout past the maximum.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::wsman::{parse_request, rewrite_request, RequestInfo};

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

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

    let Ok(before) = parse_request(xml) else {
        return;
    };
    // What parsed rewrites: its edit points are spans of these very bytes.
    let out = rewrite_request(xml, &before, &to, MAX_TIMEOUT).expect("a parsed request rewrites");
    let clamped = before.operation_timeout_within(MAX_TIMEOUT);
    if before.to.is_none() && clamped == before.operation_timeout {
        assert_eq!(out, xml);
        return;
    }
    let after = parse_request(&out).expect("rewritten request must still parse");
    if before.to.is_some() {
        assert_eq!(after.to.as_deref(), Some(expected_to(&to).as_str()));
    }
    assert_eq!(after.operation_timeout, clamped);
    assert_eq!(
        RequestInfo {
            to: before.to.clone(),
            operation_timeout: before.operation_timeout,
            rewrite_points: before.rewrite_points.clone(),
            ..after
        },
        before
    );
});
