//! The relay authenticating to a target as the caller: SPNEGO-wrapped NTLM
//! through sspi, then SPNEGO session encryption of the WS-Man bodies by
//! [`NtlmSealing`], which takes over from sspi once the handshake is done.

use sspi::ntlm::NtlmConfig;
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, Credentials, CredentialsBuffers, DataRepresentation,
    EncryptionFlags, Negotiate, NegotiateConfig, SecurityBuffer, SecurityBufferRef, SecurityStatus, Sspi, SspiImpl,
    Username,
};

use super::ntlm_sealing::{ChecksumSealed, NtlmSealing, SIGNATURE_LEN};
use super::HttpAuthError;
use crate::proto::guard::{contain_panic, Panicked};
use crate::proto::sealing::SealedPart;
use crate::vault::DelegatedCredentials;

/// What sspi seals on a copy of its context at the hand-over.
const PROBE: &[u8] = b"winrm-relay takes over NTLM sealing";

enum State {
    /// sspi's context until it is established; `started` once the first
    /// token has gone out.
    Handshake {
        ctx: Box<Negotiate>,
        handle: Option<CredentialsBuffers>,
        started: bool,
    },
    /// The session keys, and nothing else of the handshake (no password).
    Established(Box<NtlmSealing>),
    /// sspi panicked: its context may be half-updated, so it is never used again.
    Poisoned,
}

/// Client context for one authenticated target connection.
pub struct NegotiateClient {
    state: State,
    target_name: String,
    /// SEC_CHANNEL_BINDINGS for `tls-server-end-point` when the connection
    /// runs over TLS (targets with CbtHardeningLevel=Strict require it).
    channel_bindings: Option<Vec<u8>>,
}

