//! The relay as a plain Kerberos acceptor (HTTP `Negotiate` or `Kerberos`), for
//! constrained delegation: one AP-REQ in, the AP-REP out, and the context's wrap keys;
//! the caller's service ticket is kept as the evidence S4U2Proxy needs ([`s4u`]).
//!
//! sspi's acceptor keeps neither the ticket nor its client's whole name, and panics on a
//! bare krb5 token; the relay already decrypts tickets itself ([`service_ticket`]).
//!
//! [`s4u`]: super::s4u
//! [`service_ticket`]: super::service_ticket

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use picky_asn1::wrapper::{
    ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2, ExplicitContextTag3, IntegerAsn1, OctetStringAsn1,
    Optional,
};
use picky_krb::constants::gss_api::{AP_REP_TOKEN_ID, AUTHENTICATOR_CHECKSUM_TYPE};
use picky_krb::constants::key_usages::{AP_REP_ENC, AP_REQ_AUTHENTICATOR};
use picky_krb::constants::types::AP_REP_MSG_TYPE;
use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::{Authenticator, EncApRepPart, EncApRepPartInner, EncryptedData};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage};
use picky_krb::messages::{ApRep, ApRepInner};
use zeroize::Zeroizing;

use super::decoding::{decode, system_time};
use super::s4u::{components, unsigned, Evidence};
use super::service_ticket::{ap_req, client_of, open, ServiceKeyRef, TicketClient};
use super::wrap::{Side, WrapError, WrapKeys};
use crate::proto::credssp::{classify_first_token, InnerMechanism};
use crate::proto::guard::contain_panic;
use crate::proto::sealing::SealedPart;

/// How far the caller's clock may be from the relay's (Kerberos' customary five minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
const KERBEROS_VERSION: u8 = 5;
/// DER of krb5 and Microsoft's Kerberos OID, for SPNEGO's supportedMech.
const KRB5_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
const MS_KRB5_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// SPNEGO negState accept-completed.
const ACCEPT_COMPLETED: [u8; 3] = [0x0a, 0x01, 0x00];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error(
        "NTLM cannot be delegated: this relay takes Kerberos (constrained delegation) or CredSSP; log on with a \
         Kerberos ticket (use the relay's DNS name, not its address, and kinit) or with CredSSP"
    )]
    Ntlm,
    #[error("not a Kerberos logon token: {0}")]
    Malformed(String),
    #[error("the ticket is for a service this relay has no key for ({0}); check the relay's keytab")]
    NoKey(String),
    #[error("the authenticator does not open with the ticket's session key, or names another client")]
    BadAuthenticator,
    #[error(
        "clock skew: the caller's clock and the relay's differ by more than {} minutes; synchronise both (NTP)",
        MAX_SKEW.as_secs() / 60
    )]
    ClockSkew,
    #[error("the ticket of {0} has expired or is not yet valid: get a new one (kinit)")]
    TicketNotValid(String),
    #[error("the authenticator was already used (a replay)")]
    Replay,
    #[error("the logon is bound to another TLS channel (channel binding mismatch)")]
    ChannelBinding,
    #[error(
        "over HTTPS the relay takes only logons bound to its TLS channel, and this one carries no channel \
         binding: use a client that sends it (Windows, pypsrp and pywinrm do when they check the certificate)"
    )]
    Unbound,
    #[error("cannot answer: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> AcceptError {
    AcceptError::Build(e.to_string())
}

/// How the client framed its token; the answer is framed alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Spnego,
    Raw,
}

/// Authenticators seen while they could still be replayed: (client, time, microseconds).
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: HashMap<(String, SystemTime, u32), SystemTime>,
}

impl ReplayCache {
    /// `true` when the authenticator is new (and now remembered).
    fn check(&mut self, client: &str, ctime: SystemTime, cusec: u32, now: SystemTime) -> bool {
        self.seen.retain(|_, until| *until > now);
        let until = now + 2 * MAX_SKEW;
        self.seen.insert((client.to_string(), ctime, cusec), until).is_none()
    }
}

/// An accepted logon: who, the evidence for S4U2Proxy, and the context's wrap keys.
pub struct Accepted {
    pub client: TicketClient,
    pub evidence: Evidence,
    /// The token to send back (`WWW-Authenticate: Negotiate <it>`).
    pub reply: Vec<u8>,
    pub keys: WrapKeys,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, WrapError> {
        self.keys.seal(plain)
    }

    pub fn unseal(&mut self, part: &SealedPart) -> Result<Vec<u8>, WrapError> {
        self.keys.unseal(part)
    }
}

