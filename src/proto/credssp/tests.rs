//! The acceptor driven in memory by a rustls client: the refusals that
//! happen before sspi, where a hostile client would otherwise reach
//! panicking parsers. Interop with real clients is proven by the
//! integration suite (requests-credssp, pypsrp).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use sspi::credssp::TsRequest;

use super::tokens;
use super::*;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor_config(min_version: u32) -> Arc<AcceptorConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    Arc::new(AcceptorConfig {
        tls: Arc::new(tls),
        public_key: vec![0x30, 0x00],
        users: vec![UserEntry::new(Principal::new("LAB", "alice"), nt_hash("pw"))].into(),
        min_version,
        domain: None,
        service_keys: None,
    })
}

fn client(version: &'static rustls::SupportedProtocolVersion) -> ClientConnection {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipCertificateVerification))
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("relay").expect("name")).expect("client")
}

fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write_tls");
    }
    out
}

fn client_input(client: &mut ClientConnection, bytes: &[u8]) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(bytes);
    while (cursor.position() as usize) < bytes.len() {
        client.read_tls(&mut cursor).expect("read_tls");
        client.process_new_packets().expect("process");
    }
    let mut plain = Vec::new();
    let _ = client.reader().read_to_end(&mut plain);
    plain
}

/// Run the TLS legs as the HTTP exchange would, one 401 per leg.
fn handshake(acceptor: &mut Acceptor, client: &mut ClientConnection) -> usize {
    let mut legs = 0;
    while client.is_handshaking() {
        let token = client_output(client);
        match acceptor.step(&token) {
            Step::Continue(reply) => {
                client_input(client, &reply);
            }
            other => panic!("handshake leg answered {other:?}"),
        }
        legs += 1;
        assert!(legs < 10, "handshake does not finish");
    }
    // The client's Finished (TLS 1.2: already sent; TLS 1.3: carries it now).
    let token = client_output(client);
    if !token.is_empty() {
        match acceptor.step(&token) {
            Step::Continue(reply) => {
                client_input(client, &reply);
            }
            other => panic!("finished leg answered {other:?}"),
        }
        legs += 1;
    }
    legs
}

fn send_ts_request(acceptor: &mut Acceptor, client: &mut ClientConnection, request: &TsRequest) -> Step {
    let mut encoded = Vec::new();
    request.encode_ts_request(&mut encoded).expect("encode");
    client.writer().write_all(&encoded).expect("write");
    let token = client_output(client);
    acceptor.step(&token)
}

fn ts_request(version: u32, token: Vec<u8>) -> TsRequest {
    TsRequest {
        version,
        nego_tokens: Some(token),
        ..TsRequest::default()
    }
}

#[test]
fn tls12_and_tls13_handshakes_complete_in_memory() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
        let mut client = client(version);
        let legs = handshake(&mut acceptor, &mut client);
        assert!(!client.is_handshaking());
        assert!((2..=3).contains(&legs), "{legs} legs");
    }
}

#[test]
fn garbage_spnego_token_is_rejected_without_panicking() {
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut client = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut client);
    match send_ts_request(&mut acceptor, &mut client, &ts_request(6, vec![0u8; 10])) {
        Step::Rejected {
            error: CredSspError::BadToken(_),
            ..
        } => {}
        other => panic!("expected a bad-token rejection, got {other:?}"),
    }
    // The connection's exchange is over: further legs are refused too.
    assert!(matches!(
        acceptor.step(b"\x17\x03\x03\x00\x01\x00"),
        Step::Rejected { .. }
    ));
}

#[test]
fn version_below_the_floor_is_refused_with_an_error_tsrequest() {
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut client = client(&rustls::version::TLS12);
    handshake(&mut acceptor, &mut client);
    let ntlm_negotiate = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2".to_vec();
    match send_ts_request(&mut acceptor, &mut client, &ts_request(4, ntlm_negotiate)) {
        Step::Rejected {
            error: CredSspError::VersionTooLow { client: 4, floor: 5 },
            token: Some(token),
            ..
        } => {
            let plain = client_input(&mut client, &token);
            let reply = TsRequest::from_buffer(&plain).expect("error TSRequest");
            assert_eq!(reply.error_code.map(|c| c.0), Some(0xc000_006d));
        }
        other => panic!("expected a version refusal, got {other:?}"),
    }
}