impl std::fmt::Debug for NegotiateClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Handshake { started: false, .. } => "initial",
            State::Handshake { started: true, .. } => "in progress",
            State::Established(_) => "established",
            State::Poisoned => "poisoned",
        };
        f.debug_struct("NegotiateClient")
            .field("target_name", &self.target_name)
            .field("state", &state)
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
        // it finds a KDC; Kerberos targets have their own client.
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
            state: State::Handshake {
                ctx: Box::new(ctx),
                handle: acquired.credentials_handle,
                started: false,
            },
            target_name: format!("HTTP/{host}"),
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
        matches!(self.state, State::Established(_))
    }

    /// Advance the handshake. `server_token` is `None` for the first leg and
    /// the target's `WWW-Authenticate: Negotiate` token afterwards, including
    /// the one on the final `200` (accept-completed + mechListMIC), which must
    /// be consumed before any decryption. Returns the next token to send, or
    /// `None` once the context is established.
    pub fn step(&mut self, server_token: Option<&[u8]>) -> Result<Option<Vec<u8>>, HttpAuthError> {
        let State::Handshake { ctx, handle, started } = &mut self.state else {
            return match self.state {
                State::Established(_) => Ok(None),
                _ => Err(HttpAuthError::Panicked),
            };
        };
        if *started && server_token.is_none() {
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
        let ctx = &mut **ctx;
        // The target's SPNEGO and NTLM tokens go through sspi's and picky's parsers.
        let outcome = contain_panic(|| {
            let mut builder = ctx
                .initialize_security_context()
                .with_credentials_handle(handle)
                .with_context_requirements(
                    ClientRequestFlags::CONFIDENTIALITY
                        | ClientRequestFlags::INTEGRITY
                        | ClientRequestFlags::MUTUAL_AUTH,
                )
                .with_target_data_representation(DataRepresentation::Native)
                .with_target_name(&target_name)
                .with_output(&mut output);
            if server_token.is_some() {
                builder = builder.with_input(&mut input);
            }
            ctx.initialize_security_context_impl(&mut builder)
                .and_then(|mut generator| generator.resolve_to_result())
        });
        let result = match outcome {
            Ok(result) => result.map_err(sspi_err)?,
            Err(Panicked) => return Err(self.poison()),
        };
        *started = true;
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        match result.status {
            SecurityStatus::Ok => {
                // Only the session keys go on: the credentials handle (a copy
                // of the password) and the rest of sspi's context are dropped.
                let sealing = match contain_panic(|| take_over_sealing(ctx)) {
                    Ok(sealing) => sealing?,
                    Err(Panicked) => return Err(self.poison()),
                };
                self.state = State::Established(Box::new(sealing));
                Ok((!token.is_empty()).then_some(token))
            }
            SecurityStatus::ContinueNeeded => Ok(Some(token)),
            SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue => {
                match contain_panic(|| ctx.complete_auth_token(&mut output)) {
                    Ok(completed) => completed.map_err(sspi_err)?,
                    Err(Panicked) => return Err(self.poison()),
                };
                Ok(Some(token))
            }
            other => Err(HttpAuthError::Sspi(format!("unexpected status {other:?}"))),
        }
    }

    /// A panic leaves the context unusable: say so now and at every later call.
    fn poison(&mut self) -> HttpAuthError {
        self.state = State::Poisoned;
        HttpAuthError::Panicked
    }

    /// Session keys exist only once the handshake is complete.
    fn sealing(&mut self) -> Result<&mut NtlmSealing, HttpAuthError> {
        match &mut self.state {
            State::Established(sealing) => Ok(sealing),
            State::Poisoned => Err(HttpAuthError::Panicked),
            State::Handshake { .. } => Err(HttpAuthError::Incomplete),
        }
    }

    /// Seal one body: the part carries the 16-byte NTLM signature then the
    /// sealed bytes, with 16 in the u32 prefix.
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, HttpAuthError> {
        let data = self.sealing()?.seal(plain);
        Ok(SealedPart {
            original_length: plain.len(),
            header_len: SIGNATURE_LEN as u32,
            data,
        })
    }

    /// Unseal one part of a target's body, in its own buffer.
    pub fn unseal(&mut self, part: SealedPart) -> Result<Vec<u8>, HttpAuthError> {
        let sealing = self.sealing()?;
        let sig_len = part.header_len as usize;
        if sig_len != SIGNATURE_LEN || part.data.len() < sig_len {
            return Err(HttpAuthError::BadSealedMessage("signature length is not 16"));
        }
        if part.data.len() - SIGNATURE_LEN != part.original_length {
            return Err(HttpAuthError::BadSealedMessage(
                "sealed length differs from OriginalContent Length",
            ));
        }
        let mut data = part.data;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&data[..SIGNATURE_LEN]);
        sealing
            .unseal(&signature, &mut data[SIGNATURE_LEN..])
            .map_err(|error| HttpAuthError::Sspi(error.to_string()))?;
        data.drain(..SIGNATURE_LEN);
        Ok(data)
    }
}

