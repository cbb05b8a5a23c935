//! CredSSP session encryption: after authentication, WS-Man bodies travel
//! as TLS application-data records of the CredSSP channel.

use rustls::{Connection, ProtocolVersion};

use super::{tls, CredSspError};
use crate::proto::sealing::{plaintext_chunks, SealProtocol, SealedPart};

/// The authenticated TLS channel of one CredSSP session (the relay is the
/// server towards callers and the client towards CredSSP targets).
pub struct SecureChannel {
    tls: Connection,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("version", &self.tls.protocol_version())
            .field("suite", &self.tls.negotiated_cipher_suite().map(|s| s.suite()))
            .finish()
    }
}

impl SecureChannel {
    pub(crate) fn new(tls: impl Into<Connection>) -> Self {
        Self { tls: tls.into() }
    }

    /// Length Windows writes in the part's u32 prefix: the record trailer
    /// (AEAD tag, plus the inner content type byte in TLS 1.3). rustls only
    /// offers AEAD suites, so no CBC padding arithmetic is needed.
    fn trailer_len(&self) -> u32 {
        match self.tls.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => 17,
            _ => 16,
        }
    }

    /// Encrypt a plaintext body: one part per 16 KiB chunk, one record per part.
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<SealedPart>, CredSspError> {
        let header_len = self.trailer_len();
        let chunks = plaintext_chunks(SealProtocol::CredSsp, plain);
        let mut parts = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let data = tls::encrypt(&mut self.tls, chunk)?;
            parts.push(SealedPart {
                original_length: chunk.len(),
                header_len,
                data,
            });
        }
        Ok(parts)
    }

    /// Decrypt a body's parts and check each against its announced length.
    pub fn unseal(&mut self, parts: &[SealedPart]) -> Result<Vec<u8>, CredSspError> {
        let mut plain = Vec::new();
        for part in parts {
            let chunk = tls::feed(&mut self.tls, &part.data)?;
            if chunk.len() != part.original_length {
                return Err(CredSspError::LengthMismatch {
                    announced: part.original_length,
                    actual: chunk.len(),
                });
            }
            plain.extend_from_slice(&chunk);
        }
        Ok(plain)
    }
}
