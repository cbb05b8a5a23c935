//! The relay as a CredSSP *client* towards a target, so the target gets the
//! caller's credentials for the next hop. Sans-IO like the acceptor: each
//! [`Initiator::step`] takes the target's `WWW-Authenticate: CredSSP` token
//! and returns the next `Authorization: CredSSP` token.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection};
use sspi::credssp::{ClientMode, ClientState, CredSspClient, CredSspMode, TsRequest};
use sspi::ntlm::NtlmConfig;
use sspi::{AuthIdentity, Credentials, Username};

use super::{parse_ts_request, tls, tokens, CredSspError, SecureChannel};
use crate::proto::guard::contain_panic;
use crate::vault::DelegatedCredentials;

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

enum Phase {
    /// TLS legs; `finished_sent` once our Finished went out.
    Handshake,
    /// TSRequest rounds.
    Authenticating,
    /// TSCredentials sent: the next answer decides.
    CredentialsSent,
}

pub struct Initiator {
    tls: Option<Connection>,
    client: Option<CredSspClient>,
    identity: Option<AuthIdentity>,
    spn: String,
    phase: Phase,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").field("spn", &self.spn).finish()
    }
}

fn sspi_err(e: impl std::fmt::Display) -> CredSspError {
    CredSspError::Authentication(e.to_string())
}

impl Initiator {
    pub fn new(credentials: &DelegatedCredentials, host: &str) -> Result<Initiator, CredSspError> {
        // CredSSP authenticates the target through pubKeyAuth, which binds
        // the NTLM session to this channel's key, not through a PKI.
        let config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CredSspError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls::SkipCertificateVerification))
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string()).map_err(|e| CredSspError::Tls(e.to_string()))?;
        let tls = ClientConnection::new(Arc::new(config), name).map_err(|e| CredSspError::Tls(e.to_string()))?;
        let username = Username::new(credentials.user(), Some(credentials.domain())).map_err(sspi_err)?;
        Ok(Initiator {
            tls: Some(tls.into()),
            client: None,
            identity: Some(AuthIdentity {
                username,
                password: credentials.expose_password().to_string().into(),
            }),
            spn: format!("HTTP/{host}"),
            phase: Phase::Handshake,
        })
    }

    /// `server_token` is `None` for the first leg. Returns the next token,
    /// or `None` when the credentials went out and the target accepted them.
    pub fn step(&mut self, server_token: Option<&[u8]>) -> Result<Option<Vec<u8>>, CredSspError> {
        let tls = self.tls.as_mut().ok_or(CredSspError::AlreadyFailed)?;
        let plain = match server_token {
            Some(token) => tls::feed(tls, token)?,
            None => Vec::new(),
        };
        match self.phase {
            Phase::Handshake => {
                let out = tls::take_output(tls)?;
                // Our Finished (and before it the ClientHello) travel alone,
                // as pyspnego and Windows clients send them.
                if tls.is_handshaking() || !out.is_empty() {
                    return Ok(Some(out));
                }
                self.phase = Phase::Authenticating;
                let public_key = peer_public_key(tls)?;
                let identity = self.identity.take().ok_or(CredSspError::AlreadyFailed)?;
                let client = CredSspClient::new(
                    public_key,
                    Credentials::AuthIdentity(identity),
                    CredSspMode::WithCredentials,
                    ClientMode::Ntlm(NtlmConfig::new("WINRM-RELAY".to_string())),
                    self.spn.clone(),
                )
                .map_err(sspi_err)?;
                self.client = Some(client);
                self.round(TsRequest::default()).map(Some)
            }
            Phase::Authenticating => {
                // The target's answers are network input like a client's:
                // parsed inside the panic boundary, and a sealed field too
                // short for its signature refused before sspi splits it.
                let request = parse_ts_request(&plain)?;
                // A refusal (wrong password, unknown user, locked out) comes as a
                // TSRequest carrying only an errorCode: say so plainly rather than as
                // whatever sspi makes of a message without the token it expects.
                if let Some(code) = request.error_code {
                    self.tls = None;
                    return Err(CredSspError::LogonRefused(code.0));
                }
                if let Some(pub_key_auth) = &request.pub_key_auth {
                    tokens::check_sealed_len("pubKeyAuth", pub_key_auth)?;
                }
                self.round(request).map(Some)
            }
            Phase::CredentialsSent => Ok(None),
        }
    }

    fn round(&mut self, request: TsRequest) -> Result<Vec<u8>, CredSspError> {
        let client = self.client.as_mut().ok_or(CredSspError::AlreadyFailed)?;
        let Ok(outcome) = contain_panic(|| client.process(request).resolve_to_result()) else {
            self.client = None;
            return Err(CredSspError::Panicked);
        };
        let state = outcome.map_err(sspi_err)?;
        let reply = match state {
            ClientState::ReplyNeeded(reply) => reply,
            ClientState::FinalMessage(reply) => {
                self.phase = Phase::CredentialsSent;
                reply
            }
        };
        let mut encoded = Vec::new();
        reply
            .encode_ts_request(&mut encoded)
            .map_err(|e| CredSspError::BadTsRequest(e.to_string()))?;
        let tls = self.tls.as_mut().ok_or(CredSspError::AlreadyFailed)?;
        let out = tls::encrypt(tls, &encoded);
        encoded.iter_mut().for_each(|b| *b = 0); // the final TSRequest carries the credentials
        out
    }

    pub fn credentials_sent(&self) -> bool {
        matches!(self.phase, Phase::CredentialsSent)
    }

    /// The channel for CredSSP session encryption once authenticated.
    pub fn into_channel(mut self) -> Result<SecureChannel, CredSspError> {
        let tls = self.tls.take().ok_or(CredSspError::AlreadyFailed)?;
        Ok(SecureChannel::new(tls))
    }
}

