//! Checks made on client input *before* it reaches sspi, whose parsers
//! panic on some malformed tokens (picky-krb unwraps its SPNEGO decoding):
//! a panic there would take the connection task down on network input.

use super::CredSspError;

/// DER of the SPNEGO mechanism OID 1.3.6.1.5.5.2.
const SPNEGO_OID: [u8; 8] = [0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const NTLMSSP_SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// DER of the Kerberos mechanism OIDs: 1.2.840.113554.1.2.2 (krb5) and
/// 1.2.840.48018.1.2.2 (Microsoft's, what Windows lists first).
const KRB5_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
const MS_KRB5_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// The GSS-API token ID of a Kerberos AP-REQ.
const KRB5_AP_REQ_TOKEN_ID: [u8; 2] = [0x01, 0x00];
/// `[APPLICATION 14]`, constructed: the AP-REQ itself.
const AP_REQ_TAG: u8 = 0x6e;

/// Which security package the client speaks inside CredSSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerMechanism {
    /// SPNEGO-wrapped, NTLM first or only (pywinrm/pypsrp without Kerberos).
    Negotiate,
    /// SPNEGO-wrapped with Kerberos as the first mechanism (Windows,
    /// pyspnego `auto` with a ticket).
    NegotiateKerberos,
    /// Raw NTLM messages (e.g. `auth_mechanism="ntlm"`).
    Ntlm,
    /// A raw krb5 GSS-API AP-REQ, no SPNEGO (requests-credssp with
    /// `credssp_auth_mechanism="kerberos"`: pypsrp, pywinrm, Ansible).
    Kerberos,
}

impl InnerMechanism {
    pub fn is_kerberos(self) -> bool {
        matches!(self, InnerMechanism::NegotiateKerberos | InnerMechanism::Kerberos)
    }
}

