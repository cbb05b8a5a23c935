//! Reads PowerShell script text the way a command policy can judge it: as plain
//! commands, in the spirit of JEA's NoLanguage mode.
//!
//! Accepted: statements separated by `;` or line breaks, each a pipeline of commands
//! separated by `|`; a command is a bare name followed by literal arguments (bare words,
//! numbers, `-Name` and `-Name:value` parameters, single-quoted strings, double-quoted
//! strings without `$` or backtick); `#` and `<# #>` comments. Everything else is
//! refused, and the error names the construct: a script the relay cannot read whole
//! is a script it cannot judge. PowerShell reads the Unicode dashes (U+2013..U+2015)
//! as `-` and the typographic quotes as `'` and `"`: so does this reader, so that a
//! parameter or a string cannot hide behind them.
//!
//! Sans-IO and allocation-bounded by the input: every loop consumes a character.

use std::fmt;

/// One command of a script, as PowerShell would bind it at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCall {
    /// The name as written, Unicode dashes read as `-`.
    pub name: String,
    pub arguments: Vec<Argument>,
}

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    /// `-Name` (`value: None`) or `-Name:value`.
    Parameter { name: String, value: Option<String> },
    /// A bare word, number or string, without its quotes.
    Value(String),
}

/// Why a script is not plain commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRefusal {
    /// The construct, as a reader of the policy would name it: "a variable ($)".
    pub construct: String,
    /// 1-based line and column (in characters) where it starts.
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for ScriptRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {}, column {}", self.construct, self.line, self.column)
    }
}

/// PowerShell keywords: a statement starting with one is language, not a command.
const KEYWORDS: &[&str] = &[
    "begin",
    "break",
    "catch",
    "class",
    "clean",
    "configuration",
    "continue",
    "data",
    "define",
    "do",
    "dynamicparam",
    "else",
    "elseif",
    "end",
    "enum",
    "exit",
    "filter",
    "finally",
    "for",
    "foreach",
    "from",
    "function",
    "hidden",
    "if",
    "in",
    "inlinescript",
    "parallel",
    "param",
    "process",
    "return",
    "sequence",
    "static",
    "switch",
    "throw",
    "trap",
    "try",
    "until",
    "using",
    "var",
    "while",
    "workflow",
];

pub(crate) fn is_dash(c: char) -> bool {
    matches!(c, '-' | '\u{2013}' | '\u{2014}' | '\u{2015}')
}

fn is_single_quote(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

fn is_double_quote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

/// Characters that end a word without being refused.
fn ends_word(c: char) -> bool {
    is_space(c) || is_newline(c) || c == ';' || c == '|'
}

/// The construct a character starts, when the reader refuses it anywhere outside a
/// single-quoted string.
fn construct_of(c: char) -> Option<&'static str> {
    Some(match c {
        '$' => "a variable or subexpression ($)",
        '`' => "a backtick escape (`)",
        '{' | '}' => "a script block ({})",
        '(' | ')' => "a parenthesised expression or subexpression (())",
        '[' | ']' => "a type literal or index ([...])",
        '&' => "the call operator or a background/chain operator (&)",
        '>' | '<' => "a redirection (> or <)",
        ',' => "an array (,)",
        _ if is_single_quote(c) || is_double_quote(c) => "a quote inside a word",
        _ if c.is_control() && !is_newline(c) && c != '\t' => "a control character",
        _ if c.is_whitespace() && !is_space(c) && !is_newline(c) => "unusual whitespace",
        '\u{FEFF}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' => "an invisible character",
        _ => return None,
    })
}

/// Reads `text` as plain commands, in order; an empty script has none.
pub fn read_script(text: &str) -> Result<Vec<CommandCall>, ScriptRefusal> {
    let mut reader = Reader {
        chars: text.chars().collect(),
        pos: 0,
    };
    let mut commands = Vec::new();
    loop {
        reader.skip_between_statements()?;
        if reader.at_end() {
            return Ok(commands);
        }
        reader.pipeline(&mut commands)?;
    }
}

