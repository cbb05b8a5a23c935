use super::*;

/// An NTLMv2 message signature: version 1, 8-byte checksum, sequence number.
fn ntlm_signature(seq: u32) -> Vec<u8> {
    let mut sig = vec![0x01, 0x00, 0x00, 0x00];
    sig.extend_from_slice(&[0x5a, 0x1c, 0x9e, 0x03, 0x77, 0xb1, 0x42, 0xd0]);
    sig.extend_from_slice(&seq.to_le_bytes());
    sig
}

/// A TLS 1.2 AES-GCM application-data record: explicit nonce (8) + ciphertext + tag (16).
fn tls12_gcm_record(plain_len: usize, fill: u8) -> Vec<u8> {
    let body_len = 8 + plain_len + 16;
    let mut rec = vec![0x17, 0x03, 0x03];
    rec.extend_from_slice(&(body_len as u16).to_be_bytes());
    rec.extend((0..body_len).map(|i| fill.wrapping_add(i as u8)));
    rec
}

/// A TLS 1.3 record: legacy version 0x0303, inner content type (1) + tag (16).
fn tls13_record(plain_len: usize, fill: u8) -> Vec<u8> {
    let body_len = plain_len + 1 + 16;
    let mut rec = vec![0x17, 0x03, 0x03];
    rec.extend_from_slice(&(body_len as u16).to_be_bytes());
    rec.extend((0..body_len).map(|i| fill.wrapping_mul(i as u8 | 1)));
    rec
}

fn spnego_part(plain_len: usize, seq: u32) -> SealedPart {
    let mut data = ntlm_signature(seq);
    data.extend((0..plain_len).map(|i| (i * 7 + 3) as u8));
    SealedPart {
        original_length: plain_len,
        header_len: 16,
        data,
    }
}

const SPNEGO_HEAD: &[u8] = b"--Encrypted Boundary\r\n\
\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\
\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=";

const CREDSSP_HEAD: &[u8] = b"--Encrypted Boundary\r\n\
\tContent-Type: application/HTTP-CredSSP-session-encrypted\r\n\
\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=";

const DATA_HEAD: &[u8] = b"\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n";
const CLOSE: &[u8] = b"--Encrypted Boundary--\r\n";

