//! What can go wrong between the relay and a target: one error that names the target
//! once, with a kind that says whose fault it was, whether asking again is safe, and
//! which WS-Man fault the caller gets for it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use hyper::StatusCode;

use crate::kerberos::kdc::KdcError;
use crate::proto::credssp::CredSspError;
use crate::proto::http_auth::HttpAuthError;
use crate::proto::kerberos::client::KerberosError;
use crate::proto::kerberos::refusal::KdcRefusal;
use crate::proto::kerberos::s4u::S4uError;
use crate::proto::kerberos::ticket_context::TicketContextError;
use crate::proto::sealing::{SealProtocol, SealingError};
use crate::proto::wsman::FaultKind;

/// A failure towards one target.
#[derive(Debug)]
pub struct UpstreamError {
    /// The target as [`super::describe`] names it: `name (host:port)`.
    target: Arc<str>,
    kind: UpstreamErrorKind,
}

#[derive(Debug)]
pub enum UpstreamErrorKind {
    /// The target's name has no address.
    Lookup(LookupError),
    Connect(std::io::Error),
    ConnectTimeout {
        secs: u64,
    },
    Tls(TlsError),
    /// The target did not answer in time (authenticating, or a request).
    Timeout {
        secs: u64,
    },
    /// The target answered the caller's credentials with a 401.
    AuthRejected {
        user: String,
    },
    Auth(AuthError),
    /// No service ticket, for want of a KDC.
    KdcUnreachable {
        spn: String,
        source: KdcError,
    },
    Kerberos(KerberosError),
    /// Constrained delegation: the domain would not give the relay a ticket in the
    /// caller's name (or the relay its own TGT).
    Delegation(S4uError),
    /// Constrained delegation: the handshake with the S4U2Proxy ticket failed.
    TicketContext(TicketContextError),
    /// Constrained delegation reaches Kerberos targets only.
    NotKerberosTarget,
    /// The target answered the caller's Kerberos ticket with a 401.
    TicketRefused {
        user: String,
        spn: String,
    },
    Http(HttpError),
    /// An answer to an authentication leg that is neither a challenge nor a success,
    /// with the first line of its text (empty when it had none).
    AuthStatus {
        status: StatusCode,
        text: String,
    },
    BadResponse(BadResponse),
    ResponseTooLarge {
        limit: usize,
    },
}

