//! Classifying the client's first negotiation token: never panic, and what
//! is accepted as SPNEGO has the DER framing the check promises (so sspi's
//! picky-krb parser is only ever handed consistent outer lengths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use winrm_relay::proto::credssp::{classify_first_token, InnerMechanism};

fuzz_target!(|data: &[u8]| {
    match classify_first_token(data) {
        Ok(InnerMechanism::Ntlm) => assert!(data.starts_with(b"NTLMSSP\0")),
        Ok(InnerMechanism::Negotiate) => {
            assert_eq!(data[0], 0x60);
            // 0x60, a length, the 8-byte SPNEGO OID, 0xa0, a length.
            assert!(data.len() >= 1 + 1 + 8 + 1 + 1);
        }
        Err(_) => {}
    }
});
