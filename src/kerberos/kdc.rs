//! The relay's own KDC transport: the Kerberos steps stop at every KDC exchange
//! with a [`NetworkRequest`] ([`KdcConversation`]); [`converse`] does those
//! exchanges over tokio (TCP with its 4-byte length prefix, or UDP) against the
//! configured KDCs in order, each within the connect timeout, and hands the
//! answers back. Nothing here reads /etc/krb5.conf, DNS SRV records or KRB5_*
//! variables: the `[kerberos] kdc` list is the whole truth.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use sspi::generator::NetworkRequest;
use sspi::network_client::NetworkProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::proto::kerberos::exchange::{KdcConversation, KdcReply, KdcTurn};
use crate::proto::kerberos::messages::{error_codes, kdc_message_type, krb_error, KdcMessage};
use crate::proto::kerberos::tickets::unframe;

/// Largest KDC reply accepted over TCP. Tickets with a large PAC (users in
/// hundreds of groups) stay far below this; anything larger is not a KDC.
const MAX_TCP_REPLY: usize = 1 << 20;
/// A UDP datagram's largest payload.
const MAX_UDP_REPLY: usize = 65_535;
/// The KDC port when a URL names none.
const KDC_PORT: u16 = 88;

/// How a configured KDC is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdcProtocol {
    Tcp,
    Udp,
    /// A KDC proxy: Kerberos messages POSTed over HTTPS.
    Proxy,
}

/// One entry of `[kerberos] kdc`: `tcp://host[:port]`, `udp://host[:port]`
/// or `https://host[:port]/path` (a KDC proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcUrl {
    protocol: KdcProtocol,
    host: String,
    port: u16,
    url: url::Url,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdcUrlError {
    #[error("{0:?} is not a URL (expected tcp://host:88, udp://host:88 or https://kdcproxy/KdcProxy)")]
    NotAUrl(String),
    #[error("{0:?}: unknown scheme (expected tcp://, udp:// or https:// for a KDC proxy)")]
    Scheme(String),
    #[error("{0:?}: a KDC URL names a host")]
    NoHost(String),
    #[error("{0:?}: a tcp:// or udp:// KDC URL is host and port only (no path, query or user)")]
    Extra(String),
}

impl KdcUrl {
    pub fn parse(text: &str) -> Result<KdcUrl, KdcUrlError> {
        let url = url::Url::parse(text).map_err(|_| KdcUrlError::NotAUrl(text.to_string()))?;
        let protocol = match url.scheme() {
            "tcp" => KdcProtocol::Tcp,
            "udp" => KdcProtocol::Udp,
            "https" => KdcProtocol::Proxy,
            _ => return Err(KdcUrlError::Scheme(text.to_string())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(KdcUrlError::NoHost(text.to_string())),
        };
        let direct = protocol != KdcProtocol::Proxy;
        let extra = !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some();
        if direct && extra {
            return Err(KdcUrlError::Extra(text.to_string()));
        }
        let port = url.port_or_known_default().unwrap_or(KDC_PORT);
        Ok(KdcUrl {
            protocol,
            host,
            port,
            url,
        })
    }

    pub fn protocol(&self) -> KdcProtocol {
        self.protocol
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL as sspi takes it (`KdcResolution::KdcUrl`): its scheme decides
    /// the shape of the requests sspi yields.
    pub fn sspi_url(&self) -> url::Url {
        self.url.clone()
    }
}

impl fmt::Display for KdcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            KdcProtocol::Tcp => write!(f, "tcp://{}", self.authority()),
            KdcProtocol::Udp => write!(f, "udp://{}", self.authority()),
            KdcProtocol::Proxy => f.write_str(self.url.as_str()),
        }
    }
}

