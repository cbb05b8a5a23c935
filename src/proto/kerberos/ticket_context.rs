//! A client context from a service ticket the relay already holds (the S4U2Proxy
//! ticket in the caller's name): the AP-REQ inside SPNEGO, as Windows' WinRM client
//! sends it, the target's AP-REP, then Kerberos wrap tokens ([`wrap`](super::wrap)).
//!
//! sspi's client can only get its tickets itself, from a password; this is the same
//! handshake on picky-krb for a ticket handed over.

use std::time::SystemTime;

use md5::{Digest, Md5};
use picky_asn1::wrapper::{
    ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag2, ExplicitContextTag3, ExplicitContextTag4,
    ExplicitContextTag5, ExplicitContextTag6, ExplicitContextTag7, ExplicitContextTag8, IntegerAsn1,
    ObjectIdentifierAsn1, OctetStringAsn1, Optional,
};
use picky_krb::constants::gss_api::{AP_REQ_TOKEN_ID, AUTHENTICATOR_CHECKSUM_TYPE};
use picky_krb::constants::key_usages::{AP_REP_ENC, AP_REQ_AUTHENTICATOR};
use picky_krb::constants::types::{AP_REQ_MSG_TYPE, NT_PRINCIPAL};
use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncApRepPart, EncryptedData, EncryptionKey, Realm,
};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage, MechTypeList, NegTokenInit, NegTokenTarg1};
use picky_krb::messages::{ApRep, ApReq, ApReqInner};
use zeroize::{Zeroize, Zeroizing};

use super::ap_options::channel_binding_mark;
use super::decoding::decode;
use super::refusal::{target_refusal, TargetRefusal};
use super::s4u::{flags, kerberos_time, micros, principal, unsigned, IssuedTicket};
use super::wrap::{Side, WrapError, WrapKeys};
use crate::proto::guard::contain_panic;
use crate::proto::sealing::SealedPart;

