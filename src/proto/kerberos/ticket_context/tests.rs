use std::time::{Duration, UNIX_EPOCH};

use picky_krb::messages::TgsReq;

use super::*;
use crate::proto::kerberos::acceptor::{accept, AcceptError, ReplayCache};
use crate::proto::kerberos::fixtures::tlv;
use crate::proto::kerberos::keytab::{parse_keytab, service_keys};
use crate::proto::kerberos::s4u::{read_tgt_reply, RelayAccount};
use crate::proto::kerberos::service_ticket::{evidence, ServiceKeyRef};

const RELAY_KEYTAB: &[u8] = include_bytes!("../fixtures/s4u/relay.keytab");
const WEB01_KEYTAB: &[u8] = include_bytes!("../fixtures/s4u/web01.keytab");
const ALICE: &[u8] = include_bytes!("../fixtures/s4u/alice_spnego.bin");
const AS_REQ: &[u8] = include_bytes!("../fixtures/s4u/as_req.der");
const AS_REP: &[u8] = include_bytes!("../fixtures/s4u/as_rep.der");
const TGS_REQ: &[u8] = include_bytes!("../fixtures/s4u/alice_web01_tgs_req.der");
const TGS_REP: &[u8] = include_bytes!("../fixtures/s4u/alice_web01_tgs_rep.der");
const SPN: &str = "HTTP/web01.lab.test";

/// While Samba's ticket to web01 is good.
fn while_good() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_620_000)
}

fn nonce(der: &[u8], as_req: bool) -> u32 {
    let body = if as_req {
        picky_asn1_der::from_bytes::<picky_krb::messages::AsReq>(der)
            .unwrap()
            .0
            .req_body
            .0
    } else {
        picky_asn1_der::from_bytes::<TgsReq>(der).unwrap().0.req_body.0
    };
    body.nonce
        .0
        .as_unsigned_bytes_be()
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

/// Samba's S4U2Proxy ticket to web01 in alice's name.
fn ticket() -> IssuedTicket {
    let entries = parse_keytab(RELAY_KEYTAB).unwrap();
    let account = RelayAccount::from_keytab(&entries, "LAB.TEST").unwrap();
    let tgt = read_tgt_reply(&account, AS_REP, nonce(AS_REQ, true)).unwrap();
    let (keys, _) = service_keys(&entries);
    let refs: Vec<ServiceKeyRef<'_>> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    let alice = evidence(ALICE, &refs).unwrap();
    crate::proto::kerberos::s4u::read_proxy_reply(&account, &tgt, &alice, SPN, TGS_REP, nonce(TGS_REQ, false)).unwrap()
}

/// web01's side: its keytab, an acceptor.
fn web01_accepts(
    token: &[u8],
    bindings: Option<&[u8]>,
) -> Result<crate::proto::kerberos::acceptor::Accepted, AcceptError> {
    let entries = parse_keytab(WEB01_KEYTAB).unwrap();
    let (keys, _) = service_keys(&entries);
    let refs: Vec<ServiceKeyRef<'_>> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    accept(token, &refs, while_good(), bindings, &mut ReplayCache::default())
}

#[test]
fn the_s4u_ticket_logs_alice_on_at_web01_and_seals_both_ways() {
    let mut context = TicketContext::new(&ticket(), SPN).with_clock(while_good);
    let token = context.step(None).unwrap().unwrap();
    let mut web01 = web01_accepts(&token, None).unwrap();
    assert_eq!(web01.client.display(), "alice@LAB.TEST");
    assert!(!context.is_established());
    assert_eq!(context.step(Some(&web01.reply)).unwrap(), None);
    assert!(context.is_established());
    for _ in 0..3 {
        let part = context.seal(b"<s:Envelope>request</s:Envelope>").unwrap();
        assert_eq!(web01.unseal(&part).unwrap(), b"<s:Envelope>request</s:Envelope>");
        let part = web01.seal(b"<s:Envelope>response</s:Envelope>").unwrap();
        assert_eq!(context.unseal(&part).unwrap(), b"<s:Envelope>response</s:Envelope>");
    }
}

#[test]
fn channel_bindings_go_in_the_authenticator() {
    let end_point = b"tls-server-end-point:0123456789abcdef0123456789abcdef";
    let mut context = TicketContext::new(&ticket(), SPN)
        .with_clock(while_good)
        .with_channel_bindings(end_point);
    let token = context.step(None).unwrap().unwrap();
    assert!(web01_accepts(&token, Some(end_point)).is_ok());
    assert_eq!(
        web01_accepts(&token, Some(b"tls-server-end-point:another")).unwrap_err(),
        AcceptError::ChannelBinding
    );
}

#[test]
fn an_unbound_logon_is_taken_over_http_only() {
    let mut context = TicketContext::new(&ticket(), SPN).with_clock(while_good);
    let token = context.step(None).unwrap().unwrap();
    assert!(web01_accepts(&token, None).is_ok());
    let end_point = b"tls-server-end-point:0123456789abcdef0123456789abcdef";
    assert_eq!(
        web01_accepts(&token, Some(end_point)).unwrap_err(),
        AcceptError::Unbound
    );
}

#[test]
fn an_ap_rep_that_is_not_for_this_authenticator_is_refused() {
    let ticket = ticket();
    let mut first = TicketContext::new(&ticket, SPN).with_clock(while_good);
    let token = first.step(None).unwrap().unwrap();
    let web01 = web01_accepts(&token, None).unwrap();
    // Another context (another time) gets the first one's AP-REP.
    fn a_second_later() -> SystemTime {
        while_good() + Duration::from_secs(1)
    }
    let mut second = TicketContext::new(&ticket, SPN).with_clock(a_second_later);
    second.step(None).unwrap();
    assert!(matches!(
        second.step(Some(&web01.reply)),
        Err(TicketContextError::BadReply(_))
    ));
    // Broken for good.
    assert_eq!(second.seal(b"x"), Err(TicketContextError::Incomplete));
    assert_eq!(second.step(Some(&web01.reply)), Err(TicketContextError::Incomplete));
}

#[test]
fn a_target_krb_error_is_its_refusal() {
    let mut context = TicketContext::new(&ticket(), SPN).with_clock(while_good);
    context.step(None).unwrap();
    // A KRB-ERROR (KRB_AP_ERR_SKEW) inside the krb5 mechanism, inside SPNEGO.
    let error = crate::proto::kerberos::fixtures::krb_error(37, None);
    let inner = tlv(0x60, &[KRB5, &[0x03, 0x00], &error].concat());
    let resp = tlv(
        0xa1,
        &tlv(
            0x30,
            &[tlv(0xa0, &[0x0a, 0x01, 0x02]), tlv(0xa2, &tlv(0x04, &inner))].concat(),
        ),
    );
    assert!(matches!(
        context.step(Some(&resp)),
        Err(TicketContextError::TargetRefused(TargetRefusal::ClockSkew))
    ));
}

#[test]
fn garbage_from_the_target_is_an_error() {
    for reply in [
        &[][..],
        &[0xa1, 0x00],
        &[0x60, 0x02, 0x06, 0x00],
        &[0xa1, 0x84, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut context = TicketContext::new(&ticket(), SPN).with_clock(while_good);
        context.step(None).unwrap();
        assert!(context.step(Some(reply)).is_err());
    }
}