#[test]
fn version_at_the_floor_reaches_ntlm() {
    let mut acceptor = Acceptor::new(acceptor_config(2)).expect("acceptor");
    let mut client = client(&rustls::version::TLS12);
    handshake(&mut acceptor, &mut client);
    // NEGOTIATE: signature, type 1, flags, empty domain and workstation, version.
    let mut ntlm_negotiate = b"NTLMSSP\0\x01\x00\x00\x00\x37\x82\x08\xe2".to_vec();
    ntlm_negotiate.extend_from_slice(&[0u8; 16]);
    ntlm_negotiate.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 15]);
    match send_ts_request(&mut acceptor, &mut client, &ts_request(2, ntlm_negotiate)) {
        Step::Continue(token) => {
            let plain = client_input(&mut client, &token);
            let reply = TsRequest::from_buffer(&plain).expect("challenge TSRequest");
            assert_eq!(reply.version, 2, "the server answers with the lower version");
            let challenge = reply.nego_tokens.expect("challenge token");
            assert!(challenge.starts_with(b"NTLMSSP\0\x02\0\0\0"), "NTLM CHALLENGE expected");
        }
        other => panic!("expected an NTLM challenge, got {other:?}"),
    }
    assert_eq!(acceptor.mechanism(), Some(InnerMechanism::Ntlm));
}

#[test]
fn short_pub_key_auth_is_refused_before_sspi() {
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut client = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut client);
    let request = TsRequest {
        version: 6,
        pub_key_auth: Some(vec![1, 2, 3]),
        ..TsRequest::default()
    };
    match send_ts_request(&mut acceptor, &mut client, &request) {
        Step::Rejected {
            error: CredSspError::ShortField("pubKeyAuth"),
            ..
        } => {}
        other => panic!("expected a short-field rejection, got {other:?}"),
    }
}

#[test]
fn locked_out_user_gets_the_same_answer_as_a_wrong_password() {
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut client = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut client);
    let request = ts_request(6, tokens::authenticate_message("LAB", "alice"));
    let mut encoded = Vec::new();
    request.encode_ts_request(&mut encoded).expect("encode");
    client.writer().write_all(&encoded).expect("write");
    let token = client_output(&mut client);
    match acceptor.step_checked(&token, &|user| user.as_str() == "lab\\alice") {
        Step::Rejected {
            error: CredSspError::LockedOut(user),
            token: Some(token),
            ..
        } => {
            assert_eq!(user, "LAB\\alice");
            let reply = TsRequest::from_buffer(&client_input(&mut client, &token)).expect("error TSRequest");
            assert_eq!(reply.error_code.map(|c| c.0), Some(0xc000_006d));
        }
        other => panic!("expected a lockout refusal, got {other:?}"),
    }
}

#[test]
fn the_lock_is_asked_about_one_name_whatever_the_wire_spelling() {
    let Ok(mut config) = Arc::try_unwrap(acceptor_config(5)) else {
        panic!("a fresh config has one owner")
    };
    config.domain = Some(Domain {
        realm: "LAB.TEST".into(),
        netbios: "LAB".into(),
    });
    let config = Arc::new(config);
    for (domain, user) in [
        ("LAB", "alice"),
        ("LAB.TEST", "alice"),
        ("lab", "ALICE"),
        ("", "LAB\\alice"),
        ("", "alice@LAB.TEST"),
        (".", "LAB\\alice"),
    ] {
        let mut acceptor = Acceptor::new(config.clone()).expect("acceptor");
        let mut client = client(&rustls::version::TLS13);
        handshake(&mut acceptor, &mut client);
        let request = ts_request(6, tokens::authenticate_message(domain, user));
        let mut encoded = Vec::new();
        request.encode_ts_request(&mut encoded).expect("encode");
        client.writer().write_all(&encoded).expect("write");
        let token = client_output(&mut client);
        match acceptor.step_checked(&token, &|asked| asked.as_str() == "lab\\alice") {
            Step::Rejected {
                error: CredSspError::LockedOut(locked),
                user: Some(audited),
                ..
            } => {
                assert!(
                    locked.eq_ignore_ascii_case("LAB\\alice"),
                    "{domain:?} {user:?}: {locked}"
                );
                assert_eq!(audited.to_string(), locked, "{domain:?} {user:?}");
            }
            other => panic!("{domain:?} {user:?}: expected a lockout refusal, got {other:?}"),
        }
    }
}

