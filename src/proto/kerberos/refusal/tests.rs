use super::*;
use crate::proto::kerberos::fixtures;
use crate::proto::kerberos::tickets::{classify_request, unframe};

fn refusal_of(request: Vec<u8>, reply: Vec<u8>) -> Option<KdcRefusal> {
    refusal(&classify_request(&request), unframe(&reply).expect("framed"))
}

#[test]
fn a_wrong_password_is_a_failed_preauthentication() {
    let refused = refusal_of(fixtures::as_req_preauth(), fixtures::preauth_failed()).expect("refusal");
    assert_eq!(
        refused,
        KdcRefusal::PreauthFailed {
            client: "alice@LAB.TEST".into(),
            realm: "LAB.TEST".into()
        }
    );
    assert_eq!(
        refused.to_string(),
        "pre-authentication failed: LAB.TEST refused the delegated password of alice@LAB.TEST"
    );
}

#[test]
fn an_unknown_spn_is_named() {
    let refused = refusal_of(fixtures::tgs_req_unknown_spn(), fixtures::unknown_spn()).expect("refusal");
    assert_eq!(
        refused,
        KdcRefusal::UnknownSpn {
            spn: "HTTP/nosuch.lab.test".into(),
            realm: "LAB.TEST".into()
        }
    );
    assert!(refused
        .to_string()
        .starts_with("unknown SPN HTTP/nosuch.lab.test: LAB.TEST has no service principal"));
}

#[test]
fn the_request_for_preauthentication_and_replies_are_no_refusal() {
    assert_eq!(refusal_of(fixtures::as_req(), fixtures::preauth_required()), None);
    assert_eq!(refusal_of(fixtures::as_req_preauth(), fixtures::as_rep()), None);
    assert_eq!(refusal_of(fixtures::tgs_req(), fixtures::tgs_rep()), None);
}

#[test]
fn other_codes_say_what_to_do_or_what_the_kdc_said() {
    let as_request = classify_request(&fixtures::as_req_preauth());
    let tgs_request = classify_request(&fixtures::tgs_req());
    let cases = [
        (
            37,
            &as_request,
            "clock skew: the clocks of the relay and of LAB.TEST's KDC differ",
        ),
        (37, &tgs_request, "clock skew"),
        (
            18,
            &as_request,
            "LAB.TEST refused alice@LAB.TEST: the account is disabled, locked out or expired",
        ),
        (
            23,
            &as_request,
            "the password of alice@LAB.TEST has expired in LAB.TEST",
        ),
        (6, &as_request, "LAB.TEST does not know the user alice@LAB.TEST"),
        (
            14,
            &tgs_request,
            "LAB.TEST has no key for HTTP/web11.lab.test with an encryption type the relay supports",
        ),
    ];
    for (code, request, want) in cases {
        let refused = refusal(request, &fixtures::krb_error(code, None))
            .expect("refusal")
            .to_string();
        assert!(refused.starts_with(want), "{code}: {refused}");
    }
    // The KDC's own words, without control characters.
    let refused = refusal(&tgs_request, &fixtures::krb_error(12, Some("POLICY\x1b[31m denied"))).unwrap();
    assert_eq!(
        refused.to_string(),
        "LAB.TEST refused a ticket for HTTP/web11.lab.test: Kerberos error 12 (POLICY[31m denied)"
    );
    assert_eq!(refusal(&as_request, b"\x6b\x00"), None);
}

/// A krb5 mechanism token carrying `error` (token id 03 00), bare or in a NegTokenResp.
fn target_error_token(error: &[u8], spnego: bool) -> Vec<u8> {
    let krb5_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
    let token = fixtures::tlv(
        0x60,
        &[fixtures::tlv(0x06, &krb5_oid), vec![0x03, 0x00], error.to_vec()].concat(),
    );
    if !spnego {
        return token;
    }
    let fields = [
        fixtures::tlv(0xa0, &[0x0a, 0x01, 0x02]),
        fixtures::tlv(0xa2, &fixtures::tlv(0x04, &token)),
    ]
    .concat();
    fixtures::tlv(0xa1, &fixtures::tlv(0x30, &fields))
}

#[test]
fn a_target_that_says_why_it_refused_the_ticket() {
    let spn = "HTTP/web11.lab.test";
    let skew = target_error_token(&fixtures::krb_error(37, None), true);
    assert_eq!(target_refusal(&skew, spn), Some(TargetRefusal::ClockSkew));
    assert!(TargetRefusal::ClockSkew
        .to_string()
        .starts_with("clock skew: the clocks of the relay and of the target"));
    let modified = target_error_token(&fixtures::krb_error(41, None), false);
    assert_eq!(
        target_refusal(&modified, spn),
        Some(TargetRefusal::WrongKey { spn: spn.into() })
    );
    let other = target_error_token(&fixtures::krb_error(60, Some("GENERIC")), true);
    assert_eq!(
        target_refusal(&other, spn).unwrap().to_string(),
        "the target refused the ticket for HTTP/web11.lab.test: Kerberos error 60 (GENERIC)"
    );
    // An AP-REP, garbage, nothing: no refusal to tell.
    let ap_rep = [
        0x60, 0x0e, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x02, 0x00, 0x6f,
    ];
    for token in [&ap_rep[..], b"", b"\xa1\x84\xff\xff\xff\xff", b"\x60\x02\x06\x00"] {
        assert_eq!(target_refusal(token, spn), None, "{token:02x?}");
    }
}