struct Reader {
    chars: Vec<char>,
    pos: usize,
}

impl Reader {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn refuse_at(&self, pos: usize, construct: impl Into<String>) -> ScriptRefusal {
        let before = &self.chars[..pos.min(self.chars.len())];
        let line = 1 + before.iter().filter(|&&c| c == '\n').count();
        let column = 1 + before.iter().rev().take_while(|&&c| c != '\n').count();
        ScriptRefusal {
            construct: construct.into(),
            line,
            column,
        }
    }

    fn refuse(&self, construct: impl Into<String>) -> ScriptRefusal {
        self.refuse_at(self.pos, construct)
    }

    /// Skips `#` to the end of the line, or a `<# ... #>` block.
    fn skip_comment(&mut self) -> Result<bool, ScriptRefusal> {
        match (self.peek(), self.peek_at(1)) {
            (Some('#'), _) => {
                while self.peek().is_some_and(|c| !is_newline(c)) {
                    self.pos += 1;
                }
                Ok(true)
            }
            (Some('<'), Some('#')) => {
                let start = self.pos;
                self.pos += 2;
                loop {
                    match (self.peek(), self.peek_at(1)) {
                        (Some('#'), Some('>')) => {
                            self.pos += 2;
                            return Ok(true);
                        }
                        (Some(_), _) => self.pos += 1,
                        (None, _) => return Err(self.refuse_at(start, "an unterminated block comment (<#)")),
                    }
                }
            }
            _ => Ok(false),
        }
    }

