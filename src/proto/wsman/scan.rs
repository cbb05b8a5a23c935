//! One-pass, namespace-aware walk over a SOAP envelope.
//!
//! Every parser in this module goes through [`scan`], so the hardening lives in
//! one place: UTF-8 only, no DTD (hence no entity expansion), bounded depth,
//! a single SOAP 1.2 `Envelope` root, undeclared prefixes rejected, and
//! bounded attributes, namespace declarations and name lengths per element.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::{WsmanError, MAX_ATTRIBUTES, MAX_DEPTH, MAX_NAMESPACE_DECLARATIONS, MAX_NAME_LEN};

pub(crate) const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub(crate) const NS_ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub(crate) const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
/// The pre-DMTF WS-Management namespace, which some targets still honour.
pub(crate) const NS_MANAGEMENT_2005: &str = "http://schemas.xmlsoap.org/ws/2005/06/management";
pub(crate) const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
pub(crate) const NS_WSMID: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
pub(crate) const NS_WSMANFAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
pub(crate) const NS_TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The namespaces the relay cares about; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ns {
    Soap,
    Addressing,
    Wsman,
    Management2005,
    Shell,
    Wsmid,
    WsmanFault,
    Transfer,
    /// Bound to a namespace we do not interpret, or unbound.
    Other,
}

impl Ns {
    fn from_uri(uri: &[u8]) -> Ns {
        match uri {
            u if u == NS_SOAP.as_bytes() => Ns::Soap,
            u if u == NS_ADDRESSING.as_bytes() => Ns::Addressing,
            u if u == NS_WSMAN.as_bytes() => Ns::Wsman,
            u if u == NS_MANAGEMENT_2005.as_bytes() => Ns::Management2005,
            u if u == NS_SHELL.as_bytes() => Ns::Shell,
            u if u == NS_WSMID.as_bytes() => Ns::Wsmid,
            u if u == NS_WSMANFAULT.as_bytes() => Ns::WsmanFault,
            u if u == NS_TRANSFER.as_bytes() => Ns::Transfer,
            _ => Ns::Other,
        }
    }
}

/// One open element: its namespace and local name (a slice of the envelope).
#[derive(Debug, Clone)]
pub(crate) struct Elem<'x> {
    pub ns: Ns,
    pub local: &'x str,
}

