//! Kerberos constrained delegation (S4U2Proxy) as sans-IO steps: the relay's own TGT
//! from its account key (an AS exchange with the keytab), then, per target, a TGS-REQ
//! that hands the KDC the caller's service ticket to the relay as evidence and asks
//! for a ticket to the target in the caller's name.
//!
//! sspi 0.23 has no S4U and cannot be given a key instead of a password; the messages
//! are built here on picky-krb, whose types and ciphers sspi itself uses.

use std::time::{Duration, SystemTime};

use picky_asn1::bit_string::BitString;
use picky_asn1::date::GeneralizedTime;
use picky_asn1::restricted_string::IA5String;
use picky_asn1::wrapper::{
    Asn1SequenceOf, BitStringAsn1, ExplicitContextTag0, ExplicitContextTag1, ExplicitContextTag11, ExplicitContextTag2,
    ExplicitContextTag3, ExplicitContextTag4, ExplicitContextTag5, ExplicitContextTag7, ExplicitContextTag8,
    GeneralizedTimeAsn1, IntegerAsn1, OctetStringAsn1, Optional,
};
use picky_krb::constants::key_usages::{
    AS_REP_ENC, AS_REQ_TIMESTAMP, TGS_REP_ENC_SESSION_KEY, TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR,
    TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR_CKSUM,
};
use picky_krb::constants::types::{
    AP_REQ_MSG_TYPE, AS_REP_MSG_TYPE, AS_REQ_MSG_TYPE, NT_PRINCIPAL, NT_SRV_INST, PA_ENC_TIMESTAMP, PA_TGS_REQ_TYPE,
    TGS_REP_MSG_TYPE, TGS_REQ_MSG_TYPE,
};
use picky_krb::crypto::{ChecksumSuite, CipherSuite};
use picky_krb::data_types::{
    Authenticator, AuthenticatorInner, Checksum, EncTicketPart, EncryptedData, KerberosStringAsn1, KerberosTime,
    PaData, PaEncTsEnc, PrincipalName, Realm, Ticket,
};
use picky_krb::messages::{ApReq, ApReqInner, AsRep, AsReq, EncKdcRepPart, KdcRep, KdcReq, KdcReqBody, TgsRep, TgsReq};
use sspi::generator::NetworkRequest;
use sspi::network_client::NetworkProtocol;
use zeroize::Zeroizing;

use super::decoding::{decode, decrypt_rep_part, system_time};
use super::exchange::{KdcConversation, KdcReply, KdcTurn};
use super::keytab::{service_keys, KeytabEntry};
use super::messages::{error_codes, kdc_message_type, krb_error, KdcMessage, KrbErrorInfo};
use super::pac;
use crate::proto::guard::contain_panic;

/// Ticket and KDC option bits, counted from the left (bit 0 is the most significant).
const FORWARDABLE: usize = 1;
const CANONICALIZE: usize = 15;
const CNAME_IN_ADDL_TKT: usize = 14;
const KERBEROS_VERSION: u8 = 5;
/// What the relay asks for; the KDC caps it at the domain's policy and at the evidence's end.
const LIFETIME: Duration = Duration::from_secs(10 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S4uError {
    #[error(
        "the domain does not allow {account} to delegate to {spn} (Kerberos error {code}): add {spn} to the \
         account's msDS-AllowedToDelegateTo (Delegation tab: \"Trust this user for delegation to specified services \
         only\", \"Use Kerberos only\")"
    )]
    NotAllowedToDelegate { account: String, spn: String, code: i64 },
    #[error(
        "{user} cannot be delegated: the account is marked \"sensitive and cannot be delegated\" or is in Protected \
         Users; use CredSSP for it, or clear that setting"
    )]
    UserNotDelegable { user: String },
    #[error(
        "the ticket {user} logged on with is not forwardable, so the domain will not delegate it: the client asked \
         for a non-forwardable ticket; log on again with a forwardable one (kinit -f, or forwardable = true in \
         krb5.conf)"
    )]
    EvidenceNotForwardable { user: String },
    #[error(
        "clock skew: the clocks of the relay and of {realm}'s KDC differ by more than the domain allows; \
         synchronise the bastion's clock (NTP)"
    )]
    ClockSkew { realm: String },
    #[error("{realm} has no service principal {spn}: register it on the target's account (setspn -S {spn} <account>)")]
    UnknownSpn { spn: String, realm: String },
    #[error(
        "{realm} refused the relay's key for {account} (pre-authentication failed): the keytab is out of date; \
         export it again (samba-tool domain exportkeytab / ktpass)"
    )]
    RelayKeyRefused { account: String, realm: String },
    #[error("{realm} does not know the relay's account {account}")]
    UnknownRelayAccount { account: String, realm: String },
    #[error("{realm} refused the request for {what}: Kerberos error {code}{text}")]
    Refused {
        what: String,
        realm: String,
        code: i64,
        text: String,
    },
    #[error("the KDC's reply for {what} is not usable: {reason}")]
    BadReply { what: String, reason: &'static str },
    #[error("cannot build the request: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> S4uError {
    S4uError::Build(e.to_string())
}

