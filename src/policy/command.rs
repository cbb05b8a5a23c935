//! Command policy: what an `[[allow]]` rule lets a caller do inside the shells and
//! resources it grants (`commands`, `cmdlets`, `methods`, `wmi_writes`).
//!
//! A rule with neither `commands` nor `cmdlets` leaves its shells unrestricted. A rule
//! with either key restricts every shell it grants: cmd to `commands`, PowerShell to
//! `cmdlets`, and a missing key then means nothing of that kind, so that a rule written
//! for PowerShell does not leave `cmd /c` open beside it. WMI/CIM resources are always
//! read-only unless `methods` or `wmi_writes` say otherwise.

use glob::{MatchOptions, Pattern};

use super::script::{self, Argument, CommandCall};
use crate::proto::psrp::encoded_command;

/// cmd lines and PowerShell names are matched without regard to case, as Windows
/// resolves them.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

/// cmd's metacharacters: a line holding one runs more than its first command, or
/// redirects, or expands variables.
const CMD_METACHARACTERS: [char; 8] = ['&', '|', '<', '>', '^', '%', '\r', '\n'];

/// The pipelines PowerShell's own host adds around what a user types: output
/// formatting, the prompt, Tab completion, each with the parameters the host gives
/// it (and no positional value). None runs a user's command; given anything else,
/// they are judged as any command.
const HOST_COMMANDS: [(&str, &[&str]); 3] = [
    ("Out-Default", &["Transcript"]),
    ("prompt", &[]),
    (
        "TabExpansion2",
        &[
            "inputScript",
            "cursorColumn",
            "options",
            "ast",
            "tokens",
            "positionOfCursor",
        ],
    ),
];

/// Whether `name` with `arguments` is one of [`HOST_COMMANDS`] as the host sends it.
fn is_host_call(name: &str, arguments: &[Argument]) -> bool {
    HOST_COMMANDS.iter().any(|(host, parameters)| {
        host.eq_ignore_ascii_case(name)
            && bound_parameters(arguments)
                .iter()
                .all(|(name, _)| name.is_some_and(|name| parameters.iter().any(|p| p.eq_ignore_ascii_case(name))))
    })
}

/// One rule's command policy.
#[derive(Debug, Clone, Default)]
pub struct CommandPolicy {
    pub(crate) commands: Option<Vec<CommandLineEntry>>,
    pub(crate) cmdlets: Option<Vec<CmdletEntry>>,
    pub(crate) methods: Vec<String>,
    pub(crate) wmi_writes: bool,
}

/// One `commands` entry: a glob on the whole command line.
#[derive(Debug, Clone)]
pub(crate) struct CommandLineEntry {
    entry: String,
    glob: Pattern,
}

/// One `cmdlets` entry: a command name (or glob), optionally with the one parameter it
/// may be given and that parameter's values.
#[derive(Debug, Clone)]
pub(crate) struct CmdletEntry {
    entry: String,
    name: Pattern,
    parameter: Option<(String, Vec<String>)>,
}

