//! Constrained delegation: what the KDC answers the relay's TGT request and its
//! S4U2Proxy request, what a target answers the AP-REQ made from the S4U2Proxy
//! ticket, and what a caller logs on with at a constrained-delegation listener. Never
//! panic; a reply whose encrypted part the relay's keys do not open is never taken.
//! The first byte picks which of them the rest is.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::kerberos::acceptor::{accept, ReplayCache};
use winrm_relay::proto::kerberos::keytab::{parse_keytab, service_keys, KeytabEntry};
use winrm_relay::proto::kerberos::s4u::{read_proxy_reply, read_tgt_reply, Evidence, IssuedTicket, RelayAccount};
use winrm_relay::proto::kerberos::service_ticket::evidence;
use winrm_relay::proto::kerberos::ticket_context::TicketContext;

const KEYTAB: &[u8] = include_bytes!("../../src/proto/kerberos/fixtures/s4u/relay.keytab");
const ALICE: &[u8] = include_bytes!("../../src/proto/kerberos/fixtures/s4u/alice_spnego.bin");
const AS_REP: &[u8] = include_bytes!("../../src/proto/kerberos/fixtures/s4u/as_rep.der");
const AS_REQ: &[u8] = include_bytes!("../../src/proto/kerberos/fixtures/s4u/as_req.der");

struct Fixture {
    entries: Vec<KeytabEntry>,
    account: RelayAccount,
    tgt: IssuedTicket,
    alice: Evidence,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let entries = parse_keytab(KEYTAB).expect("fixture keytab");
        let account = RelayAccount::from_keytab(&entries, "LAB.TEST").expect("fixture account");
        let request: picky_krb::messages::AsReq = picky_asn1_der::from_bytes(AS_REQ).expect("fixture AS-REQ");
        let nonce = request.0.req_body.0.nonce.0.as_unsigned_bytes_be().iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
        let tgt = read_tgt_reply(&account, AS_REP, nonce).expect("fixture TGT");
        let alice = {
            let (keys, _) = service_keys(&entries);
            let refs: Vec<(&[String], &[u8])> =
                keys.iter().map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice())).collect();
            evidence(ALICE, &refs).expect("fixture evidence")
        };
        Fixture { entries, account, tgt, alice }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match pick % 4 {
        0 => {
            if let Ok(tgt) = read_tgt_reply(&f.account, rest, 1) {
                panic!("a TGT from a reply the account key does not open: {tgt:?}");
            }
        }
        1 => {
            if let Ok(ticket) = read_proxy_reply(&f.account, &f.tgt, &f.alice, "HTTP/web01.lab.test", rest, 1) {
                assert_eq!(ticket.client, "alice@LAB.TEST");
            }
        }
        2 => {
            let mut context = TicketContext::new(&f.tgt, "HTTP/web01.lab.test");
            if context.step(None).is_ok() {
                let _ = context.step(Some(rest));
            }
        }
        _ => {
            let (keys, _) = service_keys(&f.entries);
            let refs: Vec<(&[String], &[u8])> =
                keys.iter().map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice())).collect();
            let _ = accept(rest, &refs, SystemTime::now(), None, &mut ReplayCache::default());
        }
    }
});
