//! A PSRP stream as a byte stream: fragments cut out of it as soon as their
//! 21-byte header and blob are there (a client cuts fixed windows, so one
//! fragment, even its header, may straddle two envelopes), and messages put
//! together by ObjectId.
//!
//! Linear in the bytes: each byte is copied into the buffer once, compacted at
//! most once, and appended to its message once; nothing is re-scanned or
//! re-summed. Retransmitted fragments (an ObjectId and FragmentId already
//! taken) are dropped.

use std::collections::{HashMap, HashSet, VecDeque};

use thiserror::Error;

use super::messages::PsrpMessage;

pub(super) const FRAGMENT_HEADER: usize = 21;
const FLAG_START: u8 = 0x1;
const FLAG_END: u8 = 0x2;
/// Finished ObjectIds remembered per stream to drop retransmits of them.
const REMEMBERED_FINISHED: usize = 4096;

/// Why a stream's fragments cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FragmentError {
    #[error("a fragment of object {object_id} declares {length} bytes, over the bound of {bound}")]
    TooLong { object_id: u64, length: u64, bound: usize },
    #[error("message {object_id} grew past {bound} bytes")]
    MessageTooLong { object_id: u64, bound: usize },
    #[error("fragment {fragment_id} of message {object_id} follows fragment {previous}: fragments are missing")]
    Gap {
        object_id: u64,
        fragment_id: u64,
        previous: u64,
    },
    #[error("fragment {fragment_id} of message {object_id} is not read: {why}")]
    Skipped {
        object_id: u64,
        fragment_id: u64,
        why: &'static str,
    },
}

/// A message being put together.
#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    /// The FragmentId expected next.
    next: u64,
}

/// One stream's fragments and messages. See the module documentation.
#[derive(Debug, Default)]
pub struct StreamAssembler {
    /// Bytes received; those before `pos` are already cut into fragments.
    buf: Vec<u8>,
    pos: usize,
    partial: HashMap<u64, Partial>,
    /// The bytes in `partial`, kept as they change.
    in_messages: usize,
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    /// Report the fragments skipped (retransmits, starts not seen) in `dropped`: a
    /// command policy must see every fragment a target may put together.
    strict: bool,
}

/// What one push put together, and what went wrong on the way.
#[derive(Debug, Default)]
pub struct Pushed {
    pub messages: Vec<PsrpMessage>,
    /// Problems the stream recovers from (a message dropped).
    pub dropped: Vec<FragmentError>,
}

impl StreamAssembler {
    /// An assembler that reports every fragment it skips.
    pub fn strict() -> StreamAssembler {
        StreamAssembler {
            strict: true,
            ..StreamAssembler::default()
        }
    }

    /// The bytes held: received and not yet a fragment, or in unfinished messages.
    pub fn held(&self) -> usize {
        self.buf.len() - self.pos + self.in_messages
    }

