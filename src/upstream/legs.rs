//! Authenticating to a target as the caller: the mechanism its `auth` asks for, whose
//! legs go as empty-body POSTs (as WinRM clients send them) until the target accepts.
//! One driver ([`TargetConnection::legs`]) posts any mechanism's legs and reads the
//! answers; the mechanisms differ only in how they take the target's token.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::WWW_AUTHENTICATE;
use hyper::StatusCode;

use super::connection::TargetConnection;
use super::error::{AuthError, UpstreamError, UpstreamErrorKind};
use super::wire::Wire;
use crate::kerberos::kdc::converse;
use crate::proto::credssp::{CredSspError, Initiator};
use crate::proto::http_auth::{
    basic_authorization, find_challenge, format_scheme_token, tls_server_end_point, HttpAuthError, NegotiateClient,
};
use crate::proto::kerberos::client::{KerberosClient, KerberosError};
use crate::proto::kerberos::refusal::KdcRefusal;
use crate::proto::kerberos::s4u::{IssuedTicket, ProxyExchange, TgtExchange};
use crate::proto::kerberos::ticket_context::{TicketContext, TicketContextError};
use crate::proto::kerberos::tickets::EXPIRY_MARGIN;
use crate::resolve::{KerberosTarget, TargetAuth};
use crate::vault::{Constrained, DelegatedCredentials};

const NEGOTIATE: &str = "Negotiate";
const CREDSSP: &str = "CredSSP";

/// A mechanism's client side while its legs run.
enum Mechanism<'a> {
    /// NTLM inside SPNEGO.
    Ntlm(&'a mut NegotiateClient),
    /// Kerberos inside SPNEGO; its steps may ask the realm's KDCs.
    Kerberos {
        client: &'a mut KerberosClient,
        target: &'a KerberosTarget,
    },
    /// CredSSP, which ends by delegating the caller's credentials.
    CredSsp(&'a mut Initiator),
    /// Kerberos inside SPNEGO with the S4U2Proxy ticket in the caller's name.
    DelegatedTicket {
        context: &'a mut TicketContext,
        spn: &'a str,
    },
}

impl Mechanism<'_> {
    fn scheme(&self) -> &'static str {
        match self {
            Mechanism::Ntlm(_) | Mechanism::Kerberos { .. } | Mechanism::DelegatedTicket { .. } => NEGOTIATE,
            Mechanism::CredSsp(_) => CREDSSP,
        }
    }

    /// The token answering the target's `server_token` (`None` for the first), or
    /// `None` when the mechanism has nothing more to send.
    async fn next(
        &mut self,
        server_token: Option<&[u8]>,
        credentials: &DelegatedCredentials,
    ) -> Result<Option<Vec<u8>>, UpstreamErrorKind> {
        match self {
            Mechanism::Ntlm(client) => Ok(client.step(server_token).map_err(AuthError::from)?),
            Mechanism::Kerberos { client, target } => {
                match converse(&mut client.step(server_token, credentials), &target.realm.kdc).await {
                    Ok(outcome) => Ok(outcome?),
                    Err(source) => Err(UpstreamErrorKind::KdcUnreachable {
                        spn: target.spn.clone(),
                        source,
                    }),
                }
            }
            Mechanism::DelegatedTicket { context, .. } => Ok(context.step(server_token)?),
            // Once the credentials went, a challenge is a refusal.
            Mechanism::CredSsp(initiator) if initiator.credentials_sent() => Ok(None),
            Mechanism::CredSsp(initiator) => match initiator.step(server_token) {
                Err(CredSspError::LogonRefused(_)) => Ok(None),
                other => Ok(other.map_err(AuthError::from)?),
            },
        }
    }

    /// Whether a success ends the legs: for CredSSP only once the credentials went.
    fn accepts_success(&self) -> bool {
        match self {
            Mechanism::Ntlm(_) | Mechanism::Kerberos { .. } | Mechanism::DelegatedTicket { .. } => true,
            Mechanism::CredSsp(initiator) => initiator.credentials_sent(),
        }
    }

    /// The target accepted: its final token (if any) must be taken before any body is
    /// sealed (NTLM's mechListMIC keeps the sequence numbers in step; Kerberos' AP-REP
    /// proves the target and sets the keys of the wrap tokens).
    async fn finish(
        &mut self,
        final_token: Option<&[u8]>,
        credentials: &DelegatedCredentials,
    ) -> Result<(), UpstreamErrorKind> {
        match final_token {
            Some(token) if !matches!(self, Mechanism::CredSsp(_)) => {
                self.next(Some(token), credentials).await?;
            }
            _ => {}
        }
        match self {
            Mechanism::Ntlm(client) if !client.is_established() => {
                Err(AuthError::from(HttpAuthError::Incomplete).into())
            }
            Mechanism::Kerberos { client, .. } if !client.is_established() => Err(KerberosError::Incomplete.into()),
            Mechanism::DelegatedTicket { context, .. } if !context.is_established() => {
                Err(TicketContextError::Incomplete.into())
            }
            _ => Ok(()),
        }
    }

    /// The target's 401 to the caller's credentials.
    fn rejected(&self, credentials: &DelegatedCredentials) -> UpstreamErrorKind {
        match self {
            Mechanism::Kerberos { target, .. } => UpstreamErrorKind::TicketRefused {
                user: credentials.principal(),
                spn: target.spn.clone(),
            },
            Mechanism::DelegatedTicket { spn, .. } => UpstreamErrorKind::TicketRefused {
                user: credentials.principal(),
                spn: spn.to_string(),
            },
            Mechanism::Ntlm(_) | Mechanism::CredSsp(_) => UpstreamErrorKind::AuthRejected {
                user: credentials.principal(),
            },
        }
    }
}

