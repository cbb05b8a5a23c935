//! NTLM session security (sealing) on an established NTLM context, from its
//! exported session key.
//!
//! sspi authenticates; this seals and unseals the messages afterwards, so
//! that a target connection keeps its session keys and nothing else of the
//! handshake: sspi's context holds a copy of the caller's password and the
//! handshake messages for as long as it lives, and its sealing copies each
//! message three times. The keys and the stream order are the same as sspi's:
//! `NegotiateClient` checks that on every connection before handing over.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rc4::{KeyInit, Rc4, StreamCipher};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacMd5 = Hmac<Md5>;

pub const SIGNATURE_LEN: usize = 16;
const SIGNATURE_VERSION: u32 = 1;
const CLIENT_SIGN_MAGIC: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGN_MAGIC: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEAL_MAGIC: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEAL_MAGIC: &[u8] = b"session key to server-to-client sealing key magic constant\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("the NTLM signature's version is not 1")]
    Version,
    #[error("the NTLM sequence number is {got}, {expected} was due: a message was lost, repeated or reordered")]
    Sequence { expected: u32, got: u32 },
    #[error("the NTLM signature does not match the message: it was altered, or sealed with other keys")]
    Checksum,
}

/// Whether the checksum in each signature is itself RC4-sealed, as it is
/// when the two sides negotiated a key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumSealed {
    Yes,
    No,
}

/// One direction's keys and state.
struct Direction {
    signing_key: Zeroizing<[u8; 16]>,
    /// One keystream for the whole connection, used by every message in turn.
    rc4: Rc4,
    seq: u32,
}

impl Direction {
    fn new(session_key: &[u8], sign_magic: &[u8], seal_magic: &[u8], seq: u32) -> Direction {
        let sealing_key = derive(session_key, seal_magic);
        Direction {
            signing_key: derive(session_key, sign_magic),
            rc4: Rc4::new_from_slice(&*sealing_key).unwrap_or_else(|_| unreachable!("16 bytes is an RC4 key length")),
            seq,
        }
    }

    /// The first 8 bytes of the MAC of `plain` under `seq`.
    fn checksum(&self, seq: u32, plain: &[u8]) -> [u8; 8] {
        let mut mac =
            HmacMd5::new_from_slice(&*self.signing_key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&seq.to_le_bytes());
        mac.update(plain);
        let digest = mac.finalize().into_bytes();
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&digest[..8]);
        checksum
    }

    /// After the message: with a key exchange the checksum takes the next 8
    /// bytes of the keystream.
    fn seal_checksum(&mut self, checksum: &mut [u8; 8], sealed: ChecksumSealed) {
        if sealed == ChecksumSealed::Yes {
            self.rc4.apply_keystream(checksum);
        }
    }
}

fn derive(session_key: &[u8], magic: &[u8]) -> Zeroizing<[u8; 16]> {
    let mut hash = Md5::new();
    hash.update(session_key);
    hash.update(magic);
    Zeroizing::new(hash.finalize().into())
}

/// The client side of an NTLM connection's session security.
pub struct NtlmSealing {
    send: Direction,
    recv: Direction,
    checksum_sealed: ChecksumSealed,
}

impl std::fmt::Debug for NtlmSealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmSealing")
            .field("send_seq", &self.send.seq)
            .field("recv_seq", &self.recv.seq)
            .finish_non_exhaustive()
    }
}

impl NtlmSealing {
    /// A client's sealing from the exported session key; `seq` is the first
    /// sequence number in each direction (1 when a SPNEGO mechListMIC used 0).
    pub fn client(session_key: &[u8], checksum_sealed: ChecksumSealed, seq: u32) -> NtlmSealing {
        NtlmSealing {
            send: Direction::new(session_key, CLIENT_SIGN_MAGIC, CLIENT_SEAL_MAGIC, seq),
            recv: Direction::new(session_key, SERVER_SIGN_MAGIC, SERVER_SEAL_MAGIC, seq),
            checksum_sealed,
        }
    }

