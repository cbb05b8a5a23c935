use std::collections::HashMap;

use secrecy::SecretString;

use super::*;
use crate::proto::kerberos::fixtures::{self, PASSWORD};
use crate::proto::kerberos::tickets::KdcRequest;

fn lab() -> Domain {
    Domain {
        realm: "LAB.TEST".into(),
        netbios: "LAB".into(),
    }
}

fn credentials(domain: &str, user: &str, password: &str) -> DelegatedCredentials {
    DelegatedCredentials::new(domain, user, SecretString::from(password.to_string()))
}

/// How a step run against the recorded KDC ended, when it did not give a token.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("no KDC answered (test)")]
    Unreachable,
    #[error(transparent)]
    Kerberos(#[from] KerberosError),
}

/// A KDC answering from the recorded exchanges, counting what it was asked.
#[derive(Default)]
struct RecordedKdc {
    asked: Vec<KdcRequest>,
    /// Answer the pre-authenticated AS-REQ with "pre-authentication failed".
    wrong_password: bool,
    down: bool,
}

impl RecordedKdc {
    /// The framed answer to a framed request, or `None` when no KDC answers.
    fn exchange(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let asked = classify_request(request);
        self.asked.push(asked.clone());
        match asked {
            _ if self.down => None,
            KdcRequest::As { preauth: false, .. } => Some(fixtures::preauth_required()),
            KdcRequest::As { preauth: true, .. } if self.wrong_password => Some(fixtures::preauth_failed()),
            KdcRequest::As { preauth: true, .. } => Some(fixtures::as_rep()),
            KdcRequest::Tgs { spn, .. } if spn == "HTTP/web11.lab.test" => Some(fixtures::tgs_rep()),
            KdcRequest::Tgs { .. } => Some(fixtures::unknown_spn()),
            KdcRequest::Other => None,
        }
    }

    /// Runs `step` to its end, answering what it asks as the relay's KDC loop does.
    fn run(&mut self, mut step: ClientStep<'_>) -> Result<Option<Vec<u8>>, Failed> {
        let mut turn = step.start();
        loop {
            match turn {
                KdcTurn::Done(outcome) => return Ok(outcome?),
                KdcTurn::Ask(request) => {
                    let framed = self.exchange(&request.data).ok_or(Failed::Unreachable)?;
                    let message = unframe(&framed).expect("a framed reply");
                    turn = step.answer(KdcReply::new("tcp://dc1.lab.test:88".into(), message));
                }
            }
        }
    }
}

impl RecordedKdc {
    /// How many requests of each kind it got: AS (both legs), TGS.
    fn counts(&self) -> HashMap<&'static str, usize> {
        let mut counts = HashMap::new();
        for asked in &self.asked {
            let kind = match asked {
                KdcRequest::As { .. } => "as",
                KdcRequest::Tgs { .. } => "tgs",
                KdcRequest::Other => "other",
            };
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }
}

fn client(credentials: &DelegatedCredentials, spn: &str) -> KerberosClient {
    KerberosClient::new(credentials, &lab(), spn)
        .expect("client")
        .with_clock(fixtures::while_tickets_good)
}

/// The first step: the AP-REQ for the target, inside SPNEGO.
fn first_token(credentials: &DelegatedCredentials, spn: &str, kdc: &mut RecordedKdc) -> Result<Vec<u8>, Failed> {
    let mut client = client(credentials, spn);
    let token = kdc.run(client.step(None, credentials))?.expect("a token");
    assert!(!client.is_established(), "waits for the target's AP-REP");
    Ok(token)
}

