//! The audit log's hash chain, and its verification.
//!
//! Every line carries `seq` (1, 2, ... across restarts and rotated files), `prev` (the
//! previous line's `hash`, `"genesis"` before the first line ever) and `hash`: a digest of
//! the line's own bytes without its `hash` member, that is the line up to
//! `,"hash":"` with the closing `}` put back. So each hash covers the line and, through
//! `prev`, every line before it: an edited byte, a removed line or two lines swapped
//! break the chain at the first line concerned. The digest is `sha256:<hex>`, or with a
//! key file `hmac-sha256:<hex>`, which nobody without the key can recompute after
//! rewriting the log.
//!
//! The digest is taken over bytes, not over a re-serialisation, so a verifier needs no
//! canonical JSON: it checks the line exactly as written.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `prev` of the first line of a new chain.
pub const GENESIS: &str = "genesis";
const HASH_MEMBER: &[u8] = b",\"hash\":\"";
/// Lines are at most a few hundred KiB (command lines are cut at 64 KiB, escaped); the
/// last one is looked for within this much of the end of the file.
const MAX_TAIL: u64 = 4 * 1024 * 1024;

/// How a line's digest is made.
#[derive(Clone)]
pub enum Mac {
    Sha256,
    /// HMAC-SHA-256 with the key file's contents.
    Keyed(hmac::Key),
}

impl std::fmt::Debug for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mac::Sha256 => "Sha256",
            Mac::Keyed(_) => "Keyed(..)",
        })
    }
}

impl Mac {
    pub fn keyed(key: &[u8]) -> Mac {
        Mac::Keyed(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    fn digest(&self, content: &[u8]) -> String {
        match self {
            Mac::Sha256 => format!("sha256:{}", hex::encode(Sha256::digest(content))),
            Mac::Keyed(key) => format!("hmac-sha256:{}", hex::encode(hmac::sign(key, content).as_ref())),
        }
    }
}

/// The last line written: what the next one chains to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.into(),
        }
    }
}

/// The line for `event_json` (a JSON object) at `time` after `head`, newline included,
/// and the head it makes.
pub fn seal(head: &Head, mac: &Mac, time: &str, event_json: &[u8]) -> (Vec<u8>, Head) {
    let seq = head.seq + 1;
    let inner = event_json
        .strip_prefix(b"{")
        .and_then(|rest| rest.strip_suffix(b"}"))
        .unwrap_or_default();
    let mut line = Vec::with_capacity(event_json.len() + 200);
    line.extend_from_slice(b"{\"time\":\"");
    line.extend_from_slice(time.as_bytes());
    line.extend_from_slice(b"\",\"seq\":");
    line.extend_from_slice(seq.to_string().as_bytes());
    line.push(b',');
    line.extend_from_slice(inner);
    if !inner.is_empty() {
        line.push(b',');
    }
    line.extend_from_slice(b"\"prev\":\"");
    line.extend_from_slice(head.hash.as_bytes());
    line.extend_from_slice(b"\"}");
    let hash = mac.digest(&line);
    line.pop();
    line.extend_from_slice(HASH_MEMBER);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, Head { seq, hash })
}

/// The chain fields of one line, and whatever else verification looks at.
#[derive(Deserialize)]
struct Fields {
    seq: u64,
    prev: String,
    hash: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    transcript_sha256: Option<String>,
}

/// A line taken apart: its chain fields and the bytes its hash covers.
struct Sealed {
    fields: Fields,
    content: Vec<u8>,
}

