//! Why a KDC or a target refused: its KRB-ERROR code in words an administrator can act
//! on, with the account or service principal the request was about.

use super::messages::{der_tlv, error_codes, krb_error};
use super::tickets::KdcRequest;

/// The GSS token id of a KRB-ERROR inside a krb5 mechanism token.
const KRB_ERROR_TOKEN_ID: [u8; 2] = [0x03, 0x00];
/// Target errors meaning its key for the SPN is not the one the ticket was made with.
const WRONG_KEY: [i64; 4] = [
    error_codes::KRB_AP_ERR_BAD_INTEGRITY,
    error_codes::KRB_AP_ERR_MODIFIED,
    error_codes::KRB_AP_ERR_BADKEYVER,
    error_codes::KRB_AP_ERR_NOKEY,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdcRefusal {
    #[error("pre-authentication failed: {realm} refused the delegated password of {client}")]
    PreauthFailed { client: String, realm: String },
    #[error("{realm} does not know the user {client}")]
    UnknownClient { client: String, realm: String },
    #[error("{realm} refused {client}: the account is disabled, locked out or expired")]
    ClientRevoked { client: String, realm: String },
    #[error("the password of {client} has expired in {realm}; the user must change it")]
    PasswordExpired { client: String, realm: String },
    #[error(
        "unknown SPN {spn}: {realm} has no service principal of that name; register it on the target's \
         account (setspn -S {spn} <account>) or set the target's spn"
    )]
    UnknownSpn { spn: String, realm: String },
    #[error(
        "clock skew: the clocks of the relay and of {realm}'s KDC differ by more than the domain allows; \
         synchronise the bastion's clock (NTP)"
    )]
    ClockSkew { realm: String },
    #[error("{realm} has no key for {what} with an encryption type the relay supports (AES): enable AES for it")]
    NoAesKey { what: String, realm: String },
    #[error("{realm} refused {what}: Kerberos error {code}{text}")]
    Other {
        what: String,
        realm: String,
        code: i64,
        text: String,
    },
}

/// Why a target refused the ticket, when it said so with a KRB-ERROR (Windows answers a
/// ticket it cannot take with one, inside SPNEGO).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    #[error(
        "clock skew: the clocks of the relay and of the target differ by more than Kerberos allows; \
         synchronise both with the domain (NTP)"
    )]
    ClockSkew,
    #[error(
        "the target cannot decrypt the ticket for {spn}: its key is not the domain's (its keytab is out of date, \
         or the SPN belongs to another account)"
    )]
    WrongKey { spn: String },
    #[error("the target refused the ticket for {spn}: Kerberos error {code}{text}")]
    Other { spn: String, code: i64, text: String },
}

/// The refusal in a target's answer token (SPNEGO, or a bare krb5 token) to the AP-REQ
/// for `spn`, if it carries a KRB-ERROR.
pub fn target_refusal(token: &[u8], spn: &str) -> Option<TargetRefusal> {
    let krb5_token = match token.first()? {
        // NegTokenResp: [1] SEQUENCE { ..., responseToken [2] OCTET STRING, ... }
        0xa1 => {
            let (sequence, _) = der_tlv(token, 0xa1)?;
            let (mut fields, _) = der_tlv(sequence, 0x30)?;
            loop {
                let tag = *fields.first()?;
                let (content, rest) = der_tlv(fields, tag)?;
                if tag == 0xa2 {
                    break der_tlv(content, 0x04)?.0;
                }
                fields = rest;
            }
        }
        _ => token,
    };
    // [APPLICATION 0] { mech OID, token id, message }
    let (inner, _) = der_tlv(krb5_token, 0x60)?;
    let (_, after_oid) = der_tlv(inner, 0x06)?;
    let error = after_oid.strip_prefix(&KRB_ERROR_TOKEN_ID[..]).and_then(krb_error)?;
    Some(match error.code {
        error_codes::KRB_AP_ERR_SKEW => TargetRefusal::ClockSkew,
        code if WRONG_KEY.contains(&code) => TargetRefusal::WrongKey { spn: spn.to_string() },
        code => TargetRefusal::Other {
            spn: spn.to_string(),
            code,
            text: printable(error.text).map(|t| format!(" ({t})")).unwrap_or_default(),
        },
    })
}

/// The KDC's or target's words go into faults and the audit: short, printable.
fn printable(text: Option<String>) -> Option<String> {
    text.map(|t| t.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        .filter(|t| !t.is_empty())
}

/// The refusal that `reply` (a bare KDC message) means as the answer to `request`;
/// `None` when it is no KRB-ERROR, or the KDC's ordinary request for pre-authentication.
pub fn refusal(request: &KdcRequest, reply: &[u8]) -> Option<KdcRefusal> {
    let error = krb_error(reply)?;
    if error.code == error_codes::KDC_ERR_PREAUTH_REQUIRED {
        return None;
    }
    let (client, realm, spn) = match request {
        KdcRequest::As { client, realm, .. } => (client.clone(), realm.clone(), None),
        KdcRequest::Tgs { spn, realm } => (String::new(), realm.clone(), Some(spn.clone())),
        KdcRequest::Other => (String::new(), "the realm".to_string(), None),
    };
    let what = match &spn {
        Some(spn) => format!("a ticket for {spn}"),
        None if !client.is_empty() => format!("the logon of {client}"),
        None => "a request".to_string(),
    };
    let text = printable(error.text).map(|t| format!(" ({t})")).unwrap_or_default();
    Some(match (error.code, spn) {
        (error_codes::KDC_ERR_PREAUTH_FAILED | error_codes::KRB_AP_ERR_BAD_INTEGRITY, None) => {
            KdcRefusal::PreauthFailed { client, realm }
        }
        (error_codes::KDC_ERR_C_PRINCIPAL_UNKNOWN, None) => KdcRefusal::UnknownClient { client, realm },
        (error_codes::KDC_ERR_CLIENT_REVOKED, None) => KdcRefusal::ClientRevoked { client, realm },
        (error_codes::KDC_ERR_KEY_EXPIRED, None) => KdcRefusal::PasswordExpired { client, realm },
        (error_codes::KDC_ERR_S_PRINCIPAL_UNKNOWN, Some(spn)) => KdcRefusal::UnknownSpn { spn, realm },
        (error_codes::KRB_AP_ERR_SKEW, _) => KdcRefusal::ClockSkew { realm },
        (error_codes::KDC_ERR_ETYPE_NOSUPP, spn) => KdcRefusal::NoAesKey {
            what: spn.unwrap_or(client),
            realm,
        },
        (code, _) => KdcRefusal::Other {
            what,
            realm,
            code,
            text,
        },
    })
}

#[cfg(test)]
mod tests;
