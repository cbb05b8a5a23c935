//! Deny-by-default access policy: `[[allow]]` rules decide which user may reach which
//! target and open which shell (WS-Man resource URI).
//!
//! A rule matches when one of its `users` matches or the caller is in one of its `groups`,
//! its `targets` reach the target and, for
//! requests that carry a resource URI, one of its `shells` matches. Rules only ever grant;
//! nothing matches means deny, with a reason an operator can act on.
//!
//! - users: globs on a principal's key (`domain\user`, case-insensitive; `user@DOMAIN` is
//!   rewritten, and the relay's realm is its NetBIOS name, see [`Principal::key`]), so a rule
//!   matches however the caller spelled the name.
//! - groups: Active Directory groups of the relay's domain (`LAB\WinRM-Operators`,
//!   `WinRM-Operators@lab.test`, any case), matched against the caller's [`Groups`] as the
//!   directory gave them at logon. When the directory could not be asked, group rules
//!   cannot grant and a denial says why; user rules are unaffected.
//! - targets (case-insensitive):
//!   - a glob (`web*`, `*`) matches configured `[[target]]` aliases only, so that a caller
//!     cannot type any host that happens to match (`web.attacker.example`) and use the
//!     relay as a pivot;
//!   - an exact name (`web01`, `db01.lab.local`) matches an alias or a host name;
//!   - `*.` and a domain (`*.corp.example.com`) matches alias and host names under that
//!     domain, at any depth, but not the domain itself;
//!   - CIDRs and addresses (`10.1.0.0/16`, `10.0.0.5`) match when every address the relay
//!     will connect to lies in the rule's networks. The caller passes the addresses it
//!     looked up once and then connects to, so a name cannot resolve to one address when
//!     checked and to another when connected.
//! - shells: `cmd`, `powershell` (any PSRP configuration), `powershell/<glob>` (configuration
//!   name), or an exact resource URI.
//!
//! Inside what a rule grants, its command policy ([`command`]) decides what may run: cmd
//! command lines (`commands`), PowerShell commands (`cmdlets`, scripts read by
//! [`script`]), WMI methods (`methods`) and writes (`wmi_writes`). [`Policy::judge`] asks
//! every rule that grants the shell; one that allows is enough.
//!
//! Config validation compiles the rules once with the entry parsers below, so `check` and
//! the running relay agree on what a rule means.

pub mod command;
pub mod script;

use std::net::IpAddr;

use glob::{MatchOptions, Pattern};
use ipnet::IpNet;

use crate::identity::{Domain, Groups, Principal, PrincipalKey};
use crate::resolve::host::validate_hostname;
use crate::resolve::ResolvedTarget;

pub use command::{encoded_powershell, CommandPolicy, Invocation, PsCommand, WmiAction};
pub(crate) use command::{parse_cmdlet, parse_command, parse_method};

/// The resource URI of a cmd shell.
pub const CMD_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
/// Prefix of PowerShell remoting resource URIs; the rest is the session configuration.
pub const POWERSHELL_PREFIX: &str = "http://schemas.microsoft.com/powershell/";

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

/// Outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted by `[[allow]]` number `rule` (0-based, file order), through the caller's
    /// membership of `group` when the rule granted by a group rather than by a user.
    Allow {
        rule: usize,
        group: Option<String>,
    },
    Deny {
        reason: String,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Who asks, for [`Policy::decide`]: the name as logged on and the groups found at logon.
/// A bare name (`"LAB\\alice".into()`) has no groups.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub user: &'a str,
    pub groups: &'a Groups,
}

static NO_GROUPS: Groups = Groups::NotNeeded;

impl<'a> From<&'a str> for Caller<'a> {
    fn from(user: &'a str) -> Caller<'a> {
        Caller {
            user,
            groups: &NO_GROUPS,
        }
    }
}

/// The compiled `[[allow]]` rules, in file order.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// The relay's domain, which the rules' user patterns were compiled in: callers'
    /// names are keyed in it too.
    domain: Option<Domain>,
}

/// One compiled `[[allow]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    users: Vec<Pattern>,
    /// Groups of the relay's domain, in canonical form (`LAB\WinRM-Operators`).
    groups: Vec<Principal>,
    names: Vec<NameMatcher>,
    networks: Vec<IpNet>,
    shells: Vec<ShellMatcher>,
    commands: CommandPolicy,
}