fn unseal(line: &[u8]) -> Result<Sealed, Problem> {
    let fields: Fields =
        serde_json::from_slice(line).map_err(|e| Problem::NotRecord(format!("not a chained audit record ({e})")))?;
    let mut suffix = HASH_MEMBER.to_vec();
    suffix.extend_from_slice(fields.hash.as_bytes());
    suffix.extend_from_slice(b"\"}");
    let Some(body) = line.strip_suffix(suffix.as_slice()) else {
        return Err(Problem::NotRecord("its hash is not the last member".into()));
    };
    let mut content = body.to_vec();
    content.push(b'}');
    Ok(Sealed { fields, content })
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotRecord(String),
    /// The line's bytes do not give its hash.
    Edited,
    /// `seq` jumps forward and the missing ones appear nowhere later.
    Removed {
        expected: u64,
        found: u64,
    },
    /// `seq` is out of order: the expected one comes later, or this one came before.
    Reordered {
        expected: u64,
        found: u64,
    },
    /// `seq` is right but `prev` is not the previous line's hash.
    Replaced,
    /// A new chain (`prev` = genesis) in the middle of the files.
    Restarted {
        after: u64,
    },
    /// A keyed line without `--key`.
    KeyNeeded,
    /// A plain SHA-256 line where a key was given.
    NotKeyed,
    /// A transcript bound by `session_end` is missing or differs.
    Transcript {
        name: String,
        detail: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotRecord(why) => write!(f, "not an audit record: {why}"),
            Problem::Edited => f.write_str("edited: the line's content does not match its hash"),
            Problem::Removed { expected, found } => write!(
                f,
                "removed: seq {found} where {expected} was expected ({} line(s) missing before this one)",
                found - expected
            ),
            Problem::Reordered { expected, found } => {
                write!(f, "reordered: seq {found} where {expected} was expected")
            }
            Problem::Replaced => f.write_str(
                "replaced: its prev is not the hash of the line before (that line was rewritten or swapped in)",
            ),
            Problem::Restarted { after } => write!(
                f,
                "restarted: a new chain (seq 1) starts here after seq {after}: the files are out of order, or \
                 the log before this line was replaced"
            ),
            Problem::KeyNeeded => f.write_str("keyed (hmac-sha256): pass the key file with --key to check it"),
            Problem::NotKeyed => {
                f.write_str("not keyed although a key was given: the line was written, or rewritten, without the key")
            }
            Problem::Transcript { name, detail } => write!(f, "transcript {name}: {detail}"),
        }
    }
}

/// The first bad line found.
#[derive(Debug)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based; 0 when the file itself cannot be read.
    pub line: usize,
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.problem)
    }
}

/// A verified run of files.
#[derive(Debug)]
pub struct Verified {
    pub lines: u64,
    /// The seq of the first line checked, and its prev: where the files continue a chain
    /// that began in files not given.
    pub first: Option<(u64, String)>,
    pub head: Head,
    /// Transcripts bound by `session_end` lines and checked against their hash.
    pub transcripts_checked: usize,
}

