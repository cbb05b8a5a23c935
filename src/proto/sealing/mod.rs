//! `multipart/encrypted` framing for WinRM session encryption.
//!
//! After authentication, WinRM bodies travel as pairs of MIME parts under the
//! boundary `Encrypted Boundary`:
//!
//! ```text
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/HTTP-CredSSP-session-encrypted\r\n
//! \tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=<plain length>\r\n
//! --Encrypted Boundary\r\n
//! \tContent-Type: application/octet-stream\r\n
//! <u32 LE header length><encrypted bytes>--Encrypted Boundary--\r\n
//! ```
//!
//! This module only frames and unframes; encryption belongs to the CredSSP TLS
//! channel, the NTLM session or the Kerberos context. The parser never searches the
//! binary data for the boundary (ciphertext may contain it): NTLM data has a known
//! length, CredSSP data is walked record by record and a Kerberos body has one part
//! that ends where the body does.

use thiserror::Error;

/// MIME boundary used by every WinRM client and by Windows.
pub const BOUNDARY: &str = "Encrypted Boundary";

/// CredSSP plaintext bodies are split into chunks of this size, one part pair each.
pub const CREDSSP_CHUNK_SIZE: usize = 16384;

/// Largest accepted u32 prefix. Real values are 16 (NTLM signature, GCM tag),
/// 17 (TLS 1.3) or a few dozen (CBC MAC + padding, Kerberos headers).
pub const MAX_HEADER_LEN: u32 = 64 * 1024;

/// Upper bound on part pairs in one body: 4096 x 16 KiB is far above any
/// envelope size Windows accepts.
pub const MAX_PARTS: usize = 4096;

/// The boundary delimiter as it appears on the wire.
const DELIM: &[u8] = b"--Encrypted Boundary";
const OCTET_STREAM: &str = "application/octet-stream";
const CREDSSP_PROTOCOL: &str = "application/HTTP-CredSSP-session-encrypted";
const SPNEGO_PROTOCOL: &str = "application/HTTP-SPNEGO-session-encrypted";
/// Bound on the header lines of the first part of a pair, so a hostile body
/// cannot make us scan far for a delimiter that never comes.
const MAX_HEADER_BLOCK: usize = 1024;
/// TLS 1.2 allows ciphertext records up to 2^14 + 2048 bytes.
const MAX_TLS_RECORD: usize = 16384 + 2048;
const TLS_RECORD_HEADER: usize = 5;

/// Which security package sealed the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealProtocol {
    /// TLS records from the CredSSP channel (client <-> relay).
    CredSsp,
    /// NTLM (raw or SPNEGO-wrapped) sealing or Kerberos wrap tokens (relay <-> target);
    /// Kerberos bodies are unframed by [`parse_wrap_token_body`].
    Spnego,
}

impl SealProtocol {
    /// The `protocol=` value of the HTTP Content-Type and of each part's Content-Type.
    pub fn mime_protocol(self) -> &'static str {
        match self {
            SealProtocol::CredSsp => CREDSSP_PROTOCOL,
            SealProtocol::Spnego => SPNEGO_PROTOCOL,
        }
    }
}

/// One encrypted part: `original_length` = plaintext length (from OriginalContent Length=),
/// `header_len` = the u32 little-endian prefix, `data` = the bytes after that prefix
/// (CredSSP: one or more TLS records; SPNEGO: 16-byte NTLM signature followed by the sealed bytes, or a
/// Kerberos wrap token's header followed by its encrypted data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPart {
    pub original_length: usize,
    pub header_len: u32,
    pub data: Vec<u8>,
}

impl SealedPart {
    /// Splits `data` at `header_len`: for SPNEGO that is (signature, sealed message).
    /// `None` if the prefix claims more bytes than the part holds.
    pub fn split_header(&self) -> Option<(&[u8], &[u8])> {
        let n = usize::try_from(self.header_len).ok()?;
        if n > self.data.len() {
            return None;
        }
        Some(self.data.split_at(n))
    }
}

