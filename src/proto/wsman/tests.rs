//! Vectors: `testdata/pywinrm_*` are the exact envelopes pywinrm 0.5.0's
//! `Protocol` produces (xmltodict output, with a fixed MessageID);
//! `testdata/pypsrp_*` and `testdata/windows_*` are request/response pairs
//! recorded between pypsrp and Windows (pypsrp's test fixtures).

use super::*;
use crate::proto::psrp::psrp_command_summary;

const SHELL_ID: &str = "0D6FCA9D-2D40-44C3-B691-E665BE7AA687";
const COMMAND_ID: &str = "B0973E54-434E-4D99-B4BE-ADE584CE3BFB";
const CMD_URI: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";

const PYWINRM_OPEN_SHELL: &str = include_str!("testdata/pywinrm_open_shell_request.xml");
const PYWINRM_RUN_COMMAND: &str = include_str!("testdata/pywinrm_run_command_request.xml");
const PYWINRM_RECEIVE: &str = include_str!("testdata/pywinrm_recv_request.xml");
const PYWINRM_SEND: &str = include_str!("testdata/pywinrm_send_request.xml");
const PYWINRM_SIGNAL: &str = include_str!("testdata/pywinrm_cleanup_request.xml");
const PYWINRM_DELETE: &str = include_str!("testdata/pywinrm_close_request.xml");
const PYPSRP_CMD_CREATE: &str = include_str!("testdata/pypsrp_cmd_create_request.xml");
const PYPSRP_PSRP_CREATE: &str = include_str!("testdata/pypsrp_psrp_create_request.xml");
const PYPSRP_PSRP_COMMAND: &str = include_str!("testdata/pypsrp_psrp_command_request.xml");
const PYPSRP_PSRP_RECEIVE: &str = include_str!("testdata/pypsrp_psrp_receive_request.xml");
const WIN_CMD_CREATE: &str = include_str!("testdata/windows_cmd_create_response.xml");
const WIN_PSRP_CREATE: &str = include_str!("testdata/windows_psrp_create_response.xml");
const WIN_COMMAND: &str = include_str!("testdata/windows_command_response.xml");
const WIN_RECEIVE: &str = include_str!("testdata/windows_cmd_receive_response.xml");
const WIN_TIMED_OUT: &str = include_str!("testdata/windows_receive_timedout_fault.xml");

/// What the clients send.
const REQUEST_VECTORS: &[&str] = &[
    PYWINRM_OPEN_SHELL,
    PYWINRM_RUN_COMMAND,
    PYWINRM_RECEIVE,
    PYWINRM_SEND,
    PYWINRM_SIGNAL,
    PYWINRM_DELETE,
    PYPSRP_CMD_CREATE,
    PYPSRP_PSRP_CREATE,
    PYPSRP_PSRP_COMMAND,
    PYPSRP_PSRP_RECEIVE,
];

/// What Windows sent and answered.
const WINDOWS_VECTORS: &[&str] = &[WIN_CMD_CREATE, WIN_PSRP_CREATE, WIN_COMMAND, WIN_RECEIVE, WIN_TIMED_OUT];