/// Checks `files`, in the order given (oldest first), as one chain. With `transcripts`,
/// every transcript a `session_end` line binds must exist there with that SHA-256.
pub fn verify(files: &[PathBuf], key: Option<&[u8]>, transcripts: Option<&Path>) -> Result<Verified, Finding> {
    let mac = key.map(Mac::keyed);
    let read = |file: &PathBuf| {
        std::fs::read(file).map_err(|e| Finding {
            file: file.clone(),
            line: 0,
            problem: Problem::NotRecord(format!("cannot read: {e}")),
        })
    };
    let mut head: Option<Head> = None;
    let mut verified = Verified {
        lines: 0,
        first: None,
        head: Head::genesis(),
        transcripts_checked: 0,
    };
    for (index, file) in files.iter().enumerate() {
        // One file in memory at a time: rotated logs add up.
        let data = read(file)?;
        for (number, line) in lines(&data).enumerate() {
            let at = |problem| Finding {
                file: files[index].clone(),
                line: number + 1,
                problem,
            };
            let sealed = unseal(line).map_err(at)?;
            let fields = &sealed.fields;
            let line_mac = match (fields.hash.starts_with("hmac-sha256:"), &mac) {
                (true, Some(mac)) => mac.clone(),
                (true, None) => return Err(at(Problem::KeyNeeded)),
                (false, Some(_)) => return Err(at(Problem::NotKeyed)),
                (false, None) => Mac::Sha256,
            };
            if line_mac.digest(&sealed.content) != fields.hash {
                return Err(at(Problem::Edited));
            }
            match &head {
                None => {
                    if fields.seq == 1 && fields.prev != GENESIS {
                        return Err(at(Problem::Replaced));
                    }
                    verified.first = Some((fields.seq, fields.prev.clone()));
                }
                Some(before) => {
                    let expected = before.seq + 1;
                    if fields.prev == GENESIS && fields.seq == 1 {
                        return Err(at(Problem::Restarted { after: before.seq }));
                    }
                    if fields.seq > expected {
                        let rest = &data[line.as_ptr() as usize - data.as_ptr() as usize + line.len()..];
                        let later = seq_appears_later(rest, &files[index + 1..], expected);
                        let problem = if later {
                            Problem::Reordered {
                                expected,
                                found: fields.seq,
                            }
                        } else {
                            Problem::Removed {
                                expected,
                                found: fields.seq,
                            }
                        };
                        return Err(at(problem));
                    }
                    if fields.seq < expected {
                        return Err(at(Problem::Reordered {
                            expected,
                            found: fields.seq,
                        }));
                    }
                    if fields.prev != before.hash {
                        return Err(at(Problem::Replaced));
                    }
                }
            }
            if let (Some(dir), Some("session_end"), Some(name), Some(sha)) = (
                transcripts,
                fields.event.as_deref(),
                &fields.transcript,
                &fields.transcript_sha256,
            ) {
                check_transcript(dir, name, sha).map_err(at)?;
                verified.transcripts_checked += 1;
            }
            verified.lines += 1;
            head = Some(Head {
                seq: fields.seq,
                hash: fields.hash.clone(),
            });
        }
    }
    if let Some(head) = head {
        verified.head = head;
    }
    Ok(verified)
}

fn check_transcript(dir: &Path, name: &str, sha: &str) -> Result<(), Problem> {
    let problem = |detail: String| Problem::Transcript {
        name: name.to_string(),
        detail,
    };
    // A name with a path in it would check some other file.
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(problem("not a transcript file name".into()));
    }
    let data = std::fs::read(dir.join(name)).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let actual = hex::encode(Sha256::digest(&data));
    if actual != sha {
        return Err(problem(format!(
            "altered: its SHA-256 is {actual}, the audit log bound {sha}"
        )));
    }
    Ok(())
}

/// The lines of a file, without their newline; a last line without one counts too.
fn lines(data: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n').filter(move |_| !data.is_empty())
}

/// Whether a line in `rest` (what follows the current line) or in the later `files` has `seq`.
fn seq_appears_later(rest: &[u8], files: &[PathBuf], seq: u64) -> bool {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    let has = |data: &[u8]| lines(data).any(|l| serde_json::from_slice::<Seq>(l).is_ok_and(|s| s.seq == seq));
    has(rest) || files.iter().any(|f| std::fs::read(f).is_ok_and(|data| has(&data)))
}

/// Where the chain in `path` ends: its last line's seq and hash. `Ok(None)` for a missing
/// or empty file, or one whose last line is no chained record (an older log). Also says
/// whether the file ends without a newline (a write cut short), so that the next line
/// can start on a line of its own.
pub fn last_head(path: &Path) -> std::io::Result<(Option<Head>, bool)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((None, false));
    }
    let start = len.saturating_sub(MAX_TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(MAX_TAIL).read_to_end(&mut tail)?;
    let torn = tail.last() != Some(&b'\n');
    let head = lines(&tail)
        .rev()
        .find(|l| !l.is_empty())
        .and_then(|l| unseal(l).ok())
        .map(|s| Head {
            seq: s.fields.seq,
            hash: s.fields.hash,
        });
    Ok((head.filter(|_| !torn), torn))
}

/// The head file beside the log (`<log>.head`): the chain's end, for a restart that finds
/// the log rotated away. Fixed length, rewritten in place after every line.
pub const HEAD_RECORD_LEN: usize = 160;

pub fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".head");
    PathBuf::from(name)
}

