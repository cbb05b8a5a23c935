//! The relay authenticating to a target as the caller with Kerberos: sspi's Negotiate
//! client limited to Kerberos (SPNEGO-wrapped, as Windows' WinRM client sends it), then
//! Kerberos wrap tokens for the WS-Man bodies.
//!
//! Each handshake step is a [`KdcConversation`] ([`KerberosClient::step`]): it answers
//! sspi's KDC requests from the session's tickets where they can ([`tickets`]) and asks
//! the caller for the rest, ending with the token for the target. No KDC is looked up in
//! /etc/krb5.conf, DNS or the environment: the URL sspi is configured with only names
//! the realm, and the caller decides where the requests go.

use std::time::SystemTime;

use sspi::generator::GeneratorState;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, CredentialsBuffers, EncryptionFlags,
    KerberosConfig, Negotiate, NegotiateConfig, SecurityBuffer, SecurityBufferRef, SecurityStatus, Sspi, Username,
};

use super::ap_options::fix_channel_binding_mark;
use super::exchange::{Finished, InitInput, InitState, InitStep, KdcConversation, KdcReply, KdcTurn};
use super::refusal::{refusal, target_refusal, KdcRefusal, TargetRefusal};
use super::tickets::{self, classify_request, unframe, KdcRequest};
use crate::identity::Domain;
use crate::proto::guard::{contain_panic, Panicked};
use crate::proto::http_auth::sec_channel_bindings;
#[cfg(doc)]
use crate::proto::http_auth::tls_server_end_point;
use crate::proto::sealing::SealedPart;
use crate::vault::DelegatedCredentials;

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

/// The caller's name in `realm` when their delegated account is one of its accounts:
/// `LAB\alice`, `LAB.TEST\alice` and `alice@LAB.TEST` (any case) all are `alice`.
pub fn realm_user(credentials: &DelegatedCredentials, realm: &Domain) -> Option<String> {
    let (user, domain) = (credentials.user(), credentials.domain());
    let in_realm = |name: &str| realm.is_named(name);
    match user.rsplit_once('@') {
        Some((name, suffix)) if !name.is_empty() && realm.realm.eq_ignore_ascii_case(suffix) => {
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
    /// sspi's context; inside the running step while one runs, gone once broken.
    ctx: Option<Negotiate>,
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

impl KerberosClient {
    /// A context for `credentials` (an account of `realm`) towards the service `spn`.
    pub fn new(credentials: &DelegatedCredentials, realm: &Domain, spn: &str) -> Result<Self, KerberosError> {
        let user = realm_user(credentials, realm).ok_or_else(|| KerberosError::NotInRealm {
            account: credentials.principal(),
            realm: realm.realm.clone(),
            netbios: realm.netbios.clone(),
        })?;
        // sspi only puts this URL into the requests it hands over; the caller decides
        // where they go. Without a URL sspi would look for a KDC itself.
        let kerberos = KerberosConfig::new_with_kdc_url(&format!("tcp://{}:88", realm.realm), "WINRM-RELAY".into());
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
            username: Username::new(&user, Some(&realm.realm.to_ascii_uppercase())).map_err(sspi_err)?,
            password: credentials.expose_password().to_string().into(),
        });
        let acquired = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ctx)
            .map_err(sspi_err)?;
        Ok(Self {
            ctx: Some(ctx),
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

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// The next step of the handshake, to be run as a [`KdcConversation`]. The first
    /// (`server_token` `None`) gets the tickets (from the session's, or from the KDC) and
    /// ends with the AP-REQ; the next one takes the target's answer (the AP-REP on its
    /// final `200`). Its outcome is the next token to send, or `None` once the context is
    /// established.
    pub fn step<'a>(
        &'a mut self,
        server_token: Option<&[u8]>,
        credentials: &'a DelegatedCredentials,
    ) -> ClientStep<'a> {
        ClientStep {
            client: self,
            credentials,
            server_token: server_token.map(<[u8]>::to_vec),
            first: false,
            call: None,
            asked: None,
            refused: None,
        }
    }

    /// The AP-REQ of a channel-bound context with its binding marked as acceptors read it
    /// (see [`fix_channel_binding_mark`]); as sspi made it when there is nothing to mend.
    fn mark_channel_binding(&mut self, token: Vec<u8>) -> Result<Vec<u8>, KerberosError> {
        let ctx = self.ctx.as_ref().ok_or(KerberosError::Panicked)?;
        let key = contain_panic(|| ctx.query_context_session_key());
        let key = self.unbroken(key)?.map_err(sspi_err)?;
        Ok(fix_channel_binding_mark(&token, key.session_key.as_ref()).unwrap_or(token))
    }

    /// The established context, for sealing.
    fn context(&mut self) -> Result<&mut Negotiate, KerberosError> {
        match (self.state, self.ctx.as_mut()) {
            (State::Established, Some(ctx)) => Ok(ctx),
            (State::Initial | State::InProgress, _) => Err(KerberosError::Incomplete),
            (State::Established | State::Broken, _) => Err(KerberosError::Panicked),
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
        let ctx = self.context()?;
        let sizes = contain_panic(|| ctx.query_context_sizes());
        let header_len = self.unbroken(sizes)?.map_err(sspi_err)?.security_trailer as usize;
        let mut header = vec![0u8; header_len];
        let mut data = plain.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut header),
            SecurityBufferRef::data_buf(&mut data),
        ];
        let ctx = self.context()?;
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
        self.context()?;
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
        let ctx = self.context()?;
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

/// One step of a [`KerberosClient`]'s handshake ([`KerberosClient::step`]). Dropped
/// half-way (no KDC answered), it leaves the client unusable, as any failed step does.
pub struct ClientStep<'a> {
    client: &'a mut KerberosClient,
    credentials: &'a DelegatedCredentials,
    server_token: Option<Vec<u8>>,
    /// This step makes the AP-REQ.
    first: bool,
    /// sspi's call, while it runs.
    call: Option<InitStep<Negotiate>>,
    /// The request the KDC was asked: its answer is kept for the session.
    asked: Option<KdcRequest>,
    /// Why the KDC refused, when it did: sspi's own error says less.
    refused: Option<KdcRefusal>,
}

impl KdcConversation for ClientStep<'_> {
    type Outcome = Result<Option<Vec<u8>>, KerberosError>;

    fn start(&mut self) -> KdcTurn<Self::Outcome> {
        let client = &mut *self.client;
        self.first = match client.state {
            State::Established => return KdcTurn::Done(Ok(None)),
            State::Broken => return KdcTurn::Done(Err(KerberosError::Panicked)),
            State::InProgress if self.server_token.is_none() => return KdcTurn::Done(Err(KerberosError::Incomplete)),
            State::Initial => true,
            State::InProgress => false,
        };
        // Unusable after anything but success below.
        client.state = State::Broken;
        let Some(ctx) = client.ctx.take() else {
            return KdcTurn::Done(Err(KerberosError::Panicked));
        };
        // sspi wants input buffers even before the target said anything.
        let mut buffers = vec![SecurityBuffer::new(
            self.server_token.clone().unwrap_or_default(),
            BufferType::Token,
        )];
        if let Some(bindings) = &client.channel_bindings {
            buffers.push(SecurityBuffer::new(bindings.clone(), BufferType::ChannelBindings));
        }
        let input = InitInput {
            target_name: client.spn.clone(),
            flags: ClientRequestFlags::CONFIDENTIALITY
                | ClientRequestFlags::INTEGRITY
                | ClientRequestFlags::MUTUAL_AUTH,
            buffers,
        };
        let call = self.call.insert(InitStep::new(ctx, client.handle.take(), input));
        let state = call.start();
        self.advance(state)
    }

    fn answer(&mut self, reply: KdcReply) -> KdcTurn<Self::Outcome> {
        let framed = reply.into_framed();
        if let Some(asked) = self.asked.take() {
            // Kept for the session's next connections.
            tickets::keep(
                &mut self.credentials.tickets(),
                &asked,
                &framed,
                self.credentials.expose_password(),
            );
            self.refused = unframe(&framed).and_then(|message| refusal(&asked, message));
        }
        let Some(call) = self.call.as_mut() else {
            return KdcTurn::Done(Err(KerberosError::Incomplete));
        };
        let state = call.resume(framed);
        self.advance(state)
    }
}

