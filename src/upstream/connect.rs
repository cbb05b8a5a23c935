//! Reaching a target: its name looked up once, TCP to exactly the addresses the policy
//! checked, and TLS with the target's client configuration for `https` targets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::describe;
use super::error::{LookupError, TlsError, UpstreamError, UpstreamErrorKind};
use crate::resolve::ResolvedTarget;

pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The stream to a target, the address it goes to, and (over TLS) the target's
/// certificate for channel binding.
pub(super) struct Connected {
    pub(super) io: Box<dyn Io>,
    pub(super) peer: IpAddr,
    pub(super) certificate: Option<Vec<u8>>,
}

/// The addresses of `target`, looked up once within its connect timeout (an IP literal
/// needs no lookup). The relay checks these and connects to nothing else.
pub async fn lookup_addresses(target: &ResolvedTarget) -> Result<Vec<IpAddr>, UpstreamError> {
    if let Some(ip) = target.ip {
        return Ok(vec![ip.to_canonical()]);
    }
    let failed = |error: LookupError| UpstreamError::new(describe(target), error);
    let found = tokio::time::timeout(
        target.connect_timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| {
        failed(LookupError::TimedOut {
            secs: target.connect_timeout.as_secs(),
        })
    })?
    .map_err(|e| failed(e.into()))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for ip in found.map(|a| a.ip().to_canonical()) {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    if addresses.is_empty() {
        return Err(failed(LookupError::NoAddresses));
    }
    Ok(addresses)
}

/// Connect to the first of `addresses` that answers, in order, then TLS for an `https`
/// target. Every error names the target as `description`.
pub(super) async fn connect(
    target: &ResolvedTarget,
    description: &Arc<str>,
    addresses: &[IpAddr],
) -> Result<Connected, UpstreamError> {
    let failed = |kind: UpstreamErrorKind| UpstreamError::new(description.clone(), kind);
    let attempts = async {
        let mut last_error = None;
        for &ip in addresses {
            match TcpStream::connect(SocketAddr::new(ip, target.port)).await {
                Ok(stream) => return Ok((stream, ip)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to connect to")))
    };
    let (stream, peer) = match tokio::time::timeout(target.connect_timeout, attempts).await {
        Err(_) => {
            return Err(failed(UpstreamErrorKind::ConnectTimeout {
                secs: target.connect_timeout.as_secs(),
            }))
        }
        Ok(Err(source)) => return Err(failed(UpstreamErrorKind::Connect(source))),
        Ok(Ok(connected)) => connected,
    };
    // Small request/response exchanges: don't let Nagle add latency.
    let _ = stream.set_nodelay(true);
    if !target.https {
        return Ok(Connected {
            io: Box::new(stream),
            peer,
            certificate: None,
        });
    }
    let tls = target.tls.as_ref().ok_or_else(|| failed(TlsError::NoConfig.into()))?;
    let name = ServerName::try_from(target.host.clone()).map_err(|source| {
        failed(
            TlsError::BadName {
                host: target.host.clone(),
                source,
            }
            .into(),
        )
    })?;
    let handshake = tokio_rustls::TlsConnector::from(tls.client_config()).connect(name, stream);
    let stream = match tokio::time::timeout(target.connect_timeout, handshake).await {
        Err(_) => {
            return Err(failed(
                TlsError::HandshakeTimeout {
                    secs: target.connect_timeout.as_secs(),
                }
                .into(),
            ))
        }
        Ok(Err(error)) => return Err(failed(TlsError::Handshake(error).into())),
        Ok(Ok(stream)) => stream,
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    Ok(Connected {
        io: Box::new(stream),
        peer,
        certificate,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;
    use crate::resolve::{Fingerprint, TargetAuth, TargetTls, TlsTrust};

    /// An unlisted target, named by its host.
    fn unlisted(host: &str, port: u16, tls: Option<TargetTls>) -> ResolvedTarget {
        let https = tls.is_some();
        ResolvedTarget {
            name: host.into(),
            alias: None,
            host: host.into(),
            port,
            ip: host.parse().ok(),
            url: format!("{}://{host}:{port}/wsman", if https { "https" } else { "http" }),
            https,
            auth: TargetAuth::Negotiate,
            tls,
            kerberos: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }

    async fn connect_to(target: &ResolvedTarget, addresses: &[IpAddr]) -> Result<Connected, UpstreamError> {
        connect(target, &describe(target), addresses).await
    }

    #[tokio::test]
    async fn lookups_give_the_addresses_and_literals_need_none() {
        let literal = unlisted("192.0.2.7", 5985, None);
        assert_eq!(
            lookup_addresses(&literal).await.unwrap(),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        let localhost = lookup_addresses(&unlisted("localhost", 5985, None)).await.unwrap();
        assert!(
            !localhost.is_empty() && localhost.iter().all(IpAddr::is_loopback),
            "{localhost:?}"
        );
        let error = lookup_addresses(&unlisted("no-such-host.invalid", 5985, None))
            .await
            .unwrap_err();
        assert!(matches!(error.kind(), UpstreamErrorKind::Lookup(_)), "{error}");
    }

    #[tokio::test]
    async fn connections_go_to_the_checked_addresses_without_a_second_lookup() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The name cannot be looked up at all: only the given addresses can be used, in
        // order, past one that refuses.
        let target = unlisted("no-such-host.invalid", port, None);
        let refusing: IpAddr = "127.0.0.2".parse().unwrap();
        let listening: IpAddr = "127.0.0.1".parse().unwrap();
        let connected = connect_to(&target, &[refusing, listening]).await.unwrap();
        assert_eq!(connected.peer, listening);
        let error = connect_to(&target, &[]).await.err().expect("connected to nothing");
        assert!(error.to_string().contains("no address to connect to"), "{error}");
    }

    #[tokio::test]
    async fn a_pin_mismatch_is_reported_plainly() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["box".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = acceptor.accept(stream).await;
            }
        });
        let pin = Fingerprint::parse(&format!("sha256:{}", "00".repeat(32))).unwrap();
        let tls = TargetTls::new(TlsTrust::Pinned(pin)).unwrap();
        let target = unlisted("127.0.0.1", port, Some(tls));
        let error = connect_to(&target, &["127.0.0.1".parse().unwrap()])
            .await
            .err()
            .expect("pin ignored");
        assert_eq!(
            error.to_string(),
            format!(
                "TLS to 127.0.0.1:{port} failed: the certificate presented has fingerprint {}, not the pinned \
                 tls_fingerprint {pin}",
                Fingerprint::of(cert.der())
            )
        );
    }
}
