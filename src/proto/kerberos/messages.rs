//! What a KDC message is, read from its outer DER: enough to tell an AS
//! exchange from a TGS exchange and to say why a KDC refused, without
//! decoding (or trusting) the rest. The messages are bare, without the 4-byte
//! length prefix of KDC traffic over TCP.

/// The Kerberos message types a KDC exchange carries (their APPLICATION tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdcMessage {
    AsReq,
    AsRep,
    TgsReq,
    TgsRep,
    Error,
}

/// Reads the message type from the first byte: `[APPLICATION n]`, constructed.
pub fn kdc_message_type(message: &[u8]) -> Option<KdcMessage> {
    match message.first()? {
        0x6a => Some(KdcMessage::AsReq),
        0x6b => Some(KdcMessage::AsRep),
        0x6c => Some(KdcMessage::TgsReq),
        0x6d => Some(KdcMessage::TgsRep),
        0x7e => Some(KdcMessage::Error),
        _ => None,
    }
}

/// The KDC error codes a person can act on, by name.
pub mod error_codes {
    pub const KDC_ERR_C_PRINCIPAL_UNKNOWN: i64 = 6;
    pub const KDC_ERR_S_PRINCIPAL_UNKNOWN: i64 = 7;
    pub const KDC_ERR_POLICY: i64 = 12;
    pub const KDC_ERR_BADOPTION: i64 = 13;
    pub const KDC_ERR_ETYPE_NOSUPP: i64 = 14;
    pub const KDC_ERR_CLIENT_REVOKED: i64 = 18;
    pub const KDC_ERR_KEY_EXPIRED: i64 = 23;
    pub const KDC_ERR_PREAUTH_FAILED: i64 = 24;
    pub const KDC_ERR_PREAUTH_REQUIRED: i64 = 25;
    pub const KRB_AP_ERR_BAD_INTEGRITY: i64 = 31;
    pub const KRB_AP_ERR_TKT_EXPIRED: i64 = 32;
    pub const KRB_AP_ERR_SKEW: i64 = 37;
    pub const KRB_AP_ERR_MODIFIED: i64 = 41;
    pub const KRB_AP_ERR_BADKEYVER: i64 = 44;
    pub const KRB_AP_ERR_NOKEY: i64 = 45;
    pub const KRB_ERR_RESPONSE_TOO_BIG: i64 = 52;
}

/// The parts of a KRB-ERROR worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrbErrorInfo {
    pub code: i64,
    /// The KDC's clock (KerberosTime, `YYYYMMDDHHMMSSZ`), to report a skew.
    pub server_time: Option<String>,
    /// The KDC's own explanation, when it sends one.
    pub text: Option<String>,
}

/// Decodes `KRB-ERROR ::= [APPLICATION 30] SEQUENCE { pvno [0], msg-type [1],
/// ctime [2] OPTIONAL, cusec [3] OPTIONAL, stime [4], susec [5], error-code [6],
/// crealm [7] OPTIONAL, cname [8] OPTIONAL, realm [9], sname [10], e-text [11]
/// OPTIONAL, e-data [12] OPTIONAL }` far enough for [`KrbErrorInfo`].
pub fn krb_error(message: &[u8]) -> Option<KrbErrorInfo> {
    let (body, _) = der_tlv(message, 0x7e)?;
    let (mut fields, _) = der_tlv(body, 0x30)?;
    let mut info = KrbErrorInfo {
        code: -1,
        server_time: None,
        text: None,
    };
    let mut seen_code = false;
    while !fields.is_empty() {
        let tag = fields[0];
        let (content, rest) = der_tlv(fields, tag)?;
        match tag {
            0xa4 => info.server_time = der_string(content, 0x18),
            0xa6 => {
                let (int, _) = der_tlv(content, 0x02)?;
                info.code = der_integer(int)?;
                seen_code = true;
            }
            0xab => info.text = der_string(content, 0x1b),
            _ => {}
        }
        fields = rest;
    }
    seen_code.then_some(info)
}