pub fn head_record(head: &Head) -> Vec<u8> {
    let mut record = format!("{{\"seq\":{},\"hash\":\"{}\"}}", head.seq, head.hash).into_bytes();
    record.resize(HEAD_RECORD_LEN - 1, b' ');
    record.push(b'\n');
    record
}

pub fn read_head_record(path: &Path) -> Option<Head> {
    #[derive(Deserialize)]
    struct Record {
        seq: u64,
        hash: String,
    }
    let data = std::fs::read(path).ok()?;
    let record: Record = serde_json::from_slice(data.trim_ascii()).ok()?;
    Some(Head {
        seq: record.seq,
        hash: record.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64, mac: &Mac) -> Vec<Vec<u8>> {
        let mut head = Head::genesis();
        (0..n)
            .map(|i| {
                let event = format!("{{\"event\":\"request\",\"session\":\"s{i}\"}}");
                let (line, next) = seal(&head, mac, "2024-01-02T03:04:05.678Z", event.as_bytes());
                head = next;
                line
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, lines: &[Vec<u8>]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, lines.concat()).unwrap();
        path
    }

    #[test]
    fn sealed_lines_are_json_with_the_chain_fields_and_the_hash_last() {
        let lines = chain(2, &Mac::Sha256);
        let first: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
        let second: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["session"], "s0");
        assert_eq!(second["prev"], first["hash"]);
        let text = String::from_utf8(lines[1].clone()).unwrap();
        assert!(
            text.starts_with("{\"time\":\"2024-01-02T03:04:05.678Z\",\"seq\":2,\"event\""),
            "{text}"
        );
        assert!(
            text.ends_with("\"}\n") && text.contains(",\"hash\":\"sha256:"),
            "{text}"
        );
        // The hash is SHA-256 over the line without its hash member.
        let content = text.split(",\"hash\":").next().unwrap().to_string() + "}";
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(content.as_bytes())));
        assert_eq!(second["hash"], expected.as_str());
    }

    #[test]
    fn an_intact_chain_verifies_across_files() {
        let dir = crate::config::test_dir("chain-ok");
        let lines = chain(5, &Mac::Sha256);
        let old = write(&dir, "audit.jsonl.1", &lines[..3]);
        let new = write(&dir, "audit.jsonl", &lines[3..]);
        let v = verify(&[old, new.clone()], None, None).unwrap();
        assert_eq!((v.lines, v.head.seq), (5, 5));
        // The newer file alone continues a chain from elsewhere: fine, and said.
        let v = verify(&[new], None, None).unwrap();
        assert_eq!(v.first.unwrap().0, 4);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn finding(dir: &Path, lines: &[Vec<u8>], key: Option<&[u8]>) -> (usize, Problem) {
        let path = write(dir, "audit.jsonl", lines);
        let f = verify(&[path], key, None).unwrap_err();
        (f.line, f.problem)
    }

    #[test]
    fn tampering_is_found_at_the_first_bad_line_and_named() {
        let dir = crate::config::test_dir("chain-bad");
        let lines = chain(6, &Mac::Sha256);

        let mut edited = lines.clone();
        let pos = edited[2].iter().position(|&b| b == b's').unwrap();
        edited[2][pos + 8] ^= 1;
        let (line, problem) = finding(&dir, &edited, None);
        assert_eq!((line, &problem), (3, &Problem::Edited), "{problem}");

        let mut removed = lines.clone();
        removed.remove(3);
        assert_eq!(
            finding(&dir, &removed, None),
            (4, Problem::Removed { expected: 4, found: 5 })
        );

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(
            finding(&dir, &swapped, None),
            (2, Problem::Reordered { expected: 2, found: 3 })
        );

        let mut last_removed = lines.clone();
        last_removed.remove(0);
        // Without its first line the file reads as a continuation: nothing to prove otherwise.
        assert!(verify(&[write(&dir, "audit.jsonl", &last_removed)], None, None).is_ok());

        // A line rewritten with a fresh, valid hash breaks the link to the next one.
        let mut replaced = lines.clone();
        let event = b"{\"event\":\"request\",\"session\":\"forged\"}";
        let before: Fields = serde_json::from_slice(&lines[1]).unwrap();
        let head = Head {
            seq: before.seq,
            hash: before.hash,
        };
        replaced[2] = seal(&head, &Mac::Sha256, "2024-01-02T03:04:05.678Z", event).0;
        assert_eq!(finding(&dir, &replaced, None), (4, Problem::Replaced));

        let mut restarted = lines[..2].to_vec();
        restarted.extend(chain(2, &Mac::Sha256));
        assert_eq!(finding(&dir, &restarted, None), (3, Problem::Restarted { after: 2 }));

        let mut garbage = lines.clone();
        garbage[4] = b"{\"event\":\"request\"}\n".to_vec();
        assert!(matches!(finding(&dir, &garbage, None), (5, Problem::NotRecord(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keyed_chains_need_the_key_and_refuse_plain_lines() {
        let dir = crate::config::test_dir("chain-keyed");
        let key = b"0123456789abcdef0123456789abcdef";
        let keyed = chain(3, &Mac::keyed(key));
        let path = write(&dir, "audit.jsonl", &keyed);
        assert!(verify(std::slice::from_ref(&path), Some(key), None).is_ok());
        assert_eq!(finding(&dir, &keyed, None), (1, Problem::KeyNeeded));
        assert_eq!(finding(&dir, &keyed, Some(b"another key")), (1, Problem::Edited));
        // Rewritten without the key (valid plain hashes): refused when the key is given.
        let plain = chain(3, &Mac::Sha256);
        assert_eq!(finding(&dir, &plain, Some(key)), (1, Problem::NotKeyed));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn transcripts_bound_at_session_end_are_checked() {
        let dir = crate::config::test_dir("chain-transcripts");
        std::fs::write(dir.join("t1.jsonl"), b"recorded\n").unwrap();
        let sha = hex::encode(Sha256::digest(b"recorded\n"));
        let event =
            format!("{{\"event\":\"session_end\",\"transcript\":\"t1.jsonl\",\"transcript_sha256\":\"{sha}\"}}");
        let line = seal(&Head::genesis(), &Mac::Sha256, "t", event.as_bytes()).0;
        let path = write(&dir, "audit.jsonl", &[line]);
        let v = verify(std::slice::from_ref(&path), None, Some(&dir)).unwrap();
        assert_eq!(v.transcripts_checked, 1);
        std::fs::write(dir.join("t1.jsonl"), b"recorded!\n").unwrap();
        let f = verify(std::slice::from_ref(&path), None, Some(&dir)).unwrap_err();
        assert!(f.to_string().contains("transcript t1.jsonl: altered"), "{f}");
        std::fs::remove_file(dir.join("t1.jsonl")).unwrap();
        let f = verify(&[path], None, Some(&dir)).unwrap_err();
        assert!(f.to_string().contains("cannot read it"), "{f}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_last_head_is_read_back_and_a_torn_end_is_noticed() {
        let dir = crate::config::test_dir("chain-head");
        let lines = chain(3, &Mac::Sha256);
        let path = write(&dir, "audit.jsonl", &lines);
        let third: Fields = serde_json::from_slice(&lines[2]).unwrap();
        let (head, torn) = last_head(&path).unwrap();
        assert_eq!(
            head.unwrap(),
            Head {
                seq: 3,
                hash: third.hash.clone()
            }
        );
        assert!(!torn);
        let mut cut = lines.concat();
        cut.truncate(cut.len() - 10);
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(last_head(&path).unwrap(), (None, true));
        assert_eq!(last_head(&dir.join("missing")).unwrap(), (None, false));

        let record = head_record(&Head {
            seq: 3,
            hash: third.hash.clone(),
        });
        assert_eq!(record.len(), HEAD_RECORD_LEN);
        std::fs::write(head_path(&path), &record).unwrap();
        assert_eq!(read_head_record(&head_path(&path)).unwrap().hash, third.hash);
        let _ = std::fs::remove_dir_all(dir);
    }
}
