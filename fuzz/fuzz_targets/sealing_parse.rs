//! Unframing hostile multipart/encrypted bodies (NTLM, CredSSP and Kerberos
//! framing): never panic, and whatever parses must survive a build/parse round
//! trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::sealing::{build_body, parse_body, parse_wrap_token_body, protocol_of, SealProtocol};

fuzz_target!(|data: &[u8]| {
    let _ = protocol_of(&String::from_utf8_lossy(data));
    for protocol in [SealProtocol::CredSsp, SealProtocol::Spnego] {
        if let Ok(parts) = parse_body(protocol, data) {
            assert!(!parts.is_empty());
            for part in &parts {
                let _ = part.split_header();
            }
            let rebuilt = build_body(protocol, &parts);
            assert_eq!(parse_body(protocol, &rebuilt).as_ref(), Ok(&parts));
        }
    }
    if let Ok(part) = parse_wrap_token_body(data) {
        assert!(part.split_header().is_some());
        let rebuilt = build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
        assert_eq!(parse_wrap_token_body(&rebuilt), Ok(part));
    }
});