/// Outcome of [`Policy::judge`]: the rule that decided (`allow[0]`, as `check` names it)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        rule: usize,
        reason: String,
    },
    /// `rule` is `None` when no rule grants the shell at all.
    Deny {
        rule: Option<usize>,
        reason: String,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// A rule's name in messages: its key in the config, as `check` reports it.
pub fn rule_name(rule: usize) -> String {
    format!("allow[{rule}]")
}

impl Rule {
    pub(crate) fn new(
        users: Vec<Pattern>,
        groups: Vec<Principal>,
        targets: Vec<TargetMatcher>,
        shells: Vec<ShellMatcher>,
    ) -> Rule {
        let mut names = Vec::new();
        let mut networks = Vec::new();
        for target in targets {
            match target {
                TargetMatcher::Name(n) => names.push(n),
                TargetMatcher::Network(net) => networks.push(net),
            }
        }
        Rule {
            users,
            groups,
            names,
            networks,
            shells,
            commands: CommandPolicy::default(),
        }
    }

    /// Whether the rule applies to this caller: `Some(None)` by a user pattern,
    /// `Some(Some(group))` through a group the caller is in, `None` not at all.
    fn grants(&self, user: &PrincipalKey, groups: &Groups, domain: Option<&Domain>) -> Option<Option<&Principal>> {
        if self.users.iter().any(|p| p.matches_with(user.as_str(), MATCH)) {
            return Some(None);
        }
        self.groups.iter().find(|g| groups.contains(g, domain)).map(Some)
    }

    /// The rule with a command policy.
    pub(crate) fn with_commands(self, commands: CommandPolicy) -> Rule {
        Rule { commands, ..self }
    }

    fn reaches(&self, target: &ResolvedTarget, addresses: &[IpAddr]) -> bool {
        self.names.iter().any(|n| n.matches(target))
            || (!addresses.is_empty()
                && addresses
                    .iter()
                    .all(|a| self.networks.iter().any(|net| net.contains(&a.to_canonical()))))
    }
}

/// One `targets` entry.
#[derive(Debug, Clone)]
pub(crate) enum TargetMatcher {
    Name(NameMatcher),
    /// Matches the addresses the relay connects to.
    Network(IpNet),
}

#[derive(Debug, Clone)]
pub(crate) enum NameMatcher {
    /// A glob on configured aliases only.
    AliasGlob(Pattern),
    /// An alias or a host name, exactly.
    Exact(String),
    /// Names under a domain; holds the domain with its leading dot (`.corp.example.com`).
    Subdomain(String),
}

impl NameMatcher {
    fn matches(&self, t: &ResolvedTarget) -> bool {
        let alias = t.alias.as_deref();
        match self {
            NameMatcher::AliasGlob(p) => alias.is_some_and(|a| p.matches_with(a, MATCH)),
            NameMatcher::Exact(name) => {
                alias.is_some_and(|a| a.eq_ignore_ascii_case(name)) || t.host.eq_ignore_ascii_case(name)
            }
            NameMatcher::Subdomain(suffix) => alias
                .into_iter()
                .chain([t.host.as_str()])
                .any(|name| ends_with_ignore_case(name, suffix)),
        }
    }
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
    name.len() > suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// One `shells` entry, with the text it was written as (for deny reasons).
#[derive(Debug, Clone)]
pub(crate) struct ShellMatcher {
    entry: String,
    kind: ShellKind,
}

#[derive(Debug, Clone)]
enum ShellKind {
    Cmd,
    /// `None`: any PowerShell configuration.
    PowerShell(Option<Pattern>),
    Uri(String),
}

impl ShellMatcher {
    fn matches(&self, uri: &str) -> bool {
        match &self.kind {
            ShellKind::Cmd => uri.eq_ignore_ascii_case(CMD_URI),
            ShellKind::PowerShell(glob) => match powershell_configuration(uri) {
                Some(conf) => glob.as_ref().is_none_or(|g| g.matches_with(conf, MATCH)),
                None => false,
            },
            ShellKind::Uri(u) => uri.eq_ignore_ascii_case(u),
        }
    }
}

/// The configuration name of a PowerShell remoting resource URI.
fn powershell_configuration(uri: &str) -> Option<&str> {
    let prefix = uri.get(..POWERSHELL_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(POWERSHELL_PREFIX) {
        return None;
    }
    let conf = &uri[POWERSHELL_PREFIX.len()..];
    (!conf.is_empty()).then_some(conf)
}

fn is_shell_uri(uri: &str) -> bool {
    uri.eq_ignore_ascii_case(CMD_URI) || powershell_configuration(uri).is_some()
}

fn compile_glob(s: &str) -> Result<Pattern, String> {
    Pattern::new(s).map_err(|e| format!("invalid glob {s:?}: {}", e.msg))
}

/// Parses one `users` entry into a glob on principal keys, read as a name is
/// ([`Principal::parse`]) and keyed in the relay's `domain`: `alice@LAB.TEST` is the
/// pattern `lab\alice` when the relay's domain is LAB.
pub(crate) fn parse_user(entry: &str, domain: Option<&Domain>) -> Result<Pattern, String> {
    if entry.is_empty() {
        return Err("empty user pattern".into());
    }
    if entry == "*" {
        return compile_glob(entry);
    }
    // A bare "alice" could never match "LAB\alice"; say so instead of silently denying.
    if !entry.contains(['\\', '@']) {
        return Err(format!(
            "user pattern {entry:?} has no domain: write DOMAIN\\{entry} or *\\{entry}"
        ));
    }
    compile_glob(Principal::parse(entry).key(domain).as_str())
}

/// Parses one `groups` entry: a group of the relay's `domain`, `LAB\Group` or
/// `Group@lab.test`, kept in canonical form. Group names are matched exactly: no globs.
pub(crate) fn parse_group(entry: &str, domain: Option<&Domain>) -> Result<Principal, String> {
    let Some(domain) = domain else {
        return Err(format!(
            "group {entry:?}: groups are looked up in the relay's domain: configure [kerberos] (realm) and [directory]"
        ));
    };
    let group = Principal::parse(entry);
    if !entry.contains(['\\', '@']) {
        return Err(format!(
            "group {entry:?} has no domain: write {}\\{entry} or {entry}@{}",
            domain.netbios,
            domain.realm.to_ascii_lowercase()
        ));
    }
    if !domain.is_named(group.domain()) {
        return Err(format!(
            "group {entry:?} is not in the relay's domain ({} or {}): only its directory is asked",
            domain.netbios, domain.realm
        ));
    }
    let name = group.user();
    if name.is_empty()
        || name.contains([
            '*', '?', '[', ']', '\\', '/', '"', ':', ';', '|', '=', ',', '+', '<', '>',
        ])
    {
        return Err(format!(
            "group {entry:?}: {name:?} is not a group name (groups are matched exactly, without globs)"
        ));
    }
    Ok(group.canonical(Some(domain)))
}

/// Parses one `targets` entry: CIDR, IP literal, `*.domain`, alias glob or exact name.
pub(crate) fn parse_target(entry: &str) -> Result<TargetMatcher, String> {
    if entry.is_empty() {
        return Err("empty target pattern".into());
    }
    if entry.contains('/') {
        return entry
            .parse::<IpNet>()
            .map(|n| TargetMatcher::Network(n.trunc()))
            .map_err(|_| format!("invalid CIDR {entry:?}"));
    }
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(TargetMatcher::Network(IpNet::from(ip.to_canonical())));
    }
    if entry.contains(':') {
        return Err(format!(
            "target pattern {entry:?}: ports are not matched, name the host or alias only"
        ));
    }
    let is_glob = |s: &str| s.contains(['*', '?', '[', ']']);
    if let Some(domain) = entry.strip_prefix("*.").filter(|d| !is_glob(d)) {
        validate_hostname(domain).map_err(|m| format!("target pattern {entry:?}: {m}"))?;
        return Ok(TargetMatcher::Name(NameMatcher::Subdomain(format!(".{domain}"))));
    }
    if is_glob(entry) {
        return compile_glob(entry).map(|g| TargetMatcher::Name(NameMatcher::AliasGlob(g)));
    }
    validate_hostname(entry).map_err(|m| format!("target pattern {entry:?}: {m}"))?;
    Ok(TargetMatcher::Name(NameMatcher::Exact(entry.to_string())))
}

/// Parses one `shells` entry.
pub(crate) fn parse_shell(entry: &str) -> Result<ShellMatcher, String> {
    let matcher = |kind| ShellMatcher {
        entry: entry.to_string(),
        kind,
    };
    if entry.eq_ignore_ascii_case("cmd") {
        return Ok(matcher(ShellKind::Cmd));
    }
    if entry.eq_ignore_ascii_case("powershell") {
        return Ok(matcher(ShellKind::PowerShell(None)));
    }
    if let Some(conf) = entry
        .get(..11)
        .filter(|p| p.eq_ignore_ascii_case("powershell/"))
        .map(|_| &entry[11..])
    {
        if conf.is_empty() {
            return Err("powershell/ needs a configuration name or glob".into());
        }
        return compile_glob(conf).map(|g| matcher(ShellKind::PowerShell(Some(g))));
    }
    let lower = entry.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !entry.contains(char::is_whitespace) => {
            Ok(matcher(ShellKind::Uri(entry.to_string())))
        }
        _ => Err(format!(
            "invalid shell {entry:?}: expected cmd, powershell, powershell/<configuration glob> \
             or an absolute http(s) resource URI"
        )),
    }
}

impl Policy {
    /// `rules` with user patterns compiled by [`parse_user`] in `domain`.
    pub fn new(rules: Vec<Rule>, domain: Option<Domain>) -> Policy {
        Policy { rules, domain }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Every group some rule names, once each, in file order: what a logon looks up.
    pub fn groups(&self) -> Vec<Principal> {
        let mut out: Vec<Principal> = Vec::new();
        for group in self.rules.iter().flat_map(|r| &r.groups) {
            if !out.contains(group) {
                out.push(group.clone());
            }
        }
        out
    }

    /// Whether some rule could let `user` reach `target` once its addresses are known:
    /// one that names it, or one with networks. When not, the request can be denied
    /// without a lookup, so a user no rule could grant cannot make the relay resolve names.
    pub fn may_reach<'a>(&self, caller: impl Into<Caller<'a>>, target: &ResolvedTarget) -> bool {
        let caller = caller.into();
        let user = Principal::parse(caller.user).key(self.domain.as_ref());
        self.rules
            .iter()
            .filter(|r| r.grants(&user, caller.groups, self.domain.as_ref()).is_some())
            .any(|r| !r.networks.is_empty() || r.names.iter().any(|n| n.matches(target)))
    }

    /// Decides whether `user` (any spelling of the name) may send a request to `target` at
    /// `addresses`: every address the relay may connect to for it (looked up once, or the
    /// peer of the connection in use). CIDR rules grant only when all of them lie in
    /// their networks; with no addresses, only rules naming the target can grant.
    ///
    /// `resource_uri` is the request's WS-Man ResourceURI; `None` (e.g. Identify) is allowed
    /// as soon as some rule lets the user reach the target.
    pub fn decide<'a>(
        &self,
        caller: impl Into<Caller<'a>>,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        resource_uri: Option<&str>,
    ) -> Decision {
        let caller = caller.into();
        let user = Principal::parse(caller.user);
        let reachable = self.reachable(caller, target, addresses);
        let allow = |rule: usize, group: Option<&Principal>| Decision::Allow {
            rule,
            group: group.map(ToString::to_string),
        };
        let Some(&(first, _, first_group)) = reachable.first() else {
            let unchecked = self.unchecked_groups(caller.groups, target, addresses);
            let hint = if target.alias.is_none() {
                "; a host that is not a [[target]] is reached only by a rule that names it exactly, \
                 its domain (*.example.com) or its network (CIDR)"
            } else {
                ""
            };
            return Decision::Deny {
                reason: format!(
                    "no [[allow]] rule lets {user} reach target {}{unchecked}{hint}",
                    describe(target, addresses)
                ),
            };
        };
        let Some(uri) = resource_uri else {
            return allow(first, first_group);
        };
        if let Some(&(rule, _, group)) = reachable
            .iter()
            .find(|(_, r, _)| r.shells.iter().any(|s| s.matches(uri)))
        {
            return allow(rule, group);
        }
        let mut allowed: Vec<&str> = Vec::new();
        for label in reachable
            .iter()
            .flat_map(|(_, r, _)| r.shells.iter().map(|s| s.entry.as_str()))
        {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(label)) {
                allowed.push(label);
            }
        }
        let verb = if is_shell_uri(uri) {
            "open shell"
        } else {
            "use resource"
        };
        let allowed = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.join(", ")
        };
        Decision::Deny {
            reason: format!(
                "no [[allow]] rule lets {user} {verb} {uri} on {} (allowed shells: {allowed})",
                describe(target, &[])
            ),
        }
    }
}