/// An NTLM client (sspi's CredSSP client) logs on as `domain\user` with
/// `password`, up to the acceptor's verdict on its AUTHENTICATE. Returns
/// that step, and the error TSRequest decrypted as the client sees it.
fn ntlm_logon(
    acceptor: &mut Acceptor,
    user: &str,
    password: &str,
    locked_out: &dyn Fn(&PrincipalKey) -> bool,
) -> (Step, Option<TsRequest>) {
    use sspi::credssp::{ClientMode, ClientState, CredSspClient, CredSspMode};
    use sspi::ntlm::NtlmConfig;
    use sspi::{AuthIdentity, Credentials, Username};

    let mut tls = client(&rustls::version::TLS13);
    handshake(acceptor, &mut tls);
    let identity = AuthIdentity {
        username: Username::new(user, Some("LAB")).expect("user name"),
        password: password.to_string().into(),
    };
    let mut ntlm = CredSspClient::new(
        vec![0x30, 0x00],
        Credentials::AuthIdentity(identity),
        CredSspMode::WithCredentials,
        ClientMode::Ntlm(NtlmConfig::new("CLIENT".into())),
        "HTTP/relay".into(),
    )
    .expect("client");
    let mut next = |request: TsRequest| match ntlm.process(request).resolve_to_result().expect("client leg") {
        ClientState::ReplyNeeded(reply) | ClientState::FinalMessage(reply) => reply,
    };
    let negotiate = next(TsRequest::default());
    let challenge = match send_ts_request(acceptor, &mut tls, &negotiate) {
        Step::Continue(token) => TsRequest::from_buffer(&client_input(&mut tls, &token)).expect("challenge"),
        other => panic!("NEGOTIATE answered {other:?}"),
    };
    let authenticate = next(challenge);
    let mut encoded = Vec::new();
    authenticate.encode_ts_request(&mut encoded).expect("encode");
    tls.writer().write_all(&encoded).expect("write");
    let token = client_output(&mut tls);
    let step = acceptor.step_checked(&token, locked_out);
    let reply = match &step {
        Step::Rejected { token: Some(token), .. } => {
            Some(TsRequest::from_buffer(&client_input(&mut tls, token)).expect("error TSRequest"))
        }
        _ => None,
    };
    (step, reply)
}

#[test]
fn unknown_user_wrong_password_and_lockout_get_the_same_answer() {
    let cases = [
        ("ghost", "pw", false, "LAB\\ghost is not in the users file"),
        ("alice", "guess", false, "wrong password for LAB\\alice"),
        (
            "alice",
            "pw",
            true,
            "LAB\\alice is locked out after repeated logon failures",
        ),
    ];
    let mut answers = Vec::new();
    for (user, password, alice_locked, cause) in cases {
        let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
        let locked_out = |claimed: &PrincipalKey| alice_locked && claimed.as_str() == "lab\\alice";
        match ntlm_logon(&mut acceptor, user, password, &locked_out) {
            (
                Step::Rejected {
                    error, user: claimed, ..
                },
                Some(reply),
            ) => {
                // The cause is for the audit only.
                assert_eq!(error.to_string(), cause);
                assert_eq!(claimed.map(|c| c.to_string()), Some(format!("LAB\\{user}")));
                assert_eq!(reply.error_code.map(|c| c.0), Some(0xc000_006d), "{cause}");
                let mut encoded = Vec::new();
                reply.encode_ts_request(&mut encoded).expect("encode");
                answers.push(encoded);
            }
            (other, reply) => panic!("{user}/{password}: expected an error TSRequest, got {other:?} {reply:?}"),
        }
    }
    // Not only the code: the whole answer is the same.
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:02x?}");
}