    /// Seal `plain`: the signature, then the sealed bytes, in one buffer.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let seq = self.send.seq;
        self.send.seq = seq.wrapping_add(1);
        let mut checksum = self.send.checksum(seq, plain);
        let mut out = Vec::with_capacity(SIGNATURE_LEN + plain.len());
        out.extend_from_slice(&[0u8; SIGNATURE_LEN]);
        out.extend_from_slice(plain);
        self.send.rc4.apply_keystream(&mut out[SIGNATURE_LEN..]);
        self.send.seal_checksum(&mut checksum, self.checksum_sealed);
        write_signature(&mut out[..SIGNATURE_LEN], &checksum, seq);
        out
    }

    /// Unseal one message from the server: `sealed` is decrypted in place,
    /// then checked against `signature`.
    pub fn unseal(&mut self, signature: &[u8; SIGNATURE_LEN], sealed: &mut [u8]) -> Result<(), UnsealError> {
        if signature[..4] != SIGNATURE_VERSION.to_le_bytes() {
            return Err(UnsealError::Version);
        }
        let got = u32::from_le_bytes([signature[12], signature[13], signature[14], signature[15]]);
        let expected = self.recv.seq;
        if got != expected {
            return Err(UnsealError::Sequence { expected, got });
        }
        self.recv.seq = expected.wrapping_add(1);
        self.recv.rc4.apply_keystream(sealed);
        let mut checksum = self.recv.checksum(got, sealed);
        self.recv.seal_checksum(&mut checksum, self.checksum_sealed);
        if bool::from(checksum.ct_eq(&signature[4..12])) {
            Ok(())
        } else {
            Err(UnsealError::Checksum)
        }
    }
}