/// What a request asks a shell or resource to do, as the policy judges it.
#[derive(Debug, Clone, Copy)]
pub enum Invocation<'a> {
    /// A cmd shell's command line: `Command` and its `Arguments` joined by spaces.
    Cmd { line: &'a str },
    /// A PowerShell pipeline's commands (`Cmds` then `ExtraCmds`).
    PowerShell { commands: &'a [PsCommand] },
    /// An action on a WMI/CIM resource.
    Wmi { action: WmiAction<'a> },
    /// Input sent to a shell.
    Stdin,
    /// A pipeline the relay could not read; `what` says why.
    Unreadable { what: &'a str },
}

/// One command of a PowerShell pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsCommand {
    /// The command name, or the script text when `is_script`.
    pub name: String,
    pub is_script: bool,
    pub arguments: Vec<Argument>,
}

/// What a WS-Man request does to a resource that is not a shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WmiAction<'a> {
    /// Get, Enumerate, Pull, Release.
    Read,
    /// Put, Create, Delete: the name.
    Write(&'a str),
    /// A method: the last segment of the action URI.
    Invoke(&'a str),
}

impl<'a> WmiAction<'a> {
    /// Classifies a request's `wsa:Action`. Only the WS-Transfer and WS-Enumeration
    /// URIs read; anything else is a method the target dispatches by its last segment.
    pub fn of(action: &'a str) -> WmiAction<'a> {
        const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
        const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/";
        let under = |prefix: &str| {
            action
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &action[prefix.len()..])
        };
        let is = |name: &str, list: &[&str]| list.iter().any(|l| l.eq_ignore_ascii_case(name));
        if let Some(name) = under(TRANSFER) {
            if is(name, &["Get"]) {
                return WmiAction::Read;
            }
            if is(name, &["Put", "Create", "Delete"]) {
                return WmiAction::Write(name);
            }
        }
        if under(ENUMERATION).is_some_and(|name| is(name, &["Enumerate", "Pull", "Release"])) {
            return WmiAction::Read;
        }
        let trimmed = action.trim_end_matches('/');
        WmiAction::Invoke(trimmed.rsplit('/').next().unwrap_or(trimmed))
    }
}

/// Parses one `commands` entry.
pub(crate) fn parse_command(entry: &str) -> Result<CommandLineEntry, String> {
    let trimmed = entry.trim();
    if trimmed.is_empty() {
        return Err("empty command line".into());
    }
    if trimmed.len() != entry.len() {
        return Err(format!(
            "command line {entry:?} has spaces at an end: the relay compares lines without them"
        ));
    }
    let glob = Pattern::new(entry).map_err(|e| format!("invalid glob {entry:?}: {}", e.msg))?;
    Ok(CommandLineEntry {
        entry: entry.to_string(),
        glob,
    })
}

/// Parses one `cmdlets` entry: `Name` or `Name -Parameter value|value`.
pub(crate) fn parse_cmdlet(entry: &str) -> Result<CmdletEntry, String> {
    let mut words = entry.split_whitespace();
    let Some(name) = words.next() else {
        return Err("empty cmdlet entry".into());
    };
    if script::is_dash(name.chars().next().unwrap_or('-')) {
        return Err(format!("cmdlet entry {entry:?} must start with a command name"));
    }
    let name_glob = Pattern::new(name).map_err(|e| format!("invalid glob {name:?}: {}", e.msg))?;
    let parameter = match (words.next(), words.next(), words.next()) {
        (None, _, _) => None,
        (Some(p), Some(values), None) if p.len() > 1 && p.starts_with('-') => {
            let values: Vec<String> = values.split('|').map(str::to_string).collect();
            if values.iter().any(String::is_empty) {
                return Err(format!(
                    "cmdlet entry {entry:?} has an empty value in {values:?}",
                    values = values.join("|")
                ));
            }
            Some((p[1..].to_string(), values))
        }
        _ => {
            return Err(format!(
                "cmdlet entry {entry:?}: expected a name, optionally followed by one parameter and its \
                 values, like \"Restart-Service -Name Spooler|W32Time\""
            ))
        }
    };
    Ok(CmdletEntry {
        entry: entry.to_string(),
        name: name_glob,
        parameter,
    })
}

/// Parses one `methods` entry: a method name.
pub(crate) fn parse_method(entry: &str) -> Result<String, String> {
    if entry.is_empty() || !entry.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("method {entry:?}: expected a method name like StopService"));
    }
    Ok(entry.to_string())
}

impl CommandPolicy {
    /// Whether the rule restricts what runs in its shells.
    pub fn restricts_commands(&self) -> bool {
        self.commands.is_some() || self.cmdlets.is_some()
    }

    /// Judges `invocation` under this rule (`rule` names it in reasons): why it is
    /// allowed, or why not.
    pub(crate) fn judge(&self, rule: &str, uri: &str, invocation: &Invocation<'_>) -> Result<String, String> {
        match invocation {
            Invocation::Wmi { action } => self.judge_wmi(rule, uri, *action),
            _ if !self.restricts_commands() => Ok(format!("{rule} sets no command policy")),
            Invocation::Cmd { line } => self.judge_cmd(rule, line),
            Invocation::PowerShell { commands } => self.judge_pipeline(rule, commands),
            Invocation::Stdin => Err(format!(
                "input to a shell under a command policy is refused ({rule}): it could drive an interactive shell"
            )),
            Invocation::Unreadable { what } => Err(format!(
                "the relay cannot read this pipeline ({what}), and {rule} restricts commands"
            )),
        }
    }

    fn judge_wmi(&self, rule: &str, uri: &str, action: WmiAction<'_>) -> Result<String, String> {
        match action {
            WmiAction::Read => Ok(format!("{rule} grants reading {uri}")),
            WmiAction::Write(name) if self.wmi_writes => Ok(format!("{rule} sets wmi_writes = true ({name})")),
            WmiAction::Write(name) => Err(format!(
                "{name} on {uri} changes a resource: {rule} grants it read-only (set wmi_writes = true to allow \
                 Put, Create and Delete)"
            )),
            WmiAction::Invoke(method) => {
                if self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                    return Ok(format!("{rule} lists method {method}"));
                }
                let listed = if self.methods.is_empty() {
                    "none".to_string()
                } else {
                    self.methods.join(", ")
                };
                Err(format!(
                    "method {method} of {uri} is not in {rule}'s methods (listed: {listed})"
                ))
            }
        }
    }

    fn judge_cmd(&self, rule: &str, line: &str) -> Result<String, String> {
        let line = line.trim_matches([' ', '\t']);
        if let Some(decoded) = encoded_powershell(line) {
            let script = decoded.map_err(|why| format!("{why} ({rule} restricts commands)"))?;
            let commands = [PsCommand {
                name: script,
                is_script: true,
                arguments: Vec::new(),
            }];
            return self
                .judge_pipeline(rule, &commands)
                .map(|why| format!("powershell -EncodedCommand: {why}"))
                .map_err(|why| format!("powershell -EncodedCommand: {why}"));
        }
        let Some(entries) = &self.commands else {
            return Err(format!("{rule} lists no commands for cmd shells (only cmdlets)"));
        };
        if let Some(c) = line
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'))
        {
            return Err(format!(
                "command line {line:?} holds a control character (U+{:04X})",
                c as u32
            ));
        }
        let mut spelt_out = None;
        for e in entries.iter().filter(|e| e.glob.matches_with(line, MATCH)) {
            match CMD_METACHARACTERS
                .iter()
                .find(|m| line.matches(**m).count() != e.entry.matches(**m).count())
            {
                None => return Ok(format!("{rule} lists {:?}", e.entry)),
                Some(m) => spelt_out = spelt_out.or(Some((*m, &e.entry))),
            }
        }
        Err(match spelt_out {
            Some((m, entry)) => {
                format!("command line {line:?} holds cmd's {m:?}, which {rule}'s entry {entry:?} does not spell out")
            }
            None => format!("command line {line:?} matches none of {rule}'s commands"),
        })
    }

    fn judge_pipeline(&self, rule: &str, commands: &[PsCommand]) -> Result<String, String> {
        let Some(entries) = &self.cmdlets else {
            return Err(format!("{rule} lists no cmdlets for PowerShell (only cmd commands)"));
        };
        let mut judged = Vec::new();
        for command in commands {
            if !command.is_script {
                judge_call(rule, entries, &command.name, &command.arguments)?;
                judged.push(command.name.clone());
                continue;
            }
            if !command.arguments.is_empty() {
                return Err(format!("a script given parameters is refused under {rule}'s cmdlets"));
            }
            let calls = script::read_script(&command.name)
                .map_err(|e| format!("script refused under {rule}'s cmdlets: it uses {e}"))?;
            for CommandCall { name, arguments } in calls {
                judge_call(rule, entries, &name, &arguments)?;
                judged.push(name);
            }
        }
        Ok(format!("{rule} lists {}", judged.join(", ")))
    }
}

