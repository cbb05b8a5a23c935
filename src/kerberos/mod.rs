//! Domain mode: the relay's own Kerberos plumbing around sspi, which does the
//! cryptography but leaves the network to its caller.
//!
//! - [`kdc`]: KDC URLs, the transport, and [`kdc::converse`], the one loop that does the
//!   KDC exchanges a Kerberos step asks for (the target legs' tickets, the probe).
//! - [`keytab`]: the relay's keytab file, read and reduced to service keys.
//! - [`probe`]: one AS exchange for a user (`winrm-relay kerberos test`).

pub mod kdc;
pub mod keytab;
pub mod probe;