fn write_signature(signature: &mut [u8], checksum: &[u8; 8], seq: u32) {
    signature[..4].copy_from_slice(&SIGNATURE_VERSION.to_le_bytes());
    signature[4..12].copy_from_slice(checksum);
    signature[12..16].copy_from_slice(&seq.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [7u8; 16];

    /// The server's side, for the tests: the client's directions swapped.
    fn server(checksum_sealed: ChecksumSealed, seq: u32) -> NtlmSealing {
        server_with_key(&KEY, checksum_sealed, seq)
    }

    fn server_with_key(key: &[u8], checksum_sealed: ChecksumSealed, seq: u32) -> NtlmSealing {
        NtlmSealing {
            send: Direction::new(key, SERVER_SIGN_MAGIC, SERVER_SEAL_MAGIC, seq),
            recv: Direction::new(key, CLIENT_SIGN_MAGIC, CLIENT_SEAL_MAGIC, seq),
            checksum_sealed,
        }
    }

    /// The published NTLM known-answer example (NTLMv2 with extended session
    /// security and a key exchange, GSS_WrapEx): the exported session key is
    /// sixteen 0x55 bytes, the message "Plaintext" in UTF-16LE, sequence
    /// number 0. The round-trip tests above would pass with keys derived
    /// wrongly on both sides alike; these values come from outside.
    const SPEC_SESSION_KEY: [u8; 16] = [0x55; 16];
    const SPEC_PLAINTEXT: &str = "Plaintext";
    const SPEC_CLIENT_SIGNING_KEY: [u8; 16] = [
        0x47, 0x88, 0xdc, 0x86, 0x1b, 0x47, 0x82, 0xf3, 0x5d, 0x43, 0xfd, 0x98, 0xfe, 0x1a, 0x2d, 0x39,
    ];
    const SPEC_SIGNATURE: [u8; 16] = [
        0x01, 0x00, 0x00, 0x00, 0x7f, 0xb3, 0x8e, 0xc5, 0xc5, 0x5d, 0x49, 0x76, 0x00, 0x00, 0x00, 0x00,
    ];
    const SPEC_SEALED: [u8; 18] = [
        0x54, 0xe5, 0x01, 0x65, 0xbf, 0x19, 0x36, 0xdc, 0x99, 0x60, 0x20, 0xc1, 0x81, 0x1b, 0x0f, 0x06, 0xfb, 0x5f,
    ];

    fn spec_plaintext() -> Vec<u8> {
        SPEC_PLAINTEXT.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn the_client_seals_the_specifications_example_to_its_published_bytes() {
        assert_eq!(*derive(&SPEC_SESSION_KEY, CLIENT_SIGN_MAGIC), SPEC_CLIENT_SIGNING_KEY);
        let wire = NtlmSealing::client(&SPEC_SESSION_KEY, ChecksumSealed::Yes, 0).seal(&spec_plaintext());
        assert_eq!(wire[..SIGNATURE_LEN], SPEC_SIGNATURE, "signature");
        assert_eq!(wire[SIGNATURE_LEN..], SPEC_SEALED, "sealed message");
    }

    #[test]
    fn the_specifications_sealed_example_unseals_to_its_plaintext() {
        let mut server = server_with_key(&SPEC_SESSION_KEY, ChecksumSealed::Yes, 0);
        let mut sealed = SPEC_SEALED.to_vec();
        assert_eq!(server.unseal(&SPEC_SIGNATURE, &mut sealed), Ok(()));
        assert_eq!(sealed, spec_plaintext());
    }

    fn unseal(side: &mut NtlmSealing, message: &[u8]) -> Result<Vec<u8>, UnsealError> {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&message[..SIGNATURE_LEN]);
        let mut body = message[SIGNATURE_LEN..].to_vec();
        side.unseal(&signature, &mut body).map(|()| body)
    }

    #[test]
    fn messages_go_both_ways_in_sequence() {
        for sealed in [ChecksumSealed::Yes, ChecksumSealed::No] {
            let mut client = NtlmSealing::client(&KEY, sealed, 1);
            let mut server = server(sealed, 1);
            for round in 0..3u8 {
                let request = vec![round; 100];
                let wire = client.seal(&request);
                assert_ne!(&wire[SIGNATURE_LEN..], &request[..], "the body is sealed");
                assert_eq!(wire[12..16], (1 + u32::from(round)).to_le_bytes());
                assert_eq!(unseal(&mut server, &wire).unwrap(), request);
                let answer = vec![round ^ 0xFF; 3000];
                assert_eq!(unseal(&mut client, &server.seal(&answer)).unwrap(), answer);
            }
        }
    }

    #[test]
    fn altered_repeated_and_foreign_messages_are_refused() {
        let mut client = NtlmSealing::client(&KEY, ChecksumSealed::Yes, 0);
        let mut server = server(ChecksumSealed::Yes, 0);
        let first = server.seal(b"first");
        let mut altered = first.clone();
        altered[SIGNATURE_LEN] ^= 1;
        assert_eq!(unseal(&mut client, &altered), Err(UnsealError::Checksum));

        let mut client = NtlmSealing::client(&KEY, ChecksumSealed::Yes, 0);
        assert_eq!(unseal(&mut client, &first).unwrap(), b"first");
        assert_eq!(
            unseal(&mut client, &first),
            Err(UnsealError::Sequence { expected: 1, got: 0 })
        );
        let mut version = server.seal(b"second");
        version[0] = 2;
        assert_eq!(unseal(&mut client, &version), Err(UnsealError::Version));

        // The client's own message, reflected back, is sealed with the other direction's keys.
        let mut client = NtlmSealing::client(&KEY, ChecksumSealed::Yes, 0);
        let reflected = client.seal(b"reflected");
        assert_eq!(unseal(&mut client, &reflected), Err(UnsealError::Checksum));
    }

    #[test]
    fn the_checksum_is_sealed_only_with_a_key_exchange() {
        let plain = client_seal(ChecksumSealed::No);
        let sealed = client_seal(ChecksumSealed::Yes);
        assert_eq!(
            plain[SIGNATURE_LEN..],
            sealed[SIGNATURE_LEN..],
            "the same keystream seals the body"
        );
        assert_ne!(plain[4..12], sealed[4..12]);
        let mut server = server(ChecksumSealed::Yes, 0);
        assert_eq!(unseal(&mut server, &plain), Err(UnsealError::Checksum));
    }

    fn client_seal(sealed: ChecksumSealed) -> Vec<u8> {
        NtlmSealing::client(&KEY, sealed, 0).seal(b"a message")
    }

    #[test]
    fn debug_shows_no_key_material() {
        let client = NtlmSealing::client(&KEY, ChecksumSealed::Yes, 0);
        let shown = format!("{client:?}");
        assert!(
            !shown.contains("signing") && !shown.contains("rc4") && !shown.contains('['),
            "{shown}"
        );
    }
}