fn der_string(content: &[u8], tag: u8) -> Option<String> {
    let (bytes, _) = der_tlv(content, tag)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn der_integer(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let start = if negative { -1i64 } else { 0 };
    Some(bytes.iter().fold(start, |acc, b| (acc << 8) | i64::from(*b)))
}

/// One TLV with `tag` at the start of `input`: (content, what follows).
pub(crate) fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let len = input
            .get(2..2 + count)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + count, len)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of one TLV, short or long length form.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A KRB-ERROR shaped as MIT krb5kdc sends it: pvno, msg-type, stime, susec, error-code, crealm,
    /// cname, realm, sname, e-text, e-data.
    fn mit_error(code: u8, text: Option<&str>) -> Vec<u8> {
        let gs = |s: &str| tlv(0x1b, s.as_bytes());
        let int = |v: &[u8]| tlv(0x02, v);
        let name = |parts: &[&str]| {
            let strings: Vec<u8> = parts.iter().flat_map(|p| gs(p)).collect();
            tlv(0x30, &[tlv(0xa0, &int(&[1])), tlv(0xa1, &tlv(0x30, &strings))].concat())
        };
        let mut fields = [
            tlv(0xa0, &int(&[5])),
            tlv(0xa1, &int(&[30])),
            tlv(0xa4, &tlv(0x18, b"20261201220000Z")),
            tlv(0xa5, &int(&[0x00, 0xd3, 0xb4])),
            tlv(0xa6, &int(&[code])),
            tlv(0xa7, &gs("LAB.TEST")),
            tlv(0xa8, &name(&["alice"])),
            tlv(0xa9, &gs("LAB.TEST")),
            tlv(0xaa, &name(&["krbtgt", "LAB.TEST"])),
        ]
        .concat();
        if let Some(text) = text {
            fields.extend_from_slice(&tlv(0xab, &gs(text)));
        }
        fields.extend_from_slice(&tlv(0xac, &tlv(0x04, &[0x30, 0x00])));
        tlv(0x7e, &tlv(0x30, &fields))
    }

    #[test]
    fn message_types_from_the_application_tag() {
        assert_eq!(kdc_message_type(&[0x6a, 0x00]), Some(KdcMessage::AsReq));
        assert_eq!(kdc_message_type(&[0x6b]), Some(KdcMessage::AsRep));
        assert_eq!(kdc_message_type(&[0x6c]), Some(KdcMessage::TgsReq));
        assert_eq!(kdc_message_type(&[0x6d]), Some(KdcMessage::TgsRep));
        assert_eq!(kdc_message_type(&[0x7e]), Some(KdcMessage::Error));
        assert_eq!(kdc_message_type(&[0x30]), None);
        assert_eq!(kdc_message_type(&[]), None);
    }

    #[test]
    fn krb_error_from_mit_krb5kdc() {
        let info = krb_error(&mit_error(24, Some("PREAUTH_FAILED"))).unwrap();
        assert_eq!(info.code, error_codes::KDC_ERR_PREAUTH_FAILED);
        assert_eq!(info.server_time.as_deref(), Some("20261201220000Z"));
        assert_eq!(info.text.as_deref(), Some("PREAUTH_FAILED"));
        let info = krb_error(&mit_error(37, None)).unwrap();
        assert_eq!((info.code, info.text), (error_codes::KRB_AP_ERR_SKEW, None));
    }

    #[test]
    fn krb_error_refuses_what_is_not_one() {
        assert_eq!(krb_error(&[]), None);
        assert_eq!(krb_error(&[0x7e, 0x05, 0x30, 0x03, 0xa0, 0x01]), None);
        assert_eq!(krb_error(&[0x6b, 0x02, 0x30, 0x00]), None);
        // No error-code field at all.
        assert_eq!(krb_error(&[0x7e, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x02, 0x01, 0x05]), None);
        // A length past the end.
        assert_eq!(krb_error(&[0x7e, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn integers_keep_their_sign() {
        assert_eq!(der_integer(&[0x18]), Some(24));
        assert_eq!(der_integer(&[0x00, 0xd3, 0xb4]), Some(54196));
        assert_eq!(der_integer(&[0xff]), Some(-1));
        assert_eq!(der_integer(&[]), None);
    }
}