fn req(xml: &str) -> RequestInfo {
    parse_request(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"))
}

fn resp(xml: &str) -> ResponseInfo {
    parse_response(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"))
}

/// A minimal request envelope with the given header and body content.
fn envelope(header: &str, body: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
         xmlns:rsp=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\">\
         <s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

const ACTION_CREATE: &str = "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>";

// ---------------------------------------------------------------- requests

#[test]
fn pywinrm_open_shell() {
    let r = req(PYWINRM_OPEN_SHELL);
    assert_eq!(
        r,
        RequestInfo {
            action: "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create".into(),
            message_id: Some("uuid:7a6b2d0e-5d6a-4b1f-9c3e-1f2e3d4c5b6a".into()),
            to: Some("http://windows-host:5985/wsman".into()),
            resource_uri: Some(CMD_URI.into()),
            shell_id: None,
            command_line: None,
            command_id: None,
            operation_timeout: Some(Duration::from_secs(20)),
            max_envelope_size: Some(153_600),
            compression_type: None,
            is_identify: false,
            resource_uri_defect: None,
            shell_id_defect: None,
            rewrite_points: r.rewrite_points.clone(),
        }
    );
    assert_eq!(r.action_name(), "Create");
    assert_eq!(shell_kind(r.resource_uri.as_deref().unwrap()), ShellKind::Cmd);
}

#[test]
fn pywinrm_run_command() {
    let r = req(PYWINRM_RUN_COMMAND);
    assert_eq!(r.action_name(), "Command");
    assert_eq!(r.shell_id.as_deref(), Some(SHELL_ID));
    // xmltodict escaped "&" and "<>"; we hand back the text.
    assert_eq!(r.command_line.as_deref(), Some("ipconfig /all & echo <done>"));
    assert_eq!(r.command_id, None);
    assert_eq!(
        r.message_id.as_deref(),
        Some("uuid:0f1e2d3c-4b5a-4968-8776-655443322110")
    );
}

#[test]
fn pywinrm_receive_send_signal_delete() {
    let r = req(PYWINRM_RECEIVE);
    assert_eq!(r.action_name(), "Receive");
    assert_eq!(r.command_id.as_deref(), Some(COMMAND_ID));
    assert_eq!(r.shell_id.as_deref(), Some(SHELL_ID));

    let r = req(PYWINRM_SEND);
    assert_eq!(r.action_name(), "Send");
    assert_eq!(r.command_id.as_deref(), Some(COMMAND_ID));

    let r = req(PYWINRM_SIGNAL);
    assert_eq!(r.action_name(), "Signal");
    assert_eq!(r.command_id.as_deref(), Some(COMMAND_ID));

    let r = req(PYWINRM_DELETE);
    assert_eq!(r.action_name(), "Delete");
    assert_eq!(r.shell_id.as_deref(), Some(SHELL_ID));
    assert_eq!(r.command_id, None);
    assert_eq!(r.command_line, None);
}

#[test]
fn pypsrp_requests() {
    let r = req(PYPSRP_CMD_CREATE);
    assert_eq!(r.action_name(), "Create");
    assert_eq!(r.to.as_deref(), Some("https://127.0.0.1:55986/wsman"));
    assert_eq!(
        r.message_id.as_deref(),
        Some("uuid:A779D886-33C4-4947-A9DA-2B10E9EC43A4")
    );

    let r = req(PYPSRP_PSRP_CREATE);
    assert_eq!(r.action_name(), "Create");
    assert_eq!(
        shell_kind(r.resource_uri.as_deref().unwrap()),
        ShellKind::PowerShell {
            configuration: "Microsoft.PowerShell".into()
        }
    );
    assert_eq!(r.shell_id, None);

    let r = req(PYPSRP_PSRP_COMMAND);
    assert_eq!(r.action_name(), "Command");
    assert_eq!(r.command_id.as_deref(), Some("BDAD31FD-7B2C-467A-9B04-4924F3DB5C4F"));
    let line = r.command_line.unwrap();
    // PSRP sends an empty rsp:Command: the line is the base64 fragments alone.
    assert!(line.starts_with("AAAAAAAAAA"), "{line}");
    assert!(!line.contains(' '));
    let summary = psrp_command_summary(&line).unwrap();
    assert!(summary.contains("Write-Debug \"Start Block\""), "{summary}");

    let r = req(PYPSRP_PSRP_RECEIVE);
    assert_eq!(r.action_name(), "Receive");
    assert_eq!(r.operation_timeout, Some(Duration::from_secs(5)));
    assert_eq!(r.command_id.as_deref(), Some("79590BBD-46E2-486A-85B0-70EA7049235E"));
    assert_eq!(r.shell_id.as_deref(), Some("49EE5C41-E806-4A44-B192-DAD4B3AEECB5"));
}

#[test]
fn identify() {
    // What Test-WSMan sends (with WSMANIDENTIFY: unauthenticated).
    let xml = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
               xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\">\
               <s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";
    let r = req(xml);
    assert!(r.is_identify);
    assert_eq!(r.action, "");
    assert_eq!(r.action_name(), "Identify");

    let with_decl = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{xml}\n");
    assert!(req(&with_decl).is_identify);

    // An Identify must not double as another operation.
    let with_action = envelope(
        ACTION_CREATE,
        "<i:Identify xmlns:i=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"/>",
    );
    assert_eq!(
        parse_request(with_action.as_bytes()),
        Err(WsmanError::AmbiguousIdentify)
    );
    let with_command = envelope(
        "",
        "<i:Identify xmlns:i=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"/>\
         <rsp:CommandLine><rsp:Command>calc</rsp:Command></rsp:CommandLine>",
    );
    assert_eq!(
        parse_request(with_command.as_bytes()),
        Err(WsmanError::AmbiguousIdentify)
    );

    // Same local name in another namespace is not Identify.
    let wrong_ns = envelope("", "<i:Identify xmlns:i=\"http://example.com/identity\"/>");
    assert_eq!(parse_request(wrong_ns.as_bytes()), Err(WsmanError::MissingAction));
    let typo_ns = envelope(
        "",
        "<i:Identify xmlns:i=\"http://schemas.dmtf.org/wbem/wsman/identify/1/wsmanidentity.xsd\"/>",
    );
    assert_eq!(parse_request(typo_ns.as_bytes()), Err(WsmanError::MissingAction));
}

#[test]
fn identify_response_is_well_formed() {
    let xml = identify_response();
    let text = std::str::from_utf8(&xml).unwrap();
    assert!(text.contains("<wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor>"));
    let r = parse_response(&xml).unwrap();
    assert_eq!(r, ResponseInfo::default());
}

#[test]
fn prefixes_do_not_matter_namespaces_do() {
    // Default namespaces, unusual prefixes and redeclarations deep inside.
    let xml = "<Envelope xmlns=\"http://www.w3.org/2003/05/soap-envelope\">\
        <Header>\
          <Action xmlns=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command</Action>\
          <zz:MessageID xmlns:zz=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\">uuid:1</zz:MessageID>\
          <q:SelectorSet xmlns:q=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\">\
            <q:Selector Name=\"Other\">nope</q:Selector>\
            <q:Selector Name=\"ShellId\"> S-1 </q:Selector>\
          </q:SelectorSet>\
          <w:OperationTimeout xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\">PT60.000S</w:OperationTimeout>\
        </Header>\
        <Body><x:CommandLine xmlns:x=\"http://schemas.microsoft.com/wbem/wsman/1/windows/shell\">\
          <x:Command>cmd</x:Command><x:Arguments>/c</x:Arguments><x:Arguments></x:Arguments><x:Arguments>dir</x:Arguments>\
        </x:CommandLine></Body></Envelope>";
    let r = req(xml);
    assert_eq!(r.action_name(), "Command");
    assert_eq!(r.message_id.as_deref(), Some("uuid:1"));
    assert_eq!(r.shell_id.as_deref(), Some("S-1"));
    assert_eq!(r.operation_timeout, Some(Duration::from_secs(60)));
    assert_eq!(r.command_line.as_deref(), Some("cmd /c dir"));

    // The usual prefix bound to the wrong namespace matches nothing.
    let xml = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
               xmlns:a=\"http://example.com/not-addressing\"><s:Header>\
               <a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>\
               </s:Header><s:Body/></s:Envelope>";
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::MissingAction));

    // Headers are only read in s:Header, the command only in s:Body.
    let xml = envelope(
        ACTION_CREATE,
        "<a:To>http://evil/</a:To><w:SelectorSet><w:Selector Name=\"ShellId\">X</w:Selector></w:SelectorSet>",
    );
    let r = req(&xml);
    assert_eq!((r.to, r.shell_id), (None, None));
    let xml = envelope(
        &format!("{ACTION_CREATE}<rsp:CommandLine><rsp:Command>calc</rsp:Command></rsp:CommandLine>"),
        "",
    );
    assert_eq!(req(&xml).command_line, None);
}

#[test]
fn text_is_unescaped_and_joined() {
    let xml = envelope(
        "<a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command</a:Action>\
         <a:To>http://h:5985/wsman?a=1&amp;b=2</a:To>",
        "<rsp:CommandLine CommandId=\"C-1\"><rsp:Command>echo <![CDATA[<x>]]>&#x41;<!-- c -->&lt;</rsp:Command>\
         <rsp:Arguments>a&quot;b</rsp:Arguments></rsp:CommandLine>",
    );
    let r = req(&xml);
    assert_eq!(r.to.as_deref(), Some("http://h:5985/wsman?a=1&b=2"));
    assert_eq!(r.command_line.as_deref(), Some("echo <x>A< a\"b"));
    assert_eq!(r.command_id.as_deref(), Some("C-1"));

    // An empty CommandLine still counts as a command.
    let xml = envelope(ACTION_CREATE, "<rsp:CommandLine/>");
    assert_eq!(req(&xml).command_line.as_deref(), Some(""));
}

#[test]
fn ambiguous_requests_are_refused() {
    let two = |h: &str| envelope(&format!("{ACTION_CREATE}{h}{h}"), "");
    for (h, what) in [
        ("<a:To>http://x/</a:To>", "wsa:To"),
        ("<a:MessageID>uuid:1</a:MessageID>", "wsa:MessageID"),
        ("<w:ResourceURI>u</w:ResourceURI>", "w:ResourceURI"),
        ("<w:OperationTimeout>PT1S</w:OperationTimeout>", "w:OperationTimeout"),
        ("<w:SelectorSet/>", "w:SelectorSet"),
    ] {
        assert_eq!(
            parse_request(two(h).as_bytes()),
            Err(WsmanError::Duplicate(what)),
            "{h}"
        );
    }
    let xml = envelope(&format!("{ACTION_CREATE}{ACTION_CREATE}"), "");
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::Duplicate("wsa:Action")));
    let xml = envelope(
        &format!(
            "{ACTION_CREATE}<w:SelectorSet><w:Selector Name=\"ShellId\">A</w:Selector>\
             <w:Selector Name=\"ShellId\">B</w:Selector></w:SelectorSet>"
        ),
        "",
    );
    assert_eq!(
        parse_request(xml.as_bytes()),
        Err(WsmanError::Duplicate("ShellId selector"))
    );
    let xml = envelope(
        ACTION_CREATE,
        "<rsp:CommandLine><rsp:Command>a</rsp:Command></rsp:CommandLine>\
         <rsp:CommandLine><rsp:Command>b</rsp:Command></rsp:CommandLine>",
    );
    assert_eq!(
        parse_request(xml.as_bytes()),
        Err(WsmanError::Duplicate("rsp:CommandLine"))
    );
    let xml = envelope(
        ACTION_CREATE,
        "<rsp:CommandLine><rsp:Command>a</rsp:Command><rsp:Command>b</rsp:Command></rsp:CommandLine>",
    );
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::Duplicate("rsp:Command")));
    let xml = envelope(
        ACTION_CREATE,
        "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"A\">x</rsp:Stream>\
         <rsp:Stream Name=\"stdin\" CommandId=\"B\">y</rsp:Stream></rsp:Send>",
    );
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::Conflict("CommandId")));
    // The same CommandId twice is fine.
    let xml = envelope(
        ACTION_CREATE,
        "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"A\">x</rsp:Stream>\
         <rsp:Stream Name=\"pr\" CommandId=\"A\">y</rsp:Stream></rsp:Send>",
    );
    assert_eq!(req(&xml).command_id.as_deref(), Some("A"));
    let xml =
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header/><s:Header/><s:Body/></s:Envelope>";
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::Duplicate("soap Header")));
    let xml = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body/><s:Body/></s:Envelope>";
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::Duplicate("soap Body")));
}