/// Why an encrypted body could not be unframed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SealingError {
    #[error("encrypted body is empty")]
    Empty,
    #[error("expected the encrypted boundary at byte {0}")]
    MissingBoundary(usize),
    #[error("malformed part header at byte {0}")]
    BadPartHeader(usize),
    #[error("part announces protocol {found:?}, expected {expected}")]
    ProtocolMismatch { expected: &'static str, found: String },
    #[error("part header lacks OriginalContent Length")]
    MissingLength,
    #[error("invalid OriginalContent Length {0:?}")]
    BadLength(String),
    #[error("data part content type is not application/octet-stream")]
    BadDataContentType,
    #[error("header length {0} exceeds the limit")]
    HeaderTooLong(u32),
    #[error("part data is truncated")]
    Truncated,
    #[error("invalid tls record at byte {0}")]
    BadTlsRecord(usize),
    #[error("original length {original} exceeds the {data} encrypted bytes")]
    LengthMismatch { original: usize, data: usize },
    #[error("body has more than {MAX_PARTS} parts")]
    TooManyParts,
    #[error("missing closing boundary")]
    MissingTerminator,
    #[error("unexpected bytes after the closing boundary")]
    TrailingData,
}

/// HTTP Content-Type value for a body: `multipart/encrypted;protocol="<proto>";boundary="Encrypted Boundary"`,
/// or `multipart/x-multi-encrypted;...` when `parts > 1` (CredSSP chunking).
pub fn content_type(protocol: SealProtocol, parts: usize) -> String {
    let media = if parts > 1 {
        "multipart/x-multi-encrypted"
    } else {
        "multipart/encrypted"
    };
    format!(
        "{media};protocol=\"{}\";boundary=\"{BOUNDARY}\"",
        protocol.mime_protocol()
    )
}

/// Which protocol a request/response Content-Type announces (None if not an encrypted multipart).
/// Case-insensitive, tolerates spaces and quoting differences. The boundary
/// parameter is not checked here; [`parse_body`] enforces it.
pub fn protocol_of(content_type: &str) -> Option<SealProtocol> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/encrypted") && !media.eq_ignore_ascii_case("multipart/x-multi-encrypted")
    {
        return None;
    }
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("protocol") {
            continue;
        }
        let value = unquote(value.trim());
        return if value.eq_ignore_ascii_case(CREDSSP_PROTOCOL) {
            Some(SealProtocol::CredSsp)
        } else if value.eq_ignore_ascii_case(SPNEGO_PROTOCOL) {
            Some(SealProtocol::Spnego)
        } else {
            None
        };
    }
    None
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(s)
        .trim()
}

/// Splits a plaintext body the way clients do before sealing: CredSSP in
/// [`CREDSSP_CHUNK_SIZE`] chunks (at least one, possibly empty), SPNEGO whole.
pub fn plaintext_chunks(protocol: SealProtocol, plain: &[u8]) -> Vec<&[u8]> {
    match protocol {
        SealProtocol::CredSsp if !plain.is_empty() => plain.chunks(CREDSSP_CHUNK_SIZE).collect(),
        _ => vec![plain],
    }
}

/// The largest sealed body that can carry `plain` bytes of SOAP, to cap
/// bodies before unsealing them: per [`CREDSSP_CHUNK_SIZE`] chunk the MIME
/// framing and the TLS record overhead (CBC padding and MAC at worst) stay
/// under a sixteenth of the data, plus room for the framing of a small body.
pub fn sealed_size_limit(plain: usize) -> usize {
    plain.saturating_add(plain / 16).saturating_add(4096)
}

