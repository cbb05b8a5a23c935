//! The client of a service ticket, read by decrypting the AP-REQ's ticket with
//! the relay's key: whatever the token, never panic; a name is only ever read
//! from a ticket the key opens, so a forged token with no valid ticket is
//! never taken. The first byte picks the framing around the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::kerberos::service_ticket::ticket_client;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let service = ["HTTP".to_string(), "relay.lab.test".to_string()];
    let key = [0x5au8; 32];
    let token = match pick % 3 {
        // As the client sent it.
        0 => rest.to_vec(),
        // Inside a GSS-API header for bare krb5 (the OID and the AP-REQ token id).
        1 => gss(&[&[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x01, 0x00], rest].concat()),
        // Inside a GSS-API header for SPNEGO.
        _ => gss(&[&[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02], rest].concat()),
    };
    let _ = ticket_client(&token, &[(&service[..], &key[..])]);
});

fn gss(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x60];
    match body.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(body);
    out
}
