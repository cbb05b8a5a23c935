//! Why one attempt on a target failed, and whether another attempt may run: only when
//! nothing ran there, and the failure is one that can go away by itself.

use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// How far an attempt got. Everything before [`Stage::Command`] ran nothing on the
/// target: no shell exists there, so no command can have started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Looking the endpoint up, connecting, TLS.
    Connect,
    /// Authenticating to the endpoint (the relay, or the target with `--direct`).
    Logon,
    /// Creating the shell: until its answer names the shell, none exists.
    CreateShell,
    /// The shell exists; the command was sent, runs, or has run.
    Command,
}

/// What went wrong, as far as retrying cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Nothing answered: the name did not resolve, the connection was refused or timed out.
    Unreachable,
    /// An answer did not come in time.
    TimedOut,
    /// The connection broke half-way through an exchange.
    ConnectionLost,
    /// The endpoint refused the credentials (HTTP 401 to the logon).
    CredentialsRefused,
    /// An HTTP status that carries no WS-Man fault (a relay's 503 when a limit is hit).
    Status(u16),
    /// A WS-Man fault, with its HTTP status and subcode (`DestinationUnreachable`,
    /// `AccessDenied`, ...).
    Fault { status: u16, subcode: Option<String> },
    /// TLS, protocol or parsing trouble: the same again next time.
    Other,
    /// Stopped by Ctrl-C.
    Interrupted,
}

/// Faults that answer the request itself, not an outage: asking again gets the same
/// answer (a policy refusal, a resource or request the service does not take).
const DEFINITIVE_FAULTS: [&str; 5] = [
    "AccessDenied",
    "InvalidResourceURI",
    "SchemaValidationError",
    "ActionNotSupported",
    "EncodingLimit",
];

/// One failed attempt: how far it got, why, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub cause: Cause,
    pub message: String,
}

impl Failure {
    pub fn new(stage: Stage, cause: Cause, message: impl Into<String>) -> Failure {
        Failure {
            stage,
            cause,
            message: message.into(),
        }
    }

    /// A failure of the client connection to the endpoint at `stage`.
    pub fn from_target(stage: Stage, error: &UpstreamError) -> Failure {
        let cause = match error.kind() {
            UpstreamErrorKind::Timeout { .. } => Cause::TimedOut,
            UpstreamErrorKind::Http(_) => Cause::ConnectionLost,
            UpstreamErrorKind::AuthRejected { .. } => Cause::CredentialsRefused,
            UpstreamErrorKind::AuthStatus { status, .. } => Cause::Status(status.as_u16()),
            // Nothing reached the endpoint, but its certificate is the same next time.
            UpstreamErrorKind::Tls(_) => Cause::Other,
            _ if error.retry_safe() => Cause::Unreachable,
            _ => Cause::Other,
        };
        // Where the connection itself failed, say so whatever the caller was doing.
        let stage = match cause {
            Cause::Unreachable => Stage::Connect,
            _ => stage,
        };
        Failure::new(stage, cause, error.to_string())
    }

    /// Nothing ran on the target: the attempt never had a shell there.
    pub fn nothing_ran(&self) -> bool {
        self.stage < Stage::Command
    }