    /// Spaces and comments within a line.
    fn skip_inline(&mut self) -> Result<(), ScriptRefusal> {
        loop {
            match self.peek() {
                Some(c) if is_space(c) => self.pos += 1,
                _ => {
                    if !self.skip_comment()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Spaces, comments, line breaks and empty statements.
    fn skip_between_statements(&mut self) -> Result<(), ScriptRefusal> {
        loop {
            self.skip_inline()?;
            match self.peek() {
                Some(c) if is_newline(c) || c == ';' => self.pos += 1,
                _ => return Ok(()),
            }
        }
    }

    /// One statement: commands separated by `|`, a pipe may end a line.
    fn pipeline(&mut self, out: &mut Vec<CommandCall>) -> Result<(), ScriptRefusal> {
        loop {
            out.push(self.command()?);
            if self.peek() != Some('|') {
                return Ok(());
            }
            if self.peek_at(1) == Some('|') {
                return Err(self.refuse("a pipeline chain operator (||)"));
            }
            self.pos += 1;
            // After a pipe PowerShell reads on across line breaks.
            loop {
                self.skip_inline()?;
                match self.peek() {
                    Some(c) if is_newline(c) => self.pos += 1,
                    _ => break,
                }
            }
            match self.peek() {
                None | Some(';') | Some('|') => return Err(self.refuse("an empty pipeline element (|)")),
                _ => {}
            }
        }
    }

    /// A command name and its arguments, up to the end of the statement or a `|`.
    fn command(&mut self) -> Result<CommandCall, ScriptRefusal> {
        let name = self.command_name()?;
        let mut arguments = Vec::new();
        loop {
            self.skip_inline()?;
            match self.peek() {
                None | Some(';') | Some('|') => break,
                Some(c) if is_newline(c) => break,
                Some(_) => arguments.push(self.argument()?),
            }
        }
        Ok(CommandCall { name, arguments })
    }

    fn command_name(&mut self) -> Result<String, ScriptRefusal> {
        let start = self.pos;
        let Some(first) = self.peek() else {
            return Err(self.refuse("an empty command"));
        };
        if is_single_quote(first) || is_double_quote(first) {
            return Err(self.refuse("a string where a command name is expected"));
        }
        if let Some(construct) = construct_of(first) {
            return Err(self.refuse(construct));
        }
        if first == '.' {
            return Err(self.refuse("dot-sourcing (.)"));
        }
        if first == '@' {
            return Err(self.refuse("an array, hashtable or here-string (@)"));
        }
        if !(first.is_alphabetic() || first == '_') {
            return Err(self.refuse(format!("an expression where a command name is expected ({first})")));
        }
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| !ends_word(c)) {
            if let Some(construct) = construct_of(c) {
                return Err(self.refuse(construct));
            }
            if is_dash(c) {
                name.push('-');
            } else if c.is_alphanumeric() || matches!(c, '_' | '.' | '\\') {
                name.push(c);
            } else if c == ':' {
                return Err(self.refuse("a drive- or scope-qualified command name (:)"));
            } else {
                return Err(self.refuse(format!("a character commands are not named with ({c})")));
            }
            self.pos += 1;
        }
        if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&name)) {
            return Err(self.refuse_at(start, format!("the keyword {name}")));
        }
        Ok(name)
    }

    fn argument(&mut self) -> Result<Argument, ScriptRefusal> {
        let Some(c) = self.peek() else {
            return Err(self.refuse("a missing argument"));
        };
        if is_dash(c) {
            return self.dashed();
        }
        self.value().map(Argument::Value)
    }

    /// `-Name`, `-Name:value`, or a value starting with a dash (`-5`, `-`).
    fn dashed(&mut self) -> Result<Argument, ScriptRefusal> {
        match self.peek_at(1) {
            Some(c) if is_dash(c) => {
                let construct = if self.peek_at(2) == Some('%') {
                    "the stop-parsing token (--%)"
                } else {
                    "the end-of-parameters token (--)"
                };
                return Err(self.refuse(construct));
            }
            Some(c) if c.is_alphabetic() || c == '_' || c == '?' => {}
            // A negative number or a lone dash is a value.
            _ => return self.value().map(Argument::Value),
        }
        self.pos += 1;
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| c.is_alphanumeric() || c == '_' || c == '?') {
            name.push(c);
            self.pos += 1;
        }
        match self.peek() {
            Some(':') => {
                self.pos += 1;
                // `-Name: value` binds the next word as `-Name:value` does.
                while self.peek().is_some_and(is_space) {
                    self.pos += 1;
                }
                match self.peek() {
                    None | Some(';') | Some('|') => Err(self.refuse("a parameter without its value (-Name:)")),
                    Some(c) if is_newline(c) => Err(self.refuse("a parameter without its value (-Name:)")),
                    Some(c) if is_dash(c) && self.peek_at(1).is_some_and(|n| n.is_alphabetic()) => {
                        Err(self.refuse("a parameter as another parameter's value"))
                    }
                    Some(_) => Ok(Argument::Parameter {
                        name,
                        value: Some(self.value()?),
                    }),
                }
            }
            None => Ok(Argument::Parameter { name, value: None }),
            Some(c) if ends_word(c) => Ok(Argument::Parameter { name, value: None }),
            Some(c) => Err(self.refuse(construct_of(c).unwrap_or("a parameter name with unusual characters"))),
        }
    }

    /// A bare word or a quoted string, ended by a space, line break, `;` or `|`.
    fn value(&mut self) -> Result<String, ScriptRefusal> {
        let Some(first) = self.peek() else {
            return Err(self.refuse("a missing argument"));
        };
        let text = if is_single_quote(first) {
            self.single_quoted()?
        } else if is_double_quote(first) {
            self.double_quoted()?
        } else {
            return self.bare_word();
        };
        match self.peek() {
            Some(c) if !ends_word(c) => Err(self.refuse("a word glued to a quoted string")),
            _ => Ok(text),
        }
    }

    fn bare_word(&mut self) -> Result<String, ScriptRefusal> {
        let start = self.pos;
        if self.peek() == Some('@') {
            return Err(self.refuse("splatting, an array, hashtable or here-string (@)"));
        }
        let mut word = String::new();
        while let Some(c) = self.peek().filter(|&c| !ends_word(c)) {
            if let Some(construct) = construct_of(c) {
                return Err(self.refuse(construct));
            }
            word.push(c);
            self.pos += 1;
        }
        if word.is_empty() {
            return Err(self.refuse_at(start, "a missing argument"));
        }
        Ok(word)
    }