/// Classify the client's first negotiation token and check that it is
/// well-formed enough for sspi to parse without panicking.
///
/// SPNEGO tokens are walked field by field: picky-krb decodes the
/// NegTokenInit inside `ApplicationTag0::deserialize` and `unwrap`s the
/// result, so *any* malformed inner field (not only the outer framing)
/// panics there. Only canonical DER of the SPNEGO NegTokenInit shape passes.
///
/// A raw krb5 token must never reach sspi's Negotiate server either: it is
/// decoded there as SPNEGO, into the same `unwrap`. Such a token is checked
/// to be one well-framed AP-REQ here and handed on wrapped in SPNEGO (see
/// [`wrap_raw_krb5`]).
pub fn classify_first_token(token: &[u8]) -> Result<InnerMechanism, CredSspError> {
    if token.starts_with(NTLMSSP_SIGNATURE) {
        return Ok(InnerMechanism::Ntlm);
    }
    if token.first() != Some(&0x60) {
        return Err(CredSspError::BadToken(
            "first token is neither SPNEGO, Kerberos nor NTLM",
        ));
    }
    let (body, rest) = der_tlv(token, 0x60).ok_or(CredSspError::BadToken("bad DER length in GSS-API token"))?;
    if !rest.is_empty() {
        return Err(CredSspError::BadToken(
            "GSS-API token length does not match its DER header",
        ));
    }
    if body.starts_with(&KRB5_OID) || body.starts_with(&MS_KRB5_OID) {
        check_raw_ap_req(&body[KRB5_OID.len()..])?;
        return Ok(InnerMechanism::Kerberos);
    }
    if !body.starts_with(&SPNEGO_OID) {
        return Err(CredSspError::BadToken(
            "GSS-API token is for neither SPNEGO nor Kerberos",
        ));
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
    let first_mech = check_neg_token_init(init).ok_or(CredSspError::BadToken("malformed NegTokenInit"))?;
    let kerberos_first = first_mech.is_some_and(|oid| oid == &KRB5_OID[2..] || oid == &MS_KRB5_OID[2..]);
    Ok(if kerberos_first {
        InnerMechanism::NegotiateKerberos
    } else {
        InnerMechanism::Negotiate
    })
}

/// After the krb5 OID: the AP-REQ token ID and one AP-REQ TLV filling the rest.
fn check_raw_ap_req(after_oid: &[u8]) -> Result<(), CredSspError> {
    let ap_req = after_oid
        .strip_prefix(&KRB5_AP_REQ_TOKEN_ID)
        .ok_or(CredSspError::BadToken("Kerberos token is not an AP-REQ"))?;
    match der_tlv(ap_req, AP_REQ_TAG) {
        Some((_, [])) => Ok(()),
        Some(_) => Err(CredSspError::BadToken(
            "Kerberos AP-REQ length does not match the token",
        )),
        None => Err(CredSspError::BadToken("malformed Kerberos AP-REQ")),
    }
}

/// A raw krb5 token (checked by [`classify_first_token`]) as the SPNEGO
/// NegTokenInit sspi's Negotiate server takes: `mechTypes = [krb5]` and the
/// token as `mechToken`. With Kerberos the client's first choice, no
/// mechListMIC is due, so the exchange is the raw one, rewrapped.
pub fn wrap_raw_krb5(token: &[u8]) -> Vec<u8> {
    let mech_types = der(0xa0, &der(0x30, &KRB5_OID));
    let mech_token = der(0xa2, &der(0x04, token));
    let init = der(0xa0, &der(0x30, &[mech_types, mech_token].concat()));
    der(0x60, &[&SPNEGO_OID[..], &init].concat())
}

/// The mechanism's own token inside sspi's SPNEGO answer (NegTokenResp
/// `responseToken`), for a client that speaks raw krb5: `Ok(None)` when the
/// answer carries none.
pub fn unwrap_neg_token_resp(answer: &[u8]) -> Result<Option<Vec<u8>>, CredSspError> {
    let malformed = CredSspError::BadToken("the security package answered with a malformed NegTokenResp");
    let (resp, _) = der_tlv(answer, 0xa1).ok_or(malformed)?;
    let (mut fields, _) = der_tlv(resp, 0x30).ok_or(CredSspError::BadToken("NegTokenResp is not a SEQUENCE"))?;
    while let Some(&tag) = fields.first() {
        let (content, rest) = der_tlv(fields, tag).ok_or(CredSspError::BadToken("malformed field in NegTokenResp"))?;
        if tag == 0xa2 {
            let (token, _) =
                der_tlv(content, 0x04).ok_or(CredSspError::BadToken("NegTokenResp responseToken is malformed"))?;
            return Ok(Some(token.to_vec()));
        }
        fields = rest;
    }
    Ok(None)
}

/// The "right rotation count" sspi's Kerberos expects in a wrap token: the
/// one Windows uses. sspi undoes that fixed rotation whatever the token says.
const SSPI_WRAP_RRC: usize = 28;
const WRAP_TOKEN_ID: [u8; 2] = [0x05, 0x04];
const WRAP_HEADER_LEN: usize = 16;

/// A client's Kerberos wrap token (pubKeyAuth, authInfo) in the layout sspi
/// decrypts. MIT clients (pyspnego through python-gssapi) send their wrap
/// tokens unrotated (RRC 0), which sspi cannot read: it always undoes a
/// rotation of 28 (plus EC) bytes, as Windows sends. The token is rotated
/// back to plain and then as Windows would; tokens already in that layout,
/// and anything that is not a wrap token, pass unchanged.
pub fn wrap_token_for_sspi(token: &[u8]) -> Vec<u8> {
    if token.len() < WRAP_HEADER_LEN || token[..2] != WRAP_TOKEN_ID {
        return token.to_vec();
    }
    let ec = usize::from(u16::from_be_bytes([token[4], token[5]]));
    let rrc = usize::from(u16::from_be_bytes([token[6], token[7]]));
    if rrc == SSPI_WRAP_RRC {
        return token.to_vec();
    }
    let mut body = token[WRAP_HEADER_LEN..].to_vec();
    if body.is_empty() {
        return token.to_vec();
    }
    // A wrap token may carry its encrypted data rotated right by RRC bytes: undo that, then rotate the way sspi undoes.
    let len = body.len();
    body.rotate_left(rrc % len);
    body.rotate_right((SSPI_WRAP_RRC + ec) % len);
    let mut out = token[..WRAP_HEADER_LEN].to_vec();
    out[6..8].copy_from_slice(&(SSPI_WRAP_RRC as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// DER of one TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `NegTokenInit ::= SEQUENCE { mechTypes [0] SEQUENCE OF OID, reqFlags [1]
/// BIT STRING, mechToken [2] OCTET STRING, mechListMIC [3] OCTET STRING }`,
/// every field optional, in this order, nothing else. Returns the first
/// mechanism OID (its content), if any.
fn check_neg_token_init(content: &[u8]) -> Option<Option<&[u8]>> {
    let (mut fields, rest) = der_tlv(content, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let mut first_mech = None;
    if let Some((mech_types, rest)) = der_optional(fields, 0xa0)? {
        let (mut list, after) = der_tlv(mech_types, 0x30)?;
        if !after.is_empty() {
            return None;
        }
        while !list.is_empty() {
            let (oid, rest) = der_tlv(list, 0x06)?;
            check_oid(oid)?;
            first_mech = first_mech.or(Some(oid));
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
    fields.is_empty().then_some(first_mech)
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

    /// requests-credssp's first token with `credssp_auth_mechanism="kerberos"` (pypsrp, pywinrm):
    /// a raw krb5 GSS-API AP-REQ for HTTP/relay.lab.test, made by pyspnego against the test realm.
    const RAW_KRB5: &[u8] = include_bytes!("fixtures/requests_credssp_kerberos_ap_req.bin");
    /// pyspnego `negotiate` with a ticket: NegTokenInit{mechTypes=[krb5, NTLM], mechToken=AP-REQ}.
    const SPNEGO_KRB5: &[u8] = include_bytes!("fixtures/pyspnego_negotiate_kerberos.bin");

    /// What sspi's Negotiate server does first with any first token (`decode_initial_neg_init`).
    fn picky_decodes_as_spnego(token: &[u8]) -> Result<bool, ()> {
        use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit};
        let token = token.to_vec();
        std::panic::catch_unwind(move || picky_asn1_der::from_bytes::<ApplicationTag0<GssApiNegInit>>(&token).is_ok())
            .map_err(|_| ())
    }

    #[test]
    fn raw_krb5_token_is_classified_and_wrapped_so_picky_never_sees_it_raw() {
        assert_eq!(classify_first_token(RAW_KRB5).unwrap(), InnerMechanism::Kerberos);
        // The reason for the wrapping: as it comes, the token panics picky-krb inside sspi's Negotiate server.
        assert_eq!(
            picky_decodes_as_spnego(RAW_KRB5),
            Err(()),
            "picky-krb no longer panics: revisit wrap_raw_krb5"
        );
        let wrapped = wrap_raw_krb5(RAW_KRB5);
        assert_eq!(
            classify_first_token(&wrapped).unwrap(),
            InnerMechanism::NegotiateKerberos
        );
        assert_eq!(picky_decodes_as_spnego(&wrapped), Ok(true));
        // The mechToken is the client's token, byte for byte, and sspi reads krb5 as the only mechanism.
        use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit};
        let init: ApplicationTag0<GssApiNegInit> = picky_asn1_der::from_bytes(&wrapped).unwrap();
        let init = init.0.neg_token_init.0;
        assert_eq!(init.mech_token.0.unwrap().0 .0, RAW_KRB5);
        let mechs = init.mech_types.0.unwrap().0 .0;
        assert_eq!(mechs.len(), 1);
        assert_eq!(picky_asn1_der::to_vec(&mechs[0]).unwrap(), KRB5_OID);
    }

    #[test]
    fn spnego_with_kerberos_first_is_told_from_ntlm_first() {
        assert_eq!(
            classify_first_token(SPNEGO_KRB5).unwrap(),
            InnerMechanism::NegotiateKerberos
        );
        assert_eq!(picky_decodes_as_spnego(SPNEGO_KRB5), Ok(true));
        assert!(InnerMechanism::NegotiateKerberos.is_kerberos() && InnerMechanism::Kerberos.is_kerberos());
        assert!(!InnerMechanism::Negotiate.is_kerberos() && !InnerMechanism::Ntlm.is_kerberos());
        // Microsoft's Kerberos OID first (Windows) is Kerberos too; NTLM first with Kerberos second is not.
        let wrap = |mechs: &[&[u8]]| {
            let list = der(0x30, &mechs.concat());
            let init = der(0xa0, &der(0x30, &der(0xa0, &list)));
            der(0x60, &[&SPNEGO_OID[..], &init].concat())
        };
        let ntlm_oid = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
        let windows = wrap(&[&MS_KRB5_OID, &KRB5_OID, &ntlm_oid]);
        assert_eq!(
            classify_first_token(&windows).unwrap(),
            InnerMechanism::NegotiateKerberos
        );
        let ntlm_first = wrap(&[&ntlm_oid, &KRB5_OID]);
        assert_eq!(classify_first_token(&ntlm_first).unwrap(), InnerMechanism::Negotiate);
    }

    #[test]
    fn hostile_raw_krb5_tokens_are_refused_before_sspi() {
        let refused = |token: &[u8]| classify_first_token(token).is_err();
        // Truncated anywhere: the outer length no longer matches.
        for cut in 1..RAW_KRB5.len() {
            assert!(refused(&RAW_KRB5[..cut]), "cut at {cut}");
        }
        // A consistent outer frame around garbage, a TGT-REQ (user-to-user), an AP-REQ with trailing bytes.
        let frame = |after_oid: &[u8]| der(0x60, &[&KRB5_OID[..], after_oid].concat());
        assert!(refused(&frame(&[0x01, 0x00, 0xde, 0xad, 0xbe, 0xef])));
        assert!(refused(&frame(&[0x04, 0x00, 0x30, 0x00])));
        assert!(refused(&frame(&[0x01, 0x00, 0x6e, 0x00, 0x00])));
        assert!(refused(&frame(&[0x01, 0x00, 0x6e, 0x05, 0x00])));
        assert!(refused(&frame(&[])));
        // The same AP-REQ framed with a wrong token ID.
        let mut tgs = RAW_KRB5.to_vec();
        tgs[15] = 0x02;
        assert!(refused(&tgs));
        // What is left passes as a well-framed AP-REQ: sspi decodes and decrypts it (and refuses garbage
        // inside cleanly; the integration suite sends such tokens).
        assert!(classify_first_token(&frame(&[0x01, 0x00, 0x6e, 0x02, 0x30, 0x00])).is_ok());
    }

    #[test]
    fn the_answer_for_a_raw_krb5_client_is_the_response_token() {
        // NegTokenResp{negResult=accept-completed, supportedMech=krb5, responseToken=AP-REP}.
        let ap_rep = der(
            0x60,
            &[&KRB5_OID[..], &[0x02, 0x00], &der(0x6f, &[0x30, 0x00])].concat(),
        );
        let fields = [
            der(0xa0, &[0x0a, 0x01, 0x00]),
            der(0xa1, &KRB5_OID),
            der(0xa2, &der(0x04, &ap_rep)),
        ]
        .concat();
        let resp = der(0xa1, &der(0x30, &fields));
        assert_eq!(unwrap_neg_token_resp(&resp).unwrap(), Some(ap_rep));
        let no_token = der(0xa1, &der(0x30, &der(0xa0, &[0x0a, 0x01, 0x00])));
        assert_eq!(unwrap_neg_token_resp(&no_token).unwrap(), None);
        assert!(unwrap_neg_token_resp(&[0xa1, 0x05, 0x30]).is_err());
        assert!(unwrap_neg_token_resp(&[0x30, 0x00]).is_err());
    }

    fn wrap_token(ec: u16, rrc: u16, body: &[u8]) -> Vec<u8> {
        let mut token = vec![0x05, 0x04, 0x06, 0xff];
        token.extend_from_slice(&ec.to_be_bytes());
        token.extend_from_slice(&rrc.to_be_bytes());
        token.extend_from_slice(&[0, 0, 0, 0, 0x18, 0x54, 0xf0, 0x73]);
        let mut rotated = body.to_vec();
        rotated.rotate_right(usize::from(rrc) % body.len());
        token.extend_from_slice(&rotated);
        token
    }

    #[test]
    fn mit_wrap_tokens_are_rotated_as_sspi_reads_them() {
        let body: Vec<u8> = (0u8..=200).collect();
        // What Windows (and sspi's own encrypt) sends with EC 0: rotated by 28, RRC 28. Unchanged.
        let windows = wrap_token(0, 28, &body);
        assert_eq!(wrap_token_for_sspi(&windows), windows);
        // MIT: RRC 0, not rotated; and any other RRC a sender may pick. Both become the Windows layout.
        assert_eq!(wrap_token_for_sspi(&wrap_token(0, 0, &body)), windows);
        assert_eq!(wrap_token_for_sspi(&wrap_token(0, 5, &body)), windows);
        // sspi undoes RRC + EC: a token with filler is rotated by both.
        let mut with_ec = wrap_token(0, 28, &body);
        with_ec[4..6].copy_from_slice(&16u16.to_be_bytes());
        let mut expected_body = body.clone();
        expected_body.rotate_right(28 + 16);
        assert_eq!(wrap_token_for_sspi(&wrap_token(16, 0, &body))[16..], expected_body[..]);
        // Not wrap tokens: NTLM-sealed data, short input.
        let ntlm = [0x01, 0x00, 0x00, 0x00, 0xaa, 0xbb];
        assert_eq!(wrap_token_for_sspi(&ntlm), ntlm);
        assert_eq!(wrap_token_for_sspi(&windows[..16]), windows[..16]);
    }

    /// A real MIT wrap token, as pyspnego's Kerberos (python-gssapi 1.12.0 on
    /// MIT krb5 1.20.1) seals pubKeyAuth: made in the integration suite's test
    /// realm (integration/mit_realm.py) by an initiator context for
    /// alice@LAB.TEST towards HTTP/relay.lab.test@LAB.TEST with mutual
    /// authentication, then `ctx.wrap(MIT_WRAP_PLAINTEXT, True)`; the key is
    /// the context's session key as `gssapi.raw.inquire_sec_context_by_oid`
    /// returns it for GSS_C_INQ_SSPI_SESSION_KEY (1.2.840.113554.1.2.2.5.5),
    /// here the acceptor's subkey (the token's flags say so), aes256-cts.
    const MIT_WRAP_TOKEN: &[u8] = include_bytes!("fixtures/mit_krb5_wrap_token.bin");
    const MIT_WRAP_KEY: [u8; 32] = [
        0x78, 0x1e, 0x1a, 0xef, 0xd4, 0xac, 0xe7, 0xd9, 0x56, 0xa7, 0x85, 0xd6, 0x01, 0x94, 0x25, 0x85, 0x50, 0x2c,
        0x4b, 0xa2, 0xea, 0xc5, 0x70, 0x9f, 0x9e, 0x94, 0x1a, 0xf1, 0x46, 0xac, 0xcd, 0x68,
    ];
    const MIT_WRAP_PLAINTEXT: &[u8] = b"pubKeyAuth of an MIT client (python-gssapi), wrapped with confidentiality";
    /// Key usage of a wrap token sealed by the initiator.
    const KG_USAGE_INITIATOR_SEAL: i32 = 24;

    #[test]
    fn a_real_mit_wrap_token_is_rotated_to_what_sspi_decrypts() {
        use picky_krb::crypto::CipherSuite;

        // What MIT sends: a sealed wrap token (flags: sealed, acceptor subkey), EC 0, RRC 0.
        assert_eq!(MIT_WRAP_TOKEN[..4], [0x05, 0x04, 0x06, 0xff]);
        assert_eq!(MIT_WRAP_TOKEN[4..8], [0, 0, 0, 0], "MIT sends EC 0 and RRC 0");
        let ec = 0;
        let for_sspi = wrap_token_for_sspi(MIT_WRAP_TOKEN);
        assert_eq!(for_sspi.len(), MIT_WRAP_TOKEN.len());
        assert_eq!(for_sspi[..6], MIT_WRAP_TOKEN[..6]);
        assert_eq!(for_sspi[6..8], (SSPI_WRAP_RRC as u16).to_be_bytes());
        assert_eq!(for_sspi[8..16], MIT_WRAP_TOKEN[8..16]);
        // sspi undoes a rotation of RRC + EC whatever the header says, then decrypts: that gives MIT's
        // ciphertext back, which decrypts to the plaintext and the header copy (RRC 0 inside).
        let mut body = for_sspi[WRAP_HEADER_LEN..].to_vec();
        body.rotate_left(SSPI_WRAP_RRC + ec);
        assert_eq!(body, MIT_WRAP_TOKEN[WRAP_HEADER_LEN..]);
        let cipher = CipherSuite::Aes256CtsHmacSha196.cipher();
        let plain = cipher
            .decrypt(&MIT_WRAP_KEY, KG_USAGE_INITIATOR_SEAL, &body)
            .expect("the rotated token decrypts");
        assert_eq!(plain[..MIT_WRAP_PLAINTEXT.len()], *MIT_WRAP_PLAINTEXT);
        assert_eq!(plain[MIT_WRAP_PLAINTEXT.len()..], MIT_WRAP_TOKEN[..WRAP_HEADER_LEN]);
        // Without the rotation sspi would decrypt the wrong bytes.
        let mut unrotated = MIT_WRAP_TOKEN[WRAP_HEADER_LEN..].to_vec();
        unrotated.rotate_left(SSPI_WRAP_RRC + ec);
        assert!(cipher
            .decrypt(&MIT_WRAP_KEY, KG_USAGE_INITIATOR_SEAL, &unrotated)
            .is_err());
    }

    #[test]
    fn long_der_lengths_are_minimal() {
        assert_eq!(der(0x04, &[0u8; 3])[..2], [0x04, 0x03]);
        assert_eq!(der(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0u8; 714])[..4], [0x04, 0x82, 0x02, 0xca]);
    }

    #[test]
    fn short_sealed_fields_are_refused() {
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 15]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 16]).is_err());
        assert!(check_sealed_len("pubKeyAuth", &[0u8; 17]).is_ok());
    }
}