/// Whose fault a failure is: what an operator looks at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Authenticating as the caller failed: the target or the domain refused their
    /// credentials or ticket.
    Caller,
    /// The target (or its KDC) was unreachable, too slow, or answered wrongly.
    Target,
    /// The relay's own configuration, or a bug in it.
    Relay,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no answer within {secs} s")]
    TimedOut { secs: u64 },
    #[error(transparent)]
    Failed(#[from] std::io::Error),
    #[error("the name has no addresses")]
    NoAddresses,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no TLS configuration for this https target")]
    NoConfig,
    #[error("{host}: {source}")]
    BadName {
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("handshake timed out after {secs} s")]
    HandshakeTimeout { secs: u64 },
    #[error("{}", handshake_failure(.0))]
    Handshake(#[source] std::io::Error),
}

/// Why a handshake failed; the relay's own certificate refusals (a pin mismatch) read
/// as written, without rustls' "other error" wrapping.
fn handshake_failure(error: &std::io::Error) -> String {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::Other(other)) => other.to_string(),
        _ => error.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Negotiate(#[from] HttpAuthError),
    #[error(transparent)]
    CredSsp(#[from] CredSspError),
    #[error("no TLS certificate to bind to")]
    NoCertificate,
    #[error("no Kerberos realm or SPN for this target")]
    NoRealm,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Header(#[from] hyper::header::InvalidHeaderValue),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error("{0}")]
    Body(#[source] Box<dyn Error + Send + Sync>),
}

/// A body the relay cannot seal for the target, or cannot open from it.
#[derive(Debug, thiserror::Error)]
pub enum BadResponse {
    #[error(transparent)]
    Negotiate(#[from] HttpAuthError),
    #[error(transparent)]
    Kerberos(#[from] KerberosError),
    #[error(transparent)]
    DelegatedTicket(#[from] TicketContextError),
    #[error(transparent)]
    CredSsp(#[from] CredSspError),
    #[error(transparent)]
    Body(#[from] SealingError),
    #[error("HTTP {status} with a body of type {content_type} ({protocol:?})")]
    Unexpected {
        status: StatusCode,
        content_type: String,
        protocol: Option<SealProtocol>,
    },
}

impl UpstreamError {
    pub fn new(target: Arc<str>, kind: impl Into<UpstreamErrorKind>) -> UpstreamError {
        UpstreamError {
            target,
            kind: kind.into(),
        }
    }

    pub fn kind(&self) -> &UpstreamErrorKind {
        &self.kind
    }

    /// A short name for the kind of failure (the metrics label).
    pub fn label(&self) -> &'static str {
        use UpstreamErrorKind as K;
        match &self.kind {
            K::Lookup(_) => "lookup",
            K::Connect(_) => "connect",
            K::ConnectTimeout { .. } => "connect_timeout",
            K::Tls(_) => "tls",
            K::Timeout { .. } => "timeout",
            K::AuthRejected { .. } => "auth_rejected",
            K::Auth(_) => "auth",
            K::AuthStatus { .. } => "auth_status",
            K::KdcUnreachable { .. } => "kdc_unreachable",
            K::Kerberos(_) => "kerberos",
            K::Delegation(_) => "delegation",
            K::TicketContext(_) => "kerberos",
            K::NotKerberosTarget => "delegation",
            K::TicketRefused { .. } => "ticket_refused",
            K::Http(_) => "http",
            K::BadResponse(_) => "bad_response",
            K::ResponseTooLarge { .. } => "response_too_large",
        }
    }

    /// Whose fault it is.
    pub fn side(&self) -> Side {
        use KdcRefusal as R;
        use UpstreamErrorKind as K;
        match &self.kind {
            // A refusal of the caller's credentials reads as AuthRejected; a Negotiate or
            // CredSSP error past that is the target's protocol or TLS, so it falls through.
            K::AuthRejected { .. }
            | K::TicketRefused { .. }
            | K::Kerberos(
                KerberosError::NotInRealm { .. }
                | KerberosError::TargetRefused(_)
                | KerberosError::Refused(
                    R::PreauthFailed { .. }
                    | R::UnknownClient { .. }
                    | R::ClientRevoked { .. }
                    | R::PasswordExpired { .. },
                ),
            )
            | K::Delegation(S4uError::UserNotDelegable { .. } | S4uError::EvidenceNotForwardable { .. })
            | K::TicketContext(TicketContextError::TargetRefused(_)) => Side::Caller,
            K::Delegation(_) | K::NotKerberosTarget => Side::Relay,
            // The relay's settings: TLS, the realm, a target's SPN, its clock.
            K::Auth(AuthError::NoRealm)
            | K::Tls(TlsError::NoConfig | TlsError::BadName { .. })
            | K::Kerberos(KerberosError::Refused(R::UnknownSpn { .. } | R::ClockSkew { .. })) => Side::Relay,
            K::KdcUnreachable { source, .. } if !matches!(source, KdcError::Unreachable(_)) => Side::Relay,
            _ => Side::Target,
        }
    }

    /// Whether another attempt is safe: nothing reached the target (its name, the
    /// connection, TLS or the KDC failed before any request). Whether it is worth it
    /// is the caller's call.
    pub fn retry_safe(&self) -> bool {
        use UpstreamErrorKind as K;
        matches!(
            self.kind,
            K::Lookup(_) | K::Connect(_) | K::ConnectTimeout { .. } | K::Tls(_) | K::KdcUnreachable { .. }
        )
    }

    /// The WS-Man fault a caller gets: access denied when authenticating as them
    /// failed, the destination unreachable otherwise.
    pub fn fault_kind(&self) -> FaultKind {
        use UpstreamErrorKind as K;
        match self.kind {
            K::AuthRejected { .. }
            | K::Auth(_)
            | K::Kerberos(_)
            | K::Delegation(_)
            | K::TicketContext(_)
            | K::NotKerberosTarget
            | K::TicketRefused { .. } => FaultKind::AccessDenied,
            _ => FaultKind::DestinationUnreachable,
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use UpstreamErrorKind as K;
        let target = &self.target;
        match &self.kind {
            K::Lookup(e) => write!(f, "cannot look up {target}: {e}"),
            K::Connect(e) => write!(f, "cannot connect to {target}: {e}"),
            K::ConnectTimeout { secs } => write!(f, "connecting to {target} timed out after {secs} s"),
            K::Tls(e) => write!(f, "TLS to {target} failed: {e}"),
            K::Timeout { secs } => write!(f, "timed out: {target} did not answer within {secs} s"),
            K::AuthRejected { user } => {
                write!(f, "{target} rejected the delegated credentials of {user} (HTTP 401)")
            }
            K::Auth(e) => write!(f, "authenticating to {target}: {e}"),
            K::KdcUnreachable { spn, source } => write!(f, "no Kerberos ticket for {target} ({spn}): {source}"),
            K::Kerberos(e) => write!(f, "Kerberos to {target}: {e}"),
            K::Delegation(e) => write!(f, "constrained delegation to {target}: {e}"),
            K::TicketContext(e) => write!(f, "Kerberos to {target} with the delegated ticket: {e}"),
            K::NotKerberosTarget => write!(
                f,
                "{target} is not a Kerberos target: a caller who logged on with Kerberos reaches targets by \
                 constrained delegation, which needs the target's auth to be kerberos, https-kerberos or negotiate \
                 in the relay's realm"
            ),
            K::TicketRefused { user, spn } => write!(
                f,
                "{target} refused the Kerberos ticket of {user} for {spn} (HTTP 401): the target's key for {spn} is \
                 not the domain's (its keytab is out of date, or the SPN belongs to another account)"
            ),
            K::Http(e) => write!(f, "talking to {target}: {e}"),
            K::AuthStatus { status, text } if text.is_empty() => {
                write!(f, "talking to {target}: unexpected HTTP {status} during authentication")
            }
            K::AuthStatus { status, text } => {
                write!(
                    f,
                    "talking to {target}: unexpected HTTP {status} during authentication: {text}"
                )
            }
            K::BadResponse(e) => write!(f, "{target} sent a response the relay cannot decrypt: {e}"),
            K::ResponseTooLarge { limit } => write!(
                f,
                "{target} sent a response body over {limit} bytes, more than the request's MaxEnvelopeSize \
                 (bounded by listen.max_envelope_size) allows"
            ),
        }
    }
}

impl Error for UpstreamError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        use UpstreamErrorKind as K;
        match &self.kind {
            K::Lookup(e) => Some(e),
            K::Connect(e) => Some(e),
            K::Tls(e) => Some(e),
            K::Auth(e) => Some(e),
            K::KdcUnreachable { source, .. } => Some(source),
            K::Kerberos(e) => Some(e),
            K::Delegation(e) => Some(e),
            K::TicketContext(e) => Some(e),
            K::Http(e) => Some(e),
            K::BadResponse(e) => Some(e),
            K::ConnectTimeout { .. }
            | K::Timeout { .. }
            | K::AuthRejected { .. }
            | K::TicketRefused { .. }
            | K::NotKerberosTarget
            | K::AuthStatus { .. }
            | K::ResponseTooLarge { .. } => None,
        }
    }
}

macro_rules! kind_from {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for UpstreamErrorKind {
            fn from(error: $source) -> Self {
                UpstreamErrorKind::$variant(error.into())
            }
        })*
    };
}

kind_from! {
    LookupError => Lookup,
    TlsError => Tls,
    AuthError => Auth,
    KerberosError => Kerberos,
    S4uError => Delegation,
    TicketContextError => TicketContext,
    HttpError => Http,
    hyper::Error => Http,
    BadResponse => BadResponse,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: impl Into<UpstreamErrorKind>) -> UpstreamError {
        UpstreamError::new("web01 (10.0.0.5:5985)".into(), kind)
    }

    #[test]
    fn the_target_is_named_once_and_the_messages_read_as_before() {
        assert_eq!(
            error(UpstreamErrorKind::AuthStatus {
                status: StatusCode::SERVICE_UNAVAILABLE,
                text: "LAB\\alice already has 25 sessions".into(),
            })
            .to_string(),
            "talking to web01 (10.0.0.5:5985): unexpected HTTP 503 Service Unavailable during authentication: \
             LAB\\alice already has 25 sessions"
        );
        assert_eq!(
            error(UpstreamErrorKind::AuthStatus {
                status: StatusCode::FORBIDDEN,
                text: String::new(),
            })
            .to_string(),
            "talking to web01 (10.0.0.5:5985): unexpected HTTP 403 Forbidden during authentication"
        );
        assert_eq!(
            error(LookupError::NoAddresses).to_string(),
            "cannot look up web01 (10.0.0.5:5985): the name has no addresses"
        );
    }

    #[test]
    fn whose_fault_whether_safe_to_retry_and_the_fault_kind() {
        let refused = error(UpstreamErrorKind::AuthRejected {
            user: "LAB\\alice".into(),
        });
        assert_eq!(
            (
                refused.label(),
                refused.side(),
                refused.retry_safe(),
                refused.fault_kind()
            ),
            ("auth_rejected", Side::Caller, false, FaultKind::AccessDenied)
        );
        let down = error(UpstreamErrorKind::Connect(std::io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(
            (down.label(), down.side(), down.retry_safe(), down.fault_kind()),
            ("connect", Side::Target, true, FaultKind::DestinationUnreachable)
        );
        let slow = error(UpstreamErrorKind::Timeout { secs: 30 });
        assert_eq!(
            (slow.side(), slow.retry_safe(), slow.fault_kind()),
            (Side::Target, false, FaultKind::DestinationUnreachable)
        );
        let unconfigured = error(TlsError::NoConfig);
        assert_eq!((unconfigured.side(), unconfigured.retry_safe()), (Side::Relay, true));
        let no_kdc = error(UpstreamErrorKind::KdcUnreachable {
            spn: "HTTP/web01.lab.test".into(),
            source: KdcError::NoKdc,
        });
        assert_eq!(
            (no_kdc.side(), no_kdc.fault_kind()),
            (Side::Relay, FaultKind::DestinationUnreachable)
        );
    }
}