#[test]
fn the_right_password_passes_ntlm() {
    // The same client with alice's password is answered with the server's
    // pubKeyAuth: the refusals above are about the user, not the test client.
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    match ntlm_logon(&mut acceptor, "alice", "pw", &|_| false) {
        (Step::Continue(_), None) => {}
        (other, _) => panic!("expected the pubKeyAuth leg, got {other:?}"),
    }
}

/// requests-credssp's raw krb5 AP-REQ (see tokens.rs) and pyspnego's SPNEGO with Kerberos first.
const RAW_KRB5: &[u8] = include_bytes!("fixtures/requests_credssp_kerberos_ap_req.bin");
const SPNEGO_KRB5: &[u8] = include_bytes!("fixtures/pyspnego_negotiate_kerberos.bin");

/// A relay with a keytab whose key is not the one the fixtures' tickets were made for.
fn kerberos_acceptor_config() -> Arc<AcceptorConfig> {
    let Ok(mut config) = Arc::try_unwrap(acceptor_config(5)) else {
        panic!("a fresh config has one owner")
    };
    config.domain = Some(Domain {
        realm: "LAB.TEST".into(),
        netbios: "LAB".into(),
    });
    config.service_keys = Some(
        vec![ServiceKey {
            components: vec!["HTTP".into(), "relay.lab.test".into()],
            key: Zeroizing::new(vec![7u8; 32]),
        }]
        .into(),
    );
    Arc::new(config)
}

#[test]
fn raw_krb5_token_reaches_the_kerberos_acceptor_wrapped_not_the_panicking_parser() {
    let mut acceptor = Acceptor::new(kerberos_acceptor_config()).expect("acceptor");
    let mut client = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut client);
    match send_ts_request(&mut acceptor, &mut client, &ts_request(6, RAW_KRB5.to_vec())) {
        // The ticket is decrypted with the wrong key: a refusal by Kerberos itself, with an error TSRequest.
        Step::Rejected {
            error: CredSspError::Authentication(why),
            token: Some(_),
            user: None,
        } => assert!(why.contains("integrity") || why.contains("Integrity"), "{why}"),
        other => panic!("expected Kerberos to refuse the ticket, got {other:?}"),
    }
    assert_eq!(acceptor.mechanism(), Some(InnerMechanism::Kerberos));
}

#[test]
fn spnego_with_kerberos_first_reaches_the_kerberos_acceptor() {
    let mut acceptor = Acceptor::new(kerberos_acceptor_config()).expect("acceptor");
    let mut client = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut client);
    let step = send_ts_request(&mut acceptor, &mut client, &ts_request(6, SPNEGO_KRB5.to_vec()));
    assert!(
        matches!(&step, Step::Rejected { error: CredSspError::Authentication(why), .. } if why.contains("ntegrity")),
        "{step:?}"
    );
    assert_eq!(acceptor.mechanism(), Some(InnerMechanism::NegotiateKerberos));
}

#[test]
fn kerberos_without_a_keytab_is_refused_or_answered_with_ntlm() {
    // Raw krb5: nothing can accept it.
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut first = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut first);
    match send_ts_request(&mut acceptor, &mut first, &ts_request(6, RAW_KRB5.to_vec())) {
        Step::Rejected {
            error: CredSspError::NoKeytab,
            token: Some(_),
            ..
        } => {}
        other => panic!("expected a no-keytab refusal, got {other:?}"),
    }
    // SPNEGO offering NTLM second: sspi picks NTLM, as before domain mode.
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut tls = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut tls);
    match send_ts_request(&mut acceptor, &mut tls, &ts_request(6, SPNEGO_KRB5.to_vec())) {
        Step::Continue(token) => {
            let plain = client_input(&mut tls, &token);
            let reply = TsRequest::from_buffer(&plain).expect("TSRequest");
            let answer = reply.nego_tokens.expect("SPNEGO answer");
            let ntlm_oid = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
            assert!(
                answer.windows(ntlm_oid.len()).any(|w| w == ntlm_oid),
                "NTLM selected: {answer:02x?}"
            );
        }
        other => panic!("expected the NTLM fallback, got {other:?}"),
    }
    assert_eq!(acceptor.mechanism(), Some(InnerMechanism::Negotiate));
}

