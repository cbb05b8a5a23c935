//! Which kind of shell a resource URI names.

/// Shell kind from a resource URI: cmd, PowerShell remoting with its configuration name, or other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellKind {
    /// WinRS `cmd.exe` shell.
    Cmd,
    /// PSRP endpoint, e.g. `Microsoft.PowerShell` (case as sent).
    PowerShell { configuration: String },
    /// Anything else (WMI classes, config, custom plugins), the URI as sent.
    Other(String),
}

const CMD_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
const POWERSHELL_PREFIX: &str = "http://schemas.microsoft.com/powershell/";

/// Classifies a resource URI. WinRM matches plugin resource URIs without
/// regard to case, so this does too: otherwise `.../shell/CMD` would slip past
/// a rule written for cmd.
pub fn shell_kind(resource_uri: &str) -> ShellKind {
    let uri = resource_uri.trim_matches(super::is_xml_space);
    if uri.eq_ignore_ascii_case(CMD_URI) {
        return ShellKind::Cmd;
    }
    if let Some(prefix) = uri.get(..POWERSHELL_PREFIX.len()) {
        if prefix.eq_ignore_ascii_case(POWERSHELL_PREFIX) {
            let configuration = &uri[POWERSHELL_PREFIX.len()..];
            // A configuration name is one path segment without query or fragment.
            if !configuration.is_empty()
                && !configuration.contains(['/', '?', '#'])
                && !configuration.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return ShellKind::PowerShell {
                    configuration: configuration.to_string(),
                };
            }
        }
    }
    ShellKind::Other(resource_uri.to_string())
}

/// Resource URIs of the WinRS shell plugins (cmd, and custom ones).
const WINRS_PREFIX: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/";

/// Whether `resource_uri` names a shell: a WinRS shell (`.../windows/shell/<name>`)
/// or a PowerShell configuration, without regard to case as WinRM matches them.
pub fn is_shell_resource(resource_uri: &str) -> bool {
    let uri = resource_uri.trim_matches(super::is_xml_space);
    let winrs = uri
        .get(..WINRS_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(WINRS_PREFIX));
    winrs || matches!(shell_kind(uri), ShellKind::PowerShell { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(shell_kind(CMD_URI), ShellKind::Cmd);
        assert_eq!(
            shell_kind("HTTP://Schemas.Microsoft.com/wbem/wsman/1/windows/shell/CMD"),
            ShellKind::Cmd
        );
        assert_eq!(
            shell_kind(" http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd\n"),
            ShellKind::Cmd
        );
        assert_eq!(
            shell_kind("http://schemas.microsoft.com/powershell/Microsoft.PowerShell"),
            ShellKind::PowerShell {
                configuration: "Microsoft.PowerShell".into()
            }
        );
        assert_eq!(
            shell_kind("http://SCHEMAS.microsoft.com/PowerShell/JEA_Role"),
            ShellKind::PowerShell {
                configuration: "JEA_Role".into()
            }
        );
        assert_eq!(
            shell_kind("http://schemas.microsoft.com/powershell/PowerShell.7"),
            ShellKind::PowerShell {
                configuration: "PowerShell.7".into()
            }
        );
        for other in [
            "http://schemas.microsoft.com/powershell/",
            "http://schemas.microsoft.com/powershell",
            "http://schemas.microsoft.com/powershell/a/b",
            "http://schemas.microsoft.com/powershell/a?x=1",
            "http://schemas.microsoft.com/powershell/a b",
            "https://schemas.microsoft.com/powershell/Microsoft.PowerShell",
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd2",
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
            "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service",
            "http://schemas.microsoft.com/wbem/wsman/1/config",
            "",
            "é",
        ] {
            assert_eq!(shell_kind(other), ShellKind::Other(other.into()), "{other:?}");
        }
    }
}
