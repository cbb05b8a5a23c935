//! HTTP-CredSSP acceptor (CredSSP over WinRM's `Authorization: CredSSP`).
//!
//! A sans-IO state machine: each call to [`Acceptor::step`] takes the decoded
//! bytes of one `Authorization: CredSSP <b64>` header and says what to answer.
//! The TLS channel is a rustls `ServerConnection` driven in memory; the
//! TSRequest rounds (SPNEGO/NTLM, pubKeyAuth, TSCredentials) run in sspi's
//! `CredSspServer`. The relay adds what sspi leaves out: the version floor,
//! input checks that keep sspi's parsers from panicking, the SPNEGO
//! mechListMIC workaround, raw krb5 tokens rewrapped as SPNEGO, and the check
//! that the delegated credentials belong to the principal that authenticated.

mod channel;
mod initiator;
mod tls;
mod tokens;
mod users;

use std::sync::{Arc, Mutex};

use std::time::Duration;

use rustls::{Connection, ServerConfig, ServerConnection};
use secrecy::SecretString;
use sspi::credssp::{CredSspServer, ServerError, ServerMode, ServerState, TsRequest};
use sspi::kerberos::ServerProperties;
use sspi::ntlm::NtlmConfig;
use sspi::{AuthIdentity, KdcResolution, KerberosConfig, KerberosServerConfig, NegotiateConfig, Secret};
use zeroize::Zeroizing;

pub use channel::SecureChannel;
pub use initiator::Initiator;
pub use tls::SkipCertificateVerification;
pub use tokens::{classify_first_token, unwrap_neg_token_resp, wrap_raw_krb5, wrap_token_for_sspi, InnerMechanism};
pub use users::{hashes_equal, nt_hash, verify_password, LogonRefusal};

use super::guard::contain_panic;
use super::kerberos::service_ticket::{ticket_client, TicketClient};
use crate::identity::{Domain, Principal, PrincipalKey, Sid, UserEntry};
use crate::vault::DelegatedCredentials;
use users::{principal_of, Claim, UsersProxy};

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
    #[error(
        "the Kerberos ticket is for {ticket}, but the delegated credentials are for {delegated} \
         (the security package reported the ticket as {reported})"
    )]
    TicketMismatch {
        ticket: String,
        reported: String,
        delegated: String,
    },
    #[error("delegated password does not match the users file entry of {0}")]
    DelegatedPasswordMismatch(String),
    #[error("{0} is locked out after repeated logon failures")]
    LockedOut(String),
    #[error("the client offered Kerberos, but the relay has no keytab ([kerberos] keytab)")]
    NoKeytab,
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
    pub users: Arc<[UserEntry]>,
    /// Lowest TSRequest version accepted (5+ means nonce binding).
    pub min_version: u32,
    /// The relay's domain (`[kerberos]`), for one name per principal.
    pub domain: Option<Domain>,
    /// The relay's service keys (`[kerberos] keytab`): Kerberos logons.
    pub service_keys: Option<Arc<[ServiceKey]>>,
}

/// One service principal the relay accepts tickets for, with the key the KDC
/// encrypts them with. `Debug` never prints the key.
pub struct ServiceKey {
    /// The name without realm: `["HTTP", "relay.lab.test"]`.
    pub components: Vec<String>,
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceKey({}, <redacted>)", self.components.join("/"))
    }
}

/// Clock difference tolerated between a client and the relay, as Windows
/// and MIT default to.
const MAX_TIME_SKEW: Duration = Duration::from_secs(300);

