//! The relay's client to WinRM hosts: connections from the relay to target hosts.
//!
//! One [`TargetConnection`] per (inbound session, target): a kept-alive
//! HTTP/1.1 connection, over TLS for `https` targets, authenticated once with
//! the caller's delegated credentials, then carrying WS-Man messages sealed
//! as the transport requires. It is never shared across sessions, so never
//! across users.
//!
//! A target's name is looked up once ([`lookup_addresses`]); the policy checks those
//! addresses and the connection goes to exactly them, never to a second lookup's answer.
//! TLS uses the target's client configuration built at load (session cache included),
//! with the host name for SNI and certificate names, as for `Host` and the SPN.
//!
//! | `auth` | wire | authentication | bodies |
//! |---|---|---|---|
//! | negotiate, ntlm | HTTP | SPNEGO/NTLM, once | SPNEGO session encryption |
//! | https-negotiate, https-ntlm | HTTPS | SPNEGO/NTLM with channel binding, once | plain (TLS protects them) |
//! | basic | HTTPS | `Basic` on every request | plain |
//! | credssp | HTTP or HTTPS | CredSSP, delegating the caller's credentials onward | CredSSP session encryption on HTTP, plain on HTTPS |
//! | kerberos | HTTP | SPNEGO/Kerberos, once | Kerberos wrap tokens |
//! | https-kerberos | HTTPS | SPNEGO/Kerberos with channel binding, once | plain |
//!
//! `negotiate` and `https-negotiate` use Kerberos (as `kerberos` and `https-kerberos`)
//! when `[kerberos]` is configured, the target has an SPN and the caller's account is in
//! the realm; NTLM otherwise, and also when no ticket can be had (no KDC answers, the
//! SPN is unknown), as Windows does. The tickets come from the session's (one AS
//! exchange per session, one TGS exchange per target), see
//! [`crate::proto::kerberos::tickets`]; KDC traffic goes through the realm's
//! [`crate::kerberos::kdc::KdcTransport`].
//!
//! - `connect`: the lookup, TCP to the checked addresses, TLS.
//! - `legs`: authentication, one driver for every mechanism's legs.
//! - `wire`: how bodies travel once authenticated (sealed or plain).
//! - `connection`: the connection and its exchanges; `pool`: a session's connections.
//! - `error`: [`UpstreamError`], the one error type, with whose fault it was.

mod connect;
mod connection;
mod error;
mod legs;
mod pool;
mod wire;

use std::sync::Arc;

pub use connect::lookup_addresses;
pub use connection::{TargetConnection, TargetResponse};
pub use error::{AuthError, BadResponse, HttpError, LookupError, Side, TlsError, UpstreamError, UpstreamErrorKind};
pub use pool::Pool;

use crate::resolve::ResolvedTarget;

/// `name (host:port)` so faults tell the admin which machine failed.
fn describe(target: &ResolvedTarget) -> Arc<str> {
    if target.name.eq_ignore_ascii_case(&target.host) {
        format!("{}:{}", target.host, target.port).into()
    } else {
        format!("{} ({}:{})", target.name, target.host, target.port).into()
    }
}
