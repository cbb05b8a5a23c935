//! Sans-IO Kerberos pieces the relay needs around sspi: the keytab with its service
//! keys, what a KDC message is, KDC exchanges as a step without IO, the relay's client
//! towards Kerberos targets with the session's tickets, why a KDC or a target refused,
//! and the group SIDs of an Active Directory ticket's PAC.
//! For constrained delegation, on picky-krb: the plain Kerberos acceptor that keeps the
//! caller's ticket (`acceptor`), the relay's TGT and S4U2Proxy (`s4u`), a client context
//! from the ticket S4U2Proxy gave (`ticket_context`) and Kerberos wrap tokens (`wrap`).

pub mod acceptor;
mod ap_options;
pub mod client;
mod decoding;
pub mod exchange;
#[cfg(test)]
mod fixtures;
pub mod keytab;
pub mod messages;
pub mod pac;
pub mod refusal;
pub mod s4u;
pub mod service_ticket;
pub mod ticket_context;
pub mod tickets;
pub mod wrap;
