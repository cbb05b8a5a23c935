//! Sans-IO Kerberos pieces the relay needs around sspi: the keytab with its
//! service keys, and what a KDC message is.

pub mod keytab;
pub mod messages;