/// One command against the `cmdlets` entries.
fn judge_call(rule: &str, entries: &[CmdletEntry], name: &str, arguments: &[Argument]) -> Result<(), String> {
    let name = name.replace(script::is_dash, "-");
    if is_host_call(&name, arguments) {
        return Ok(());
    }
    let mut restricted = None;
    for e in entries.iter().filter(|e| e.name.matches_with(&name, MATCH)) {
        let Some((parameter, values)) = &e.parameter else {
            return Ok(());
        };
        match bound_parameters(arguments).as_slice() {
            [(Some(p), Some(v))]
                if p.eq_ignore_ascii_case(parameter) && values.iter().any(|a| a.eq_ignore_ascii_case(v)) =>
            {
                return Ok(());
            }
            _ => restricted = restricted.or(Some(&e.entry)),
        }
    }
    let shown = show_call(&name, arguments);
    Err(match restricted {
        Some(entry) => {
            format!("{shown} is refused: {rule} allows it only as {entry:?} (that one parameter, one listed value)")
        }
        None => format!("{shown} is refused: {name} is not in {rule}'s cmdlets"),
    })
}

/// Parameters as PowerShell would at most bind them: `-Name value` pairs the two.
fn bound_parameters(arguments: &[Argument]) -> Vec<(Option<&str>, Option<&str>)> {
    let mut bound = Vec::new();
    let mut rest = arguments.iter().peekable();
    while let Some(a) = rest.next() {
        match a {
            Argument::Parameter { name, value: Some(v) } => bound.push((Some(name.as_str()), Some(v.as_str()))),
            Argument::Parameter { name, value: None } => match rest.peek() {
                Some(Argument::Value(v)) => {
                    bound.push((Some(name.as_str()), Some(v.as_str())));
                    rest.next();
                }
                _ => bound.push((Some(name.as_str()), None)),
            },
            Argument::Value(v) => bound.push((None, Some(v.as_str()))),
        }
    }
    bound
}