/// Assembles a body by hand, independently of `build_body`.
fn manual_body(head: &[u8], parts: &[(usize, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (len, header_len, data) in parts {
        out.extend_from_slice(head);
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(DATA_HEAD);
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(CLOSE);
    out
}

#[test]
fn mime_protocols() {
    assert_eq!(
        SealProtocol::CredSsp.mime_protocol(),
        "application/HTTP-CredSSP-session-encrypted"
    );
    assert_eq!(
        SealProtocol::Spnego.mime_protocol(),
        "application/HTTP-SPNEGO-session-encrypted"
    );
}

#[test]
fn content_type_matches_clients() {
    // pywinrm's test_encryption expects exactly these header values.
    assert_eq!(
        content_type(SealProtocol::Spnego, 1),
        "multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"Encrypted Boundary\""
    );
    assert_eq!(
        content_type(SealProtocol::CredSsp, 3),
        "multipart/x-multi-encrypted;protocol=\"application/HTTP-CredSSP-session-encrypted\";boundary=\"Encrypted Boundary\""
    );
    assert_eq!(
        content_type(SealProtocol::CredSsp, 0),
        "multipart/encrypted;protocol=\"application/HTTP-CredSSP-session-encrypted\";boundary=\"Encrypted Boundary\""
    );
}

#[test]
fn protocol_of_variants() {
    use SealProtocol::*;
    let cases: &[(&str, Option<SealProtocol>)] = &[
        (&content_type(CredSsp, 1), Some(CredSsp)),
        (&content_type(CredSsp, 2), Some(CredSsp)),
        (&content_type(Spnego, 1), Some(Spnego)),
        (
            "Multipart/Encrypted; Protocol = \"APPLICATION/http-credssp-SESSION-encrypted\" ; boundary=\"Encrypted Boundary\"",
            Some(CredSsp),
        ),
        (
            "multipart/encrypted;protocol=application/HTTP-SPNEGO-session-encrypted;boundary=Encrypted Boundary",
            Some(Spnego),
        ),
        (
            "multipart/encrypted;boundary=\"Encrypted Boundary\";protocol=\" application/HTTP-SPNEGO-session-encrypted \"",
            Some(Spnego),
        ),
        ("  multipart/x-multi-encrypted ;protocol=\"application/HTTP-CredSSP-session-encrypted\"", Some(CredSsp)),
        ("application/soap+xml;charset=UTF-8", None),
        ("multipart/encrypted;boundary=\"Encrypted Boundary\"", None),
        (
            "multipart/encrypted;protocol=\"application/HTTP-Kerberos-session-encrypted\"",
            None,
        ),
        ("multipart/mixed;protocol=\"application/HTTP-CredSSP-session-encrypted\"", None),
        ("", None),
        (";;;", None),
        ("multipart/encrypted;protocol", None),
        ("multipart/encrypted;protocol=\"", None),
    ];
    for (ct, want) in cases {
        assert_eq!(protocol_of(ct), *want, "{ct:?}");
    }
}

#[test]
fn build_spnego_is_byte_exact() {
    let part = spnego_part(19, 1);
    let body = build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
    let mut want = Vec::new();
    want.extend_from_slice(b"--Encrypted Boundary\r\n");
    want.extend_from_slice(b"\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n");
    want.extend_from_slice(b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=19\r\n");
    want.extend_from_slice(b"--Encrypted Boundary\r\n");
    want.extend_from_slice(b"\tContent-Type: application/octet-stream\r\n");
    want.extend_from_slice(&[0x10, 0x00, 0x00, 0x00]);
    want.extend_from_slice(&part.data);
    want.extend_from_slice(b"--Encrypted Boundary--\r\n");
    assert_eq!(body, want);
    // Framing is 212 bytes for a two-digit Length: pywinrm's own test has
    // Content-Length 272 = 212 + 4 (prefix) + 4 (signature) + 28 (data) + 24 (close).
    assert_eq!(body.len(), 212 + 4 + 16 + 19 + 24);
    assert_eq!(parse_body(SealProtocol::Spnego, &body).unwrap(), vec![part]);
}

#[test]
fn build_credssp_multi_is_byte_exact() {
    // Mirrors pywinrm's large CredSSP message: 16384 + 16384 + 8192 plaintext bytes.
    let recs = [
        tls12_gcm_record(16384, 1),
        tls12_gcm_record(16384, 2),
        tls12_gcm_record(8192, 3),
    ];
    let parts: Vec<SealedPart> = [16384usize, 16384, 8192]
        .iter()
        .zip(&recs)
        .map(|(&n, r)| SealedPart {
            original_length: n,
            header_len: 16,
            data: r.clone(),
        })
        .collect();
    let body = build_body(SealProtocol::CredSsp, &parts);
    let want = manual_body(
        CREDSSP_HEAD,
        &[(16384, 16, &recs[0]), (16384, 16, &recs[1]), (8192, 16, &recs[2])],
    );
    assert_eq!(body, want);
    assert_eq!(parse_body(SealProtocol::CredSsp, &body).unwrap(), parts);
    assert_eq!(
        content_type(SealProtocol::CredSsp, parts.len()),
        "multipart/x-multi-encrypted;protocol=\"application/HTTP-CredSSP-session-encrypted\";boundary=\"Encrypted Boundary\""
    );
}

#[test]
fn build_without_parts_is_only_the_close_delimiter() {
    assert_eq!(build_body(SealProtocol::CredSsp, &[]), CLOSE);
}

#[test]
fn parse_credssp_tls13_single_record() {
    let rec = tls13_record(1234, 9);
    let body = manual_body(CREDSSP_HEAD, &[(1234, 17, &rec)]);
    let parts = parse_body(SealProtocol::CredSsp, &body).unwrap();
    assert_eq!(
        parts,
        vec![SealedPart {
            original_length: 1234,
            header_len: 17,
            data: rec
        }]
    );
}

#[test]
fn parse_credssp_several_records_in_one_part() {
    // A TLS stack may split one chunk into several records (1/n-1 split, or a
    // plaintext above the record limit); all of them belong to the part.
    let mut data = tls12_gcm_record(1, 4);
    data.extend(tls12_gcm_record(999, 5));
    let body = manual_body(CREDSSP_HEAD, &[(1000, 16, &data)]);
    let parts = parse_body(SealProtocol::CredSsp, &body).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].data, data);
}

#[test]
fn boundary_inside_ciphertext_is_not_a_delimiter() {
    // SPNEGO: the sealed bytes contain the delimiter; the length decides.
    let mut data = ntlm_signature(3);
    let trap = b"--Encrypted Boundary--\r\n--Encrypted Boundary\r\n";
    data.extend_from_slice(trap);
    let body = manual_body(SPNEGO_HEAD, &[(trap.len(), 16, &data)]);
    let parts = parse_body(SealProtocol::Spnego, &body).unwrap();
    assert_eq!(parts[0].data, data);

    // CredSSP: the record body contains the delimiter; the record length decides.
    let mut rec = vec![0x17, 0x03, 0x03];
    let inner: Vec<u8> = [&[0u8; 8][..], trap, &[0xaa; 16]].concat();
    rec.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    rec.extend_from_slice(&inner);
    let body = manual_body(CREDSSP_HEAD, &[(trap.len(), 16, &rec), (trap.len(), 16, &rec)]);
    let parts = parse_body(SealProtocol::CredSsp, &body).unwrap();
    assert_eq!(parts.len(), 2);
    assert!(parts.iter().all(|p| p.data == rec));
}

#[test]
fn windows_style_spnego_response_with_two_messages() {
    // Sequence numbers go up per message; each part is self-contained.
    let a = spnego_part(847, 2);
    let b = spnego_part(2559, 3);
    let body = manual_body(SPNEGO_HEAD, &[(847, 16, &a.data), (2559, 16, &b.data)]);
    let parts = parse_body(SealProtocol::Spnego, &body).unwrap();
    assert_eq!(parts, vec![a.clone(), b]);
    let (sig, sealed) = parts[0].split_header().unwrap();
    assert_eq!(sig, ntlm_signature(2).as_slice());
    assert_eq!(sealed.len(), 847);
}

#[test]
fn open_delimiter_at_end_is_rejected() {
    // pywinrm tolerates a body ending with "--Encrypted Boundary\r\n"; we do not,
    // because that is exactly what a body cut between two pairs looks like.
    let part = spnego_part(19, 1);
    let mut body = build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
    body.truncate(body.len() - CLOSE.len());
    body.extend_from_slice(b"--Encrypted Boundary\r\n");
    assert_eq!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::MissingTerminator)
    );
}

