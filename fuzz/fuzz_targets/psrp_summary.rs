//! Audit summary of PSRP CREATE_PIPELINE fragments: never panic, and the
//! summary stays bounded.
//!
//! The first byte picks how the rest reaches the decoder:
//! - even: base64 of the raw bytes (fragment and message headers fuzzed);
//! - odd: the bytes are the CLIXML payload of one complete CREATE_PIPELINE
//!   message in one fragment (the XML walk fuzzed directly);
//! and the raw bytes are always tried as text too.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::psrp::psrp_command_summary;

const CREATE_PIPELINE: u32 = 0x0002_1006;
/// MAX_SUMMARY in proto/psrp/mod.rs plus the " ..." marker.
const SUMMARY_BOUND: usize = 64 * 1024 + 4;

fn check(out: Option<String>) {
    if let Some(s) = out {
        assert!(s.len() <= SUMMARY_BOUND, "summary of {} bytes", s.len());
    }
}

fn one_fragment(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(40 + payload.len());
    message.extend_from_slice(&2u32.to_le_bytes()); // destination: server
    message.extend_from_slice(&CREATE_PIPELINE.to_le_bytes());
    message.extend_from_slice(&[0x11; 16]); // runspace pool id
    message.extend_from_slice(&[0x22; 16]); // pipeline id
    message.extend_from_slice(payload);
    let mut fragment = Vec::with_capacity(21 + message.len());
    fragment.extend_from_slice(&1u64.to_be_bytes()); // object id
    fragment.extend_from_slice(&0u64.to_be_bytes()); // fragment id
    fragment.push(0x3); // start | end
    fragment.extend_from_slice(&(message.len() as u32).to_be_bytes());
    fragment.extend_from_slice(&message);
    fragment
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let encoded = if mode & 1 == 0 {
        STANDARD.encode(rest)
    } else {
        STANDARD.encode(one_fragment(rest))
    };
    check(psrp_command_summary(&encoded));
    check(psrp_command_summary(&String::from_utf8_lossy(data)));
});
