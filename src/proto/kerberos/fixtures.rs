//! Recorded KDC traffic for the tests (see `fixtures/kdc/README.md`), with the
//! 4-byte length prefix sspi hands over and takes back.

use std::time::{Duration, SystemTime};

/// alice's password in the recorded realm.
pub const PASSWORD: &str = "fixture-Alice-pw1";

/// When the recorded TGT and service ticket end (sspi asks for three days).
pub fn tickets_end() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_428_925)
}

/// A moment while the recorded tickets are good.
pub fn while_tickets_good() -> SystemTime {
    tickets_end() - Duration::from_secs(24 * 3600)
}

/// A message with the 4-byte big-endian length prefix in front.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = (message.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    framed
}

pub fn as_req() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/as_req.der"))
}

pub fn preauth_required() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/preauth_required.der"))
}

pub fn as_req_preauth() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/as_req_preauth.der"))
}

pub fn as_rep() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/as_rep.der"))
}

pub fn tgs_req() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/tgs_req.der"))
}

pub fn tgs_rep() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/tgs_rep.der"))
}

pub fn preauth_failed() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/preauth_failed.der"))
}

pub fn tgs_req_unknown_spn() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/tgs_req_unknown_spn.der"))
}

pub fn unknown_spn() -> Vec<u8> {
    frame(include_bytes!("fixtures/kdc/unknown_spn.der"))
}

/// DER of one TLV, short or long length form.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A bare KRB-ERROR with `code` (and `text`), as a KDC of LAB.TEST sends it.
pub fn krb_error(code: u8, text: Option<&str>) -> Vec<u8> {
    let string = |s: &str| tlv(0x1b, s.as_bytes());
    let int = |v: &[u8]| tlv(0x02, v);
    let name = tlv(
        0x30,
        &[
            tlv(0xa0, &int(&[2])),
            tlv(0xa1, &tlv(0x30, &[string("krbtgt"), string("LAB.TEST")].concat())),
        ]
        .concat(),
    );
    let mut fields = [
        tlv(0xa0, &int(&[5])),
        tlv(0xa1, &int(&[30])),
        tlv(0xa4, &tlv(0x18, b"20261201220000Z")),
        tlv(0xa5, &int(&[0x01])),
        tlv(0xa6, &int(&[code])),
        tlv(0xa9, &string("LAB.TEST")),
        tlv(0xaa, &name),
    ]
    .concat();
    if let Some(text) = text {
        fields.extend_from_slice(&tlv(0xab, &string(text)));
    }
    tlv(0x7e, &tlv(0x30, &fields))
}
