//! Transcript decoding of hostile traffic: `shell_io` on any envelope, and the PSRP
//! messages its streams carry put together and turned into text. Never panic; a
//! message is never longer than what was fed.
//!
//! The first byte picks the input: even = the rest is an envelope (its stream bytes
//! then fed to the PSRP decoder); odd = the rest is raw PSRP fragments, fed in two
//! pieces cut where the second byte says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::psrp::{psrp_output, StreamAssembler};
use winrm_relay::proto::wsman::shell_io;

/// The relay's bound on one fragment or message.
const BOUND: usize = 16 * 1024 * 1024;

fn decode(pieces: &[&[u8]]) {
    let mut assembler = StreamAssembler::default();
    let fed: usize = pieces.iter().map(|p| p.len()).sum();
    for piece in pieces {
        let Ok(pushed) = assembler.push(piece, BOUND) else {
            return;
        };
        for message in pushed.messages {
            assert!(message.data.len() <= fed);
            let _ = psrp_output(&message);
        }
        assert!(assembler.held() <= fed);
    }
    for message in assembler.unfinished() {
        let _ = psrp_output(&message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(io) = shell_io(rest) {
            let streams: Vec<&[u8]> = io.streams.iter().map(|s| s.data.as_slice()).collect();
            decode(&streams);
        }
    } else {
        let cut = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
        let (a, b) = rest.split_at(cut);
        decode(&[a, b]);
    }
});
