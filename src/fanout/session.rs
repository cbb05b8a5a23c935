//! One WinRS session to one endpoint: connect and log on, create a cmd shell, run a
//! command and collect its output, terminate it, delete the shell.
//!
//! [`run_command`] does all of that once, as the fan-out does for each target;
//! [`Session`] keeps the steps apart for callers that run many commands on one shell
//! (a load generator measuring round trips). Envelopes are built into one buffer per
//! session and output is appended to the caller's buffers, so a command costs no
//! allocation the exchange itself does not need.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::failure::{Cause, Failure, Stage};
use crate::proto::wsman::{self, WinrsRequests, CLIENT_MAX_ENVELOPE_SIZE};
use crate::resolve::{ResolvedTarget, TargetAuth, TargetTls};
use crate::upstream::{self, TargetConnection, TargetResponse};
use crate::vault::DelegatedCredentials;

/// Longest Receive long-poll: output is returned as soon as there is some, so this only
/// bounds how often a silent command is polled.
const RECEIVE_POLL: Duration = Duration::from_secs(20);
/// How long past a Receive's OperationTimeout the answer may take to arrive.
const RECEIVE_MARGIN: Duration = Duration::from_secs(10);
/// Terminating the command and deleting the shell, after a failure or Ctrl-C.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest connect, whatever `--timeout` is.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Logons under way at once through one relay. The relay closes, at once, connections
/// from one address beyond `limits.max_unauthenticated_per_source` (16 by default) that
/// are still authenticating; a logon takes milliseconds, so queueing them costs little.
const RELAY_LOGONS_AT_ONCE: usize = 8;
/// Output kept per stream and target; the rest is dropped (and said so), so that one
/// target writing gigabytes cannot exhaust the client's memory.
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// Where a target's session goes: through the relay (CredSSP to `/wsman/<target>`) or
/// to the target itself.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The connection's settings: the relay's address with the target in the url path,
    /// or the target's own.
    connection: ResolvedTarget,
    via_relay: bool,
    /// Shared by every endpoint of one relay: see [`RELAY_LOGONS_AT_ONCE`].
    logons: Option<Arc<Semaphore>>,
}

/// The relay, as `--relay` names it.
#[derive(Debug, Clone)]
pub struct Relay {
    host: String,
    port: u16,
    ip: Option<IpAddr>,
    https: bool,
    tls: Option<TargetTls>,
    logons: Arc<Semaphore>,
}

impl Relay {
    /// `http[s]://host[:port]` (a trailing `/wsman` is allowed); `tls` checks an https
    /// relay's certificate.
    pub fn parse(url: &str, tls: impl FnOnce() -> Result<TargetTls, String>) -> Result<Relay, String> {
        // The address alone (http://bastion:5985) is the usual way to name it.
        let has_path = url.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
        let parsed = if has_path {
            crate::resolve::host::parse_target_url(url)
        } else {
            crate::resolve::host::parse_target_url(&format!("{url}/"))
        }
        .map_err(|e| format!("--relay {url}: {e}"))?;
        let path = parsed.path.trim_end_matches('/');
        if !(path.is_empty() || path.eq_ignore_ascii_case("/wsman")) {
            return Err(format!(
                "--relay {url}: give the relay's address (http://bastion:5985); the target names go into \
                 /wsman/<target> by themselves"
            ));
        }
        let https = parsed.https;
        Ok(Relay {
            port: parsed.port_or(if https { 5986 } else { 5985 }),
            host: parsed.host.host,
            ip: parsed.host.ip,
            https,
            tls: if https { Some(tls()?) } else { None },
            logons: Arc::new(Semaphore::new(RELAY_LOGONS_AT_ONCE)),
        })
    }