    /// Appends `bytes` and returns the messages they complete, in order. A
    /// fragment or message over `bound` bytes is an error the stream cannot
    /// read past (its framing is lost or hostile).
    pub fn push(&mut self, bytes: &[u8], bound: usize) -> Result<Pushed, FragmentError> {
        let mut out = Pushed::default();
        self.buf.extend_from_slice(bytes);
        while let Some(header) = self.buf.get(self.pos..self.pos + FRAGMENT_HEADER) {
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&header[at..at + 8]);
                u64::from_be_bytes(b)
            };
            let object_id = word(0);
            let fragment_id = word(8);
            let flags = header[16];
            let length = u32::from_be_bytes([header[17], header[18], header[19], header[20]]);
            if length as usize > bound {
                return Err(FragmentError::TooLong {
                    object_id,
                    length: length.into(),
                    bound,
                });
            }
            let start = self.pos + FRAGMENT_HEADER;
            let end = start + length as usize;
            if self.buf.len() < end {
                break;
            }
            self.pos = end;
            let blob = start..end;
            if let Some(message) = self.fragment(object_id, fragment_id, flags, blob, bound, &mut out)? {
                out.messages.push(message);
            }
        }
        // Compact once the consumed part is at least half: each byte moves at most once.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(out)
    }

    fn fragment(
        &mut self,
        object_id: u64,
        fragment_id: u64,
        flags: u8,
        blob: std::ops::Range<usize>,
        bound: usize,
        out: &mut Pushed,
    ) -> Result<Option<PsrpMessage>, FragmentError> {
        let skipped = |out: &mut Pushed, strict: bool, why| {
            if strict {
                out.dropped.push(FragmentError::Skipped {
                    object_id,
                    fragment_id,
                    why,
                });
            }
            Ok(None)
        };
        if self.finished.contains(&object_id) {
            // a retransmit of a message already put together
            return skipped(out, self.strict, "its message was put together before");
        }
        if flags & FLAG_START != 0 && !self.partial.contains_key(&object_id) {
            if fragment_id != 0 {
                return skipped(out, self.strict, "a start fragment numbered after 0");
            }
            self.partial.insert(
                object_id,
                Partial {
                    data: Vec::new(),
                    next: 0,
                },
            );
        }
        let Some(partial) = self.partial.get_mut(&object_id) else {
            // a fragment whose start came before the relay looked
            return skipped(out, self.strict, "its message's start was not seen");
        };
        if fragment_id < partial.next {
            // a retransmit
            return skipped(out, self.strict, "a fragment received before");
        }
        if fragment_id > partial.next {
            let previous = partial.next.saturating_sub(1);
            self.drop_partial(object_id);
            out.dropped.push(FragmentError::Gap {
                object_id,
                fragment_id,
                previous,
            });
            return Ok(None);
        }
        if partial.data.len() + blob.len() > bound {
            self.drop_partial(object_id);
            return Err(FragmentError::MessageTooLong { object_id, bound });
        }
        partial.data.extend_from_slice(&self.buf[blob.clone()]);
        partial.next += 1;
        self.in_messages += blob.len();
        if flags & FLAG_END == 0 {
            return Ok(None);
        }
        let Some(whole) = self.partial.remove(&object_id) else {
            return Ok(None);
        };
        self.in_messages -= whole.data.len();
        self.remember_finished(object_id);
        Ok(PsrpMessage::from_bytes(whole.data, true))
    }

    fn drop_partial(&mut self, object_id: u64) {
        if let Some(dropped) = self.partial.remove(&object_id) {
            self.in_messages -= dropped.data.len();
        }
    }

    fn remember_finished(&mut self, object_id: u64) {
        if self.finished.insert(object_id) {
            self.finished_order.push_back(object_id);
            if self.finished_order.len() > REMEMBERED_FINISHED {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    /// The messages begun and not finished, in no particular order.
    pub fn unfinished(self) -> Vec<PsrpMessage> {
        self.partial
            .into_values()
            .filter_map(|m| PsrpMessage::from_bytes(m.data, false))
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Fragments of one message, the way a client cuts them: `pieces` fragments.
    pub fn fragments(object_id: u64, message: &[u8], pieces: usize) -> Vec<u8> {
        let chunk = message.len().div_ceil(pieces.max(1)).max(1);
        let chunks: Vec<&[u8]> = message.chunks(chunk).collect();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&object_id.to_be_bytes());
            out.extend_from_slice(&(i as u64).to_be_bytes());
            let mut flags = 0;
            if i == 0 {
                flags |= FLAG_START;
            }
            if i + 1 == chunks.len() {
                flags |= FLAG_END;
            }
            out.push(flags);
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    pub fn message(msg_type: u32, xml: &str) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&2u32.to_le_bytes()); // destination: server
        m.extend_from_slice(&msg_type.to_le_bytes());
        m.extend_from_slice(&[0x11; 16]); // RPID
        m.extend_from_slice(&[0x22; 16]); // PID
        m.extend_from_slice(b"\xEF\xBB\xBF");
        m.extend_from_slice(xml.as_bytes());
        m
    }

    const BOUND: usize = 1 << 20;

    /// Every way of splitting a stream in two puts the same messages together,
    /// headers cut anywhere included.
    #[test]
    fn a_fragment_straddling_two_pushes_is_cut_when_whole() {
        let mut all = fragments(1_000_003, &message(0x0004_1004, "<S>one</S>"), 3);
        all.extend(fragments(17, &message(0x0004_1004, "<S>two</S>"), 2));
        for cut in 0..=all.len() {
            let mut a = StreamAssembler::default();
            let mut got = a.push(&all[..cut], BOUND).unwrap().messages;
            got.extend(a.push(&all[cut..], BOUND).unwrap().messages);
            let texts: Vec<&[u8]> = got.iter().map(|m| m.data.as_slice()).collect();
            assert_eq!(texts, [b"<S>one</S>".as_slice(), b"<S>two</S>"], "cut at {cut}");
            assert_eq!(a.held(), 0);
        }
        // Byte by byte.
        let mut a = StreamAssembler::default();
        let mut n = 0;
        for b in &all {
            n += a.push(std::slice::from_ref(b), BOUND).unwrap().messages.len();
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn messages_interleave_by_object_id_and_retransmits_are_dropped() {
        let a_frags = fragments(900, &message(0x0004_1004, "<S>a</S>"), 3);
        let b_frags = fragments(5, &message(0x0004_1004, "<S>b</S>"), 2);
        let split = |f: &[u8]| {
            let mut out = Vec::new();
            let mut rest = f;
            while rest.len() >= FRAGMENT_HEADER {
                let len = u32::from_be_bytes(rest[17..21].try_into().unwrap()) as usize;
                out.push(rest[..FRAGMENT_HEADER + len].to_vec());
                rest = &rest[FRAGMENT_HEADER + len..];
            }
            out
        };
        let (fa, fb) = (split(&a_frags), split(&b_frags));
        // a0 b0 a0(again) a1 b1 a2 a2(again) b0(again)
        let order = [&fa[0], &fb[0], &fa[0], &fa[1], &fb[1], &fa[2], &fa[2], &fb[0]];
        let mut asm = StreamAssembler::default();
        let mut got = Vec::new();
        for f in order {
            let pushed = asm.push(f, BOUND).unwrap();
            assert!(pushed.dropped.is_empty());
            got.extend(pushed.messages);
        }
        let texts: Vec<&[u8]> = got.iter().map(|m| m.data.as_slice()).collect();
        assert_eq!(texts, [b"<S>b</S>".as_slice(), b"<S>a</S>"]);
        assert_eq!(asm.held(), 0);
        // A gap drops the message and says so; the stream reads on.
        let mut asm = StreamAssembler::default();
        let mut gap = fa[0].clone();
        gap.extend_from_slice(&fa[2]);
        gap.extend_from_slice(&b_frags);
        let pushed = asm.push(&gap, BOUND).unwrap();
        assert_eq!(pushed.messages.len(), 1);
        assert!(matches!(
            pushed.dropped[..],
            [FragmentError::Gap { object_id: 900, .. }]
        ));
        assert_eq!(asm.held(), 0);
    }

    #[test]
    fn bounds_are_errors_and_held_bytes_are_counted() {
        let mut asm = StreamAssembler::default();
        let mut f = fragments(1, &message(0x0004_1004, "<S>x</S>"), 1);
        f[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(asm.push(&f, BOUND), Err(FragmentError::TooLong { .. })));
        let mut asm = StreamAssembler::default();
        let big = fragments(2, &message(0x0004_1004, &"y".repeat(200)), 10);
        assert!(matches!(asm.push(&big, 100), Err(FragmentError::MessageTooLong { .. })));
        // Begun messages are held until they end.
        let mut asm = StreamAssembler::default();
        let f = fragments(3, &message(0x0004_1004, &format!("<S>{}</S>", "held ".repeat(20))), 2);
        let first = FRAGMENT_HEADER + u32::from_be_bytes(f[17..21].try_into().unwrap()) as usize;
        asm.push(&f[..first + 5], BOUND).unwrap();
        assert_eq!(asm.held(), first - FRAGMENT_HEADER + 5);
        assert_eq!(asm.unfinished().len(), 1);
    }

    /// 17,000 empty fragments of one message cost in proportion to their bytes:
    /// ten times as many take about ten times as long, not a hundred.
    #[test]
    fn many_small_fragments_are_linear() {
        let stream = |n: u64| {
            let mut out = Vec::new();
            let msg = message(0x0002_1006, "<Obj/>");
            for i in 0..n {
                out.extend_from_slice(&7u64.to_be_bytes());
                out.extend_from_slice(&i.to_be_bytes());
                out.push(if i == 0 { FLAG_START } else { 0 });
                let blob: &[u8] = if i == 0 { &msg } else { &[] };
                out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
                out.extend_from_slice(blob);
            }
            out
        };
        let time = |bytes: &[u8]| {
            let started = std::time::Instant::now();
            let mut asm = StreamAssembler::default();
            // In windows of 8 KiB, as a client with a small envelope sends them.
            for w in bytes.chunks(8192) {
                asm.push(w, BOUND).unwrap();
            }
            started.elapsed()
        };
        let small = stream(17_000);
        let large = stream(170_000);
        let best = |b: &[u8]| (0..3).map(|_| time(b)).min().unwrap();
        let (t1, t10) = (best(&small), best(&large));
        assert!(t10 < t1 * 30, "17k fragments: {t1:?}, 170k: {t10:?}");
    }
}