#[test]
fn lenient_whitespace_and_line_endings() {
    let part = spnego_part(5, 1);
    let mut body = Vec::new();
    body.extend_from_slice(b"--Encrypted Boundary\n");
    body.extend_from_slice(b"  content-type:application/http-spnego-session-encrypted  \n");
    body.extend_from_slice(b"\tX-Other: ignored\r\n");
    body.extend_from_slice(b"\toriginalcontent: type=application/soap+xml; charset=UTF-8; length=5\r\n");
    body.extend_from_slice(b"--Encrypted Boundary  \r\n");
    body.extend_from_slice(b"Content-Type: Application/Octet-Stream\n");
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend_from_slice(&part.data);
    body.extend_from_slice(b"--Encrypted Boundary--\r\n\r\n ");
    assert_eq!(parse_body(SealProtocol::Spnego, &body).unwrap(), vec![part]);
}

#[test]
fn plaintext_chunking() {
    let plain = vec![b'x'; 2 * CREDSSP_CHUNK_SIZE + 10];
    let chunks = plaintext_chunks(SealProtocol::CredSsp, &plain);
    assert_eq!(
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
        vec![16384, 16384, 10]
    );
    assert_eq!(plaintext_chunks(SealProtocol::CredSsp, &plain[..16384]).len(), 1);
    assert_eq!(plaintext_chunks(SealProtocol::CredSsp, &[]), vec![&b""[..]]);
    assert_eq!(plaintext_chunks(SealProtocol::Spnego, &plain), vec![&plain[..]]);
}