    /// `host:port` as a person reads it.
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

impl Endpoint {
    /// `target` through `relay`: CredSSP to `http[s]://relay/wsman/<target>`, so the relay
    /// receives the credentials it authenticates to the target with.
    pub fn through_relay(relay: &Relay, target: &str, timeout: Duration) -> Endpoint {
        let scheme = if relay.https { "https" } else { "http" };
        Endpoint {
            connection: ResolvedTarget {
                // What the target client's messages call the other end.
                name: "the relay".into(),
                alias: None,
                url: format!("{scheme}://{}/wsman/{}", relay.address(), encode_path_segment(target)),
                host: relay.host.clone(),
                port: relay.port,
                ip: relay.ip,
                https: relay.https,
                auth: TargetAuth::CredSsp,
                tls: relay.tls.clone(),
                kerberos: None,
                connect_timeout: timeout.min(MAX_CONNECT_TIMEOUT),
                timeout,
            },
            via_relay: true,
            logons: Some(relay.logons.clone()),
        }
    }

    /// `target` (`host[:port]`, port 5985 by default) directly, with Negotiate (NTLM) and
    /// SPNEGO message encryption over HTTP.
    pub fn direct(target: &str, timeout: Duration) -> Result<Endpoint, String> {
        let hp =
            crate::resolve::host::parse_host_port(target).map_err(|e| format!("invalid target {target:?}: {e}"))?;
        let port = hp.port.unwrap_or(5985);
        let url = format!(
            "http://{}:{port}/wsman",
            crate::resolve::host::url_host(&hp.host, hp.ip)
        );
        Ok(Endpoint {
            connection: ResolvedTarget {
                name: target.to_string(),
                alias: None,
                url,
                host: hp.host,
                port,
                ip: hp.ip,
                https: false,
                auth: TargetAuth::Negotiate,
                tls: None,
                kerberos: None,
                connect_timeout: timeout.min(MAX_CONNECT_TIMEOUT),
                timeout,
            },
            via_relay: false,
            logons: None,
        })
    }

    /// A failed logon, refused credentials said in the client's words (the target client
    /// speaks of delegated credentials).
    fn logon_failure(&self, error: &upstream::UpstreamError, credentials: &DelegatedCredentials) -> Failure {
        let mut failure = Failure::from_target(Stage::Logon, error);
        if failure.cause == Cause::CredentialsRefused {
            let who = if self.via_relay { "the relay" } else { "the target" };
            failure.message = format!(
                "{who} {} refused the logon of {} (HTTP 401): check the user name and password",
                host_port(&self.connection.host, self.connection.port),
                credentials.principal()
            );
        }
        failure
    }

    /// The url the session posts to.
    pub fn url(&self) -> &str {
        &self.connection.url
    }
}

/// `host:port`, an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A URL path segment for a target name: a host name or address passes as it is
/// (`web01`, `10.1.0.7:5985`), anything else is percent-encoded.
fn encode_path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What to run: the command cmd.exe receives, and its arguments.
#[derive(Debug, Clone)]
pub struct CommandLine {
    pub command: String,
    pub arguments: Vec<String>,
}

/// A finished command's result.
#[derive(Debug, Default)]
pub struct CommandOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More output came than [`MAX_OUTPUT`] per stream; the rest was dropped.
    pub truncated: bool,
    /// Why terminating the command or deleting the shell failed afterwards, if it did.
    pub cleanup_problem: Option<String>,
}

/// An authenticated connection to one endpoint and, once created, its shell.
pub struct Session<'a> {
    endpoint: &'a Endpoint,
    credentials: &'a DelegatedCredentials,
    connection: TargetConnection,
    requests: WinrsRequests,
    shell_id: Option<String>,
    command_id: Option<String>,
    /// An exchange did not complete (an error, or its future was dropped): the
    /// connection's HTTP and sealing state is out of step and it cannot carry another.
    broken: bool,
    deadline: Instant,
    timeout: Duration,
}

