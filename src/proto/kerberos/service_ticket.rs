//! Who a client's service ticket names, read by the relay itself.
//!
//! sspi 0.23.1's acceptor reports only the first component of the ticket's
//! client name: a ticket for `bob/eve@LAB.TEST` (a principal eve controls)
//! passes as `bob`. The relay decrypts the ticket of the AP-REQ with its own
//! service key and takes the whole name and realm, to compare with the
//! delegated identity; and, from an Active Directory ticket, the PAC's group SIDs.

use picky_krb::constants::key_usages::TICKET_REP;
use picky_krb::crypto::CipherSuite;
use picky_krb::data_types::{EncTicketPart, PrincipalName, Ticket};
use picky_krb::gss_api::{ApplicationTag0, GssApiNegInit, KrbMessage};
use picky_krb::messages::ApReq;
use zeroize::Zeroizing;

use super::pac;
use super::s4u::Evidence;
use crate::identity::Sid;
use crate::proto::guard::contain_panic;

/// The client principal of a service ticket: every component, and its realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClient {
    pub name: Vec<String>,
    pub realm: String,
    /// The group SIDs of the ticket's PAC; `None` without a readable PAC (an MIT KDC
    /// issues none). The KDC sealed them in the part only it and this service can
    /// decrypt, so they are as trustworthy as the name.
    pub pac_groups: Option<Vec<Sid>>,
}

impl TicketClient {
    /// `bob/eve@LAB.TEST`.
    pub fn display(&self) -> String {
        format!("{}@{}", self.name.join("/"), self.realm)
    }
}

/// A service key: the service's name components (`["HTTP", "relay.lab.test"]`) and the key.
pub type ServiceKeyRef<'a> = (&'a [String], &'a [u8]);

/// The client of the ticket in `token` (SPNEGO carrying an AP-REQ, or a bare
/// GSS krb5 AP-REQ), decrypted with the key of the service it was issued for.
/// `None` when the token holds no AP-REQ or no key decrypts its ticket.
pub fn ticket_client(token: &[u8], keys: &[ServiceKeyRef<'_>]) -> Option<TicketClient> {
    contain_panic(|| read(token, keys)).ok().flatten()
}

fn read(token: &[u8], keys: &[ServiceKeyRef<'_>]) -> Option<TicketClient> {
    let (_, part) = open(&ap_req(token)?.0.ticket.0, keys)?;
    Some(client_of(&part))
}

/// Whom a decrypted ticket names, with its PAC's groups.
pub(crate) fn client_of(part: &EncTicketPart) -> TicketClient {
    let pac_groups = part
        .0
        .authorization_data
        .0
        .as_ref()
        .and_then(|data| pac::find_pac(&data.0))
        .and_then(|found| pac::group_sids(&found).ok());
    TicketClient {
        name: components(&part.0.cname.0),
        realm: part.0.crealm.0.to_string(),
        pac_groups,
    }
}

/// The caller's service ticket in `token` (as [`ticket_client`] reads it) as the
/// evidence for constrained delegation: the ticket as it came, and what it says.
pub fn evidence(token: &[u8], keys: &[ServiceKeyRef<'_>]) -> Option<Evidence> {
    contain_panic(|| {
        let ticket = ap_req(token)?.0.ticket.0;
        let (_, part) = open(&ticket, keys)?;
        Evidence::new(ticket, &part)
    })
    .ok()
    .flatten()
}

/// Decrypts `ticket` with the key of the service it was issued for.
pub(crate) fn open(ticket: &Ticket, keys: &[ServiceKeyRef<'_>]) -> Option<(Vec<String>, EncTicketPart)> {
    let service = components(&ticket.0.sname.0);
    let encrypted = &ticket.0.enc_part.0;
    let etype = *encrypted.etype.0 .0.first()?;
    let cipher = CipherSuite::try_from(usize::from(etype)).ok()?.cipher();
    let plain = keys
        .iter()
        .filter(|(components, _)| *components == service.as_slice())
        .find_map(|(_, key)| cipher.decrypt(key, TICKET_REP, &encrypted.cipher.0 .0).ok())
        .map(Zeroizing::new)?;
    let part: EncTicketPart = picky_asn1_der::from_bytes(&plain).ok()?;
    Some((service, part))
}

/// SPNEGO's mechanism OID, as it follows the GSS-API token's header.
const SPNEGO_OID: [u8; 8] = [0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];

pub(crate) fn ap_req(token: &[u8]) -> Option<ApReq> {
    // Which framing decides the parser: picky's SPNEGO decoder panics on a bare krb5 token.
    if gss_body(token)?.starts_with(&SPNEGO_OID) {
        let init = picky_asn1_der::from_bytes::<ApplicationTag0<GssApiNegInit>>(token).ok()?;
        let mech_token = init.0.neg_token_init.0.mech_token.0?;
        return KrbMessage::<ApReq>::decode_application_krb_message(&mech_token.0 .0)
            .ok()
            .map(|m| m.0.krb_msg);
    }
    KrbMessage::<ApReq>::decode_application_krb_message(token)
        .ok()
        .map(|m| m.0.krb_msg)
}

/// The contents of a GSS-API InitialContextToken (`0x60`, a DER length, then the OID).
fn gss_body(token: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = token.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != 0x60 {
        return None;
    }
    let (length, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
            (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
        }
        _ => return None,
    };
    rest.get(..length)
}

fn components(name: &PrincipalName) -> Vec<String> {
    name.name_string.0 .0.iter().map(|part| part.to_string()).collect()
}

#[cfg(test)]
mod tests;
