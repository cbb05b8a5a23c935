//! A WS-Transfer Delete for a shell, sent by the relay itself when a
//! session ends with shells its caller left open (they would otherwise
//! count against the target's MaxShellsPerUser until they time out).

use super::fault::{new_message_id, xml_escape};

pub const DELETE_ACTION: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";

/// The envelope pywinrm's `close_shell` sends, addressed to `to`.
pub fn delete_shell_request(to: &str, resource_uri: &str, shell_id: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" "#,
            r#"xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
            r#"xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>"#,
            r#"<wsa:To>{to}</wsa:To>"#,
            r#"<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">"#,
            r#"http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>"#,
            r#"<wsman:MaxEnvelopeSize s:mustUnderstand="true">153600</wsman:MaxEnvelopeSize>"#,
            r#"<wsa:MessageID>{id}</wsa:MessageID>"#,
            r#"<wsman:Locale xml:lang="en-US" s:mustUnderstand="false"/>"#,
            r#"<wsman:OperationTimeout>PT20S</wsman:OperationTimeout>"#,
            r#"<wsman:ResourceURI s:mustUnderstand="true">{uri}</wsman:ResourceURI>"#,
            r#"<wsa:Action s:mustUnderstand="true">{action}</wsa:Action>"#,
            r#"<wsman:SelectorSet><wsman:Selector Name="ShellId">{shell}</wsman:Selector></wsman:SelectorSet>"#,
            r#"</s:Header><s:Body/></s:Envelope>"#
        ),
        to = xml_escape(to),
        id = new_message_id(),
        uri = xml_escape(resource_uri),
        action = DELETE_ACTION,
        shell = xml_escape(shell_id),
    )
    .into_bytes()
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
