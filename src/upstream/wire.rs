//! How bodies travel to a target once authenticated: sealed by the mechanism that
//! authenticated (SPNEGO with NTLM or Kerberos, CredSSP) on plain HTTP, or plain inside
//! TLS.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::StatusCode;
use zeroize::Zeroizing;

use super::error::{BadResponse, HttpError, UpstreamErrorKind};
use crate::proto::credssp::SecureChannel;
use crate::proto::http_auth::NegotiateClient;
use crate::proto::kerberos::client::KerberosClient;
use crate::proto::kerberos::ticket_context::TicketContext;
use crate::proto::sealing::{self, SealProtocol};

const SOAP_CONTENT_TYPE: &str = "application/soap+xml;charset=UTF-8";

/// How bodies travel once authenticated.
pub(super) enum Wire {
    /// SPNEGO session encryption with NTLM (HTTP).
    Spnego(Box<NegotiateClient>),
    /// SPNEGO session encryption with Kerberos wrap tokens (HTTP).
    Kerberos(Box<KerberosClient>),
    /// The same with the context of a ticket from constrained delegation (HTTP).
    DelegatedTicket(Box<TicketContext>),
    /// CredSSP session encryption (HTTP).
    CredSsp(Box<SecureChannel>),
    /// Plain SOAP inside the target's TLS.
    Plain,
    /// Plain SOAP inside TLS, with the credentials on every request.
    Basic(Zeroizing<String>),
}

/// A request body as it goes on the wire.
pub(super) struct Outgoing {
    pub(super) body: Vec<u8>,
    pub(super) content_type: String,
    /// The `Authorization` header every request carries (Basic), if any.
    pub(super) authorization: Option<Zeroizing<String>>,
}

impl Wire {
    /// `soap` as it goes to the target.
    pub(super) fn seal(&mut self, soap: &[u8]) -> Result<Outgoing, BadResponse> {
        let sealed = |protocol, parts: &[sealing::SealedPart]| Outgoing {
            body: sealing::build_body(protocol, parts),
            content_type: sealing::content_type(protocol, parts.len()),
            authorization: None,
        };
        Ok(match self {
            Wire::Spnego(client) => sealed(SealProtocol::Spnego, &[client.seal(soap)?]),
            Wire::Kerberos(client) => sealed(SealProtocol::Spnego, &[client.seal(soap)?]),
            Wire::DelegatedTicket(context) => sealed(SealProtocol::Spnego, &[context.seal(soap)?]),
            Wire::CredSsp(channel) => sealed(SealProtocol::CredSsp, &channel.seal(soap)?),
            Wire::Plain => Outgoing {
                body: soap.to_vec(),
                content_type: SOAP_CONTENT_TYPE.to_string(),
                authorization: None,
            },
            Wire::Basic(header) => Outgoing {
                body: soap.to_vec(),
                content_type: SOAP_CONTENT_TYPE.to_string(),
                authorization: Some(header.clone()),
            },
        })
    }

    /// The largest body accepted for `max_envelope` bytes of SOAP.
    pub(super) fn body_limit(&self, max_envelope: usize) -> usize {
        match self {
            Wire::Spnego(_) | Wire::Kerberos(_) | Wire::DelegatedTicket(_) | Wire::CredSsp(_) => {
                sealing::sealed_size_limit(max_envelope)
            }
            Wire::Plain | Wire::Basic(_) => max_envelope,
        }
    }

    /// The SOAP inside a target's (non-empty) `body` of `content_type`.
    pub(super) fn unseal(
        &mut self,
        status: StatusCode,
        content_type: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, BadResponse> {
        Ok(match (sealing::protocol_of(content_type), self) {
            (Some(SealProtocol::Spnego), Wire::Spnego(client)) => {
                let parts = sealing::parse_body(SealProtocol::Spnego, body)?;
                let mut plain = Vec::new();
                for part in parts {
                    let chunk = client.unseal(part)?;
                    // One part (the usual answer) keeps its buffer.
                    if plain.is_empty() {
                        plain = chunk;
                    } else {
                        plain.extend_from_slice(&chunk);
                    }
                }
                plain
            }
            (Some(SealProtocol::Spnego), Wire::Kerberos(client)) => {
                let part = sealing::parse_wrap_token_body(body)?;
                client.unseal(&part)?
            }
            (Some(SealProtocol::Spnego), Wire::DelegatedTicket(context)) => {
                let part = sealing::parse_wrap_token_body(body)?;
                context.unseal(&part)?
            }
            (Some(SealProtocol::CredSsp), Wire::CredSsp(channel)) => {
                let parts = sealing::parse_body(SealProtocol::CredSsp, body)?;
                channel.unseal(&parts)?
            }
            (None, Wire::Plain | Wire::Basic(_)) => body.to_vec(),
            (protocol, _) => {
                return Err(BadResponse::Unexpected {
                    status,
                    content_type: content_type.to_string(),
                    protocol,
                })
            }
        })
    }
}

/// A response body, refused as soon as it grows past `limit` bytes.
pub(super) async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, UpstreamErrorKind>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            UpstreamErrorKind::ResponseTooLarge { limit }
        } else {
            HttpError::Body(e).into()
        }
    })?;
    Ok(collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::super::error::UpstreamError;
    use super::*;

    #[tokio::test]
    async fn a_response_body_over_the_limit_is_refused() {
        let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
        let ok = collect_limited(body(1000), 1000).await;
        assert_eq!(ok.map(|b| b.len()).ok(), Some(1000));
        let kind = collect_limited(body(1001), 1000)
            .await
            .expect_err("body over the limit accepted");
        assert!(matches!(kind, UpstreamErrorKind::ResponseTooLarge { limit: 1000 }));
        assert_eq!(
            UpstreamError::new("web01 (10.0.0.5:5985)".into(), kind).to_string(),
            "web01 (10.0.0.5:5985) sent a response body over 1000 bytes, more than the request's \
             MaxEnvelopeSize (bounded by listen.max_envelope_size) allows"
        );
    }
}
