//! The relay authenticating to a target as the caller with Kerberos: sspi's Negotiate
//! client limited to Kerberos (SPNEGO-wrapped, as Windows' WinRM client sends it), its
//! KDC traffic carried by the caller's [`KdcExchange`] and answered from the session's
//! tickets where they can ([`tickets`]), then RFC 4121 wrap tokens for the WS-Man
//! bodies.
//!
//! sspi drives the KDC exchanges as a generator: each step suspends with a request for
//! the KDC and resumes with the answer. This module steps it and hands every request to
//! the transport, so no KDC is looked up in /etc/krb5.conf, DNS or the environment: the
//! URL sspi is configured with only names the realm.

use std::future::Future;
use std::time::SystemTime;

use sspi::generator::GeneratorState;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, CredentialsBuffers, DataRepresentation,
    EncryptionFlags, KerberosConfig, Negotiate, NegotiateConfig, SecurityBuffer, SecurityBufferRef, SecurityStatus,
    Sspi, SspiImpl, Username,
};

use super::ap_options::fix_channel_binding_mark;
use super::refusal::{refusal, target_refusal, KdcRefusal, TargetRefusal};
use super::tickets::{self, classify_request, unframe};
use crate::proto::guard::{contain_panic, Panicked};
use crate::proto::http_auth::sec_channel_bindings;
#[cfg(doc)]
use crate::proto::http_auth::tls_server_end_point;
use crate::proto::sealing::SealedPart;
use crate::vault::DelegatedCredentials;

