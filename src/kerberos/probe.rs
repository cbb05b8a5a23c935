//! `winrm-relay kerberos test`: one AS exchange for a user against the
//! configured KDCs, with sspi's Kerberos client doing the cryptography and
//! [`converse`] over the [`KdcTransport`] the network, and an answer a person can
//! act on.
//!
//! sspi decrypts the AS-REP with the password before it asks for anything
//! else: its next request, the TGS-REQ, is the proof that the password is
//! right, and the exchange stops there (no service ticket is asked for).

use std::fmt;

use sspi::generator::GeneratorState;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, KdcResolution, Kerberos, KerberosConfig,
    SecurityBuffer, Sspi, Username,
};

use super::kdc::{converse, request_message, KdcError, KdcTransport};
use crate::proto::guard::Panicked;
use crate::proto::kerberos::exchange::{Finished, InitInput, InitState, InitStep, KdcConversation, KdcReply, KdcTurn};
use crate::proto::kerberos::messages::{error_codes, kdc_message_type, krb_error, KdcMessage, KrbErrorInfo};

/// What one AS exchange came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOutcome {
    /// The KDC issued a TGT and the password decrypted it. `clock_skew` is the
    /// KDC's time when it first refused the relay's clock (sspi then retried
    /// with the KDC's time: the relay's clock needs fixing all the same).
    Ok {
        kdc: String,
        clock_skew: Option<String>,
    },
    PreauthFailed {
        kdc: String,
    },
    UnknownPrincipal {
        kdc: String,
    },
    ClockSkew {
        kdc: String,
        kdc_time: Option<String>,
    },
    AccountDisabled {
        kdc: String,
    },
    PasswordExpired {
        kdc: String,
    },
    Refused {
        kdc: String,
        error: KrbErrorInfo,
    },
    /// sspi gave up without a KDC error to show for it.
    Failed(String),
    Unreachable(KdcError),
}

impl AsOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, AsOutcome::Ok { .. })
    }
}

impl fmt::Display for AsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsOutcome::Ok { kdc, clock_skew: None } => {
                write!(
                    f,
                    "ok: {kdc} issued a ticket-granting ticket and the password opened it"
                )
            }
            AsOutcome::Ok {
                kdc,
                clock_skew: Some(time),
            } => write!(
                f,
                "ok: {kdc} issued a ticket-granting ticket, but only after refusing this machine's clock (the KDC's \
                 time is {time}): synchronise the relay's clock with the domain"
            ),
            AsOutcome::PreauthFailed { kdc } => write!(
                f,
                "pre-authentication failed at {kdc}: the password is wrong (repeated attempts count towards the \
                 domain's lockout)"
            ),
            AsOutcome::UnknownPrincipal { kdc } => {
                write!(
                    f,
                    "unknown principal: {kdc} does not know this user (check the name and the realm)"
                )
            }
            AsOutcome::ClockSkew { kdc, kdc_time } => write!(
                f,
                "clock skew: {kdc} refuses this machine's clock (the KDC's time is {}): synchronise the relay's \
                 clock with the domain",
                kdc_time.as_deref().unwrap_or("not given")
            ),
            AsOutcome::AccountDisabled { kdc } => write!(f, "{kdc}: the account is disabled or locked out"),
            AsOutcome::PasswordExpired { kdc } => write!(f, "{kdc}: the password has expired; change it first"),
            AsOutcome::Refused { kdc, error } => {
                write!(f, "{kdc} refused the AS exchange with Kerberos error {}", error.code)?;
                if error.code == error_codes::KDC_ERR_ETYPE_NOSUPP {
                    f.write_str(" (no common encryption type: the account needs AES keys)")?;
                }
                match &error.text {
                    Some(text) => write!(f, ": {text}"),
                    None => Ok(()),
                }
            }
            AsOutcome::Failed(error) => write!(f, "the AS exchange failed: {error}"),
            AsOutcome::Unreachable(error) => write!(f, "{error}"),
        }
    }
}