impl<'a> Session<'a> {
    /// Look the endpoint up, connect and log on as `credentials`; everything the session
    /// does must be done within `timeout`.
    pub async fn connect(
        endpoint: &'a Endpoint,
        credentials: &'a DelegatedCredentials,
        timeout: Duration,
    ) -> Result<Session<'a>, Failure> {
        let deadline = Instant::now() + timeout;
        let target = &endpoint.connection;
        let opening = async {
            let _logon = match &endpoint.logons {
                Some(logons) => Some(
                    logons
                        .acquire()
                        .await
                        .map_err(|_| Failure::new(Stage::Logon, Cause::Other, "the client is shutting down"))?,
                ),
                None => None,
            };
            let addresses = upstream::lookup_addresses(target)
                .await
                .map_err(|e| Failure::from_target(Stage::Connect, &e))?;
            TargetConnection::open(target, &addresses, credentials)
                .await
                .map_err(|e| endpoint.logon_failure(&e, credentials))
        };
        let connection = tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| timed_out(Stage::Logon, "connecting and logging on", timeout))??;
        Ok(Session {
            endpoint,
            credentials,
            connection,
            requests: WinrsRequests::new(&target.url),
            shell_id: None,
            command_id: None,
            broken: false,
            deadline,
            timeout,
        })
    }

    /// Create the cmd shell the commands run in.
    pub async fn create_shell(&mut self) -> Result<(), Failure> {
        let stage = Stage::CreateShell;
        let wait = self.remaining(stage, "creating the shell")?;
        let soap = self.requests.create_shell();
        let response = exchange(&mut self.connection, &mut self.broken, soap, wait, stage).await?;
        let body = expect_success(stage, response)?;
        let created = wsman::parse_response(&body)
            .ok()
            .and_then(|info| info.created_shell_id)
            .filter(|id| !id.is_empty());
        match created {
            Some(id) => {
                self.shell_id = Some(id);
                Ok(())
            }
            None => Err(Failure::new(
                stage,
                Cause::Other,
                "the answer to Create names no shell: the endpoint does not speak WinRS",
            )),
        }
    }

    /// Run `command` in the shell until it is done, appending its output to `output`
    /// and setting its exit code; then terminate it on the service.
    pub async fn run(&mut self, command: &CommandLine, output: &mut CommandOutput) -> Result<(), Failure> {
        let stage = Stage::Command;
        let shell_id = self.shell_id.clone().ok_or_else(|| no_shell(stage))?;
        let wait = self.remaining(stage, "starting the command")?;
        let soap = self.requests.command(&shell_id, &command.command, &command.arguments);
        let response = exchange(&mut self.connection, &mut self.broken, soap, wait, stage).await?;
        let body = expect_success(stage, response)?;
        let command_id = wsman::parse_response(&body)
            .ok()
            .and_then(|info| info.command_id)
            .ok_or_else(|| Failure::new(stage, Cause::Other, "the answer to Command names no command"))?;
        self.command_id = Some(command_id.clone());
        loop {
            let left = self.remaining(stage, "running the command")?;
            let poll = left.min(RECEIVE_POLL);
            let soap = self.requests.receive(&shell_id, &command_id, poll);
            let response = exchange(
                &mut self.connection,
                &mut self.broken,
                soap,
                poll + RECEIVE_MARGIN,
                stage,
            )
            .await?;
            if response.status == StatusCode::INTERNAL_SERVER_ERROR {
                let timed_out = wsman::parse_response(&response.body)
                    .ok()
                    .and_then(|info| info.fault)
                    .is_some_and(|fault| fault.is_timed_out());
                if timed_out {
                    // Nothing to report within the poll: the command still runs.
                    continue;
                }
            }
            let body = expect_success(stage, response)?;
            let progress = wsman::read_receive_response(&body, &command_id, &mut output.stdout, &mut output.stderr)
                .map_err(|e| Failure::new(stage, Cause::Other, format!("unreadable Receive answer: {e}")))?;
            for stream in [&mut output.stdout, &mut output.stderr] {
                if stream.len() > MAX_OUTPUT {
                    stream.truncate(MAX_OUTPUT);
                    output.truncated = true;
                }
            }
            if progress.done {
                output.exit_code = progress.exit_code.unwrap_or_default();
                break;
            }
        }
        let wait = self.remaining(stage, "terminating the command")?;
        self.terminate(wait).await
    }

    /// Signal terminate to the last command, as WinRM clients do once it is done, so the
    /// service frees it.
    async fn terminate(&mut self, wait: Duration) -> Result<(), Failure> {
        let (Some(shell_id), Some(command_id)) = (self.shell_id.as_deref(), self.command_id.take()) else {
            return Ok(());
        };
        let stage = Stage::Command;
        let soap = self.requests.terminate(shell_id, &command_id);
        let response = exchange(&mut self.connection, &mut self.broken, soap, wait, stage).await?;
        expect_success(stage, response).map(drop)
    }

    /// Delete the shell (terminating a command still running first). When this
    /// connection can no longer carry a request, a direct session deletes it over a new
    /// connection; through the relay, closing the connection is enough: the relay deletes
    /// every shell a session leaves behind.
    pub async fn close(mut self) -> Result<(), String> {
        let Some(shell_id) = self.shell_id.clone() else {
            return Ok(());
        };
        let cleanup = async {
            if !self.broken {
                // A command stopped half-way may still run: stop it, then delete the shell
                // whatever the answer was.
                let terminated = self.terminate(CLEANUP_TIMEOUT).await;
                let soap = self.requests.delete_shell(&shell_id);
                let deleted = match exchange(
                    &mut self.connection,
                    &mut self.broken,
                    soap,
                    CLEANUP_TIMEOUT,
                    Stage::Command,
                )
                .await
                {
                    Ok(response) => expect_success(Stage::Command, response).map(drop),
                    Err(failure) => Err(failure),
                };
                return deleted.and(terminated).map_err(|f| f.message);
            }
            if self.endpoint.via_relay {
                return Ok(());
            }
            let mut fresh = Session::connect(self.endpoint, self.credentials, CLEANUP_TIMEOUT)
                .await
                .map_err(|f| f.message)?;
            let soap = fresh.requests.delete_shell(&shell_id);
            let response = exchange(
                &mut fresh.connection,
                &mut fresh.broken,
                soap,
                CLEANUP_TIMEOUT,
                Stage::Command,
            )
            .await
            .map_err(|f| f.message)?;
            expect_success(Stage::Command, response)
                .map(drop)
                .map_err(|f| f.message)
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT * 2, cleanup).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(problem)) => Err(format!("deleting shell {shell_id}: {problem}")),
            Err(_) => Err(format!("deleting shell {shell_id}: no answer in time")),
        }
    }

    /// Time left before the session's deadline, or the failure saying it passed.
    fn remaining(&self, stage: Stage, doing: &str) -> Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(stage, doing, self.timeout));
        }
        Ok(left)
    }
}

