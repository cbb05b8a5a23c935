//! A WS-Transfer Delete for a shell, sent by the relay itself when a
//! session ends with shells its caller left open (they would otherwise
//! count against the target's MaxShellsPerUser until they time out).

pub const DELETE_ACTION: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";

/// The envelope pywinrm's `close_shell` sends, addressed to `to`.
pub fn delete_shell_request(to: &str, resource_uri: &str, shell_id: &str) -> Vec<u8> {
    super::winrs::delete_request(to, resource_uri, shell_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_request_parses_back() {
        let xml = delete_shell_request(
            "http://127.0.0.21:5985/wsman",
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
            "ABC<&>",
        );
        let info = crate::proto::wsman::parse_request(&xml).expect("valid envelope");
        assert_eq!(info.action_name(), "Delete");
        assert_eq!(info.shell_id.as_deref(), Some("ABC<&>"));
        assert_eq!(info.to.as_deref(), Some("http://127.0.0.21:5985/wsman"));
        assert_eq!(
            info.resource_uri.as_deref(),
            Some("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd")
        );
    }
}
