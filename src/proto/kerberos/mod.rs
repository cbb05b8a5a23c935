//! Sans-IO Kerberos pieces the relay needs around sspi: what a KDC message is, the
//! relay's client towards Kerberos targets with the session's tickets, and why a KDC
//! refused.

mod ap_options;
pub mod client;
#[cfg(test)]
mod fixtures;
pub mod messages;
pub mod refusal;
pub mod tickets;
