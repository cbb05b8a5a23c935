//! Kerberos wrap tokens (confidentiality) for a Kerberos context the relay made
//! itself, either side: WinRM's `HTTP-SPNEGO-session-encrypted` bodies.
//!
//! Sealed as sspi and Windows' WinRM seal (EC 0, RRC 28): the part's header is the
//! token header, the rotated trailer and the confounder, its data as long as the
//! plaintext. Read whatever the sender chose: the standard rotates by RRC, Windows by
//! RRC + EC when it adds filler (DCE style).

use picky_krb::constants::key_usages::{ACCEPTOR_SEAL, INITIATOR_SEAL};
use picky_krb::crypto::CipherSuite;
use zeroize::Zeroizing;

use crate::proto::guard::contain_panic;
use crate::proto::sealing::SealedPart;

const TOKEN_ID: [u8; 2] = [0x05, 0x04];
const HEADER_LEN: usize = 16;
const SENT_BY_ACCEPTOR: u8 = 0x01;
const SEALED: u8 = 0x02;
const ACCEPTOR_SUBKEY: u8 = 0x04;
/// Extra count and right rotation count of the tokens the relay sends (Windows' values).
const EC: u16 = 0;
const RRC: u16 = 28;
/// AES: a 16-byte confounder before the data.
const CONFOUNDER_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    #[error("wrap token is malformed: {0}")]
    Malformed(&'static str),
    #[error("wrap token does not decrypt with the session key (tampered, or another context's)")]
    Integrity,
    #[error("wrap token was sent by the wrong side of the context")]
    WrongDirection,
    #[error("wrap token sequence number {got} replays or reorders (expected at least {expected})")]
    Sequence { got: u64, expected: u64 },
    #[error("wrap token length differs from OriginalContent Length")]
    Length,
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

/// Which side of the context this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Initiator,
    Acceptor,
}

/// The sealing state of an established context: its key and both sequence numbers.
pub struct WrapKeys {
    suite: CipherSuite,
    key: Zeroizing<Vec<u8>>,
    side: Side,
    /// The key is the acceptor's subkey (flag in every token, both ways).
    acceptor_subkey: bool,
    send_seq: u64,
    /// The least sequence number the peer may use next.
    recv_seq: u64,
}

impl std::fmt::Debug for WrapKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapKeys")
            .field("side", &self.side)
            .field("send_seq", &self.send_seq)
            .finish_non_exhaustive()
    }
}

impl WrapKeys {
    /// `send_seq`/`recv_seq`: the sequence numbers of this side and the peer from the
    /// authenticator and the AP-REP.
    pub fn new(
        suite: CipherSuite,
        key: Zeroizing<Vec<u8>>,
        side: Side,
        acceptor_subkey: bool,
        send_seq: u64,
        recv_seq: u64,
    ) -> WrapKeys {
        WrapKeys {
            suite,
            key,
            side,
            acceptor_subkey,
            send_seq,
            recv_seq,
        }
    }

    fn usages(&self) -> (i32, i32) {
        match self.side {
            Side::Initiator => (INITIATOR_SEAL, ACCEPTOR_SEAL),
            Side::Acceptor => (ACCEPTOR_SEAL, INITIATOR_SEAL),
        }
    }

