//! HTTP-CredSSP acceptor (CredSSP over WinRM's `Authorization: CredSSP`).
//!
//! A sans-IO state machine: each call to [`Acceptor::step`] takes the decoded
//! bytes of one `Authorization: CredSSP <b64>` header and says what to answer.
//! The TLS channel is a rustls `ServerConnection` driven in memory; the
//! TSRequest rounds (SPNEGO/NTLM, pubKeyAuth, TSCredentials) run in sspi's
//! `CredSspServer`. The relay adds what sspi leaves out: the version floor,
//! input checks that keep sspi's parsers from panicking, the SPNEGO
//! mechListMIC workaround, and the check that the delegated credentials
//! belong to the principal that authenticated.

mod channel;
mod initiator;
mod tls;
mod tokens;
mod users;

use std::sync::{Arc, Mutex};

use rustls::{Connection, ServerConfig, ServerConnection};
use secrecy::SecretString;
use sspi::credssp::{CredSspServer, ServerError, ServerMode, ServerState, TsRequest};
use sspi::ntlm::NtlmConfig;
use sspi::{AuthIdentity, NegotiateConfig};

pub use channel::SecureChannel;
pub use initiator::Initiator;
pub use tls::SkipCertificateVerification;
pub use tokens::{classify_first_token, InnerMechanism};
pub use users::{hashes_equal, nt_hash, verify_password, LogonRefusal, Principal, UserHash};

use super::guard::contain_panic;
use crate::vault::DelegatedCredentials;
use users::{Claim, UsersProxy};

/// Highest TSRequest version the relay speaks (CVE-2018-0886 fix included).
pub const MAX_TS_REQUEST_VERSION: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum CredSspError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("malformed TSRequest: {0}")]
    BadTsRequest(String),
    #[error("bad negotiation token: {0}")]
    BadToken(&'static str),
    #[error("{0} is too short to be sealed data")]
    ShortField(&'static str),
    #[error("client speaks CredSSP version {client}, the relay requires {floor} or later")]
    VersionTooLow { client: u32, floor: u32 },
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("{0} is not in the users file")]
    UnknownUser(String),
    #[error("wrong password for {0}")]
    WrongPassword(String),
    #[error("delegated credentials are for {delegated}, but the connection authenticated as {authenticated}")]
    PrincipalMismatch { authenticated: String, delegated: String },
    #[error("delegated password does not match the users file entry of {0}")]
    DelegatedPasswordMismatch(String),
    #[error("{0} is locked out after repeated logon failures")]
    LockedOut(String),
    #[error("the security package panicked on network input")]
    Panicked,
    #[error("authentication already failed on this connection")]
    AlreadyFailed,
    #[error("the server refused the logon (status {0:#010x})")]
    LogonRefused(u32),
    #[error("decrypted {actual} bytes where the part announced {announced}")]
    LengthMismatch { announced: usize, actual: usize },
}

/// What the acceptor needs, shared by every connection.
pub struct AcceptorConfig {
    pub tls: Arc<ServerConfig>,
    /// PKCS#1 RSAPublicKey DER of the relay certificate: what pubKeyAuth binds.
    pub public_key: Vec<u8>,
    pub users: Arc<[UserHash]>,
    /// Lowest TSRequest version accepted (5+ means nonce binding).
    pub min_version: u32,
}

/// What to answer after one leg.
pub enum Step {
    /// `401` with `WWW-Authenticate: CredSSP <b64 of these bytes>`.
    Continue(Vec<u8>),
    /// Authentication is complete: `200`, and the session can start.
    Authenticated {
        credentials: DelegatedCredentials,
        channel: Box<SecureChannel>,
    },
    /// Authentication failed: `401`, with this token (a TLS-wrapped TSRequest
    /// carrying an errorCode) when there is one. The errorCode is always
    /// STATUS_LOGON_FAILURE, so the client learns nothing about the cause
    /// (unknown user, wrong password, locked out); `error` has it, for the
    /// audit. `user` is who it claimed to be.
    Rejected {
        token: Option<Vec<u8>>,
        error: CredSspError,
        user: Option<String>,
    },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Continue(t) => write!(f, "Continue({} bytes)", t.len()),
            Step::Authenticated { credentials, .. } => write!(f, "Authenticated({})", credentials.principal()),
            Step::Rejected { error, user, .. } => write!(f, "Rejected({error}, {user:?})"),
        }
    }
}

enum Phase {
    Running,
    Finished,
}