/// SPNEGO, Microsoft's Kerberos OID (what Windows lists first) and krb5, as DER.
const SPNEGO: &[u8] = &[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const MS_KRB5: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
const KRB5: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
/// GSS flags in the authenticator checksum: mutual, sequence, confidentiality, integrity.
const GSS_FLAGS: u32 = 0x02 | 0x08 | 0x10 | 0x20;
const KERBEROS_VERSION: u8 = 5;
/// AP options: mutual-required (bit 2).
const MUTUAL_REQUIRED: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketContextError {
    #[error(transparent)]
    TargetRefused(#[from] TargetRefusal),
    #[error(transparent)]
    Wrap(#[from] WrapError),
    #[error("the target's answer is not a Kerberos AP-REP: {0}")]
    BadReply(&'static str),
    #[error("the target did not complete Kerberos authentication")]
    Incomplete,
    #[error("cannot build the AP-REQ: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> TicketContextError {
    TicketContextError::Build(e.to_string())
}

enum State {
    Initial,
    /// The AP-REQ went out: what the AP-REP must match.
    Sent {
        subkey: Zeroizing<Vec<u8>>,
        seq: u32,
        ctime: SystemTime,
    },
    Established(WrapKeys),
    /// A step failed: the context is not used again.
    Broken,
}

/// The relay's client context towards one target, from a ticket it holds.
pub struct TicketContext {
    ticket: picky_krb::data_types::Ticket,
    suite: CipherSuite,
    session_key: Zeroizing<Vec<u8>>,
    client: (Vec<String>, String),
    spn: String,
    /// `tls-server-end-point` application data, over TLS.
    channel_bindings: Option<Vec<u8>>,
    state: State,
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for TicketContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketContext")
            .field("spn", &self.spn)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl TicketContext {
    /// A context for `ticket` (issued for `spn`).
    pub fn new(ticket: &IssuedTicket, spn: &str) -> TicketContext {
        let (name, realm) = ticket.client.rsplit_once('@').unwrap_or((ticket.client.as_str(), ""));
        TicketContext {
            ticket: ticket.ticket.clone(),
            suite: ticket.suite.clone(),
            session_key: ticket.session_key.clone(),
            client: (name.split('/').map(str::to_string).collect(), realm.to_string()),
            spn: spn.to_string(),
            channel_bindings: None,
            state: State::Initial,
            clock: SystemTime::now,
        }
    }

    /// The same context on another clock (recorded tickets are good at recorded times).
    #[cfg(test)]
    fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// Bind to the TLS channel: `end_point` is `tls_server_end_point` of the target's certificate.
    pub fn with_channel_bindings(mut self, end_point: &[u8]) -> Self {
        self.channel_bindings = Some(end_point.to_vec());
        self
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established(_))
    }

    /// The next handshake step: first (`server_token` `None`) the SPNEGO token with the
    /// AP-REQ, then the target's final token (the AP-REP); `None` once established.
    pub fn step(&mut self, server_token: Option<&[u8]>) -> Result<Option<Vec<u8>>, TicketContextError> {
        match (std::mem::replace(&mut self.state, State::Broken), server_token) {
            (State::Initial, None) => {
                let (token, sent) = self.ap_req()?;
                self.state = sent;
                Ok(Some(token))
            }
            (State::Sent { subkey, seq, ctime }, Some(token)) => {
                let keys = self.ap_rep(token, &subkey, seq, ctime)?;
                self.state = State::Established(keys);
                Ok(None)
            }
            (established @ State::Established(_), _) => {
                self.state = established;
                Ok(None)
            }
            _ => Err(TicketContextError::Incomplete),
        }
    }

    fn ap_req(&self) -> Result<(Vec<u8>, State), TicketContextError> {
        let now = (self.clock)();
        let subkey = Zeroizing::new(random_key(&self.suite));
        let seq = rand::random::<u32>() & 0x3fff_ffff;
        // The GSS checksum: length 16, the channel bindings' MD5, then the flags.
        let mut checksum = Vec::with_capacity(24);
        checksum.extend_from_slice(&16u32.to_le_bytes());
        checksum.extend_from_slice(&self.bindings_hash());
        checksum.extend_from_slice(&GSS_FLAGS.to_le_bytes());
        let authorization_data = match self.channel_bindings {
            Some(_) => Some(channel_binding_mark().ok_or(TicketContextError::Build("channel binding mark".into()))?),
            None => None,
        };
        let name: Vec<&str> = self.client.0.iter().map(String::as_str).collect();
        let mut authenticator = Authenticator::from(AuthenticatorInner {
            authenticator_vno: ExplicitContextTag0::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
            crealm: ExplicitContextTag1::from(Realm::from(
                picky_asn1::restricted_string::IA5String::from_string(self.client.1.clone()).map_err(build_err)?,
            )),
            cname: ExplicitContextTag2::from(principal(NT_PRINCIPAL, &name).map_err(build_err)?),
            cksum: Optional::from(Some(ExplicitContextTag3::from(Checksum {
                cksumtype: ExplicitContextTag0::from(IntegerAsn1::from(AUTHENTICATOR_CHECKSUM_TYPE.to_vec())),
                checksum: ExplicitContextTag1::from(OctetStringAsn1::from(checksum)),
            }))),
            cusec: ExplicitContextTag4::from(unsigned(micros(now))),
            ctime: ExplicitContextTag5::from(kerberos_time(now)),
            subkey: Optional::from(Some(ExplicitContextTag6::from(EncryptionKey {
                key_type: ExplicitContextTag0::from(IntegerAsn1::from(vec![u8::from(&self.suite)])),
                key_value: ExplicitContextTag1::from(OctetStringAsn1::from(subkey.to_vec())),
            }))),
            seq_number: Optional::from(Some(ExplicitContextTag7::from(unsigned(seq)))),
            authorization_data: Optional::from(authorization_data.map(ExplicitContextTag8::from)),
        });
        let der = picky_asn1_der::to_vec(&authenticator);
        // The authenticator's copy of the subkey goes now; `plain` is wiped on drop.
        if let Some(key) = authenticator.0.subkey.0.as_mut() {
            key.0.key_value.0 .0.zeroize();
        }
        let plain = Zeroizing::new(der.map_err(build_err)?);
        let sealed = self
            .suite
            .cipher()
            .encrypt(&self.session_key, AP_REQ_AUTHENTICATOR, &plain)
            .map_err(build_err)?;
        let ap_req = ApReq::from(ApReqInner {
            pvno: ExplicitContextTag0::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
            msg_type: ExplicitContextTag1::from(IntegerAsn1::from(vec![AP_REQ_MSG_TYPE])),
            ap_options: ExplicitContextTag2::from(flags(&[MUTUAL_REQUIRED])),
            ticket: ExplicitContextTag3::from(self.ticket.clone()),
            authenticator: ExplicitContextTag4::from(EncryptedData {
                etype: ExplicitContextTag0::from(IntegerAsn1::from(vec![u8::from(&self.suite)])),
                kvno: Optional::from(None),
                cipher: ExplicitContextTag2::from(OctetStringAsn1::from(sealed)),
            }),
        });
        let krb = ApplicationTag0(KrbMessage {
            krb5_oid: oid(KRB5)?,
            krb5_token_id: AP_REQ_TOKEN_ID,
            krb_msg: ap_req,
        });
        let mech_token = picky_asn1_der::to_vec(&krb).map_err(build_err)?;
        let init = ApplicationTag0(GssApiNegInit {
            oid: oid(SPNEGO)?,
            neg_token_init: ExplicitContextTag0::from(NegTokenInit {
                mech_types: Optional::from(Some(ExplicitContextTag0::from(MechTypeList::from(vec![
                    oid(MS_KRB5)?,
                    oid(KRB5)?,
                ])))),
                req_flags: Optional::from(None),
                mech_token: Optional::from(Some(ExplicitContextTag2::from(OctetStringAsn1::from(mech_token)))),
                mech_list_mic: Optional::from(None),
            }),
        });
        let token = picky_asn1_der::to_vec(&init).map_err(build_err)?;
        Ok((
            token,
            State::Sent {
                subkey,
                seq,
                ctime: now,
            },
        ))
    }

    /// MD5 of the GSS channel bindings (no addresses, the application data), or zeros.
    fn bindings_hash(&self) -> [u8; 16] {
        let Some(data) = &self.channel_bindings else {
            return [0; 16];
        };
        let mut md5 = Md5::new();
        md5.update([0u8; 16]);
        md5.update((data.len() as u32).to_le_bytes());
        md5.update(data);
        md5.finalize().into()
    }

    fn ap_rep(
        &self,
        token: &[u8],
        subkey: &Zeroizing<Vec<u8>>,
        seq: u32,
        ctime: SystemTime,
    ) -> Result<WrapKeys, TicketContextError> {
        let inner = contain_panic(|| response_token(token))
            .ok()
            .flatten()
            .ok_or(TicketContextError::BadReply("no SPNEGO response token"))?;
        if let Some(refusal) = target_refusal(token, &self.spn) {
            return Err(refusal.into());
        }
        let rep = contain_panic(|| KrbMessage::<ApRep>::decode_application_krb_message(&inner).ok())
            .ok()
            .flatten()
            .ok_or(TicketContextError::BadReply("no AP-REP in the response token"))?
            .0
            .krb_msg;
        let encrypted = &rep.0.enc_part.0.cipher.0 .0;
        let plain = contain_panic(|| self.suite.cipher().decrypt(&self.session_key, AP_REP_ENC, encrypted))
            .ok()
            .and_then(Result::ok)
            .map(Zeroizing::new)
            .ok_or(TicketContextError::BadReply(
                "its encrypted part does not open with the ticket's key",
            ))?;
        let mut part: EncApRepPart = decode(&plain).ok_or(TicketContextError::BadReply("malformed EncAPRepPart"))?;
        // The acceptor's subkey leaves the decoded part at once, into memory wiped on drop.
        let acceptor_key = part.0.subkey.0.take().map(|mut key| {
            let value = Zeroizing::new(std::mem::take(&mut key.0.key_value.0 .0));
            (key.0.key_type.0, value)
        });
        // Mutual authentication: the target read the authenticator's time.
        if Some(&part.0.ctime.0) != Some(&kerberos_time(ctime))
            || part.0.cusec.0.as_unsigned_bytes_be() != unsigned(micros(ctime)).as_unsigned_bytes_be()
        {
            return Err(TicketContextError::BadReply(
                "it does not echo the authenticator's time",
            ));
        }
        let peer_seq = part.0.seq_number.0.as_ref().map_or(0, |s| {
            s.0.as_unsigned_bytes_be()
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        });
        let (suite, key, acceptor_subkey) = match acceptor_key {
            Some((etype, key)) => {
                let suite = etype
                    .as_unsigned_bytes_be()
                    .last()
                    .and_then(|e| CipherSuite::try_from(usize::from(*e)).ok())
                    .ok_or(TicketContextError::BadReply("its subkey's encryption type is unknown"))?;
                (suite, key, true)
            }
            None => (self.suite.clone(), subkey.clone(), false),
        };
        Ok(WrapKeys::new(
            suite,
            key,
            Side::Initiator,
            acceptor_subkey,
            u64::from(seq),
            peer_seq,
        ))
    }

    fn keys(&mut self) -> Result<&mut WrapKeys, TicketContextError> {
        match &mut self.state {
            State::Established(keys) => Ok(keys),
            _ => Err(TicketContextError::Incomplete),
        }
    }

    /// Seals one body for the target.
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, TicketContextError> {
        Ok(self.keys()?.seal(plain)?)
    }

    /// Unseals one part of the target's body.
    pub fn unseal(&mut self, part: &SealedPart) -> Result<Vec<u8>, TicketContextError> {
        Ok(self.keys()?.unseal(part)?)
    }
}

fn oid(der: &[u8]) -> Result<ObjectIdentifierAsn1, TicketContextError> {
    picky_asn1_der::from_bytes(der).map_err(build_err)
}

fn random_key(suite: &CipherSuite) -> Vec<u8> {
    let len = suite.cipher().key_size();
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// The inner token of a SPNEGO NegTokenResp, or a bare krb5 token as it is.
fn response_token(token: &[u8]) -> Option<Vec<u8>> {
    if token.first() == Some(&0x60) {
        return Some(token.to_vec());
    }
    let resp: NegTokenTarg1 = picky_asn1_der::from_bytes(token).ok()?;
    Some(resp.0.response_token.0?.0 .0)
}

#[cfg(test)]
mod tests;
