use std::time::Duration;

use super::*;
use crate::proto::kerberos::fixtures::{self, PASSWORD};

fn spn(request: &[u8]) -> String {
    match classify_request(request) {
        KdcRequest::Tgs { spn, .. } => spn,
        other => panic!("not a TGS request: {other:?}"),
    }
}

/// Tickets after the recorded AS and TGS exchanges, kept with `password`.
fn kept(password: &str) -> Tickets {
    let mut tickets = Tickets::default();
    let as_plain = classify_request(&fixtures::as_req());
    let as_preauth = classify_request(&fixtures::as_req_preauth());
    keep(&mut tickets, &as_plain, &fixtures::preauth_required(), password);
    keep(&mut tickets, &as_preauth, &fixtures::as_rep(), password);
    keep(
        &mut tickets,
        &classify_request(&fixtures::tgs_req()),
        &fixtures::tgs_rep(),
        password,
    );
    tickets
}

#[test]
fn requests_say_what_they_ask_for() {
    assert_eq!(
        classify_request(&fixtures::as_req()),
        KdcRequest::As {
            client: "alice@LAB.TEST".into(),
            realm: "LAB.TEST".into(),
            preauth: false
        }
    );
    assert_eq!(
        classify_request(&fixtures::as_req_preauth()),
        KdcRequest::As {
            client: "alice@LAB.TEST".into(),
            realm: "LAB.TEST".into(),
            preauth: true
        }
    );
    assert_eq!(
        classify_request(&fixtures::tgs_req()),
        KdcRequest::Tgs {
            spn: "HTTP/web11.lab.test".into(),
            realm: "LAB.TEST".into()
        }
    );
    assert_eq!(spn(&fixtures::tgs_req_unknown_spn()), "HTTP/nosuch.lab.test");
    let mut truncated = fixtures::as_req();
    truncated.pop();
    for other in [vec![], vec![0, 0, 0, 1, 0x6a], truncated, fixtures::as_rep()] {
        assert_eq!(classify_request(&other), KdcRequest::Other, "{other:02x?}");
    }
}

#[test]
fn the_as_exchange_and_each_service_ticket_are_answered_again() {
    let tickets = kept(PASSWORD);
    let tgt = tickets.tgt.as_ref().expect("TGT kept");
    // The end times come from the decrypted AS-REP and TGS-REP.
    assert_eq!(tgt.as_rep.expires, fixtures::tickets_end());
    assert_eq!(tgt.session_key.len(), 32, "aes256 session key");
    assert_eq!(tickets.services["HTTP/web11.lab.test"].expires, fixtures::tickets_end());

    let now = fixtures::while_tickets_good();
    let answer = |request: Vec<u8>| kept_reply(&tickets, &classify_request(&request), now);
    assert_eq!(answer(fixtures::as_req()), Some(fixtures::preauth_required()));
    assert_eq!(answer(fixtures::as_req_preauth()), Some(fixtures::as_rep()));
    assert_eq!(answer(fixtures::tgs_req()), Some(fixtures::tgs_rep()));
    // Another SPN has no ticket yet: that one goes to the KDC.
    assert_eq!(answer(fixtures::tgs_req_unknown_spn()), None);
    assert_eq!(answer(vec![0, 0, 0, 0]), None);
}

#[test]
fn tickets_near_their_end_are_not_used() {
    let tickets = kept(PASSWORD);
    let tgt_end = tickets.tgt.as_ref().unwrap().as_rep.expires;
    let request = classify_request(&fixtures::as_req_preauth());
    let just_before = tgt_end - EXPIRY_MARGIN - Duration::from_secs(1);
    assert!(kept_reply(&tickets, &request, just_before).is_some());
    assert!(kept_reply(&tickets, &request, tgt_end - EXPIRY_MARGIN).is_none());
    assert!(kept_reply(&tickets, &classify_request(&fixtures::tgs_req()), tgt_end).is_none());
}

#[test]
fn an_as_rep_that_the_password_does_not_open_is_not_kept() {
    let tickets = kept("another password");
    assert!(tickets.tgt.is_none());
    assert!(
        tickets.services.is_empty(),
        "no TGS-REP without the TGT it decrypts with"
    );
    assert!(kept_reply(
        &tickets,
        &classify_request(&fixtures::as_req()),
        fixtures::while_tickets_good()
    )
    .is_none());
}

#[test]
fn an_as_rep_without_the_preceding_request_for_preauthentication_is_not_kept() {
    let mut tickets = Tickets::default();
    keep(
        &mut tickets,
        &classify_request(&fixtures::as_req_preauth()),
        &fixtures::as_rep(),
        PASSWORD,
    );
    assert!(tickets.tgt.is_none());
    // A refusal is never kept as an answer.
    keep(
        &mut tickets,
        &classify_request(&fixtures::as_req()),
        &fixtures::preauth_failed(),
        PASSWORD,
    );
    assert!(tickets.pending_preauth.is_none());
}

#[test]
fn a_new_tgt_drops_the_service_tickets_of_the_old_one() {
    let mut tickets = kept(PASSWORD);
    assert_eq!(tickets.services.len(), 1);
    keep(
        &mut tickets,
        &classify_request(&fixtures::as_req()),
        &fixtures::preauth_required(),
        PASSWORD,
    );
    keep(
        &mut tickets,
        &classify_request(&fixtures::as_req_preauth()),
        &fixtures::as_rep(),
        PASSWORD,
    );
    assert!(tickets.tgt.is_some());
    assert!(tickets.services.is_empty());
}

#[test]
fn a_tgt_the_kdc_calls_expired_is_dropped() {
    let mut tickets = kept(PASSWORD);
    let expired = fixtures::frame(&fixtures::krb_error(32, None));
    keep(
        &mut tickets,
        &classify_request(&fixtures::tgs_req()),
        &expired,
        PASSWORD,
    );
    assert!(tickets.tgt.is_none() && tickets.services.is_empty());
}

#[test]
fn framing() {
    assert_eq!(unframe(&[0, 0, 0, 2, 0x6a, 0x00]), Some(&[0x6a, 0x00][..]));
    assert_eq!(unframe(&[0, 0, 0, 3, 0x6a, 0x00]), None);
    assert_eq!(unframe(&[0, 0]), None);
}