/// The TSRequest that carries the NTLM AUTHENTICATE, as pywinrm 0.5.0 sent
/// it (requests-credssp 2.0.0, pyspnego 0.12.4): the SPNEGO NegTokenResp
/// with the AUTHENTICATE *and* its mechListMIC, pubKeyAuth and the nonce in
/// one TSRequest. Captured as the plaintext pywinrm wrote into its CredSSP
/// TLS channel (a hook on `ssl.SSLObject.write` in the client process) while
/// it opened a shell as LAB\alice on the integration suite's target double
/// (`target_double.py --auth credssp`, pyspnego's own acceptor). It cannot be
/// replayed (the NTLM challenge is random): the tests below build the same
/// shape live, and check it against this one.
const PYWINRM_AUTHENTICATE: &[u8] = include_bytes!("fixtures/pywinrm_ntlm_authenticate_ts_request.bin");

/// `NegTokenResp` (`[1]` SEQUENCE) fields present in a SPNEGO token, by tag.
fn neg_token_resp_fields(spnego: &[u8]) -> Vec<u8> {
    use crate::proto::kerberos::messages::der_tlv;

    let (resp, _) = der_tlv(spnego, 0xa1).expect("NegTokenResp");
    let (mut fields, _) = der_tlv(resp, 0x30).expect("SEQUENCE");
    let mut tags = Vec::new();
    while let Some((&tag, _)) = fields.split_first() {
        let (_, rest) = der_tlv(fields, tag).expect("field");
        tags.push(tag);
        fields = rest;
    }
    tags
}

/// negState [0], responseToken [2], mechListMIC [3]: the AUTHENTICATE with its MIC.
const AUTHENTICATE_WITH_MIC: [u8; 3] = [0xa0, 0xa2, 0xa3];

#[test]
fn pywinrm_sends_the_authenticate_its_mech_list_mic_and_pub_key_auth_in_one_ts_request() {
    let request = TsRequest::from_buffer(PYWINRM_AUTHENTICATE).expect("captured TSRequest");
    let spnego = request.nego_tokens.as_deref().expect("negoTokens");
    assert!(request.pub_key_auth.is_some(), "pubKeyAuth rides with the AUTHENTICATE");
    assert_eq!(neg_token_resp_fields(spnego), AUTHENTICATE_WITH_MIC);
    assert_eq!(
        tokens::claimed_ntlm_user(spnego),
        Some(("LAB".to_string(), "alice".to_string()))
    );
}

/// The client side as pyspnego runs it, on sspi's SPNEGO client context:
/// the AUTHENTICATE with its mechListMIC (sequence number 0) and pubKeyAuth
/// sealed next (sequence number 1) go in one TSRequest, without waiting for
/// the server's mechListMIC. (sspi's own CredSSP client waits for it and
/// sends pubKeyAuth a leg later, so it never sends this shape.)
struct PyspnegoClient {
    ctx: sspi::Negotiate,
    handle: Option<sspi::CredentialsBuffers>,
    identity: sspi::AuthIdentity,
    nonce: [u8; 32],
}

/// The CredSSP public-key binding (version 5 and later) over the test
/// acceptor's public key.
fn binding_hash(magic: &[u8], nonce: &[u8; 32]) -> Vec<u8> {
    use sha2::{Digest, Sha256};

    Sha256::new()
        .chain_update(magic)
        .chain_update(nonce)
        .chain_update([0x30, 0x00])
        .finalize()
        .to_vec()
}

const CLIENT_BINDING: &[u8] = b"CredSSP Client-To-Server Binding Hash\0";
const SERVER_BINDING: &[u8] = b"CredSSP Server-To-Client Binding Hash\0";