/// Serialises part pairs byte for byte as pywinrm, pypsrp and Windows do.
/// With no parts the body is only the closing delimiter.
pub fn build_body(protocol: SealProtocol, parts: &[SealedPart]) -> Vec<u8> {
    let proto = protocol.mime_protocol();
    let size: usize = parts.iter().map(|p| p.data.len() + 200).sum::<usize>() + 32;
    let mut out = Vec::with_capacity(size);
    for part in parts {
        out.extend_from_slice(DELIM);
        out.extend_from_slice(b"\r\n\tContent-Type: ");
        out.extend_from_slice(proto.as_bytes());
        out.extend_from_slice(b"\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=");
        out.extend_from_slice(part.original_length.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(DELIM);
        out.extend_from_slice(b"\r\n\tContent-Type: application/octet-stream\r\n");
        out.extend_from_slice(&part.header_len.to_le_bytes());
        out.extend_from_slice(&part.data);
    }
    out.extend_from_slice(DELIM);
    out.extend_from_slice(b"--\r\n");
    out
}

/// Unframes an encrypted body into its parts, in order.
pub fn parse_body(protocol: SealProtocol, body: &[u8]) -> Result<Vec<SealedPart>, SealingError> {
    if body.is_empty() {
        return Err(SealingError::Empty);
    }
    let mut cur = Cursor { buf: body, pos: 0 };
    // The opening delimiter; every later pair starts right after the previous
    // pair's data with a delimiter that `read_closing` consumes.
    if !cur.eat(DELIM) || !cur.eat_eol() {
        return Err(SealingError::MissingBoundary(cur.pos));
    }
    let mut parts = Vec::new();
    loop {
        if parts.len() == MAX_PARTS {
            return Err(SealingError::TooManyParts);
        }
        let original_length = read_part_headers(&mut cur, protocol)?;
        read_data_header(&mut cur)?;
        let header_len = cur.read_u32_le().ok_or(SealingError::Truncated)?;
        if header_len > MAX_HEADER_LEN {
            return Err(SealingError::HeaderTooLong(header_len));
        }
        let data = match protocol {
            SealProtocol::Spnego => {
                // NTLM sealing (RC4) keeps the length: signature + plaintext-sized ciphertext.
                let len = (header_len as usize)
                    .checked_add(original_length)
                    .ok_or(SealingError::Truncated)?;
                cur.take(len).ok_or(SealingError::Truncated)?
            }
            SealProtocol::CredSsp => {
                let data = walk_tls_records(&mut cur)?;
                // A TLS record is never shorter than the plaintext it carries.
                if original_length > data.len() {
                    return Err(SealingError::LengthMismatch {
                        original: original_length,
                        data: data.len(),
                    });
                }
                data
            }
        };
        parts.push(SealedPart {
            original_length,
            header_len,
            data: data.to_vec(),
        });
        if read_closing(&mut cur)? {
            return Ok(parts);
        }
    }
}

/// Unframes a target's body sealed with Kerberos: one part whose data is a wrap token
/// (its header, then the encrypted data and any padding). Unlike NTLM's, the data is
/// not as long as the plaintext (the padding varies), so it runs to the closing
/// delimiter, which must end the body: never searched for inside the ciphertext.
pub fn parse_wrap_token_body(body: &[u8]) -> Result<SealedPart, SealingError> {
    if body.is_empty() {
        return Err(SealingError::Empty);
    }
    let mut cur = Cursor { buf: body, pos: 0 };
    if !cur.eat(DELIM) || !cur.eat_eol() {
        return Err(SealingError::MissingBoundary(cur.pos));
    }
    let original_length = read_part_headers(&mut cur, SealProtocol::Spnego)?;
    read_data_header(&mut cur)?;
    let header_len = cur.read_u32_le().ok_or(SealingError::Truncated)?;
    if header_len > MAX_HEADER_LEN {
        return Err(SealingError::HeaderTooLong(header_len));
    }
    // Transport padding after the close delimiter is allowed by MIME.
    let rest = cur.rest();
    let content = rest.len() - rest.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    let data = rest[..content]
        .strip_suffix(b"--")
        .and_then(|d| d.strip_suffix(DELIM))
        .ok_or(SealingError::MissingTerminator)?;
    // A wrap token carries its whole header and at least the plaintext's length.
    let least = (header_len as usize).saturating_add(original_length);
    if data.len() < least {
        return Err(if data.len() < header_len as usize {
            SealingError::Truncated
        } else {
            SealingError::LengthMismatch {
                original: original_length,
                data: data.len() - header_len as usize,
            }
        });
    }
    Ok(SealedPart {
        original_length,
        header_len,
        data: data.to_vec(),
    })
}

/// Reads the first part's header lines up to and including the delimiter line
/// that opens the data part. Returns the OriginalContent Length.
fn read_part_headers(cur: &mut Cursor<'_>, protocol: SealProtocol) -> Result<usize, SealingError> {
    let start = cur.pos;
    let mut content_type_seen = false;
    let mut length = None;
    loop {
        if cur.pos - start > MAX_HEADER_BLOCK {
            return Err(SealingError::BadPartHeader(start));
        }
        let line_start = cur.pos;
        let line = cur.line().ok_or(SealingError::BadPartHeader(line_start))?;
        if trim_end_ws(line) == DELIM {
            break;
        }
        let line = std::str::from_utf8(line).map_err(|_| SealingError::BadPartHeader(line_start))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(SealingError::BadPartHeader(line_start))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("Content-Type") {
            if !value.eq_ignore_ascii_case(protocol.mime_protocol()) {
                return Err(SealingError::ProtocolMismatch {
                    expected: protocol.mime_protocol(),
                    found: value.chars().take(100).collect(),
                });
            }
            content_type_seen = true;
        } else if name.eq_ignore_ascii_case("OriginalContent") {
            length = Some(original_length(value)?);
        }
        // Other headers carry nothing we need; MIME allows them.
    }
    if !content_type_seen {
        return Err(SealingError::BadPartHeader(start));
    }
    length.ok_or(SealingError::MissingLength)
}

/// `type=application/soap+xml;charset=UTF-8;Length=123` -> 123.
fn original_length(value: &str) -> Result<usize, SealingError> {
    for param in value.split(';') {
        let Some((key, v)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("Length") {
            continue;
        }
        let v = v.trim();
        let bad = || SealingError::BadLength(v.chars().take(32).collect());
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = v.parse().map_err(|_| bad())?;
        return usize::try_from(n).map_err(|_| bad());
    }
    Err(SealingError::MissingLength)
}

/// The data part has exactly one header line and the binary data follows it
/// directly (no blank line), so this reads one line only.
fn read_data_header(cur: &mut Cursor<'_>) -> Result<(), SealingError> {
    let line_start = cur.pos;
    let line = cur.line().ok_or(SealingError::BadPartHeader(line_start))?;
    let line = std::str::from_utf8(line).map_err(|_| SealingError::BadPartHeader(line_start))?;
    let (name, value) = line
        .trim()
        .split_once(':')
        .ok_or(SealingError::BadPartHeader(line_start))?;
    if !name.trim().eq_ignore_ascii_case("Content-Type") {
        return Err(SealingError::BadPartHeader(line_start));
    }
    if !value.trim().eq_ignore_ascii_case(OCTET_STREAM) {
        return Err(SealingError::BadDataContentType);
    }
    Ok(())
}

/// Consumes whole TLS records until the next bytes are the delimiter.
fn walk_tls_records<'a>(cur: &mut Cursor<'a>) -> Result<&'a [u8], SealingError> {
    let start = cur.pos;
    loop {
        let rest = cur.rest();
        if rest.starts_with(DELIM) && cur.pos > start {
            break;
        }
        if rest.len() < TLS_RECORD_HEADER {
            return Err(if rest.is_empty() || DELIM.starts_with(rest) {
                SealingError::Truncated
            } else {
                SealingError::BadTlsRecord(cur.pos)
            });
        }
        let (ctype, major, minor) = (rest[0], rest[1], rest[2]);
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        // change_cipher_spec, alert, handshake, application_data; TLS 1.0..1.3 wire versions.
        if !(20..=23).contains(&ctype) || major != 3 || !(1..=4).contains(&minor) || len > MAX_TLS_RECORD {
            return Err(SealingError::BadTlsRecord(cur.pos));
        }
        if cur.take(TLS_RECORD_HEADER + len).is_none() {
            return Err(SealingError::Truncated);
        }
    }
    Ok(&cur.buf[start..cur.pos])
}

