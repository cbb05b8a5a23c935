//! What the relay changes in a request before forwarding it: the `wsa:To`
//! header (the target's URL instead of the relay's) and an OperationTimeout
//! above the relay's maximum. Every other byte stays as the client sent it,
//! so the target reads the request the relay authorized.

use std::ops::Range;
use std::time::Duration;

use quick_xml::events::BytesStart;

use super::fault::xml_escape;
use super::{RequestInfo, WsmanError};

/// Where one header element's content sits in the envelope.
#[derive(Debug, Clone, PartialEq)]
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

/// A header the rewrite may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rewritable {
    To,
    OperationTimeout,
}

/// Where the request's wsa:To and w:OperationTimeout sit, recorded by
/// [`super::parse_request`] as it scans, so that the rewrite needs no second
/// scan. Valid only for the bytes that were parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewritePoints {
    to: Option<Found>,
    timeout: Option<Found>,
    open_at: Option<usize>,
}

impl RewritePoints {
    fn slot(&mut self, which: Rewritable) -> &mut Option<Found> {
        match which {
            Rewritable::To => &mut self.to,
            Rewritable::OperationTimeout => &mut self.timeout,
        }
    }

    /// The element opens (`span` is its tag).
    pub(super) fn open(&mut self, which: Rewritable, tag: &BytesStart<'_>, span: Range<usize>, empty: bool) {
        if empty {
            *self.slot(which) = Some(Found::Empty {
                tag: span,
                qname: tag.name().as_ref().to_vec(),
            });
        } else {
            self.open_at = Some(span.end);
        }
    }

    /// The element closes (`span` is its end tag).
    pub(super) fn close(&mut self, which: Rewritable, span: Range<usize>) {
        if let Some(start) = self.open_at.take() {
            *self.slot(which) = Some(Found::Pair {
                content: start..span.start,
            });
        }
    }
}

/// Replace the text of the header's wsa:To with `to` (XML-escaped), and the
/// OperationTimeout with `max_operation_timeout` when it asks for more: a
/// target must not hold a request longer than the relay waits for it.
/// Without a wsa:To, and with a timeout within the maximum, those bytes stay
/// as they are. `info` is what [`super::parse_request`] read from `xml`.
pub fn rewrite_request(
    xml: &[u8],
    info: &RequestInfo,
    to: &str,
    max_operation_timeout: Duration,
) -> Result<Vec<u8>, WsmanError> {
    let points = &info.rewrite_points;
    let mut edits: Vec<(&Found, String)> = Vec::new();
    if let Some(found) = &points.to {
        edits.push((found, xml_escape(to)));
    }
    if let (Some(found), Some(asked)) = (&points.timeout, info.operation_timeout) {
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
fn apply(xml: &[u8], edits: &[(&Found, String)]) -> Result<Vec<u8>, WsmanError> {
    // Spans come from the parse of this very buffer; `get` keeps a bad span
    // (another buffer's points) an error rather than a panic.
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
