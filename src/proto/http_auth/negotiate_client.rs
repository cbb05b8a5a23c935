//! The relay authenticating to a target as the caller: SPNEGO-wrapped NTLM
//! through sspi, then SPNEGO session encryption of the WS-Man bodies.

use sspi::ntlm::NtlmConfig;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, CredentialsBuffers, DataRepresentation,
    EncryptionFlags, Negotiate, NegotiateConfig, SecurityBuffer, SecurityBufferRef, SecurityStatus, Sspi, SspiImpl,
    Username,
};

use super::HttpAuthError;
use crate::proto::sealing::SealedPart;
use crate::vault::DelegatedCredentials;

const SIGNATURE_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Initial,
    InProgress,
    Established,
}

/// Client context for one authenticated target connection.
pub struct NegotiateClient {
    ctx: Negotiate,
    handle: Option<CredentialsBuffers>,
    target_name: String,
    state: State,
    /// SEC_CHANNEL_BINDINGS for `tls-server-end-point` when the connection
    /// runs over TLS (targets with CbtHardeningLevel=Strict require it).
    channel_bindings: Option<Vec<u8>>,
}

impl std::fmt::Debug for NegotiateClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NegotiateClient")
            .field("target_name", &self.target_name)
            .field("state", &self.state)
            .finish()
    }
}

fn sspi_err(e: impl std::fmt::Display) -> HttpAuthError {
    HttpAuthError::Sspi(e.to_string())
}

impl NegotiateClient {
    /// `host` names the target for the SPN `HTTP/<host>`.
    pub fn new(credentials: &DelegatedCredentials, host: &str) -> Result<Self, HttpAuthError> {
        // Pinned to NTLM: with no package list sspi prefers Kerberos whenever
        // it finds a KDC, and the relay does not speak to KDCs (yet).
        let config = NegotiateConfig::new(
            Box::new(NtlmConfig::new("WINRM-RELAY".to_string())),
            Some("ntlm".to_string()),
            "WINRM-RELAY".to_string(),
        );
        let mut ctx = Negotiate::new_client(config).map_err(sspi_err)?;
        let username = Username::new(credentials.user(), Some(credentials.domain())).map_err(sspi_err)?;
        let identity = Credentials::AuthIdentity(AuthIdentity {
            username,
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
            target_name: format!("HTTP/{host}"),
            state: State::Initial,
            channel_bindings: None,
        })
    }

    /// Bind the authentication to the TLS channel (`tls-server-end-point`
    /// channel bindings): `certificate_hash` is the hash of the target's
    /// certificate, see [`super::tls_server_end_point`].
    pub fn with_channel_bindings(mut self, certificate_hash: &[u8]) -> Self {
        self.channel_bindings = Some(super::sec_channel_bindings(certificate_hash));
        self
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Advance the handshake. `server_token` is `None` for the first leg and
    /// the target's `WWW-Authenticate: Negotiate` token afterwards, including
    /// the one on the final `200` (accept-completed + mechListMIC), which must
    /// be consumed before any decryption. Returns the next token to send, or
    /// `None` once the context is established.
    pub fn step(&mut self, server_token: Option<&[u8]>) -> Result<Option<Vec<u8>>, HttpAuthError> {
        if self.state == State::Established {
            return Ok(None);
        }
        if self.state == State::InProgress && server_token.is_none() {
            return Err(HttpAuthError::Incomplete);
        }
        let mut input = vec![SecurityBuffer::new(
            server_token.unwrap_or_default().to_vec(),
            BufferType::Token,
        )];
        if let Some(bindings) = &self.channel_bindings {
            input.push(SecurityBuffer::new(bindings.clone(), BufferType::ChannelBindings));
        }
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let target_name = self.target_name.clone();
        let mut builder = self
            .ctx
            .initialize_security_context()
            .with_credentials_handle(&mut self.handle)
            .with_context_requirements(
                ClientRequestFlags::CONFIDENTIALITY | ClientRequestFlags::INTEGRITY | ClientRequestFlags::MUTUAL_AUTH,
            )
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&target_name)
            .with_output(&mut output);
        if server_token.is_some() {
            builder = builder.with_input(&mut input);
        }
        let result = self
            .ctx
            .initialize_security_context_impl(&mut builder)
            .map_err(sspi_err)?
            .resolve_to_result()
            .map_err(sspi_err)?;
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        match result.status {
            SecurityStatus::Ok => {
                self.state = State::Established;
                // The context keeps its session keys; the credentials handle
                // (a copy of the password) is no longer needed.
                self.handle = None;
                Ok((!token.is_empty()).then_some(token))
            }
            SecurityStatus::ContinueNeeded => {
                self.state = State::InProgress;
                Ok(Some(token))
            }
            SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue => {
                self.ctx.complete_auth_token(&mut output).map_err(sspi_err)?;
                self.state = State::InProgress;
                Ok(Some(token))
            }
            other => Err(HttpAuthError::Sspi(format!("unexpected status {other:?}"))),
        }
    }

    /// Seal one body: the part carries the 16-byte NTLM signature then the
    /// sealed bytes, with 16 in the u32 prefix.
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, HttpAuthError> {
        let mut signature = [0u8; SIGNATURE_LEN];
        let mut data = plain.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx
            .encrypt_message(EncryptionFlags::empty(), &mut buffers)
            .map_err(sspi_err)?;
        let mut sealed = Vec::with_capacity(SIGNATURE_LEN + data.len());
        sealed.extend_from_slice(&signature);
        sealed.extend_from_slice(&data);
        Ok(SealedPart {
            original_length: plain.len(),
            header_len: SIGNATURE_LEN as u32,
            data: sealed,
        })
    }

    pub fn unseal(&mut self, part: &SealedPart) -> Result<Vec<u8>, HttpAuthError> {
        let sig_len = part.header_len as usize;
        if sig_len != SIGNATURE_LEN || part.data.len() < sig_len {
            return Err(HttpAuthError::BadSealedMessage("signature length is not 16"));
        }
        let (signature, sealed) = part.data.split_at(sig_len);
        if sealed.len() != part.original_length {
            return Err(HttpAuthError::BadSealedMessage(
                "sealed length differs from OriginalContent Length",
            ));
        }
        let mut signature = signature.to_vec();
        let mut data = sealed.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx.decrypt_message(&mut buffers).map_err(sspi_err)?;
        Ok(data)
    }
}