#[test]
fn missing_action_and_bad_timeout() {
    assert_eq!(
        parse_request(envelope("", "").as_bytes()),
        Err(WsmanError::MissingAction)
    );
    assert_eq!(
        parse_request(envelope("<a:Action> </a:Action>", "").as_bytes()),
        Err(WsmanError::MissingAction)
    );
    let xml = envelope(
        &format!("{ACTION_CREATE}<w:OperationTimeout>PT-1S</w:OperationTimeout>"),
        "",
    );
    assert_eq!(
        parse_request(xml.as_bytes()),
        Err(WsmanError::InvalidTimeout("PT-1S".into()))
    );
}

#[test]
fn hostile_xml_is_refused() {
    let doctype = "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
        <s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body>&xxe;</s:Body></s:Envelope>";
    assert_eq!(parse_request(doctype.as_bytes()), Err(WsmanError::Doctype));
    assert_eq!(parse_response(doctype.as_bytes()), Err(WsmanError::Doctype));
    assert_eq!(rewrite_to_only(doctype.as_bytes(), "x"), Err(WsmanError::Doctype));

    // Undeclared entities are errors, not expansions.
    for bad in [
        "<a:Action>&lol;</a:Action>",
        "<a:Action x=\"&lol;\">http://x/Create</a:Action>",
        "<a:Action>http://x/Create&#0;</a:Action>",
    ] {
        let xml = envelope(bad, "");
        assert!(
            matches!(parse_request(xml.as_bytes()), Err(WsmanError::Xml(_))),
            "{bad}"
        );
    }

    // Depth.
    let deep = |n: usize| envelope(ACTION_CREATE, &format!("{}{}", "<x>".repeat(n), "</x>".repeat(n)));
    assert!(parse_request(deep(MAX_DEPTH - 2).as_bytes()).is_ok());
    assert_eq!(parse_request(deep(MAX_DEPTH - 1).as_bytes()), Err(WsmanError::TooDeep));
    assert_eq!(parse_request(deep(100_000).as_bytes()), Err(WsmanError::TooDeep));

    // Encoding.
    let mut bad = envelope(ACTION_CREATE, "").into_bytes();
    bad.insert(30, 0xff);
    assert_eq!(parse_request(&bad), Err(WsmanError::NotUtf8));
    let utf16: Vec<u8> = envelope(ACTION_CREATE, "")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    assert!(parse_request(&utf16).is_err());

    // Structure.
    assert_eq!(parse_request(b""), Err(WsmanError::Empty));
    assert_eq!(parse_request(b"   "), Err(WsmanError::NotSoapEnvelope));
    assert_eq!(parse_request(b"<a/>"), Err(WsmanError::NotSoapEnvelope));
    let soap11 = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>";
    assert_eq!(parse_request(soap11.as_bytes()), Err(WsmanError::NotSoapEnvelope));
    let ok = envelope(ACTION_CREATE, "");
    for broken in [
        format!("{ok}{ok}"),
        format!("{ok}trailing"),
        ok[..ok.len() - 3].to_string(),
        ok.replace("</s:Header>", "</s:Headr>"),
        ok.replace("<a:Action>", "<zz:Action>")
            .replace("</a:Action>", "</zz:Action>"),
        ok.replace("xmlns:a=", "xmlns:a=\"x\" xmlns:a="),
        ok.replace("<s:Body>", "<s:Body a=\"1\" a=\"2\">"),
    ] {
        assert!(parse_request(broken.as_bytes()).is_err(), "{broken}");
    }
}

#[test]
fn bom_is_accepted() {
    let mut xml = b"\xEF\xBB\xBF".to_vec();
    xml.extend_from_slice(PYWINRM_RUN_COMMAND.as_bytes());
    let with_bom = parse_request(&xml).unwrap();
    assert_eq!(
        RequestInfo {
            rewrite_points: Default::default(),
            ..with_bom
        },
        RequestInfo {
            rewrite_points: Default::default(),
            ..req(PYWINRM_RUN_COMMAND)
        }
    );
    // The rewrite's offsets count the BOM.
    let new = rewrite_to_only(&xml, "http://n/").unwrap();
    assert!(new.starts_with(b"\xEF\xBB\xBF"));
    assert_eq!(parse_request(&new).unwrap().to.as_deref(), Some("http://n/"));
}

#[test]
fn action_name_edge_cases() {
    let r = |a: &str| RequestInfo {
        action: a.into(),
        ..Default::default()
    };
    assert_eq!(
        r("http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull").action_name(),
        "Pull"
    );
    assert_eq!(r("http://x/y/Reconnect/").action_name(), "Reconnect");
    assert_eq!(r("Disconnect").action_name(), "Disconnect");
    assert_eq!(r("").action_name(), "");
}

// --------------------------------------------------------------- responses

#[test]
fn windows_create_responses() {
    let r = resp(WIN_CMD_CREATE);
    assert_eq!(
        r.relates_to.as_deref(),
        Some("uuid:A779D886-33C4-4947-A9DA-2B10E9EC43A4")
    );
    assert_eq!(
        r.created_shell_id.as_deref(),
        Some("19CE36E9-BE25-4CDE-9257-EFC212F8003E")
    );
    assert_eq!(r.fault, None);

    // PSRP: only the ResourceCreated selector carries the id.
    let r = resp(WIN_PSRP_CREATE);
    assert_eq!(
        r.created_shell_id.as_deref(),
        Some("C8CD7685-F0A0-4B79-8F82-B8B37462667A")
    );
    assert_eq!(
        r.relates_to.as_deref(),
        Some("uuid:8212BDF6-A653-4C44-B852-55E3DF334A04")
    );
}