/// What the last KDC error says, or sspi's own error when there was none.
fn outcome_of(kdc: &str, last_error: Option<KrbErrorInfo>, sspi_error: String) -> AsOutcome {
    let kdc = kdc.to_string();
    let Some(error) = last_error else {
        return AsOutcome::Failed(sspi_error);
    };
    match error.code {
        error_codes::KDC_ERR_PREAUTH_FAILED | error_codes::KRB_AP_ERR_BAD_INTEGRITY => AsOutcome::PreauthFailed { kdc },
        error_codes::KDC_ERR_C_PRINCIPAL_UNKNOWN => AsOutcome::UnknownPrincipal { kdc },
        error_codes::KRB_AP_ERR_SKEW => AsOutcome::ClockSkew {
            kdc,
            kdc_time: error.server_time,
        },
        error_codes::KDC_ERR_CLIENT_REVOKED => AsOutcome::AccountDisabled { kdc },
        error_codes::KDC_ERR_KEY_EXPIRED => AsOutcome::PasswordExpired { kdc },
        // Asked for pre-authentication, then sspi stopped: its reason says more.
        error_codes::KDC_ERR_PREAUTH_REQUIRED => AsOutcome::Failed(sspi_error),
        _ => AsOutcome::Refused { kdc, error },
    }
}

/// One AS exchange for `user@realm` with `password`.
pub async fn as_exchange(transport: &KdcTransport, realm: &str, user: &str, password: &str) -> AsOutcome {
    let sspi_error = |e: sspi::Error| AsOutcome::Failed(e.to_string());
    let mut kerberos = match Kerberos::new_client_from_config(KerberosConfig {
        kdc_resolution: KdcResolution::KdcUrl(transport.sspi_url()),
        client_computer_name: "WINRM-RELAY".to_string(),
    }) {
        Ok(kerberos) => kerberos,
        Err(e) => return sspi_error(e),
    };
    let username = match Username::new(user, Some(realm)) {
        Ok(username) => username,
        Err(e) => return AsOutcome::Failed(e.to_string()),
    };
    let identity = Credentials::AuthIdentity(AuthIdentity {
        username,
        password: password.to_string().into(),
    });
    let handle = match kerberos
        .acquire_credentials_handle()
        .with_credential_use(CredentialUse::Outbound)
        .with_auth_data(&identity)
        .execute(&mut kerberos)
    {
        Ok(acquired) => acquired.credentials_handle,
        Err(e) => return sspi_error(e),
    };
    let input = InitInput {
        // Never sent: the exchange ends before the TGS-REQ would name it.
        target_name: format!("krbtgt/{realm}"),
        flags: ClientRequestFlags::MUTUAL_AUTH,
        buffers: vec![SecurityBuffer::new(Vec::new(), BufferType::Token)],
    };
    let mut probe = AsProbe {
        call: InitStep::new(kerberos, handle, input),
        kdc: String::new(),
        last_error: None,
        clock_skew: None,
    };
    converse(&mut probe, transport)
        .await
        .unwrap_or_else(AsOutcome::Unreachable)
}

/// The AS exchange as a [`KdcConversation`]: what each KDC said is noted on the way, and
/// the TGS-REQ sspi asks for next ends it.
struct AsProbe {
    call: InitStep<Kerberos>,
    /// The KDC that answered last.
    kdc: String,
    last_error: Option<KrbErrorInfo>,
    clock_skew: Option<String>,
}

impl KdcConversation for AsProbe {
    type Outcome = AsOutcome;

    fn start(&mut self) -> KdcTurn<AsOutcome> {
        let state = self.call.start();
        self.turn(state)
    }

