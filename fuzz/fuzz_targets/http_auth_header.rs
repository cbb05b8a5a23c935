//! `Authorization` / `WWW-Authenticate` values: never panic; whatever parses
//! survives a format/parse round trip; find_challenge agrees with
//! parse_scheme_token on single offers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::http_auth::{find_challenge, format_scheme_token, parse_scheme_token};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(parsed) = parse_scheme_token(&text) {
        assert!(!parsed.scheme.is_empty());
        let token = parsed.token.clone().unwrap_or_default();
        let again = parse_scheme_token(&format_scheme_token(&parsed.scheme, &token)).expect("round trip");
        assert_eq!(again.scheme, parsed.scheme);
        assert_eq!(again.token.unwrap_or_default(), token);
        if !text.contains(',') {
            assert_eq!(
                find_challenge([text.as_ref()], &parsed.scheme),
                Some(parsed.token.clone())
            );
        }
    }

    // First line: the scheme looked for; the other lines: header values.
    let mut lines = text.split('\n');
    let scheme = lines.next().unwrap_or_default();
    let values: Vec<&str> = lines.collect();
    let _ = find_challenge(values.iter().copied(), scheme);
    let _ = find_challenge(values.iter().copied(), "CredSSP");
});