#[test]
fn split_header_bounds() {
    let p = SealedPart {
        original_length: 0,
        header_len: 5,
        data: vec![1, 2, 3],
    };
    assert_eq!(p.split_header(), None);
    let p = SealedPart {
        original_length: 0,
        header_len: 3,
        data: vec![1, 2, 3],
    };
    assert_eq!(p.split_header(), Some((&[1u8, 2, 3][..], &[][..])));
}

fn spnego_body_with_length(len: &str, data_len: usize) -> Vec<u8> {
    let mut body = SPNEGO_HEAD.to_vec();
    body.extend_from_slice(len.as_bytes());
    body.extend_from_slice(DATA_HEAD);
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend(std::iter::repeat_n(0u8, 16 + data_len));
    body.extend_from_slice(CLOSE);
    body
}

#[test]
fn rejects_bad_lengths() {
    for bad in ["", "-1", "+5", "0x10", "1 2", "5a", "１"] {
        let body = spnego_body_with_length(bad, 5);
        let err = parse_body(SealProtocol::Spnego, &body).unwrap_err();
        assert!(matches!(err, SealingError::BadLength(_)), "{bad:?}: {err:?}");
    }
    // Overflows: too many digits, and a length that would overflow the addition.
    let body = spnego_body_with_length("99999999999999999999999", 5);
    assert!(matches!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::BadLength(_))
    ));
    let body = spnego_body_with_length(&u64::MAX.to_string(), 5);
    assert!(parse_body(SealProtocol::Spnego, &body).is_err());
    let body = spnego_body_with_length(&(usize::MAX - 8).to_string(), 5);
    assert_eq!(parse_body(SealProtocol::Spnego, &body), Err(SealingError::Truncated));
    // Length larger than the data present.
    let body = spnego_body_with_length("6", 5);
    assert!(parse_body(SealProtocol::Spnego, &body).is_err());
    // Length smaller than the data: the leftover byte is not a delimiter.
    let body = spnego_body_with_length("4", 5);
    assert!(matches!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::MissingBoundary(_))
    ));
}

#[test]
fn rejects_missing_length_and_content_type() {
    let body = b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml\r\n--Encrypted Boundary\r\n";
    assert_eq!(parse_body(SealProtocol::Spnego, body), Err(SealingError::MissingLength));
    let body =
        b"--Encrypted Boundary\r\n\tOriginalContent: type=application/soap+xml;Length=1\r\n--Encrypted Boundary\r\n";
    assert!(matches!(
        parse_body(SealProtocol::Spnego, body),
        Err(SealingError::BadPartHeader(_))
    ));
}

#[test]
fn rejects_protocol_mismatch() {
    let body = build_body(SealProtocol::CredSsp, &[spnego_part(3, 0)]);
    assert!(matches!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::ProtocolMismatch { .. })
    ));
}

#[test]
fn rejects_oversized_header_len() {
    let mut body = SPNEGO_HEAD.to_vec();
    body.extend_from_slice(b"1");
    body.extend_from_slice(DATA_HEAD);
    body.extend_from_slice(&(MAX_HEADER_LEN + 1).to_le_bytes());
    body.extend_from_slice(&[0u8; 64]);
    body.extend_from_slice(CLOSE);
    assert_eq!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::HeaderTooLong(MAX_HEADER_LEN + 1))
    );
    // 0xffffffff is what a negative "<i" would look like.
    let mut body = CREDSSP_HEAD.to_vec();
    body.extend_from_slice(b"1");
    body.extend_from_slice(DATA_HEAD);
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&tls12_gcm_record(1, 0));
    body.extend_from_slice(CLOSE);
    assert_eq!(
        parse_body(SealProtocol::CredSsp, &body),
        Err(SealingError::HeaderTooLong(u32::MAX))
    );
}