    fn answer(&mut self, reply: KdcReply) -> KdcTurn<AsOutcome> {
        self.kdc.clone_from(&reply.kdc);
        if kdc_message_type(reply.message()) == Some(KdcMessage::Error) {
            self.last_error = krb_error(reply.message());
            if let Some(error) = self
                .last_error
                .as_ref()
                .filter(|e| e.code == error_codes::KRB_AP_ERR_SKEW)
            {
                self.clock_skew = Some(error.server_time.clone().unwrap_or_default());
            }
        }
        let state = self.call.resume(reply.into_framed());
        self.turn(state)
    }
}

impl AsProbe {
    fn turn(&mut self, state: Result<InitState<Kerberos>, Panicked>) -> KdcTurn<AsOutcome> {
        let ok = |probe: &mut AsProbe| AsOutcome::Ok {
            kdc: probe.kdc.clone(),
            clock_skew: probe.clock_skew.take(),
        };
        match state {
            Err(Panicked) if self.kdc.is_empty() => {
                KdcTurn::Done(AsOutcome::Failed("the security package panicked".to_string()))
            }
            Err(Panicked) => KdcTurn::Done(AsOutcome::Failed(format!(
                "the security package panicked on {}'s answer",
                self.kdc
            ))),
            Ok(GeneratorState::Completed(Finished { result: Ok(_), .. })) => KdcTurn::Done(ok(self)),
            Ok(GeneratorState::Completed(Finished { result: Err(e), .. })) => {
                KdcTurn::Done(outcome_of(&self.kdc, self.last_error.take(), e.to_string()))
            }
            Ok(GeneratorState::Suspended(request)) => {
                let message = request_message(&request).unwrap_or_default();
                if kdc_message_type(message) == Some(KdcMessage::TgsReq) {
                    KdcTurn::Done(ok(self))
                } else {
                    KdcTurn::Ask(request)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: i64) -> Option<KrbErrorInfo> {
        Some(KrbErrorInfo {
            code,
            server_time: Some("20261201220000Z".into()),
            text: None,
        })
    }

    #[test]
    fn kdc_errors_say_what_to_do() {
        let kdc = "tcp://dc1:88";
        let says = |code| outcome_of(kdc, error(code), "sspi".into()).to_string();
        assert_eq!(
            says(24),
            "pre-authentication failed at tcp://dc1:88: the password is wrong (repeated attempts count towards the \
             domain's lockout)"
        );
        assert!(says(31).starts_with("pre-authentication failed"));
        assert!(says(6).starts_with("unknown principal: tcp://dc1:88"));
        assert!(says(37).starts_with("clock skew: tcp://dc1:88") && says(37).contains("20261201220000Z"));
        assert!(says(18).contains("disabled or locked out"));
        assert!(says(23).contains("expired"));
        assert!(
            says(14).contains("Kerberos error 14 (no common encryption type"),
            "{}",
            says(14)
        );
        assert_eq!(says(25), "the AS exchange failed: sspi");
        assert_eq!(
            outcome_of(kdc, None, "no answer".into()),
            AsOutcome::Failed("no answer".into())
        );
        let ok = AsOutcome::Ok {
            kdc: kdc.into(),
            clock_skew: Some("20261201220000Z".into()),
        };
        assert!(ok.is_ok() && ok.to_string().contains("synchronise the relay's clock"));
        let down = AsOutcome::Unreachable(KdcError::Unreachable(vec![super::super::kdc::KdcAttempt {
            kdc: kdc.into(),
            error: "connect: Connection refused".into(),
        }]));
        assert_eq!(
            down.to_string(),
            "KDC unreachable: tcp://dc1:88: connect: Connection refused"
        );
    }

    #[tokio::test]
    async fn an_unreachable_kdc_ends_the_exchange_naming_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = super::super::kdc::KdcUrl::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let transport = KdcTransport::new(
            vec![url],
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(2),
        );
        let outcome = as_exchange(&transport, "LAB.TEST", "alice", "pw").await;
        assert!(
            matches!(&outcome, AsOutcome::Unreachable(KdcError::Unreachable(a)) if a[0].kdc.ends_with(&port.to_string())),
            "{outcome}"
        );
    }
}
