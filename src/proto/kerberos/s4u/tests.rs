use picky_krb::messages::{AsReq, TgsReq};

use super::*;
use crate::proto::kerberos::fixtures::krb_error;
use crate::proto::kerberos::keytab::parse_keytab;
use crate::proto::kerberos::service_ticket::{evidence, ticket_client};

const RELAY_KEYTAB: &[u8] = include_bytes!("../fixtures/s4u/relay.keytab");
const WEB01_KEYTAB: &[u8] = include_bytes!("../fixtures/s4u/web01.keytab");
const ALICE: &[u8] = include_bytes!("../fixtures/s4u/alice_spnego.bin");
const CAROL: &[u8] = include_bytes!("../fixtures/s4u/carol_spnego.bin");
const ALICE_NOT_FORWARDABLE: &[u8] = include_bytes!("../fixtures/s4u/alice_not_forwardable_spnego.bin");
const AS_REQ: &[u8] = include_bytes!("../fixtures/s4u/as_req.der");
const AS_REP: &[u8] = include_bytes!("../fixtures/s4u/as_rep.der");
const TGS_REQ: &[u8] = include_bytes!("../fixtures/s4u/alice_web01_tgs_req.der");
const TGS_REP: &[u8] = include_bytes!("../fixtures/s4u/alice_web01_tgs_rep.der");
const NOT_ALLOWED: &[u8] = include_bytes!("../fixtures/s4u/alice_web02_tgs_rep.der");

fn account() -> RelayAccount {
    let entries = parse_keytab(RELAY_KEYTAB).unwrap();
    RelayAccount::from_keytab(&entries, "LAB.TEST").unwrap()
}

fn evidence_of(token: &[u8]) -> Evidence {
    let entries = parse_keytab(RELAY_KEYTAB).unwrap();
    let (keys, _) = service_keys(&entries);
    let refs: Vec<(&[String], &[u8])> = keys
        .iter()
        .map(|k| (k.principal.components.as_slice(), k.entry.key.as_slice()))
        .collect();
    evidence(token, &refs).unwrap()
}

