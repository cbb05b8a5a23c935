//! Real MIT tickets (krb5 1.20, Debian 12), made by `fixtures/ticket/README.md`'s
//! steps: the relay's keytab for `HTTP/relay.lab.test`, and AP-REQs from
//! python-gssapi (through pyspnego) for `bob/eve@LAB.TEST` (bare krb5) and
//! `alice@LAB.TEST` (SPNEGO).

use super::*;
use crate::proto::kerberos::keytab::{parse_keytab, service_keys};

const KEYTAB: &[u8] = include_bytes!("../fixtures/ticket/relay.keytab");
const BOB_EVE: &[u8] = include_bytes!("../fixtures/ticket/bob_eve_krb5.bin");
const ALICE: &[u8] = include_bytes!("../fixtures/ticket/alice_spnego.bin");

fn client(token: &[u8]) -> Option<TicketClient> {
    let entries = parse_keytab(KEYTAB).expect("keytab");
    let (keys, _) = service_keys(&entries);
    let keys: Vec<ServiceKeyRef<'_>> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    ticket_client(token, &keys)
}

#[test]
fn a_two_component_client_name_is_read_whole() {
    let client = client(BOB_EVE).expect("the ticket decrypts with the relay's key");
    assert_eq!(client.name, ["bob", "eve"]);
    assert_eq!(client.realm, "LAB.TEST");
    assert_eq!(client.display(), "bob/eve@LAB.TEST");
}

#[test]
fn a_spnego_token_is_read_too() {
    let client = client(ALICE).expect("the ticket decrypts with the relay's key");
    assert_eq!(client.display(), "alice@LAB.TEST");
}

#[test]
fn without_the_right_key_or_an_ap_req_there_is_no_client() {
    let other = ["HTTP".to_string(), "relay.lab.test".to_string()];
    let wrong = [7u8; 32];
    assert_eq!(ticket_client(BOB_EVE, &[(&other[..], &wrong[..])]), None);
    let elsewhere = ["HTTP".to_string(), "web01.lab.test".to_string()];
    let entries = parse_keytab(KEYTAB).expect("keytab");
    let key = entries[0].key.as_slice();
    assert_eq!(ticket_client(BOB_EVE, &[(&elsewhere[..], key)]), None);
    for garbage in [&b""[..], b"\x60\x03\x06\x01\x00", &BOB_EVE[..BOB_EVE.len() / 2]] {
        assert_eq!(ticket_client(garbage, &[(&other[..], key)]), None);
    }
}