#[test]
fn one_as_exchange_per_session_and_one_tgs_exchange_per_target() {
    let alice = credentials("LAB", "alice", PASSWORD);
    let mut kdc = RecordedKdc::default();
    let token = first_token(&alice, "HTTP/web11.lab.test", &mut kdc).expect("AP-REQ");
    // SPNEGO's NegTokenInit, carrying Kerberos.
    assert_eq!(token[0], 0x60, "{:02x?}", &token[..8]);
    assert_eq!(kdc.counts(), HashMap::from([("as", 2), ("tgs", 1)]));

    // The session's next connection to the same target: no KDC at all.
    let again = first_token(&alice, "HTTP/web11.lab.test", &mut kdc).expect("AP-REQ");
    assert_eq!(kdc.counts(), HashMap::from([("as", 2), ("tgs", 1)]));
    assert_ne!(again, token, "a new authenticator every time");

    // Another target: its service ticket only.
    let error = first_token(&alice, "HTTP/nosuch.lab.test", &mut kdc).expect_err("unknown SPN");
    assert_eq!(kdc.counts(), HashMap::from([("as", 2), ("tgs", 2)]));
    assert!(
        matches!(&error, Failed::Kerberos(KerberosError::Refused(KdcRefusal::UnknownSpn { spn, .. })) if spn == "HTTP/nosuch.lab.test"),
        "{error}"
    );

    // Another session (new credentials, even of the same user) starts over.
    let fresh = credentials("LAB", "alice", PASSWORD);
    first_token(&fresh, "HTTP/web11.lab.test", &mut kdc).expect("AP-REQ");
    assert_eq!(kdc.counts(), HashMap::from([("as", 4), ("tgs", 3)]));
}

#[test]
fn the_kdcs_refusal_says_why() {
    let alice = credentials("LAB", "alice", "not her password");
    let mut kdc = RecordedKdc {
        wrong_password: true,
        ..RecordedKdc::default()
    };
    let error = first_token(&alice, "HTTP/web11.lab.test", &mut kdc).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "pre-authentication failed: LAB.TEST refused the delegated password of alice@LAB.TEST"
    );
    assert!(alice.tickets().tgt.is_none());
}

#[test]
fn an_unreachable_kdc_is_the_transports_error() {
    let alice = credentials("LAB", "alice", PASSWORD);
    let mut kdc = RecordedKdc {
        down: true,
        ..RecordedKdc::default()
    };
    let error = first_token(&alice, "HTTP/web11.lab.test", &mut kdc).expect_err("no KDC");
    assert!(matches!(error, Failed::Unreachable), "{error}");
}

#[test]
fn accounts_of_the_realm_by_any_name() {
    let user = |domain: &str, name: &str| realm_user(&credentials(domain, name, "pw"), &lab());
    assert_eq!(user("LAB", "alice").as_deref(), Some("alice"));
    assert_eq!(user("lab", "alice").as_deref(), Some("alice"));
    assert_eq!(user("LAB.TEST", "alice").as_deref(), Some("alice"));
    assert_eq!(user("lab.test", "alice").as_deref(), Some("alice"));
    assert_eq!(user("", "alice@LAB.TEST").as_deref(), Some("alice"));
    assert_eq!(user("", "alice@lab.test").as_deref(), Some("alice"));
    assert_eq!(user("LAB", "alice@lab.test").as_deref(), Some("alice"));
    for (domain, name) in [
        ("WORKGROUP", "alice"),
        ("", "alice"),
        ("", "alice@OTHER.TEST"),
        ("OTHER", "alice@LAB.TEST"),
        ("LAB", ""),
        ("", "@LAB.TEST"),
    ] {
        assert_eq!(user(domain, name), None, "{domain}\\{name}");
    }
    let error = KerberosClient::new(&credentials("WORKGROUP", "bob", "pw"), &lab(), "HTTP/x").unwrap_err();
    assert_eq!(
        error.to_string(),
        "WORKGROUP\\bob is not an account of the realm LAB.TEST (NetBIOS name LAB): it cannot use Kerberos"
    );
}

