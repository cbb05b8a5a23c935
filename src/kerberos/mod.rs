//! Domain mode: the relay's own Kerberos plumbing around sspi, which does the
//! cryptography but leaves the network to its caller.
//!
//! - [`kdc`]: KDC URLs and the transport that does sspi's KDC exchanges.

pub mod kdc;