/// The relay's own account (`svc-relay@LAB.TEST`) and its long-term key, from the keytab.
pub struct RelayAccount {
    pub name: Vec<String>,
    pub realm: String,
    pub suite: CipherSuite,
    pub key: Zeroizing<Vec<u8>>,
}

impl RelayAccount {
    /// The account principal among a keytab's entries (one name component, of `realm`:
    /// `svc-relay@LAB.TEST`, not an SPN), with its best AES key.
    pub fn from_keytab(entries: &[KeytabEntry], realm: &str) -> Option<RelayAccount> {
        let (keys, _) = service_keys(entries);
        keys.into_iter()
            .find(|key| key.principal.components.len() == 1 && key.principal.realm.eq_ignore_ascii_case(realm))
            .and_then(|key| {
                Some(RelayAccount {
                    name: key.principal.components.clone(),
                    realm: key.principal.realm.clone(),
                    suite: CipherSuite::try_from(usize::try_from(key.entry.enctype).ok()?).ok()?,
                    key: key.entry.key.clone(),
                })
            })
    }

    pub fn display(&self) -> String {
        format!("{}@{}", self.name.join("/"), self.realm)
    }
}

impl std::fmt::Debug for RelayAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAccount")
            .field("principal", &self.display())
            .finish()
    }
}

/// A ticket and its session key, as a KDC issued it.
#[derive(Clone)]
pub struct IssuedTicket {
    pub ticket: Ticket,
    pub suite: CipherSuite,
    pub session_key: Zeroizing<Vec<u8>>,
    /// Whom it names, `alice@LAB.TEST`, and for which service, `HTTP/web01.lab.test@LAB.TEST`.
    pub client: String,
    pub service: String,
    pub start: Option<SystemTime>,
    pub end: SystemTime,
}

impl std::fmt::Debug for IssuedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTicket")
            .field("client", &self.client)
            .field("service", &self.service)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// The caller's service ticket to the relay, read from the AP-REQ it logged on with:
/// the evidence S4U2Proxy hands the KDC.
#[derive(Clone)]
pub struct Evidence {
    pub ticket: Ticket,
    pub client: String,
    pub forwardable: bool,
    /// The PAC says the account is sensitive and cannot be delegated: why the KDC made
    /// the ticket non-forwardable, when it is.
    pub not_delegated: bool,
    pub end: SystemTime,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("client", &self.client)
            .field("forwardable", &self.forwardable)
            .field("not_delegated", &self.not_delegated)
            .finish_non_exhaustive()
    }
}

impl Evidence {
    /// The evidence from a ticket and its decrypted part.
    pub fn new(ticket: Ticket, part: &EncTicketPart) -> Option<Evidence> {
        Some(Evidence {
            ticket,
            client: format!("{}@{}", components(&part.0.cname.0).join("/"), part.0.crealm.0 .0),
            forwardable: part.0.flags.0.is_set(FORWARDABLE),
            not_delegated: pac_not_delegated(part),
            end: system_time(&part.0.endtime.0)?,
        })
    }
}

/// USER_NOT_DELEGATED in the PAC's UserAccountControl.
const USER_NOT_DELEGATED: u32 = 0x4000;

/// Whether the ticket's PAC marks its client "sensitive and cannot be delegated" (a
/// ticket without a PAC, as from MIT's KDC, does not).
fn pac_not_delegated(part: &EncTicketPart) -> bool {
    part.0
        .authorization_data
        .0
        .as_ref()
        .and_then(|data| pac::find_pac(&data.0))
        .and_then(|found| pac::user_account_control(&found).ok())
        .is_some_and(|uac| uac & USER_NOT_DELEGATED != 0)
}