#[test]
fn windows_command_and_receive_responses() {
    let r = resp(WIN_COMMAND);
    assert_eq!(r.command_id.as_deref(), Some("789B3D38-EDB7-494D-AD3B-3D63B099CD76"));
    assert!(!r.command_done);

    let r = resp(WIN_RECEIVE);
    assert!(r.command_done);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.command_id.as_deref(), Some("789B3D38-EDB7-494D-AD3B-3D63B099CD76"));
    assert_eq!(
        r.relates_to.as_deref(),
        Some("uuid:99A51AC6-1250-4E13-9780-A6520B6FD220")
    );

    // Still running: no exit code yet.
    let running = WIN_RECEIVE
        .replace("CommandState/Done", "CommandState/Running")
        .replace("<rsp:ExitCode>0</rsp:ExitCode>", "");
    let r = resp(&running);
    assert!(!r.command_done);
    assert_eq!(r.exit_code, None);

    // Exit codes as cmd reports them, including a wrapped negative one.
    for (code, want) in [
        ("1", Some(1)),
        ("-1", Some(-1)),
        ("4294967295", Some(4294967295)),
        ("x", None),
    ] {
        let xml = WIN_RECEIVE.replace("<rsp:ExitCode>0<", &format!("<rsp:ExitCode>{code}<"));
        assert_eq!(resp(&xml).exit_code, want, "{code}");
    }
}

#[test]
fn windows_timed_out_fault() {
    let r = resp(WIN_TIMED_OUT);
    assert_eq!(
        r.relates_to.as_deref(),
        Some("uuid:9F5BDC50-0F4A-45FC-94F9-42B40948AB04")
    );
    let f = r.fault.unwrap();
    assert_eq!(f.subcode.as_deref(), Some("TimedOut"));
    assert_eq!(f.wsman_code, Some(2150858793));
    assert_eq!(
        f.reason.as_deref(),
        Some("The WS-Management service cannot complete the operation within the time specified in OperationTimeout.")
    );
    assert!(f.is_timed_out());
}

#[test]
fn windows_invalid_selectors_fault_uses_outer_code() {
    // As Windows sends it for a stale ShellId: a WSManFault nested in the
    // provider fault, and a w:FaultDetail before it.
    let xml = "<s:Envelope xml:lang=\"en-US\" xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\"><s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action><a:MessageID>uuid:1</a:MessageID><a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To><a:RelatesTo>uuid:2</a:RelatesTo></s:Header><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:InvalidSelectors</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">The WS-Management service cannot process the request because the request contained invalid selectors for the resource. </s:Text></s:Reason><s:Detail><w:FaultDetail>http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors</w:FaultDetail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" Code=\"2150858843\" Machine=\"127.0.0.1\"><f:Message><f:ProviderFault provider=\"Shell provider\" path=\"%systemroot%\\system32\\WsmSvc.dll\"><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" Code=\"1\" Machine=\"127.0.0.1\"><f:Message>inner</f:Message></f:WSManFault></f:ProviderFault></f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>";
    let f = resp(xml).fault.unwrap();
    assert_eq!(f.subcode.as_deref(), Some("InvalidSelectors"));
    assert_eq!(f.wsman_code, Some(FaultKind::InvalidSelectors.wsman_code()));
    assert!(!f.is_timed_out());
}

#[test]
fn response_edge_cases() {
    // A fault without detail or subcode.
    let xml = envelope(
        "",
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value></s:Code>\
         <s:Reason><s:Text xml:lang=\"en-US\">boom</s:Text><s:Text xml:lang=\"de-DE\">bumm</s:Text></s:Reason></s:Fault>",
    );
    let f = resp(&xml).fault.unwrap();
    assert_eq!(
        f,
        FaultInfo {
            subcode: None,
            wsman_code: None,
            reason: Some("boom".into())
        }
    );
    // Subcode without a prefix, and a non-numeric code.
    let xml = envelope(
        "",
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>AccessDenied</s:Value></s:Subcode></s:Code>\
         <s:Detail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" Code=\"0x5\"/></s:Detail></s:Fault>",
    );
    let f = resp(&xml).fault.unwrap();
    assert_eq!(f.subcode.as_deref(), Some("AccessDenied"));
    assert_eq!(f.wsman_code, None);
    // Two RelatesTo headers would make correlation ambiguous.
    let xml = envelope("<a:RelatesTo>uuid:1</a:RelatesTo><a:RelatesTo>uuid:2</a:RelatesTo>", "");
    assert_eq!(
        parse_response(xml.as_bytes()),
        Err(WsmanError::Duplicate("wsa:RelatesTo"))
    );
    // Responses get the same hardening as requests.
    assert_eq!(parse_response(b"<x/>"), Err(WsmanError::NotSoapEnvelope));
}

#[test]
fn fault_envelopes_parse_back() {
    let kinds = [
        (FaultKind::AccessDenied, "Sender", "w:AccessDenied", 5),
        (FaultKind::TimedOut, "Receiver", "w:TimedOut", 2150858793),
        (
            FaultKind::DestinationUnreachable,
            "Sender",
            "a:DestinationUnreachable",
            2150858770,
        ),
        (FaultKind::EncodingLimit, "Sender", "w:EncodingLimit", 2150858805),
        (FaultKind::InvalidSelectors, "Sender", "w:InvalidSelectors", 2150858843),
        (FaultKind::InternalError, "Receiver", "w:InternalError", 1359),
        (FaultKind::QuotaLimit, "Sender", "w:QuotaLimit", 2150858815),
    ];
    for (kind, code, subcode, wsman_code) in kinds {
        assert_eq!(kind.wsman_code(), wsman_code);
        let xml = fault_envelope(kind, Some("uuid:ABC"), "relay01", "denied by policy rule \"ops\"");
        let text = String::from_utf8(xml.clone()).unwrap();
        let r = parse_response(&xml).unwrap();
        assert_eq!(r.relates_to.as_deref(), Some("uuid:ABC"));
        let f = r.fault.unwrap();
        assert_eq!(f.subcode.as_deref(), Some(subcode.split(':').nth(1).unwrap()));
        assert_eq!(f.wsman_code, Some(wsman_code));
        assert_eq!(f.reason.as_deref(), Some("denied by policy rule \"ops\""));
        assert!(text.contains(&format!("<s:Value>s:{code}</s:Value>")), "{text}");
        assert!(text.contains(&format!("<s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>")));
        assert!(text.contains("Machine=\"relay01\""));
        assert!(text.contains("<f:Message>denied by policy rule &quot;ops&quot;</f:Message>"));
        assert!(text.contains("<s:Text xml:lang=\"en-US\">"));
        let action = if kind == FaultKind::DestinationUnreachable {
            "<a:Action>http://schemas.xmlsoap.org/ws/2004/08/addressing/fault</a:Action>"
        } else {
            "<a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>"
        };
        assert!(text.contains(action), "{text}");
        assert_eq!(kind == FaultKind::TimedOut, f.is_timed_out());
    }
}