/// Server side of one HTTP-CredSSP exchange, bound to one TCP connection.
pub struct Acceptor {
    config: Arc<AcceptorConfig>,
    tls: Option<Connection>,
    server: Option<CredSspServer<UsersProxy>>,
    mechanism: Option<InnerMechanism>,
    client_version: Option<u32>,
    claimed: Arc<Mutex<Option<Claim>>>,
    /// Who the NTLM AUTHENTICATE message says it is, for the audit of a
    /// failed logon (sspi may refuse before it asks for the user's hash).
    wire_user: Option<String>,
    phase: Phase,
}

impl Acceptor {
    pub fn new(config: Arc<AcceptorConfig>) -> Result<Acceptor, CredSspError> {
        let tls = ServerConnection::new(config.tls.clone()).map_err(|e| CredSspError::Tls(e.to_string()))?;
        Ok(Acceptor {
            config,
            tls: Some(tls.into()),
            server: None,
            mechanism: None,
            client_version: None,
            claimed: Arc::new(Mutex::new(None)),
            wire_user: None,
            phase: Phase::Running,
        })
    }

    /// The inner mechanism the client chose, once known.
    pub fn mechanism(&self) -> Option<InnerMechanism> {
        self.mechanism
    }

    /// Process one leg: `input` is the base64-decoded token of the client's header.
    pub fn step(&mut self, input: &[u8]) -> Step {
        self.step_checked(input, &|_| false)
    }

    /// Like [`Acceptor::step`], but a user for whom `locked_out` answers true
    /// is refused as soon as the NTLM AUTHENTICATE names them, with the same
    /// answer as a wrong password, so a lockout reveals nothing.
    pub fn step_checked(&mut self, input: &[u8], locked_out: &dyn Fn(&str) -> bool) -> Step {
        match self.step_inner(input, locked_out) {
            Ok(step) => step,
            Err((error, token)) => {
                self.phase = Phase::Finished;
                Step::Rejected {
                    token,
                    error,
                    user: self.claimed_user(),
                }
            }
        }
    }

