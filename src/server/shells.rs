//! Shells a session opened on targets: who may use them, and their deletion
//! when the session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::StatusCode;

use super::limits::Slot;
use crate::audit::{AuditEvent, AuditSink};
use crate::proto::wsman::{self, RequestInfo, ResponseInfo};
use crate::resolve::ResolvedTarget;
use crate::upstream::{Pool, TargetConnection};
use crate::vault::DelegatedCredentials;

/// A shell the caller created and has not deleted yet.
pub(crate) struct OpenShell {
    pub target: ResolvedTarget,
    /// The addresses the policy checked when it was created: its Delete at
    /// session end goes there, without resolving the name again.
    addresses: Vec<IpAddr>,
    pub resource_uri: String,
    /// Counts against `limits.max_shells_per_user` until dropped.
    _slot: Slot,
}

/// The shells of one session, by ShellId. Boxed: a map allocates room for
/// several entries even when it holds one, and a session usually has one shell.
#[derive(Default)]
pub(crate) struct Shells(HashMap<String, Box<OpenShell>>);

impl Shells {
    /// A shell belongs to the session (hence the user) that created it, on the
    /// target and with the resource URI it was created with: no other session
    /// may name it, even one of a user allowed on the same target, and a cmd
    /// shell cannot be driven as a PowerShell one (or the reverse) to slip past
    /// the shell rules. The refusal says why.
    pub fn check_owner(&self, info: &RequestInfo, target: &ResolvedTarget) -> Result<(), String> {
        let Some(shell_id) = info.shell_id.as_deref() else {
            return Ok(());
        };
        if info.action_name() == "Create" {
            return Ok(());
        }
        let Some(open) = self.0.get(shell_id) else {
            return Err(format!(
                "shell {shell_id} was not opened in this session: a shell belongs to the session that created it"
            ));
        };
        if !open.target.name.eq_ignore_ascii_case(&target.name) {
            return Err(format!(
                "shell {shell_id} belongs to target {}, not {}",
                open.target.name, target.name
            ));
        }
        if info.resource_uri.as_deref() != Some(open.resource_uri.as_str()) {
            return Err(format!(
                "shell {shell_id} was created as {}; it cannot be used as {}",
                open.resource_uri,
                info.resource_uri.as_deref().unwrap_or("(no ResourceURI)")
            ));
        }
        Ok(())
    }

