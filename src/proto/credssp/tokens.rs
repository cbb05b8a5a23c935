//! Checks made on client input *before* it reaches sspi, whose parsers
//! panic on some malformed tokens (see protocol.md §3).

use super::CredSspError;

/// DER of the SPNEGO mechanism OID 1.3.6.1.5.5.2.
const SPNEGO_OID: [u8; 8] = [0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const NTLMSSP_SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// Which security package the client speaks inside CredSSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerMechanism {
    /// SPNEGO-wrapped (pywinrm/pypsrp default, Windows).
    Negotiate,
    /// Raw NTLM messages (e.g. `auth_mechanism="ntlm"`).
    Ntlm,
}

/// Classify the client's first negotiation token and check that it is
/// well-formed enough for sspi to parse without panicking.
pub fn classify_first_token(token: &[u8]) -> Result<InnerMechanism, CredSspError> {
    if token.starts_with(NTLMSSP_SIGNATURE) {
        return Ok(InnerMechanism::Ntlm);
    }
    if token.first() != Some(&0x60) {
        return Err(CredSspError::BadToken("first token is neither SPNEGO nor NTLM"));
    }
    let (content_start, content_len) =
        der_length(&token[1..]).ok_or(CredSspError::BadToken("bad DER length in SPNEGO token"))?;
    let body = &token[1 + content_start..];
    if body.len() != content_len {
        return Err(CredSspError::BadToken(
            "SPNEGO token length does not match its DER header",
        ));
    }
    if !body.starts_with(&SPNEGO_OID) {
        return Err(CredSspError::BadToken("SPNEGO token lacks the SPNEGO mechanism OID"));
    }
    // GSS-API InitialContextToken: after the OID comes the NegTokenInit [0].
    let inner = &body[SPNEGO_OID.len()..];
    if inner.first() != Some(&0xa0) {
        return Err(CredSspError::BadToken("SPNEGO token does not carry a NegTokenInit"));
    }
    let (inner_start, inner_len) =
        der_length(&inner[1..]).ok_or(CredSspError::BadToken("bad DER length in NegTokenInit"))?;
    if inner.len() != 1 + inner_start + inner_len {
        return Err(CredSspError::BadToken("NegTokenInit length does not match the token"));
    }
    Ok(InnerMechanism::Negotiate)
}

