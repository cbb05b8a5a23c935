//! What the relay changes in a request before forwarding it: the `wsa:To`
//! header (the target's URL instead of the relay's) and an OperationTimeout
//! above the relay's maximum. Every other byte stays as the client sent it,
//! so the target reads the request the relay authorized.

use std::ops::Range;
use std::time::Duration;

use super::fault::xml_escape;
use super::scan::{path_is, scan, Item, Ns};
use super::{parse_duration, WsmanError, ENVELOPE, HEADER};

/// Where one header element's content sits in the envelope.
enum Found {
    /// `<a:To ...>text</a:To>`: the byte range of the content.
    Pair { content: Range<usize> },
    /// `<a:To ... />`, with the qualified name to close it with.
    Empty { tag: Range<usize>, qname: Vec<u8> },
}

impl Found {
    fn start(&self) -> usize {
        match self {
            Found::Pair { content } => content.start,
            Found::Empty { tag, .. } => tag.start,
        }
    }
}

/// One header element to find, at most once, with its direct text.
struct Header {
    what: &'static str,
    found: Option<Found>,
    open_at: Option<usize>,
    text: String,
}

impl Header {
    fn new(what: &'static str) -> Header {
        Header {
            what,
            found: None,
            open_at: None,
            text: String::new(),
        }
    }

    /// `item` is on the element itself (the path ends with it).
    fn observe(&mut self, item: Item<'_, '_>) -> Result<(), WsmanError> {
        match item {
            Item::Start { tag, span, empty } => {
                if self.found.is_some() || self.open_at.is_some() {
                    return Err(WsmanError::Duplicate(self.what));
                }
                if empty {
                    self.found = Some(Found::Empty {
                        tag: span,
                        qname: tag.name().as_ref().to_vec(),
                    });
                } else {
                    self.open_at = Some(span.end);
                }
            }
            Item::Text(s) => self.text.push_str(s),
            Item::End { span, empty: false } => {
                if let Some(start) = self.open_at.take() {
                    self.found = Some(Found::Pair {
                        content: start..span.start,
                    });
                }
            }
            Item::End { empty: true, .. } => {}
        }
        Ok(())
    }
}

/// Replace the text of the header's wsa:To with `to` (XML-escaped), and the
/// OperationTimeout with `max_operation_timeout` when it asks for more: a
/// target must not hold a request longer than the relay waits for it.
/// Without a wsa:To, and with a timeout within the maximum, those bytes stay
/// as they are; an OperationTimeout that is not an xs:duration is refused,
/// as [`super::parse_request`] refuses it.
pub fn rewrite_request(xml: &[u8], to: &str, max_operation_timeout: Duration) -> Result<Vec<u8>, WsmanError> {
    let mut to_header = Header::new("wsa:To");
    let mut timeout_header = Header::new("w:OperationTimeout");
    scan(xml, |path, item| {
        if path_is(path, &[ENVELOPE, HEADER, (Ns::Addressing, "To")]) {
            to_header.observe(item)
        } else if path_is(path, &[ENVELOPE, HEADER, (Ns::Wsman, "OperationTimeout")]) {
            timeout_header.observe(item)
        } else {
            Ok(())
        }
    })?;

    let mut edits: Vec<(Found, String)> = Vec::new();
    if let Some(found) = to_header.found {
        edits.push((found, xml_escape(to)));
    }
    if let Some(found) = timeout_header.found {
        let text = &timeout_header.text;
        let asked = parse_duration(text).ok_or_else(|| WsmanError::InvalidTimeout(text.chars().take(64).collect()))?;
        if asked > max_operation_timeout {
            edits.push((found, format_duration(max_operation_timeout)));
        }
    }
    edits.sort_by_key(|(found, _)| found.start());
    apply(xml, &edits)
}

/// xs:duration in seconds, as WinRM clients write it.
fn format_duration(d: Duration) -> String {
    match d.subsec_nanos() {
        0 => format!("PT{}S", d.as_secs()),
        nanos => format!("PT{}.{nanos:09}S", d.as_secs()),
    }
}

/// `edits` in document order, none overlapping (they are distinct elements).
fn apply(xml: &[u8], edits: &[(Found, String)]) -> Result<Vec<u8>, WsmanError> {
    // Spans come from the scan of this very buffer; `get` keeps a bad span an
    // error rather than a panic.
    let slice = |r: Range<usize>| xml.get(r).ok_or_else(|| WsmanError::Xml("internal span error".into()));
    let added: usize = edits.iter().map(|(_, value)| value.len() + 16).sum();
    let mut out = Vec::with_capacity(xml.len() + added);
    let mut done = 0;
    for (found, value) in edits {
        match found {
            Found::Pair { content } => {
                out.extend_from_slice(slice(done..content.start)?);
                out.extend_from_slice(value.as_bytes());
                done = content.end;
            }
            Found::Empty { tag, qname } => {
                // `<a:To attr="x"/>` becomes `<a:To attr="x">target</a:To>`.
                out.extend_from_slice(slice(done..tag.start)?);
                out.extend_from_slice(slice(tag.start..tag.end.saturating_sub(2))?);
                out.push(b'>');
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"</");
                out.extend_from_slice(qname);
                out.push(b'>');
                done = tag.end;
            }
        }
    }
    out.extend_from_slice(slice(done..xml.len())?);
    Ok(out)
}