/// What to answer after one leg.
pub enum Step {
    /// `401` with `WWW-Authenticate: CredSSP <b64 of these bytes>`.
    Continue(Vec<u8>),
    /// Authentication is complete: `200`, and the session can start.
    Authenticated {
        credentials: DelegatedCredentials,
        channel: Box<SecureChannel>,
        /// A Kerberos logon's group SIDs, from its ticket's PAC (see [`TicketClient`]).
        pac_groups: Option<Vec<Sid>>,
    },
    /// Authentication failed: `401`, with this token (a TLS-wrapped TSRequest
    /// carrying an errorCode) when there is one. The errorCode is always
    /// STATUS_LOGON_FAILURE, so the client learns nothing about the cause
    /// (unknown user, wrong password, locked out); `error` has it, for the
    /// audit. `user` is who it claimed to be.
    Rejected {
        token: Option<Vec<u8>>,
        error: CredSspError,
        user: Option<Principal>,
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

/// Where an exchange stands; each state holds only what it needs.
enum State {
    /// The TLS handshake, and any leg before the first TSRequest.
    Handshake { tls: Box<Connection> },
    /// TSRequest rounds in sspi's server, inside the TLS channel.
    Negotiating {
        tls: Box<Connection>,
        server: Box<CredSspServer<UsersProxy>>,
    },
    /// Authenticated (the channel went to the session) or refused: no further leg is taken.
    Done,
}

/// What the client has shown of itself so far: its choices, and who it
/// claimed to be, for the audit of the outcome whatever the state.
#[derive(Default)]
struct Seen {
    mechanism: Option<InnerMechanism>,
    client_version: Option<u32>,
    claimed: Arc<Mutex<Option<Claim>>>,
    /// Who the NTLM AUTHENTICATE message says it is, canonical, for the audit
    /// of a failed logon (sspi may refuse before it asks for the user's hash).
    wire_user: Option<Principal>,
    /// The client a Kerberos ticket names, whole (see [`ticket_client`]).
    ticket_client: Option<TicketClient>,
}

/// Server side of one HTTP-CredSSP exchange, bound to one TCP connection.
pub struct Acceptor {
    config: Arc<AcceptorConfig>,
    state: State,
    seen: Seen,
}

impl Acceptor {
    pub fn new(config: Arc<AcceptorConfig>) -> Result<Acceptor, CredSspError> {
        let tls = ServerConnection::new(config.tls.clone()).map_err(|e| CredSspError::Tls(e.to_string()))?;
        Ok(Acceptor {
            config,
            state: State::Handshake {
                tls: Box::new(tls.into()),
            },
            seen: Seen::default(),
        })
    }

    /// The inner mechanism the client chose, once known.
    pub fn mechanism(&self) -> Option<InnerMechanism> {
        self.seen.mechanism
    }

    /// Process one leg: `input` is the base64-decoded token of the client's header.
    pub fn step(&mut self, input: &[u8]) -> Step {
        self.step_checked(input, &|_| false)
    }

    /// Like [`Acceptor::step`], but a user for whom `locked_out` answers true
    /// is refused as soon as the NTLM AUTHENTICATE names them, with the same
    /// answer as a wrong password, so a lockout reveals nothing. `locked_out`
    /// is asked with the name's canonical key, whatever spelling the client
    /// sent; and again, once sspi has resolved who authenticated.
    pub fn step_checked(&mut self, input: &[u8], locked_out: &dyn Fn(&PrincipalKey) -> bool) -> Step {
        match self.step_inner(input, locked_out) {
            Ok(step) => step,
            Err((error, token)) => {
                self.state = State::Done;
                Step::Rejected {
                    token,
                    error,
                    user: self.claimed_user(),
                }
            }
        }
    }

    /// Who the client claimed to be, canonical: the principal the lockout counts
    /// a refusal against and the audit names.
    fn claimed_user(&self) -> Option<Principal> {
        // A ticket's whole name, where sspi would report its first component only.
        if let Some(ticket) = &self.seen.ticket_client {
            let named = Principal::from_parts(Some(&ticket.realm), &ticket.name.join("/"));
            return Some(named.canonical(self.config.domain.as_ref()));
        }
        let verified = self
            .seen
            .claimed
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|claim| claim.principal.clone()));
        verified.or_else(|| self.seen.wire_user.clone())
    }