#[test]
fn fault_envelope_exact_shape() {
    let xml = String::from_utf8(fault_envelope(FaultKind::AccessDenied, Some("uuid:R"), "m", "no")).unwrap();
    // Replace the random MessageID to compare the rest byte for byte.
    let start = xml.find("<a:MessageID>").unwrap() + "<a:MessageID>".len();
    let end = xml.find("</a:MessageID>").unwrap();
    let id = &xml[start..end];
    let fixed = xml.replace(id, "uuid:X");
    assert_eq!(
        fixed,
        "<s:Envelope xml:lang=\"en-US\" xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\"><s:Header>\
         <a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>\
         <a:MessageID>uuid:X</a:MessageID>\
         <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>\
         <a:RelatesTo>uuid:R</a:RelatesTo></s:Header><s:Body><s:Fault>\
         <s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:AccessDenied</s:Value></s:Subcode></s:Code>\
         <s:Reason><s:Text xml:lang=\"en-US\">no</s:Text></s:Reason>\
         <s:Detail><f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" \
         Code=\"5\" Machine=\"m\"><f:Message>no</f:Message></f:WSManFault></s:Detail>\
         </s:Fault></s:Body></s:Envelope>"
    );
}

#[test]
fn fault_envelope_escapes_everything() {
    let xml = fault_envelope(
        FaultKind::InternalError,
        Some("uuid:<x>&\"'"),
        "m\"a<c>h&",
        "bad \u{0} char\r\n<script>&amp;",
    );
    let r = parse_response(&xml).unwrap();
    assert_eq!(r.relates_to.as_deref(), Some("uuid:<x>&\"'"));
    assert_eq!(
        r.fault.unwrap().reason.as_deref(),
        Some("bad \u{FFFD} char\r\n<script>&amp;")
    );
    // No relates_to: no RelatesTo header at all.
    let xml = fault_envelope(FaultKind::TimedOut, None, "m", "t");
    assert_eq!(parse_response(&xml).unwrap().relates_to, None);
    assert!(!String::from_utf8(xml).unwrap().contains("RelatesTo"));
}

#[test]
fn message_ids_are_uuid_v4() {
    let a = new_message_id();
    let b = new_message_id();
    assert_ne!(a, b);
    let id = a.strip_prefix("uuid:").unwrap();
    let groups: Vec<&str> = id.split('-').collect();
    assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
    assert!(id
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
    assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    assert!(groups[2].starts_with('4'));
    assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'A' | b'B'));
}

// ---------------------------------------------------------------- rewrite

/// Parse, then rewrite what the parse found, as the relay does.
fn rewrite(xml: &[u8], to: &str, max_operation_timeout: Duration) -> Result<Vec<u8>, WsmanError> {
    rewrite_request(xml, &parse_request(xml)?, to, max_operation_timeout)
}

/// A rewrite whose timeout maximum no request reaches: only wsa:To changes.
fn rewrite_to_only(xml: &[u8], to: &str) -> Result<Vec<u8>, WsmanError> {
    rewrite(xml, to, Duration::MAX)
}

