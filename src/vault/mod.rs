//! Delegated credentials received through CredSSP, and the Kerberos tickets the
//! relay obtained with them; for a plain Kerberos logon (constrained delegation), the
//! caller's service ticket and the S4U2Proxy tickets instead of a password.
//!
//! They live only in memory, inside the session that received them: the
//! password is a [`SecretString`] (zeroized on drop), `Debug` never prints it,
//! and nothing here can serialize or clone it into a plain `String`. The tickets
//! (and their session keys) are zeroized when the credentials are dropped, that is
//! when the session that holds them ends.

mod password;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// A password handed to a command on stdin: the subcommands that ask for one and
/// `winrm-relay run` share it.
pub use password::read_password_line;

use crate::identity::Principal;
use crate::proto::kerberos::s4u::{Evidence, IssuedTicket, RelayAccount};

/// The caller's identity and password as delegated in TSCredentials.
pub struct DelegatedCredentials {
    principal: Principal,
    password: SecretString,
    /// Behind a lock because a session's target connections share the credentials
    /// (`&DelegatedCredentials`), and cleanup opens several at once.
    tickets: Mutex<Tickets>,
    /// A plain Kerberos logon's: its service ticket to the relay and the tickets
    /// S4U2Proxy gave; such credentials have no password.
    constrained: Option<Box<Constrained>>,
}

/// What constrained delegation works with for one session: the caller's ticket as the
/// evidence, the relay's TGT and one S4U2Proxy ticket per target SPN. Their keys are
/// zeroized when the session ends.
pub struct Constrained {
    pub evidence: Evidence,
    /// The relay's account, whose TGT asks for the tickets.
    pub account: Arc<RelayAccount>,
    tickets: Mutex<ConstrainedTickets>,
}

impl Constrained {
    /// Hold the guard briefly, never across an await.
    pub fn tickets(&self) -> MutexGuard<'_, ConstrainedTickets> {
        self.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
pub struct ConstrainedTickets {
    pub tgt: Option<IssuedTicket>,
    /// By SPN.
    pub targets: HashMap<String, IssuedTicket>,
}

/// A KDC reply the relay keeps to answer the same request again, and until when the
/// ticket in it is good.
pub struct KeptReply {
    /// The reply as the KDC sent it, with its 4-byte length prefix.
    pub reply: Zeroizing<Vec<u8>>,
    pub expires: SystemTime,
}

/// The caller's TGT: the two KDC replies of the AS exchange that got it, kept so the
/// exchange can be answered again without the KDC, and its session key (which
/// decrypts the service ticket replies, to learn when they expire).
pub struct KeptTgt {
    /// The KDC's "pre-authentication required" error, with the salt for the password.
    pub preauth_required: Zeroizing<Vec<u8>>,
    /// The AS-REP holding the TGT.
    pub as_rep: KeptReply,
    pub session_key: Zeroizing<Vec<u8>>,
}

/// Kerberos tickets of one session: the TGT once, a service ticket per SPN.
#[derive(Default)]
pub struct Tickets {
    pub tgt: Option<KeptTgt>,
    /// The first reply of an AS exchange still under way.
    pub pending_preauth: Option<Zeroizing<Vec<u8>>>,
    /// TGS-REPs by service principal name.
    pub services: HashMap<String, KeptReply>,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tickets")
            .field("tgt", &self.tgt.is_some())
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DelegatedCredentials {
    pub fn new(domain: impl Into<String>, user: impl Into<String>, password: SecretString) -> Self {
        Self::from_principal(Principal::new(domain, user), password)
    }

    /// The credentials of `principal`, named as the logon established it.
    pub fn from_principal(principal: Principal, password: SecretString) -> Self {
        Self {
            principal,
            password,
            tickets: Mutex::default(),
            constrained: None,
        }
    }

    /// A plain Kerberos logon's credentials: no password, the caller's ticket.
    pub fn constrained(principal: Principal, evidence: Evidence, account: Arc<RelayAccount>) -> Self {
        Self {
            principal,
            password: SecretString::from(String::new()),
            tickets: Mutex::default(),
            constrained: Some(Box::new(Constrained {
                evidence,
                account,
                tickets: Mutex::default(),
            })),
        }
    }

    /// What constrained delegation needs, for a plain Kerberos logon.
    pub fn constrained_delegation(&self) -> Option<&Constrained> {
        self.constrained.as_deref()
    }

    /// Who the credentials are for, as one principal (compare with its key).
    pub fn identity(&self) -> &Principal {
        &self.principal
    }

    pub fn domain(&self) -> &str {
        self.principal.domain()
    }

    pub fn user(&self) -> &str {
        self.principal.user()
    }

    /// `DOMAIN\user`, the form policy rules and the audit log use.
    pub fn principal(&self) -> String {
        self.principal.to_string()
    }

    /// The password, for the one place that needs it: building the
    /// authentication identity towards a target.
    pub fn expose_password(&self) -> &str {
        self.password.expose_secret()
    }

    /// The Kerberos tickets obtained with these credentials. Hold the guard briefly:
    /// never across a network exchange.
    pub fn tickets(&self) -> MutexGuard<'_, Tickets> {
        // A panic while the lock was held leaves at worst a ticket missing: carry on.
        self.tickets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for DelegatedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedCredentials")
            .field("principal", &format_args!("{}", self.principal))
            .field("password", &"<redacted>")
            .field("tickets", &self.tickets.try_lock().map(|t| format!("{t:?}")).ok())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_password() {
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("hunter2-distinctive"));
        let printed = format!("{creds:?}");
        assert!(!printed.contains("hunter2-distinctive"), "{printed}");
        assert!(printed.contains("alice"));
    }

    #[test]
    fn debug_never_prints_tickets_or_keys() {
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("pw"));
        let secret = b"session-key-distinctive".to_vec();
        let kept = || KeptReply {
            reply: Zeroizing::new(b"ticket-distinctive".to_vec()),
            expires: SystemTime::now(),
        };
        creds.tickets().tgt = Some(KeptTgt {
            preauth_required: Zeroizing::new(Vec::new()),
            as_rep: kept(),
            session_key: Zeroizing::new(secret.clone()),
        });
        creds.tickets().services.insert("HTTP/web11.lab.test".into(), kept());
        let printed = format!("{creds:?}");
        assert!(
            printed.contains("HTTP/web11.lab.test") && printed.contains("tgt: true"),
            "{printed}"
        );
        for bytes in [&secret[..], b"ticket-distinctive"] {
            let as_list = format!("{bytes:?}");
            assert!(!printed.contains(&as_list[1..as_list.len() - 1]), "{printed}");
        }
        assert!(!printed.contains("distinctive"), "{printed}");
    }
}