/// Rules that apply to a caller and reach a target: number, rule, and the group through
/// which it applies (`None`: by a user pattern).
type Reachable<'r> = Vec<(usize, &'r Rule, Option<&'r Principal>)>;

impl Policy {
    /// When the directory could not be asked, the rules that would have reached the target
    /// had the caller been in their groups: said in the denial, with the directory's error.
    fn unchecked_groups(&self, groups: &Groups, target: &ResolvedTarget, addresses: &[IpAddr]) -> String {
        let Groups::Unavailable(why) = groups else {
            return String::new();
        };
        let rules: Vec<String> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.groups.is_empty() && r.reaches(target, addresses))
            .map(|(i, r)| {
                let names: Vec<String> = r.groups.iter().map(ToString::to_string).collect();
                format!("rule {i} (groups {})", names.join(", "))
            })
            .collect();
        if rules.is_empty() {
            return String::new();
        }
        format!(
            "; group membership could not be checked for {}: {why}",
            rules.join(", ")
        )
    }

    /// The rules that let `caller` reach `target` at `addresses`, with their numbers and the
    /// group through which each applies (`None`: by a user pattern).
    fn reachable(&self, caller: Caller<'_>, target: &ResolvedTarget, addresses: &[IpAddr]) -> Reachable<'_> {
        let domain = self.domain.as_ref();
        let key = Principal::parse(caller.user).key(domain);
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r, r.grants(&key, caller.groups, domain)?)))
            .filter(|(_, r, _)| r.reaches(target, addresses))
            .collect()
    }

    /// The rules that grant `user` the shell or resource `uri` on `target`.
    fn granting(&self, caller: Caller<'_>, target: &ResolvedTarget, addresses: &[IpAddr], uri: &str) -> Reachable<'_> {
        let mut granting = self.reachable(caller, target, addresses);
        granting.retain(|(_, r, _)| r.shells.iter().any(|s| s.matches(uri)));
        granting
    }

    /// Whether every rule granting `uri` restricts commands: only then does the relay
    /// need to read a pipeline (and refuse one it cannot read).
    pub fn restricts_commands<'a>(
        &self,
        caller: impl Into<Caller<'a>>,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        uri: &str,
    ) -> bool {
        let granting = self.granting(caller.into(), target, addresses, uri);
        !granting.is_empty() && granting.iter().all(|(_, r, _)| r.commands.restricts_commands())
    }

    /// Judges what a request asks `uri` to do, for a request [`Policy::decide`] allowed:
    /// allowed when one rule granting `uri` allows it (rules only ever grant), else
    /// refused with the first granting rule's reason.
    pub fn judge<'a>(
        &self,
        caller: impl Into<Caller<'a>>,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        uri: &str,
        invocation: &Invocation<'_>,
    ) -> Verdict {
        let caller = caller.into();
        let mut refused = None;
        for (i, rule, _) in self.granting(caller, target, addresses, uri) {
            match rule.commands.judge(&rule_name(i), uri, invocation) {
                Ok(reason) => return Verdict::Allow { rule: i, reason },
                Err(reason) => {
                    refused.get_or_insert(Verdict::Deny { rule: Some(i), reason });
                }
            }
        }
        refused.unwrap_or_else(|| Verdict::Deny {
            rule: None,
            reason: format!(
                "no [[allow]] rule lets {} use {uri} on {}",
                caller.user,
                describe(target, &[])
            ),
        })
    }

    /// The whole decision on a request, as the relay takes it: [`Policy::decide`] on the
    /// user, target and shell, then [`Policy::judge`] on what it asks the shell to do.
    pub fn decide_request<'a>(
        &self,
        caller: impl Into<Caller<'a>>,
        target: &ResolvedTarget,
        addresses: &[IpAddr],
        uri: &str,
        invocation: &Invocation<'_>,
    ) -> Verdict {
        let caller = caller.into();
        match self.decide(caller, target, addresses, Some(uri)) {
            Decision::Allow { .. } => self.judge(caller, target, addresses, uri, invocation),
            Decision::Deny { reason } => Verdict::Deny { rule: None, reason },
        }
    }
}