/// Parse a DER length: returns (bytes used by the length field, length).
fn der_length(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first < 0x80 {
        return Some((1, first as usize));
    }
    let count = (first & 0x7f) as usize;
    if count == 0 || count > 4 || input.len() < 1 + count {
        return None;
    }
    let len = input[1..=count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((1 + count, len))
}

/// Sealed fields shorter than an NTLM signature make sspi panic when it
/// splits them (`split_at_mut`); refuse them first.
pub fn check_sealed_len(field: &'static str, value: &[u8]) -> Result<(), CredSspError> {
    const NTLM_SIGNATURE_LEN: usize = 16;
    if value.len() <= NTLM_SIGNATURE_LEN {
        return Err(CredSspError::ShortField(field));
    }
    Ok(())
}

/// The `DOMAIN\user` an NTLM AUTHENTICATE message claims, found inside a
/// raw or SPNEGO-wrapped token. Only for the audit trail of failed logons:
/// it is what the client *claimed*, not an authenticated identity.
pub fn claimed_ntlm_user(token: &[u8]) -> Option<(String, String)> {
    const AUTHENTICATE: &[u8; 12] = b"NTLMSSP\0\x03\0\0\0";
    let start = token.windows(AUTHENTICATE.len()).position(|w| w == AUTHENTICATE)?;
    let message = &token[start..];
    let field = |offset: usize| -> Option<&[u8]> {
        let header = message.get(offset..offset + 8)?;
        let len = u16::from_le_bytes([header[0], header[1]]) as usize;
        let at = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        message.get(at..at.checked_add(len)?)
    };
    let flags = message
        .get(60..64)
        .map(|f| u32::from_le_bytes([f[0], f[1], f[2], f[3]]))?;
    const NEGOTIATE_UNICODE: u32 = 0x1;
    let decode = |bytes: &[u8]| -> Option<String> {
        if flags & NEGOTIATE_UNICODE != 0 {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        } else {
            Some(bytes.iter().map(|&b| b as char).collect())
        }
    };
    let domain = decode(field(28)?)?;
    let user = decode(field(36)?)?;
    (!user.is_empty()).then_some((domain, user))
}

/// A minimal NTLM AUTHENTICATE naming `domain\user`, for tests.
#[cfg(test)]
pub(crate) fn authenticate_message(domain: &str, user: &str) -> Vec<u8> {
    let utf16 = |s: &str| s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>();
    let (domain, user) = (utf16(domain), utf16(user));
    let mut message = b"NTLMSSP\0\x03\0\0\0".to_vec();
    message.resize(64, 0);
    let payload_at = 72u32;
    let put = |message: &mut Vec<u8>, offset: usize, len: usize, at: u32| {
        message[offset..offset + 2].copy_from_slice(&(len as u16).to_le_bytes());
        message[offset + 2..offset + 4].copy_from_slice(&(len as u16).to_le_bytes());
        message[offset + 4..offset + 8].copy_from_slice(&at.to_le_bytes());
    };
    put(&mut message, 28, domain.len(), payload_at);
    put(&mut message, 36, user.len(), payload_at + domain.len() as u32);
    message[60..64].copy_from_slice(&0xe288_8215u32.to_le_bytes());
    message.resize(payload_at as usize, 0);
    message.extend_from_slice(&domain);
    message.extend_from_slice(&user);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_user_is_read_from_a_wrapped_authenticate() {
        let mut wrapped = vec![0xa1, 0x81, 0x90, 0x30];
        wrapped.extend_from_slice(&authenticate_message("LAB", "alice"));
        assert_eq!(claimed_ntlm_user(&wrapped), Some(("LAB".into(), "alice".into())));
    }

    #[test]
    fn claimed_user_survives_lies_about_lengths() {
        let mut message = authenticate_message("LAB", "alice");
        message[36] = 0xff; // user length past the end
        assert_eq!(claimed_ntlm_user(&message), None);
        assert_eq!(claimed_ntlm_user(&message[..40]), None);
        assert_eq!(claimed_ntlm_user(b"NTLMSSP\0\x03\0\0\0"), None);
    }

    #[test]
    fn raw_ntlm_is_recognised() {
        let mut token = b"NTLMSSP\0".to_vec();
        token.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(classify_first_token(&token).unwrap(), InnerMechanism::Ntlm);
    }

    #[test]
    fn minimal_spnego_init_is_recognised() {
        // 60 len | OID | a0 len | (content)
        let content = [0x30, 0x00];
        let mut inner = vec![0xa0, content.len() as u8];
        inner.extend_from_slice(&content);
        let mut body = SPNEGO_OID.to_vec();
        body.extend_from_slice(&inner);
        let mut token = vec![0x60, body.len() as u8];
        token.extend_from_slice(&body);
        assert_eq!(classify_first_token(&token).unwrap(), InnerMechanism::Negotiate);
    }

    #[test]
    fn garbage_that_panics_sspi_is_refused() {
        // Ten zero bytes made picky-krb panic before authentication.
        assert!(classify_first_token(&[0u8; 10]).is_err());
        assert!(classify_first_token(&[0x60]).is_err());
        assert!(classify_first_token(&[0x60, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(classify_first_token(&[0x60, 0x02, 0x06, 0x00]).is_err());
        assert!(classify_first_token(&[]).is_err());
    }

    #[test]
    fn short_sealed_fields_are_refused() {
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 15]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 16]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 17]).is_ok());
    }
}