pub(crate) fn components(name: &PrincipalName) -> Vec<String> {
    name.name_string.0 .0.iter().map(|part| part.to_string()).collect()
}

fn kerberos_string(s: &str) -> Result<KerberosStringAsn1, S4uError> {
    Ok(KerberosStringAsn1::from(
        IA5String::from_string(s.to_string()).map_err(build_err)?,
    ))
}

pub(crate) fn principal(name_type: u8, parts: &[&str]) -> Result<PrincipalName, S4uError> {
    Ok(PrincipalName {
        name_type: ExplicitContextTag0::from(IntegerAsn1::from(vec![name_type])),
        name_string: ExplicitContextTag1::from(Asn1SequenceOf::from(
            parts
                .iter()
                .map(|p| kerberos_string(p))
                .collect::<Result<Vec<_>, _>>()?,
        )),
    })
}

pub(crate) fn kerberos_time(at: SystemTime) -> KerberosTime {
    GeneralizedTimeAsn1::from(GeneralizedTime::from(time::OffsetDateTime::from(at)))
}

pub(crate) fn unsigned(value: u32) -> IntegerAsn1 {
    IntegerAsn1::from_bytes_be_unsigned(value.to_be_bytes().to_vec())
}

pub(crate) fn micros(at: SystemTime) -> u32 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros())
}

pub(crate) fn flags(bits: &[usize]) -> BitStringAsn1 {
    let mut flags = BitString::with_len(32);
    for bit in bits {
        flags.set(*bit, true);
    }
    BitStringAsn1::from(flags)
}

fn etype(suite: &CipherSuite) -> IntegerAsn1 {
    IntegerAsn1::from(vec![u8::from(suite)])
}

fn encrypted(suite: &CipherSuite, key: &[u8], usage: i32, plain: &[u8]) -> Result<EncryptedData, S4uError> {
    let cipher = suite.cipher().encrypt(key, usage, plain).map_err(build_err)?;
    Ok(EncryptedData {
        etype: ExplicitContextTag0::from(etype(suite)),
        kvno: Optional::from(None),
        cipher: ExplicitContextTag2::from(OctetStringAsn1::from(cipher)),
    })
}

fn suite_of(etype: &IntegerAsn1) -> Option<CipherSuite> {
    let value = etype.as_unsigned_bytes_be();
    let value = usize::from(*value.last()?);
    CipherSuite::try_from(value).ok()
}

fn checksum_suite(suite: &CipherSuite) -> Result<ChecksumSuite, S4uError> {
    match suite {
        CipherSuite::Aes256CtsHmacSha196 => Ok(ChecksumSuite::HmacSha196Aes256),
        CipherSuite::Aes128CtsHmacSha196 => Ok(ChecksumSuite::HmacSha196Aes128),
        CipherSuite::Des3CbcSha1Kd => Ok(ChecksumSuite::HmacSha1Des3Kd),
    }
}

/// A fresh KDC-REQ nonce: positive as a signed Int32, as KDCs read it.
pub fn nonce() -> u32 {
    rand::random::<u32>() & 0x7fff_ffff
}

