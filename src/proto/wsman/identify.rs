//! WS-Management Identify (DSP0226 §11): answered by the relay itself when a
//! client asks unauthenticated, as Windows does.

/// The IdentifyResponse envelope. `Stack: 3.0` is what clients parse to pick
/// WinRM 3 behaviour.
pub fn identify_response() -> Vec<u8> {
    concat!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xml:lang="en-US">"#,
        r#"<s:Header/><s:Body>"#,
        r#"<wsmid:IdentifyResponse xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">"#,
        r#"<wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</wsmid:ProtocolVersion>"#,
        r#"<wsmid:ProductVendor>winrm-relay</wsmid:ProductVendor>"#,
        r#"<wsmid:ProductVersion>OS: 0.0.0 SP: 0.0 Stack: 3.0</wsmid:ProductVersion>"#,
        r#"<wsmid:SecurityProfiles><wsmid:SecurityProfileName>"#,
        r#"http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/spnego-kerberos"#,
        r#"</wsmid:SecurityProfileName></wsmid:SecurityProfiles>"#,
        r#"</wsmid:IdentifyResponse></s:Body></s:Envelope>"#
    )
    .as_bytes()
    .to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn identify_response_is_well_formed_xml() {
        let xml = super::identify_response();
        let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
        let mut buf = Vec::new();
        let mut depth = 0i32;
        loop {
            match reader.read_event_into(&mut buf).expect("well-formed") {
                quick_xml::events::Event::Start(_) => depth += 1,
                quick_xml::events::Event::End(_) => depth -= 1,
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        assert_eq!(depth, 0);
        assert!(String::from_utf8(xml).unwrap().contains("IdentifyResponse"));
    }
}
