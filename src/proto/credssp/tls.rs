//! Drives a rustls connection (either side) purely in memory: bytes in from the HTTP
//! header or body, bytes out for the reply. No socket is involved.

use std::io::{self, Read, Write};

use rustls::Connection;

use super::CredSspError;

/// Feed `input` (TLS records) into the connection and return all plaintext
/// it yields. Interleaves reads and decryption so that large inputs never
/// exceed rustls' internal buffer limits.
pub(crate) fn feed(conn: &mut Connection, input: &[u8]) -> Result<Vec<u8>, CredSspError> {
    let mut cursor = io::Cursor::new(input);
    let mut plain = Vec::new();
    loop {
        let consumed = if (cursor.position() as usize) < input.len() {
            conn.read_tls(&mut cursor)
                .map_err(|e| CredSspError::Tls(e.to_string()))?
        } else {
            0
        };
        conn.process_new_packets()
            .map_err(|e| CredSspError::Tls(e.to_string()))?;
        let before = plain.len();
        drain_plaintext(conn, &mut plain)?;
        if consumed == 0 && plain.len() == before {
            break;
        }
    }
    Ok(plain)
}

fn drain_plaintext(conn: &mut Connection, out: &mut Vec<u8>) -> Result<(), CredSspError> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(CredSspError::Tls(e.to_string())),
        }
    }
}

/// Everything the connection wants to send (handshake records, tickets,
/// encrypted application data).
pub(crate) fn take_output(conn: &mut Connection) -> Result<Vec<u8>, CredSspError> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).map_err(|e| CredSspError::Tls(e.to_string()))?;
    }
    Ok(out)
}

/// Encrypt `plain` as application data and return the resulting records.
pub(crate) fn encrypt(conn: &mut Connection, plain: &[u8]) -> Result<Vec<u8>, CredSspError> {
    conn.writer()
        .write_all(plain)
        .map_err(|e| CredSspError::Tls(e.to_string()))?;
    take_output(conn)
}

/// Accepts any certificate chain, but still checks the handshake signatures
/// made with its key. For CredSSP's inner channel, where the certificate is not
/// what authenticates the peer: pubKeyAuth binds the NTLM session to the key
/// instead, as Windows and pyspnego do.
#[derive(Debug)]
pub struct SkipCertificateVerification;

fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl rustls::client::danger::ServerCertVerifier for SkipCertificateVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}