/// The AS-REQ for the relay's TGT, pre-authenticated with its key (a KDC that asks for
/// pre-authentication would only cost a round trip).
pub fn tgt_request(account: &RelayAccount, now: SystemTime, nonce: u32) -> Result<Vec<u8>, S4uError> {
    let stamp = PaEncTsEnc {
        patimestamp: ExplicitContextTag0::from(kerberos_time(now)),
        pausec: Optional::from(Some(ExplicitContextTag1::from(unsigned(micros(now))))),
    };
    let stamp = picky_asn1_der::to_vec(&stamp).map_err(build_err)?;
    let stamp = encrypted(&account.suite, &account.key, AS_REQ_TIMESTAMP, &stamp)?;
    let padata = PaData {
        padata_type: ExplicitContextTag1::from(IntegerAsn1::from(PA_ENC_TIMESTAMP.to_vec())),
        padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(
            picky_asn1_der::to_vec(&stamp).map_err(build_err)?,
        )),
    };
    let name: Vec<&str> = account.name.iter().map(String::as_str).collect();
    let body = KdcReqBody {
        kdc_options: ExplicitContextTag0::from(flags(&[FORWARDABLE, CANONICALIZE])),
        cname: Optional::from(Some(ExplicitContextTag1::from(principal(NT_PRINCIPAL, &name)?))),
        realm: ExplicitContextTag2::from(Realm::from(
            IA5String::from_string(account.realm.clone()).map_err(build_err)?,
        )),
        sname: Optional::from(Some(ExplicitContextTag3::from(principal(
            NT_SRV_INST,
            &["krbtgt", &account.realm],
        )?))),
        from: Optional::from(None),
        till: ExplicitContextTag5::from(kerberos_time(now + LIFETIME)),
        rtime: Optional::from(None),
        nonce: ExplicitContextTag7::from(unsigned(nonce)),
        etype: ExplicitContextTag8::from(Asn1SequenceOf::from(vec![etype(&account.suite)])),
        addresses: Optional::from(None),
        enc_authorization_data: Optional::from(None),
        additional_tickets: Optional::from(None),
    };
    let request = AsReq::from(KdcReq {
        pvno: ExplicitContextTag1::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
        msg_type: ExplicitContextTag2::from(IntegerAsn1::from(vec![AS_REQ_MSG_TYPE])),
        padata: Optional::from(Some(ExplicitContextTag3::from(Asn1SequenceOf::from(vec![padata])))),
        req_body: ExplicitContextTag4::from(body),
    });
    picky_asn1_der::to_vec(&request).map_err(build_err)
}

/// Reads the KDC's answer to [`tgt_request`]: the relay's TGT, or why not.
pub fn read_tgt_reply(account: &RelayAccount, reply: &[u8], nonce: u32) -> Result<IssuedTicket, S4uError> {
    let what = format!("the relay's ticket-granting ticket ({})", account.display());
    let bad = |reason| S4uError::BadReply {
        what: what.clone(),
        reason,
    };
    match kdc_message_type(reply) {
        Some(KdcMessage::AsRep) => {}
        Some(KdcMessage::Error) => {
            let error = krb_error(reply).ok_or_else(|| bad("a malformed KRB-ERROR"))?;
            return Err(tgt_refusal(account, &what, error));
        }
        _ => return Err(bad("not an AS-REP")),
    }
    let rep: AsRep = decode(reply).ok_or_else(|| bad("a malformed AS-REP"))?;
    if rep.0.msg_type.0.as_unsigned_bytes_be() != [AS_REP_MSG_TYPE] {
        return Err(bad("not an AS-REP"));
    }
    let part = open_reply(&rep.0, &account.suite, &account.key, AS_REP_ENC)
        .ok_or_else(|| bad("its encrypted part does not open with the relay's key"))?;
    issued(&rep.0, &part, nonce).map_err(bad)
}

fn tgt_refusal(account: &RelayAccount, what: &str, error: KrbErrorInfo) -> S4uError {
    let (account, realm) = (account.display(), account.realm.clone());
    match error.code {
        error_codes::KDC_ERR_PREAUTH_FAILED | error_codes::KRB_AP_ERR_BAD_INTEGRITY => {
            S4uError::RelayKeyRefused { account, realm }
        }
        error_codes::KDC_ERR_C_PRINCIPAL_UNKNOWN => S4uError::UnknownRelayAccount { account, realm },
        error_codes::KRB_AP_ERR_SKEW => S4uError::ClockSkew { realm },
        code => S4uError::Refused {
            what: what.to_string(),
            realm,
            code,
            text: error.text.map(|t| format!(" ({t})")).unwrap_or_default(),
        },
    }
}

fn open_reply(rep: &KdcRep, key_suite: &CipherSuite, key: &[u8], usage: i32) -> Option<EncKdcRepPart> {
    let enc = &rep.enc_part.0;
    if suite_of(&enc.etype.0)? != *key_suite {
        return None;
    }
    decrypt_rep_part(key_suite, key, usage, &enc.cipher.0 .0)
}