/// The target certificate's SubjectPublicKey bits: what pubKeyAuth binds.
fn peer_public_key(tls: &Connection) -> Result<Vec<u8>, CredSspError> {
    let cert = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| CredSspError::Tls("target sent no certificate".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CredSspError::Tls(format!("target certificate: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Principal, UserEntry};
    use crate::proto::credssp::{Acceptor, AcceptorConfig, Step};
    use secrecy::SecretString;

    /// Our initiator against our acceptor proves only that the two agree;
    /// interop with pyspnego's acceptor is in the integration suite. What
    /// this pins down is the delegation: the acceptor receives exactly the
    /// credentials the initiator was given.
    /// An acceptor whose certificate carries an RSA key, as pubKeyAuth needs.
    fn acceptor_config() -> Arc<AcceptorConfig> {
        let key = rsa_key();
        let cert = rcgen::CertificateParams::new(vec!["relay".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let spki = x509_parser::parse_x509_certificate(cert.der())
            .unwrap()
            .1
            .public_key()
            .subject_public_key
            .data
            .to_vec();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(AcceptorConfig {
            tls: Arc::new(tls),
            public_key: spki,
            users: vec![UserEntry::new(
                Principal::new("LAB", "alice"),
                super::super::nt_hash("pw-1"),
            )]
            .into(),
            min_version: 5,
            domain: None,
            service_keys: None,
        })
    }

    #[test]
    fn initiator_delegates_to_acceptor_in_memory() {
        let config = acceptor_config();
        let mut acceptor = Acceptor::new(config).unwrap();
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("pw-1"));
        let mut initiator = Initiator::new(&creds, "relay").unwrap();
        let mut token = initiator.step(None).unwrap().unwrap();
        for _ in 0..10 {
            match acceptor.step(&token) {
                Step::Continue(reply) => match initiator.step(Some(&reply)).unwrap() {
                    Some(next) => token = next,
                    None => panic!("initiator finished before the acceptor"),
                },
                Step::Authenticated { credentials, .. } => {
                    assert!(initiator.credentials_sent());
                    assert_eq!(credentials.principal(), "LAB\\alice");
                    assert_eq!(credentials.expose_password(), "pw-1");
                    return;
                }
                Step::Rejected { error, .. } => panic!("rejected: {error}"),
            }
        }
        panic!("no agreement after 10 legs");
    }

    #[test]
    fn a_refused_logon_is_said_as_such() {
        let mut acceptor = Acceptor::new(acceptor_config()).unwrap();
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("wrong"));
        let mut initiator = Initiator::new(&creds, "relay").unwrap();
        let mut token = initiator.step(None).unwrap().unwrap();
        for _ in 0..10 {
            match acceptor.step(&token) {
                Step::Continue(reply) => token = initiator.step(Some(&reply)).unwrap().unwrap(),
                Step::Rejected {
                    token: Some(refusal), ..
                } => {
                    assert!(matches!(
                        initiator.step(Some(&refusal)),
                        Err(CredSspError::LogonRefused(0xc000_006d))
                    ));
                    assert!(matches!(initiator.step(None), Err(CredSspError::AlreadyFailed)));
                    return;
                }
                other => panic!("acceptor answered {other:?}"),
            }
        }
        panic!("no refusal after 10 legs");
    }

    /// Runs the exchange against the acceptor up to the initiator's
    /// `round`th TSRequest (1: NTLM NEGOTIATE, 2: AUTHENTICATE and
    /// pubKeyAuth), then answers it with `forged` (plaintext inside the
    /// acceptor's TLS channel) instead of the acceptor's own answer.
    fn answer_round_with(round: usize, forged: &[u8]) -> Result<Option<Vec<u8>>, CredSspError> {
        let mut acceptor = Acceptor::new(acceptor_config()).unwrap();
        let creds = DelegatedCredentials::new("LAB", "alice", SecretString::from("pw-1"));
        let mut initiator = Initiator::new(&creds, "relay").unwrap();
        let mut token = initiator.step(None).unwrap().unwrap();
        let mut rounds = 0;
        for _ in 0..10 {
            if matches!(initiator.phase, Phase::Authenticating) {
                rounds += 1;
            }
            if rounds == round {
                let tls = acceptor.tls().unwrap();
                tls::feed(tls, &token).unwrap();
                let answer = tls::encrypt(tls, forged).unwrap();
                return initiator.step(Some(&answer));
            }
            match acceptor.step(&token) {
                Step::Continue(reply) => token = initiator.step(Some(&reply)).unwrap().unwrap(),
                other => panic!("acceptor answered {other:?}"),
            }
        }
        panic!("round {round} never came");
    }

    fn encoded(request: &TsRequest) -> Vec<u8> {
        let mut out = Vec::new();
        request.encode_ts_request(&mut out).unwrap();
        out
    }

    /// A hostile target (or a man in the middle on an HTTP target) answers
    /// the relay's CredSSP: errors, never a panic of the connection task.
    #[test]
    fn hostile_target_answers_are_errors_not_panics() {
        // sspi splits pubKeyAuth at its 16-byte signature without checking the length.
        for short in [vec![], vec![1, 2, 3], vec![0; 16]] {
            let forged = TsRequest {
                version: 6,
                pub_key_auth: Some(short),
                ..TsRequest::default()
            };
            assert!(matches!(
                answer_round_with(2, &encoded(&forged)),
                Err(CredSspError::ShortField("pubKeyAuth"))
            ));
        }
        assert!(matches!(
            answer_round_with(1, b"\x30\x03\x02\x01"),
            Err(CredSspError::BadTsRequest(_))
        ));
        let bad_challenge = TsRequest {
            version: 6,
            nego_tokens: Some(b"NTLMSSP\0\x02\0\0\0\xff\xff".to_vec()),
            ..TsRequest::default()
        };
        assert!(matches!(
            answer_round_with(1, &encoded(&bad_challenge)),
            Err(CredSspError::Authentication(_))
        ));
        let forged_key = TsRequest {
            version: 6,
            pub_key_auth: Some(vec![7; 64]),
            ..TsRequest::default()
        };
        assert!(matches!(
            answer_round_with(2, &encoded(&forged_key)),
            Err(CredSspError::Authentication(_))
        ));
    }

    fn rsa_key() -> rcgen::KeyPair {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        rcgen::KeyPair::from_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()).into(),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap()
    }
}
