//! `winrm-relay policy test`: what the relay would decide on one command, so that an
//! admin can try a policy before a user meets it.
//!
//! When rules name groups, the caller's membership is looked up through `[directory]`
//! as a logon without a ticket would (`tokenGroups`), printed, and decided with.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::common::{current_thread_runtime, ConfigArg};
use crate::config::Config;
use crate::directory::Directory;
use crate::identity::{Groups, Principal};
use crate::policy::{self, Caller, Invocation, PsCommand, Verdict, WmiAction};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Decide one command for a user on a target, as the relay would: prints the
    /// decision, the rule, the reason and, when rules name groups, the user's groups
    /// (looked up through [directory]); exits 1 when refused.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub(super) struct TestArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The caller, as it logs on (LAB\alice, alice@LAB.TEST).
    #[arg(long)]
    user: String,
    /// The target, as the caller names it in /wsman/<target>.
    #[arg(long)]
    target: String,
    /// cmd, powershell, powershell/<configuration>, or a WMI/CIM resource URI.
    #[arg(long, default_value = "cmd")]
    shell: String,
    /// The cmd command line, the PowerShell script text, or for a resource URI the
    /// method to invoke or a full wsa:Action URI (…/transfer/Get, …/transfer/Put).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

pub(super) fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test(args) => test(&args),
    }
}

