//! The PowerShell pipeline a CREATE_PIPELINE message asks for, as a typed model
//! that the audit records and a command policy can judge: its statements, each a
//! pipeline of commands (a cmdlet or a script) with their parameters.

use quick_xml::events::Event;
use quick_xml::Reader;
use sha2::{Digest, Sha256};

use super::clixml::{decode_psrp_escapes, frame_of, is, Frame, MAX_XML_DEPTH, PRIMITIVES};

/// A CREATE_PIPELINE's commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pipeline {
    /// Statements run one after the other (`;`), each a pipeline (`|`).
    pub statements: Vec<Statement>,
    /// Some parameter's value is a SecureString (never decrypted).
    pub secure_string: bool,
}

/// One statement: commands whose output feeds the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    pub commands: Vec<Command>,
}

/// A command of a pipeline: a cmdlet, function or program by name, or script text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The command's name, or for a script the whole script text.
    pub name: String,
    /// `IsScript`: `name` is script text (`Invoke-Command`'s script block, a
    /// line typed in `Enter-PSSession`).
    pub is_script: bool,
    pub parameters: Vec<Parameter>,
}

/// A parameter as sent: `-Name value`, a positional value (no name), or a switch
/// (no value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parameter {
    pub name: Option<String>,
    /// A primitive's text; `<SecureString>`, `<bytes>` or `<object>` for the others.
    pub value: Option<String>,
}

impl Command {
    /// For a script, the SHA-256 of its text (UTF-8), in hex.
    pub fn script_sha256(&self) -> Option<String> {
        self.is_script
            .then(|| hex::encode(Sha256::digest(self.name.as_bytes())))
    }
}

impl Pipeline {
    /// Reads a CREATE_PIPELINE payload. Best effort: malformed CLIXML yields the
    /// commands read before it.
    pub fn parse(xml: &[u8]) -> Pipeline {
        parse(xml, false).0
    }

    /// Reads a CREATE_PIPELINE payload for a command policy, which must see all a
    /// target may run: the statements of both `Cmds` and `ExtraCmds`, and `None`
    /// unless the CLIXML reads well-formed to its end.
    pub fn parse_strict(xml: &[u8]) -> Option<Pipeline> {
        match parse(xml, true) {
            (pipeline, true) => Some(pipeline),
            (_, false) => None,
        }
    }

    /// Every command, statement after statement.
    pub fn commands(&self) -> impl Iterator<Item = &Command> {
        self.statements.iter().flat_map(|s| s.commands.iter())
    }

