use super::*;

const KEY: [u8; 32] = [7; 32];

fn pair() -> (WrapKeys, WrapKeys) {
    let key = || Zeroizing::new(KEY.to_vec());
    let suite = CipherSuite::Aes256CtsHmacSha196;
    (
        WrapKeys::new(suite.clone(), key(), Side::Initiator, true, 100, 500),
        WrapKeys::new(suite, key(), Side::Acceptor, true, 500, 100),
    )
}

#[test]
fn sealed_both_ways_in_the_windows_layout() {
    let (mut initiator, mut acceptor) = pair();
    for plain in [&b"<s:Envelope/>"[..], &[0u8; 0][..], &[9u8; 5000][..]] {
        let part = initiator.seal(plain).unwrap();
        // Header: token header, the rotated 28-byte trailer, the confounder; then the data.
        assert_eq!(part.header_len, 60);
        assert_eq!(part.data.len(), 60 + plain.len());
        assert_eq!(&part.data[..2], &[0x05, 0x04]);
        assert_eq!(part.data[2], SEALED | ACCEPTOR_SUBKEY);
        assert_eq!(&part.data[6..8], &[0, 28]);
        assert_eq!(acceptor.unseal(&part).unwrap(), plain);
        let back = acceptor.seal(plain).unwrap();
        assert_eq!(back.data[2], SENT_BY_ACCEPTOR | SEALED | ACCEPTOR_SUBKEY);
        assert_eq!(initiator.unseal(&back).unwrap(), plain);
    }
}

/// A wrap token laid out with any rotation: `rotation` is what the sender
/// rotated by, `rrc` what it says, `ec` its filler.
fn token(seq: u64, plain: &[u8], ec: u16, rrc: u16, rotation: usize) -> Vec<u8> {
    let keys = pair().0;
    let header = keys.header(SEALED | ACCEPTOR_SUBKEY, ec, 0, seq);
    let mut payload = plain.to_vec();
    payload.extend(std::iter::repeat_n(0xffu8, usize::from(ec)));
    payload.extend_from_slice(&header);
    let mut encrypted = CipherSuite::Aes256CtsHmacSha196
        .cipher()
        .encrypt(&KEY, INITIATOR_SEAL, &payload)
        .unwrap();
    encrypted.rotate_right(rotation);
    let mut out = keys.header(SEALED | ACCEPTOR_SUBKEY, ec, rrc, seq).to_vec();
    out.extend_from_slice(&encrypted);
    out
}

#[test]
fn any_rotation_and_filler_is_read() {
    let mut acceptor = pair().1;
    // MIT's wrap: not rotated; rotated by RRC; Windows DCE style: filler, rotated by RRC + EC.
    for (seq, ec, rrc, rotation) in [(100, 0, 0, 0), (101, 0, 28, 28), (102, 16, 28, 44), (103, 16, 28, 28)] {
        let plain = format!("message {seq}");
        let unwrapped = acceptor
            .unwrap_token(&token(seq, plain.as_bytes(), ec, rrc, rotation))
            .unwrap();
        assert_eq!(unwrapped, plain.as_bytes());
    }
}

#[test]
fn tampered_replayed_or_misdirected_tokens_are_refused() {
    let (mut initiator, mut acceptor) = pair();
    let part = initiator.seal(b"one").unwrap();
    let mut tampered = part.clone();
    let last = tampered.data.len() - 1;
    tampered.data[last] ^= 1;
    assert_eq!(acceptor.unseal(&tampered), Err(WrapError::Integrity));
    assert_eq!(acceptor.unseal(&part).unwrap(), b"one");
    assert!(matches!(
        acceptor.unseal(&part),
        Err(WrapError::Sequence {
            got: 100,
            expected: 101
        })
    ));
    // The initiator's own token back to it.
    let own = initiator.seal(b"two").unwrap();
    assert_eq!(initiator.unseal(&own), Err(WrapError::WrongDirection));
    // The declared length must be the plaintext's.
    let mut long = initiator.seal(b"three").unwrap();
    long.original_length = 4;
    assert_eq!(acceptor.unseal(&long), Err(WrapError::Length));
}

#[test]
fn garbage_is_an_error() {
    let mut acceptor = pair().1;
    for data in [
        &[][..],
        &[0x05, 0x04, 0x02, 0xff][..],
        &[0x05, 0x04, 0x02, 0xff, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x04, 0x04, 0x02, 0xff, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3][..],
        &[0x05, 0x04, 0x00, 0xff, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3][..],
        &[
            0x05, 0x04, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3,
        ][..],
    ] {
        assert!(acceptor.unwrap_token(data).is_err());
    }
}