fn timed_out(stage: Stage, doing: &str, timeout: Duration) -> Failure {
    Failure::new(
        stage,
        Cause::TimedOut,
        format!(
            "timed out {doing}: nothing within --timeout {}",
            super::format_duration(timeout)
        ),
    )
}

fn no_shell(stage: Stage) -> Failure {
    Failure::new(stage, Cause::Other, "no shell to run the command in")
}

/// One exchange on the session's connection. `broken` stays set unless the exchange
/// completes, also when its future is dropped half-way.
async fn exchange(
    connection: &mut TargetConnection,
    broken: &mut bool,
    soap: &[u8],
    wait: Duration,
    stage: Stage,
) -> Result<TargetResponse, Failure> {
    if *broken {
        return Err(Failure::new(
            stage,
            Cause::ConnectionLost,
            "the connection broke earlier",
        ));
    }
    *broken = true;
    let response = connection
        .exchange(soap, wait, CLIENT_MAX_ENVELOPE_SIZE)
        .await
        .map_err(|e| Failure::from_target(stage, &e))?;
    *broken = false;
    Ok(response)
}

/// The body of a successful answer, or the failure a fault (or a bare status) means.
fn expect_success(stage: Stage, response: TargetResponse) -> Result<Vec<u8>, Failure> {
    let status = response.status;
    if status.is_success() {
        return Ok(response.body);
    }
    let fault = wsman::parse_response(&response.body).ok().and_then(|info| info.fault);
    Err(match fault {
        Some(fault) => {
            let message = fault
                .reason
                .clone()
                .filter(|r| !r.is_empty())
                .or_else(|| fault.subcode.clone())
                .unwrap_or_else(|| format!("HTTP {status} with an empty fault"));
            Failure::new(
                stage,
                Cause::Fault {
                    status: status.as_u16(),
                    subcode: fault.subcode,
                },
                message,
            )
        }
        None => Failure::new(stage, Cause::Status(status.as_u16()), format!("HTTP {status}")),
    })
}