/// Asserts that `new` differs from `old` in exactly one contiguous region,
/// where `old` had `was` and `new` has `now`.
fn assert_single_change(old: &[u8], new: &[u8], was: &str, now: &str) {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let max_suffix = old.len().min(new.len()) - prefix;
    let suffix = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    let old_mid = &old[prefix..old.len() - suffix];
    let new_mid = &new[prefix..new.len() - suffix];
    // The common prefix/suffix may eat shared characters of the two values;
    // put them back before comparing.
    let shared_head = was.len().min(now.len());
    let head = was
        .bytes()
        .zip(now.bytes())
        .take(shared_head)
        .take_while(|(a, b)| a == b)
        .count();
    let tail = was.as_bytes()[head..]
        .iter()
        .rev()
        .zip(now.as_bytes()[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(old_mid, &was.as_bytes()[head..was.len() - tail], "old region");
    assert_eq!(new_mid, &now.as_bytes()[head..now.len() - tail], "new region");
}

#[test]
fn rewrite_pywinrm_to() {
    let old = PYWINRM_RUN_COMMAND.as_bytes();
    let new = rewrite_to_only(old, "http://web01.corp.example:5985/wsman").unwrap();
    assert_single_change(
        old,
        &new,
        "http://windows-host:5985/wsman",
        "http://web01.corp.example:5985/wsman",
    );
    let before = req(PYWINRM_RUN_COMMAND);
    let after = parse_request(&new).unwrap();
    assert_eq!(after.to.as_deref(), Some("http://web01.corp.example:5985/wsman"));
    assert_eq!(
        RequestInfo {
            to: before.to.clone(),
            rewrite_points: before.rewrite_points.clone(),
            ..after
        },
        before
    );
}

#[test]
fn rewrite_pypsrp_to_with_attributes_elsewhere() {
    // pypsrp puts wsa:To after most headers; other headers carry s:mustUnderstand.
    for v in [
        PYPSRP_CMD_CREATE,
        PYPSRP_PSRP_CREATE,
        PYPSRP_PSRP_COMMAND,
        PYPSRP_PSRP_RECEIVE,
    ] {
        let old_to = req(v).to.unwrap();
        let new = rewrite_to_only(v.as_bytes(), "https://10.0.0.5:5986/wsman").unwrap();
        assert_single_change(v.as_bytes(), &new, &old_to, "https://10.0.0.5:5986/wsman");
    }
}

#[test]
fn rewrite_keeps_attributes_on_to_and_escapes() {
    let old = envelope(
        &format!("{ACTION_CREATE}<a:To s:mustUnderstand=\"true\" x='1'>http://bastion/wsman/web01</a:To>"),
        "<a:To>body is not a header</a:To>",
    );
    let new = rewrite_to_only(old.as_bytes(), "http://t/wsman?a=1&b=<2>\"'").unwrap();
    assert_single_change(
        old.as_bytes(),
        &new,
        "http://bastion/wsman/web01",
        "http://t/wsman?a=1&amp;b=&lt;2&gt;&quot;&apos;",
    );
    let text = String::from_utf8(new.clone()).unwrap();
    assert!(text.contains("<a:To s:mustUnderstand=\"true\" x='1'>http://t/wsman?a=1&amp;b="));
    assert_eq!(req(&text).to.as_deref(), Some("http://t/wsman?a=1&b=<2>\"'"));
}

#[test]
fn rewrite_other_prefixes_and_forms() {
    // Default namespace for addressing.
    let old = "<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\"><env:Header>\
        <Action xmlns=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\">http://x/Create</Action>\
        <To xmlns=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\">\n  http://old/  \n</To>\
        </env:Header><env:Body/></env:Envelope>";
    let new = rewrite_to_only(old.as_bytes(), "http://new/").unwrap();
    assert_single_change(old.as_bytes(), &new, "\n  http://old/  \n", "http://new/");

    // Empty element forms.
    let old = envelope(&format!("{ACTION_CREATE}<a:To></a:To>"), "");
    let new = rewrite_to_only(old.as_bytes(), "http://n/").unwrap();
    assert_eq!(
        String::from_utf8(new).unwrap(),
        old.replace("<a:To></a:To>", "<a:To>http://n/</a:To>")
    );
    let old = envelope(&format!("{ACTION_CREATE}<a:To s:mustUnderstand=\"true\" />"), "");
    let new = rewrite_to_only(old.as_bytes(), "http://n/").unwrap();
    assert_eq!(
        String::from_utf8(new).unwrap(),
        old.replace(
            "<a:To s:mustUnderstand=\"true\" />",
            "<a:To s:mustUnderstand=\"true\" >http://n/</a:To>"
        )
    );

    // Comments and CDATA inside To are replaced with the rest of its content.
    let old = envelope(
        &format!("{ACTION_CREATE}<a:To><!--c--><![CDATA[http://o/]]></a:To>"),
        "",
    );
    let new = rewrite_to_only(old.as_bytes(), "http://n/").unwrap();
    assert_eq!(
        String::from_utf8(new).unwrap(),
        old.replace("<!--c--><![CDATA[http://o/]]>", "http://n/")
    );

    // BOM and XML declaration stay in place.
    let mut old = b"\xEF\xBB\xBF".to_vec();
    old.extend_from_slice(PYWINRM_OPEN_SHELL.as_bytes());
    let new = rewrite_to_only(&old, "http://n/").unwrap();
    assert!(new.starts_with(b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<env:Envelope"));
    assert_single_change(&old, &new, "http://windows-host:5985/wsman", "http://n/");
}

#[test]
fn rewrite_pretty_printed() {
    // Whitespace text before and inside To, as an indenting client sends it.
    let old = "<?xml version=\"1.0\"?>\n<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"\n    xmlns:wsa=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\">\n  <s:Header>\n    <wsa:Action>http://x/Get</wsa:Action>\n    <!-- to -->\n    <wsa:To>\n      http://old:5985/wsman\n    </wsa:To>\n  </s:Header>\n  <s:Body/>\n</s:Envelope>\n";
    let new = rewrite_to_only(old.as_bytes(), "http://new/").unwrap();
    assert_single_change(
        old.as_bytes(),
        &new,
        "\n      http://old:5985/wsman\n    ",
        "http://new/",
    );
    assert_eq!(
        req(std::str::from_utf8(&new).unwrap()).to.as_deref(),
        Some("http://new/")
    );
}

#[test]
fn rewrite_without_to_or_with_two() {
    let old = envelope(ACTION_CREATE, "");
    assert_eq!(rewrite_to_only(old.as_bytes(), "http://n/").unwrap(), old.as_bytes());
    // wsa:To bound to another namespace is not the header.
    let old = envelope(&format!("{ACTION_CREATE}<b:To xmlns:b=\"urn:x\">keep</b:To>"), "");
    assert_eq!(rewrite_to_only(old.as_bytes(), "http://n/").unwrap(), old.as_bytes());
    let old = envelope(&format!("{ACTION_CREATE}<a:To>x</a:To><a:To/>"), "");
    assert_eq!(
        rewrite_to_only(old.as_bytes(), "http://n/"),
        Err(WsmanError::Duplicate("wsa:To"))
    );
    // Nested markup inside To is tolerated and replaced along with the text.
    let old = envelope(&format!("{ACTION_CREATE}<a:To>a<b>c</b>d</a:To>"), "");
    let new = rewrite_to_only(old.as_bytes(), "N").unwrap();
    assert_eq!(String::from_utf8(new).unwrap(), old.replace("a<b>c</b>d", "N"));
}

// ------------------------------------------------------------- robustness

#[test]
fn all_vectors_survive_truncation_and_mutation() {
    for v in REQUEST_VECTORS.iter().chain(WINDOWS_VECTORS) {
        let b = v.as_bytes();
        assert!(parse_request(b).is_ok() || parse_response(b).is_ok());
        assert!(rewrite_to_only(b, "http://n/").is_ok());
        // Truncations (step keeps the test quick; short vectors get every cut).
        let step = (b.len() / 150).max(1);
        for cut in (0..b.len()).step_by(step) {
            let t = &b[..cut];
            assert!(parse_request(t).is_err());
            let _ = parse_response(t);
            let _ = rewrite_to_only(t, "x");
        }
        // Single-byte mutations at a spread of positions.
        for i in (0..b.len()).step_by((b.len() / 40).max(1)) {
            for byte in [b'<', b'>', b'/', b'"', b'&', b':', 0x00, 0xC3] {
                let mut m = b.to_vec();
                m[i] = byte;
                let _ = parse_request(&m);
                let _ = parse_response(&m);
                if let Ok(out) = rewrite_to_only(&m, "http://n/") {
                    // Whatever was accepted must stay well formed.
                    assert!(parse_request(&out).is_ok() || parse_response(&out).is_ok() || parse_request(&m).is_err());
                }
            }
        }
    }
}

/// 30,000 attributes on one element (a 320 KB envelope): quick-xml's
/// duplicate-attribute check compares each attribute with every earlier one,
/// which took seconds; the bound refuses the element before that check runs.
#[test]
fn an_element_with_thousands_of_attributes_is_refused_quickly() {
    let attributes: String = (0..30_000).map(|i| format!(" a{i:05}=\"\"")).collect();
    let xml = envelope(&format!("{ACTION_CREATE}<w:Locale{attributes}/>"), "");
    assert!(xml.len() > 300_000, "{} bytes", xml.len());
    let started = std::time::Instant::now();
    let result = parse_request(xml.as_bytes());
    let elapsed = started.elapsed();
    assert_eq!(result, Err(WsmanError::TooManyAttributes));
    assert!(elapsed < std::time::Duration::from_millis(100), "took {elapsed:?}");
}

#[test]
fn attributes_namespaces_and_names_are_bounded() {
    let with_attributes = |n: usize, name: &dyn Fn(usize) -> String| {
        let attributes: String = (0..n).map(|i| format!(" {}=\"u{i}\"", name(i))).collect();
        envelope(&format!("{ACTION_CREATE}<w:Locale{attributes}/>"), "")
    };
    let plain = |i: usize| format!("a{i}");
    assert!(parse_request(with_attributes(MAX_ATTRIBUTES, &plain).as_bytes()).is_ok());
    assert_eq!(
        parse_request(with_attributes(MAX_ATTRIBUTES + 1, &plain).as_bytes()),
        Err(WsmanError::TooManyAttributes)
    );
    let declaration = |i: usize| format!("xmlns:n{i}");
    assert!(parse_request(with_attributes(MAX_NAMESPACE_DECLARATIONS, &declaration).as_bytes()).is_ok());
    assert_eq!(
        parse_request(with_attributes(MAX_NAMESPACE_DECLARATIONS + 1, &declaration).as_bytes()),
        Err(WsmanError::TooManyNamespaces)
    );
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let xml = envelope(&format!("{ACTION_CREATE}<w:Locale {long}=\"\"/>"), "");
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::NameTooLong));
    let xml = envelope(&format!("{ACTION_CREATE}<{long}/>"), "");
    assert_eq!(parse_request(xml.as_bytes()), Err(WsmanError::NameTooLong));
    assert!(parse_request(envelope(&format!("{ACTION_CREATE}<{}/>", &long[1..]), "").as_bytes()).is_ok());
    // The responses the relay reads go through the same walk.
    let attributes: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}=\"\"")).collect();
    let response = WIN_COMMAND.replacen("<s:Body>", &format!("<s:Body{attributes}>"), 1);
    assert_eq!(parse_response(response.as_bytes()), Err(WsmanError::TooManyAttributes));
}

