//! winrm-relay: a WinRM bastion that terminates CredSSP and re-issues WS-Man
//! requests to target hosts with the caller's delegated credentials.
//!
//! # Layout
//! A request reads top to bottom in [`server`]: `listen` accepts it (source allowlist,
//! a place among the connections waiting to log on) -> `conn` reads the HTTP request ->
//! `auth` logs the caller on (the [`proto::credssp`] acceptor, or Basic over HTTPS) and
//! hands over the logged-on session -> `pipeline::relay`, whose stages are named as the
//! code names them: `require_encryption` -> `unseal` ([`proto::sealing`]) -> `parse`
//! ([`proto::wsman`]) -> `check_readable` -> `check_audit` -> `resolve` ([`resolve`]:
//! which target) -> `authorize` ([`upstream`] looks its address up, once; [`policy`]
//! decides on the names and that address) -> `check_shell_owner` -> `admit` (quotas) ->
//! `check_command` (the rules' command policy: cmd lines, PowerShell commands, WMI
//! methods) -> `record_command` (a PowerShell pipeline or `-EncodedCommand` decoded,
//! only once allowed) ->
//! `rewrite` ([`proto::wsman`]) -> `exchange` ([`upstream`]: connect to that address,
//! authenticate and seal towards the target) -> `inspect` (exit code, shells, PowerShell
//! streams read by [`proto::psrp`], transcript) -> `answer` (sealed for the caller), and the request's line in
//! [`audit`]. A step that refuses returns a `server::refusal::Refusal`, which decides
//! the answer, the audit fields and the metrics in one place; a refusal inside the
//! pipeline is written on that request's own audit line, with its fault.
//!
//! - [`cli`]: the command-line front-ends, one file each (`serve`, `check`, `user`,
//!   `kerberos`, `audit`, `run`, `policy`), and the dispatch between them. Clap lives only here:
//!   each front-end hands the library plain values and maps the outcome to an exit code.
//! - [`config`]: TOML schema, validation with file:line messages, the users file; builds
//!   the target settings and compiles the allow rules.
//! - [`resolve`]: target settings (TLS trust included) and how a request's target name
//!   resolves to one; used by `config`, `policy` and `upstream`, depends on none of them
//!   (a realm's KDC transport comes from `kerberos::kdc`, which depends on `proto` only).
//! - [`proto`]: sans-IO protocol cores (no tokio, hyper or sockets). `proto::wsman` reads
//!   and rewrites envelopes; `proto::psrp`, PowerShell remoting on top of WS-Man's shell
//!   streams, reassembles and decompresses those streams and reads pipelines out of them
//!   (its `SessionReader` is what a session's audit is fed with).
//!   For constrained delegation, `proto::kerberos` holds the plain Kerberos acceptor,
//!   S4U2Proxy, a client context from a ticket and Kerberos wrap tokens.
//! - [`identity`]: who a caller is: the relay's domain (realm and NetBIOS name), one
//!   principal type that reads every spelling of a user name into one comparable key,
//!   and the users-file row; imports nothing of the crate, every layer uses it.
//! - [`policy`]: allow rules, user or group x target (names, addresses) x shell -> decision
//!   with a reason (and the rule and group that granted); inside a granted shell, the command
//!   policy (cmd lines, PowerShell commands and scripts read as plain commands, WMI methods)
//!   -> verdict naming the rule and the reason.
//! - [`directory`]: Active Directory group membership over LDAP (`[directory]`), looked up at
//!   logon (`server::session`) and held on the session; its reachability for `/readyz`.
//! - [`vault`]: delegated credentials, zeroized on drop, never printed; reading a password
//!   handed to a command on stdin.
//! - [`audit`]: audit event type, the hash-chained JSON-lines sink and its verifier,
//!   session transcripts, the PowerShell events (`audit::psrp`: a session's PSRP reader
//!   fed with allowed exchanges, its events turned into audit lines), the syslog export,
//!   and what the `audit` subcommands do.
//! - [`metrics`]: the Prometheus metrics (no user names or secrets in labels).
//! - [`certs`]: relay certificate loading and dev certificate generation.
//! - [`server`]: hyper listeners, a single-threaded runtime per core for the connections,
//!   per-connection session state, the relay pipeline; `auth` logs callers on with CredSSP,
//!   Basic or (with `[kerberos] delegation = "constrained"`) plain Kerberos.
//! - [`upstream`]: the relay's client to WinRM hosts: address lookup, connect and TLS,
//!   the authentication legs of every mechanism (one driver; a constrained session's
//!   S4U2Proxy ticket per target SPN), sealing on the wire, one
//!   error type saying whose fault a failure was, and a session's pool of kept-alive
//!   connections.
//! - [`kerberos`]: domain mode around sspi's Kerberos: the KDC transport and the one loop
//!   that answers the KDC requests of a Kerberos step (`proto::kerberos`), the keytab,
//!   and the `kerberos test` probe.
//! - [`hardening`]: start-up process hardening (no core dumps, no ptrace by peers, memory locked).
//! - [`fanout`]: `winrm-relay run`, the client: one command on many targets through the
//!   relay (or directly), on the same `upstream` and `proto` cores.

pub mod audit;
pub mod certs;
pub mod cli;
pub mod config;
pub mod directory;
pub mod fanout;
pub mod hardening;
pub mod identity;
pub mod kerberos;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod resolve;
pub mod server;
pub mod upstream;
pub mod vault;