    /// `'...'`, a doubled quote being one quote; any single-quote character opens,
    /// closes and doubles, as in PowerShell.
    fn single_quoted(&mut self) -> Result<String, ScriptRefusal> {
        self.quoted(is_single_quote, '\'', "an unterminated string (')", false)
    }

    /// `"..."` without `$` or backtick, which would make it an expandable string.
    fn double_quoted(&mut self) -> Result<String, ScriptRefusal> {
        self.quoted(is_double_quote, '"', "an unterminated string (\")", true)
    }

    /// A string from the quote at the current position to its closing `is_quote`, a
    /// doubled quote standing for `quote`. `expandable`: a double-quoted string, in
    /// which `$` and a backtick would make it more than its text.
    fn quoted(
        &mut self,
        is_quote: fn(char) -> bool,
        quote: char,
        unterminated: &str,
        expandable: bool,
    ) -> Result<String, ScriptRefusal> {
        let start = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.refuse_at(start, unterminated)),
                Some('$') if expandable => {
                    return Err(self.refuse("a variable or subexpression in a double-quoted string ($)"))
                }
                Some('`') if expandable => return Err(self.refuse("a backtick escape in a double-quoted string (`)")),
                Some(c) if is_quote(c) => {
                    if self.peek_at(1).is_some_and(is_quote) {
                        text.push(quote);
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                        return Ok(text);
                    }
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(script: &str) -> Vec<String> {
        match read_script(script) {
            Ok(commands) => commands.into_iter().map(|c| c.name).collect(),
            Err(e) => panic!("{script:?} refused: {e}"),
        }
    }

    fn refusal(script: &str) -> String {
        match read_script(script) {
            Ok(commands) => panic!("{script:?} accepted as {commands:?}"),
            Err(e) => e.construct,
        }
    }

    fn value(s: &str) -> Argument {
        Argument::Value(s.into())
    }

    fn param(name: &str, v: Option<&str>) -> Argument {
        Argument::Parameter {
            name: name.into(),
            value: v.map(Into::into),
        }
    }

    #[test]
    fn accepts_plain_commands() {
        let accepted: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   \n\n ; ;", &[]),
            ("Get-Service", &["Get-Service"]),
            ("get-service", &["get-service"]),
            ("Get-Service Spooler", &["Get-Service"]),
            ("Get-Service -Name Spooler", &["Get-Service"]),
            ("Get-Service;Stop-Computer", &["Get-Service", "Stop-Computer"]),
            ("Get-Service ; Get-Process", &["Get-Service", "Get-Process"]),
            (
                "Get-Service\nGet-Process\r\nhostname",
                &["Get-Service", "Get-Process", "hostname"],
            ),
            ("Get-Service | Select-Object Name", &["Get-Service", "Select-Object"]),
            ("Get-Service |\n  Out-String", &["Get-Service", "Out-String"]),
            ("Get-Service #comment", &["Get-Service"]),
            ("# only a comment", &[]),
            ("<# block\n comment #> Get-Service", &["Get-Service"]),
            ("Get-Service <# inline #> -Name Spooler", &["Get-Service"]),
            ("Get-Process -Id 42", &["Get-Process"]),
            ("Get-Process -Id -1", &["Get-Process"]),
            ("Get-ChildItem C:\\Windows\\Temp", &["Get-ChildItem"]),
            ("Get-ChildItem *.log", &["Get-ChildItem"]),
            (
                "Microsoft.PowerShell.Management\\Get-Service",
                &["Microsoft.PowerShell.Management\\Get-Service"],
            ),
            ("ipconfig.exe /all", &["ipconfig.exe"]),
            ("Get-ADUser alice@lab.test", &["Get-ADUser"]),
            ("Write-Output a=b", &["Write-Output"]),
            ("Get-Service -Name 'Spooler'", &["Get-Service"]),
            ("Get-Service -Name \"Spooler\"", &["Get-Service"]),
            ("Get-Service -Name:Spooler", &["Get-Service"]),
            ("Get-Service -Name: Spooler", &["Get-Service"]),
            ("Get\u{2013}Service \u{2014}Name Spooler", &["Get-Service"]),
            ("Get-Service\t-Name\tSpooler", &["Get-Service"]),
            ("Restart-Service -Name Spooler -Force", &["Restart-Service"]),
            ("Get-Service -?", &["Get-Service"]),
            ("Write-Output -", &["Write-Output"]),
        ];
        for (script, expected) in accepted {
            assert_eq!(names(script), *expected, "{script:?}");
        }
    }

