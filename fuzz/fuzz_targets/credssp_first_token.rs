//! Classifying the client's first negotiation token: never panic, and what
//! is accepted as SPNEGO must be safe for the parser it protects. sspi's
//! Negotiate server decodes it as picky-krb's `ApplicationTag0<GssApiNegInit>`,
//! whose `Deserialize` impl `unwrap`s the inner decode: a token the relay lets
//! through and picky-krb cannot decode panics *before authentication*. A raw
//! krb5 token goes to sspi wrapped (`wrap_raw_krb5`): the wrapped form must
//! decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit};
use winrm_relay::proto::credssp::{classify_first_token, wrap_raw_krb5, InnerMechanism};

/// Exactly what sspi's extractors::decode_initial_neg_init does; a panic
/// here (libfuzzer-sys aborts on any) is the finding.
fn assert_picky_decodes(token: &[u8]) {
    let decoded: Result<ApplicationTag0<GssApiNegInit>, _> = picky_asn1_der::from_bytes(token);
    assert!(decoded.is_ok(), "accepted a token picky-krb refuses: {decoded:?}");
}

fuzz_target!(|data: &[u8]| {
    match classify_first_token(data) {
        Ok(InnerMechanism::Ntlm) => assert!(data.starts_with(b"NTLMSSP\0")),
        Ok(InnerMechanism::Negotiate | InnerMechanism::NegotiateKerberos) => {
            assert_eq!(data[0], 0x60);
            assert_picky_decodes(data);
        }
        Ok(InnerMechanism::Kerberos) => assert_picky_decodes(&wrap_raw_krb5(data)),
        Err(_) => {}
    }
});