    /// Whether another attempt may follow: nothing ran, and the cause can go away by
    /// itself (an endpoint down or starting, a timeout, a lost connection, a 5xx that is
    /// not a decision). A command that started is never run again; refused
    /// credentials are not tried again (that only locks the account out).
    pub fn is_retriable(&self) -> bool {
        if !self.nothing_ran() {
            return false;
        }
        match &self.cause {
            Cause::Unreachable | Cause::TimedOut | Cause::ConnectionLost => true,
            Cause::Status(status) => *status >= 500,
            Cause::Fault { status, subcode } => {
                *status >= 500 && !subcode.as_deref().is_some_and(|s| DEFINITIVE_FAULTS.contains(&s))
            }
            Cause::CredentialsRefused | Cause::Other | Cause::Interrupted => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kerberos::kdc::KdcError;
    use crate::upstream::{HttpError, LookupError, TlsError};
    use hyper::StatusCode;

    fn target_error(kind: &str) -> UpstreamError {
        let kind = match kind {
            "refused" => UpstreamErrorKind::Connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            "connect-timeout" => UpstreamErrorKind::ConnectTimeout { secs: 3 },
            "lookup" => UpstreamErrorKind::Lookup(LookupError::NoAddresses),
            "kdc" => UpstreamErrorKind::KdcUnreachable {
                spn: "HTTP/web01.lab.test".into(),
                source: KdcError::Unreachable(Vec::new()),
            },
            "timeout" => UpstreamErrorKind::Timeout { secs: 10 },
            "lost" => HttpError::Body("connection closed before message completed".into()).into(),
            "401" => UpstreamErrorKind::AuthRejected {
                user: "LAB\\alice".into(),
            },
            "503" => UpstreamErrorKind::AuthStatus {
                status: StatusCode::SERVICE_UNAVAILABLE,
                text: "LAB\\alice already has 25 sessions".into(),
            },
            "403" => UpstreamErrorKind::AuthStatus {
                status: StatusCode::FORBIDDEN,
                text: String::new(),
            },
            "tls" => TlsError::NoConfig.into(),
            other => panic!("{other}"),
        };
        UpstreamError::new("web01 (10.0.0.5:5985)".into(), kind)
    }

    fn fault(stage: Stage, status: u16, subcode: &str) -> Failure {
        Failure::new(
            stage,
            Cause::Fault {
                status,
                subcode: Some(subcode.into()),
            },
            "fault",
        )
    }

    #[test]
    fn failures_where_nothing_ran_and_that_can_pass_are_retried() {
        for kind in ["refused", "connect-timeout", "lookup", "kdc"] {
            // Unreachable is a connect failure whatever was under way.
            let failure = Failure::from_target(Stage::Logon, &target_error(kind));
            assert_eq!((failure.stage, &failure.cause), (Stage::Connect, &Cause::Unreachable));
            assert!(failure.is_retriable(), "{kind}");
        }
        for stage in [Stage::Logon, Stage::CreateShell] {
            for kind in ["timeout", "lost", "503"] {
                assert!(
                    Failure::from_target(stage, &target_error(kind)).is_retriable(),
                    "{kind} at {stage:?}"
                );
            }
        }
        // The relay could not reach the target, or the target had a transient problem.
        for subcode in ["DestinationUnreachable", "TimedOut", "QuotaLimit", "InternalError"] {
            assert!(fault(Stage::CreateShell, 500, subcode).is_retriable(), "{subcode}");
        }
        assert!(Failure::new(
            Stage::CreateShell,
            Cause::Fault {
                status: 500,
                subcode: None
            },
            ""
        )
        .is_retriable());
    }

    #[test]
    fn nothing_that_may_have_run_is_retried() {
        for kind in ["timeout", "lost", "503"] {
            let failure = Failure::from_target(Stage::Command, &target_error(kind));
            assert!(!failure.nothing_ran() && !failure.is_retriable(), "{kind}");
        }
        assert!(!fault(Stage::Command, 500, "DestinationUnreachable").is_retriable());
    }

    #[test]
    fn decisions_and_refusals_are_not_retried() {
        let refused = Failure::from_target(Stage::Logon, &target_error("401"));
        assert_eq!(refused.cause, Cause::CredentialsRefused);
        assert!(refused.nothing_ran() && !refused.is_retriable());
        assert!(!Failure::from_target(Stage::Logon, &target_error("403")).is_retriable());
        assert!(!Failure::from_target(Stage::Connect, &target_error("tls")).is_retriable());
        for subcode in DEFINITIVE_FAULTS {
            assert!(!fault(Stage::CreateShell, 500, subcode).is_retriable(), "{subcode}");
        }
        // A fault with a 4xx status is an answer to the request, not an outage.
        assert!(!fault(Stage::CreateShell, 400, "InternalError").is_retriable());
        assert!(!Failure::new(Stage::Connect, Cause::Interrupted, "").is_retriable());
    }

    #[test]
    fn messages_are_the_target_clients_own() {
        let failure = Failure::from_target(Stage::Logon, &target_error("503"));
        assert_eq!(
            failure.message,
            "talking to web01 (10.0.0.5:5985): unexpected HTTP 503 Service Unavailable during authentication: \
             LAB\\alice already has 25 sessions"
        );
    }
}