    fn claimed_user(&self) -> Option<String> {
        let verified = self
            .claimed
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|claim| claim.principal.display()));
        verified.or_else(|| self.wire_user.clone())
    }

    fn step_inner(
        &mut self,
        input: &[u8],
        locked_out: &dyn Fn(&str) -> bool,
    ) -> Result<Step, (CredSspError, Option<Vec<u8>>)> {
        if matches!(self.phase, Phase::Finished) {
            return Err((CredSspError::AlreadyFailed, None));
        }
        let tls = self.tls.as_mut().ok_or((CredSspError::AlreadyFailed, None))?;
        let plain = tls::feed(tls, input).map_err(|e| (e, None))?;
        if tls.is_handshaking() || plain.is_empty() {
            // Handshake legs, and with TLS 1.3 the leg that carries the
            // session tickets: pass on whatever TLS wants to send.
            let out = tls::take_output(tls).map_err(|e| (e, None))?;
            return Ok(Step::Continue(out));
        }
        let request = parse_ts_request(&plain).map_err(|e| (e, None))?;
        match self.process(request, locked_out) {
            Ok(Processed::Reply(reply)) => {
                let token = self.seal_ts_request(&reply).map_err(|e| (e, None))?;
                Ok(Step::Continue(token))
            }
            Ok(Processed::Finished(identity)) => {
                let credentials = match self.verify_delegation(identity) {
                    Ok(credentials) => credentials,
                    Err(error) => {
                        let token = self.seal_ts_request(&logon_failure(self.reply_version())).ok();
                        return Err((error, token));
                    }
                };
                self.phase = Phase::Finished;
                let tls = self.tls.take().ok_or((CredSspError::AlreadyFailed, None))?;
                Ok(Step::Authenticated {
                    credentials,
                    channel: Box::new(SecureChannel::new(tls)),
                })
            }
            Err((error, Some(version))) => {
                let token = self.seal_ts_request(&logon_failure(version)).ok();
                Err((error, token))
            }
            Err((error, None)) => Err((error, None)),
        }
    }

    fn seal_ts_request(&mut self, request: &TsRequest) -> Result<Vec<u8>, CredSspError> {
        let mut encoded = Vec::new();
        request
            .encode_ts_request(&mut encoded)
            .map_err(|e| CredSspError::BadTsRequest(e.to_string()))?;
        let tls = self.tls.as_mut().ok_or(CredSspError::AlreadyFailed)?;
        tls::encrypt(tls, &encoded)
    }

    fn process(&mut self, request: TsRequest, locked_out: &dyn Fn(&str) -> bool) -> Result<Processed, Refusal> {
        let reply_version = self.check_version(request.version)?;
        if let Some((domain, user)) = request.nego_tokens.as_deref().and_then(tokens::claimed_ntlm_user) {
            let user = Principal::from_parts(Some(&domain), &user).display();
            self.wire_user = Some(user.clone());
            if locked_out(&user) {
                return Err((CredSspError::LockedOut(user), Some(reply_version)));
            }
        }
        if let Some(pub_key_auth) = &request.pub_key_auth {
            tokens::check_sealed_len("pubKeyAuth", pub_key_auth).map_err(|e| (e, None))?;
        }
        if let Some(auth_info) = &request.auth_info {
            tokens::check_sealed_len("authInfo", auth_info).map_err(|e| (e, None))?;
        }
        if self.server.is_none() {
            let first = request.nego_tokens.as_deref().ok_or((
                CredSspError::BadToken("first TSRequest carries no negotiation token"),
                None,
            ))?;
            let mechanism = classify_first_token(first).map_err(|e| (e, None))?;
            self.server = Some(self.new_server(mechanism, reply_version).map_err(|e| (e, None))?);
            self.mechanism = Some(mechanism);
        }
        let needs_split = self.mechanism == Some(InnerMechanism::Negotiate)
            && request.nego_tokens.is_some()
            && request.pub_key_auth.is_some();
        if needs_split {
            return self.process_spnego_final(request);
        }
        self.run_server(request)
    }

    /// The floor (CVE-2018-0886 hardening) and "never downgrade": the first
    /// TSRequest fixes the client's version; sspi refuses any later change.
    fn check_version(&mut self, client: u32) -> Result<u32, Refusal> {
        let floor = self.config.min_version;
        if client < floor {
            let error = CredSspError::VersionTooLow { client, floor };
            return Err((error, Some(client.min(MAX_TS_REQUEST_VERSION))));
        }
        let first = *self.client_version.get_or_insert(client);
        Ok(first.min(MAX_TS_REQUEST_VERSION))
    }

    fn new_server(&self, mechanism: InnerMechanism, version: u32) -> Result<CredSspServer<UsersProxy>, CredSspError> {
        let proxy = UsersProxy {
            users: self.config.users.clone(),
            claimed: self.claimed.clone(),
        };
        let ntlm = NtlmConfig::new(hostname_for_ntlm());
        let mode = match mechanism {
            InnerMechanism::Negotiate => ServerMode::Negotiate(NegotiateConfig::new(
                Box::new(ntlm),
                Some("ntlm".to_string()),
                hostname_for_ntlm(),
            )),
            InnerMechanism::Ntlm => ServerMode::Ntlm(ntlm),
        };
        CredSspServer::new_with_version(self.config.public_key.clone(), proxy, version, mode)
            .map_err(|e| CredSspError::Authentication(e.to_string()))
    }

    /// sspi workaround: pyspnego sends the NTLM AUTHENTICATE
    /// (with its mechListMIC) and pubKeyAuth in one TSRequest. Processed in one
    /// call, sspi drops the SPNEGO reply token carrying the server's mechListMIC
    /// and seals pubKeyAuth with the wrong sequence number, so the client fails
    /// with "invalid Message Integrity Check". Processing the token first and
    /// the public key second, then merging the replies, gives the right answer.
    fn process_spnego_final(&mut self, request: TsRequest) -> Result<Processed, Refusal> {
        let version = request.version;
        let token_only = TsRequest {
            version,
            nego_tokens: request.nego_tokens.clone(),
            ..TsRequest::default()
        };
        let key_only = TsRequest {
            version,
            pub_key_auth: request.pub_key_auth.clone(),
            client_nonce: request.client_nonce,
            ..TsRequest::default()
        };
        let token_reply = match self.run_server(token_only)? {
            Processed::Reply(reply) => reply,
            Processed::Finished(_) => return Err((CredSspError::BadTsRequest("finished too early".into()), None)),
        };
        match self.run_server(key_only)? {
            Processed::Reply(mut reply) => {
                reply.nego_tokens = token_reply.nego_tokens;
                Ok(Processed::Reply(reply))
            }
            Processed::Finished(_) => Err((CredSspError::BadTsRequest("finished too early".into()), None)),
        }
    }

    fn run_server(&mut self, request: TsRequest) -> Result<Processed, Refusal> {
        let server = self.server.as_mut().ok_or((CredSspError::AlreadyFailed, None))?;
        match contain_panic(|| server.process(request).resolve_to_result()) {
            Err(_) => {
                self.server = None;
                Err((CredSspError::Panicked, None))
            }
            Ok(Ok(ServerState::ReplyNeeded(reply))) => Ok(Processed::Reply(reply)),
            Ok(Ok(ServerState::Finished(identity))) => Ok(Processed::Finished(identity)),
            Ok(Err(ServerError { ts_request, error })) => {
                let answer = ts_request.map(|_| self.reply_version());
                Err((self.classify(error), answer))
            }
        }
    }

    /// The cause of an sspi refusal, for the audit: sspi refuses an unknown
    /// user (checked against a dummy hash) exactly as it refuses a wrong
    /// password, and only the proxy's record of the claim tells them apart.
    fn classify(&self, error: sspi::Error) -> CredSspError {
        let claim = self.claimed.lock().ok().and_then(|c| c.clone());
        match claim {
            Some(Claim {
                principal,
                known: false,
            }) => CredSspError::UnknownUser(principal.display()),
            Some(Claim { principal, known: true }) if error.error_type == sspi::ErrorKind::LogonDenied => {
                CredSspError::WrongPassword(principal.display())
            }
            _ => CredSspError::Authentication(error.to_string()),
        }
    }

    /// The TSRequest version of this exchange's answers.
    fn reply_version(&self) -> u32 {
        self.client_version
            .map_or(MAX_TS_REQUEST_VERSION, |v| v.min(MAX_TS_REQUEST_VERSION))
    }

    /// The delegated identity must be the principal that authenticated, and
    /// its password must be the one in the users file. The second check
    /// matters: sspi verifies NTLM against every candidate hash with the
    /// *wire* user name, so without it one user's password could
    /// authenticate under another user's name.
    fn verify_delegation(&self, mut identity: AuthIdentity) -> Result<DelegatedCredentials, CredSspError> {
        let delegated = Principal::from_username(&identity.username);
        let authenticated = self
            .claimed
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| CredSspError::Authentication("no authenticated principal".into()))?;
        if !authenticated.known {
            return Err(CredSspError::UnknownUser(authenticated.principal.display()));
        }
        let authenticated = authenticated.principal;
        if !authenticated.matches(&delegated) {
            return Err(CredSspError::PrincipalMismatch {
                authenticated: authenticated.display(),
                delegated: delegated.display(),
            });
        }
        let entry = users::find(&self.config.users, &authenticated)
            .ok_or_else(|| CredSspError::Authentication("unknown user".into()))?;
        // Move the password out of sspi's Secret without copying it.
        let password = SecretString::from(std::mem::take(identity.password.as_mut()));
        let delegated_hash = nt_hash(secrecy::ExposeSecret::expose_secret(&password));
        if !hashes_equal(&delegated_hash, &entry.nt_hash) {
            return Err(CredSspError::DelegatedPasswordMismatch(authenticated.display()));
        }
        Ok(DelegatedCredentials::new(
            entry.domain.clone(),
            entry.user.clone(),
            password,
        ))
    }
}

/// A refusal and, when the client is to get an error TSRequest, its version.
type Refusal = (CredSspError, Option<u32>);

enum Processed {
    Reply(TsRequest),
    Finished(AuthIdentity),
}

/// The error TSRequest Windows sends for a refused logon (STATUS_LOGON_FAILURE).
fn logon_failure(version: u32) -> TsRequest {
    TsRequest {
        version,
        error_code: Some(sspi::credssp::NStatusCode::LOGON_FAILURE),
        ..TsRequest::default()
    }
}

/// A TSRequest from the network, a client's or a target's.
fn parse_ts_request(plain: &[u8]) -> Result<TsRequest, CredSspError> {
    contain_panic(|| TsRequest::from_buffer(plain))
        .map_err(|_| CredSspError::Panicked)?
        .map_err(|e| CredSspError::BadTsRequest(e.to_string()))
}

/// NTLM CHALLENGE messages carry a server name; a fixed one avoids
/// disclosing the bastion's host name to unauthenticated clients.
fn hostname_for_ntlm() -> String {
    "WINRM-RELAY".to_string()
}

#[cfg(test)]
mod tests;