#[test]
fn rejects_bad_tls_records() {
    let good = tls12_gcm_record(10, 0);
    let variants: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut r = good.clone();
                r[0] = 0x18;
                r
            },
            "content type 24",
        ),
        (
            {
                let mut r = good.clone();
                r[0] = 0x13;
                r
            },
            "content type 19",
        ),
        (
            {
                let mut r = good.clone();
                r[1] = 0x02;
                r
            },
            "major version",
        ),
        (
            {
                let mut r = good.clone();
                r[2] = 0x00;
                r
            },
            "ssl 3.0",
        ),
        (
            {
                let mut r = good.clone();
                r[2] = 0x05;
                r
            },
            "minor 5",
        ),
        (vec![0x17, 0x03, 0x03, 0x48, 0x01], "record too long"),
        (Vec::new(), "no record at all"),
    ];
    for (data, what) in variants {
        let body = manual_body(CREDSSP_HEAD, &[(1, 16, &data)]);
        let err = parse_body(SealProtocol::CredSsp, &body).unwrap_err();
        assert!(matches!(err, SealingError::BadTlsRecord(_)), "{what}: {err:?}");
    }
    // A record whose length runs past the body.
    let mut data = good.clone();
    data[4] = data[4].wrapping_add(200);
    let body = manual_body(CREDSSP_HEAD, &[(1, 16, &data)]);
    assert!(parse_body(SealProtocol::CredSsp, &body).is_err());
}

#[test]
fn rejects_credssp_plaintext_longer_than_ciphertext() {
    let rec = tls12_gcm_record(10, 0);
    let body = manual_body(CREDSSP_HEAD, &[(rec.len() + 1, 16, &rec)]);
    assert_eq!(
        parse_body(SealProtocol::CredSsp, &body),
        Err(SealingError::LengthMismatch {
            original: rec.len() + 1,
            data: rec.len()
        })
    );
}

#[test]
fn rejects_framing_errors() {
    let good = build_body(SealProtocol::Spnego, &[spnego_part(7, 1)]);
    assert_eq!(parse_body(SealProtocol::Spnego, b""), Err(SealingError::Empty));
    assert_eq!(
        parse_body(SealProtocol::Spnego, b"<s:Envelope/>"),
        Err(SealingError::MissingBoundary(0))
    );
    // No closing delimiter at all.
    let body = &good[..good.len() - CLOSE.len()];
    assert_eq!(
        parse_body(SealProtocol::Spnego, body),
        Err(SealingError::MissingTerminator)
    );
    // Junk after the close delimiter.
    let mut body = good.clone();
    body.extend_from_slice(b"junk");
    assert_eq!(parse_body(SealProtocol::Spnego, &body), Err(SealingError::TrailingData));
    // Data part with another content type.
    let body: Vec<u8> = String::from_utf8_lossy(&good)
        .replace("application/octet-stream", "application/soap+xml")
        .into_bytes();
    assert_eq!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::BadDataContentType)
    );
    // Header block that never reaches a delimiter.
    let mut body = b"--Encrypted Boundary\r\n".to_vec();
    body.extend(std::iter::repeat_n(b"\tX: y\r\n".as_slice(), 400).flatten());
    assert!(matches!(
        parse_body(SealProtocol::Spnego, &body),
        Err(SealingError::BadPartHeader(_))
    ));
}

#[test]
fn rejects_too_many_parts() {
    let parts = vec![spnego_part(0, 0); MAX_PARTS + 1];
    let body = build_body(SealProtocol::Spnego, &parts);
    assert_eq!(parse_body(SealProtocol::Spnego, &body), Err(SealingError::TooManyParts));
    let body = build_body(SealProtocol::Spnego, &parts[..MAX_PARTS]);
    assert_eq!(parse_body(SealProtocol::Spnego, &body).unwrap().len(), MAX_PARTS);
}

#[test]
fn every_truncation_fails_cleanly() {
    let spnego = build_body(SealProtocol::Spnego, &[spnego_part(40, 1), spnego_part(3, 2)]);
    let credssp = build_body(
        SealProtocol::CredSsp,
        &[
            SealedPart {
                original_length: 30,
                header_len: 16,
                data: tls12_gcm_record(30, 7),
            },
            SealedPart {
                original_length: 2,
                header_len: 17,
                data: tls13_record(2, 8),
            },
        ],
    );
    for (proto, body) in [(SealProtocol::Spnego, &spnego), (SealProtocol::CredSsp, &credssp)] {
        assert_eq!(parse_body(proto, body).unwrap().len(), 2);
        // Cutting the closing "\r\n" still leaves a valid close delimiter.
        for cut in 0..body.len() - 2 {
            assert!(parse_body(proto, &body[..cut]).is_err(), "{proto:?} cut at {cut}");
        }
    }
}

