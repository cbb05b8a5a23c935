//! A session's Kerberos tickets, reused for every target connection of the session.
//!
//! sspi keeps no ticket cache and cannot be handed a TGT: each new context runs the AS
//! exchange (and a TGS exchange) again. The relay carries sspi's KDC traffic itself, so
//! it keeps the KDC's replies and answers the same requests from them: the AS exchange's
//! two replies (the request for pre-authentication, then the AS-REP with the TGT) and
//! each SPN's TGS-REP. sspi derives the same keys from them as the first time (it reads
//! no nonce from them), so the KDC sees one AS exchange per session and one TGS exchange
//! per target. Tickets are used until shortly before they end, then fetched again; to
//! know when, the AS-REP is decrypted with the password as sspi does, and each TGS-REP
//! with the TGT's session key.
//!
//! KDC messages here carry the 4-byte big-endian length prefix of Kerberos over TCP:
//! that is how sspi hands requests over and how it takes the replies back.

use std::time::{Duration, SystemTime};

use picky_asn1::wrapper::Asn1SequenceOf;
use picky_krb::constants::key_usages::{AS_REP_ENC, TGS_REP_ENC_SESSION_KEY};
use picky_krb::constants::types::{PA_ENC_TIMESTAMP, PA_ETYPE_INFO2_TYPE};
use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::{EtypeInfo2, PaData, PrincipalName};
use picky_krb::messages::{AsRep, AsReq, KrbError, TgsRep, TgsReq};
use zeroize::Zeroizing;

use super::decoding::{decode, decrypt_rep_part, system_time};
use super::messages::{error_codes, kdc_message_type, krb_error, KdcMessage};
use crate::proto::guard::contain_panic;
use crate::vault::{KeptReply, KeptTgt, Tickets};

/// What a request to the KDC asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdcRequest {
    /// The AS exchange (a TGT for `client`); `preauth` once it carries the encrypted
    /// timestamp that proves the password.
    As {
        client: String,
        realm: String,
        preauth: bool,
    },
    /// A service ticket for `spn`.
    Tgs { spn: String, realm: String },
    /// Anything else (not kept, not answered from the tickets).
    Other,
}

/// The DER message after the length prefix, if the prefix is right.
pub(crate) fn unframe(framed: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = framed.split_at_checked(4)?;
    let length = u32::from_be_bytes(prefix.try_into().ok()?);
    (usize::try_from(length).ok()? == message.len()).then_some(message)
}

/// What `framed`, a request sspi hands over, asks the KDC for.
pub fn classify_request(framed: &[u8]) -> KdcRequest {
    let Some(der) = unframe(framed) else {
        return KdcRequest::Other;
    };
    match kdc_message_type(der) {
        Some(KdcMessage::AsReq) => match decode::<AsReq>(der) {
            Some(request) => {
                let body = &request.0.req_body.0;
                let realm = body.realm.0.to_string();
                let client = body
                    .cname
                    .0
                    .as_ref()
                    .map(|name| format!("{}@{realm}", principal_text(&name.0)))
                    .unwrap_or_default();
                let preauth = request
                    .0
                    .padata
                    .0
                    .as_ref()
                    .is_some_and(|padata| has_padata(&padata.0, &PA_ENC_TIMESTAMP));
                KdcRequest::As { client, realm, preauth }
            }
            None => KdcRequest::Other,
        },
        Some(KdcMessage::TgsReq) => match decode::<TgsReq>(der) {
            Some(request) => {
                let body = &request.0.req_body.0;
                match body.sname.0.as_ref() {
                    Some(sname) => KdcRequest::Tgs {
                        spn: principal_text(&sname.0),
                        realm: body.realm.0.to_string(),
                    },
                    None => KdcRequest::Other,
                }
            }
            None => KdcRequest::Other,
        },
        _ => KdcRequest::Other,
    }
}

fn has_padata(padata: &Asn1SequenceOf<PaData>, padata_type: &[u8]) -> bool {
    padata.0.iter().any(|p| p.padata_type.0 .0 == padata_type)
}

