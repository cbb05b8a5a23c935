//! A session's PowerShell streams as the relay reads them (`proto::psrp::SessionReader`):
//! fragments cut from byte streams, messages put together, Xpress chunk framing and
//! decompression, the messages read into pipelines and text. Never panic, and the
//! reader's bound on what a shell holds is kept.
//!
//! The first byte: bit 0 set = the shell was created compressed (every stream is then
//! read as chunk framing and decompressed). Then operations, each an op byte, a u16le
//! length and that many bytes:
//! - op & 3 == 3: a Command, the bytes its arguments (base64-encoded here);
//! - otherwise: one `rsp:Stream`; op & 1 the direction (0 Send, 1 Receive), op >> 2 & 3
//!   the CommandId (none, C1, c1, C2), op >> 4 % 3 the stream name (stdin, pr, stdout);
//! - op == 0xFF: the shell is deleted.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::psrp::{Direction, EventKind, Limits, SessionReader, StreamData};

const SHELL_BOUND: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut reader = SessionReader::new(Limits {
        max_shell_bytes: SHELL_BOUND,
        max_pipelines: 4,
    });
    reader.shell_created("S", flags & 1 != 0);
    let ids = [None, Some("C1"), Some("c1"), Some("C2")];
    let names = ["stdin", "pr", "stdout"];
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (piece, tail) = rest[3..].split_at(len);
        rest = tail;
        let events = if op == 0xFF {
            reader.shell_deleted("S");
            reader.shell_created("S", flags & 1 != 0);
            Vec::new()
        } else if op & 3 == 3 {
            reader.command("S", ids[usize::from(op >> 2) % 4].unwrap_or("C1"), &STANDARD.encode(piece))
        } else {
            let direction = if op & 1 == 0 {
                Direction::ToServer
            } else {
                Direction::ToClient
            };
            let stream = StreamData {
                name: names[usize::from(op >> 4) % 3],
                command_id: ids[usize::from(op >> 2) % 4],
                data: piece,
            };
            reader.streams("S", direction, &[stream])
        };
        for event in events {
            if let EventKind::Pipeline { pipeline, .. } = &event.kind {
                let _ = pipeline.summary();
                for command in pipeline.commands() {
                    assert_eq!(command.script_sha256().is_some(), command.is_script);
                }
            }
        }
    }
});
