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
    /// target may run: the statements of both `Cmds` and `ExtraCmds`. `None` unless
    /// the CLIXML reads well-formed to its end, holds at least one command, and uses
    /// nothing PowerShell's deserializer could read otherwise than this walker does
    /// (see [`Strict`]).
    pub fn parse_strict(xml: &[u8]) -> Option<Pipeline> {
        match parse(xml, true) {
            (pipeline, true) if pipeline.commands().next().is_some() => Some(pipeline),
            _ => None,
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

/// The property names this walker gives meaning to. PowerShell matches property names
/// without regard to case and after decoding `_xHHHH_` escapes: a strict reading refuses
/// any other spelling of them rather than read past a property the target would use.
const PROPERTIES: [&str; 8] = ["PowerShell", "Cmds", "ExtraCmds", "Cmd", "IsScript", "Args", "N", "V"];

/// Constructs PowerShell's deserializer reads that this walker does not model: object
/// references (`Ref`, an object defined elsewhere), lists other than `LST`, CDATA,
/// entities, document types, comments and processing instructions. A strict reading
/// refuses them, so what it judges is what the target runs.
struct Strict;

impl Strict {
    fn refuses_tag(tag: &str) -> bool {
        matches!(tag, "Ref" | "IE" | "QUE" | "STK")
    }

    fn refuses_name(n: &str) -> bool {
        let decoded = decode_psrp_escapes(n);
        PROPERTIES.iter().any(|p| p.eq_ignore_ascii_case(&decoded) && *p != n)
    }
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
    let strict = every;
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut read: Vec<Read> = Vec::new();
    let mut slot: Option<(Slot, usize)> = None;
    let mut text = String::new();
    let mut secure_string = false;
    let mut well_formed = false;
    // The slots already given a value in the current command and parameter: a
    // property given twice may be read either way, so a strict reading refuses it.
    let mut given: Vec<Slot> = Vec::new();

    loop {
        let (start, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::Text(t)) => {
                match t.unescape() {
                    Ok(s) if slot.is_some_and(|(_, d)| d == stack.len()) => text.push_str(&s),
                    Ok(_) => {}
                    Err(_) if strict => break,
                    Err(_) => {}
                }
                continue;
            }
            Ok(Event::CData(c)) => {
                if strict {
                    break;
                }
                if slot.is_some_and(|(_, d)| d == stack.len()) {
                    text.push_str(&String::from_utf8_lossy(&c));
                }
                continue;
            }
            Ok(Event::End(_)) => {
                if let Some((kind, depth)) = slot {
                    if depth == stack.len() {
                        if strict && given.contains(&kind) {
                            break;
                        }
                        given.push(kind);
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
            Ok(Event::DocType(_) | Event::Comment(_) | Event::PI(_)) if strict => break,
            Err(_) => break,
            Ok(_) => continue,
        };
        if stack.len() >= MAX_XML_DEPTH {
            break;
        }
        let frame = frame_of(&start);
        if strict && (Strict::refuses_tag(&frame.tag) || frame.n.as_deref().is_some_and(Strict::refuses_name)) {
            break;
        }
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
            given.clear();
        } else if &*frame.tag == "Obj" && is(parent, "LST", None) && is(grand, "Obj", Some("Args")) {
            if let Some(cmd) = read.last_mut().and_then(|s| s.commands.last_mut()) {
                cmd.parameters.push(Parameter::default());
            }
            given.retain(|k| matches!(k, Slot::Cmd | Slot::IsScript));
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
                if strict && (given.contains(&kind) || kind == Slot::IsScript && !matches!(&*frame.tag, "B")) {
                    break;
                }
                if !(PRIMITIVES.contains(&&*frame.tag) && !empty) {
                    given.push(kind);
                }
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
        // An XML boolean: `true` or `1`, as PowerShell's deserializer reads it.
        Slot::IsScript => {
            cmd.is_script = value.is_some_and(|v| matches!(v.trim(), "1") || v.trim().eq_ignore_ascii_case("true"))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CREATE_PIPELINE's PowerShell object with `cmds` as its Cmds list items.
    fn create_pipeline(cmds: &str) -> String {
        format!(
            r#"<Obj RefId="0"><MS><Obj N="PowerShell" RefId="1"><MS><Obj N="Cmds" RefId="2"><TN RefId="0"><T>System.Collections.Generic.List`1[[System.Management.Automation.PSObject]]</T></TN><LST>{cmds}</LST></Obj><B N="IsNested">false</B></MS></Obj></MS></Obj>"#
        )
    }

    fn command(name: &str, is_script: &str) -> String {
        format!(
            r#"<Obj RefId="3"><MS><S N="Cmd">{name}</S><B N="IsScript">{is_script}</B><Obj N="Args" RefId="4"><TNRef RefId="0" /><LST /></Obj></MS></Obj>"#
        )
    }

    fn names(p: &Pipeline) -> Vec<(String, bool)> {
        p.commands().map(|c| (c.name.clone(), c.is_script)).collect()
    }

    #[test]
    fn a_plain_pipeline_reads_the_same_both_ways() {
        let xml = create_pipeline(&command("Get-Service", "false"));
        let strict = Pipeline::parse_strict(xml.as_bytes()).expect("strict");
        assert_eq!(names(&strict), [("Get-Service".to_string(), false)]);
        assert_eq!(Pipeline::parse(xml.as_bytes()), strict);
    }

    #[test]
    fn is_script_reads_one_as_true() {
        let xml = create_pipeline(&command("Get-Service; Stop-Computer -Force", "1"));
        let strict = Pipeline::parse_strict(xml.as_bytes()).expect("strict");
        assert_eq!(
            names(&strict),
            [("Get-Service; Stop-Computer -Force".to_string(), true)]
        );
    }

    /// What PowerShell's deserializer would read otherwise than the walker: refused by
    /// the strict reading (a policy then refuses the request), read best effort for the audit.
    #[test]
    fn constructs_the_walker_does_not_model_are_refused_when_strict() {
        let cases = [
            (
                "CDATA",
                create_pipeline(&command("Get-Service<![CDATA[; Stop-Computer -Force]]>", "true")),
            ),
            (
                "an object reference",
                create_pipeline(&format!(r#"{}<Ref RefId="9" />"#, command("Get-Service", "false"))),
            ),
            (
                "a property name in another case",
                create_pipeline(&command("Get-Service", "false")).replace(r#"N="Cmd""#, r#"N="cmd""#),
            ),
            (
                "an escaped property name",
                create_pipeline(&command("Get-Service", "false")).replace(r#"N="Cmds""#, r#"N="_x0043_mds""#),
            ),
            (
                "another kind of list",
                create_pipeline(&command("Get-Service", "false"))
                    .replace("<LST>", "<IE>")
                    .replace("</LST></Obj><B", "</IE></Obj><B"),
            ),
            (
                "a property given twice",
                create_pipeline(&command("Get-Service", "false")).replace(
                    r#"<S N="Cmd">Get-Service</S>"#,
                    r#"<S N="Cmd">Get-Service</S><S N="Cmd">Stop-Computer</S>"#,
                ),
            ),
            (
                "IsScript not a boolean",
                create_pipeline(&command("Get-Service", "false"))
                    .replace(r#"<B N="IsScript">false</B>"#, r#"<S N="IsScript">true</S>"#),
            ),
            ("a comment", create_pipeline(&command("Get-Ser<!-- x -->vice", "false"))),
            (
                "an undefined entity",
                create_pipeline(&command("Get-Service&evil;", "false")),
            ),
            ("no command at all", create_pipeline("")),
        ];
        for (what, xml) in cases {
            assert_eq!(
                Pipeline::parse_strict(xml.as_bytes()),
                None,
                "{what} was read strictly: {xml}"
            );
        }
        let cdata = create_pipeline(&command("Get-Service<![CDATA[; Stop-Computer -Force]]>", "true"));
        assert_eq!(
            names(&Pipeline::parse(cdata.as_bytes())),
            [("Get-Service; Stop-Computer -Force".to_string(), true)],
            "the audit reads CDATA as text"
        );
    }
}