/// `HTTP/web01.lab.test`, `alice`: the components joined with `/`.
fn principal_text(name: &PrincipalName) -> String {
    name.name_string
        .0
         .0
        .iter()
        .map(|part| part.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A reply from the KDC, decoded as far as keeping tickets needs.
enum KdcReply {
    AsRep(Box<AsRep>),
    TgsRep(Box<TgsRep>),
    Error {
        code: i64,
    },
    /// Not a Kerberos reply the relay can read (sspi gets it and says what is wrong).
    Unreadable,
}

fn parse_reply(framed: &[u8]) -> KdcReply {
    let Some(der) = unframe(framed) else {
        return KdcReply::Unreadable;
    };
    let decoded = match kdc_message_type(der) {
        Some(KdcMessage::AsRep) => decode::<AsRep>(der).map(|r| KdcReply::AsRep(Box::new(r))),
        Some(KdcMessage::TgsRep) => decode::<TgsRep>(der).map(|r| KdcReply::TgsRep(Box::new(r))),
        Some(KdcMessage::Error) => krb_error(der).map(|e| KdcReply::Error { code: e.code }),
        _ => None,
    };
    decoded.unwrap_or(KdcReply::Unreadable)
}

/// The key derived from the password for an AS-REP: its salt comes from the reply's
/// ETYPE-INFO2 (or else the pre-authentication request's), by default realm and name.
fn password_key(as_rep: &AsRep, preauth_required: &[u8], password: &str) -> Option<(CipherSuite, Zeroizing<Vec<u8>>)> {
    let etype = *as_rep.0.enc_part.0.etype.0 .0.first()?;
    let suite = CipherSuite::try_from(usize::from(etype)).ok()?;
    let from_reply = as_rep.0.padata.0.as_ref().and_then(|p| etype_info2_salt(&p.0, etype));
    let from_error = || {
        let error: KrbError = decode(unframe(preauth_required)?)?;
        let e_data = error.0.e_data.0.as_ref()?;
        let padata: Asn1SequenceOf<PaData> = decode(&e_data.0 .0)?;
        etype_info2_salt(&padata, etype)
    };
    let salt = match from_reply.or_else(from_error).flatten() {
        Some(salt) => salt,
        None => {
            let mut salt = as_rep.0.crealm.0.to_string();
            for part in &as_rep.0.cname.0.name_string.0 .0 {
                salt.push_str(&part.to_string());
            }
            salt
        }
    };
    let key = contain_panic(|| {
        suite
            .cipher()
            .generate_key_from_password(password.as_bytes(), salt.as_bytes())
    })
    .ok()?
    .ok()?;
    Some((suite, Zeroizing::new(key)))
}

/// The salt an ETYPE-INFO2 gives for `etype`: `Some(None)` when the entry has none
/// (the default salt), `None` when there is no ETYPE-INFO2 entry for it.
fn etype_info2_salt(padata: &Asn1SequenceOf<PaData>, etype: u8) -> Option<Option<String>> {
    let info = padata.0.iter().find(|p| p.padata_type.0 .0 == PA_ETYPE_INFO2_TYPE)?;
    let entries: EtypeInfo2 = decode(&info.padata_data.0 .0)?;
    let entry = entries.0.iter().find(|e| e.etype.0 .0.first() == Some(&etype))?;
    Some(entry.salt.0.as_ref().map(|s| s.0.to_string()))
}

/// What the relay needs from a TGT it keeps: when it expires and its session key.
struct OpenedTgt {
    expires: SystemTime,
    session_key: Zeroizing<Vec<u8>>,
}

/// Decrypts the AS-REP's own part with the password (as sspi does) to learn the TGT's
/// end time and session key. `None` if it does not decrypt: then it is not kept.
fn open_as_rep(as_rep: &AsRep, preauth_required: &[u8], password: &str) -> Option<OpenedTgt> {
    let (suite, key) = password_key(as_rep, preauth_required, password)?;
    let part = decrypt_rep_part(&suite, &key, AS_REP_ENC, &as_rep.0.enc_part.0.cipher.0 .0)?;
    Some(OpenedTgt {
        expires: system_time(&part.end_time.0)?,
        session_key: Zeroizing::new(part.key.0.key_value.0 .0.clone()),
    })
}

/// When the service ticket in a TGS-REP expires, decrypting its own part with the TGT's
/// session key.
fn service_ticket_expiry(tgs_rep: &TgsRep, tgt_session_key: &[u8]) -> Option<SystemTime> {
    let etype = *tgs_rep.0.enc_part.0.etype.0 .0.first()?;
    let suite = CipherSuite::try_from(usize::from(etype)).ok()?;
    let part = decrypt_rep_part(
        &suite,
        tgt_session_key,
        TGS_REP_ENC_SESSION_KEY,
        &tgs_rep.0.enc_part.0.cipher.0 .0,
    )?;
    system_time(&part.end_time.0)
}

/// A ticket this close to its end is fetched again: the target checks its end time
/// against its own clock, which may run a little ahead.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

fn good_at(expires: SystemTime, now: SystemTime) -> bool {
    now.checked_add(EXPIRY_MARGIN).is_some_and(|soon| soon < expires)
}

/// The reply the session's tickets hold for `request`, if still good at `now`.
pub fn kept_reply(tickets: &Tickets, request: &KdcRequest, now: SystemTime) -> Option<Vec<u8>> {
    let tgt = tickets.tgt.as_ref().filter(|tgt| good_at(tgt.as_rep.expires, now))?;
    match request {
        KdcRequest::As { preauth: false, .. } => Some(tgt.preauth_required.to_vec()),
        KdcRequest::As { preauth: true, .. } => Some(tgt.as_rep.reply.to_vec()),
        KdcRequest::Tgs { spn, .. } => tickets
            .services
            .get(spn)
            .filter(|service| good_at(service.expires, now))
            .map(|service| service.reply.to_vec()),
        KdcRequest::Other => None,
    }
}

/// Keeps what the KDC answered to `request` for the session's next connections.
/// `password` decrypts the AS-REP, for the TGT's end time and session key.
pub fn keep(tickets: &mut Tickets, request: &KdcRequest, reply: &[u8], password: &str) {
    match (request, parse_reply(reply)) {
        (KdcRequest::As { preauth: false, .. }, KdcReply::Error { code })
            if code == error_codes::KDC_ERR_PREAUTH_REQUIRED =>
        {
            tickets.pending_preauth = Some(Zeroizing::new(reply.to_vec()));
        }
        (KdcRequest::As { preauth: true, .. }, KdcReply::AsRep(as_rep)) => {
            let Some(preauth_required) = tickets.pending_preauth.take() else {
                return;
            };
            let Some(opened) = open_as_rep(&as_rep, &preauth_required, password) else {
                return;
            };
            // Service ticket replies decrypt with the TGT they came with.
            tickets.services.clear();
            tickets.tgt = Some(KeptTgt {
                preauth_required,
                as_rep: KeptReply {
                    reply: Zeroizing::new(reply.to_vec()),
                    expires: opened.expires,
                },
                session_key: opened.session_key,
            });
        }
        (KdcRequest::Tgs { spn, .. }, KdcReply::TgsRep(tgs_rep)) => {
            let Some(tgt) = &tickets.tgt else { return };
            let Some(expires) = service_ticket_expiry(&tgs_rep, &tgt.session_key) else {
                return;
            };
            tickets.services.insert(
                spn.clone(),
                KeptReply {
                    reply: Zeroizing::new(reply.to_vec()),
                    expires,
                },
            );
        }
        (KdcRequest::Tgs { .. }, KdcReply::Error { code }) if code == error_codes::KRB_AP_ERR_TKT_EXPIRED => {
            // The KDC no longer takes this TGT: the next connection gets a new one.
            tickets.tgt = None;
            tickets.services.clear();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