    /// One line: statements joined by "; ", a statement's commands by " | ", each
    /// parameter rendered `-Name value` (values quoted when they need it).
    pub fn summary(&self) -> String {
        self.statements
            .iter()
            .filter(|s| !s.commands.is_empty())
            .map(|s| s.commands.iter().map(render_command).collect::<Vec<_>>().join(" | "))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A statement as read, before choosing between `Cmds` and `ExtraCmds`.
struct Read {
    in_extra: bool,
    commands: Vec<Command>,
}

/// What the current text belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Cmd,
    IsScript,
    ParamName,
    ParamValue,
}

/// Walks the CLIXML of a CREATE_PIPELINE payload. Shape:
/// `Obj N="PowerShell"/MS/Obj N="Cmds"/LST/Obj/MS/{S N="Cmd", B N="IsScript", Obj N="Args"/LST/Obj/MS/{N, V}}`,
/// with several statements listed under `Obj N="ExtraCmds"` (whose first entry
/// the top-level `Cmds` repeats). `every`: keep both lists. Also says whether the
/// XML was read to its end without error.
fn parse(xml: &[u8], every: bool) -> (Pipeline, bool) {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut read: Vec<Read> = Vec::new();
    let mut slot: Option<(Slot, usize)> = None;
    let mut text = String::new();
    let mut secure_string = false;
    let mut well_formed = false;

    loop {
        let (start, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::Text(t)) => {
                if slot.is_some_and(|(_, d)| d == stack.len()) {
                    if let Ok(s) = t.unescape() {
                        text.push_str(&s);
                    }
                }
                continue;
            }
            Ok(Event::End(_)) => {
                if let Some((kind, depth)) = slot {
                    if depth == stack.len() {
                        store(&mut read, kind, Some(decode_psrp_escapes(&text)));
                        slot = None;
                        text.clear();
                    }
                }
                stack.pop();
                continue;
            }
            Ok(Event::Eof) => {
                well_formed = stack.is_empty();
                break;
            }
            Err(_) => break,
            Ok(_) => continue,
        };
        if stack.len() >= MAX_XML_DEPTH {
            break;
        }
        let frame = frame_of(&start);
        let n = frame.n.as_deref();
        let len = stack.len();
        let parent = len.checked_sub(1).and_then(|i| stack.get(i));
        let grand = len.checked_sub(2).and_then(|i| stack.get(i));
        let great = len.checked_sub(3).and_then(|i| stack.get(i));

        if &*frame.tag == "Obj" && n == Some("Cmds") {
            let in_extra = stack.iter().any(|f| is(Some(f), "Obj", Some("ExtraCmds")));
            read.push(Read {
                in_extra,
                commands: Vec::new(),
            });
        } else if &*frame.tag == "Obj" && is(parent, "LST", None) && is(grand, "Obj", Some("Cmds")) {
            if let Some(st) = read.last_mut() {
                st.commands.push(Command::default());
            }
        } else if &*frame.tag == "Obj" && is(parent, "LST", None) && is(grand, "Obj", Some("Args")) {
            if let Some(cmd) = read.last_mut().and_then(|s| s.commands.last_mut()) {
                cmd.parameters.push(Parameter::default());
            }
        } else if is(parent, "MS", None) && is(grand, "Obj", None) {
            let under = |name| is(great, "LST", None) && len >= 4 && is(stack.get(len - 4), "Obj", Some(name));
            let in_cmd = under("Cmds");
            let in_arg = under("Args");
            let kind = match n {
                Some("Cmd") if in_cmd => Some(Slot::Cmd),
                Some("IsScript") if in_cmd => Some(Slot::IsScript),
                Some("N") if in_arg => Some(Slot::ParamName),
                Some("V") if in_arg => Some(Slot::ParamValue),
                _ => None,
            };
            if let Some(kind) = kind {
                match &*frame.tag {
                    // Nil: positional parameter (N) or switch (V).
                    "Nil" => store(&mut read, kind, None),
                    tag if PRIMITIVES.contains(&tag) => {
                        if empty {
                            store(&mut read, kind, Some(String::new()));
                        } else {
                            slot = Some((kind, stack.len() + 1));
                            text.clear();
                        }
                    }
                    "SS" => {
                        secure_string = true;
                        store(&mut read, kind, Some("<SecureString>".into()));
                    }
                    "BA" => store(&mut read, kind, Some("<bytes>".into())),
                    _ => store(&mut read, kind, Some("<object>".into())),
                }
            }
        }
        if !empty {
            stack.push(frame);
        }
    }
    // ExtraCmds lists every statement when there are several; Cmds then repeats the first.
    let extra = read.iter().any(|s| s.in_extra);
    let pipeline = Pipeline {
        statements: read
            .into_iter()
            .filter(|s| every || s.in_extra == extra)
            .map(|s| Statement { commands: s.commands })
            .collect(),
        secure_string,
    };
    (pipeline, well_formed)
}

fn store(read: &mut [Read], kind: Slot, value: Option<String>) {
    let Some(cmd) = read.last_mut().and_then(|s| s.commands.last_mut()) else {
        return;
    };
    match kind {
        Slot::Cmd => cmd.name = value.unwrap_or_default(),
        Slot::IsScript => cmd.is_script = value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        Slot::ParamName => {
            if let Some(p) = cmd.parameters.last_mut() {
                p.name = value;
            }
        }
        Slot::ParamValue => {
            if let Some(p) = cmd.parameters.last_mut() {
                p.value = value;
            }
        }
    }
}

fn render_command(c: &Command) -> String {
    let mut out = c.name.clone();
    for p in &c.parameters {
        if let Some(name) = &p.name {
            out.push_str(" -");
            out.push_str(name);
        }
        if let Some(v) = &p.value {
            out.push(' ');
            out.push_str(&quote(v));
        }
    }
    out
}

fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && !v.starts_with(['<', '-'])
        && v.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | ';' | '|' | '&'));
    if plain || v.starts_with('<') && v.ends_with('>') && !v.contains(char::is_whitespace) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}
