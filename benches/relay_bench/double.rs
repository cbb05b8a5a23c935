//! The fast target double: canned WinRS answers over HTTP, NTLM in SPNEGO through sspi's
//! acceptor and SPNEGO session encryption as a Windows target does, and no process per
//! command. It is only for speed: correctness is proven against the pyspnego doubles of
//! the integration suite.
//!
//! Commands: `bulk <bytes>` writes that many bytes of stdout, split over as many Receive
//! answers as the client's envelope size allows; anything else writes `hello\r\n`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sspi::ntlm::NtlmConfig;
use sspi::{
    AcquireCredentialsHandleResult, AuthIdentity, BufferType, CredentialUse, Credentials, CredentialsBuffers,
    DataRepresentation, EncryptionFlags, Negotiate, NegotiateConfig, SecurityBuffer, SecurityBufferRef, SecurityStatus,
    ServerRequestFlags, Sspi, SspiImpl, Username,
};
use winrm_relay::proto::sealing::{self, SealProtocol, SealedPart};

/// Raw stdout bytes per Receive answer: base64 of it plus the envelope stays under the
/// 512,000-byte MaxEnvelopeSize the client asks for.
const RECEIVE_CHUNK: usize = 370_000;
const SIGNATURE_LEN: usize = 16;

/// A user the double accepts: (domain, user, password).
pub type Account = (String, String, String);

struct Shared {
    accounts: Vec<Account>,
    /// base64 of one full chunk of bulk output, encoded once.
    chunk_b64: String,
    next_id: AtomicU64,
}

/// One connection's NTLM context and command state.
struct Connection {
    ctx: Negotiate,
    handle: Option<CredentialsBuffers>,
    established: bool,
    /// Bulk output still to send for the running command.
    bulk_left: usize,
}