impl KdcUrl {
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One KDC that did not answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdcAttempt {
    pub kdc: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdcError {
    #[error("no KDC is configured ([kerberos] kdc)")]
    NoKdc,
    #[error("KDC unreachable: {}", describe(.0))]
    Unreachable(Vec<KdcAttempt>),
    #[error("KDC proxies (https://) are not supported by this relay yet: use tcp:// or udp:// KDCs")]
    ProxyUnsupported,
    #[error("the security package asked for a KDC exchange it cannot have made: {0}")]
    BadRequest(&'static str),
}

fn describe(attempts: &[KdcAttempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.kdc, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The configured KDCs and the timeouts of one exchange with one of them.
#[derive(Debug, Clone)]
pub struct KdcTransport {
    kdcs: Vec<KdcUrl>,
    connect_timeout: Duration,
    reply_timeout: Duration,
}

impl KdcTransport {
    /// `connect_timeout` bounds each KDC's TCP connect (and its name lookup);
    /// `reply_timeout` bounds the wait for its answer once asked.
    pub fn new(kdcs: Vec<KdcUrl>, connect_timeout: Duration, reply_timeout: Duration) -> KdcTransport {
        KdcTransport {
            kdcs,
            connect_timeout,
            reply_timeout,
        }
    }

    #[cfg(test)]
    pub fn kdcs(&self) -> &[KdcUrl] {
        &self.kdcs
    }

    /// The KDC URL to give sspi. Its requests are then shaped for the first
    /// KDC's protocol; [`KdcTransport::send`] reshapes them for the others.
    pub fn sspi_url(&self) -> Option<url::Url> {
        self.kdcs.first().map(KdcUrl::sspi_url)
    }

    /// Does one exchange: the KDCs are tried in order until one answers. A
    /// KDC that answers with a Kerberos error has answered: failing over on
    /// "wrong password" would only multiply the attempt against the domain's
    /// lockout policy.
    pub async fn send(&self, request: &NetworkRequest) -> Result<KdcReply, KdcError> {
        let message = match request.protocol {
            NetworkProtocol::Tcp => unframe(&request.data).ok_or(KdcError::BadRequest("unframed TCP request"))?,
            NetworkProtocol::Udp => request.data.as_slice(),
            NetworkProtocol::Http | NetworkProtocol::Https => return Err(KdcError::ProxyUnsupported),
        };
        if self.kdcs.is_empty() {
            return Err(KdcError::NoKdc);
        }
        let mut attempts = Vec::new();
        for kdc in &self.kdcs {
            let answer = match kdc.protocol {
                KdcProtocol::Tcp => self.exchange_tcp(kdc, message).await,
                KdcProtocol::Udp => match self.exchange_udp(kdc, message).await {
                    // The answer did not fit a datagram: the same KDC over TCP.
                    Ok(reply) if is_response_too_big(&reply) => self.exchange_tcp(kdc, message).await,
                    other => other,
                },
                KdcProtocol::Proxy => Err("KDC proxies (https://) are not supported by this relay yet".to_string()),
            };
            match answer {
                Ok(reply) => return Ok(KdcReply::new(kdc.to_string(), &reply)),
                Err(error) => {
                    tracing::debug!(kdc = %kdc, %error, "KDC did not answer");
                    attempts.push(KdcAttempt {
                        kdc: kdc.to_string(),
                        error,
                    });
                }
            }
        }
        Err(KdcError::Unreachable(attempts))
    }

    async fn addresses(&self, kdc: &KdcUrl) -> Result<Vec<SocketAddr>, String> {
        let lookup = tokio::net::lookup_host((kdc.host.as_str(), kdc.port));
        match tokio::time::timeout(self.connect_timeout, lookup).await {
            Err(_) => Err(format!("name lookup timed out after {}", secs(self.connect_timeout))),
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", kdc.host)),
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Err(format!("{} has no address", kdc.host))
                } else {
                    Ok(addrs)
                }
            }
        }
    }

    /// Whether some KDC can be reached, for `/readyz`: a TCP KDC that accepts a
    /// connection within the connect timeout, as an exchange would need. A list
    /// of only UDP KDCs cannot be checked without asking them something, and is
    /// taken on trust.
    pub async fn reachable(&self) -> Result<(), String> {
        let tcp: Vec<&KdcUrl> = self.kdcs.iter().filter(|k| k.protocol == KdcProtocol::Tcp).collect();
        if tcp.is_empty() {
            return Ok(());
        }
        for kdc in &tcp {
            if self.connect_tcp(kdc).await.is_ok() {
                return Ok(());
            }
        }
        let names: Vec<String> = tcp.iter().map(|kdc| kdc.to_string()).collect();
        Err(format!("no KDC accepts connections: {}", names.join(", ")))
    }

    async fn connect_tcp(&self, kdc: &KdcUrl) -> Result<TcpStream, String> {
        let mut last = String::new();
        for addr in self.addresses(kdc).await? {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Err(_) => last = format!("connect timed out after {}", secs(self.connect_timeout)),
                Ok(Err(e)) => last = format!("connect: {e}"),
                Ok(Ok(stream)) => return Ok(stream),
            }
        }
        Err(last)
    }

    async fn exchange_tcp(&self, kdc: &KdcUrl, message: &[u8]) -> Result<Vec<u8>, String> {
        let stream = self.connect_tcp(kdc).await?;
        match tokio::time::timeout(self.reply_timeout, tcp_round_trip(stream, message)).await {
            Err(_) => Err(format!("no answer within {}", secs(self.reply_timeout))),
            Ok(result) => result,
        }
    }

    async fn exchange_udp(&self, kdc: &KdcUrl, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut last = String::new();
        for addr in self.addresses(kdc).await? {
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let exchange = async {
                let socket = UdpSocket::bind(local).await.map_err(|e| format!("udp socket: {e}"))?;
                // Connected, so that only this KDC's datagrams are read and an
                // ICMP "port unreachable" ends the wait at once.
                socket.connect(addr).await.map_err(|e| format!("udp: {e}"))?;
                socket.send(message).await.map_err(|e| format!("send: {e}"))?;
                let mut buf = vec![0u8; MAX_UDP_REPLY];
                let n = socket.recv(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
                buf.truncate(n);
                Ok::<_, String>(buf)
            };
            match tokio::time::timeout(self.reply_timeout, exchange).await {
                Err(_) => last = format!("no answer within {}", secs(self.reply_timeout)),
                Ok(Err(e)) => last = e,
                Ok(Ok(reply)) if kdc_message_type(&reply).is_some() => return Ok(reply),
                Ok(Ok(_)) => last = "the answer is not a Kerberos message".to_string(),
            }
        }
        Err(last)
    }
}

async fn tcp_round_trip(mut stream: TcpStream, message: &[u8]) -> Result<Vec<u8>, String> {
    let mut framed = Vec::with_capacity(message.len() + 4);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.map_err(|e| format!("send: {e}"))?;
    let len = stream
        .read_u32()
        .await
        .map_err(|e| format!("receive: {e} (closed without an answer)"))? as usize;
    if len > MAX_TCP_REPLY {
        return Err(format!("announced a {len}-byte answer, more than a KDC sends"));
    }
    let mut reply = vec![0u8; len];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    if kdc_message_type(&reply).is_none() {
        return Err("the answer is not a Kerberos message".to_string());
    }
    Ok(reply)
}

fn is_response_too_big(reply: &[u8]) -> bool {
    kdc_message_type(reply) == Some(KdcMessage::Error)
        && krb_error(reply).is_some_and(|e| e.code == error_codes::KRB_ERR_RESPONSE_TOO_BIG)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The bare Kerberos message of a request sspi yields, whatever its shape.
pub fn request_message(request: &NetworkRequest) -> Option<&[u8]> {
    match request.protocol {
        NetworkProtocol::Tcp => unframe(&request.data),
        NetworkProtocol::Udp => Some(&request.data),
        NetworkProtocol::Http | NetworkProtocol::Https => None,
    }
}

/// Runs `conversation` to its end, doing every KDC exchange it asks for over
/// `transport`: the one place the relay's Kerberos work meets the network. A KDC that
/// cannot be reached ends it with that error (naming the KDCs tried) rather than with
/// the security package's.
pub async fn converse<C: KdcConversation>(
    conversation: &mut C,
    transport: &KdcTransport,
) -> Result<C::Outcome, KdcError> {
    let mut turn = conversation.start();
    loop {
        match turn {
            KdcTurn::Done(outcome) => return Ok(outcome),
            KdcTurn::Ask(request) => turn = conversation.answer(transport.send(&request).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> KdcUrl {
        KdcUrl::parse(s).unwrap()
    }

    #[test]
    fn kdc_urls() {
        let tcp = url("tcp://dc1.lab.test:88");
        assert_eq!(
            (tcp.protocol(), tcp.host(), tcp.port()),
            (KdcProtocol::Tcp, "dc1.lab.test", 88)
        );
        assert_eq!(tcp.to_string(), "tcp://dc1.lab.test:88");
        let udp = url("udp://127.0.0.100");
        assert_eq!((udp.protocol(), udp.port()), (KdcProtocol::Udp, 88));
        assert_eq!(udp.to_string(), "udp://127.0.0.100:88");
        assert_eq!(url("tcp://[::1]:8888").to_string(), "tcp://[::1]:8888");
        let proxy = url("https://kdcproxy.lab.test/KdcProxy");
        assert_eq!((proxy.protocol(), proxy.port()), (KdcProtocol::Proxy, 443));
        assert_eq!(proxy.to_string(), "https://kdcproxy.lab.test/KdcProxy");
        for (bad, want) in [
            ("dc1.lab.test:88", "unknown scheme"),
            ("no url at all", "not a URL"),
            ("http://kdcproxy/KdcProxy", "unknown scheme"),
            ("ldap://dc1", "unknown scheme"),
            ("tcp://dc1:88/realm", "host and port only"),
            ("tcp://user@dc1:88", "host and port only"),
            ("tcp://dc1:99999", "not a URL"),
        ] {
            let e = KdcUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    fn request(protocol: NetworkProtocol, data: &[u8]) -> NetworkRequest {
        NetworkRequest {
            protocol,
            url: url::Url::parse("tcp://127.0.0.1:88").unwrap(),
            data: data.to_vec(),
        }
    }

    fn transport(kdcs: &[String]) -> KdcTransport {
        KdcTransport::new(
            kdcs.iter().map(|k| url(k)).collect(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
    }

    /// A TCP KDC on loopback that answers one request with `reply` and hands back what it got.
    async fn tcp_kdc(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u32().await.unwrap() as usize;
            let mut got = vec![0u8; len];
            stream.read_exact(&mut got).await.unwrap();
            stream.write_all(&(reply.len() as u32).to_be_bytes()).await.unwrap();
            stream.write_all(&reply).await.unwrap();
            got
        });
        (format!("tcp://{addr}"), task)
    }

    /// A port on loopback where nothing listens (bound, then closed).
    async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn tcp_exchange_fails_over_and_frames_for_sspi() {
        let down = format!("tcp://127.0.0.1:{}", closed_port().await);
        let (up, kdc) = tcp_kdc(vec![0x6b, 0x01, 0x00]).await;
        let t = transport(&[down.clone(), up.clone()]);
        let reply = t
            .send(&request(NetworkProtocol::Tcp, &[0, 0, 0, 2, 0x6a, 0x00]))
            .await
            .unwrap();
        assert_eq!(reply.kdc, up);
        assert_eq!(reply.into_framed(), [0, 0, 0, 3, 0x6b, 0x01, 0x00]);
        assert_eq!(
            kdc.await.unwrap(),
            [0x6a, 0x00],
            "the KDC got the bare message, framed once"
        );
    }

    #[tokio::test]
    async fn udp_request_goes_to_a_tcp_kdc_with_its_prefix() {
        let (up, kdc) = tcp_kdc(vec![0x7e, 0x00]).await;
        let reply = transport(&[up])
            .send(&request(NetworkProtocol::Udp, &[0x6a, 0x00]))
            .await
            .unwrap();
        assert_eq!(reply.into_framed(), [0, 0, 0, 2, 0x7e, 0x00]);
        assert_eq!(kdc.await.unwrap(), [0x6a, 0x00]);
    }

    #[tokio::test]
    async fn udp_kdc() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let kdc = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            socket.send_to(&[0x6b, 0x00], from).await.unwrap();
            buf[..n].to_vec()
        });
        let t = transport(&[format!("udp://{addr}")]);
        let reply = t
            .send(&request(NetworkProtocol::Tcp, &[0, 0, 0, 2, 0x6a, 0x00]))
            .await
            .unwrap();
        assert_eq!(reply.into_framed(), [0, 0, 0, 2, 0x6b, 0x00]);
        assert_eq!(kdc.await.unwrap(), [0x6a, 0x00], "no length prefix over UDP");
    }

    #[tokio::test]
    async fn unreachable_kdcs_are_named_with_their_errors() {
        let down = format!("tcp://127.0.0.1:{}", closed_port().await);
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("tcp://{}", silent.local_addr().unwrap());
        let t = KdcTransport::new(
            vec![url(&down), url(&silent_url)],
            Duration::from_secs(2),
            Duration::from_millis(200),
        );
        let started = std::time::Instant::now();
        let e = t
            .send(&request(NetworkProtocol::Tcp, &[0, 0, 0, 2, 0x6a, 0x00]))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the reply timeout bounds a silent KDC"
        );
        let text = e.to_string();
        assert!(text.starts_with("KDC unreachable: "), "{text}");
        assert!(text.contains(&format!("{down}: connect: ")), "{text}");
        assert!(text.contains(&format!("{silent_url}: no answer within 0.2s")), "{text}");
    }

    #[tokio::test]
    async fn what_is_not_a_kerberos_answer_is_not_one() {
        let (up, _kdc) = tcp_kdc(b"HTTP/1.1 400".to_vec()).await;
        let e = transport(&[up])
            .send(&request(NetworkProtocol::Udp, &[0x6a, 0x00]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a Kerberos message"), "{e}");
    }

    #[tokio::test]
    async fn proxy_requests_and_malformed_requests_are_refused() {
        let t = transport(&["tcp://127.0.0.1:88".to_string()]);
        let e = t
            .send(&request(NetworkProtocol::Https, &[0x30, 0x00]))
            .await
            .unwrap_err();
        assert_eq!(e, KdcError::ProxyUnsupported);
        let e = t
            .send(&request(NetworkProtocol::Tcp, &[0, 0, 0, 9, 0x6a]))
            .await
            .unwrap_err();
        assert!(matches!(e, KdcError::BadRequest(_)), "{e}");
        assert_eq!(
            transport(&[])
                .send(&request(NetworkProtocol::Udp, &[0x6a]))
                .await
                .unwrap_err(),
            KdcError::NoKdc
        );
    }

    /// Asks one request, then is done with the reply it got.
    struct OneRequest;

    impl KdcConversation for OneRequest {
        type Outcome = KdcReply;

        fn start(&mut self) -> KdcTurn<KdcReply> {
            KdcTurn::Ask(request(NetworkProtocol::Tcp, &[0, 0, 0, 2, 0x6a, 0x00]))
        }

        fn answer(&mut self, reply: KdcReply) -> KdcTurn<KdcReply> {
            KdcTurn::Done(reply)
        }
    }

    #[tokio::test]
    async fn a_conversation_gets_each_request_answered() {
        let (up, kdc) = tcp_kdc(vec![0x6b, 0x00]).await;
        // Send: a step can be driven inside a spawned connection task.
        fn spawnable<F: std::future::Future + Send>(future: F) -> F {
            future
        }
        let transport = transport(std::slice::from_ref(&up));
        let answer = spawnable(converse(&mut OneRequest, &transport)).await.unwrap();
        assert_eq!(answer.kdc, up);
        assert_eq!(answer.into_framed(), [0, 0, 0, 2, 0x6b, 0x00]);
        assert_eq!(kdc.await.unwrap(), [0x6a, 0x00]);
        assert_eq!(
            request_message(&request(NetworkProtocol::Udp, &[0x6c])),
            Some(&[0x6c][..])
        );
    }
}