    #[test]
    fn reads_arguments_literally() {
        let args = |s: &str| read_script(s).unwrap().remove(0).arguments;
        assert_eq!(args("Write-Output 'a''b'"), [value("a'b")]);
        assert_eq!(args("Write-Output \u{2018}a\u{2019}\u{2019}b\u{2019}"), [value("a'b")]);
        assert_eq!(args("Write-Output \"a\"\"b\""), [value("a\"b")]);
        assert_eq!(args("Write-Output \u{201C}x y\u{201D}"), [value("x y")]);
        assert_eq!(args("Write-Output 'it''s $x'"), [value("it's $x")]);
        assert_eq!(args("Write-Output 'a`b'"), [value("a`b")]);
        assert_eq!(args("Write-Output '#x' 'a;b|c'"), [value("#x"), value("a;b|c")]);
        assert_eq!(
            args("Restart-Service \u{2013}Name \u{2018}Spooler\u{2019}"),
            [param("Name", None), value("Spooler")]
        );
        assert_eq!(args("Get-Service -Name:'W32Time'"), [param("Name", Some("W32Time"))]);
        assert_eq!(
            args("Get-Process -Id -1 -5kb"),
            [param("Id", None), value("-1"), value("-5kb")]
        );
        assert_eq!(args("x -a -b"), [param("a", None), param("b", None)]);
        assert_eq!(args("x 'multi\nline'"), [value("multi\nline")]);
    }