fn nonce_of(request: &KdcReq) -> u32 {
    let bytes = request.req_body.0.nonce.0.as_unsigned_bytes_be();
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

fn tgt() -> IssuedTicket {
    let request: AsReq = picky_asn1_der::from_bytes(AS_REQ).unwrap();
    read_tgt_reply(&account(), AS_REP, nonce_of(&request.0)).unwrap()
}

fn proxy_nonce() -> u32 {
    let request: TgsReq = picky_asn1_der::from_bytes(TGS_REQ).unwrap();
    nonce_of(&request.0)
}

#[test]
fn the_account_principal_is_found_among_the_spns() {
    let account = account();
    assert_eq!(account.display(), "svc-relay@LAB.TEST");
    assert_eq!(account.suite, CipherSuite::Aes256CtsHmacSha196);
    // Another realm's keytab has no account for this one.
    let entries = parse_keytab(RELAY_KEYTAB).unwrap();
    assert!(RelayAccount::from_keytab(&entries, "OTHER.TEST").is_none());
    // A keytab of SPNs only has none.
    let entries = parse_keytab(WEB01_KEYTAB).unwrap();
    assert!(RelayAccount::from_keytab(&entries, "LAB.TEST").is_none());
}

#[test]
fn the_relay_tgt_opens_with_the_account_key() {
    let tgt = tgt();
    assert_eq!(tgt.client, "svc-relay@LAB.TEST");
    assert_eq!(tgt.service, "krbtgt/LAB.TEST@LAB.TEST");
    assert_eq!(tgt.session_key.len(), 32);
    assert!(format!("{tgt:?}").contains("svc-relay"));
    assert!(!format!("{:?}", account()).contains("key"));
}

#[test]
fn a_tgt_reply_to_another_request_is_refused() {
    let request: AsReq = picky_asn1_der::from_bytes(AS_REQ).unwrap();
    let error = read_tgt_reply(&account(), AS_REP, nonce_of(&request.0) ^ 1).unwrap_err();
    assert!(matches!(error, S4uError::BadReply { reason, .. } if reason.contains("nonce")));
}

#[test]
fn the_tgt_request_is_pre_authenticated_with_the_account_key() {
    let account = account();
    let message = tgt_request(&account, SystemTime::now(), 42).unwrap();
    let request: AsReq = picky_asn1_der::from_bytes(&message).unwrap();
    assert_eq!(nonce_of(&request.0), 42);
    let padata = &request.0.padata.0.as_ref().unwrap().0 .0[0];
    assert_eq!(padata.padata_type.0.as_unsigned_bytes_be(), PA_ENC_TIMESTAMP);
    let stamp: EncryptedData = picky_asn1_der::from_bytes(&padata.padata_data.0 .0).unwrap();
    let plain = account
        .suite
        .cipher()
        .decrypt(&account.key, AS_REQ_TIMESTAMP, &stamp.cipher.0 .0)
        .unwrap();
    let _: PaEncTsEnc = picky_asn1_der::from_bytes(&plain).unwrap();
}

#[test]
fn tgt_refusals_say_what_to_fix() {
    let account = account();
    let preauth = read_tgt_reply(&account, &krb_error(24, None), 1).unwrap_err();
    assert!(matches!(preauth, S4uError::RelayKeyRefused { .. }));
    assert!(preauth.to_string().contains("svc-relay@LAB.TEST"));
    assert!(preauth.to_string().contains("keytab"));
    let unknown = read_tgt_reply(&account, &krb_error(6, None), 1).unwrap_err();
    assert!(matches!(unknown, S4uError::UnknownRelayAccount { .. }));
    let skew = read_tgt_reply(&account, &krb_error(37, None), 1).unwrap_err();
    assert!(matches!(skew, S4uError::ClockSkew { .. }));
    assert!(skew.to_string().contains("NTP"));
}

#[test]
fn evidence_flags_come_from_the_ticket_and_its_pac() {
    let alice = evidence_of(ALICE);
    assert_eq!(alice.client, "alice@LAB.TEST");
    assert!(alice.forwardable && !alice.not_delegated);
    let carol = evidence_of(CAROL);
    assert_eq!(carol.client, "carol@LAB.TEST");
    assert!(!carol.forwardable && carol.not_delegated);
    let alice = evidence_of(ALICE_NOT_FORWARDABLE);
    assert!(!alice.forwardable && !alice.not_delegated);
}

#[test]
fn the_proxy_request_carries_the_evidence_and_asks_in_its_client_name() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    let message = proxy_request(&account, &tgt, &alice, "HTTP/web01.lab.test", SystemTime::now(), 7).unwrap();
    let request: TgsReq = picky_asn1_der::from_bytes(&message).unwrap();
    let body = &request.0.req_body.0;
    let options = &body.kdc_options.0 .0;
    assert!(options.is_set(FORWARDABLE) && options.is_set(CNAME_IN_ADDL_TKT));
    assert_eq!(
        components(&body.sname.0.as_ref().unwrap().0),
        ["HTTP", "web01.lab.test"]
    );
    let additional = &body.additional_tickets.0.as_ref().unwrap().0 .0;
    assert_eq!(additional.as_slice(), std::slice::from_ref(&alice.ticket));
    let padata = &request.0.padata.0.as_ref().unwrap().0 .0[0];
    assert_eq!(padata.padata_type.0.as_unsigned_bytes_be(), PA_TGS_REQ_TYPE);
    let ap_req: ApReq = picky_asn1_der::from_bytes(&padata.padata_data.0 .0).unwrap();
    assert_eq!(ap_req.0.ticket.0, tgt.ticket);
    // The authenticator opens with the TGT's session key and names the relay's account.
    let plain = tgt
        .suite
        .cipher()
        .decrypt(
            &tgt.session_key,
            TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR,
            &ap_req.0.authenticator.0.cipher.0 .0,
        )
        .unwrap();
    let authenticator: Authenticator = picky_asn1_der::from_bytes(&plain).unwrap();
    assert_eq!(components(&authenticator.0.cname.0), ["svc-relay"]);
    // Its checksum is keyed, over the body as sent.
    let cksum = authenticator.0.cksum.0.unwrap().0;
    let expected = ChecksumSuite::HmacSha196Aes256
        .hasher()
        .checksum(
            &tgt.session_key,
            TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR_CKSUM,
            &picky_asn1_der::to_vec(body).unwrap(),
        )
        .unwrap();
    assert_eq!(cksum.checksum.0 .0, expected);
}

#[test]
fn samba_issues_a_ticket_to_web01_in_alices_name() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    let ticket = read_proxy_reply(&account, &tgt, &alice, "HTTP/web01.lab.test", TGS_REP, proxy_nonce()).unwrap();
    assert_eq!(ticket.client, "alice@LAB.TEST");
    assert_eq!(ticket.service, "HTTP/web01.lab.test@LAB.TEST");
    assert!(ticket.start.is_some_and(|start| start < ticket.end));
    // web01's own key opens it, and it names alice.
    let entries = parse_keytab(WEB01_KEYTAB).unwrap();
    let (keys, _) = service_keys(&entries);
    let web01 = [(keys[0].principal.components.as_slice(), keys[0].entry.key.as_slice())];
    let mut context = super::super::ticket_context::TicketContext::new(&ticket, "HTTP/web01.lab.test");
    let token = context.step(None).unwrap().unwrap();
    assert_eq!(ticket_client(&token, &web01).unwrap().display(), "alice@LAB.TEST");
}

