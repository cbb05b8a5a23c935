//! The CredSSP acceptor on hostile legs: `Acceptor::step` must never panic
//! and never loop, whatever the client sends, at any point of the exchange.
//!
//! The first byte picks the scenario, the rest is a list of legs, each
//! `[len: u16 big-endian][bytes]` (a short last leg takes what is left):
//! - mode % 3 == 0: raw legs from the start state (TLS records, garbage);
//! - mode % 3 == 1: a real in-memory TLS handshake (rustls client, TLS 1.3
//!   or 1.2 by bit 2 of mode), then each leg is *plaintext* written through
//!   the client's TLS session: hostile TSRequest DER reaching the TSRequest
//!   parser, the first-token checks and sspi (NTLM/SPNEGO, pubKeyAuth, authInfo);
//! - mode % 3 == 2: the same handshake, then raw legs (records that do not
//!   decrypt, alerts, renegotiation attempts).
//!
//! Note: libfuzzer-sys aborts on *any* panic, including ones the acceptor
//! catches with `catch_unwind` around sspi. That is deliberate: those are
//! findings too (the input checks should stop them first). Set
//! `FUZZ_TOLERATE_CAUGHT_PANICS=1` to keep fuzzing past caught panics (they
//! are still printed, once per location).
#![no_main]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use winrm_relay::identity::{Principal, UserEntry};
use winrm_relay::proto::credssp::{nt_hash, Acceptor, AcceptorConfig, SkipCertificateVerification, Step};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Fixture {
    acceptor: Arc<AcceptorConfig>,
    tls12: Arc<ClientConfig>,
    tls13: Arc<ClientConfig>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        if std::env::var_os("FUZZ_TOLERATE_CAUGHT_PANICS").is_some() {
            tolerate_caught_panics();
        }
        let cert = rcgen::generate_simple_self_signed(vec!["relay".into()]).expect("cert");
        let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        // A syntactically real PKCS#1 RSAPublicKey is not needed: pubKeyAuth
        // is compared after decryption, which hostile input never passes.
        let acceptor = Arc::new(AcceptorConfig {
            tls: Arc::new(tls),
            public_key: vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00],
            users: vec![UserEntry::new(Principal::new("LAB", "alice"), nt_hash("pw"))].into(),
            min_version: 5,
            domain: None,
            service_keys: None,
        });
        let client = |version: &'static rustls::SupportedProtocolVersion| {
            Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[version])
                    .expect("versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(SkipCertificateVerification))
                    .with_no_client_auth(),
            )
        };
        Fixture {
            acceptor,
            tls12: client(&rustls::version::TLS12),
            tls13: client(&rustls::version::TLS13),
        }
    })
}

/// Replace libfuzzer-sys' abort-on-panic hook: a panic the acceptor catches
/// is printed once per location and fuzzing goes on. A panic that escapes
/// `step` still aborts (libfuzzer-sys' own catch_unwind does that).
fn tolerate_caught_panics() {
    let seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if seen.lock().map(|mut s| s.insert(location.clone())).unwrap_or(false) {
            eprintln!("[credssp_acceptor] caught panic at {location}: {info}");
        }
    }));
}

fn legs(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 8 {
        if data.len() < 2 {
            out.push(data);
            break;
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let n = len.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        if client.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

/// Give the server's reply to the client; errors are the client's problem.
fn client_input(client: &mut ClientConnection, bytes: &[u8]) {
    let mut cursor = std::io::Cursor::new(bytes);
    while (cursor.position() as usize) < bytes.len() {
        match client.read_tls(&mut cursor) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if client.process_new_packets().is_err() {
            return;
        }
    }
    let mut sink = Vec::new();
    let _ = client.reader().read_to_end(&mut sink);
}

/// The TLS legs, as the HTTP exchange runs them. Returns None if the
/// handshake did not complete (it always should).
fn handshake(acceptor: &mut Acceptor, client: &mut ClientConnection) -> Option<()> {
    for _ in 0..10 {
        if !client.is_handshaking() {
            let token = client_output(client);
            if !token.is_empty() {
                match acceptor.step(&token) {
                    Step::Continue(reply) => client_input(client, &reply),
                    other => panic!("finished leg answered {other:?}"),
                }
            }
            return Some(());
        }
        let token = client_output(client);
        match acceptor.step(&token) {
            Step::Continue(reply) => client_input(client, &reply),
            other => panic!("handshake leg answered {other:?}"),
        }
    }
    None
}

fn finished(step: &Step) -> bool {
    !matches!(step, Step::Continue(_))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let mut acceptor = Acceptor::new(fx.acceptor.clone()).expect("acceptor");
    let legs = legs(rest);
    match mode % 3 {
        0 => {
            for leg in legs {
                if finished(&acceptor.step(leg)) {
                    // A finished exchange refuses everything after it.
                    assert!(matches!(acceptor.step(leg), Step::Rejected { .. }));
                    break;
                }
            }
        }
        scenario => {
            let config = if mode & 4 == 0 { &fx.tls13 } else { &fx.tls12 };
            let mut client =
                ClientConnection::new(config.clone(), ServerName::try_from("relay").expect("name")).expect("client");
            handshake(&mut acceptor, &mut client).expect("handshake completes");
            for leg in legs {
                let token = if scenario == 1 {
                    if client.writer().write_all(leg).is_err() {
                        break;
                    }
                    client_output(&mut client)
                } else {
                    leg.to_vec()
                };
                let step = acceptor.step(&token);
                if let Step::Continue(reply) = &step {
                    client_input(&mut client, reply);
                }
                if finished(&step) {
                    break;
                }
            }
        }
    }
});