    /// Remember shells the target created; forget the ones it deleted (or no
    /// longer knows).
    pub fn track(
        &mut self,
        info: &RequestInfo,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        answer: &ResponseInfo,
        status: StatusCode,
        slot: Option<Slot>,
    ) {
        match (info.action_name(), slot, answer.created_shell_id.as_ref()) {
            ("Create", Some(slot), Some(shell_id)) if status.is_success() => {
                let open = OpenShell {
                    target: target.clone(),
                    addresses: addresses.to_vec(),
                    resource_uri: info.resource_uri.clone().unwrap_or_default(),
                    _slot: slot,
                };
                self.0.insert(shell_id.clone(), Box::new(open));
            }
            ("Delete", _, _) => {
                let unknown_to_target = answer
                    .fault
                    .as_ref()
                    .is_some_and(|f| f.subcode.as_deref() == Some("InvalidSelectors"));
                if let Some(shell_id) = &info.shell_id {
                    if status.is_success() || unknown_to_target {
                        self.0.remove(shell_id);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn drain(&mut self) -> Vec<(String, OpenShell)> {
        self.0.drain().map(|(shell_id, shell)| (shell_id, *shell)).collect()
    }
}

/// At session end: delete every shell the caller left open (leaked shells
/// count against the target's MaxShellsPerUser), while the session still
/// holds the credentials to do so. Targets are cleaned in parallel, each on its
/// own connection; the whole cleanup gives up at `deadline`, and every shell
/// gets its `cleanup` audit line either way.
pub(crate) async fn delete_leftovers(
    leftovers: Vec<(String, OpenShell)>,
    pool: &mut Pool,
    credentials: &DelegatedCredentials,
    audit: &AuditSink,
    template: &AuditEvent,
    deadline: Duration,
    max_envelope: usize,
) {
    let mut by_target: HashMap<String, Vec<(String, OpenShell)>> = HashMap::new();
    for (shell_id, shell) in leftovers {
        by_target
            .entry(shell.target.name.to_ascii_lowercase())
            .or_default()
            .push((shell_id, shell));
    }
    let mut cleanups: FuturesUnordered<_> = by_target
        .into_values()
        .map(|shells| {
            let connection = pool.take(&shells[0].1.target.name);
            delete_on_one_target(shells, connection, credentials, audit, template, max_envelope)
        })
        .collect();
    let all = async { while cleanups.next().await.is_some() {} };
    if tokio::time::timeout(deadline, all).await.is_err() {
        tracing::warn!(
            secs = deadline.as_secs(),
            "cleanup of leftover shells gave up at its deadline"
        );
    }
}

async fn delete_on_one_target(
    shells: Vec<(String, OpenShell)>,
    connection: Option<Box<TargetConnection>>,
    credentials: &DelegatedCredentials,
    audit: &AuditSink,
    template: &AuditEvent,
    max_envelope: usize,
) {
    let mut pool = Pool::default();
    if let Some(connection) = connection {
        pool.insert(connection);
    }
    // Audit lines for shells not reached yet are written by the guards'
    // drop if the deadline cuts this short.
    let mut pending: Vec<_> = shells
        .into_iter()
        .map(|(shell_id, shell)| {
            let mut event = template.clone();
            event.target = Some(shell.target.name.clone());
            event.action = Some("Delete".into());
            event.resource_uri = Some(shell.resource_uri.clone());
            event.shell_id = Some(shell_id.clone());
            (shell_id, shell, CleanupAudit::new(audit, event))
        })
        .collect();
    for (shell_id, shell, audit_line) in pending.iter_mut() {
        let request = wsman::delete_shell_request(&shell.target.url, &shell.resource_uri, shell_id);
        let result = pool
            .exchange(
                &shell.target,
                &shell.addresses,
                credentials,
                &request,
                shell.target.timeout,
                max_envelope,
            )
            .await;
        match result {
            Ok(response) => audit_line.finish(Some(response.status.as_u16()), None),
            Err(error) => audit_line.finish(None, Some(error.to_string())),
        }
        tracing::info!(shell = %shell_id, target = %shell.target.name, "deleted a shell left open");
    }
}

/// The `cleanup` line of one leftover shell: written when its Delete is
/// answered, or, if the cleanup deadline drops it first, saying so.
struct CleanupAudit<'a> {
    sink: &'a AuditSink,
    event: Option<AuditEvent>,
    started: Instant,
}

impl<'a> CleanupAudit<'a> {
    fn new(sink: &'a AuditSink, event: AuditEvent) -> Self {
        CleanupAudit {
            sink,
            event: Some(event),
            started: Instant::now(),
        }
    }

    fn finish(&mut self, status: Option<u16>, reason: Option<String>) {
        if let Some(mut event) = self.event.take() {
            event.status = status;
            event.reason = reason;
            event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            self.sink.emit(&event);
        }
    }
}

impl Drop for CleanupAudit<'_> {
    fn drop(&mut self) {
        self.finish(None, Some("not deleted: the cleanup deadline passed first".into()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::proto::wsman::{parse_request, parse_response};
    use crate::server::limits::Quotas;

    const CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
    const PS: &str = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell";

    fn config() -> Config {
        let text = "[listen]\nhttp = \"127.0.0.1:5985\"\ntls_cert = \"c\"\ntls_key = \"k\"\n[auth]\nusers_file = \"u\"\n\
                    [audit]\npath = \"a\"\n[limits]\nmax_shells_per_user = 1\n[[target]]\nname = \"web01\"\nurl = \"http://127.0.0.21:5985/wsman\"\n\
                    [[target]]\nname = \"web02\"\nurl = \"http://127.0.0.22:5985/wsman\"\n";
        Config::parse(Path::new("relay.toml"), text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn request(action: &str, resource_uri: &str, shell: Option<&str>) -> RequestInfo {
        let selector = shell.map_or(String::new(), |id| {
            format!("<w:SelectorSet><w:Selector Name=\"ShellId\">{id}</w:Selector></w:SelectorSet>")
        });
        let xml = format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
             xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\"><s:Header>\
             <a:Action>{action}</a:Action><a:MessageID>uuid:1</a:MessageID>\
             <w:ResourceURI>{resource_uri}</w:ResourceURI>{selector}</s:Header><s:Body/></s:Envelope>"
        );
        parse_request(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn created(shell: &str) -> ResponseInfo {
        let xml = format!(
            "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\"><s:Header/><s:Body>\
             <rsp:Shell><rsp:ShellId>{shell}</rsp:ShellId></rsp:Shell></s:Body></s:Envelope>"
        );
        parse_response(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_shell_is_usable_only_on_its_target_with_its_resource_uri_and_until_deleted() {
        let config = config();
        let web01 = config.resolve_target("web01").unwrap();
        let web02 = config.resolve_target("web02").unwrap();
        let quotas = Quotas::new(config.limits.clone());
        let mut shells = Shells::default();
        let create = request("http://schemas.xmlsoap.org/ws/2004/09/transfer/Create", CMD, None);
        let slot = quotas.shell("LAB\\alice").unwrap();
        shells.track(&create, &web01, &[], &created("S1"), StatusCode::OK, Some(slot));
        let command = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
        assert_eq!(shells.check_owner(&request(command, CMD, Some("S1")), &web01), Ok(()));
        let elsewhere = shells
            .check_owner(&request(command, CMD, Some("S1")), &web02)
            .unwrap_err();
        assert!(elsewhere.contains("belongs to target web01"), "{elsewhere}");
        let as_powershell = shells
            .check_owner(&request(command, PS, Some("S1")), &web01)
            .unwrap_err();
        assert!(as_powershell.contains("cannot be used as"), "{as_powershell}");
        let unknown = shells
            .check_owner(&request(command, CMD, Some("S2")), &web01)
            .unwrap_err();
        assert!(unknown.contains("not opened in this session"), "{unknown}");
        assert!(
            quotas.shell("LAB\\alice").is_err(),
            "the open shell holds the only slot"
        );
        // Deleted: gone from the table, and its quota slot with it.
        let delete = request("http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete", CMD, Some("S1"));
        shells.track(&delete, &web01, &[], &ResponseInfo::default(), StatusCode::OK, None);
        assert!(shells.check_owner(&request(command, CMD, Some("S1")), &web01).is_err());
        assert!(shells.drain().is_empty());
        assert!(quotas.shell("LAB\\alice").is_ok());
    }
}