    #[test]
    fn refuses_language_and_names_the_construct() {
        let refused: &[(&str, &str)] = &[
            ("$x", "a variable or subexpression ($)"),
            ("Get-Service $name", "a variable or subexpression ($)"),
            ("Get-Service -Name $env:x", "a variable or subexpression ($)"),
            ("Get-Service a$b", "a variable or subexpression ($)"),
            (
                "Get-Service \"a$b\"",
                "a variable or subexpression in a double-quoted string ($)",
            ),
            (
                "Get-Service \"a`$b\"",
                "a backtick escape in a double-quoted string (`)",
            ),
            (
                "Get-Service \"$(whoami)\"",
                "a variable or subexpression in a double-quoted string ($)",
            ),
            ("Get-Service $(whoami)", "a variable or subexpression ($)"),
            ("Get-Service @(1)", "splatting, an array, hashtable or here-string (@)"),
            ("Get-Service @args", "splatting, an array, hashtable or here-string (@)"),
            ("@{a=1}", "an array, hashtable or here-string (@)"),
            (
                "Write-Output @'\nx\n'@",
                "splatting, an array, hashtable or here-string (@)",
            ),
            ("{ Stop-Computer }", "a script block ({})"),
            ("Invoke-Command { Stop-Computer }", "a script block ({})"),
            ("Get-Service | ForEach-Object { $_ }", "a script block ({})"),
            (
                "& Stop-Computer",
                "the call operator or a background/chain operator (&)",
            ),
            (
                "& 'Stop-Computer'",
                "the call operator or a background/chain operator (&)",
            ),
            (
                "Get-Service & whoami",
                "the call operator or a background/chain operator (&)",
            ),
            (
                "Get-Service && whoami",
                "the call operator or a background/chain operator (&)",
            ),
            ("Get-Service&", "the call operator or a background/chain operator (&)"),
            ("Get-Service || whoami", "a pipeline chain operator (||)"),
            (". ./evil.ps1", "dot-sourcing (.)"),
            (".\\evil.ps1", "dot-sourcing (.)"),
            ("Get-Service > out.txt", "a redirection (> or <)"),
            ("Get-Service 2>&1", "a redirection (> or <)"),
            ("Get-Service *> x", "a redirection (> or <)"),
            ("Get-Service < in.txt", "a redirection (> or <)"),
            ("Get-`Service", "a backtick escape (`)"),
            ("Get-Service `\n -Name x", "a backtick escape (`)"),
            ("[Diagnostics.Process]::Start('cmd')", "a type literal or index ([...])"),
            ("Get-Service [int]", "a type literal or index ([...])"),
            ("(Get-Service)", "a parenthesised expression or subexpression (())"),
            (
                "Get-Service (whoami)",
                "a parenthesised expression or subexpression (())",
            ),
            ("Get-Service -Name a,b", "an array (,)"),
            ("Get-Service -Name Spooler,WinRM", "an array (,)"),
            ("'Get-Service'", "a string where a command name is expected"),
            ("\"Stop-Computer\"", "a string where a command name is expected"),
            (
                "\u{2018}Stop-Computer\u{2019}",
                "a string where a command name is expected",
            ),
            ("Write-Output 'a'b", "a word glued to a quoted string"),
            ("Write-Output a'b'", "a quote inside a word"),
            ("Write-Output 'a", "an unterminated string (')"),
            ("Write-Output \u{2018}a''", "an unterminated string (')"),
            ("Write-Output \"a", "an unterminated string (\")"),
            ("Get-Service --% & whoami", "the stop-parsing token (--%)"),
            ("Get-Service -- -Name", "the end-of-parameters token (--)"),
            ("Get-Service \u{2013}\u{2013}% x", "the stop-parsing token (--%)"),
            ("Get-Service -Name: ", "a parameter without its value (-Name:)"),
            ("Get-Service -Name:-Force", "a parameter as another parameter's value"),
            ("Get-Service | ", "an empty pipeline element (|)"),
            ("| Get-Service", "an expression where a command name is expected (|)"),
            ("Get-Service | | x", "an empty pipeline element (|)"),
            ("function f { }", "the keyword function"),
            ("foreach x", "the keyword foreach"),
            ("exit", "the keyword exit"),
            ("Return", "the keyword Return"),
            ("using module X", "the keyword using"),
            ("throw 'x'", "the keyword throw"),
            ("1 + 1", "an expression where a command name is expected (1)"),
            ("-Name", "an expression where a command name is expected (-)"),
            ("!x", "an expression where a command name is expected (!)"),
            ("function:Stop-Computer", "a drive- or scope-qualified command name (:)"),
            ("C:\\Windows\\evil.exe", "a drive- or scope-qualified command name (:)"),
            ("Get-Service <# open", "an unterminated block comment (<#)"),
            ("Get-Service\u{00A0}-Name x", "unusual whitespace"),
            ("Get-Service\u{2028}Stop-Computer", "unusual whitespace"),
            ("Get-Service\u{0}", "a control character"),
            ("\u{FEFF}Get-Service", "an invisible character"),
            ("Get-Service -Na$me", "a variable or subexpression ($)"),
            ("Get-Service -Name'x'", "a quote inside a word"),
            ("Get-Service -Name=x", "a parameter name with unusual characters"),
            ("Get-Service#comment", "a character commands are not named with (#)"),
            ("Get+Service", "a character commands are not named with (+)"),
        ];
        for (script, construct) in refused {
            assert_eq!(refusal(script), *construct, "{script:?}");
        }
    }

    #[test]
    fn refusals_say_where() {
        let e = read_script("Get-Service\nGet-Process $x").unwrap_err();
        assert_eq!((e.line, e.column), (2, 13));
        assert_eq!(e.to_string(), "a variable or subexpression ($) at line 2, column 13");
    }
}