/// One authentication leg's answer.
struct AuthAnswer {
    status: StatusCode,
    token: Option<Vec<u8>>,
    /// The body as text when the answer is a refusal other than 401 (else empty).
    text: String,
}

/// The first line of a refusal's body, if it is short printable text.
fn refusal_text(body: &[u8]) -> String {
    const MAX_TEXT: usize = 300;
    let text = String::from_utf8_lossy(body.get(..MAX_TEXT).unwrap_or(body));
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().any(char::is_control) {
        return String::new();
    }
    line.to_string()
}

/// A failed Kerberos attempt; `no_ticket` when it failed for want of a ticket, before
/// anything went to the target.
struct KerberosFailure {
    no_ticket: bool,
    error: UpstreamError,
}

impl TargetConnection {
    /// Authenticate as `credentials` the way the target's `auth` says, and return how
    /// bodies travel from then on.
    pub(super) async fn authenticate(
        &mut self,
        credentials: &DelegatedCredentials,
        certificate: Option<&[u8]>,
    ) -> Result<Wire, UpstreamError> {
        if let Some(constrained) = credentials.constrained_delegation() {
            return self.delegated(constrained, credentials, certificate).await;
        }
        if let Some(kerberos) = self.target.kerberos.clone() {
            match self.kerberos(&kerberos, credentials, certificate).await {
                Ok(wire) => return Ok(wire),
                // As Windows' Negotiate: without a ticket, NTLM. Nothing went to the
                // target yet, so the connection is still fresh.
                Err(failure) if failure.no_ticket && !self.target.auth.kerberos_only() => {
                    tracing::warn!(target = %self.target.name, error = %failure.error, "no Kerberos ticket for the target: using NTLM");
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let auth_error = |error: AuthError| self.error(error);
        match self.target.auth {
            auth @ (TargetAuth::Negotiate | TargetAuth::Ntlm | TargetAuth::HttpsNegotiate | TargetAuth::HttpsNtlm) => {
                let over_tls = matches!(auth, TargetAuth::HttpsNegotiate | TargetAuth::HttpsNtlm);
                let certificate = match (over_tls, certificate) {
                    (true, None) => return Err(auth_error(AuthError::NoCertificate)),
                    (true, certificate) => certificate,
                    (false, _) => None,
                };
                let mut client =
                    NegotiateClient::new(credentials, &self.target.host).map_err(|e| auth_error(AuthError::from(e)))?;
                if let Some(certificate) = certificate {
                    client = client.with_channel_bindings(&tls_server_end_point(certificate));
                }
                let mut mechanism = Mechanism::Ntlm(&mut client);
                let first = mechanism.next(None, credentials).await.map_err(|e| self.error(e))?;
                if let Some(token) = first {
                    self.legs(&mut mechanism, token, credentials).await?;
                }
                Ok(if over_tls {
                    Wire::Plain
                } else {
                    Wire::Spnego(Box::new(client))
                })
            }
            TargetAuth::Basic => Ok(Wire::Basic(basic_authorization(
                &credentials.principal(),
                credentials.expose_password(),
            ))),
            TargetAuth::CredSsp => {
                let mut initiator =
                    Initiator::new(credentials, &self.target.host).map_err(|e| auth_error(AuthError::from(e)))?;
                let mut mechanism = Mechanism::CredSsp(&mut initiator);
                let first = mechanism.next(None, credentials).await.map_err(|e| self.error(e))?;
                self.legs(&mut mechanism, first.unwrap_or_default(), credentials)
                    .await?;
                let channel = initiator.into_channel().map_err(|e| self.error(AuthError::from(e)))?;
                Ok(if self.target.https {
                    Wire::Plain
                } else {
                    Wire::CredSsp(Box::new(channel))
                })
            }
            // Resolution gives these a realm and an SPN, or refuses the target.
            TargetAuth::Kerberos | TargetAuth::HttpsKerberos => Err(auth_error(AuthError::NoRealm)),
        }
    }

    /// Constrained delegation towards the target: the session's S4U2Proxy ticket for its
    /// SPN (asked for once per session and SPN), then the legs as for any Kerberos target.
    async fn delegated(
        &mut self,
        constrained: &Constrained,
        credentials: &DelegatedCredentials,
        certificate: Option<&[u8]>,
    ) -> Result<Wire, UpstreamError> {
        let Some(kerberos) = self.target.kerberos.clone() else {
            return Err(self.error(UpstreamErrorKind::NotKerberosTarget));
        };
        let ticket = self.delegated_ticket(constrained, &kerberos).await?;
        let mut context = TicketContext::new(&ticket, &kerberos.spn);
        if self.target.https {
            let Some(certificate) = certificate else {
                return Err(self.error(AuthError::NoCertificate));
            };
            context = context.with_channel_bindings(&tls_server_end_point(certificate));
        }
        let mut mechanism = Mechanism::DelegatedTicket {
            context: &mut context,
            spn: &kerberos.spn,
        };
        let token = match mechanism.next(None, credentials).await {
            Ok(Some(token)) => token,
            Ok(None) => return Err(self.error(TicketContextError::Incomplete)),
            Err(kind) => return Err(self.error(kind)),
        };
        self.legs(&mut mechanism, token, credentials).await?;
        Ok(if self.target.https {
            Wire::Plain
        } else {
            Wire::DelegatedTicket(Box::new(context))
        })
    }

    /// The S4U2Proxy ticket for the target's SPN: the session's, while good, or a new
    /// one (with the relay's TGT, got first when the session has none good).
    async fn delegated_ticket(
        &mut self,
        constrained: &Constrained,
        kerberos: &KerberosTarget,
    ) -> Result<IssuedTicket, UpstreamError> {
        let now = SystemTime::now();
        let good = |ticket: &IssuedTicket| now + EXPIRY_MARGIN < ticket.end;
        let (kept, tgt) = {
            let tickets = constrained.tickets();
            (
                tickets.targets.get(&kerberos.spn).filter(|t| good(t)).cloned(),
                tickets.tgt.as_ref().filter(|t| good(t)).cloned(),
            )
        };
        if let Some(ticket) = kept {
            return Ok(ticket);
        }
        let unreachable = |source| UpstreamErrorKind::KdcUnreachable {
            spn: kerberos.spn.clone(),
            source,
        };
        let tgt = match tgt {
            Some(tgt) => tgt,
            None => {
                let mut exchange = TgtExchange::new(&constrained.account);
                let tgt = converse(&mut exchange, &kerberos.realm.kdc)
                    .await
                    .map_err(|source| self.error(unreachable(source)))?
                    .map_err(|e| self.error(e))?;
                constrained.tickets().tgt = Some(tgt.clone());
                tgt
            }
        };
        let mut exchange = ProxyExchange::new(&constrained.account, &tgt, &constrained.evidence, &kerberos.spn);
        let ticket = converse(&mut exchange, &kerberos.realm.kdc)
            .await
            .map_err(|source| self.error(unreachable(source)))?
            .map_err(|e| self.error(e))?;
        tracing::info!(
            target = %self.target.name,
            spn = %kerberos.spn,
            client = %ticket.client,
            "constrained delegation: S4U2Proxy ticket issued"
        );
        constrained
            .tickets()
            .targets
            .insert(kerberos.spn.clone(), ticket.clone());
        Ok(ticket)
    }

    /// Kerberos towards the target: a ticket (from the session's, or the KDC), then the
    /// legs. Over TLS the ticket is bound to the channel.
    async fn kerberos(
        &mut self,
        kerberos: &KerberosTarget,
        credentials: &DelegatedCredentials,
        certificate: Option<&[u8]>,
    ) -> Result<Wire, KerberosFailure> {
        let failed = |kind: UpstreamErrorKind, no_ticket: bool| KerberosFailure {
            no_ticket,
            error: self.error(kind),
        };
        let mut client = match KerberosClient::new(credentials, &kerberos.realm.domain, &kerberos.spn) {
            Ok(client) => client,
            Err(error @ KerberosError::NotInRealm { .. }) => return Err(failed(error.into(), true)),
            Err(error) => return Err(failed(error.into(), false)),
        };
        if self.target.https {
            let Some(certificate) = certificate else {
                let error = KerberosError::Sspi("no TLS certificate to bind to".into());
                return Err(failed(error.into(), false));
            };
            client = client.with_channel_bindings(&tls_server_end_point(certificate));
        }
        let mut mechanism = Mechanism::Kerberos {
            client: &mut client,
            target: kerberos,
        };
        let token = match mechanism.next(None, credentials).await {
            Ok(Some(token)) => token,
            Ok(None) => return Err(failed(KerberosError::Incomplete.into(), false)),
            Err(kind) => {
                // No ticket for the SPN, or no KDC: nothing went to the target.
                let no_ticket = matches!(
                    kind,
                    UpstreamErrorKind::KdcUnreachable { .. }
                        | UpstreamErrorKind::Kerberos(KerberosError::Refused(KdcRefusal::UnknownSpn { .. }))
                );
                return Err(failed(kind, no_ticket));
            }
        };
        self.legs(&mut mechanism, token, credentials)
            .await
            .map_err(|error| KerberosFailure {
                no_ticket: false,
                error,
            })?;
        Ok(if self.target.https {
            Wire::Plain
        } else {
            Wire::Kerberos(Box::new(client))
        })
    }

    /// Post `token`, then each token `mechanism` answers the target's challenges with,
    /// until the target accepts (a success), refuses (a 401 without a challenge, or one
    /// the mechanism has no answer to) or answers anything else.
    async fn legs(
        &mut self,
        mechanism: &mut Mechanism<'_>,
        mut token: Vec<u8>,
        credentials: &DelegatedCredentials,
    ) -> Result<(), UpstreamError> {
        loop {
            let AuthAnswer {
                status,
                token: challenge,
                text,
            } = self.auth_leg(mechanism.scheme(), &token).await?;
            let next = match (status, challenge) {
                (StatusCode::UNAUTHORIZED, Some(challenge)) => mechanism.next(Some(&challenge), credentials).await,
                (StatusCode::UNAUTHORIZED, None) => Ok(None),
                (status, final_token) if status.is_success() && mechanism.accepts_success() => {
                    return mechanism
                        .finish(final_token.as_deref(), credentials)
                        .await
                        .map_err(|e| self.error(e));
                }
                (status, _) => Err(UpstreamErrorKind::AuthStatus { status, text }),
            };
            match next {
                Ok(Some(next)) => token = next,
                Ok(None) => return Err(self.error(mechanism.rejected(credentials))),
                Err(kind) => return Err(self.error(kind)),
            }
        }
    }

    /// One authentication POST: the status, the server's token for `scheme`, and the
    /// text of an answer that is neither a success nor a challenge.
    async fn auth_leg(&mut self, scheme: &str, token: &[u8]) -> Result<AuthAnswer, UpstreamError> {
        let authorization = format_scheme_token(scheme, token);
        let request = self.request(Bytes::new(), None, Some(&authorization))?;
        let response = self.send(request).await?;
        let status = response.status();
        let challenge = {
            let values = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            find_challenge(values, scheme).flatten()
        };
        // Drain the body so the connection stays usable; keep the start of a refusal's
        // text (a relay's 503 says which limit was hit).
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = if status.is_success() || status == StatusCode::UNAUTHORIZED {
            String::new()
        } else {
            refusal_text(&body)
        };
        Ok(AuthAnswer {
            status,
            token: challenge,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_the_first_line_of_its_text() {
        assert_eq!(
            refusal_text(b"LAB\\alice already has 25 sessions (limits.max_sessions_per_user)\r\nmore"),
            "LAB\\alice already has 25 sessions (limits.max_sessions_per_user)"
        );
        assert_eq!(refusal_text(b"\x00\x01binary"), "");
        assert_eq!(refusal_text(&[b'x'; 1000]).len(), 300);
    }
}