fn issued(rep: &KdcRep, part: &EncKdcRepPart, nonce: u32) -> Result<IssuedTicket, &'static str> {
    if part.nonce.0.as_unsigned_bytes_be() != unsigned(nonce).as_unsigned_bytes_be() {
        return Err("its nonce is not the request's (a replayed or forged answer)");
    }
    let suite = suite_of(&part.key.0.key_type.0).ok_or("its session key has an encryption type the relay lacks")?;
    Ok(IssuedTicket {
        ticket: rep.ticket.0.clone(),
        suite,
        session_key: Zeroizing::new(part.key.0.key_value.0 .0.clone()),
        client: format!("{}@{}", components(&rep.cname.0).join("/"), rep.crealm.0 .0),
        service: format!("{}@{}", components(&part.sname.0).join("/"), part.srealm.0 .0),
        start: part.start_time.0.as_ref().and_then(|t| system_time(&t.0)),
        end: system_time(&part.end_time.0).ok_or("its end time is not a time")?,
    })
}

/// The S4U2Proxy TGS-REQ: with the relay's `tgt`, a ticket to `spn` for the client of
/// `evidence`. The evidence must be forwardable (checked here: the KDC's refusal would
/// say less).
pub fn proxy_request(
    account: &RelayAccount,
    tgt: &IssuedTicket,
    evidence: &Evidence,
    spn: &str,
    now: SystemTime,
    nonce: u32,
) -> Result<Vec<u8>, S4uError> {
    if evidence.not_delegated {
        return Err(S4uError::UserNotDelegable {
            user: evidence.client.clone(),
        });
    }
    if !evidence.forwardable {
        return Err(S4uError::EvidenceNotForwardable {
            user: evidence.client.clone(),
        });
    }
    let spn_parts: Vec<&str> = spn.split('/').collect();
    let body = KdcReqBody {
        kdc_options: ExplicitContextTag0::from(flags(&[FORWARDABLE, CNAME_IN_ADDL_TKT, CANONICALIZE])),
        cname: Optional::from(None),
        realm: ExplicitContextTag2::from(Realm::from(
            IA5String::from_string(account.realm.clone()).map_err(build_err)?,
        )),
        sname: Optional::from(Some(ExplicitContextTag3::from(principal(NT_SRV_INST, &spn_parts)?))),
        from: Optional::from(None),
        till: ExplicitContextTag5::from(kerberos_time(now + LIFETIME)),
        rtime: Optional::from(None),
        nonce: ExplicitContextTag7::from(unsigned(nonce)),
        etype: ExplicitContextTag8::from(Asn1SequenceOf::from(vec![
            etype(&CipherSuite::Aes256CtsHmacSha196),
            etype(&CipherSuite::Aes128CtsHmacSha196),
        ])),
        addresses: Optional::from(None),
        enc_authorization_data: Optional::from(None),
        additional_tickets: Optional::from(Some(ExplicitContextTag11::from(Asn1SequenceOf::from(vec![evidence
            .ticket
            .clone()])))),
    };
    // Heimdal (Samba) takes only a keyed checksum over the body.
    let body_der = picky_asn1_der::to_vec(&body).map_err(build_err)?;
    let cksum_suite = checksum_suite(&tgt.suite)?;
    let cksum = cksum_suite
        .hasher()
        .checksum(&tgt.session_key, TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR_CKSUM, &body_der)
        .map_err(build_err)?;
    let name: Vec<&str> = account.name.iter().map(String::as_str).collect();
    let authenticator = Authenticator::from(AuthenticatorInner {
        authenticator_vno: ExplicitContextTag0::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
        crealm: ExplicitContextTag1::from(Realm::from(
            IA5String::from_string(account.realm.clone()).map_err(build_err)?,
        )),
        cname: ExplicitContextTag2::from(principal(NT_PRINCIPAL, &name)?),
        cksum: Optional::from(Some(ExplicitContextTag3::from(Checksum {
            cksumtype: ExplicitContextTag0::from(unsigned(u32::from(&cksum_suite))),
            checksum: ExplicitContextTag1::from(OctetStringAsn1::from(cksum)),
        }))),
        cusec: ExplicitContextTag4::from(unsigned(micros(now))),
        ctime: ExplicitContextTag5::from(kerberos_time(now)),
        subkey: Optional::from(None),
        seq_number: Optional::from(None),
        authorization_data: Optional::from(None),
    });
    let authenticator = picky_asn1_der::to_vec(&authenticator).map_err(build_err)?;
    let ap_req = ApReq::from(ApReqInner {
        pvno: ExplicitContextTag0::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
        msg_type: ExplicitContextTag1::from(IntegerAsn1::from(vec![AP_REQ_MSG_TYPE])),
        ap_options: ExplicitContextTag2::from(flags(&[])),
        ticket: ExplicitContextTag3::from(tgt.ticket.clone()),
        authenticator: ExplicitContextTag4::from(encrypted(
            &tgt.suite,
            &tgt.session_key,
            TGS_REQ_PA_DATA_AP_REQ_AUTHENTICATOR,
            &authenticator,
        )?),
    });
    let padata = PaData {
        padata_type: ExplicitContextTag1::from(IntegerAsn1::from(PA_TGS_REQ_TYPE.to_vec())),
        padata_data: ExplicitContextTag2::from(OctetStringAsn1::from(
            picky_asn1_der::to_vec(&ap_req).map_err(build_err)?,
        )),
    };
    let request = TgsReq::from(KdcReq {
        pvno: ExplicitContextTag1::from(IntegerAsn1::from(vec![KERBEROS_VERSION])),
        msg_type: ExplicitContextTag2::from(IntegerAsn1::from(vec![TGS_REQ_MSG_TYPE])),
        padata: Optional::from(Some(ExplicitContextTag3::from(Asn1SequenceOf::from(vec![padata])))),
        req_body: ExplicitContextTag4::from(body),
    });
    picky_asn1_der::to_vec(&request).map_err(build_err)
}

