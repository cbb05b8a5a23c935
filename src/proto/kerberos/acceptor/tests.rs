use std::time::UNIX_EPOCH;

use super::*;
use crate::proto::kerberos::keytab::{parse_keytab, service_keys, KeytabEntry};

const RELAY_KEYTAB: &[u8] = include_bytes!("../fixtures/s4u/relay.keytab");
const ALICE: &[u8] = include_bytes!("../fixtures/s4u/alice_spnego.bin");
const CAROL: &[u8] = include_bytes!("../fixtures/s4u/carol_spnego.bin");
/// A bare krb5 AP-REQ from MIT (the older fixture of another realm's relay key).
const BOB_RAW: &[u8] = include_bytes!("../fixtures/ticket/bob_eve_krb5.bin");

/// When pyspnego made alice's and carol's tokens.
fn when_made() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_618_500)
}

fn entries() -> Vec<KeytabEntry> {
    parse_keytab(RELAY_KEYTAB).unwrap()
}

fn with_keys<T>(f: impl FnOnce(&[ServiceKeyRef<'_>]) -> T) -> T {
    let entries = entries();
    let (keys, _) = service_keys(&entries);
    let refs: Vec<ServiceKeyRef<'_>> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    f(&refs)
}

#[test]
fn alices_spnego_logon_is_accepted_with_her_ticket_kept() {
    let mut replays = ReplayCache::default();
    let accepted = with_keys(|keys| accept(ALICE, keys, when_made(), None, &mut replays)).unwrap();
    assert_eq!(accepted.client.display(), "alice@LAB.TEST");
    assert_eq!(accepted.evidence.client, "alice@LAB.TEST");
    assert!(accepted.evidence.forwardable);
    // SPNEGO accept-completed, naming krb5 (pyspnego lists it first), carrying the AP-REP.
    let reply = &accepted.reply;
    assert_eq!(reply[0], 0xa1);
    assert!(reply.windows(3).any(|w| w == ACCEPT_COMPLETED));
    assert!(reply.windows(KRB5_OID.len()).any(|w| w == KRB5_OID));
    assert!(!format!("{accepted:?}").contains("key"));
}

#[test]
fn a_replayed_logon_is_refused() {
    let mut replays = ReplayCache::default();
    with_keys(|keys| accept(ALICE, keys, when_made(), None, &mut replays)).unwrap();
    let again = with_keys(|keys| accept(ALICE, keys, when_made(), None, &mut replays)).unwrap_err();
    assert_eq!(again, AcceptError::Replay);
    // carol is another authenticator.
    with_keys(|keys| accept(CAROL, keys, when_made(), None, &mut replays)).unwrap();
}

#[test]
fn time_is_checked() {
    let mut replays = ReplayCache::default();
    let later = when_made() + Duration::from_secs(600);
    assert_eq!(
        with_keys(|keys| accept(ALICE, keys, later, None, &mut replays)).unwrap_err(),
        AcceptError::ClockSkew
    );
    assert!(AcceptError::ClockSkew.to_string().contains("NTP"));
}

#[test]
fn ntlm_is_refused_saying_kerberos_is_needed() {
    let mut replays = ReplayCache::default();
    let ntlm = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2";
    let error = with_keys(|keys| accept(ntlm, keys, when_made(), None, &mut replays)).unwrap_err();
    assert_eq!(error, AcceptError::Ntlm);
    assert!(error.to_string().contains("NTLM cannot be delegated"));
    assert!(error.to_string().contains("Kerberos"));
}

#[test]
fn a_ticket_for_a_key_the_relay_lacks_is_named() {
    let mut replays = ReplayCache::default();
    let error = with_keys(|keys| accept(BOB_RAW, keys, when_made(), None, &mut replays)).unwrap_err();
    // The old fixture's relay key is not this keytab's.
    assert!(matches!(error, AcceptError::NoKey(service) if service == "HTTP/relay.lab.test@LAB.TEST"));
}

#[test]
fn garbage_is_refused_without_panicking() {
    let mut replays = ReplayCache::default();
    for token in [
        &[][..],
        &[0x60, 0x03, 0x06, 0x01, 0x00][..],
        &ALICE[..ALICE.len() - 9],
        b"Basic",
    ] {
        assert!(with_keys(|keys| accept(token, keys, when_made(), None, &mut replays)).is_err());
    }
}

#[test]
fn der_lengths_in_long_form() {
    assert_eq!(der(0x04, &[1, 2]), [0x04, 0x02, 1, 2]);
    let long = der(0x04, &[0; 300]);
    assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
}