// ------------------------------------------------------ operation timeout

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn an_operation_timeout_past_the_maximum_is_clamped_for_relay_and_target() {
    let huge = "PT18446744073709551615S";
    let old = PYWINRM_RECEIVE.replace("PT20S", huge);
    let info = req(&old);
    assert_eq!(info.operation_timeout, Some(Duration::from_secs(u64::MAX)));
    assert_eq!(info.operation_timeout_within(MAX_TIMEOUT), Some(MAX_TIMEOUT));
    // wsa:To comes after OperationTimeout in pywinrm's envelope: both edits apply, in order.
    let new = rewrite(old.as_bytes(), "http://n/", MAX_TIMEOUT).unwrap();
    let to_only = rewrite_to_only(old.as_bytes(), "http://n/").unwrap();
    assert_single_change(&to_only, &new, huge, "PT60S");
    let after = parse_request(&new).unwrap();
    assert_eq!(after.operation_timeout, Some(MAX_TIMEOUT));
    assert_eq!(after.to.as_deref(), Some("http://n/"));

    // OperationTimeout before and after wsa:To, and as an empty-element tag is refused.
    let header = |timeout: &str| envelope(&format!("{ACTION_CREATE}<a:To>http://o/</a:To>{timeout}"), "");
    let old = header("<w:OperationTimeout s:mustUnderstand=\"true\">P2D</w:OperationTimeout>");
    let new = rewrite(old.as_bytes(), "http://n/", MAX_TIMEOUT).unwrap();
    assert_eq!(
        String::from_utf8(new).unwrap(),
        old.replace("http://o/", "http://n/").replace(">P2D<", ">PT60S<")
    );
    let old = header("<w:OperationTimeout/>");
    assert!(matches!(
        rewrite(old.as_bytes(), "http://n/", MAX_TIMEOUT),
        Err(WsmanError::InvalidTimeout(_))
    ));
    assert!(parse_request(old.as_bytes()).is_err());
    let old = header("<w:OperationTimeout>PT-1S</w:OperationTimeout>");
    assert_eq!(
        rewrite(old.as_bytes(), "http://n/", MAX_TIMEOUT),
        Err(WsmanError::InvalidTimeout("PT-1S".into()))
    );
    // A fractional maximum is written exactly.
    let old = header("<w:OperationTimeout>PT61S</w:OperationTimeout>");
    let new = rewrite(old.as_bytes(), "http://n/", Duration::from_millis(1500)).unwrap();
    assert_eq!(
        req(std::str::from_utf8(&new).unwrap()).operation_timeout,
        Some(Duration::from_millis(1500))
    );
}

#[test]
fn an_operation_timeout_within_the_maximum_is_left_alone() {
    for v in [PYWINRM_RECEIVE, PYPSRP_PSRP_RECEIVE, PYWINRM_OPEN_SHELL] {
        let clamped = rewrite(v.as_bytes(), "http://n/", MAX_TIMEOUT).unwrap();
        assert_eq!(clamped, rewrite_to_only(v.as_bytes(), "http://n/").unwrap());
        let exact = rewrite(v.as_bytes(), "http://n/", req(v).operation_timeout.unwrap()).unwrap();
        assert_eq!(exact, clamped, "a timeout equal to the maximum stays");
    }
    let no_timeout = envelope(ACTION_CREATE, "");
    assert_eq!(
        rewrite(no_timeout.as_bytes(), "http://n/", MAX_TIMEOUT).unwrap(),
        no_timeout.as_bytes()
    );
    assert_eq!(req(&no_timeout).operation_timeout_within(MAX_TIMEOUT), None);
    assert_eq!(
        req(PYWINRM_RECEIVE).operation_timeout_within(MAX_TIMEOUT),
        Some(Duration::from_secs(20))
    );
}

// ------------------------------------------------- what the relay cannot read

#[test]
fn client_envelopes_name_their_resource_and_shell_readably() {
    for v in REQUEST_VECTORS {
        let r = req(v);
        assert_eq!(r.resource_uri_problem(), None, "{v}");
        assert_eq!(r.shell_id_problem(), None, "{v}");
        assert_eq!(r.needs_shell_id(), r.action_name() != "Create", "{v}");
    }
    let identify = req(&envelope(
        "",
        "<wsmid:Identify xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"/>",
    ));
    assert!(identify.is_identify);
    assert_eq!(
        (identify.resource_uri_problem(), identify.shell_id_problem()),
        (None, None)
    );
}

#[test]
fn a_resource_uri_other_than_one_dmtf_header_is_a_problem() {
    let problem = |header: &str| req(&envelope(&format!("{ACTION_CREATE}{header}"), "")).resource_uri_problem();
    let old_ns = "xmlns:m=\"http://schemas.xmlsoap.org/ws/2005/06/management\"";
    let cases = [
        ("", "has no ResourceURI"),
        ("<w:ResourceURI> </w:ResourceURI>", "is empty"),
        (
            &format!("<m:ResourceURI {old_ns}>{CMD_URI}</m:ResourceURI>") as &str,
            "2005/06",
        ),
        (
            &format!("<w:ResourceURI>{CMD_URI}</w:ResourceURI><m:ResourceURI {old_ns}>{CMD_URI}</m:ResourceURI>"),
            "2005/06",
        ),
        (
            &format!("<m:ResourceURI {old_ns}>x</m:ResourceURI><w:ResourceURI>{CMD_URI}</w:ResourceURI>"),
            "2005/06",
        ),
        (
            &format!("<ResourceURI>{CMD_URI}</ResourceURI>"),
            "outside the WS-Man namespace",
        ),
        (
            &format!("<w:ResourceURI>{CMD_URI}<x/>2</w:ResourceURI>"),
            "contains markup",
        ),
    ];
    for (header, want) in cases {
        let problem = problem(header).unwrap_or_else(|| panic!("no problem found in {header:?}"));
        assert!(problem.contains(want), "{header:?}: {problem}");
        assert!(
            problem.contains("http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"),
            "{problem}"
        );
    }
    assert_eq!(problem(&format!("<w:ResourceURI>{CMD_URI}</w:ResourceURI>")), None);
    // Twice in the DMTF namespace does not parse at all.
    let two = format!("<w:ResourceURI>{CMD_URI}</w:ResourceURI><w:ResourceURI>{CMD_URI}</w:ResourceURI>");
    assert_eq!(
        parse_request(envelope(&format!("{ACTION_CREATE}{two}"), "").as_bytes()),
        Err(WsmanError::Duplicate("w:ResourceURI"))
    );
}

