//! WinRM's compressed streams: when a shell was created with Xpress
//! compression, each `rsp:Stream`'s bytes are a run of chunks, each
//! `u16le originalSize - 1`, `u16le compressedSize - 1`, then the bytes:
//! LZ77+Huffman (MS-XCA), or stored raw when the two sizes are equal. Each
//! `rsp:Stream` stands alone. The decoder is the `compcol` crate's; this only
//! reads the framing and holds every chunk to its sizes.

use thiserror::Error;

/// The most original bytes one chunk may hold; the decoders in use are only
/// correct up to it.
pub const MAX_CHUNK: usize = 65_536;
const CHUNK_HEADER: usize = 4;

/// Why a compressed stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressionError {
    #[error("chunk {chunk} at byte {offset}: {left} bytes left, too few for a chunk header")]
    TruncatedHeader { chunk: usize, offset: usize, left: usize },
    #[error("chunk {chunk} at byte {offset}: declares {compressed} compressed bytes, {left} are there")]
    TruncatedChunk {
        chunk: usize,
        offset: usize,
        compressed: usize,
        left: usize,
    },
    #[error("chunk {chunk}: {compressed} compressed bytes for {original} original bytes")]
    LargerThanOriginal {
        chunk: usize,
        original: usize,
        compressed: usize,
    },
    #[error("chunk {chunk}: xpress huffman decoding failed: {reason}")]
    Decode { chunk: usize, reason: String },
    #[error("chunk {chunk}: decoded to {got} bytes, its header says {original}")]
    WrongSize { chunk: usize, original: usize, got: usize },
    #[error("the decompressed stream exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

/// Decompresses one `rsp:Stream`'s bytes; `limit` bounds the output (a chunk
/// expands up to some 250 times).
pub fn decompress_stream(data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut chunk = 0;
    while offset < data.len() {
        let left = data.len() - offset;
        let Some(header) = data.get(offset..offset + CHUNK_HEADER) else {
            return Err(CompressionError::TruncatedHeader { chunk, offset, left });
        };
        // Sizes are stored minus one: 1..=65,536 each, so MAX_CHUNK holds by construction.
        let original = usize::from(u16::from_le_bytes([header[0], header[1]])) + 1;
        let compressed = usize::from(u16::from_le_bytes([header[2], header[3]])) + 1;
        debug_assert!(original <= MAX_CHUNK);
        let Some(body) = data.get(offset + CHUNK_HEADER..offset + CHUNK_HEADER + compressed) else {
            return Err(CompressionError::TruncatedChunk {
                chunk,
                offset,
                compressed,
                left: left - CHUNK_HEADER,
            });
        };
        if out.len() + original > limit {
            return Err(CompressionError::TooLarge { limit });
        }
        if compressed == original {
            out.extend_from_slice(body);
        } else if compressed > original {
            return Err(CompressionError::LargerThanOriginal {
                chunk,
                original,
                compressed,
            });
        } else {
            let decoded = decode_chunk(body, original).map_err(|e| CompressionError::Decode {
                chunk,
                reason: e.to_string(),
            })?;
            if decoded.len() != original {
                return Err(CompressionError::WrongSize {
                    chunk,
                    original,
                    got: decoded.len(),
                });
            }
            out.extend_from_slice(&decoded);
        }
        offset += CHUNK_HEADER + compressed;
        chunk += 1;
    }
    Ok(out)
}

