//! Live export of the audit trail: every line written to the audit log also goes to a
//! syslog receiver as a version 1 syslog message, the JSON line as MSG.
//!
//! Requests never wait for the receiver: a line is put on a bounded queue (or dropped,
//! and counted, when the queue is full) and one writer task sends the queue in order. A
//! receiver that is down or slow costs lost messages, never latency; the writer
//! reconnects on its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::AuditKind;
use crate::config::SyslogTarget;

/// Lines waiting for the writer; past this they are dropped.
const QUEUE: usize = 4096;
/// The longest datagram a receiver can take over UDP; longer lines are cut.
const MAX_DATAGRAM: usize = 65_000;
/// Facility authpriv: security messages, kept apart from general logs by syslog daemons.
const FACILITY: u8 = 10;
const APP_NAME: &str = "winrm-relay";
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The producer side: formats and queues; see the module documentation.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Vec<u8>>,
    hostname: String,
    pid: u32,
    dropped: Counter,
    /// Set while the queue overflows, so that an overflow is logged once, not per line.
    overflowing: Arc<AtomicBool>,
    /// Messages queued, and those the writer is done with (sent or dropped): equal when
    /// nothing is pending.
    queued: AtomicU64,
    handled: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(target: SyslogTarget) -> Exporter {
        let (queue, lines) = mpsc::channel(QUEUE);
        let dropped = Counter::default();
        let overflowing = Arc::new(AtomicBool::new(false));
        let handled = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            target,
            dropped: dropped.clone(),
            overflowing: overflowing.clone(),
            handled: handled.clone(),
        };
        tokio::spawn(writer.run(lines));
        Exporter {
            queue,
            hostname: hostname(),
            pid: std::process::id(),
            dropped,
            overflowing,
            queued: AtomicU64::new(0),
            handled,
        }
    }

    /// Waits until every queued message is sent (or dropped), at most `deadline`: at
    /// shutdown, so that the last events (the sessions' ends) are not lost with the process.
    pub async fn flush(&self, deadline: Duration) {
        let pending = || self.handled.load(Ordering::Acquire) < self.queued.load(Ordering::Acquire);
        let waited = tokio::time::timeout(deadline, async {
            while pending() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        if waited.await.is_err() {
            tracing::warn!("syslog export still had messages queued at shutdown");
        }
    }

    /// Messages that never reached the receiver: queue full, or the receiver unreachable.
    pub fn dropped(&self) -> Counter {
        self.dropped.clone()
    }

    /// Queues one audit line (without its newline) written at `time`.
    pub fn send(&self, kind: AuditKind, time: &str, line: &[u8]) {
        let message = format_message(kind, time, &self.hostname, self.pid, line);
        match self.queue.try_send(message) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(_) => {
                self.dropped.inc();
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("syslog export cannot keep up: dropping audit messages until it can");
                }
            }
        }
    }
}

