//! Sans-IO Kerberos pieces the relay needs around sspi: the keytab with its service
//! keys, what a KDC message is, KDC exchanges as a step without IO, the relay's client
//! towards Kerberos targets with the session's tickets, why a KDC or a target refused,
//! and the group SIDs of an Active Directory ticket's PAC.

mod ap_options;
pub mod client;
pub mod exchange;
#[cfg(test)]
mod fixtures;
pub mod keytab;
pub mod messages;
pub mod pac;
pub mod refusal;
pub mod service_ticket;
pub mod tickets;