/// Accepts the client's first token. `channel_bindings`: the `tls-server-end-point`
/// application data of the relay's certificate over HTTPS (a client that bound its
/// logon to another channel is refused; one that bound nothing is not).
pub fn accept(
    token: &[u8],
    keys: &[ServiceKeyRef<'_>],
    now: SystemTime,
    channel_bindings: Option<&[u8]>,
    replays: &mut ReplayCache,
) -> Result<Accepted, AcceptError> {
    let framing = match classify_first_token(token) {
        Ok(InnerMechanism::Ntlm | InnerMechanism::Negotiate) => return Err(AcceptError::Ntlm),
        Ok(InnerMechanism::NegotiateKerberos) => Framing::Spnego,
        Ok(InnerMechanism::Kerberos) => Framing::Raw,
        Err(error) => return Err(AcceptError::Malformed(error.to_string())),
    };
    contain_panic(|| accept_checked(token, framing, keys, now, channel_bindings, replays))
        .unwrap_or_else(|_| Err(AcceptError::Malformed("undecodable AP-REQ".into())))
}

fn accept_checked(
    token: &[u8],
    framing: Framing,
    keys: &[ServiceKeyRef<'_>],
    now: SystemTime,
    channel_bindings: Option<&[u8]>,
    replays: &mut ReplayCache,
) -> Result<Accepted, AcceptError> {
    let request = ap_req(token).ok_or_else(|| AcceptError::Malformed("no AP-REQ".into()))?;
    let ticket = request.0.ticket.0.clone();
    let service = format!("{}@{}", components(&ticket.0.sname.0).join("/"), ticket.0.realm.0 .0);
    let (_, mut part) = open(&ticket, keys).ok_or(AcceptError::NoKey(service))?;
    // Keys leave the decoded structures at once, into memory wiped on drop.
    let session_key = Zeroizing::new(std::mem::take(&mut part.0.key.0.key_value.0 .0));
    let suite = suite_of(&part.0.key.0.key_type.0).ok_or(AcceptError::BadAuthenticator)?;
    let client = client_of(&part);
    let plain = suite
        .cipher()
        .decrypt(
            &session_key,
            AP_REQ_AUTHENTICATOR,
            &request.0.authenticator.0.cipher.0 .0,
        )
        .map(Zeroizing::new)
        .map_err(|_| AcceptError::BadAuthenticator)?;
    let mut authenticator: Authenticator = decode(&plain).ok_or(AcceptError::BadAuthenticator)?;
    let subkey = authenticator.0.subkey.0.take().map(|mut key| {
        let value = Zeroizing::new(std::mem::take(&mut key.0.key_value.0 .0));
        (key.0.key_type.0, value)
    });
    let auth = &authenticator.0;
    if components(&auth.cname.0) != client.name || auth.crealm.0 .0.to_string() != client.realm {
        return Err(AcceptError::BadAuthenticator);
    }
    let ctime = system_time(&auth.ctime.0).ok_or(AcceptError::BadAuthenticator)?;
    if !within(ctime, now, MAX_SKEW) {
        return Err(AcceptError::ClockSkew);
    }
    let start = part
        .0
        .starttime
        .0
        .as_ref()
        .and_then(|t| system_time(&t.0))
        .or_else(|| system_time(&part.0.auth_time.0));
    let end = system_time(&part.0.endtime.0);
    let valid = start.is_some_and(|s| s <= now + MAX_SKEW) && end.is_some_and(|e| now < e + MAX_SKEW);
    if !valid {
        return Err(AcceptError::TicketNotValid(client.display()));
    }
    let cusec = number(&auth.cusec.0) as u32;
    if !replays.check(&client.display(), ctime, cusec, now) {
        return Err(AcceptError::Replay);
    }
    if let Some(checksum) = auth.cksum.0.as_ref() {
        let checksum = &checksum.0;
        if checksum.cksumtype.0.as_unsigned_bytes_be() == &AUTHENTICATOR_CHECKSUM_TYPE[1..] {
            check_bindings(&checksum.checksum.0 .0, channel_bindings)?;
        }
    }
    let evidence = Evidence::new(ticket, &part).ok_or(AcceptError::BadAuthenticator)?;
    // The initiator's subkey keys the context; without one, the session key.
    let (key_suite, key) = match subkey {
        Some((etype, subkey)) => (suite_of(&etype).ok_or(AcceptError::BadAuthenticator)?, subkey),
        None => (suite.clone(), session_key.clone()),
    };
    let peer_seq = auth.seq_number.0.as_ref().map_or(0, |s| number(&s.0));
    let own_seq = u64::from(rand::random::<u32>() & 0x3fff_ffff);
    let rep_part = EncApRepPart::from(EncApRepPartInner {
        ctime: ExplicitContextTag0::from(auth.ctime.0.clone()),
        cusec: ExplicitContextTag1::from(auth.cusec.0.clone()),
        subkey: Optional::from(None),
        seq_number: Optional::from(Some(ExplicitContextTag3::from(unsigned(own_seq as u32)))),
    });
    let rep_plain = Zeroizing::new(picky_asn1_der::to_vec(&rep_part).map_err(build_err)?);
    let sealed = suite
        .cipher()
        .encrypt(&session_key, AP_REP_ENC, &rep_plain)
        .map_err(build_err)?;
    let ap_rep = ApRep::from(ApRepInner {
        pvno: ExplicitContextTag0::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
        msg_type: ExplicitContextTag1::from(IntegerAsn1::from(vec![AP_REP_MSG_TYPE])),
        enc_part: ExplicitContextTag2::from(EncryptedData {
            etype: ExplicitContextTag0::from(IntegerAsn1::from(vec![u8::from(&suite)])),
            kvno: Optional::from(None),
            cipher: ExplicitContextTag2::from(OctetStringAsn1::from(sealed)),
        }),
    });
    let krb5_oid = picky_asn1_der::from_bytes(&KRB5_OID).map_err(build_err)?;
    let gss = picky_asn1_der::to_vec(&ApplicationTag0(KrbMessage {
        krb5_oid,
        krb5_token_id: AP_REP_TOKEN_ID,
        krb_msg: ap_rep,
    }))
    .map_err(build_err)?;
    let reply = match framing {
        Framing::Raw => gss,
        Framing::Spnego => neg_token_resp(&supported_mech(token), &gss),
    };
    Ok(Accepted {
        client,
        evidence,
        reply,
        keys: WrapKeys::new(key_suite, key, Side::Acceptor, false, own_seq, peer_seq),
    })
}

fn suite_of(etype: &IntegerAsn1) -> Option<CipherSuite> {
    let value = *etype.as_unsigned_bytes_be().last()?;
    CipherSuite::try_from(usize::from(value)).ok()
}

fn number(value: &IntegerAsn1) -> u64 {
    value
        .as_unsigned_bytes_be()
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn within(a: SystemTime, b: SystemTime, skew: Duration) -> bool {
    let diff = a.duration_since(b).or_else(|_| b.duration_since(a)).unwrap_or_default();
    diff <= skew
}

/// The checksum's channel-binding hash (bytes 4..20): the MD5 of this channel's
/// bindings, or zeros (unbound), which only a plain HTTP logon may be: over TLS an
/// unbound ticket could have been taken from a client that talked to someone else, and
/// the relay would delegate as its user.
fn check_bindings(checksum: &[u8], channel_bindings: Option<&[u8]>) -> Result<(), AcceptError> {
    let hash = checksum.get(4..20).ok_or(AcceptError::BadAuthenticator)?;
    if hash.iter().all(|b| *b == 0) {
        return match channel_bindings {
            None => Ok(()),
            Some(_) => Err(AcceptError::Unbound),
        };
    }
    let Some(data) = channel_bindings else {
        return Err(AcceptError::ChannelBinding);
    };
    let mut md5 = Md5::new();
    md5.update([0u8; 16]);
    md5.update((data.len() as u32).to_le_bytes());
    md5.update(data);
    if md5.finalize().as_slice() == hash {
        Ok(())
    } else {
        Err(AcceptError::ChannelBinding)
    }
}

/// The Kerberos OID the client listed first (what SPNEGO's answer names).
fn supported_mech(token: &[u8]) -> Vec<u8> {
    let first = picky_asn1_der::from_bytes::<ApplicationTag0<GssApiNegInit>>(token)
        .ok()
        .and_then(|init| init.0.neg_token_init.0.mech_types.0)
        .and_then(|types| types.0 .0.into_iter().next())
        .and_then(|oid| picky_asn1_der::to_vec(&oid).ok());
    match first {
        Some(oid) if oid == MS_KRB5_OID => MS_KRB5_OID.to_vec(),
        _ => KRB5_OID.to_vec(),
    }
}

/// SPNEGO NegTokenResp: accept-completed, the mechanism, the AP-REP.
fn neg_token_resp(mech: &[u8], response: &[u8]) -> Vec<u8> {
    let fields = [
        der(0xa0, &ACCEPT_COMPLETED),
        der(0xa1, mech),
        der(0xa2, &der(0x04, response)),
    ]
    .concat();
    der(0xa1, &der(0x30, &fields))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests;
