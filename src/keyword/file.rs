//! `keywords.bin`, the keyword index in a snapshot (snapshot format 8 on). Layout, all
//! little-endian: a 64-byte header (magic `MGRYKWDS`, format version u32 at 8, context window
//! u32 at 12, records u64 at 16, groups u64 at 24, terms u64 at 32, postings u64 at 40, zeros,
//! crc32 of bytes 0..60 at 60); then per record (by slot) 12 bytes: words u16, date words u8,
//! live u8, group u32, position in the group u32; per group 20 bytes: key u64, project key
//! u64, records u32, then its records' slots (u32 each); per term: byte length u16, the UTF-8
//! bytes, postings u32, then 8 bytes per posting: slot u32, text tf u16, date tf u8, zero u8.
//! Only live records' postings are written. The manifest holds the file's crc32; the reader
//! checks every count against the bytes left before it allocates, and every field.

use super::index::{Doc, Group, KeywordIndex, Posting};
use crate::disk::files::{table_header, u32_at, u64_at, TABLE_HEADER};
use crate::error::{Error, Result};
use std::path::Path;

/// Keyword index file format version. 1: the first (snapshot format 8).
pub(crate) const KEYWORDS_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MGRYKWDS";
const DOC_BYTES: usize = 12;
const GROUP_BYTES: usize = 20;
const POSTING_BYTES: usize = 8;

/// The bytes of `keywords.bin` for `ix`.
pub(crate) fn encode(ix: &KeywordIndex) -> Vec<u8> {
    let (terms, docs, groups) = ix.parts();
    let npostings: usize = terms.iter().map(|(_, p)| p.len()).sum();
    let mut b = vec![0u8; TABLE_HEADER];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&KEYWORDS_FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(ix.window() as u32).to_le_bytes());
    b[16..24].copy_from_slice(&(docs.len() as u64).to_le_bytes());
    b[24..32].copy_from_slice(&(groups.len() as u64).to_le_bytes());
    b[32..40].copy_from_slice(&(terms.len() as u64).to_le_bytes());
    b[40..48].copy_from_slice(&(npostings as u64).to_le_bytes());
    let hcrc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&hcrc.to_le_bytes());
    for d in docs {
        b.extend_from_slice(&d.len.to_le_bytes());
        b.push(d.date_len);
        b.push(u8::from(d.live));
        b.extend_from_slice(&d.group.to_le_bytes());
        b.extend_from_slice(&d.pos.to_le_bytes());
    }
    for g in groups {
        b.extend_from_slice(&g.key.to_le_bytes());
        b.extend_from_slice(&g.project.to_le_bytes());
        b.extend_from_slice(&(g.slots.len() as u32).to_le_bytes());
    }
    for g in groups {
        for s in &g.slots {
            b.extend_from_slice(&s.to_le_bytes());
        }
    }
    for (t, ps) in terms {
        // Words are at most MAX_WORD_BYTES (64) long, so the length fits.
        b.extend_from_slice(&(t.len() as u16).to_le_bytes());
        b.extend_from_slice(t.as_bytes());
        b.extend_from_slice(&(ps.len() as u32).to_le_bytes());
        for p in ps {
            b.extend_from_slice(&p.slot.to_le_bytes());
            b.extend_from_slice(&p.tf.to_le_bytes());
            b.push(p.date_tf);
            b.push(0);
        }
    }
    b
}

/// A bounds-checked reader over the file's bytes: every read that would run past the end is
/// an error naming the offset.
struct Cursor<'a> {
    path: &'a Path,
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bad(&self, why: impl Into<String>) -> Error {
        Error::corrupted(self.path, self.at as u64, why.into())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return Err(self.bad(format!("cut short in {what}")));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Checks that `count` entries of `each` bytes fit in what is left, before allocating.
    fn fits(&self, count: u64, each: usize, what: &str) -> Result<usize> {
        let left = (self.b.len() - self.at) as u64;
        match count.checked_mul(each as u64) {
            Some(n) if n <= left => Ok(count as usize),
            _ => Err(self.bad(format!("{count} {what} do not fit in {left} bytes"))),
        }
    }
}