/// What the visitor sees, in document order.
pub(crate) enum Item<'a, 'x> {
    /// An element opens; the path already ends with it. `span` covers the tag
    /// bytes `<...>` (or `<.../>` when `empty`).
    Start {
        tag: &'a BytesStart<'x>,
        span: Range<usize>,
        empty: bool,
    },
    /// Character data (entities resolved, CDATA included) of the element that
    /// ends the path.
    Text(&'a str),
    /// An element closes; the path still ends with it. `span` covers `</...>`,
    /// or is the same as the start span for an empty element.
    End { span: Range<usize> },
}

/// True when `path` is exactly `want` (namespace and local name at each level).
pub(crate) fn path_is(path: &[Elem<'_>], want: &[(Ns, &str)]) -> bool {
    path.len() == want.len()
        && path
            .iter()
            .zip(want)
            .all(|(e, (ns, local))| e.ns == *ns && e.local == *local)
}

/// Value of the unprefixed attribute `name` (WS-Man attributes such as `Name`,
/// `CommandId`, `State`, `Code` are all unqualified), entities resolved.
pub(crate) fn attr(tag: &BytesStart<'_>, name: &str) -> Result<Option<String>, WsmanError> {
    for a in tag.attributes().with_checks(true) {
        let a = a.map_err(|e| WsmanError::Xml(e.to_string()))?;
        if a.key.as_ref() == name.as_bytes() {
            let v = a.unescape_value().map_err(|e| WsmanError::Xml(e.to_string()))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

/// Walks `xml`, calling `visit` for each element and text node.
pub(crate) fn scan<F>(xml: &[u8], mut visit: F) -> Result<(), WsmanError>
where
    F: FnMut(&[Elem<'_>], Item<'_, '_>) -> Result<(), WsmanError>,
{
    if xml.is_empty() {
        return Err(WsmanError::Empty);
    }
    let text = std::str::from_utf8(xml).map_err(|_| WsmanError::NotUtf8)?;
    // Strip the BOM ourselves so that spans stay offsets into `xml`.
    let base = if xml.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
    let text = text.get(base..).unwrap_or_default();

    let mut reader = NsReader::from_str(text);
    let cfg = reader.config_mut();
    cfg.enable_all_checks(true);
    cfg.expand_empty_elements = false;
    cfg.trim_text(false);

    let mut path: Vec<Elem<'_>> = Vec::with_capacity(16);
    let mut seen_root = false;
    loop {
        let before = base + reader.buffer_position() as usize;
        let (ns, event) = reader
            .read_resolved_event()
            .map(|(res, ev)| (resolve(res), ev))
            .map_err(|e| xml_error(before, e))?;
        let after = base + reader.buffer_position() as usize;
        match &event {
            Event::Start(tag) | Event::Empty(tag) => {
                let empty = matches!(event, Event::Empty(_));
                let local = local_name_at(text, before - base, tag)?;
                open_element(
                    &mut path,
                    &mut seen_root,
                    ns?,
                    local,
                    tag,
                    before..after,
                    empty,
                    &mut visit,
                )?;
            }
            Event::End(_) => {
                // quick-xml has already checked that the names match.
                visit(&path, Item::End { span: before..after })?;
                path.pop();
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| xml_error(before, e))?;
                text_event(&path, &s, &mut visit)?;
            }
            Event::CData(c) => {
                let s = std::str::from_utf8(c).map_err(|_| WsmanError::NotUtf8)?;
                text_event(&path, s, &mut visit)?;
            }
            Event::DocType(_) => return Err(WsmanError::Doctype),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Err(WsmanError::NotSoapEnvelope);
    }
    if !path.is_empty() {
        return Err(WsmanError::Xml("unexpected end of document".into()));
    }
    Ok(())
}

/// The local name of the tag that starts at `at` in `text`, borrowed from
/// `text` so that the path costs no allocation per element. quick-xml has
/// checked the name: it runs from after `<` to the first space, `/` or `>`.
fn local_name_at<'x>(text: &'x str, at: usize, tag: &BytesStart<'_>) -> Result<&'x str, WsmanError> {
    let rest = text.get(at + 1..).unwrap_or_default();
    let end = rest
        .find(|c: char| is_xml_space(c) || c == '/' || c == '>')
        .unwrap_or(rest.len());
    let qname = &rest[..end];
    let local = qname.split_once(':').map_or(qname, |(_, local)| local);
    if local.as_bytes() != tag.local_name().as_ref() {
        return Err(WsmanError::Xml(format!("at byte {at}: cannot read the element's name")));
    }
    Ok(local)
}

#[allow(clippy::too_many_arguments)]
fn open_element<'x, F>(
    path: &mut Vec<Elem<'x>>,
    seen_root: &mut bool,
    ns: Ns,
    local: &'x str,
    tag: &BytesStart<'_>,
    span: Range<usize>,
    empty: bool,
    visit: &mut F,
) -> Result<(), WsmanError>
where
    F: FnMut(&[Elem<'_>], Item<'_, '_>) -> Result<(), WsmanError>,
{
    if path.is_empty() {
        if *seen_root {
            return Err(WsmanError::Xml("more than one root element".into()));
        }
        *seen_root = true;
        if ns != Ns::Soap || local != "Envelope" {
            return Err(WsmanError::NotSoapEnvelope);
        }
    }
    if path.len() >= MAX_DEPTH {
        return Err(WsmanError::TooDeep);
    }
    check_attributes(tag)?;
    path.push(Elem { ns, local });
    visit(
        path,
        Item::Start {
            tag,
            span: span.clone(),
            empty,
        },
    )?;
    if empty {
        visit(path, Item::End { span })?;
        path.pop();
    }
    Ok(())
}

/// Every attribute is read once, whether or not a parser asks for it later:
/// a duplicate (say two xmlns:a) or an undefined entity must not let us read
/// the envelope differently from the target, which rejects both. The counts
/// are bounded first, so the duplicate check (each key against the earlier
/// ones) stays small, and needs no allocation.
fn check_attributes(tag: &BytesStart<'_>) -> Result<(), WsmanError> {
    if tag.name().as_ref().len() > MAX_NAME_LEN {
        return Err(WsmanError::NameTooLong);
    }
    let mut keys: [&[u8]; MAX_ATTRIBUTES] = [&[]; MAX_ATTRIBUTES];
    let mut declarations = 0usize;
    for (seen, a) in tag.attributes().with_checks(false).enumerate() {
        let a = a.map_err(|e| WsmanError::Xml(e.to_string()))?;
        if seen == MAX_ATTRIBUTES {
            return Err(WsmanError::TooManyAttributes);
        }
        let key = a.key.into_inner();
        if key.len() > MAX_NAME_LEN {
            return Err(WsmanError::NameTooLong);
        }
        if a.key.as_namespace_binding().is_some() {
            declarations += 1;
            if declarations > MAX_NAMESPACE_DECLARATIONS {
                return Err(WsmanError::TooManyNamespaces);
            }
        }
        if keys[..seen].contains(&key) {
            return Err(WsmanError::Xml(format!(
                "duplicate attribute {:?}",
                String::from_utf8_lossy(key)
            )));
        }
        keys[seen] = key;
        a.unescape_value().map_err(|e| WsmanError::Xml(e.to_string()))?;
    }
    Ok(())
}

fn text_event<F>(path: &[Elem<'_>], s: &str, visit: &mut F) -> Result<(), WsmanError>
where
    F: FnMut(&[Elem<'_>], Item<'_, '_>) -> Result<(), WsmanError>,
{
    if path.is_empty() {
        // Only whitespace may surround the root element.
        if s.trim_matches(is_xml_space).is_empty() {
            return Ok(());
        }
        return Err(WsmanError::Xml("text outside the root element".into()));
    }
    visit(path, Item::Text(s))
}

fn resolve(res: ResolveResult<'_>) -> Result<Ns, WsmanError> {
    match res {
        ResolveResult::Bound(ns) => Ok(Ns::from_uri(ns.into_inner())),
        ResolveResult::Unbound => Ok(Ns::Other),
        ResolveResult::Unknown(prefix) => Err(WsmanError::Xml(format!(
            "undeclared namespace prefix {:?}",
            String::from_utf8_lossy(&prefix)
        ))),
    }
}

fn xml_error(pos: usize, e: quick_xml::Error) -> WsmanError {
    WsmanError::Xml(format!("at byte {pos}: {e}"))
}

pub(crate) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}