impl ClientStep<'_> {
    /// Answers sspi's requests from the session's tickets while they can, then asks
    /// the KDC, or ends the step.
    fn advance(
        &mut self,
        mut state: Result<InitState<Negotiate>, Panicked>,
    ) -> KdcTurn<<Self as KdcConversation>::Outcome> {
        loop {
            let request = match state {
                Err(Panicked) => return KdcTurn::Done(Err(KerberosError::Panicked)),
                Ok(GeneratorState::Completed(finished)) => return KdcTurn::Done(self.finish(finished)),
                Ok(GeneratorState::Suspended(request)) => request,
            };
            let asked = classify_request(&request.data);
            let now = (self.client.clock)();
            let kept = tickets::kept_reply(&self.credentials.tickets(), &asked, now);
            let (Some(reply), Some(call)) = (kept, self.call.as_mut()) else {
                self.asked = Some(asked);
                return KdcTurn::Ask(request);
            };
            self.refused = unframe(&reply).and_then(|message| refusal(&asked, message));
            state = call.resume(reply);
        }
    }

    fn finish(&mut self, finished: Finished<Negotiate>) -> Result<Option<Vec<u8>>, KerberosError> {
        let Finished {
            ctx,
            handle,
            result,
            token,
        } = finished;
        self.call = None;
        let result = match (result, self.refused.take()) {
            (Ok(result), _) => result,
            (Err(_), Some(refusal)) => return Err(KerberosError::Refused(refusal)),
            (Err(error), None) => {
                let by_target = self
                    .server_token
                    .as_deref()
                    .and_then(|token| target_refusal(token, &self.client.spn));
                return Err(by_target.map_or_else(|| sspi_err(error), KerberosError::TargetRefused));
            }
        };
        let client = &mut *self.client;
        client.ctx = Some(ctx);
        client.handle = handle;
        match result.status {
            SecurityStatus::Ok => {
                client.state = State::Established;
                // The context keeps its session key; the password copy is not needed.
                client.handle = None;
                Ok((!token.is_empty()).then_some(token))
            }
            SecurityStatus::ContinueNeeded => {
                let token = if self.first && client.channel_bindings.is_some() {
                    client.mark_channel_binding(token)?
                } else {
                    token
                };
                client.state = State::InProgress;
                Ok(Some(token))
            }
            other => Err(KerberosError::Sspi(format!("unexpected status {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests;