/// The keyword index in `bytes`, the file at `path` (its crc32 already checked against the
/// manifest): the header, every count and every field are checked; corruption is an error
/// naming the file and offset.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<KeywordIndex> {
    let h = table_header(
        path,
        bytes,
        &MAGIC,
        "keyword index",
        KEYWORDS_FORMAT_VERSION,
    )?;
    if h[48..60].iter().any(|x| *x != 0) {
        return Err(Error::corrupted(
            path,
            48,
            "reserved header bytes are not zero",
        ));
    }
    let window = u32_at(h, 12) as usize;
    let mut c = Cursor {
        path,
        b: bytes,
        at: TABLE_HEADER,
    };
    let ndocs = c.fits(u64_at(h, 16), DOC_BYTES, "records")?;
    let ngroups = c.fits(u64_at(h, 24), GROUP_BYTES, "groups")?;
    let nterms = c.fits(u64_at(h, 32), 6, "terms")?;
    let npostings = c.fits(u64_at(h, 40), POSTING_BYTES, "postings")?;
    let mut docs = Vec::with_capacity(ndocs);
    for _ in 0..ndocs {
        let e = c.take(DOC_BYTES, "records")?;
        let live = match e[3] {
            0 => false,
            1 => true,
            x => return Err(c.bad(format!("live flag {x}"))),
        };
        docs.push(Doc {
            len: u16::from_le_bytes([e[0], e[1]]),
            date_len: e[2],
            live,
            group: u32_at(e, 4),
            pos: u32_at(e, 8),
        });
    }
    let mut groups = Vec::with_capacity(ngroups);
    for _ in 0..ngroups {
        let e = c.take(GROUP_BYTES, "groups")?;
        groups.push((u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)));
    }
    let mut full = Vec::with_capacity(ngroups);
    for (key, project, n) in groups {
        let n = c.fits(u64::from(n), 4, "group slots")?;
        let raw = c.take(n * 4, "group slots")?;
        full.push(Group {
            key,
            project,
            slots: raw.chunks_exact(4).map(|s| u32_at(s, 0)).collect(),
        });
    }
    let mut terms = Vec::with_capacity(nterms);
    let mut seen = 0usize;
    for _ in 0..nterms {
        let len = c.take(2, "terms")?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let at = c.at;
        let word = std::str::from_utf8(c.take(len, "terms")?)
            .map_err(|_| Error::corrupted(path, at as u64, "a term is not UTF-8"))?
            .to_string();
        let n = u32_at(c.take(4, "terms")?, 0);
        let n = c.fits(u64::from(n), POSTING_BYTES, "postings")?;
        seen += n;
        let raw = c.take(n * POSTING_BYTES, "postings")?;
        let ps = raw
            .chunks_exact(POSTING_BYTES)
            .map(|p| Posting {
                slot: u32_at(p, 0),
                tf: u16::from_le_bytes([p[4], p[5]]),
                date_tf: p[6],
            })
            .collect();
        terms.push((word, ps));
    }
    if seen != npostings || c.at != bytes.len() {
        return Err(c.bad(format!(
            "{seen} postings and {} bytes left; the header says {npostings} and none",
            bytes.len() - c.at
        )));
    }
    KeywordIndex::from_parts(window, terms, docs, full)
        .map_err(|why| Error::corrupted(path, TABLE_HEADER as u64, why))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> KeywordIndex {
        let mut ix = KeywordIndex::new(2);
        let turns = [
            ("Melanie said, \"I ran a charity race last Saturday\"", "s1"),
            ("Caroline said, \"Which race? The 5k?\"", "s1"),
            ("Melanie said, \"Yes, for mental health\"", "s1"),
            ("Caroline said, \"I went to a support group\"", "s2"),
        ];
        for (i, (t, s)) in turns.iter().enumerate() {
            ix.add(i as u32, t, Some("locomo"), Some(s), 1_683_554_160_000_000);
        }
        ix.remove(2);
        ix
    }

    #[test]
    fn an_index_reads_back_as_written() {
        let ix = sample();
        let b = encode(&ix);
        let back = decode(Path::new("keywords.bin"), &b).unwrap();
        assert_eq!(back.differs(&ix), None);
        let q = |ix: &KeywordIndex| ix.search("charity race", None, |_| true).best(100);
        assert_eq!(q(&back), q(&ix));
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_an_error_or_the_same_index() {
        let ix = sample();
        let b = encode(&ix);
        for n in 0..b.len() {
            assert!(decode(Path::new("k"), &b[..n]).is_err(), "cut at {n}");
        }
        for at in 0..b.len() {
            let mut x = b.clone();
            x[at] ^= 0x41;
            // Never a panic; a flipped byte that still decodes must be consistent enough to
            // search (the manifest's crc32 is what rejects it in a snapshot).
            if let Ok(d) = decode(Path::new("k"), &x) {
                let _ = d.search("race support group", Some("locomo"), |_| true);
            }
        }
    }
}
