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

const SAMBA_KEYTAB: &[u8] = include_bytes!("../fixtures/ticket/samba_relay.keytab");
const SAMBA_DAVE: &[u8] = include_bytes!("../fixtures/ticket/samba_dave_krb5.bin");
const SAMBA_BOB: &[u8] = include_bytes!("../fixtures/ticket/samba_bob_spnego.bin");
const SAMBA_DOMAIN: &str = "S-1-5-21-3006577660-1872378886-2385389708";

fn samba_client(token: &[u8]) -> Option<TicketClient> {
    let entries = parse_keytab(SAMBA_KEYTAB).expect("keytab");
    let (keys, _) = service_keys(&entries);
    let keys: Vec<ServiceKeyRef<'_>> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    ticket_client(token, &keys)
}

#[test]
fn an_active_directory_ticket_gives_the_pacs_groups_nested_ones_included() {
    let dave = samba_client(SAMBA_DAVE).expect("the ticket decrypts with svc-relay's key");
    assert_eq!(dave.display(), "dave@LAB.TEST");
    let groups: Vec<String> = dave
        .pac_groups
        .expect("a PAC")
        .iter()
        .map(ToString::to_string)
        .collect();
    for rid in [513, 1108, 1109] {
        let sid = format!("{SAMBA_DOMAIN}-{rid}");
        assert!(groups.contains(&sid), "{sid} not in {groups:?}");
    }
    assert!(!groups.contains(&format!("{SAMBA_DOMAIN}-1110")), "{groups:?}");
    let bob = samba_client(SAMBA_BOB).expect("SPNEGO too");
    let groups: Vec<String> = bob.pac_groups.expect("a PAC").iter().map(ToString::to_string).collect();
    assert!(groups.contains(&format!("{SAMBA_DOMAIN}-1110")), "{groups:?}");
    assert!(!groups.contains(&format!("{SAMBA_DOMAIN}-1109")), "{groups:?}");
}

#[test]
fn an_mit_ticket_has_no_pac() {
    assert_eq!(client(ALICE).expect("decrypts").pac_groups, None);
}
