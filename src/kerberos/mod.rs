//! Domain mode: the relay's own Kerberos plumbing around sspi, which does the
//! cryptography but leaves the network to its caller.
//!
//! - [`kdc`]: KDC URLs and the transport that does sspi's KDC exchanges.
//! - [`keytab`]: the relay's keytab file, read and reduced to service keys.
//! - [`probe`]: one AS exchange for a user (`winrm-relay kerberos test`).

pub mod kdc;
pub mod keytab;
pub mod probe;