#[test]
fn a_shell_id_the_relay_cannot_read_is_a_problem() {
    let shell_request = |action: &str, selectors: &str| {
        envelope(
            &format!(
                "<a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/{action}</a:Action>\
                 <w:ResourceURI>{CMD_URI}</w:ResourceURI>{selectors}"
            ),
            "",
        )
    };
    let problem = |action: &str, selectors: &str| req(&shell_request(action, selectors)).shell_id_problem();
    let good = "<w:SelectorSet><w:Selector Name=\"ShellId\">S-1</w:Selector></w:SelectorSet>";
    for action in [
        "Command",
        "Receive",
        "Send",
        "Signal",
        "Connect",
        "Reconnect",
        "Disconnect",
        "receive",
    ] {
        let missing = problem(action, "").unwrap_or_else(|| panic!("{action} without a ShellId passed"));
        assert!(missing.contains("a ShellId selector is required"), "{missing}");
        assert_eq!(problem(action, good), None, "{action}");
    }
    let other_ns = "xmlns:o=\"http://schemas.xmlsoap.org/ws/2005/06/management\"";
    let unreadable = [
        (
            "<w:SelectorSet><w:Selector Name=\"shellid\">S-1</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector Name=\" ShellId \">S-1</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector w:Name=\"ShellId\">S-1</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector name=\"ShellId\">S-1</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector Name=\"ShellId\" name=\"ShellId\">S-1</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector Name=\"ShellId\">S-1</w:Selector>\
             <w:Selector Name=\"SHELLID\">S-2</w:Selector></w:SelectorSet>",
            "spelt",
        ),
        (
            "<w:SelectorSet><w:Selector Name=\"ShellId\">S-<x/>1</w:Selector></w:SelectorSet>",
            "markup",
        ),
        (
            &format!("<o:SelectorSet {other_ns}><o:Selector Name=\"ShellId\">S-1</o:Selector></o:SelectorSet>") as &str,
            "outside the WS-Man namespace",
        ),
        (
            &format!("<w:SelectorSet><o:Selector {other_ns} Name=\"ShellId\">S-1</o:Selector></w:SelectorSet>"),
            "outside the WS-Man namespace",
        ),
    ];
    for (selectors, want) in unreadable {
        // Refused whatever the action: the relay would check no shell, or another one.
        for action in ["Receive", "Create"] {
            let problem = problem(action, selectors).unwrap_or_else(|| panic!("{selectors} passed on {action}"));
            assert!(problem.contains(want), "{selectors}: {problem}");
        }
    }
    // Other selectors beside the ShellId are fine.
    let extra = "<w:SelectorSet><w:Selector Name=\"ShellId\">S-1</w:Selector>\
                 <w:Selector Name=\"Other\">x</w:Selector></w:SelectorSet>";
    assert_eq!(problem("Receive", extra), None);
    assert_eq!(req(&shell_request("Receive", extra)).shell_id.as_deref(), Some("S-1"));
    // Creating a shell names none.
    assert_eq!(req(&envelope(ACTION_CREATE, "")).shell_id_problem(), None);
}

#[test]
fn delete_needs_a_shell_id_only_on_a_shell_resource() {
    let delete = |uri: &str| {
        req(&envelope(
            &format!("<a:Action>{DELETE_ACTION}</a:Action><w:ResourceURI>{uri}</w:ResourceURI>"),
            "",
        ))
    };
    for shell in [
        CMD_URI,
        "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Custom",
        "http://schemas.microsoft.com/powershell/Microsoft.PowerShell",
        "HTTP://SCHEMAS.MICROSOFT.COM/WBEM/WSMAN/1/WINDOWS/SHELL/CMD",
    ] {
        let d = delete(shell);
        assert!(d.needs_shell_id(), "{shell}");
        assert!(d.shell_id_problem().is_some(), "{shell}");
    }
    let wmi = delete("http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service");
    assert!(!wmi.needs_shell_id());
    assert_eq!(wmi.shell_id_problem(), None);
    assert!(req(PYWINRM_DELETE).needs_shell_id());
}

#[test]
fn a_shell_operation_under_another_action_prefix_still_needs_its_shell_id() {
    // A target may dispatch on the last segment: the relay must not let such a
    // Command through without the ownership check.
    let odd = req(&envelope(
        "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/wbem/wsman/1/windows/shell/COMMAND</a:Action>\
         <w:ResourceURI>http://schemas.microsoft.com/powershell/Microsoft.PowerShell</w:ResourceURI>",
        "",
    ));
    assert!(odd.needs_shell_id());
    assert!(odd.shell_id_problem().is_some());
}

#[test]
fn the_response_limit_follows_the_clients_max_envelope_size() {
    const RELAY_MAX: usize = 512_000;
    assert_eq!(req(PYWINRM_RECEIVE).max_envelope_size, Some(153_600));
    assert_eq!(req(PYWINRM_RECEIVE).response_limit(RELAY_MAX), 153_600);
    let with = |size: &str| {
        envelope(
            &format!("{ACTION_CREATE}<w:MaxEnvelopeSize>{size}</w:MaxEnvelopeSize>"),
            "",
        )
    };
    assert_eq!(req(&with(" 8388608 ")).response_limit(RELAY_MAX), RELAY_MAX);
    assert_eq!(req(&with("100")).response_limit(RELAY_MAX), 8192);
    assert_eq!(req(&envelope(ACTION_CREATE, "")).response_limit(RELAY_MAX), RELAY_MAX);
    for bad in ["", "-1", "1e6", "99999999999999999999999", "0x100"] {
        assert!(
            matches!(
                parse_request(with(bad).as_bytes()),
                Err(WsmanError::InvalidMaxEnvelopeSize(_))
            ),
            "{bad:?}"
        );
    }
    let two =
        format!("{ACTION_CREATE}<w:MaxEnvelopeSize>1</w:MaxEnvelopeSize><w:MaxEnvelopeSize>2</w:MaxEnvelopeSize>");
    assert_eq!(
        parse_request(envelope(&two, "").as_bytes()),
        Err(WsmanError::Duplicate("w:MaxEnvelopeSize"))
    );
}

#[test]
fn rewrite_points_from_other_bytes_are_an_error_not_a_panic() {
    let long = envelope(
        &format!("{ACTION_CREATE}<a:To>http://a-rather-long-original-url/</a:To>"),
        "",
    );
    let info = parse_request(long.as_bytes()).unwrap();
    let short = &long.as_bytes()[..long.len() / 3];
    assert!(rewrite_request(short, &info, "http://n/", MAX_TIMEOUT).is_err());
}
