//! Checks made on client input *before* it reaches sspi, whose parsers
//! panic on some malformed tokens.

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
///
/// SPNEGO tokens are walked field by field: picky-krb decodes the
/// NegTokenInit inside `ApplicationTag0::deserialize` and `unwrap`s the
/// result, so *any* malformed inner field (not only the outer framing)
/// panics there. Only canonical DER of the shape RFC 4178 defines passes.
pub fn classify_first_token(token: &[u8]) -> Result<InnerMechanism, CredSspError> {
    if token.starts_with(NTLMSSP_SIGNATURE) {
        return Ok(InnerMechanism::Ntlm);
    }
    if token.first() != Some(&0x60) {
        return Err(CredSspError::BadToken("first token is neither SPNEGO nor NTLM"));
    }
    let (body, rest) = der_tlv(token, 0x60).ok_or(CredSspError::BadToken("bad DER length in SPNEGO token"))?;
    if !rest.is_empty() {
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
    let (init, rest) = der_tlv(inner, 0xa0).ok_or(CredSspError::BadToken("bad DER length in NegTokenInit"))?;
    if !rest.is_empty() {
        return Err(CredSspError::BadToken("NegTokenInit length does not match the token"));
    }
    check_neg_token_init(init).ok_or(CredSspError::BadToken("malformed NegTokenInit"))?;
    Ok(InnerMechanism::Negotiate)
}

/// `NegTokenInit ::= SEQUENCE { mechTypes [0] SEQUENCE OF OID, reqFlags [1]
/// BIT STRING, mechToken [2] OCTET STRING, mechListMIC [3] OCTET STRING }`,
/// every field optional, in this order, nothing else.
fn check_neg_token_init(content: &[u8]) -> Option<()> {
    let (mut fields, rest) = der_tlv(content, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    if let Some((mech_types, rest)) = der_optional(fields, 0xa0)? {
        let (mut list, after) = der_tlv(mech_types, 0x30)?;
        if !after.is_empty() {
            return None;
        }
        while !list.is_empty() {
            let (oid, rest) = der_tlv(list, 0x06)?;
            check_oid(oid)?;
            list = rest;
        }
        fields = rest;
    }
    if let Some((flags, rest)) = der_optional(fields, 0xa1)? {
        let (bits, after) = der_tlv(flags, 0x03)?;
        // The unused-bits count, then at most 32 flag bits.
        if !after.is_empty() || bits.is_empty() || bits.len() > 5 || bits[0] > 7 {
            return None;
        }
        fields = rest;
    }
    for tag in [0xa2, 0xa3] {
        if let Some((octets, rest)) = der_optional(fields, tag)? {
            let (_, after) = der_tlv(octets, 0x04)?;
            if !after.is_empty() {
                return None;
            }
            fields = rest;
        }
    }
    fields.is_empty().then_some(())
}

/// An OBJECT IDENTIFIER the `oid` crate decodes: first byte below 120
/// (root arc 0..2), each sub-identifier minimal and at most 4 bytes, none
/// left unfinished.
fn check_oid(oid: &[u8]) -> Option<()> {
    if oid.is_empty() || oid.len() > 64 || oid[0] >= 120 || oid[oid.len() - 1] & 0x80 != 0 {
        return None;
    }
    let mut arc_len = 0;
    for &b in &oid[1..] {
        if arc_len == 0 && b == 0x80 {
            return None;
        }
        arc_len += 1;
        if arc_len > 4 {
            return None;
        }
        if b & 0x80 == 0 {
            arc_len = 0;
        }
    }
    Some(())
}

/// One TLV with `tag` at the start of `input`, canonical DER length:
/// (content, what follows).
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (used, len) = der_length(&input[1..])?;
    // Canonical lengths only: long form for 128 and up, no leading zero.
    if used > 1 && (len < 0x80 || input[2] == 0) {
        return None;
    }
    let end = (1 + used).checked_add(len)?;
    Some((input.get(1 + used..end)?, &input[end..]))
}

/// Like [`der_tlv`] for an optional field: `Some(None)` when the next tag differs.
#[allow(clippy::type_complexity)]
fn der_optional(input: &[u8], tag: u8) -> Option<Option<(&[u8], &[u8])>> {
    if input.first() != Some(&tag) {
        return Some(None);
    }
    der_tlv(input, tag).map(Some)
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

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn pyspnego_negotiate_token_is_recognised() {
        // pyspnego 0.12 (requests-credssp, pywinrm): NegTokenInit{mechTypes=[NTLM], mechToken=NEGOTIATE}.
        let token = hex(
            "604806062b0601050502a03e303ca00e300c060a2b06010401823702020aa22a04284e544c4d5353500001000000\
             378208e200000000280000000000000028000000000c04000000000f",
        );
        assert_eq!(classify_first_token(&token).unwrap(), InnerMechanism::Negotiate);
    }

    #[test]
    fn garbage_inside_a_well_framed_spnego_token_is_refused() {
        // Crasher found by integration/corpus (tsreq/spnego_bad_inner): the outer 0x60 frame, the
        // SPNEGO OID and the [0] length are all consistent, the NegTokenInit is 40 random bytes.
        // picky-krb panicked in ApplicationTag0::deserialize (gss_api.rs:336, `unwrap`) before
        // authentication; sspi's catch_unwind turned it into a refusal, but only just.
        let token = hex(
            "603206062b0601050502a0286bf1d9c3a316e95c8d1d362d81701d0acc0db3da824e7499a1bc202e2dd0\
             6625982dbbb72ea53b87",
        );
        assert!(classify_first_token(&token).is_err());
    }

    #[test]
    fn negtokeninit_fields_are_checked() {
        let wrap = |init: &[u8]| {
            let a0 = [&[0xa0, init.len() as u8][..], init].concat();
            let body = [&SPNEGO_OID[..], &a0].concat();
            [&[0x60, body.len() as u8][..], &body].concat()
        };
        let ntlm_oid = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
        let mech_types = [&[0xa0, 0x0e, 0x30, 0x0c][..], &ntlm_oid].concat();
        let ok = [&[0x30, mech_types.len() as u8][..], &mech_types].concat();
        assert!(classify_first_token(&wrap(&ok)).is_ok());
        // Fields out of order, unknown fields, trailing bytes, bad OIDs, bad bit strings.
        let bad: Vec<Vec<u8>> = vec![
            vec![0x30, 0x04, 0xa2, 0x02, 0x04, 0x00, 0xa0, 0x00],
            vec![0x30, 0x02, 0xa4, 0x00],
            [&ok[..], &[0x00]].concat(),
            vec![0x30, 0x06, 0xa0, 0x04, 0x30, 0x02, 0x06, 0x00],
            vec![0x30, 0x07, 0xa0, 0x05, 0x30, 0x03, 0x06, 0x01, 0x78],
            vec![0x30, 0x08, 0xa0, 0x06, 0x30, 0x04, 0x06, 0x02, 0x2b, 0x86],
            vec![0x30, 0x04, 0xa1, 0x02, 0x03, 0x00],
            vec![0x30, 0x05, 0xa1, 0x03, 0x03, 0x01, 0x08],
            vec![0x30, 0x05, 0xa2, 0x03, 0x04, 0x81, 0x00],
            vec![0x31, 0x00],
        ];
        for init in bad {
            assert!(classify_first_token(&wrap(&init)).is_err(), "{init:02x?}");
        }
    }

    #[test]
    fn short_sealed_fields_are_refused() {
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 15]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 16]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 17]).is_ok());
    }
}