/// `web01 (127.0.0.21)` for aliases, the name as given otherwise; then the addresses a
/// host name resolved to, when they were looked up.
fn describe(t: &ResolvedTarget, addresses: &[IpAddr]) -> String {
    let named = match &t.alias {
        Some(alias) => format!("{alias} ({})", t.host),
        None => t.name.clone(),
    };
    if t.ip.is_some() || addresses.is_empty() {
        return named;
    }
    let addresses: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    format!("{named}, which resolves to {}", addresses.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::{resolve_target, TargetAuth, TargetConfig, TargetDefaults, TargetTls, TlsTrust};
    use std::sync::OnceLock;
    use std::time::Duration;

    fn configured(name: &str, url: &str) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            url: url.into(),
            parsed_url: Some(crate::resolve::host::parse_target_url(url).expect("test url")),
            auth: TargetAuth::Negotiate,
            listen: None,
            tls: None,
            kerberos: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    /// web01, web02 and db01 (db01.lab.local), as a config would list them.
    fn target(name: &str) -> ResolvedTarget {
        static TARGETS: OnceLock<(Vec<TargetConfig>, TargetDefaults)> = OnceLock::new();
        let (targets, defaults) = TARGETS.get_or_init(|| {
            let targets = vec![
                configured("web01", "http://127.0.0.21:5985/wsman"),
                configured("web02", "http://127.0.0.22:5985/wsman"),
                configured("db01", "http://db01.lab.local:5985/wsman"),
            ];
            let defaults = TargetDefaults {
                auth: TargetAuth::Negotiate,
                port: 5985,
                https_port: 5986,
                tls: TargetTls::new(TlsTrust::Roots(None)).expect("tls"),
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                kerberos: None,
            };
            (targets, defaults)
        });
        resolve_target(targets, defaults, name).expect("target")
    }

    fn rule(users: &[&str], targets: &[&str], shells: &[&str]) -> Rule {
        Rule::new(
            users.iter().map(|u| parse_user(u, None).unwrap()).collect(),
            Vec::new(),
            targets.iter().map(|t| parse_target(t).unwrap()).collect(),
            shells.iter().map(|s| parse_shell(s).unwrap()).collect(),
        )
    }

    fn policy() -> Policy {
        Policy::new(
            vec![
                rule(&["LAB\\alice", "LAB\\ops-*"], &["web*"], &["cmd", "powershell"]),
                rule(&["lab\\alice"], &["10.1.0.0/16", "db*"], &["cmd"]),
                rule(
                    &["carol@LAB"],
                    &["db01"],
                    &[
                        "powershell/JEA-*",
                        "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service",
                    ],
                ),
            ],
            None,
        )
    }

    fn ps(conf: &str) -> String {
        format!("{POWERSHELL_PREFIX}{conf}")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn allows_matching_user_target_and_shell() {
        let p = policy();
        let web01 = target("WEB01");
        assert_eq!(
            p.decide("LAB\\alice", &web01, &[], Some(CMD_URI)),
            Decision::Allow { rule: 0, group: None }
        );
        assert_eq!(
            p.decide("lab\\OPS-7", &web01, &[], Some(&ps("Microsoft.PowerShell"))),
            Decision::Allow { rule: 0, group: None }
        );
        assert_eq!(
            p.decide("alice@LAB", &web01, &[], None),
            Decision::Allow { rule: 0, group: None }
        );
    }

    #[test]
    fn name_globs_match_configured_aliases_only() {
        let p = policy();
        // web* would match these names, but nobody listed them: no pivot through the relay,
        // whatever they resolve to (even web01's own address).
        for name in ["web.attacker.example", "web77.lab.local", "webmail:5985"] {
            let t = target(name);
            for addresses in [vec![], ips(&["127.0.0.21"])] {
                let d = p.decide("LAB\\alice", &t, &addresses, Some(CMD_URI));
                let Decision::Deny { reason } = d else {
                    panic!("{name} allowed")
                };
                assert!(
                    reason.starts_with(&format!("no [[allow]] rule lets LAB\\alice reach target {name}"))
                        && reason.contains("a host that is not a [[target]] is reached only by a rule"),
                    "{reason}"
                );
            }
            assert!(!p.may_reach("LAB\\ops-1", &t), "{name}");
        }
        assert_eq!(
            p.decide(
                "LAB\\alice",
                &target("web.attacker.example"),
                &ips(&["203.0.113.7"]),
                None
            ),
            Decision::Deny {
                reason: "no [[allow]] rule lets LAB\\alice reach target web.attacker.example, which resolves to \
                         203.0.113.7; a host that is not a [[target]] is reached only by a rule that names it \
                         exactly, its domain (*.example.com) or its network (CIDR)"
                    .into()
            }
        );
        // A configured target keeps its alias however it is named, so the glob applies.
        let by_address = target("127.0.0.21");
        assert_eq!(by_address.alias.as_deref(), Some("web01"));
        assert!(p.decide("LAB\\alice", &by_address, &[], Some(CMD_URI)).is_allowed());
        // "*" is every configured target, and only those.
        let any = Policy::new(vec![rule(&["*"], &["*"], &["cmd"])], None);
        assert!(any.decide("LAB\\x", &target("db01"), &[], None).is_allowed());
        assert!(!any.decide("LAB\\x", &target("db02"), &[], None).is_allowed());
    }

    #[test]
    fn exact_names_match_aliases_and_host_names() {
        let p = Policy::new(
            vec![rule(&["LAB\\*"], &["db01.lab.local", "files", "WEB02"], &["cmd"])],
            None,
        );
        let allowed = |name: &str| p.decide("LAB\\u", &target(name), &[], None).is_allowed();
        // db01 is configured at db01.lab.local; "files" is not configured but named exactly.
        assert!(allowed("db01") && allowed("DB01.lab.local") && allowed("files") && allowed("files:5999"));
        assert!(allowed("web02") && allowed("127.0.0.22"));
        for other in ["db01.lab.local.evil.example", "files.evil", "xfiles", "web01"] {
            assert!(!allowed(other), "{other}");
        }
    }

    #[test]
    fn domain_patterns_match_names_under_the_domain() {
        let p = Policy::new(
            vec![rule(&["LAB\\*"], &["*.corp.example.com", "*.lab.local"], &["cmd"])],
            None,
        );
        let allowed = |name: &str| p.decide("LAB\\u", &target(name), &[], None).is_allowed();
        for inside in [
            "app.corp.example.com",
            "a.b.corp.example.com",
            "APP.Corp.Example.COM:5986",
            "db01",
        ] {
            assert!(allowed(inside), "{inside}");
        }
        // Not the domain itself, not a lookalike, not a name that only contains it.
        for outside in [
            "corp.example.com",
            "evilcorp.example.com",
            "app.corp.example.com.evil.example",
            "web01",
        ] {
            assert!(!allowed(outside), "{outside}");
        }
    }

    #[test]
    fn networks_match_every_address_the_relay_connects_to() {
        let p = policy();
        let alice = |t: &ResolvedTarget, addresses: &[&str]| p.decide("LAB\\alice", t, &ips(addresses), None);
        let literal = target("10.1.2.3:5986");
        assert_eq!(alice(&literal, &["10.1.2.3"]), Decision::Allow { rule: 1, group: None });
        assert!(!alice(&target("10.2.0.1"), &["10.2.0.1"]).is_allowed());
        // A host name is judged by what it resolved to, not by its name.
        let app = target("app.example.net");
        assert_eq!(alice(&app, &["10.1.0.9"]), Decision::Allow { rule: 1, group: None });
        assert_eq!(
            alice(&app, &["::ffff:10.1.0.9"]),
            Decision::Allow { rule: 1, group: None }
        );
        assert!(!alice(&app, &["10.2.0.9"]).is_allowed());
        // One address outside is enough to refuse: the relay may connect to any of them.
        let Decision::Deny { reason } = alice(&app, &["10.1.0.9", "192.0.2.1"]) else {
            panic!("allowed with an address outside the network")
        };
        assert!(
            reason.contains("app.example.net, which resolves to 10.1.0.9, 192.0.2.1"),
            "{reason}"
        );
        // Not looked up: networks cannot grant.
        assert!(!alice(&app, &[]).is_allowed());
        // The rule's networks together: each address in one of them.
        let two = Policy::new(vec![rule(&["LAB\\*"], &["10.1.0.0/16", "::1"], &["cmd"])], None);
        assert!(two
            .decide("LAB\\u", &app, &ips(&["10.1.0.9", "::1"]), None)
            .is_allowed());
        assert!(!two
            .decide("LAB\\u", &app, &ips(&["10.1.0.9", "::2"]), None)
            .is_allowed());
    }

    #[test]
    fn may_reach_says_whether_a_lookup_can_matter() {
        let p = policy();
        let app = target("app.example.net");
        // alice has a rule with networks: the addresses decide.
        assert!(p.may_reach("LAB\\alice", &app));
        // ops-* only has web*: no address could grant app.example.net, no lookup.
        assert!(!p.may_reach("LAB\\ops-1", &app));
        assert!(p.may_reach("LAB\\ops-1", &target("web02")));
        assert!(!p.may_reach("LAB\\nobody", &target("web02")));
    }

    #[test]
    fn denies_unknown_user_with_target_in_reason() {
        let p = policy();
        let web02 = target("web02");
        assert_eq!(
            p.decide("LAB\\bob", &web02, &ips(&["127.0.0.22"]), None),
            Decision::Deny {
                reason: "no [[allow]] rule lets LAB\\bob reach target web02 (127.0.0.22)".into()
            }
        );
        // "ops-*" must not match a user in another domain.
        assert!(!p.decide("EVIL\\ops-1", &web02, &[], None).is_allowed());
    }

    #[test]
    fn denies_shell_and_lists_allowed_ones() {
        let p = policy();
        let db01 = target("db01");
        let d = p.decide("LAB\\alice", &db01, &[], Some(&ps("Microsoft.Exchange")));
        assert_eq!(
            d,
            Decision::Deny {
                reason: "no [[allow]] rule lets LAB\\alice open shell \
                         http://schemas.microsoft.com/powershell/Microsoft.Exchange on db01 \
                         (db01.lab.local) (allowed shells: cmd)"
                    .into()
            }
        );
    }

    #[test]
    fn powershell_configuration_globs_and_exact_uris() {
        let p = policy();
        let db01 = target("db01");
        let carol = |uri: &str| p.decide("LAB\\carol", &db01, &[], Some(uri));
        assert!(carol(&ps("jea-maintenance")).is_allowed());
        assert!(!carol(&ps("Microsoft.PowerShell")).is_allowed());
        assert!(!carol(CMD_URI).is_allowed());
        assert!(carol("HTTP://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/win32_service").is_allowed());
        let Decision::Deny { reason } = carol("http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Process")
        else {
            panic!("allowed")
        };
        assert!(reason.contains("use resource"), "{reason}");
        // The bare prefix is not a PowerShell configuration.
        assert!(!p
            .decide("LAB\\alice", &target("web01"), &[], Some(POWERSHELL_PREFIX))
            .is_allowed());
    }

    #[test]
    fn no_rules_denies_everything() {
        let p = Policy::default();
        assert!(!p
            .decide("LAB\\alice", &target("web01"), &ips(&["127.0.0.21"]), None)
            .is_allowed());
        assert!(!p.may_reach("LAB\\alice", &target("web01")));
    }

    #[test]
    fn rules_match_every_spelling_of_a_user_of_the_relays_domain() {
        let lab = Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        let users = |u: &[&str]| u.iter().map(|u| parse_user(u, Some(&lab)).unwrap()).collect();
        let p = Policy::new(
            vec![
                Rule::new(
                    users(&["alice@LAB.TEST"]),
                    Vec::new(),
                    vec![parse_target("web01").unwrap()],
                    Vec::new(),
                ),
                Rule::new(
                    users(&["LAB\\bob"]),
                    Vec::new(),
                    vec![parse_target("web02").unwrap()],
                    Vec::new(),
                ),
                Rule::new(
                    users(&["lab.test\\ops-*"]),
                    Vec::new(),
                    vec![parse_target("db01").unwrap()],
                    Vec::new(),
                ),
            ],
            Some(lab.clone()),
        );
        for alice in [
            "LAB\\alice",
            "lab\\ALICE",
            "\\LAB\\alice",
            "alice@LAB",
            "alice@lab.test",
            "LAB.TEST\\alice",
        ] {
            assert!(p.decide(alice, &target("web01"), &[], None).is_allowed(), "{alice}");
        }
        assert!(p.decide("bob@LAB.TEST", &target("web02"), &[], None).is_allowed());
        assert!(p.decide("LAB\\ops-1", &target("db01"), &[], None).is_allowed());
        // A whole Kerberos name is not its first component, nor is another domain's user ours.
        assert!(!p.decide("bob/eve@LAB.TEST", &target("web02"), &[], None).is_allowed());
        assert!(!p.decide("OTHER\\alice", &target("web01"), &[], None).is_allowed());
        // Reasons show the name as the caller's session holds it.
        assert_eq!(
            p.decide("LAB\\alice", &target("web02"), &[], None),
            Decision::Deny {
                reason: "no [[allow]] rule lets LAB\\alice reach target web02 (127.0.0.22)".into()
            }
        );
    }

    /// The example rule, for LAB\helpdesk on web*, and an unrestricted one for ops.
    fn command_policy() -> Policy {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let helpdesk =
            rule(&["LAB\\helpdesk"], &["web*"], &["cmd", "powershell", WIN32_SERVICE]).with_commands(CommandPolicy {
                commands: Some(
                    [
                        "hostname",
                        "ipconfig /all",
                        "sc query *",
                        "sc query * | findstr RUNNING",
                    ]
                    .iter()
                    .map(|c| parse_command(c).unwrap())
                    .collect(),
                ),
                cmdlets: Some(
                    ["Get-Service", "Restart-Service -Name Spooler|W32Time"]
                        .iter()
                        .map(|c| parse_cmdlet(c).unwrap())
                        .collect(),
                ),
                methods: list(&["StopService", "StartService"]),
                wmi_writes: false,
            });
        let ops = rule(&["LAB\\ops"], &["web*"], &["cmd", "powershell", WIN32_SERVICE]);
        Policy::new(vec![helpdesk, ops], None)
    }

    const WIN32_SERVICE: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service";

    fn judge(user: &str, uri: &str, invocation: Invocation<'_>) -> Verdict {
        command_policy().judge(user, &target("web01"), &[], uri, &invocation)
    }

    fn cmd(line: &str) -> Verdict {
        judge("LAB\\helpdesk", CMD_URI, Invocation::Cmd { line })
    }

    fn script(text: &str) -> Verdict {
        let commands = [PsCommand {
            name: text.into(),
            is_script: true,
            arguments: Vec::new(),
        }];
        judge(
            "LAB\\helpdesk",
            &ps("Microsoft.PowerShell"),
            Invocation::PowerShell { commands: &commands },
        )
    }

    fn denied(v: Verdict) -> String {
        match v {
            Verdict::Deny { rule: Some(0), reason } => reason,
            other => panic!("not denied by allow[0]: {other:?}"),
        }
    }

    fn encoded(script: &str) -> String {
        let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, utf16)
    }

    #[test]
    fn cmd_lines_match_whole_and_without_unlisted_metacharacters() {
        for line in [
            "hostname",
            "HOSTNAME",
            " hostname ",
            "ipconfig /all",
            "sc query spooler",
            "sc query x | findstr RUNNING",
        ] {
            assert!(cmd(line).is_allowed(), "{line}");
        }
        assert_eq!(
            cmd("hostname"),
            Verdict::Allow {
                rule: 0,
                reason: "allow[0] lists \"hostname\"".into()
            }
        );
        assert_eq!(
            denied(cmd("whoami")),
            "command line \"whoami\" matches none of allow[0]'s commands"
        );
        assert_eq!(
            denied(cmd("sc query spooler & whoami")),
            "command line \"sc query spooler & whoami\" holds cmd's '&', which allow[0]'s entry \"sc query *\" \
             does not spell out"
        );
        for line in [
            "sc query x | findstr RUNNING | whoami",
            "sc query a | b | findstr RUNNING",
            "sc query x > c:\\out",
            "sc query %PATH%",
            "sc query ^&whoami",
            "sc query x\nwhoami",
            "ipconfig /all\r\nwhoami",
            "hostname & whoami",
            "hostname | whoami",
            "ipconfig /all2",
            "sc query\u{0}x",
        ] {
            assert!(!cmd(line).is_allowed(), "{line:?}");
        }
        // Another rule without a command policy grants the same shell: rules only grant.
        assert!(judge(
            "LAB\\ops",
            CMD_URI,
            Invocation::Cmd {
                line: "whoami & net user"
            }
        )
        .is_allowed());
    }

    #[test]
    fn stdin_and_unreadable_pipelines_are_refused_under_a_policy() {
        assert!(denied(judge("LAB\\helpdesk", CMD_URI, Invocation::Stdin)).starts_with("input to a shell"));
        assert!(judge("LAB\\ops", CMD_URI, Invocation::Stdin).is_allowed());
        let unreadable = Invocation::Unreadable { what: "bad fragment" };
        assert!(
            denied(judge("LAB\\helpdesk", &ps("x"), unreadable)).contains("cannot read this pipeline (bad fragment)")
        );
        let p = command_policy();
        let web01 = target("web01");
        assert!(p.restricts_commands("LAB\\helpdesk", &web01, &[], CMD_URI));
        assert!(!p.restricts_commands("LAB\\ops", &web01, &[], CMD_URI));
        assert!(!p.restricts_commands("LAB\\nobody", &web01, &[], CMD_URI));
    }

    #[test]
    fn encoded_powershell_is_judged_by_its_script() {
        let line = |flags: &str, s: &str| format!("{flags} {}", encoded(s));
        assert!(cmd(&line("powershell -EncodedCommand", "Get-Service")).is_allowed());
        assert!(cmd(&line(
            "PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand",
            "Restart-Service -Name Spooler"
        ))
        .is_allowed());
        assert!(cmd(&line("pwsh.exe -enc", "Get-Service | Out-Default")).is_allowed());
        let reason = denied(cmd(&line("powershell -e", "Stop-Computer")));
        assert_eq!(
            reason,
            "powershell -EncodedCommand: Stop-Computer is refused: Stop-Computer is not in allow[0]'s cmdlets"
        );
        assert!(denied(cmd(&line("powershell -ec", "iex $x"))).contains("a variable or subexpression ($)"));
        assert!(denied(cmd("powershell -EncodedCommand A")).contains("not base64"));
        assert!(denied(cmd("powershell -EncodedCommand !!!")).contains("matches none"));
        // Other options make it an ordinary command line, which no entry lists.
        assert!(denied(cmd(&line("powershell -Command x -EncodedCommand", "Get-Service"))).contains("matches none"));
        assert_eq!(encoded_powershell("cmd /c dir"), None);
        assert_eq!(encoded_powershell(&line("powershell -enc", "a")), Some(Ok("a".into())));
    }

    #[test]
    fn powershell_commands_and_restricted_parameters() {
        for ok in [
            "Get-Service",
            "Get-Service -Name WinRM | Out-Default",
            "Restart-Service -Name Spooler",
            "restart-service -name:'w32time'",
            "Restart-Service \u{2013}Name \u{2018}Spooler\u{2019}",
            "prompt",
            "TabExpansion2 -inputScript x -cursorColumn 1",
        ] {
            assert!(script(ok).is_allowed(), "{ok}");
        }
        assert_eq!(
            denied(script("Restart-Service -Name WinRM")),
            "Restart-Service -Name WinRM is refused: allow[0] allows it only as \
             \"Restart-Service -Name Spooler|W32Time\" (that one parameter, one listed value)"
        );
        for refused in [
            "Restart-Service WinRM",
            "Restart-Service",
            "Get-Service WinRM | Restart-Service",
            "Restart-Service -Name Spooler -Name WinRM",
            "Restart-Service -Name Spooler -Force",
            "Restart-Service -N Spooler",
            "Stop-Computer",
            "Get-Service; Stop-Computer",
            "Invoke-Expression 'Stop-Computer'",
            "Get-Service | & { Stop-Computer }",
        ] {
            assert!(!script(refused).is_allowed(), "{refused}");
        }
        assert_eq!(
            denied(script("Get-Service $x")),
            "script refused under allow[0]'s cmdlets: it uses a variable or subexpression ($) at line 1, column 13"
        );
        // API pipelines: commands with parameters, as PSRP carries them.
        let api = |name: &str, arguments: Vec<script::Argument>| {
            let commands = [PsCommand {
                name: name.into(),
                is_script: false,
                arguments,
            }];
            judge(
                "LAB\\helpdesk",
                &ps("Microsoft.PowerShell"),
                Invocation::PowerShell { commands: &commands },
            )
        };
        let name = |v: &str| script::Argument::Parameter {
            name: "Name".into(),
            value: Some(v.into()),
        };
        assert!(api("Restart-Service", vec![name("Spooler")]).is_allowed());
        assert!(!api("Restart-Service", vec![name("WinRM")]).is_allowed());
        assert!(!api("Restart-Service", vec![script::Argument::Value("Spooler".into())]).is_allowed());
        assert!(api("Get-Service", vec![name("anything")]).is_allowed());
        // A script given parameters is not plain commands.
        let commands = [PsCommand {
            name: "Get-Service".into(),
            is_script: true,
            arguments: vec![name("x")],
        }];
        assert!(!judge(
            "LAB\\helpdesk",
            &ps("x"),
            Invocation::PowerShell { commands: &commands }
        )
        .is_allowed());
    }

    #[test]
    fn wmi_resources_are_read_only_unless_granted() {
        let wmi = |user: &str, action: &str| {
            judge(
                user,
                WIN32_SERVICE,
                Invocation::Wmi {
                    action: WmiAction::of(action),
                },
            )
        };
        for read in [
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get",
            "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate",
            "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull",
            "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release",
        ] {
            assert!(wmi("LAB\\helpdesk", read).is_allowed(), "{read}");
        }
        assert!(wmi("LAB\\helpdesk", &format!("{WIN32_SERVICE}/StopService")).is_allowed());
        assert_eq!(
            denied(wmi("LAB\\helpdesk", &format!("{WIN32_SERVICE}/Create"))),
            format!(
                "method Create of {WIN32_SERVICE} is not in allow[0]'s methods (listed: StopService, StartService)"
            )
        );
        // Even a rule without any command policy grants a resource read-only.
        let reason = match wmi("LAB\\ops", &format!("{WIN32_SERVICE}/Create")) {
            Verdict::Deny { rule: Some(1), reason } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason.contains("(listed: none)"), "{reason}");
        let put = wmi("LAB\\ops", "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put");
        assert!(
            matches!(&put, Verdict::Deny { reason, .. } if reason.contains("set wmi_writes = true")),
            "{put:?}"
        );
        assert_eq!(
            WmiAction::of("http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"),
            WmiAction::Write("Delete")
        );
        assert_eq!(WmiAction::of("x/y/Create/"), WmiAction::Invoke("Create"));
        let writer = Policy::new(
            vec![
                rule(&["LAB\\w"], &["web*"], &[WIN32_SERVICE]).with_commands(CommandPolicy {
                    wmi_writes: true,
                    ..CommandPolicy::default()
                }),
            ],
            None,
        );
        let put = Invocation::Wmi {
            action: WmiAction::Write("Put"),
        };
        assert!(writer
            .judge("LAB\\w", &target("web01"), &[], WIN32_SERVICE, &put)
            .is_allowed());
    }

    #[test]
    fn command_entries_parse() {
        assert!(parse_command(" hostname").is_err());
        assert!(parse_command("").is_err());
        assert!(parse_command("sc [query").is_err());
        assert!(parse_cmdlet("Restart-Service -Name Spooler|W32Time").is_ok());
        assert!(parse_cmdlet("Get-*").is_ok());
        for bad in [
            "",
            "-Name x",
            "Restart-Service -Name",
            "Restart-Service Name x",
            "R -Name a||b",
            "R -A x -B y",
        ] {
            assert!(parse_cmdlet(bad).is_err(), "{bad:?}");
        }
        assert!(parse_method("StopService").is_ok());
        assert!(parse_method("Stop Service").is_err());
    }

    #[test]
    fn entry_parsers_reject_bad_input() {
        assert!(parse_user("alice", None).is_err());
        assert!(parse_user("", None).is_err());
        assert!(parse_user("LAB\\[a", None).is_err());
        assert!(parse_user("*", None).is_ok());
        assert!(parse_target("10.0.0.0/33").is_err());
        assert!(parse_target("web01:5985").is_err());
        assert!(parse_target("[::1]").is_ok());
        for bad in ["*.", "*.-x.example", "*.a..b", "web 01", "127.1", "web01.", "web[1"] {
            assert!(parse_target(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_shell("bash").is_err());
        assert!(parse_shell("powershell/").is_err());
        assert!(parse_shell("http://").is_err());
        assert!(parse_shell("PowerShell/Microsoft.*").is_ok());
    }

    #[test]
    fn group_rules_grant_members_name_the_group_and_fail_closed_without_the_directory() {
        let lab = Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        let ops = parse_group("LAB\\WinRM-Operators", Some(&lab)).unwrap();
        let p = Policy::new(
            vec![
                Rule::new(
                    Vec::new(),
                    vec![ops.clone()],
                    vec![parse_target("web*").unwrap()],
                    vec![parse_shell("cmd").unwrap()],
                ),
                Rule::new(
                    vec![parse_user("LAB\\carol", Some(&lab)).unwrap()],
                    Vec::new(),
                    vec![parse_target("web02").unwrap()],
                    vec![parse_shell("cmd").unwrap()],
                ),
            ],
            Some(lab.clone()),
        );
        assert_eq!(p.groups(), vec![ops.clone()]);
        let web01 = target("web01");
        // Any spelling of the group in the caller's membership is the rule's group.
        let member = Groups::Known(vec![Principal::parse("winrm-operators@lab.test")]);
        let alice = Caller {
            user: "LAB\\alice",
            groups: &member,
        };
        assert!(p.may_reach(alice, &web01));
        assert_eq!(
            p.decide(alice, &web01, &[], Some(CMD_URI)),
            Decision::Allow {
                rule: 0,
                group: Some("LAB\\WinRM-Operators".into())
            }
        );
        let none = Groups::Known(Vec::new());
        let bob = Caller {
            user: "LAB\\bob",
            groups: &none,
        };
        assert!(!p.may_reach(bob, &web01));
        let Decision::Deny { reason } = p.decide(bob, &web01, &[], None) else {
            panic!("bob allowed")
        };
        assert!(!reason.contains("directory"), "{reason}");
        // The directory down: the group rule cannot grant and says why; the user rule still does.
        let down = Groups::Unavailable("directory unreachable: ldaps://dc1: connect: refused".into());
        let unknown = Caller {
            user: "LAB\\alice",
            groups: &down,
        };
        let Decision::Deny { reason } = p.decide(unknown, &web01, &[], None) else {
            panic!("allowed without the directory")
        };
        assert!(
            reason.contains("rule 0 (groups LAB\\WinRM-Operators)") && reason.contains("ldaps://dc1: connect: refused"),
            "{reason}"
        );
        let carol = Caller {
            user: "LAB\\carol",
            groups: &down,
        };
        assert_eq!(
            p.decide(carol, &target("web02"), &[], Some(CMD_URI)),
            Decision::Allow { rule: 1, group: None }
        );
    }

    #[test]
    fn group_names_are_of_the_relays_domain_and_exact() {
        let lab = Domain {
            realm: "LAB.TEST".into(),
            netbios: "LAB".into(),
        };
        for ok in [
            "LAB\\WinRM-Operators",
            "winrm-operators@lab.test",
            "lab.test\\Helpdesk",
            "Domain Admins@LAB",
        ] {
            assert!(parse_group(ok, Some(&lab)).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_group("winrm-operators@LAB.TEST", Some(&lab)).unwrap().to_string(),
            "LAB\\winrm-operators"
        );
        for (bad, says) in [
            ("WinRM-Operators", "has no domain"),
            ("OTHER\\Ops", "not in the relay's domain"),
            ("LAB\\Ops*", "without globs"),
            ("LAB\\", "not a group name"),
        ] {
            let err = parse_group(bad, Some(&lab)).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(parse_group("LAB\\Ops", None).unwrap_err().contains("[directory]"));
    }
}
