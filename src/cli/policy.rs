//! `winrm-relay policy test`: what the relay would decide on one command, so that an
//! admin can try a policy before a user meets it.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::common::{current_thread_runtime, ConfigArg};
use crate::config::Config;
use crate::policy::{self, Invocation, PsCommand, Verdict, WmiAction};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Decide one command for a user on a target, as the relay would: prints the
    /// decision, the rule and the reason; exits 1 when refused.
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
    match decide(&args.config.config, args) {
        Ok(Verdict::Allow { rule, reason }) => {
            println!("decision: allow\nrule: {}\nreason: {reason}", policy::rule_name(rule));
            ExitCode::SUCCESS
        }
        Ok(Verdict::Deny { rule, reason }) => {
            let rule = rule.map_or_else(|| "none".to_string(), policy::rule_name);
            println!("decision: deny\nrule: {rule}\nreason: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn decide(path: &Path, args: &TestArgs) -> Result<Verdict, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let target = config
        .resolve_target(&args.target)
        .map_err(|e| format!("unknown target {}: {e}", args.target))?;
    // Rules on networks judge the addresses the relay would connect to.
    let addresses = if config.policy.may_reach(args.user.as_str(), &target) {
        let runtime = current_thread_runtime().ok_or(
            "cannot look up the target's addresses, which the rules on networks judge: the async runtime did not start",
        )?;
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
    Ok(config
        .policy
        .decide_request(args.user.as_str(), &target, &addresses, &uri, &invocation))
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