/// After a part's data: the delimiter, then either `--` (end of body) or a
/// line break that opens the next pair. Returns true at the end of the body.
fn read_closing(cur: &mut Cursor<'_>) -> Result<bool, SealingError> {
    if !cur.eat(DELIM) {
        return Err(if cur.rest().is_empty() {
            SealingError::MissingTerminator
        } else {
            SealingError::MissingBoundary(cur.pos)
        });
    }
    if cur.eat(b"--") {
        // Transport padding after the close delimiter is allowed by MIME.
        if cur.rest().iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(true);
        }
        return Err(SealingError::TrailingData);
    }
    cur.skip_blanks();
    if !cur.eat_eol() {
        return Err(SealingError::MissingBoundary(cur.pos));
    }
    // pywinrm would also accept a body ending in an open delimiter; we insist
    // on the close delimiter (Windows and every client send it) so that a body
    // cut between two pairs is not mistaken for a shorter message.
    if cur.rest().is_empty() {
        return Err(SealingError::MissingTerminator);
    }
    Ok(false)
}

fn trim_end_ws(mut s: &[u8]) -> &[u8] {
    while let [head @ .., last] = s {
        if *last == b' ' || *last == b'\t' {
            s = head;
        } else {
            break;
        }
    }
    s
}

/// A bounds-checked reader over the body.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn eat(&mut self, prefix: &[u8]) -> bool {
        if self.rest().starts_with(prefix) {
            self.pos += prefix.len();
            true
        } else {
            false
        }
    }

    /// CRLF, or a bare LF from lenient producers.
    fn eat_eol(&mut self) -> bool {
        self.eat(b"\r\n") || self.eat(b"\n")
    }

    fn skip_blanks(&mut self) {
        while matches!(self.rest().first(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn read_u32_le(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One line without its terminator; `None` if no line break follows.
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest();
        let nl = rest.iter().take(MAX_HEADER_BLOCK + 2).position(|&b| b == b'\n')?;
        self.pos += nl + 1;
        let line = &rest[..nl];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

#[cfg(test)]
mod tests;
