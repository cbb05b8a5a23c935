//! The answer to `wsmid:Identify`, which Windows gives even without
//! authentication (header `WSMANIDENTIFY: unauthenticated`).

/// An IdentifyResponse shaped like Windows' unauthenticated one: vendor and
/// protocol version, no real product version (Windows hides it too until the
/// caller authenticates).
pub fn identify_response() -> Vec<u8> {
    concat!(
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\">",
        "<s:Header/><s:Body>",
        "<wsmid:IdentifyResponse xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\">",
        "<wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</wsmid:ProtocolVersion>",
        "<wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor>",
        "<wsmid:ProductVersion>OS: 0.0.0 SP: 0.0 Stack: 3.0</wsmid:ProductVersion>",
        "</wsmid:IdentifyResponse></s:Body></s:Envelope>"
    )
    .as_bytes()
    .to_vec()
}