/// Serve on `addr` until the runtime ends.
pub async fn serve(addr: SocketAddr, accounts: Vec<Account>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let chunk: Vec<u8> = (0..RECEIVE_CHUNK).map(|i| b'a' + (i % 26) as u8).collect();
    let shared = Arc::new(Shared {
        accounts,
        chunk_b64: STANDARD.encode(&chunk),
        next_id: AtomicU64::new(1),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let Ok(connection) = Connection::new(&shared.accounts) else {
                    return;
                };
                let connection = Arc::new(Mutex::new(connection));
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (connection, shared) = (connection.clone(), shared.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let mut connection = connection.lock().expect("one request at a time");
                        Ok::<_, hyper::Error>(connection.answer(&shared, &parts.headers, &body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

impl Connection {
    fn new(accounts: &[Account]) -> Result<Connection, sspi::Error> {
        let identities: Vec<AuthIdentity> = accounts
            .iter()
            .map(|(domain, user, password)| AuthIdentity {
                username: Username::new(user, Some(domain)).expect("a valid user name"),
                password: password.clone().into(),
            })
            .collect();
        let config = NegotiateConfig::new(
            Box::new(NtlmConfig::new("TARGET".into())),
            Some("ntlm".into()),
            "TARGET".into(),
        );
        let mut ctx = Negotiate::new_server(config, identities.clone())?;
        let AcquireCredentialsHandleResult { credentials_handle, .. } = ctx
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Inbound)
            .with_auth_data(&Credentials::AuthIdentity(identities[0].clone()))
            .execute(&mut ctx)?;
        Ok(Connection {
            ctx,
            handle: credentials_handle,
            established: false,
            bulk_left: 0,
        })
    }

    fn answer(&mut self, shared: &Shared, headers: &hyper::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
        if let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Negotiate "))
        {
            return self.authenticate(token);
        }
        if !self.established {
            return respond(StatusCode::UNAUTHORIZED, Vec::new());
        }
        let Ok(parts) = sealing::parse_body(SealProtocol::Spnego, body) else {
            return respond(StatusCode::BAD_REQUEST, Vec::new());
        };
        let Some(xml) = parts.first().and_then(|part| self.unseal(part)) else {
            return respond(StatusCode::BAD_REQUEST, Vec::new());
        };
        let reply = self.winrs(shared, &xml);
        let sealed = self.seal(reply.into_bytes());
        let mut response = respond(StatusCode::OK, sealing::build_body(SealProtocol::Spnego, &[sealed]));
        let content_type = sealing::content_type(SealProtocol::Spnego, 1);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.parse().expect("a valid header"));
        response
    }

    fn authenticate(&mut self, token: &str) -> Response<Full<Bytes>> {
        let Ok(token) = STANDARD.decode(token.trim()) else {
            return respond(StatusCode::BAD_REQUEST, Vec::new());
        };
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
            .and_then(|mut generator| generator.resolve_to_result());
        let Ok(result) = result else {
            return respond(StatusCode::UNAUTHORIZED, Vec::new());
        };
        if matches!(
            result.status,
            SecurityStatus::CompleteNeeded | SecurityStatus::CompleteAndContinue
        ) && self.ctx.complete_auth_token(&mut output).is_err()
        {
            return respond(StatusCode::UNAUTHORIZED, Vec::new());
        }
        let token = output.remove(0).buffer;
        let status = if result.status == SecurityStatus::ContinueNeeded {
            StatusCode::UNAUTHORIZED
        } else {
            self.established = true;
            StatusCode::OK
        };
        let mut response = respond(status, Vec::new());
        let value = if token.is_empty() {
            "Negotiate".to_string()
        } else {
            format!("Negotiate {}", STANDARD.encode(&token))
        };
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, value.parse().expect("a valid header"));
        response
    }

    fn unseal(&mut self, part: &SealedPart) -> Option<Vec<u8>> {
        let (signature, sealed) = part.split_header()?;
        let mut signature = signature.to_vec();
        let mut data = sealed.to_vec();
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx.decrypt_message(&mut buffers).ok()?;
        Some(data)
    }

    fn seal(&mut self, mut data: Vec<u8>) -> SealedPart {
        let original_length = data.len();
        let mut signature = [0u8; SIGNATURE_LEN];
        let mut buffers = [
            SecurityBufferRef::token_buf(&mut signature),
            SecurityBufferRef::data_buf(&mut data),
        ];
        self.ctx
            .encrypt_message(EncryptionFlags::empty(), &mut buffers)
            .expect("an established context seals");
        let mut out = Vec::with_capacity(SIGNATURE_LEN + data.len());
        out.extend_from_slice(&signature);
        out.extend_from_slice(&data);
        SealedPart {
            original_length,
            header_len: SIGNATURE_LEN as u32,
            data: out,
        }
    }

    /// The canned answer to one WinRS request.
    fn winrs(&mut self, shared: &Shared, xml: &[u8]) -> String {
        let id = || shared.next_id.fetch_add(1, Ordering::Relaxed);
        if contains(xml, b"transfer/Create<") {
            let shell = format!("BENCH-SHELL-{}", id());
            return envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse",
                &format!(
                    "<x:ResourceCreated><a:Address>http://target/wsman</a:Address><a:ReferenceParameters>\
                     <w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>\
                     <w:SelectorSet><w:Selector Name=\"ShellId\">{shell}</w:Selector></w:SelectorSet>\
                     </a:ReferenceParameters></x:ResourceCreated><rsp:Shell><rsp:ShellId>{shell}</rsp:ShellId>\
                     <rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>\
                     </rsp:Shell>"
                ),
            );
        }
        if contains(xml, b"shell/Command<") {
            self.bulk_left = text_after(xml, b"<rsp:Command>")
                .filter(|command| command == "bulk")
                .and_then(|_| text_after(xml, b"<rsp:Arguments>"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return envelope(
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse",
                &format!(
                    "<rsp:CommandResponse><rsp:CommandId>BENCH-CMD-{}</rsp:CommandId></rsp:CommandResponse>",
                    id()
                ),
            );
        }
        if contains(xml, b"shell/Receive<") {
            let command = text_after(xml, b"CommandId=\"").unwrap_or_default();
            let command = command.split('"').next().unwrap_or_default();
            return self.receive(shared, command);
        }
        if contains(xml, b"shell/Signal<") {
            return envelope(
                "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse",
                "<rsp:SignalResponse/>",
            );
        }
        envelope("http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", "")
    }

    fn receive(&mut self, shared: &Shared, command: &str) -> String {
        const RUNNING: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running";
        const DONE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
        let mut body = String::with_capacity(shared.chunk_b64.len() + 1024);
        body.push_str("<rsp:ReceiveResponse>");
        let done = if self.bulk_left > 0 {
            let n = self.bulk_left.min(RECEIVE_CHUNK);
            self.bulk_left -= n;
            body.push_str(&format!("<rsp:Stream Name=\"stdout\" CommandId=\"{command}\">"));
            if n == RECEIVE_CHUNK {
                body.push_str(&shared.chunk_b64);
            } else {
                let chunk: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
                body.push_str(&STANDARD.encode(chunk));
            }
            body.push_str("</rsp:Stream>");
            self.bulk_left == 0
        } else {
            body.push_str(&format!(
                "<rsp:Stream Name=\"stdout\" CommandId=\"{command}\">aGVsbG8NCg==</rsp:Stream>"
            ));
            true
        };
        if done {
            body.push_str(&format!(
                "<rsp:Stream Name=\"stdout\" CommandId=\"{command}\" End=\"true\"></rsp:Stream>\
                 <rsp:Stream Name=\"stderr\" CommandId=\"{command}\" End=\"true\"></rsp:Stream>\
                 <rsp:CommandState CommandId=\"{command}\" State=\"{DONE}\"><rsp:ExitCode>0</rsp:ExitCode>\
                 </rsp:CommandState>"
            ));
        } else {
            body.push_str(&format!(
                "<rsp:CommandState CommandId=\"{command}\" State=\"{RUNNING}\"/>"
            ));
        }
        body.push_str("</rsp:ReceiveResponse>");
        envelope(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse",
            &body,
        )
    }
}

fn envelope(action: &str, body: &str) -> String {
    format!(
        "<s:Envelope xml:lang=\"en-US\" xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:x=\"http://schemas.xmlsoap.org/ws/2004/09/transfer\" \
         xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
         xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Header>\
         <a:Action>{action}</a:Action><a:MessageID>uuid:00000000-0000-0000-0000-000000000000</a:MessageID>\
         <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To></s:Header>\
         <s:Body>{body}</s:Body></s:Envelope>"
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The text after the first `marker`, up to the next `<`.
fn text_after(haystack: &[u8], marker: &[u8]) -> Option<String> {
    let start = haystack.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let rest = &haystack[start..];
    let end = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).trim().to_string())
}