#[test]
fn nothing_is_sealed_before_the_target_answered() {
    let alice = credentials("LAB", "alice", PASSWORD);
    let part = SealedPart {
        original_length: 4,
        header_len: 60,
        data: vec![0; 64],
    };
    let mut fresh = client(&alice, "HTTP/web11.lab.test");
    assert!(matches!(fresh.seal(b"x"), Err(KerberosError::Incomplete)));
    assert!(matches!(fresh.unseal(&part), Err(KerberosError::Incomplete)));
    let mut started = client(&alice, "HTTP/web11.lab.test");
    RecordedKdc::default().run(started.step(None, &alice)).expect("AP-REQ");
    assert!(matches!(started.seal(b"x"), Err(KerberosError::Incomplete)));
    // The next step needs the target's token.
    let error = RecordedKdc::default().run(started.step(None, &alice)).unwrap_err();
    assert!(matches!(error, Failed::Kerberos(KerberosError::Incomplete)), "{error}");
}

#[test]
fn garbage_from_the_target_is_an_error_not_a_panic() {
    let alice = credentials("LAB", "alice", PASSWORD);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xa1],
        vec![0xa1, 0x84, 0xff, 0xff, 0xff, 0xff],
        (0..64).map(|i| (i * 37 + 11) as u8).collect(),
        fixtures::tlv(
            0xa1,
            &fixtures::tlv(0x30, &fixtures::tlv(0xa2, &fixtures::tlv(0x04, b"\x6f\x00"))),
        ),
    ];
    for token in garbage {
        let mut client = client(&alice, "HTTP/web11.lab.test");
        RecordedKdc::default().run(client.step(None, &alice)).expect("AP-REQ");
        assert!(
            RecordedKdc::default().run(client.step(Some(&token), &alice)).is_err(),
            "{token:02x?}"
        );
        assert!(!client.is_established());
        assert!(client.seal(b"<s:Envelope/>").is_err());
    }
}

#[test]
fn a_channel_bound_ap_req_says_so_as_acceptors_read_it() {
    use crate::proto::kerberos::ap_options::tests::{authorization_data, marked_as_channel_bound};

    let alice = credentials("LAB", "alice", PASSWORD);
    let mut bound = client(&alice, "HTTP/web11.lab.test").with_channel_bindings(b"tls-server-end-point:0123");
    let token = RecordedKdc::default()
        .run(bound.step(None, &alice))
        .expect("AP-REQ")
        .expect("token");
    let key = bound
        .ctx
        .as_ref()
        .expect("context")
        .query_context_session_key()
        .expect("session key");
    let entries = authorization_data(&token, key.session_key.as_ref());
    assert!(marked_as_channel_bound(&entries), "{entries:?}");

    // Without channel bindings there is nothing to mark.
    let mut unbound = client(&alice, "HTTP/web11.lab.test");
    let token = RecordedKdc::default()
        .run(unbound.step(None, &alice))
        .expect("AP-REQ")
        .expect("token");
    let key = unbound
        .ctx
        .as_ref()
        .expect("context")
        .query_context_session_key()
        .expect("session key");
    assert!(authorization_data(&token, key.session_key.as_ref()).is_empty());
}

#[test]
fn a_target_that_refuses_the_ticket_for_clock_skew_says_so() {
    let alice = credentials("LAB", "alice", PASSWORD);
    let mut client = client(&alice, "HTTP/web11.lab.test");
    RecordedKdc::default().run(client.step(None, &alice)).expect("AP-REQ");
    let krb5_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
    let error = [
        fixtures::tlv(0x06, &krb5_oid),
        vec![0x03, 0x00],
        fixtures::krb_error(37, None),
    ]
    .concat();
    let answer = fixtures::tlv(
        0xa1,
        &fixtures::tlv(
            0x30,
            &[
                fixtures::tlv(0xa0, &[0x0a, 0x01, 0x02]),
                fixtures::tlv(0xa2, &fixtures::tlv(0x04, &fixtures::tlv(0x60, &error))),
            ]
            .concat(),
        ),
    );
    let refused = RecordedKdc::default()
        .run(client.step(Some(&answer), &alice))
        .unwrap_err();
    assert!(
        matches!(
            refused,
            Failed::Kerberos(KerberosError::TargetRefused(TargetRefusal::ClockSkew))
        ),
        "{refused}"
    );
}