impl PyspnegoClient {
    fn new(password: &str) -> PyspnegoClient {
        use sspi::{AuthIdentity, CredentialUse, Credentials, Negotiate, Sspi, Username};

        let config = NegotiateConfig::new(
            Box::new(NtlmConfig::new("CLIENT".into())),
            Some("ntlm".to_string()),
            "CLIENT".into(),
        );
        let mut ctx = Negotiate::new_client(config).expect("client");
        let identity = AuthIdentity {
            username: Username::new("alice", Some("LAB")).expect("user name"),
            password: password.to_string().into(),
        };
        let acquired = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&Credentials::AuthIdentity(identity.clone()))
            .execute(&mut ctx)
            .expect("credentials");
        PyspnegoClient {
            ctx,
            handle: acquired.credentials_handle,
            identity,
            nonce: [0x5a; 32],
        }
    }

    /// One SPNEGO leg: the next token and whether the context is complete.
    fn step(&mut self, input: Option<&[u8]>) -> Result<(Vec<u8>, bool), sspi::Error> {
        use sspi::{
            BufferType, ClientRequestFlags, DataRepresentation, SecurityBuffer, SecurityStatus, Sspi, SspiImpl,
        };

        let mut input = vec![SecurityBuffer::new(
            input.unwrap_or_default().to_vec(),
            BufferType::Token,
        )];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let first = self.handle.is_some() && input[0].buffer.is_empty();
        let mut builder = self
            .ctx
            .initialize_security_context()
            .with_credentials_handle(&mut self.handle)
            .with_context_requirements(
                ClientRequestFlags::CONFIDENTIALITY | ClientRequestFlags::INTEGRITY | ClientRequestFlags::MUTUAL_AUTH,
            )
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name("HTTP/relay")
            .with_output(&mut output);
        if !first {
            builder = builder.with_input(&mut input);
        }
        let result = self
            .ctx
            .initialize_security_context_impl(&mut builder)
            .and_then(|mut generator| generator.resolve_to_result())?;
        let token = output.pop().map(|b| b.buffer).unwrap_or_default();
        Ok((token, result.status == SecurityStatus::Ok))
    }

    /// NTLM sealing as CredSSP carries it: the signature, then the sealed bytes.
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        use sspi::{EncryptionFlags, SecurityBufferRef, Sspi};

        let mut signature = [0u8; 16];
        let mut data = plain.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx
            .encrypt_message(EncryptionFlags::empty(), &mut buffers)
            .expect("seal");
        [&signature[..], &data].concat()
    }

    fn unseal(&mut self, sealed: &[u8]) -> Result<Vec<u8>, sspi::Error> {
        use sspi::{SecurityBufferRef, Sspi};

        let (signature, data) = sealed.split_at(16.min(sealed.len()));
        let mut signature = signature.to_vec();
        let mut data = data.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx.decrypt_message(&mut buffers)?;
        Ok(data)
    }

    /// The first TSRequest: SPNEGO NegTokenInit with the NTLM NEGOTIATE.
    fn negotiate(&mut self) -> TsRequest {
        let (token, _) = self.step(None).expect("NEGOTIATE");
        ts_request(6, token)
    }

    /// pyspnego's second TSRequest: the AUTHENTICATE with its mechListMIC,
    /// pubKeyAuth and the nonce, together.
    fn authenticate(&mut self, challenge: &TsRequest) -> TsRequest {
        let (token, complete) = self.step(challenge.nego_tokens.as_deref()).expect("AUTHENTICATE");
        assert!(!complete, "the client waits for the server's mechListMIC");
        let pub_key_auth = self.seal(&binding_hash(CLIENT_BINDING, &self.nonce));
        TsRequest {
            version: 6,
            nego_tokens: Some(token),
            pub_key_auth: Some(pub_key_auth),
            client_nonce: Some(self.nonce),
            ..TsRequest::default()
        }
    }

    /// Checks the server's answer to it as pyspnego does (its mechListMIC,
    /// then its pubKeyAuth) and returns the delegation TSRequest.
    fn delegate(&mut self, reply: &TsRequest) -> Result<TsRequest, String> {
        let spnego = reply
            .nego_tokens
            .as_deref()
            .ok_or("no SPNEGO token with the server's mechListMIC")?;
        let (_, complete) = self
            .step(Some(spnego))
            .map_err(|e| format!("the server's mechListMIC: {e}"))?;
        if !complete {
            return Err("the SPNEGO exchange did not complete".into());
        }
        let pub_key_auth = reply.pub_key_auth.as_deref().ok_or("no pubKeyAuth")?;
        let unsealed = self
            .unseal(pub_key_auth)
            .map_err(|e| format!("the server's pubKeyAuth: {e}"))?;
        if unsealed != binding_hash(SERVER_BINDING, &self.nonce) {
            return Err("the server's pubKeyAuth does not bind its public key".into());
        }
        let buffers = sspi::CredentialsBuffers::AuthIdentity(self.identity.clone().into());
        let credentials = sspi::credssp::write_ts_credentials(&buffers, sspi::credssp::CredSspMode::WithCredentials)
            .expect("TSCredentials");
        Ok(TsRequest {
            version: 6,
            auth_info: Some(self.seal(&credentials)),
            ..TsRequest::default()
        })
    }
}