/// sspi does not say which sequence number comes next (a SPNEGO mechListMIC
/// may have used one) nor whether the checksum is sealed (it is with a key
/// exchange): seal a probe on a copy of its context, and take the settings
/// under which [`NtlmSealing`] writes the very same bytes.
fn take_over_sealing(ctx: &Negotiate) -> Result<NtlmSealing, HttpAuthError> {
    let keys = ctx.query_context_session_key().map_err(sspi_err)?;
    let session_key = keys.session_key.as_ref();
    let mut copy = ctx.clone();
    let mut signature = [0u8; SIGNATURE_LEN];
    let mut data = PROBE.to_vec();
    let mut buffers = [
        SecurityBufferRef::token_buf(&mut signature),
        SecurityBufferRef::data_buf(&mut data),
    ];
    copy.encrypt_message(EncryptionFlags::empty(), &mut buffers)
        .map_err(sspi_err)?;
    let seq = u32::from_le_bytes([signature[12], signature[13], signature[14], signature[15]]);
    for checksum_sealed in [ChecksumSealed::Yes, ChecksumSealed::No] {
        let probe = NtlmSealing::client(session_key, checksum_sealed, seq).seal(PROBE);
        if probe[..SIGNATURE_LEN] == signature && probe[SIGNATURE_LEN..] == data[..] {
            return Ok(NtlmSealing::client(session_key, checksum_sealed, seq));
        }
    }
    Err(HttpAuthError::Sspi(
        "sspi sealed the hand-over probe unlike NTLM's 128-bit session security: this sspi version is not supported"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use sspi::{AcquireCredentialsHandleResult, ServerRequestFlags};

    fn credentials() -> DelegatedCredentials {
        DelegatedCredentials::new("LAB", "alice", SecretString::from("pw"))
    }

    /// A client that has sent its NEGOTIATE and waits for the target's CHALLENGE.
    fn started() -> NegotiateClient {
        let mut client = NegotiateClient::new(&credentials(), "target").expect("client");
        assert!(client.step(None).expect("NEGOTIATE").is_some());
        client
    }

    /// DER TLV with a short or two-byte length.
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    /// NegTokenResp { negState accept-incomplete, supportedMech NTLM, responseToken }.
    fn neg_token_resp(response: &[u8]) -> Vec<u8> {
        let ntlm = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
        let fields = [
            der(0xa0, &[0x0a, 0x01, 0x01]),
            der(0xa1, &ntlm),
            der(0xa2, &der(0x04, response)),
        ]
        .concat();
        der(0xa1, &der(0x30, &fields))
    }

    #[test]
    fn garbage_from_the_target_is_an_error_not_a_panic() {
        let challenge_head = b"NTLMSSP\0\x02\0\0\0";
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xa1],
            vec![0xa1, 0x84, 0xff, 0xff, 0xff, 0xff],
            (0..64).map(|i| (i * 37 + 11) as u8).collect(),
            der(0x60, &[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02, 0xa0, 0x00]),
            neg_token_resp(b""),
            neg_token_resp(challenge_head),
            // Target name and target info pointing past the end of the message.
            neg_token_resp(
                &[
                    &challenge_head[..],
                    &[0x10, 0, 0x10, 0, 0xf0, 0xff, 0, 0],
                    &[0x35, 0x82, 0x8a, 0xe2],
                ]
                .concat(),
            ),
            neg_token_resp(&[&challenge_head[..], &[0u8; 28], &[0x40, 0, 0x40, 0, 0x30, 0, 0, 0]].concat()),
        ];
        for token in garbage {
            let mut client = started();
            assert!(client.step(Some(&token)).is_err(), "{token:02x?}");
            assert!(!client.is_established());
            // Nothing on this context ever reaches sspi's sealing with missing keys.
            assert!(client.seal(b"<s:Envelope/>").is_err());
        }
    }

    #[test]
    fn sealing_before_the_handshake_completes_is_refused() {
        let part = SealedPart {
            original_length: 4,
            header_len: 16,
            data: vec![0; 20],
        };
        for mut client in [
            NegotiateClient::new(&credentials(), "target").expect("client"),
            started(),
        ] {
            assert!(matches!(client.seal(b"x"), Err(HttpAuthError::Incomplete)));
            assert!(matches!(client.unseal(part.clone()), Err(HttpAuthError::Incomplete)));
        }
    }

    /// sspi's Negotiate server (NTLM) knowing alice, driven in memory.
    struct Target {
        ctx: Negotiate,
        handle: Option<CredentialsBuffers>,
    }

    impl Target {
        fn new() -> Target {
            let identity = AuthIdentity {
                username: Username::new("alice", Some("LAB")).expect("user"),
                password: "pw".to_string().into(),
            };
            let config = NegotiateConfig::new(
                Box::new(NtlmConfig::new("TARGET".into())),
                Some("ntlm".into()),
                "TARGET".into(),
            );
            let mut ctx = Negotiate::new_server(config, vec![identity.clone()]).expect("server");
            let AcquireCredentialsHandleResult { credentials_handle, .. } = ctx
                .acquire_credentials_handle()
                .with_credential_use(CredentialUse::Inbound)
                .with_auth_data(&Credentials::AuthIdentity(identity))
                .execute(&mut ctx)
                .expect("server credentials");
            Target {
                ctx,
                handle: credentials_handle,
            }
        }

        fn answer(&mut self, token: Vec<u8>) -> Vec<u8> {
            let mut input = vec![SecurityBuffer::new(token, BufferType::Token)];
            let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
            let builder = self
                .ctx
                .accept_security_context()
                .with_credentials_handle(&mut self.handle)
                .with_context_requirements(ServerRequestFlags::empty())
                .with_target_data_representation(DataRepresentation::Native)
                .with_input(&mut input)
                .with_output(&mut output);
            let result = self
                .ctx
                .accept_security_context_impl(builder)
                .expect("accept")
                .resolve_to_result()
                .expect("accept result");
            if matches!(
                result.status,
                SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue
            ) {
                self.ctx.complete_auth_token(&mut output).expect("complete");
            }
            output.remove(0).buffer
        }
    }

    /// A client and a target that completed the handshake.
    fn established() -> (NegotiateClient, Target) {
        let mut client = NegotiateClient::new(&credentials(), "target").expect("client");
        let mut target = Target::new();
        let mut token = client.step(None).expect("first leg");
        while let Some(sent) = token {
            let answer = target.answer(sent);
            token = client.step(Some(&answer)).expect("client leg");
        }
        assert!(client.is_established());
        (client, target)
    }

    #[test]
    fn short_and_forged_sealed_bodies_from_the_target_are_errors() {
        let (mut client, _target) = established();
        let short = [
            SealedPart {
                original_length: 0,
                header_len: 16,
                data: vec![0; 15],
            },
            SealedPart {
                original_length: 0,
                header_len: 4,
                data: vec![0; 4],
            },
            SealedPart {
                original_length: 5,
                header_len: 16,
                data: vec![0; 20],
            },
        ];
        for part in &short {
            assert!(
                matches!(client.unseal(part.clone()), Err(HttpAuthError::BadSealedMessage(_))),
                "{part:?}"
            );
        }
        let forged = SealedPart {
            original_length: 4,
            header_len: 16,
            data: vec![0x01; 20],
        };
        assert!(matches!(client.unseal(forged), Err(HttpAuthError::Sspi(_))));
        assert!(client.seal(b"<s:Envelope/>").is_ok());
    }

    impl Target {
        fn unseal(&mut self, part: &SealedPart) -> Vec<u8> {
            let (signature, sealed) = part.data.split_at(SIGNATURE_LEN);
            let mut signature = signature.to_vec();
            let mut data = sealed.to_vec();
            let mut buffers = [
                SecurityBufferRef::token_buf(&mut signature),
                SecurityBufferRef::data_buf(&mut data),
            ];
            self.ctx
                .decrypt_message(&mut buffers)
                .expect("sspi unseals the relay's body");
            data
        }

        fn seal(&mut self, plain: &[u8]) -> SealedPart {
            let mut signature = [0u8; SIGNATURE_LEN];
            let mut data = plain.to_vec();
            let mut buffers = [
                SecurityBufferRef::token_buf(&mut signature),
                SecurityBufferRef::data_buf(&mut data),
            ];
            self.ctx
                .encrypt_message(EncryptionFlags::empty(), &mut buffers)
                .expect("sspi seals");
            SealedPart {
                original_length: plain.len(),
                header_len: SIGNATURE_LEN as u32,
                data: [&signature[..], &data].concat(),
            }
        }
    }

    /// After the hand-over the keystream, the sequence numbers and the
    /// checksums go on as sspi's server expects, message after message.
    #[test]
    fn bodies_go_both_ways_with_sspis_server_after_the_hand_over() {
        let (mut client, mut target) = established();
        for round in 0..4usize {
            let request = format!("<s:Envelope>request {round}</s:Envelope>").repeat(round * 50 + 1);
            let sealed = client.seal(request.as_bytes()).expect("seal");
            assert_eq!(target.unseal(&sealed), request.as_bytes());
            let answer = vec![b'x'; 70_000 * round + 3];
            assert_eq!(client.unseal(target.seal(&answer)).expect("unseal"), answer);
        }
    }
}