fn show_call(name: &str, arguments: &[Argument]) -> String {
    let mut shown = name.to_string();
    for a in arguments {
        shown.push(' ');
        match a {
            Argument::Parameter { name, value: None } => shown.push_str(&format!("-{name}")),
            Argument::Parameter { name, value: Some(v) } => shown.push_str(&format!("-{name}:{v}")),
            Argument::Value(v) => shown.push_str(v),
        }
    }
    shown
}

/// The script of a `powershell`/`pwsh` command line that runs `-EncodedCommand` and
/// otherwise sets only harmless switches; `None` when the line is anything else (it
/// is then an ordinary command line, and `-Command`, `-File` or a second script never
/// pass as an encoded one). The script is UTF-16LE in base64.
pub fn encoded_powershell(line: &str) -> Option<Result<String, String>> {
    let mut words = line.split_ascii_whitespace();
    let program = words.next()?.to_ascii_lowercase();
    if !matches!(program.as_str(), "powershell" | "powershell.exe" | "pwsh" | "pwsh.exe") {
        return None;
    }
    let mut encoded = false;
    while let Some(word) = words.next() {
        let flag = word.strip_prefix(['-', '/'])?.to_ascii_lowercase();
        let abbreviates = |full: &str, shortest: usize| flag.len() >= shortest && full.starts_with(flag.as_str());
        if abbreviates("encodedcommand", 1) || flag == "ec" {
            let value = words.next()?;
            if encoded
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            {
                return None;
            }
            encoded = true;
        } else if abbreviates("executionpolicy", 2)
            || flag == "ep"
            || abbreviates("inputformat", 2)
            || abbreviates("outputformat", 1)
            || abbreviates("windowstyle", 1)
        {
            let value = words.next()?;
            if !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
        } else if !(abbreviates("noprofile", 3)
            || abbreviates("noninteractive", 4)
            || abbreviates("nologo", 3)
            || flag == "sta"
            || flag == "mta")
        {
            return None;
        }
    }
    // The audit's decoder, so that the audit and the policy read the same script.
    encoded.then(|| encoded_command(line).ok_or_else(|| "the -EncodedCommand argument is not base64".to_string()))
}