#[test]
fn mutations_never_panic() {
    let body = build_body(
        SealProtocol::CredSsp,
        &[SealedPart {
            original_length: 12,
            header_len: 16,
            data: tls12_gcm_record(12, 1),
        }],
    );
    for i in 0..body.len() {
        for v in [0x00u8, 0x0a, 0x17, b'-', 0xff] {
            let mut m = body.clone();
            m[i] = v;
            let _ = parse_body(SealProtocol::CredSsp, &m);
            let _ = parse_body(SealProtocol::Spnego, &m);
        }
    }
}

#[test]
fn round_trip_assorted_sizes() {
    for n in [0usize, 1, 15, 16, 17, 1000, 16384] {
        let parts = vec![spnego_part(n, 1)];
        let body = build_body(SealProtocol::Spnego, &parts);
        assert_eq!(parse_body(SealProtocol::Spnego, &body).unwrap(), parts);
        let parts = vec![SealedPart {
            original_length: n,
            header_len: 16,
            data: tls12_gcm_record(n, 2),
        }];
        let body = build_body(SealProtocol::CredSsp, &parts);
        assert_eq!(parse_body(SealProtocol::CredSsp, &body).unwrap(), parts);
    }
}

#[test]
fn build_matches_pywinrm_test_vectors() {
    // winrm/tests/test_encryption.py::test_encrypt_message: a mock 4-byte
    // signature "1234" and mock ciphertext; Content-Length 272.
    let part = SealedPart {
        original_length: 19,
        header_len: 4,
        data: b"1234dW5lbmNyeXB0ZWQgbWVzc2FnZQ==".to_vec(),
    };
    let body = build_body(SealProtocol::Spnego, &[part]);
    let want: &[u8] = b"--Encrypted Boundary\r\n\
\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\
\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=19\r\n\
--Encrypted Boundary\r\n\
\tContent-Type: application/octet-stream\r\n\
\x04\x00\x00\x001234dW5lbmNyeXB0ZWQgbWVzc2FnZQ==--Encrypted Boundary--\r\n";
    assert_eq!(body, want);
    assert_eq!(body.len(), 272);

    // test_encrypt_large_credssp_message: three chunks, trailer 32, mock
    // ciphertext = base64 of each chunk; Content-Length 55303.
    let message = b"unencrypted message ".repeat(2048);
    let parts: Vec<SealedPart> = plaintext_chunks(SealProtocol::CredSsp, &message)
        .into_iter()
        .map(|c| {
            use base64::Engine as _;
            SealedPart {
                original_length: c.len(),
                header_len: 32,
                data: base64::engine::general_purpose::STANDARD.encode(c).into_bytes(),
            }
        })
        .collect();
    assert_eq!(parts.len(), 3);
    let body = build_body(SealProtocol::CredSsp, &parts);
    assert_eq!(body.len(), 55303);
    assert!(body.starts_with(CREDSSP_HEAD));
    assert!(body.ends_with(b"--Encrypted Boundary--\r\n"));
}

#[test]
fn the_sealed_size_limit_holds_any_sealing_of_that_much_soap() {
    // TLS 1.2 CBC with SHA-384: record header, IV, MAC and the most padding
    // per record, each record in its own part pair, is the costliest sealing.
    const WORST_RECORD_OVERHEAD: usize = 5 + 16 + 48 + 256;
    for plain_len in [
        0,
        1,
        100,
        CREDSSP_CHUNK_SIZE,
        CREDSSP_CHUNK_SIZE + 1,
        153_600,
        512_000,
        8 << 20,
    ] {
        let plain = vec![b'x'; plain_len];
        let parts: Vec<SealedPart> = plaintext_chunks(SealProtocol::CredSsp, &plain)
            .iter()
            .map(|chunk| SealedPart {
                original_length: chunk.len(),
                header_len: 64,
                data: vec![0; chunk.len() + WORST_RECORD_OVERHEAD],
            })
            .collect();
        let credssp = build_body(SealProtocol::CredSsp, &parts).len();
        let spnego = build_body(SealProtocol::Spnego, &[spnego_part(plain_len, 0)]).len();
        let limit = sealed_size_limit(plain_len);
        assert!(
            credssp <= limit && spnego <= limit,
            "{plain_len}: {credssp}/{spnego} > {limit}"
        );
    }
    assert_eq!(sealed_size_limit(usize::MAX), usize::MAX);
}