/// Reads the KDC's answer to [`proxy_request`]: a ticket to `spn` in the evidence's
/// client's name, or why the domain refused.
pub fn read_proxy_reply(
    account: &RelayAccount,
    tgt: &IssuedTicket,
    evidence: &Evidence,
    spn: &str,
    reply: &[u8],
    nonce: u32,
) -> Result<IssuedTicket, S4uError> {
    let what = format!("a ticket to {spn} for {}", evidence.client);
    let bad = |reason| S4uError::BadReply {
        what: what.clone(),
        reason,
    };
    match kdc_message_type(reply) {
        Some(KdcMessage::TgsRep) => {}
        Some(KdcMessage::Error) => {
            let error = krb_error(reply).ok_or_else(|| bad("a malformed KRB-ERROR"))?;
            return Err(proxy_refusal(account, spn, &what, error));
        }
        _ => return Err(bad("not a TGS-REP")),
    }
    let rep: TgsRep = decode(reply).ok_or_else(|| bad("a malformed TGS-REP"))?;
    if rep.0.msg_type.0.as_unsigned_bytes_be() != [TGS_REP_MSG_TYPE] {
        return Err(bad("not a TGS-REP"));
    }
    let part = open_reply(&rep.0, &tgt.suite, &tgt.session_key, TGS_REP_ENC_SESSION_KEY)
        .ok_or_else(|| bad("its encrypted part does not open with the TGT's session key"))?;
    let issued = issued(&rep.0, &part, nonce).map_err(bad)?;
    // A ticket in any other name than the caller's is not what was asked for.
    if !issued.client.eq_ignore_ascii_case(&evidence.client) {
        return Err(bad("the ticket names another client than the evidence"));
    }
    // Nor is a ticket to another service: the relay would present it to this target.
    let name_of = |p: &str| p.split_once('@').map_or(p, |(name, _)| name).to_ascii_lowercase();
    if name_of(&issued.service) != name_of(spn) {
        return Err(bad("the ticket is for another service than the one asked for"));
    }
    Ok(issued)
}

fn proxy_refusal(account: &RelayAccount, spn: &str, what: &str, error: KrbErrorInfo) -> S4uError {
    let realm = account.realm.clone();
    match error.code {
        // Heimdal (Samba) and Windows refuse a service the account may not delegate to
        // with BADOPTION, or POLICY.
        error_codes::KDC_ERR_BADOPTION | error_codes::KDC_ERR_POLICY => S4uError::NotAllowedToDelegate {
            account: account.display(),
            spn: spn.to_string(),
            code: error.code,
        },
        error_codes::KDC_ERR_S_PRINCIPAL_UNKNOWN => S4uError::UnknownSpn {
            spn: spn.to_string(),
            realm,
        },
        error_codes::KRB_AP_ERR_SKEW => S4uError::ClockSkew { realm },
        code => S4uError::Refused {
            what: what.to_string(),
            realm,
            code,
            text: error.text.map(|t| format!(" ({t})")).unwrap_or_default(),
        },
    }
}