/// Carries one KDC message to the realm's KDCs and back; the caller does the IO.
pub trait KdcExchange {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Send `request` and return the reply; both carry the 4-byte length prefix of
    /// Kerberos over TCP, whatever the transport to the KDC.
    fn exchange(&mut self, request: &[u8]) -> impl Future<Output = Result<Vec<u8>, Self::Error>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum KerberosError {
    #[error(transparent)]
    Refused(#[from] KdcRefusal),
    #[error(transparent)]
    TargetRefused(#[from] TargetRefusal),
    #[error("{account} is not an account of the realm {realm} (NetBIOS name {netbios}): it cannot use Kerberos")]
    NotInRealm {
        account: String,
        realm: String,
        netbios: String,
    },
    #[error("security package: {0}")]
    Sspi(String),
    #[error("the target did not complete Kerberos authentication")]
    Incomplete,
    #[error("sealed message is malformed: {0}")]
    BadSealedMessage(&'static str),
    #[error("the security package panicked on the KDC's or the target's input; the context is unusable")]
    Panicked,
}

/// A failed step: the transport could not reach a KDC, or Kerberos itself failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Kdc(E),
    #[error(transparent)]
    Kerberos(#[from] KerberosError),
}

/// The realm accounts are checked against: its DNS name (`LAB.TEST`) and NetBIOS name (`LAB`).
#[derive(Debug, Clone, Copy)]
pub struct Realm<'a> {
    pub name: &'a str,
    pub netbios: &'a str,
}

/// The caller's name in `realm` when their delegated account is one of its accounts:
/// `LAB\alice`, `LAB.TEST\alice` and `alice@LAB.TEST` (any case) all are `alice`.
pub fn realm_user(credentials: &DelegatedCredentials, realm: Realm<'_>) -> Option<String> {
    let (user, domain) = (credentials.user(), credentials.domain());
    let in_realm = |name: &str| name.eq_ignore_ascii_case(realm.name) || name.eq_ignore_ascii_case(realm.netbios);
    match user.rsplit_once('@') {
        Some((name, suffix)) if !name.is_empty() && realm.name.eq_ignore_ascii_case(suffix) => {
            (domain.is_empty() || in_realm(domain)).then(|| name.to_string())
        }
        Some(_) => None,
        None => (!user.is_empty() && in_realm(domain)).then(|| user.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Initial,
    InProgress,
    Established,
    /// sspi failed or panicked half-way: its context is not used again.
    Broken,
}

/// Client context for one authenticated target connection.
pub struct KerberosClient {
    ctx: Negotiate,
    handle: Option<CredentialsBuffers>,
    spn: String,
    state: State,
    /// SEC_CHANNEL_BINDINGS for `tls-server-end-point` over TLS.
    channel_bindings: Option<Vec<u8>>,
    /// What time it is, for the tickets' end times.
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for KerberosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KerberosClient")
            .field("spn", &self.spn)
            .field("state", &self.state)
            .finish()
    }
}

fn sspi_err(e: impl std::fmt::Display) -> KerberosError {
    KerberosError::Sspi(e.to_string())
}

impl From<Panicked> for KerberosError {
    fn from(_: Panicked) -> Self {
        KerberosError::Panicked
    }
}

impl KerberosClient {
    /// A context for `credentials` (an account of `realm`) towards the service `spn`.
    pub fn new(credentials: &DelegatedCredentials, realm: Realm<'_>, spn: &str) -> Result<Self, KerberosError> {
        let user = realm_user(credentials, realm).ok_or_else(|| KerberosError::NotInRealm {
            account: credentials.principal(),
            realm: realm.name.to_string(),
            netbios: realm.netbios.to_string(),
        })?;
        // sspi only puts this URL into the requests it hands over; the transport decides
        // where they go. Without a URL sspi would look for a KDC itself.
        let kerberos = KerberosConfig::new_with_kdc_url(&format!("tcp://{}:88", realm.name), "WINRM-RELAY".into());
        // Kerberos only: a silent fall back to NTLM would defeat a target that refuses NTLM
        // and hide why Kerberos failed.
        let config = NegotiateConfig::new(
            Box::new(kerberos),
            Some("kerberos,!ntlm".to_string()),
            "WINRM-RELAY".to_string(),
        );
        let mut ctx = Negotiate::new_client(config).map_err(sspi_err)?;
        // Down-level name with the realm as domain: sspi takes the realm from it and
        // asks for a TGT of `user@REALM`.
        let identity = Credentials::AuthIdentity(AuthIdentity {
            username: Username::new(&user, Some(&realm.name.to_ascii_uppercase())).map_err(sspi_err)?,
            password: credentials.expose_password().to_string().into(),
        });
        let acquired = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ctx)
            .map_err(sspi_err)?;
        Ok(Self {
            ctx,
            handle: acquired.credentials_handle,
            spn: spn.to_string(),
            state: State::Initial,
            channel_bindings: None,
            clock: SystemTime::now,
        })
    }

    /// The same client on another clock (recorded tickets are good at recorded times).
    #[cfg(test)]
    fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// Bind the authentication to the TLS channel (`tls-server-end-point` channel
    /// bindings): `end_point` is [`tls_server_end_point`] of the target's certificate.
    pub fn with_channel_bindings(mut self, end_point: &[u8]) -> Self {
        self.channel_bindings = Some(sec_channel_bindings(end_point));
        self
    }

    pub fn spn(&self) -> &str {
        &self.spn
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Advance the handshake. The first step (`server_token` `None`) gets the tickets (from
    /// the session's, or from the KDC through `kdc`) and returns the AP-REQ; the next one
    /// takes the target's answer (the AP-REP on its final `200`). Returns the next token
    /// to send, or `None` once the context is established.
    pub async fn step<K: KdcExchange>(
        &mut self,
        server_token: Option<&[u8]>,
        credentials: &DelegatedCredentials,
        kdc: &mut K,
    ) -> Result<Option<Vec<u8>>, StepError<K::Error>> {
        let first = match self.state {
            State::Established => return Ok(None),
            State::Broken => return Err(KerberosError::Panicked.into()),
            State::InProgress if server_token.is_none() => return Err(KerberosError::Incomplete.into()),
            State::Initial => true,
            State::InProgress => false,
        };
        // Unusable after anything but success below.
        self.state = State::Broken;
        let mut input = vec![SecurityBuffer::new(
            server_token.unwrap_or_default().to_vec(),
            BufferType::Token,
        )];
        if let Some(bindings) = &self.channel_bindings {
            input.push(SecurityBuffer::new(bindings.clone(), BufferType::ChannelBindings));
        }
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        // Why the KDC refused, when it did: sspi's own error says less.
        let mut refused: Option<KdcRefusal> = None;
        let result = {
            let Self {
                ctx,
                handle,
                spn,
                clock,
                ..
            } = self;
            // sspi wants input buffers even before the target said anything.
            let mut builder = ctx
                .initialize_security_context()
                .with_credentials_handle(handle)
                .with_context_requirements(
                    ClientRequestFlags::CONFIDENTIALITY
                        | ClientRequestFlags::INTEGRITY
                        | ClientRequestFlags::MUTUAL_AUTH,
                )
                .with_target_data_representation(DataRepresentation::Native)
                .with_target_name(spn)
                .with_input(&mut input)
                .with_output(&mut output);
            let mut generator = contain_panic(|| ctx.initialize_security_context_impl(&mut builder))
                .map_err(KerberosError::from)?
                .map_err(sspi_err)?;
            let mut state = contain_panic(|| generator.start()).map_err(KerberosError::from)?;
            loop {
                match state {
                    GeneratorState::Completed(result) => break result,
                    GeneratorState::Suspended(request) => {
                        let reply = kdc_reply(&request.data, credentials, kdc, clock()).await?;
                        refused =
                            unframe(&reply).and_then(|message| refusal(&classify_request(&request.data), message));
                        state = contain_panic(|| generator.resume(Ok(reply))).map_err(KerberosError::from)?;
                    }
                }
            }
        };
        let result = match (result, refused) {
            (Ok(result), _) => result,
            (Err(_), Some(refusal)) => return Err(KerberosError::Refused(refusal).into()),
            (Err(error), None) => {
                let by_target = server_token.and_then(|token| target_refusal(token, &self.spn));
                return Err(by_target
                    .map_or_else(|| sspi_err(error), KerberosError::TargetRefused)
                    .into());
            }
        };
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        match result.status {
            SecurityStatus::Ok => {
                self.state = State::Established;
                // The context keeps its session key; the password copy is not needed.
                self.handle = None;
                Ok((!token.is_empty()).then_some(token))
            }
            SecurityStatus::ContinueNeeded => {
                let token = if first && self.channel_bindings.is_some() {
                    self.mark_channel_binding(token)?
                } else {
                    token
                };
                self.state = State::InProgress;
                Ok(Some(token))
            }
            other => Err(KerberosError::Sspi(format!("unexpected status {other:?}")).into()),
        }
    }

    /// The AP-REQ of a channel-bound context with its binding marked as acceptors read it
    /// (see [`fix_channel_binding_mark`]); as sspi made it when there is nothing to mend.
    fn mark_channel_binding(&mut self, token: Vec<u8>) -> Result<Vec<u8>, KerberosError> {
        let ctx = &self.ctx;
        let key = self
            .unbroken(contain_panic(|| ctx.query_context_session_key()))?
            .map_err(sspi_err)?;
        Ok(fix_channel_binding_mark(&token, key.session_key.as_ref()).unwrap_or(token))
    }

    fn check_established(&self) -> Result<(), KerberosError> {
        match self.state {
            State::Established => Ok(()),
            State::Broken => Err(KerberosError::Panicked),
            State::Initial | State::InProgress => Err(KerberosError::Incomplete),
        }
    }

    /// A panic leaves the context unusable: say so now and at every later call.
    fn unbroken<T>(&mut self, outcome: Result<T, Panicked>) -> Result<T, KerberosError> {
        outcome.map_err(|_| {
            self.state = State::Broken;
            KerberosError::Panicked
        })
    }

    /// Seal one body as a wrap token: the part carries the token's header (its length
    /// in the u32 prefix), then the encrypted data.
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, KerberosError> {
        self.check_established()?;
        let ctx = &mut self.ctx;
        let sizes = contain_panic(|| ctx.query_context_sizes());
        let header_len = self.unbroken(sizes)?.map_err(sspi_err)?.security_trailer as usize;
        let mut header = vec![0u8; header_len];
        let mut data = plain.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut header),
            SecurityBufferRef::data_buf(&mut data),
        ];
        let ctx = &mut self.ctx;
        let outcome = contain_panic(|| ctx.encrypt_message(EncryptionFlags::empty(), &mut buffers));
        self.unbroken(outcome)?.map_err(sspi_err)?;
        let (header, data) = (buffers[0].data(), buffers[1].data());
        let mut sealed = Vec::with_capacity(header.len() + data.len());
        sealed.extend_from_slice(header);
        sealed.extend_from_slice(data);
        Ok(SealedPart {
            original_length: plain.len(),
            header_len: u32::try_from(header.len()).map_err(|_| KerberosError::BadSealedMessage("header too long"))?,
            data: sealed,
        })
    }

    /// Unseal one part of a target's body: the wrap token's header, then its encrypted
    /// data and padding.
    pub fn unseal(&mut self, part: &SealedPart) -> Result<Vec<u8>, KerberosError> {
        self.check_established()?;
        let (header, encrypted) = part
            .split_header()
            .ok_or(KerberosError::BadSealedMessage("header length exceeds the part"))?;
        if header.is_empty() {
            return Err(KerberosError::BadSealedMessage("no wrap token header"));
        }
        let mut header = header.to_vec();
        let mut data = encrypted.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut header),
            SecurityBufferRef::data_buf(&mut data),
        ];
        let ctx = &mut self.ctx;
        let outcome = contain_panic(|| ctx.decrypt_message(&mut buffers));
        self.unbroken(outcome)?.map_err(sspi_err)?;
        let plain = buffers[1].data();
        if plain.len() != part.original_length {
            return Err(KerberosError::BadSealedMessage(
                "decrypted length differs from OriginalContent Length",
            ));
        }
        Ok(plain.to_vec())
    }
}

/// The answer to one of sspi's KDC requests: from the session's tickets when they hold
/// it, otherwise from the KDC (and then kept for the session's next connections).
async fn kdc_reply<K: KdcExchange>(
    request: &[u8],
    credentials: &DelegatedCredentials,
    kdc: &mut K,
    now: SystemTime,
) -> Result<Vec<u8>, StepError<K::Error>> {
    let asked = classify_request(request);
    let kept = tickets::kept_reply(&credentials.tickets(), &asked, now);
    if let Some(reply) = kept {
        return Ok(reply);
    }
    let reply = kdc.exchange(request).await.map_err(StepError::Kdc)?;
    tickets::keep(
        &mut credentials.tickets(),
        &asked,
        &reply,
        credentials.expose_password(),
    );
    Ok(reply)
}

#[cfg(test)]
mod tests;