/// One LZ77+Huffman chunk of `original` bytes. The crate reads its own framing, the
/// original size as a u32le before the bitstream, and stops once that many bytes are out.
fn decode_chunk(body: &[u8], original: usize) -> Result<Vec<u8>, compcol::Error> {
    let mut framed = Vec::with_capacity(4 + body.len());
    framed.extend_from_slice(&(original as u32).to_le_bytes());
    framed.extend_from_slice(body);
    compcol::vec::decompress_to_vec_capped::<compcol::xpress_huffman::XpressHuffman>(&framed, original as u64)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use compcol::Encoder as _;

    /// Compresses one chunk with an encoder independent of the decoder; compcol
    /// puts a framing of its own (the u32le input length) before the MS-XCA
    /// stream, left out here.
    fn xpress(input: &[u8]) -> Vec<u8> {
        let mut enc = compcol::xpress_huffman::Encoder::new();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        let mut consumed = 0;
        while consumed < input.len() {
            let (p, _) = enc.encode(&input[consumed..], &mut buf).unwrap();
            out.extend_from_slice(&buf[..p.written]);
            consumed += p.consumed;
        }
        loop {
            let (p, status) = enc.finish(&mut buf).unwrap();
            out.extend_from_slice(&buf[..p.written]);
            if status == compcol::Status::StreamEnd {
                break;
            }
        }
        assert_eq!(out[..4], (input.len() as u32).to_le_bytes());
        out.split_off(4)
    }

    /// What a Windows client sends for `data`: chunks of at most 64 KiB, each
    /// compressed, or raw when compressing does not make it smaller.
    pub fn compress_stream(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in data.chunks(MAX_CHUNK) {
            let packed = xpress(piece);
            let body = if packed.len() < piece.len() {
                packed
            } else {
                piece.to_vec()
            };
            out.extend_from_slice(&((piece.len() - 1) as u16).to_le_bytes());
            out.extend_from_slice(&((body.len() - 1) as u16).to_le_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    const LIMIT: usize = 16 << 20;

    #[test]
    fn compressed_and_raw_chunks_round_trip() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of output\n", i % 977).into_bytes())
            .take(200_000)
            .collect();
        let framed = compress_stream(&text);
        assert!(
            framed.len() < text.len() / 2,
            "compressed {} of {}",
            framed.len(),
            text.len()
        );
        assert_eq!(decompress_stream(&framed, LIMIT).unwrap(), text);
        // A chunk stored raw (equal sizes), then a compressed one.
        let raw: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut framed = vec![0xE7, 0x03, 0xE7, 0x03];
        framed.extend_from_slice(&raw);
        framed.extend(compress_stream(b"after the raw chunk, after the raw chunk"));
        let mut expected = raw.clone();
        expected.extend_from_slice(b"after the raw chunk, after the raw chunk");
        assert_eq!(decompress_stream(&framed, LIMIT).unwrap(), expected);
        assert_eq!(decompress_stream(&[], LIMIT).unwrap(), b"");
    }

    #[test]
    fn bad_framing_is_a_typed_error() {
        let good = compress_stream(&b"abc".repeat(1000));
        assert!(matches!(
            decompress_stream(&good[..2], LIMIT),
            Err(CompressionError::TruncatedHeader { chunk: 0, .. })
        ));
        assert!(matches!(
            decompress_stream(&good[..good.len() - 1], LIMIT),
            Err(CompressionError::TruncatedChunk { chunk: 0, .. })
        ));
        let mut larger = vec![0x00, 0x00, 0x01, 0x00];
        larger.extend_from_slice(b"ab");
        assert!(matches!(
            decompress_stream(&larger, LIMIT),
            Err(CompressionError::LargerThanOriginal { .. })
        ));
        // A chunk declaring more original bytes than it decodes to.
        let mut lying = good.clone();
        lying[0..2].copy_from_slice(&(5000u16).to_le_bytes());
        assert!(decompress_stream(&lying, LIMIT).is_err());
        // Garbage where the Huffman table should be.
        let mut garbage = vec![0xFF, 0x0F, 0xFF, 0x01];
        garbage.extend(std::iter::repeat_n(0xEE, 512));
        assert!(decompress_stream(&garbage, LIMIT).is_err());
        assert_eq!(
            decompress_stream(&good, 100),
            Err(CompressionError::TooLarge { limit: 100 })
        );
    }

    /// The largest chunk the framing can say, 65,536 bytes, is read whole;
    /// a second chunk follows it.
    #[test]
    fn the_largest_chunk_is_within_the_bound() {
        let data: Vec<u8> = (0..MAX_CHUNK + 10).map(|i| (i % 251) as u8).collect();
        let framed = compress_stream(&data);
        assert_eq!(&framed[..2], &[0xFF, 0xFF]);
        assert_eq!(decompress_stream(&framed, LIMIT).unwrap(), data);
    }

    /// A valid chunk whose last literal and end symbol share its final 16-bit word, made by
    /// the interop suite's own encoder (integration/xpress.py, `tight=True`); a decoder that
    /// stops when its input runs out loses the last byte.
    #[test]
    fn a_chunk_ending_in_its_last_word_decodes_whole() {
        let stream = hex::decode(concat!(
            "67061e010000000000000000000000000000000003000000000640000000000000500000000000660000660600660060",
            "000000005060300040004055005404050000050000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000000000000000000000000000000000000000000000000000050000000000000000000000",
            "000000000000000000000000000000000000000000000000000000000000000000000050000000000000000000000000",
            "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000c2e05e7af9ebdc098fd89e963074ab37e1b45b39da404943c890ff3a",
            "060000",
        ))
        .unwrap();
        let text = b"Get-Service -Name WinRM | Format-List *; ".repeat(40);
        assert_eq!(decompress_stream(&stream, MAX_CHUNK).unwrap(), text);
    }
}
