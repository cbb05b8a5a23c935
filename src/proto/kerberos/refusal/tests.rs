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