/// A Kerberos wrap token as sspi and MIT send it: a 60-byte header (token header,
/// rotated checksum, confounder) then ciphertext as long as the plaintext, plus `padding`.
fn wrap_token(plain_len: usize, padding: usize) -> Vec<u8> {
    let mut token = vec![0x05, 0x04, 0x06, 0xff, 0x00, padding as u8, 0x00, 0x1c];
    token.extend_from_slice(&7u64.to_be_bytes());
    // Ciphertext that happens to hold the boundary: it must not end the part.
    let mut rest: Vec<u8> = (0..44 + plain_len + padding).map(|i| (i * 13 + 5) as u8).collect();
    if rest.len() > 80 {
        rest[50..50 + DELIM.len()].copy_from_slice(DELIM);
    }
    token.extend_from_slice(&rest);
    token
}

#[test]
fn kerberos_bodies_run_to_the_closing_delimiter() {
    for (plain_len, padding) in [(0, 0), (5, 0), (400, 0), (400, 16), (3_000_000, 0)] {
        let token = wrap_token(plain_len, padding);
        let body = manual_body(SPNEGO_HEAD, &[(plain_len, 60, &token)]);
        let part = parse_wrap_token_body(&body).unwrap_or_else(|e| panic!("{plain_len}+{padding}: {e}"));
        assert_eq!((part.original_length, part.header_len), (plain_len, 60));
        assert_eq!(part.data, token);
        // What the relay builds parses back.
        let built = build_body(SealProtocol::Spnego, std::slice::from_ref(&part));
        assert_eq!(built, body);
        assert_eq!(parse_wrap_token_body(&built).unwrap(), part);
    }
    // Transport padding after the close delimiter.
    let token = wrap_token(10, 0);
    let mut body = manual_body(SPNEGO_HEAD, &[(10, 60, &token)]);
    body.extend_from_slice(b"\r\n  \r\n");
    assert_eq!(parse_wrap_token_body(&body).unwrap().data, token);
}

#[test]
fn kerberos_bodies_that_are_cut_or_short_are_refused() {
    let token = wrap_token(100, 0);
    let body = manual_body(SPNEGO_HEAD, &[(100, 60, &token)]);
    // No closing delimiter: the end of the data cannot be known.
    assert_eq!(
        parse_wrap_token_body(&body[..body.len() - CLOSE.len()]),
        Err(SealingError::MissingTerminator)
    );
    assert_eq!(
        parse_wrap_token_body(&body[..body.len() - 3]),
        Err(SealingError::MissingTerminator)
    );
    // Less data than the header and the plaintext need.
    let short = manual_body(SPNEGO_HEAD, &[(100, 60, &token[..150])]);
    assert_eq!(
        parse_wrap_token_body(&short),
        Err(SealingError::LengthMismatch {
            original: 100,
            data: 90
        })
    );
    let tiny = manual_body(SPNEGO_HEAD, &[(0, 60, &token[..20])]);
    assert_eq!(parse_wrap_token_body(&tiny), Err(SealingError::Truncated));
    let long_header = manual_body(SPNEGO_HEAD, &[(0, MAX_HEADER_LEN + 1, &token)]);
    assert_eq!(
        parse_wrap_token_body(&long_header),
        Err(SealingError::HeaderTooLong(MAX_HEADER_LEN + 1))
    );
    // The CredSSP protocol in a Kerberos body, and no body at all.
    let credssp = manual_body(CREDSSP_HEAD, &[(100, 60, &token)]);
    assert!(matches!(
        parse_wrap_token_body(&credssp),
        Err(SealingError::ProtocolMismatch { .. })
    ));
    assert_eq!(parse_wrap_token_body(b""), Err(SealingError::Empty));
    assert_eq!(parse_wrap_token_body(b"junk"), Err(SealingError::MissingBoundary(0)));
}
