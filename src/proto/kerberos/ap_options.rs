//! The channel-binding mark of sspi's AP-REQ, made readable.
//!
//! A client that binds its ticket to a TLS channel puts the binding's hash in the
//! authenticator checksum and says it does so with AD-AUTH-DATA-AP-OPTIONS holding
//! KERB_AP_OPTIONS_CBT: a 32-bit little-endian `0x4000`, inside AD-IF-RELEVANT. sspi
//! 0.23.1 writes two bytes (`40 00`, which reads as another option) at the top level;
//! MIT's acceptor refuses an AP options entry that is not four bytes long, and Windows
//! reads it as no binding at all. The relay re-encrypts the authenticator with the
//! entry as it should be: everything else (the binding hash, the subkey, the sequence
//! number, the time) stays what sspi made.

use picky_asn1::wrapper::{
    Asn1SequenceOf, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2, IntegerAsn1, OctetStringAsn1,
};
use picky_krb::constants::key_usages::AP_REQ_AUTHENTICATOR;
use picky_krb::constants::types::AD_AUTH_DATA_AP_OPTION_TYPE;
use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::{Authenticator, AuthorizationData, AuthorizationDataInner};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage};
use picky_krb::messages::ApReq;
use zeroize::Zeroizing;

use crate::proto::guard::contain_panic;

/// AD-IF-RELEVANT: authorization data an acceptor that does not know it ignores.
const AD_IF_RELEVANT: [u8; 1] = [0x01];
/// KERB_AP_OPTIONS_CBT as the AP options value: 0x4000, 32-bit little-endian.
const KERB_AP_OPTIONS_CBT: [u8; 4] = [0x00, 0x40, 0x00, 0x00];

/// `token` (sspi's SPNEGO NegTokenInit carrying the AP-REQ) with the AP options entry
/// of its authenticator rewritten; `session_key` is the service ticket's, which
/// encrypts the authenticator. `None` when the token is not what sspi makes (then it
/// goes as it is).
pub fn fix_channel_binding_mark(token: &[u8], session_key: &[u8]) -> Option<Vec<u8>> {
    contain_panic(|| rewrite(token, session_key)).ok().flatten()
}

fn rewrite(token: &[u8], session_key: &[u8]) -> Option<Vec<u8>> {
    let mut init: ApplicationTag0<GssApiNegInit> = picky_asn1_der::from_bytes(token).ok()?;
    let mech_token = init.0.neg_token_init.0.mech_token.0.as_mut()?;
    let mut message = KrbMessage::<ApReq>::decode_application_krb_message(&mech_token.0 .0)
        .ok()?
        .0;
    let encrypted = &mut message.krb_msg.0.authenticator.0;
    let etype = *encrypted.etype.0 .0.first()?;
    let cipher = CipherSuite::try_from(usize::from(etype)).ok()?.cipher();
    let plain = Zeroizing::new(
        cipher
            .decrypt(session_key, AP_REQ_AUTHENTICATOR, &encrypted.cipher.0 .0)
            .ok()?,
    );
    let mut authenticator: Authenticator = picky_asn1_der::from_bytes(&plain).ok()?;
    let entries = &mut authenticator.0.authorization_data.0.as_mut()?.0 .0;
    let at = entries
        .iter()
        .position(|entry| entry.ad_type.0 .0 == AD_AUTH_DATA_AP_OPTION_TYPE)?;
    let ap_options: AuthorizationData =
        Asn1SequenceOf::from(vec![entry(&AD_AUTH_DATA_AP_OPTION_TYPE, KERB_AP_OPTIONS_CBT.to_vec())]);
    entries[at] = entry(&AD_IF_RELEVANT, picky_asn1_der::to_vec(&ap_options).ok()?);
    let plain = Zeroizing::new(picky_asn1_der::to_vec(&authenticator).ok()?);
    let sealed = cipher.encrypt(session_key, AP_REQ_AUTHENTICATOR, &plain).ok()?;
    encrypted.cipher = ExplicitContextTag2::from(OctetStringAsn1::from(sealed));
    let ap_req = picky_asn1_der::to_vec(&ApplicationTag0(message)).ok()?;
    *mech_token = ExplicitContextTag2::from(OctetStringAsn1::from(ap_req));
    picky_asn1_der::to_vec(&init).ok()
}

/// The authenticator's authorization data of a channel-bound AP-REQ the relay makes
/// itself: the entry as Windows and MIT read it.
pub(crate) fn channel_binding_mark() -> Option<AuthorizationData> {
    let ap_options: AuthorizationData =
        Asn1SequenceOf::from(vec![entry(&AD_AUTH_DATA_AP_OPTION_TYPE, KERB_AP_OPTIONS_CBT.to_vec())]);
    let relevant = entry(&AD_IF_RELEVANT, picky_asn1_der::to_vec(&ap_options).ok()?);
    Some(Asn1SequenceOf::from(vec![relevant]))
}

fn entry(ad_type: &[u8], data: Vec<u8>) -> AuthorizationDataInner {
    AuthorizationDataInner {
        ad_type: ExplicitContextTag0::from(IntegerAsn1::from(ad_type.to_vec())),
        ad_data: ExplicitContextTag1::from(OctetStringAsn1::from(data)),
    }
}

#[cfg(test)]
pub(crate) mod tests;