    fn header(&self, flags: u8, ec: u16, rrc: u16, seq: u64) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&TOKEN_ID);
        header[2] = flags;
        header[3] = 0xff;
        header[4..6].copy_from_slice(&ec.to_be_bytes());
        header[6..8].copy_from_slice(&rrc.to_be_bytes());
        header[8..].copy_from_slice(&seq.to_be_bytes());
        header
    }

    fn flags(&self) -> u8 {
        let side = if self.side == Side::Acceptor {
            SENT_BY_ACCEPTOR
        } else {
            0
        };
        let subkey = if self.acceptor_subkey { ACCEPTOR_SUBKEY } else { 0 };
        side | SEALED | subkey
    }

    /// Seals one body: the part's header is everything of the token before the
    /// encrypted data, the data as long as `plain`.
    pub fn seal(&mut self, plain: &[u8]) -> Result<SealedPart, WrapError> {
        let (usage, _) = self.usages();
        let flags = self.flags();
        let seq = self.send_seq;
        // The copy of the header inside the encryption carries RRC 0.
        let mut payload = Zeroizing::new(Vec::with_capacity(plain.len() + usize::from(EC) + HEADER_LEN));
        payload.extend_from_slice(plain);
        payload.extend(std::iter::repeat_n(0u8, usize::from(EC)));
        payload.extend_from_slice(&self.header(flags, EC, 0, seq));
        let mut encrypted = self
            .suite
            .cipher()
            .encrypt(&self.key, usage, &payload)
            .map_err(|e| WrapError::Encrypt(e.to_string()))?;
        let len = encrypted.len().max(1);
        encrypted.rotate_right(usize::from(RRC + EC) % len);
        self.send_seq = self.send_seq.wrapping_add(1);
        let header_len = HEADER_LEN + usize::from(RRC + EC) + CONFOUNDER_LEN;
        let mut data = Vec::with_capacity(HEADER_LEN + encrypted.len());
        data.extend_from_slice(&self.header(flags, EC, RRC, seq));
        data.extend_from_slice(&encrypted);
        Ok(SealedPart {
            original_length: plain.len(),
            header_len: header_len as u32,
            data,
        })
    }

    /// Unseals one part of the peer's body (its header and data make one token).
    pub fn unseal(&mut self, part: &SealedPart) -> Result<Vec<u8>, WrapError> {
        let plain = self.unwrap_token(&part.data)?;
        if plain.len() != part.original_length {
            return Err(WrapError::Length);
        }
        Ok(plain)
    }

    /// Decrypts one whole wrap token from the peer.
    pub fn unwrap_token(&mut self, token: &[u8]) -> Result<Vec<u8>, WrapError> {
        let (header, body) = token
            .split_at_checked(HEADER_LEN)
            .ok_or(WrapError::Malformed("shorter than its header"))?;
        if header[..2] != TOKEN_ID || header[3] != 0xff {
            return Err(WrapError::Malformed("not a wrap token"));
        }
        let flags = header[2];
        if flags & SEALED == 0 {
            return Err(WrapError::Malformed("not sealed"));
        }
        let from_acceptor = flags & SENT_BY_ACCEPTOR != 0;
        if from_acceptor != (self.side == Side::Initiator) {
            return Err(WrapError::WrongDirection);
        }
        let ec = u16::from_be_bytes([header[4], header[5]]);
        let rrc = u16::from_be_bytes([header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..]);
        let seq = u64::from_be_bytes(seq_bytes);
        if body.is_empty() {
            return Err(WrapError::Malformed("no encrypted data"));
        }
        let (_, usage) = self.usages();
        // The standard rotates by RRC; Windows by RRC + EC. Both are the same when EC is 0.
        let mut rotations = vec![usize::from(rrc)];
        if ec != 0 {
            rotations.push(usize::from(rrc) + usize::from(ec));
        }
        let cipher = self.suite.cipher();
        let decrypted = rotations
            .into_iter()
            .find_map(|rotation| {
                let mut encrypted = body.to_vec();
                let len = encrypted.len();
                encrypted.rotate_left(rotation % len);
                contain_panic(|| cipher.decrypt(&self.key, usage, &encrypted))
                    .ok()?
                    .ok()
                    .map(Zeroizing::new)
            })
            .ok_or(WrapError::Integrity)?;
        let trailer = usize::from(ec) + HEADER_LEN;
        let plain_len = decrypted
            .len()
            .checked_sub(trailer)
            .ok_or(WrapError::Malformed("shorter than its filler and header"))?;
        let inner = &decrypted[plain_len + usize::from(ec)..];
        // The header inside must be the header outside, but for RRC (0 inside).
        if inner[..6] != header[..6] || inner[8..] != header[8..] {
            return Err(WrapError::Integrity);
        }
        if seq < self.recv_seq {
            return Err(WrapError::Sequence {
                got: seq,
                expected: self.recv_seq,
            });
        }
        self.recv_seq = seq.wrapping_add(1);
        Ok(decrypted[..plain_len].to_vec())
    }
}

#[cfg(test)]
mod tests;