/// Exit 0 when allowed, 1 when refused, 2 when the question cannot be asked.
fn test(args: &TestArgs) -> ExitCode {
    let (verdict, groups) = match decide(&args.config.config, args) {
        Ok(decided) => decided,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match verdict {
        Verdict::Allow { rule, reason } => {
            println!("decision: allow\nrule: {}\nreason: {reason}", policy::rule_name(rule));
            ExitCode::SUCCESS
        }
        Verdict::Deny { rule, reason } => {
            let rule = rule.map_or_else(|| "none".to_string(), policy::rule_name);
            println!("decision: deny\nrule: {rule}\nreason: {reason}");
            ExitCode::FAILURE
        }
    };
    if let Some(line) = groups_line(&groups) {
        println!("{line}");
    }
    code
}

/// The caller's groups as `policy test` prints them; `None` when no rule names a group.
fn groups_line(groups: &Groups) -> Option<String> {
    match groups {
        Groups::NotNeeded => None,
        Groups::Known(groups) if groups.is_empty() => Some("groups: none of those the rules name".to_string()),
        Groups::Known(groups) => {
            let names: Vec<String> = groups.iter().map(ToString::to_string).collect();
            Some(format!("groups: {}", names.join(", ")))
        }
        Groups::Unavailable(why) => Some(format!("groups: unknown ({why})")),
    }
}

/// The verdict, and the groups (of those the rules name) it was taken with.
fn decide(path: &Path, args: &TestArgs) -> Result<(Verdict, Groups), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let target = config
        .resolve_target(&args.target)
        .map_err(|e| format!("unknown target {}: {e}", args.target))?;
    let runtime = current_thread_runtime()
        .ok_or("cannot look up the caller's groups and the target's addresses: the async runtime did not start")?;
    let groups = runtime.block_on(rule_groups(&config, &Principal::parse(&args.user)));
    let caller = Caller {
        user: args.user.as_str(),
        groups: &groups,
    };
    // Rules on networks judge the addresses the relay would connect to.
    let addresses = if config.policy.may_reach(caller, &target) {
        runtime
            .block_on(crate::upstream::lookup_addresses(&target))
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let text = args.command.join(" ");
    let shell = args.shell.as_str();
    let (uri, commands);
    let invocation = if shell.eq_ignore_ascii_case("cmd") {
        uri = policy::CMD_URI.to_string();
        Invocation::Cmd { line: &text }
    } else if let Some(configuration) = powershell_configuration(shell) {
        uri = format!("{}{configuration}", policy::POWERSHELL_PREFIX);
        commands = [PsCommand {
            name: text.clone(),
            is_script: true,
            arguments: Vec::new(),
        }];
        Invocation::PowerShell { commands: &commands }
    } else if shell.starts_with("http://") || shell.starts_with("https://") {
        uri = shell.to_string();
        let action = if text.contains("://") {
            WmiAction::of(&text)
        } else {
            WmiAction::Invoke(&text)
        };
        Invocation::Wmi { action }
    } else {
        return Err(format!(
            "--shell {shell:?}: expected cmd, powershell, powershell/<configuration> or a resource URI"
        ));
    };
    let verdict = config
        .policy
        .decide_request(caller, &target, &addresses, &uri, &invocation);
    Ok((verdict, groups))
}

/// The groups the rules name that `user` belongs to, looked up as a logon without a
/// ticket looks them up (the server's session does the same with a PAC when it has one).
async fn rule_groups(config: &Config, user: &Principal) -> Groups {
    let (Some(directory), Some(kerberos)) = (&config.directory, &config.kerberos) else {
        return Groups::NotNeeded;
    };
    let wanted = config.policy.groups();
    Directory::default()
        .membership(directory, &kerberos.domain, user, &wanted, None)
        .await
}

/// `powershell` is the default configuration, `powershell/<name>` a named one.
fn powershell_configuration(shell: &str) -> Option<&str> {
    if shell.eq_ignore_ascii_case("powershell") {
        return Some("Microsoft.PowerShell");
    }
    let prefix = shell.get(..11)?;
    prefix
        .eq_ignore_ascii_case("powershell/")
        .then(|| &shell[11..])
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        test: TestArgs,
    }

    fn args(config: &Path, user: &str) -> TestArgs {
        let config = config.to_str().unwrap();
        Cli::try_parse_from([
            "test", "-c", config, "--user", user, "--target", "web01", "--", "hostname",
        ])
        .unwrap()
        .test
    }

    #[test]
    fn the_groups_line_names_the_members_groups_or_why_they_are_unknown() {
        assert_eq!(groups_line(&Groups::NotNeeded), None);
        let ops = Groups::Known(vec![Principal::parse("LAB\\WinRM-Operators")]);
        assert_eq!(groups_line(&ops).as_deref(), Some("groups: LAB\\WinRM-Operators"));
        assert_eq!(
            groups_line(&Groups::Known(Vec::new())).as_deref(),
            Some("groups: none of those the rules name")
        );
        let down = Groups::Unavailable("directory unreachable: ldaps://dc1: refused".into());
        assert_eq!(
            groups_line(&down).as_deref(),
            Some("groups: unknown (directory unreachable: ldaps://dc1: refused)")
        );
    }

    /// The directory down: a group rule cannot grant and the decision says why, a user
    /// rule still does, both with the groups looked up as a logon would.
    #[test]
    fn group_rules_are_decided_with_the_groups_the_directory_gives() {
        let dir = std::env::temp_dir().join(format!("winrm-relay-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("bind.password");
        std::fs::write(&password, "pw\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.join("relay.toml");
        // Port 1 on loopback: refused at once, so the lookup fails without waiting.
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"127.0.0.1:5985\"\ntls_cert = \"relay.crt\"\ntls_key = \"relay.key\"\n\
                 [auth]\nusers_file = \"users\"\n[audit]\npath = \"audit.jsonl\"\n\
                 [kerberos]\nrealm = \"LAB.TEST\"\nnetbios = \"LAB\"\nkdc = [\"tcp://127.0.0.1:1\"]\n\
                 [directory]\nurl = [\"ldaps://127.0.0.1:1\"]\nbind_dn = \"svc@lab.test\"\nbind_password_file = \"{}\"\n\
                 [[target]]\nname = \"web01\"\nurl = \"http://127.0.0.21:5985/wsman\"\n\
                 [[allow]]\ngroups = ['LAB\\WinRM-Operators']\ntargets = ['web01']\n\
                 [[allow]]\nusers = ['LAB\\carol']\ntargets = ['web01']\n",
                password.display()
            ),
        )
        .unwrap();
        let (verdict, groups) = decide(&config, &args(&config, "LAB\\alice")).unwrap();
        let Groups::Unavailable(why) = &groups else {
            panic!("groups known without a directory: {groups:?}")
        };
        assert!(why.contains("ldaps://127.0.0.1:1"), "{why}");
        let Verdict::Deny { reason, .. } = verdict else {
            panic!("a group rule granted without the directory")
        };
        assert!(
            reason.contains("LAB\\WinRM-Operators") && reason.contains("ldaps://127.0.0.1:1"),
            "{reason}"
        );
        let (verdict, groups) = decide(&config, &args(&config, "carol@lab.test")).unwrap();
        assert!(matches!(groups, Groups::Unavailable(_)), "{groups:?}");
        assert!(matches!(verdict, Verdict::Allow { rule: 1, .. }), "{verdict:?}");
        // A caller of another domain belongs to none of the domain's groups, asked of no one.
        let (_, groups) = decide(&config, &args(&config, "mallory@other.test")).unwrap();
        assert_eq!(groups, Groups::Known(Vec::new()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