    fn step_inner(
        &mut self,
        input: &[u8],
        locked_out: &dyn Fn(&PrincipalKey) -> bool,
    ) -> Result<Step, (CredSspError, Option<Vec<u8>>)> {
        let tls = self.tls().ok_or((CredSspError::AlreadyFailed, None))?;
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
                let credentials = match self.verify_delegation(identity, locked_out) {
                    Ok(credentials) => credentials,
                    Err(error) => {
                        let token = self.seal_ts_request(&logon_failure(self.reply_version())).ok();
                        return Err((error, token));
                    }
                };
                let State::Negotiating { tls, .. } = std::mem::replace(&mut self.state, State::Done) else {
                    return Err((CredSspError::AlreadyFailed, None));
                };
                let pac_groups = self.seen.ticket_client.as_mut().and_then(|t| t.pac_groups.take());
                Ok(Step::Authenticated {
                    credentials,
                    channel: Box::new(SecureChannel::new(*tls)),
                    pac_groups,
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
        let tls = self.tls().ok_or(CredSspError::AlreadyFailed)?;
        tls::encrypt(tls, &encoded)
    }

    /// The TLS channel, while the exchange runs.
    fn tls(&mut self) -> Option<&mut Connection> {
        match &mut self.state {
            State::Handshake { tls } | State::Negotiating { tls, .. } => Some(tls),
            State::Done => None,
        }
    }

    fn process(
        &mut self,
        request: TsRequest,
        locked_out: &dyn Fn(&PrincipalKey) -> bool,
    ) -> Result<Processed, Refusal> {
        let reply_version = self.check_version(request.version)?;
        if let Some((domain, user)) = request.nego_tokens.as_deref().and_then(tokens::claimed_ntlm_user) {
            // Canonical, as sspi's claim is: `LAB.TEST\alice` and `\LAB\alice` are LAB\alice.
            let principal = Principal::from_parts(Some(&domain), &user).canonical(self.config.domain.as_ref());
            self.seen.wire_user = Some(principal.clone());
            if locked_out(&principal.key(self.config.domain.as_ref())) {
                return Err((CredSspError::LockedOut(principal.to_string()), Some(reply_version)));
            }
        }
        if let Some(pub_key_auth) = &request.pub_key_auth {
            tokens::check_sealed_len("pubKeyAuth", pub_key_auth).map_err(|e| (e, None))?;
        }
        if let Some(auth_info) = &request.auth_info {
            tokens::check_sealed_len("authInfo", auth_info).map_err(|e| (e, None))?;
        }
        let mut request = request;
        if matches!(self.state, State::Handshake { .. }) {
            let first = request.nego_tokens.as_deref().ok_or((
                CredSspError::BadToken("first TSRequest carries no negotiation token"),
                None,
            ))?;
            let classified = classify_first_token(first).map_err(|e| (e, None))?;
            if classified.is_kerberos() && self.config.service_keys.is_some() {
                self.seen.ticket_client = self.read_ticket_client(first);
            }
            let mechanism = match classified {
                InnerMechanism::Kerberos if self.config.service_keys.is_none() => {
                    return Err((CredSspError::NoKeytab, Some(reply_version)))
                }
                // Without keys, sspi answers SPNEGO with NTLM, the client's second choice.
                InnerMechanism::NegotiateKerberos if self.config.service_keys.is_none() => InnerMechanism::Negotiate,
                InnerMechanism::Kerberos => {
                    // sspi's Negotiate server would panic on the raw token: it gets it wrapped.
                    request.nego_tokens = Some(wrap_raw_krb5(first));
                    InnerMechanism::Kerberos
                }
                other => other,
            };
            let server = Box::new(self.new_server(mechanism, reply_version).map_err(|e| (e, None))?);
            self.state = match std::mem::replace(&mut self.state, State::Done) {
                State::Handshake { tls } => State::Negotiating { tls, server },
                other => other,
            };
            self.seen.mechanism = Some(mechanism);
        } else if self.seen.mechanism == Some(InnerMechanism::Kerberos) && request.nego_tokens.is_some() {
            // The AP-REQ was the whole raw exchange: nothing would unwrap a second token.
            return Err((
                CredSspError::BadToken("a second Kerberos token after the AP-REQ"),
                Some(reply_version),
            ));
        }
        if self.seen.mechanism.is_some_and(InnerMechanism::is_kerberos) {
            request.pub_key_auth = request.pub_key_auth.as_deref().map(wrap_token_for_sspi);
            request.auth_info = request.auth_info.as_deref().map(wrap_token_for_sspi);
        }
        let needs_split = self.seen.mechanism == Some(InnerMechanism::Negotiate)
            && request.nego_tokens.is_some()
            && request.pub_key_auth.is_some();
        if needs_split {
            return self.process_spnego_final(request);
        }
        let processed = self.run_server(request)?;
        match processed {
            // The raw krb5 client gets the mechanism's own token back (the AP-REP), not SPNEGO.
            Processed::Reply(mut reply) if self.seen.mechanism == Some(InnerMechanism::Kerberos) => {
                reply.nego_tokens = match reply.nego_tokens.take() {
                    Some(spnego) => unwrap_neg_token_resp(&spnego).map_err(|e| (e, Some(reply_version)))?,
                    None => None,
                };
                Ok(Processed::Reply(reply))
            }
            other => Ok(other),
        }
    }

    /// The floor (CVE-2018-0886 hardening) and "never downgrade": the first
    /// TSRequest fixes the client's version; sspi refuses any later change.
    fn check_version(&mut self, client: u32) -> Result<u32, Refusal> {
        let floor = self.config.min_version;
        if client < floor {
            let error = CredSspError::VersionTooLow { client, floor };
            return Err((error, Some(client.min(MAX_TS_REQUEST_VERSION))));
        }
        let first = *self.seen.client_version.get_or_insert(client);
        Ok(first.min(MAX_TS_REQUEST_VERSION))
    }

    fn new_server(&self, mechanism: InnerMechanism, version: u32) -> Result<CredSspServer<UsersProxy>, CredSspError> {
        let proxy = UsersProxy {
            users: self.config.users.clone(),
            claimed: self.seen.claimed.clone(),
            domain: self.config.domain.clone(),
            kerberos: mechanism.is_kerberos(),
        };
        let ntlm = NtlmConfig::new(hostname_for_ntlm());
        let mode = match mechanism {
            InnerMechanism::Negotiate => ServerMode::Negotiate(NegotiateConfig::new(
                Box::new(ntlm),
                Some("ntlm".to_string()),
                hostname_for_ntlm(),
            )),
            InnerMechanism::Ntlm => ServerMode::Ntlm(ntlm),
            InnerMechanism::NegotiateKerberos | InnerMechanism::Kerberos => {
                let keys = self.config.service_keys.as_deref().ok_or(CredSspError::NoKeytab)?;
                ServerMode::Negotiate(NegotiateConfig::new(
                    Box::new(kerberos_acceptor(keys)?),
                    // Kerberos only: the client chose it first, and NTLM
                    // after a Kerberos attempt would be a downgrade.
                    Some("kerberos,!ntlm".to_string()),
                    hostname_for_ntlm(),
                ))
            }
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
        let State::Negotiating { server, .. } = &mut self.state else {
            return Err((CredSspError::AlreadyFailed, None));
        };
        match contain_panic(|| server.process(request).resolve_to_result()) {
            Err(_) => {
                self.state = State::Done;
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
        let claim = self.seen.claimed.lock().ok().and_then(|c| c.clone());
        match claim {
            Some(Claim {
                principal,
                known: false,
            }) => CredSspError::UnknownUser(principal.to_string()),
            Some(Claim { principal, known: true }) if error.error_type == sspi::ErrorKind::LogonDenied => {
                CredSspError::WrongPassword(principal.to_string())
            }
            _ => CredSspError::Authentication(error.to_string()),
        }
    }

    /// The whole client name of the AP-REQ's ticket, decrypted with the
    /// relay's key: sspi reports only its first component.
    fn read_ticket_client(&self, token: &[u8]) -> Option<TicketClient> {
        let keys = self.config.service_keys.as_deref()?;
        let keys: Vec<_> = keys
            .iter()
            .map(|k| (k.components.as_slice(), k.key.as_slice()))
            .collect();
        ticket_client(token, &keys)
    }

    /// The TSRequest version of this exchange's answers.
    fn reply_version(&self) -> u32 {
        self.seen
            .client_version
            .map_or(MAX_TS_REQUEST_VERSION, |v| v.min(MAX_TS_REQUEST_VERSION))
    }

    /// The delegated identity must be the principal that authenticated, and
    /// (NTLM) its password must be the one in the users file. The second check
    /// matters: sspi verifies NTLM against every candidate hash with the
    /// *wire* user name, so without it one user's password could
    /// authenticate under another user's name. A Kerberos principal has no
    /// users-file entry: the domain vouched for it, and the delegated password
    /// is the domain's to check when the relay uses it.
    fn verify_delegation(
        &self,
        mut identity: AuthIdentity,
        locked_out: &dyn Fn(&PrincipalKey) -> bool,
    ) -> Result<DelegatedCredentials, CredSspError> {
        let domain = self.config.domain.as_ref();
        let delegated = principal_of(&identity.username).canonical(domain);
        let authenticated = self
            .seen
            .claimed
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| CredSspError::Authentication("no authenticated principal".into()))?;
        if !authenticated.known {
            return Err(CredSspError::UnknownUser(authenticated.principal.to_string()));
        }
        let authenticated = authenticated.principal;
        // Again under the name sspi resolved: the wire name checked first may be spelled otherwise.
        if locked_out(&authenticated.key(domain)) {
            return Err(CredSspError::LockedOut(authenticated.to_string()));
        }
        if authenticated.key(domain) != delegated.key(domain) {
            return Err(CredSspError::PrincipalMismatch {
                authenticated: authenticated.to_string(),
                delegated: delegated.to_string(),
            });
        }
        if self.seen.mechanism.is_some_and(InnerMechanism::is_kerberos) {
            // The ticket's whole name, not sspi's first component, must be the delegated principal.
            let ticket = self
                .seen
                .ticket_client
                .as_ref()
                .ok_or_else(|| CredSspError::Authentication("the ticket's client name cannot be read".into()))?;
            let named = Principal::from_parts(Some(&ticket.realm), &ticket.name.join("/"));
            if named.key(domain) != delegated.key(domain) {
                return Err(CredSspError::TicketMismatch {
                    ticket: ticket.display(),
                    reported: authenticated.to_string(),
                    delegated: delegated.to_string(),
                });
            }
            let password = SecretString::from(std::mem::take(identity.password.as_mut()));
            return Ok(DelegatedCredentials::from_principal(authenticated, password));
        }
        let entry = users::find(&self.config.users, domain, &authenticated)
            .ok_or_else(|| CredSspError::Authentication("unknown user".into()))?;
        // Move the password out of sspi's Secret without copying it.
        let password = SecretString::from(std::mem::take(identity.password.as_mut()));
        let delegated_hash = nt_hash(secrecy::ExposeSecret::expose_secret(&password));
        if !hashes_equal(&delegated_hash, entry.nt_hash()) {
            return Err(CredSspError::DelegatedPasswordMismatch(authenticated.to_string()));
        }
        Ok(DelegatedCredentials::from_principal(
            entry.principal().clone(),
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

/// sspi's Kerberos acceptor with every service key: a ticket for any of the
/// relay's SPNs is decrypted with that SPN's key. It never needs a KDC for a
/// client's AP-REQ (user-to-user, which would, is refused before sspi).
fn kerberos_acceptor(keys: &[ServiceKey]) -> Result<KerberosServerConfig, CredSspError> {
    let sspi_error = |e: sspi::Error| CredSspError::Authentication(e.to_string());
    let (first, others) = keys.split_first().ok_or(CredSspError::NoKeytab)?;
    fn names(key: &ServiceKey) -> Vec<&str> {
        key.components.iter().map(String::as_str).collect()
    }
    let secret = |key: &ServiceKey| Secret::new(key.key.to_vec());
    let mut properties =
        ServerProperties::new(&names(first), None, MAX_TIME_SKEW, Some(secret(first))).map_err(sspi_error)?;
    for key in others {
        properties
            .add_service_key(&names(key), secret(key))
            .map_err(sspi_error)?;
    }
    Ok(KerberosServerConfig {
        kerberos_config: KerberosConfig {
            kdc_resolution: KdcResolution::KdcUrl(None),
            client_computer_name: hostname_for_ntlm(),
        },
        server_properties: properties,
    })
}

/// NTLM CHALLENGE messages carry a server name; a fixed one avoids
/// disclosing the bastion's host name to unauthenticated clients.
fn hostname_for_ntlm() -> String {
    "WINRM-RELAY".to_string()
}

#[cfg(test)]
mod tests;
