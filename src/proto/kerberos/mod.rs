//! Sans-IO Kerberos pieces the relay needs around sspi: the keytab with its service
//! keys, what a KDC message is, the relay's client towards Kerberos targets with the
//! session's tickets, and why a KDC or a target refused.

mod ap_options;
pub mod client;
#[cfg(test)]
mod fixtures;
pub mod keytab;
pub mod messages;
pub mod refusal;
pub mod service_ticket;
pub mod tickets;