/// The fields of a TSRequest that carries something, as the tests compare shapes.
fn shape(request: &TsRequest) -> (Vec<u8>, bool, bool) {
    let tags = request
        .nego_tokens
        .as_deref()
        .map(neg_token_resp_fields)
        .unwrap_or_default();
    (tags, request.pub_key_auth.is_some(), request.client_nonce.is_some())
}

#[test]
fn the_spnego_final_token_and_pub_key_auth_in_one_ts_request_log_on() {
    // process_spnego_final: the relay answers with the SPNEGO token carrying
    // its mechListMIC and a pubKeyAuth the client accepts, and the logon
    // completes with the delegated credentials.
    let mut acceptor = Acceptor::new(acceptor_config(5)).expect("acceptor");
    let mut tls = client(&rustls::version::TLS13);
    handshake(&mut acceptor, &mut tls);
    let mut relay = |request: TsRequest| match send_ts_request(&mut acceptor, &mut tls, &request) {
        Step::Continue(token) => TsRequest::from_buffer(&client_input(&mut tls, &token)).expect("TSRequest"),
        other => panic!("expected a TSRequest, got {other:?}"),
    };
    let mut client = PyspnegoClient::new("pw");
    let challenge = relay(client.negotiate());
    let authenticate = client.authenticate(&challenge);
    let captured = TsRequest::from_buffer(PYWINRM_AUTHENTICATE).expect("captured TSRequest");
    assert_eq!(
        shape(&authenticate),
        shape(&captured),
        "the test client sends what pywinrm sends"
    );
    let reply = relay(authenticate);
    let delegation = client.delegate(&reply).expect("the client accepts the relay's answer");
    match send_ts_request(&mut acceptor, &mut tls, &delegation) {
        Step::Authenticated { credentials, .. } => assert_eq!(credentials.principal(), "LAB\\alice"),
        other => panic!("expected the logon to complete, got {other:?}"),
    }
}

/// Canary: sspi 0.23.1's own CredSSP server, given that TSRequest in one
/// call, drops the SPNEGO token with its mechListMIC and seals pubKeyAuth
/// under the wrong sequence number: pywinrm cannot finish. When this test
/// fails, sspi answers it correctly: `process_spnego_final` (and this
/// canary) can go.
#[test]
fn canary_sspi_still_mishandles_the_spnego_final_token_with_pub_key_auth() {
    let config = acceptor_config(5);
    let proxy = users::UsersProxy {
        users: config.users.clone(),
        claimed: Arc::new(Mutex::new(None)),
        domain: None,
        kerberos: false,
    };
    let mode = ServerMode::Negotiate(NegotiateConfig::new(
        Box::new(NtlmConfig::new(hostname_for_ntlm())),
        Some("ntlm".to_string()),
        hostname_for_ntlm(),
    ));
    let mut server = CredSspServer::new_with_version(vec![0x30, 0x00], proxy, 6, mode).expect("sspi server");
    let mut serve = |request: TsRequest| match server.process(request).resolve_to_result() {
        Ok(ServerState::ReplyNeeded(reply)) => reply,
        Ok(ServerState::Finished(_)) => panic!("finished early"),
        Err(e) => panic!("sspi refused: {:?}", e.error),
    };
    let mut client = PyspnegoClient::new("pw");
    let challenge = serve(client.negotiate());
    let reply = serve(client.authenticate(&challenge));
    let outcome = client.delegate(&reply);
    assert!(
        outcome.is_err(),
        "sspi now answers the final SPNEGO token with pubKeyAuth correctly: process_spnego_final can go"
    );
    println!("sspi's own answer fails as expected: {}", outcome.unwrap_err());
}