#[test]
fn a_reply_for_another_request_or_client_is_refused() {
    let (account, tgt, alice, carol) = (account(), tgt(), evidence_of(ALICE), evidence_of(CAROL));
    let spn = "HTTP/web01.lab.test";
    let error = read_proxy_reply(&account, &tgt, &alice, spn, TGS_REP, proxy_nonce() ^ 1).unwrap_err();
    assert!(matches!(error, S4uError::BadReply { reason, .. } if reason.contains("nonce")));
    let error = read_proxy_reply(&account, &tgt, &carol, spn, TGS_REP, proxy_nonce()).unwrap_err();
    assert!(matches!(error, S4uError::BadReply { reason, .. } if reason.contains("another client")));
    // web01's ticket is no answer to a request for web02's.
    let error = read_proxy_reply(&account, &tgt, &alice, "HTTP/web02.lab.test", TGS_REP, proxy_nonce()).unwrap_err();
    assert!(matches!(error, S4uError::BadReply { reason, .. } if reason.contains("another service")));
    // The TGT reply is no TGS reply.
    let error = read_proxy_reply(&account, &tgt, &alice, spn, AS_REP, proxy_nonce()).unwrap_err();
    assert!(matches!(error, S4uError::BadReply { .. }));
}

#[test]
fn samba_refuses_a_target_the_account_may_not_delegate_to() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    let error = read_proxy_reply(&account, &tgt, &alice, "HTTP/web02.lab.test", NOT_ALLOWED, 1).unwrap_err();
    assert_eq!(
        error,
        S4uError::NotAllowedToDelegate {
            account: "svc-relay@LAB.TEST".into(),
            spn: "HTTP/web02.lab.test".into(),
            code: 13
        }
    );
    let message = error.to_string();
    assert!(message.contains("msDS-AllowedToDelegateTo") && message.contains("HTTP/web02.lab.test"));
}

#[test]
fn the_relay_does_not_ask_for_what_the_domain_will_refuse() {
    let (account, tgt) = (account(), tgt());
    let spn = "HTTP/web01.lab.test";
    let carol = proxy_request(&account, &tgt, &evidence_of(CAROL), spn, SystemTime::now(), 1).unwrap_err();
    assert_eq!(
        carol,
        S4uError::UserNotDelegable {
            user: "carol@LAB.TEST".into()
        }
    );
    assert!(carol.to_string().contains("sensitive and cannot be delegated"));
    let alice = proxy_request(
        &account,
        &tgt,
        &evidence_of(ALICE_NOT_FORWARDABLE),
        spn,
        SystemTime::now(),
        1,
    )
    .unwrap_err();
    assert!(matches!(alice, S4uError::EvidenceNotForwardable { .. }));
    assert!(alice.to_string().contains("kinit -f"));
}

#[test]
fn proxy_refusals_say_what_to_fix() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    let read = |code| read_proxy_reply(&account, &tgt, &alice, "HTTP/web09.lab.test", &krb_error(code, None), 1);
    assert!(matches!(
        read(12).unwrap_err(),
        S4uError::NotAllowedToDelegate { code: 12, .. }
    ));
    assert!(matches!(read(7).unwrap_err(), S4uError::UnknownSpn { spn, .. } if spn == "HTTP/web09.lab.test"));
    assert!(matches!(read(37).unwrap_err(), S4uError::ClockSkew { .. }));
    let other = read_proxy_reply(
        &account,
        &tgt,
        &alice,
        "HTTP/web09.lab.test",
        &krb_error(60, Some("generic")),
        1,
    )
    .unwrap_err();
    assert!(other.to_string().contains("Kerberos error 60 (generic)"));
}

#[test]
fn conversations_ask_once_and_end_with_the_reading() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    let mut exchange = TgtExchange::new(&account);
    let KdcTurn::Ask(request) = exchange.start() else {
        panic!("no request")
    };
    assert_eq!(request.protocol, NetworkProtocol::Tcp);
    assert!(request
        .url
        .host_str()
        .is_some_and(|host| host.eq_ignore_ascii_case("lab.test")));
    let len = u32::from_be_bytes(request.data[..4].try_into().unwrap()) as usize;
    assert_eq!(len, request.data.len() - 4);
    let reply = KdcReply::new("tcp://kdc:88".into(), &krb_error(24, None));
    assert!(matches!(
        exchange.answer(reply),
        KdcTurn::Done(Err(S4uError::RelayKeyRefused { .. }))
    ));
    let mut exchange = ProxyExchange::new(&account, &tgt, &alice, "HTTP/web02.lab.test");
    assert!(matches!(exchange.start(), KdcTurn::Ask(_)));
    let reply = KdcReply::new("tcp://kdc:88".into(), NOT_ALLOWED);
    assert!(matches!(
        exchange.answer(reply),
        KdcTurn::Done(Err(S4uError::NotAllowedToDelegate { .. }))
    ));
}

#[test]
fn garbage_replies_are_errors() {
    let (account, tgt, alice) = (account(), tgt(), evidence_of(ALICE));
    for reply in [
        &[][..],
        &[0x6d, 0x00],
        &[0x6b, 0x84, 0xff, 0xff, 0xff, 0xff],
        &[0x7e, 0x00],
        &TGS_REP[..40],
    ] {
        assert!(read_tgt_reply(&account, reply, 1).is_err());
        assert!(read_proxy_reply(&account, &tgt, &alice, "HTTP/web01.lab.test", reply, 1).is_err());
    }
}