/// Whom a KDC request goes to: the transport picks the realm's KDCs, the URL only
/// carries the realm.
fn kdc_request(realm: &str, message: &[u8]) -> Result<NetworkRequest, S4uError> {
    let url = url::Url::parse(&format!("tcp://{realm}:88")).map_err(build_err)?;
    let mut data = Vec::with_capacity(message.len() + 4);
    data.extend_from_slice(&u32::try_from(message.len()).map_err(build_err)?.to_be_bytes());
    data.extend_from_slice(message);
    Ok(NetworkRequest {
        protocol: NetworkProtocol::Tcp,
        url,
        data,
    })
}

/// The relay's TGT as a [`KdcConversation`].
pub struct TgtExchange<'a> {
    account: &'a RelayAccount,
    nonce: u32,
    clock: fn() -> SystemTime,
}

impl<'a> TgtExchange<'a> {
    pub fn new(account: &'a RelayAccount) -> TgtExchange<'a> {
        TgtExchange {
            account,
            nonce: nonce(),
            clock: SystemTime::now,
        }
    }
}

impl KdcConversation for TgtExchange<'_> {
    type Outcome = Result<IssuedTicket, S4uError>;

    fn start(&mut self) -> KdcTurn<Self::Outcome> {
        ask(
            &self.account.realm,
            tgt_request(self.account, (self.clock)(), self.nonce),
        )
    }

    fn answer(&mut self, reply: KdcReply) -> KdcTurn<Self::Outcome> {
        settle(
            || "the relay's ticket-granting ticket".into(),
            || read_tgt_reply(self.account, reply.message(), self.nonce),
        )
    }
}

/// One S4U2Proxy exchange as a [`KdcConversation`].
pub struct ProxyExchange<'a> {
    account: &'a RelayAccount,
    tgt: &'a IssuedTicket,
    evidence: &'a Evidence,
    spn: &'a str,
    nonce: u32,
    clock: fn() -> SystemTime,
}

impl<'a> ProxyExchange<'a> {
    pub fn new(
        account: &'a RelayAccount,
        tgt: &'a IssuedTicket,
        evidence: &'a Evidence,
        spn: &'a str,
    ) -> ProxyExchange<'a> {
        ProxyExchange {
            account,
            tgt,
            evidence,
            spn,
            nonce: nonce(),
            clock: SystemTime::now,
        }
    }
}

impl KdcConversation for ProxyExchange<'_> {
    type Outcome = Result<IssuedTicket, S4uError>;

    fn start(&mut self) -> KdcTurn<Self::Outcome> {
        let request = proxy_request(
            self.account,
            self.tgt,
            self.evidence,
            self.spn,
            (self.clock)(),
            self.nonce,
        );
        ask(&self.account.realm, request)
    }

    fn answer(&mut self, reply: KdcReply) -> KdcTurn<Self::Outcome> {
        settle(
            || format!("a ticket to {}", self.spn),
            || {
                read_proxy_reply(
                    self.account,
                    self.tgt,
                    self.evidence,
                    self.spn,
                    reply.message(),
                    self.nonce,
                )
            },
        )
    }
}

/// An exchange's first turn: ask the realm's KDC `message`, or end with why it could
/// not be built.
fn ask(realm: &str, message: Result<Vec<u8>, S4uError>) -> KdcTurn<Result<IssuedTicket, S4uError>> {
    match message.and_then(|message| kdc_request(realm, &message)) {
        Ok(request) => KdcTurn::Ask(request),
        Err(error) => KdcTurn::Done(Err(error)),
    }
}

/// An exchange's last turn: the reply as `read` reads it; a panic inside the decoding
/// is a reply that could not be decoded (of `what`).
fn settle(
    what: impl FnOnce() -> String,
    read: impl FnOnce() -> Result<IssuedTicket, S4uError>,
) -> KdcTurn<Result<IssuedTicket, S4uError>> {
    KdcTurn::Done(contain_panic(read).unwrap_or_else(|_| {
        Err(S4uError::BadReply {
            what: what(),
            reason: "the reply could not be decoded",
        })
    }))
}

#[cfg(test)]
mod tests;
