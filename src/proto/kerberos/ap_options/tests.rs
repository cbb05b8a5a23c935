use picky_krb::constants::gss_api::AUTHENTICATOR_CHECKSUM_TYPE;
use picky_krb::messages::AsRep;
use sspi::channel_bindings::ChannelBindings;
use sspi::kerberos::client::generators::{generate_authenticator, ChecksumOptions, GenerateAuthenticatorOptions};

use super::*;
use crate::proto::http_auth::sec_channel_bindings;
use crate::proto::kerberos::fixtures;

/// The authorization data in the authenticator of `token`, decrypted with `session_key`.
pub(crate) fn authorization_data(token: &[u8], session_key: &[u8]) -> Vec<AuthorizationDataInner> {
    let init: ApplicationTag0<GssApiNegInit> = picky_asn1_der::from_bytes(token).expect("NegTokenInit");
    let mech_token = init.0.neg_token_init.0.mech_token.0.expect("mech token").0 .0;
    let ap_req = KrbMessage::<ApReq>::decode_application_krb_message(&mech_token)
        .expect("AP-REQ")
        .0;
    let encrypted = &ap_req.krb_msg.0.authenticator.0;
    let cipher = CipherSuite::try_from(usize::from(encrypted.etype.0 .0[0]))
        .unwrap()
        .cipher();
    let plain = cipher
        .decrypt(session_key, AP_REQ_AUTHENTICATOR, &encrypted.cipher.0 .0)
        .expect("authenticator decrypts with the session key");
    let authenticator: Authenticator = picky_asn1_der::from_bytes(&plain).expect("authenticator");
    authenticator
        .0
        .authorization_data
        .0
        .map(|ad| ad.0 .0)
        .unwrap_or_default()
}

/// What acceptors read: AD-IF-RELEVANT holding AD-AUTH-DATA-AP-OPTIONS = KERB_AP_OPTIONS_CBT (32-bit LE).
pub(crate) fn marked_as_channel_bound(entries: &[AuthorizationDataInner]) -> bool {
    let [entry] = entries else { return false };
    if entry.ad_type.0 .0 != AD_IF_RELEVANT {
        return false;
    }
    let inner: AuthorizationData = picky_asn1_der::from_bytes(&entry.ad_data.0 .0).expect("if-relevant contents");
    matches!(&inner.0[..], [ap] if ap.ad_type.0 .0 == AD_AUTH_DATA_AP_OPTION_TYPE
        && ap.ad_data.0 .0 == [0x00, 0x40, 0x00, 0x00])
}

#[test]
fn sspi_marks_a_channel_bound_authenticator_with_two_bytes() {
    // What this module mends: if sspi gets this right, the rewrite is no longer needed.
    let as_rep: AsRep = picky_asn1_der::from_bytes(&fixtures::as_rep()[4..]).expect("AS-REP");
    let bindings = ChannelBindings::from_bytes(sec_channel_bindings(b"tls-server-end-point:0123")).unwrap();
    let authenticator = generate_authenticator(GenerateAuthenticatorOptions {
        kdc_rep: &as_rep.0,
        seq_num: None,
        sub_key: None,
        checksum: Some(ChecksumOptions {
            checksum_type: AUTHENTICATOR_CHECKSUM_TYPE.to_vec(),
            checksum_value: Default::default(),
        }),
        channel_bindings: Some(&bindings),
        extensions: Vec::new(),
    })
    .unwrap();
    let entries = authenticator.0.authorization_data.0.unwrap().0 .0;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].ad_type.0 .0, AD_AUTH_DATA_AP_OPTION_TYPE);
    assert_eq!(entries[0].ad_data.0 .0, [0x40, 0x00]);
    assert!(!marked_as_channel_bound(&entries));
}

#[test]
fn what_is_not_sspis_ap_req_is_left_alone() {
    assert_eq!(fix_channel_binding_mark(b"", &[0; 32]), None);
    assert_eq!(
        fix_channel_binding_mark(&[0x60, 0x03, 0x06, 0x01, 0x00], &[0; 32]),
        None
    );
    assert_eq!(fix_channel_binding_mark(&fixtures::tgs_req(), &[0; 32]), None);
}
