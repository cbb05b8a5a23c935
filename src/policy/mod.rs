//! Deny-by-default access policy: `[[allow]]` rules decide which user may reach which
//! target and open which shell (WS-Man resource URI).
//!
//! A rule matches when one of its `users` matches, one of its `targets` matches and, for
//! requests that carry a resource URI, one of its `shells` matches. Rules only ever grant;
//! nothing matches means deny, with a reason an operator can act on.
//!
//! - users: globs on `DOMAIN\user`, case-insensitive (`user@DOMAIN` is rewritten).
//! - targets: globs on the alias name or the host (case-insensitive), or a CIDR / IP that
//!   matches when the target was named by IP literal (names are never resolved here).
//! - shells: `cmd`, `powershell` (any PSRP configuration), `powershell/<glob>` (configuration
//!   name), or an exact resource URI.
//!
//! The entry parsers below are also what config validation runs, so `check` and the
//! running relay agree on what a rule means.

use std::net::IpAddr;

use glob::{MatchOptions, Pattern};
use ipnet::IpNet;

use crate::config::{AllowRule, ResolvedTarget};

/// The resource URI of a cmd shell.
pub const CMD_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
/// Prefix of PowerShell remoting resource URIs; the rest is the session configuration.
pub const POWERSHELL_PREFIX: &str = "http://schemas.microsoft.com/powershell/";

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("allow[{rule}].{field}: {message}")]
    Invalid {
        rule: usize,
        field: &'static str,
        message: String,
    },
}

/// Outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Granted by `[[allow]]` number `rule` (0-based, file order).
    Allow {
        rule: usize,
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

#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    users: Vec<Pattern>,
    targets: Vec<TargetMatcher>,
    shells: Vec<ShellMatcher>,
    /// The shells as written, for deny reasons.
    shell_labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum TargetMatcher {
    /// Matches the alias name or the host.
    Glob(Pattern),
    /// Matches the IP of a target named by IP literal.
    Net(IpNet),
}

impl TargetMatcher {
    fn matches(&self, t: &ResolvedTarget) -> bool {
        match self {
            TargetMatcher::Glob(p) => {
                t.alias.as_deref().is_some_and(|a| p.matches_with(a, MATCH)) || p.matches_with(&t.host, MATCH)
            }
            TargetMatcher::Net(net) => t.ip.is_some_and(|ip| net.contains(&ip)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ShellMatcher {
    Cmd,
    /// `None`: any PowerShell configuration.
    PowerShell(Option<Pattern>),
    Uri(String),
}

impl ShellMatcher {
    fn matches(&self, uri: &str) -> bool {
        match self {
            ShellMatcher::Cmd => uri.eq_ignore_ascii_case(CMD_URI),
            ShellMatcher::PowerShell(glob) => match powershell_configuration(uri) {
                Some(conf) => glob.as_ref().is_none_or(|g| g.matches_with(conf, MATCH)),
                None => false,
            },
            ShellMatcher::Uri(u) => uri.eq_ignore_ascii_case(u),
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

/// Rewrites `user@DOMAIN` to `DOMAIN\user`; other forms are returned unchanged.
pub fn normalize_user(name: &str) -> String {
    if !name.contains('\\') {
        if let Some((user, domain)) = name.rsplit_once('@') {
            return format!("{domain}\\{user}");
        }
    }
    name.to_string()
}

fn compile_glob(s: &str) -> Result<Pattern, String> {
    Pattern::new(s).map_err(|e| format!("invalid glob {s:?}: {}", e.msg))
}

/// Parses one `users` entry.
pub(crate) fn parse_user(entry: &str) -> Result<Pattern, String> {
    if entry.is_empty() {
        return Err("empty user pattern".into());
    }
    let normalized = normalize_user(entry);
    // A bare "alice" could never match "LAB\alice"; say so instead of silently denying.
    if normalized != "*" && !normalized.contains('\\') {
        return Err(format!(
            "user pattern {entry:?} has no domain: write DOMAIN\\{entry} or *\\{entry}"
        ));
    }
    compile_glob(&normalized)
}

/// Parses one `targets` entry: CIDR, IP literal or glob on alias/host.
pub(crate) fn parse_target(entry: &str) -> Result<TargetMatcher, String> {
    if entry.is_empty() {
        return Err("empty target pattern".into());
    }
    if entry.contains('/') {
        return entry
            .parse::<IpNet>()
            .map(|n| TargetMatcher::Net(n.trunc()))
            .map_err(|_| format!("invalid CIDR {entry:?}"));
    }
    let unbracketed = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(TargetMatcher::Net(IpNet::from(ip)));
    }
    if entry.contains(':') {
        return Err(format!(
            "target pattern {entry:?}: ports are not matched, name the host or alias only"
        ));
    }
    compile_glob(entry).map(TargetMatcher::Glob)
}

/// Parses one `shells` entry.
pub(crate) fn parse_shell(entry: &str) -> Result<ShellMatcher, String> {
    if entry.eq_ignore_ascii_case("cmd") {
        return Ok(ShellMatcher::Cmd);
    }
    if entry.eq_ignore_ascii_case("powershell") {
        return Ok(ShellMatcher::PowerShell(None));
    }
    if let Some(conf) = entry
        .get(..11)
        .filter(|p| p.eq_ignore_ascii_case("powershell/"))
        .map(|_| &entry[11..])
    {
        if conf.is_empty() {
            return Err("powershell/ needs a configuration name or glob".into());
        }
        return compile_glob(conf).map(|g| ShellMatcher::PowerShell(Some(g)));
    }
    let lower = entry.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !entry.contains(char::is_whitespace) => Ok(ShellMatcher::Uri(entry.to_string())),
        _ => Err(format!(
            "invalid shell {entry:?}: expected cmd, powershell, powershell/<configuration glob> \
             or an absolute http(s) resource URI"
        )),
    }
}

impl Policy {
    pub fn new(rules: &[AllowRule]) -> Result<Policy, PolicyError> {
        let err = |rule, field, message| PolicyError::Invalid { rule, field, message };
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            if r.users.is_empty() {
                return Err(err(i, "users", "must not be empty".into()));
            }
            if r.targets.is_empty() {
                return Err(err(i, "targets", "must not be empty".into()));
            }
            let users = r
                .users
                .iter()
                .map(|u| parse_user(u))
                .collect::<Result<_, _>>()
                .map_err(|m| err(i, "users", m))?;
            let targets = r
                .targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<_, _>>()
                .map_err(|m| err(i, "targets", m))?;
            let shells = r
                .shells
                .iter()
                .map(|s| parse_shell(s))
                .collect::<Result<_, _>>()
                .map_err(|m| err(i, "shells", m))?;
            compiled.push(Rule {
                users,
                targets,
                shells,
                shell_labels: r.shells.clone(),
            });
        }
        Ok(Policy { rules: compiled })
    }

    /// Decides whether `user` (`DOMAIN\user`) may send a request to `target`.
    ///
    /// `resource_uri` is the request's WS-Man ResourceURI; `None` (e.g. Identify) is allowed
    /// as soon as some rule lets the user reach the target.
    pub fn decide(&self, user: &str, target: &ResolvedTarget, resource_uri: Option<&str>) -> Decision {
        let user = normalize_user(user);
        let reachable: Vec<(usize, &Rule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.users.iter().any(|p| p.matches_with(&user, MATCH)) && r.targets.iter().any(|m| m.matches(target))
            })
            .collect();
        let Some(&(first, _)) = reachable.first() else {
            return Decision::Deny {
                reason: format!("no [[allow]] rule lets {user} reach target {}", describe(target)),
            };
        };
        let Some(uri) = resource_uri else {
            return Decision::Allow { rule: first };
        };
        if let Some(&(rule, _)) = reachable.iter().find(|(_, r)| r.shells.iter().any(|s| s.matches(uri))) {
            return Decision::Allow { rule };
        }
        let mut allowed: Vec<&str> = Vec::new();
        for label in reachable.iter().flat_map(|(_, r)| &r.shell_labels) {
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
                describe(target)
            ),
        }
    }
}

/// `web01 (127.0.0.21)` for aliases, the name as given otherwise.
fn describe(t: &ResolvedTarget) -> String {
    match &t.alias {
        Some(alias) => format!("{alias} ({})", t.host),
        None => t.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const CONFIG: &str = r#"
[listen]
http = "127.0.0.1:5985"
tls_cert = "certs/relay.crt"
tls_key = "certs/relay.key"
[auth]
users_file = "config/users"
[audit]
path = "audit.jsonl"

[[target]]
name = "web01"
url = "http://127.0.0.21:5985/wsman"
[[target]]
name = "web02"
url = "http://127.0.0.22:5985/wsman"
[[target]]
name = "db01"
url = "http://db01.lab.local/wsman"

[[allow]]
users = ['LAB\alice', 'LAB\ops-*']
targets = ["web*"]
shells = ["cmd", "powershell"]

[[allow]]
users = ['lab\alice']
targets = ["10.1.0.0/16", "db*"]
shells = ["cmd"]

[[allow]]
users = ["carol@LAB"]
targets = ["db01"]
shells = ["powershell/JEA-*", "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service"]
"#;

    fn setup() -> (Config, Policy) {
        let config = Config::parse(Path::new("test.toml"), CONFIG).expect("config");
        let policy = Policy::new(&config.allow).expect("policy");
        (config, policy)
    }

    fn ps(conf: &str) -> String {
        format!("{POWERSHELL_PREFIX}{conf}")
    }

    #[test]
    fn allows_matching_user_target_and_shell() {
        let (c, p) = setup();
        let web01 = c.resolve_target("WEB01").unwrap();
        assert_eq!(
            p.decide("LAB\\alice", &web01, Some(CMD_URI)),
            Decision::Allow { rule: 0 }
        );
        assert_eq!(
            p.decide("lab\\OPS-7", &web01, Some(&ps("Microsoft.PowerShell"))),
            Decision::Allow { rule: 0 }
        );
        assert_eq!(p.decide("alice@LAB", &web01, None), Decision::Allow { rule: 0 });
        // Host globs also match unlisted hosts.
        let unlisted = c.resolve_target("web77.lab.local").unwrap();
        assert!(p.decide("LAB\\alice", &unlisted, Some(CMD_URI)).is_allowed());
    }

    #[test]
    fn denies_unknown_user_with_target_in_reason() {
        let (c, p) = setup();
        let web02 = c.resolve_target("web02").unwrap();
        assert_eq!(
            p.decide("LAB\\bob", &web02, None),
            Decision::Deny {
                reason: "no [[allow]] rule lets LAB\\bob reach target web02 (127.0.0.22)".into()
            }
        );
        // "ops-*" must not match a user in another domain.
        assert!(!p.decide("EVIL\\ops-1", &web02, None).is_allowed());
    }

    #[test]
    fn denies_shell_and_lists_allowed_ones() {
        let (c, p) = setup();
        let db01 = c.resolve_target("db01").unwrap();
        let d = p.decide("LAB\\alice", &db01, Some(&ps("Microsoft.Exchange")));
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
        let (c, p) = setup();
        let db01 = c.resolve_target("db01").unwrap();
        assert!(p.decide("LAB\\carol", &db01, Some(&ps("jea-maintenance"))).is_allowed());
        assert!(!p
            .decide("LAB\\carol", &db01, Some(&ps("Microsoft.PowerShell")))
            .is_allowed());
        assert!(!p.decide("LAB\\carol", &db01, Some(CMD_URI)).is_allowed());
        let wmi = "HTTP://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/win32_service";
        assert!(p.decide("LAB\\carol", &db01, Some(wmi)).is_allowed());
        let other = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Process";
        let Decision::Deny { reason } = p.decide("LAB\\carol", &db01, Some(other)) else {
            panic!("allowed")
        };
        assert!(reason.contains("use resource"), "{reason}");
        // The bare prefix is not a PowerShell configuration.
        assert!(!p
            .decide(
                "LAB\\alice",
                &c.resolve_target("web01").unwrap(),
                Some(POWERSHELL_PREFIX)
            )
            .is_allowed());
    }

    #[test]
    fn cidr_matches_ip_literals_only() {
        let (c, p) = setup();
        let ip = c.resolve_target("10.1.2.3:5986").unwrap();
        assert_eq!(p.decide("LAB\\alice", &ip, Some(CMD_URI)), Decision::Allow { rule: 1 });
        let outside = c.resolve_target("10.2.0.1").unwrap();
        assert!(!p.decide("LAB\\alice", &outside, None).is_allowed());
    }

    #[test]
    fn targets_named_by_address_keep_their_alias() {
        let (c, p) = setup();
        // 127.0.0.21 is web01's address: rules naming web* apply to it too.
        let t = c.resolve_target("127.0.0.21").unwrap();
        assert!(p.decide("LAB\\alice", &t, Some(CMD_URI)).is_allowed());
    }

    #[test]
    fn no_rules_denies_everything() {
        let (c, _) = setup();
        let p = Policy::new(&[]).unwrap();
        assert!(!p
            .decide("LAB\\alice", &c.resolve_target("web01").unwrap(), None)
            .is_allowed());
    }

    #[test]
    fn entry_parsers_reject_bad_input() {
        assert!(parse_user("alice").is_err());
        assert!(parse_user("").is_err());
        assert!(parse_user("LAB\\[a").is_err());
        assert!(parse_user("*").is_ok());
        assert!(parse_target("10.0.0.0/33").is_err());
        assert!(parse_target("web01:5985").is_err());
        assert!(parse_target("[::1]").is_ok());
        assert!(parse_shell("bash").is_err());
        assert!(parse_shell("powershell/").is_err());
        assert!(parse_shell("http://").is_err());
        assert!(parse_shell("PowerShell/Microsoft.*").is_ok());
    }

    #[test]
    fn invalid_rules_are_reported_with_position() {
        let rules = [AllowRule {
            users: vec!["LAB\\a".into()],
            targets: vec!["x".into()],
            shells: vec!["zsh".into()],
        }];
        let e = Policy::new(&rules).unwrap_err().to_string();
        assert!(e.starts_with("allow[0].shells: invalid shell \"zsh\""), "{e}");
    }
}
