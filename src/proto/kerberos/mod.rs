//! Sans-IO Kerberos pieces the relay needs around sspi: what a KDC message is.

pub mod messages;