/// Waits for `work` unless `cancel` fires first.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    stage: Stage,
    work: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Failure::new(stage, Cause::Interrupted, "interrupted")),
        result = work => result,
    }
}

/// Connect to `endpoint`, create a shell, run `command` to its end, delete the shell;
/// within `timeout` for everything but the cleanup. When `cancel` fires, the step under
/// way is abandoned and the shell (if one was created) deleted before returning.
pub async fn run_command(
    endpoint: &Endpoint,
    credentials: &DelegatedCredentials,
    command: &CommandLine,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<CommandOutput, Failure> {
    let mut session =
        unless_cancelled(cancel, Stage::Connect, Session::connect(endpoint, credentials, timeout)).await?;
    unless_cancelled(cancel, Stage::CreateShell, session.create_shell()).await?;
    let mut output = CommandOutput::default();
    let ran = unless_cancelled(cancel, Stage::Command, session.run(command, &mut output)).await;
    let cleaned = session.close().await;
    match ran {
        Ok(()) => {
            output.cleanup_problem = cleaned.err();
            Ok(output)
        }
        Err(mut failure) => {
            if failure.cause == Cause::TimedOut {
                failure.message.push_str("; the command was stopped");
            }
            if let Err(problem) = cleaned {
                failure.message = format!("{}; {problem}", failure.message);
            }
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_tls() -> Result<TargetTls, String> {
        Err("no TLS wanted".into())
    }

    #[test]
    fn the_relay_url_carries_the_target_in_its_path() {
        let relay = Relay::parse("http://bastion:5985", no_tls).unwrap();
        let endpoint = Endpoint::through_relay(&relay, "web01", Duration::from_secs(120));
        assert_eq!(endpoint.url(), "http://bastion:5985/wsman/web01");
        assert_eq!(endpoint.connection.auth, TargetAuth::CredSsp);
        assert_eq!(
            (endpoint.connection.host.as_str(), endpoint.connection.port),
            ("bastion", 5985)
        );
        assert_eq!(endpoint.connection.connect_timeout, MAX_CONNECT_TIMEOUT);
        let relay = Relay::parse("http://[::1]/wsman/", no_tls).unwrap();
        assert_eq!(relay.address(), "[::1]:5985");
        let endpoint = Endpoint::through_relay(&relay, "10.1.0.7:5986", Duration::from_secs(3));
        assert_eq!(endpoint.url(), "http://[::1]:5985/wsman/10.1.0.7:5986");
        assert_eq!(endpoint.connection.connect_timeout, Duration::from_secs(3));
        let odd = Endpoint::through_relay(&relay, "[fe80::1]:5985", Duration::from_secs(3));
        assert_eq!(odd.url(), "http://[::1]:5985/wsman/%5Bfe80::1%5D:5985");
    }

    #[test]
    fn relay_urls_are_checked() {
        assert!(Relay::parse("http://bastion:5985/wsman/web01", no_tls)
            .unwrap_err()
            .contains("give the relay's address"));
        assert!(Relay::parse("bastion", no_tls)
            .unwrap_err()
            .contains("expected an absolute url"));
        assert_eq!(
            Relay::parse("http://10.0.0.1", no_tls).unwrap().address(),
            "10.0.0.1:5985"
        );
        assert_eq!(
            Relay::parse("https://bastion", no_tls).unwrap_err(),
            "no TLS wanted",
            "an https relay needs its TLS trust"
        );
    }

    #[test]
    fn direct_endpoints_default_to_5985() {
        let endpoint = Endpoint::direct("web01", Duration::from_secs(5)).unwrap();
        assert_eq!(endpoint.url(), "http://web01:5985/wsman");
        assert_eq!(endpoint.connection.auth, TargetAuth::Negotiate);
        let endpoint = Endpoint::direct("[::1]:6000", Duration::from_secs(5)).unwrap();
        assert_eq!(endpoint.url(), "http://[::1]:6000/wsman");
        assert!(Endpoint::direct("web 01", Duration::from_secs(5)).is_err());
    }

    #[test]
    fn refused_credentials_are_said_in_the_clients_words() {
        let credentials = DelegatedCredentials::new("LAB", "alice", "pw".to_string().into());
        let relay = Relay::parse("http://10.0.0.1", no_tls).unwrap();
        let refused = upstream::UpstreamError::new(
            "the relay (10.0.0.1:5985)".into(),
            upstream::UpstreamErrorKind::AuthRejected {
                user: "LAB\\alice".into(),
            },
        );
        let failure =
            Endpoint::through_relay(&relay, "web01", Duration::from_secs(5)).logon_failure(&refused, &credentials);
        assert_eq!(failure.cause, Cause::CredentialsRefused);
        assert_eq!(
            failure.message,
            "the relay 10.0.0.1:5985 refused the logon of LAB\\alice (HTTP 401): check the user name and password"
        );
        let direct = Endpoint::direct("web01:5986", Duration::from_secs(5)).unwrap();
        assert!(direct
            .logon_failure(&refused, &credentials)
            .message
            .starts_with("the target web01:5986 refused the logon of LAB\\alice"));
    }

    #[tokio::test]
    async fn nothing_listening_is_an_unreachable_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = Endpoint::direct(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
        let credentials = DelegatedCredentials::new("LAB", "alice", "pw".to_string().into());
        let failure = run_command(
            &endpoint,
            &credentials,
            &CommandLine {
                command: "hostname".into(),
                arguments: vec![],
            },
            Duration::from_secs(2),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (failure.stage, failure.cause.clone()),
            (Stage::Connect, Cause::Unreachable)
        );
        assert!(failure.is_retriable());
        assert!(
            failure
                .message
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}")),
            "{}",
            failure.message
        );
    }

    /// A listener that accepts, holds and counts connections, never answering.
    async fn silent_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn logons_through_one_relay_are_queued_below_its_per_source_cap() {
        let (port, accepted) = silent_listener().await;
        let relay = Relay::parse(&format!("http://127.0.0.1:{port}"), no_tls).unwrap();
        let credentials = Arc::new(DelegatedCredentials::new("LAB", "alice", "pw".to_string().into()));
        for i in 0..20 {
            let endpoint = Endpoint::through_relay(&relay, &format!("web{i:02}"), Duration::from_secs(2));
            let credentials = credentials.clone();
            tokio::spawn(async move {
                let _ = Session::connect(&endpoint, &credentials, Duration::from_secs(2)).await;
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), RELAY_LOGONS_AT_ONCE);
        // Directly, targets are many hosts: nothing is queued.
        let (port, accepted) = silent_listener().await;
        for _ in 0..20 {
            let endpoint = Endpoint::direct(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
            let credentials = credentials.clone();
            tokio::spawn(async move {
                let _ = Session::connect(&endpoint, &credentials, Duration::from_secs(2)).await;
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_cancelled_run_is_interrupted() {
        // Accepts and never answers: the logon waits until cancelled.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let endpoint = Endpoint::direct(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).unwrap();
        let credentials = DelegatedCredentials::new("LAB", "alice", "pw".to_string().into());
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        let command = CommandLine {
            command: "hostname".into(),
            arguments: vec![],
        };
        let failure = run_command(&endpoint, &credentials, &command, Duration::from_secs(30), &cancel)
            .await
            .unwrap_err();
        assert_eq!(failure.cause, Cause::Interrupted);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