/// Denials and failed logons stand out as warnings; the rest is information.
fn severity(kind: AuditKind) -> u8 {
    match kind {
        AuditKind::AuthFailed | AuditKind::Denied | AuditKind::AuditResumed | AuditKind::Undecodable => 4,
        _ => 6,
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`.
fn format_message(kind: AuditKind, time: &str, hostname: &str, pid: u32, line: &[u8]) -> Vec<u8> {
    let pri = FACILITY * 8 + severity(kind);
    let mut message = format!("<{pri}>1 {time} {hostname} {APP_NAME} {pid} {} - ", kind.name()).into_bytes();
    message.extend_from_slice(line);
    message
}

/// The host's name as syslog's HOSTNAME field allows it (printable ASCII, no spaces), or `-`.
fn hostname() -> String {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_default();
    let name: String = name.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

enum Connection {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixDatagram),
}

async fn connect(target: &SyslogTarget) -> std::io::Result<Connection> {
    match target {
        SyslogTarget::Udp(address) => {
            let peer = tokio::net::lookup_host(address.as_str())
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{address}: no address")))?;
            let local = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = tokio::net::UdpSocket::bind(local).await?;
            socket.connect(peer).await?;
            Ok(Connection::Udp(socket))
        }
        SyslogTarget::Tcp(address) => {
            let stream = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(address.as_str()),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = stream.set_nodelay(true);
            Ok(Connection::Tcp(stream))
        }
        #[cfg(unix)]
        SyslogTarget::Unix(path) => {
            let socket = tokio::net::UnixDatagram::unbound()?;
            socket.connect(path)?;
            Ok(Connection::Unix(socket))
        }
        #[cfg(not(unix))]
        SyslogTarget::Unix(_) => Err(std::io::Error::other("unix sockets need a unix system")),
    }
}

impl Connection {
    async fn send(&mut self, message: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Udp(socket) => socket.send(&message[..message.len().min(MAX_DATAGRAM)]).await.map(drop),
            Connection::Tcp(stream) => {
                let mut frame = format!("{} ", message.len()).into_bytes();
                frame.extend_from_slice(message);
                stream.write_all(&frame).await
            }
            #[cfg(unix)]
            Connection::Unix(socket) => socket.send(&message[..message.len().min(MAX_DATAGRAM)]).await.map(drop),
        }
    }
}

/// The writer task's state.
struct Writer {
    target: SyslogTarget,
    dropped: Counter,
    overflowing: Arc<AtomicBool>,
    handled: Arc<AtomicU64>,
}

impl Writer {
    /// Sends queued messages in order until the sink is dropped. A failed send drops that
    /// message and the connection; connecting is retried with a growing pause, and messages
    /// arriving before then are dropped (counted) rather than queued forever.
    async fn run(self, mut lines: mpsc::Receiver<Vec<u8>>) {
        let target = &self.target;
        let mut connection: Option<Connection> = None;
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        let mut reported = false;
        while let Some(message) = lines.recv().await {
            if lines.is_empty() {
                self.overflowing.store(false, Ordering::Relaxed);
            }
            if connection.is_none() && tokio::time::Instant::now() >= retry_at {
                match connect(target).await {
                    Ok(connected) => {
                        if reported {
                            tracing::info!(syslog = %target, "syslog export connected again");
                        }
                        connection = Some(connected);
                        backoff = Duration::from_millis(100);
                        reported = false;
                    }
                    Err(error) => {
                        if !reported {
                            tracing::warn!(syslog = %target, %error, "cannot reach the syslog receiver: dropping audit messages until it answers");
                            reported = true;
                        }
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            match connection.as_mut() {
                Some(open) => {
                    if let Err(error) = open.send(&message).await {
                        self.dropped.inc();
                        connection = None;
                        if !reported {
                            tracing::warn!(syslog = %target, %error, "sending to the syslog receiver failed: reconnecting");
                            reported = true;
                        }
                    }
                }
                None => {
                    self.dropped.inc();
                }
            }
            self.handled.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_rfc_5424_with_the_line_as_msg() {
        let m = format_message(
            AuditKind::Request,
            "2024-01-02T03:04:05.678Z",
            "bastion",
            42,
            b"{\"seq\":1}",
        );
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "<86>1 2024-01-02T03:04:05.678Z bastion winrm-relay 42 request - {\"seq\":1}"
        );
        let m = format_message(AuditKind::AuthFailed, "t", "h", 1, b"x");
        assert!(m.starts_with(b"<84>1 t h winrm-relay 1 auth_failed - "));
    }

    #[tokio::test]
    async fn lines_reach_a_udp_receiver_in_order_and_a_full_queue_drops_without_waiting() {
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = SyslogTarget::Udp(receiver.local_addr().unwrap().to_string());
        let exporter = Exporter::start(target);
        for i in 0..3 {
            exporter.send(AuditKind::Request, "t", format!("{{\"seq\":{i}}}").as_bytes());
        }
        let mut buf = [0u8; 1024];
        for i in 0..3 {
            let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(text.ends_with(&format!(" request - {{\"seq\":{i}}}")), "{text}");
        }
        // Far more than the queue holds, at once: the excess is dropped and counted, and
        // sending never blocks.
        let started = std::time::Instant::now();
        for _ in 0..(QUEUE * 3) {
            exporter.send(AuditKind::Request, "t", b"{}");
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(exporter.dropped().get() > 0);
    }

    #[tokio::test]
    async fn flush_waits_until_the_queue_has_left() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let exporter = Exporter::start(SyslogTarget::Udp(receiver.local_addr().unwrap().to_string()));
        // Nothing runs the writer between these sends: all 100 wait in the queue.
        for _ in 0..100 {
            exporter.send(AuditKind::SessionEnd, "t", b"{}");
        }
        exporter.flush(Duration::from_secs(5)).await;
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let mut received = 0;
        while receiver.recv(&mut buf).is_ok() {
            received += 1;
        }
        assert_eq!(received, 100);
    }
}
