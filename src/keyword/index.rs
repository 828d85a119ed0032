//! The keyword index: an inverted index over every live record's words, kept by the
//! projections in log order (so it never lags the record table), and BM25 over it.
//!
//! A record is scored as a *context document*: its own words count twice, the words of the
//! `window` records before and after it in the same conversation (same project and session,
//! in insertion order) once each, and the words of its date (UTC: day, month, year) once.
//! Agents ask about a turn with the words of the turns around it ("what did she say after
//! the race?"), and about when things happened; on LoCoMo this context took keyword recall@5
//! from 58 % to 70 % (see docs/benchmarks.md). The context is combined at query time from
//! each record's own postings, so an insert never rewrites its neighbours' entries.

use super::tokenize::{date_words, is_stop_word, stem, surface_words};
use crate::util::{fnv64, FastMap};

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// Weight of a record's own words against its neighbours'.
const OWN_WEIGHT: u32 = 2;
/// The surface cache's mark of a stop word.
const STOP: u32 = u32::MAX;
/// Widest context window a store may ask for.
pub(crate) const MAX_WINDOW: usize = 8;

/// One record's occurrences of one word: in its text, and in its date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Posting {
    pub(crate) slot: u32,
    pub(crate) tf: u16,
    pub(crate) date_tf: u8,
}

/// One record as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Doc {
    /// Words of its text (saturating).
    pub(crate) len: u16,
    /// Words of its date.
    pub(crate) date_len: u8,
    pub(crate) live: bool,
    /// Its conversation, and its place in it.
    pub(crate) group: u32,
    pub(crate) pos: u32,
}

/// The records of one project and session, in insertion order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Group {
    /// Its project and session, hashed.
    pub(crate) key: u64,
    /// `project_key` of the project.
    pub(crate) project: u64,
    pub(crate) slots: Vec<u32>,
}

/// Live records of a corpus (a project, or the whole store) and the sum of their context
/// documents' lengths, for BM25's document count and average length.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Corpus {
    docs: u64,
    len_sum: u64,
}

/// The key of a project's corpus (0: records without a project).
pub(crate) fn project_key(project: Option<&str>) -> u64 {
    project.map_or(0, |p| fnv64(p.as_bytes()) | 1)
}

fn group_key(project: Option<&str>, session: Option<&str>) -> u64 {
    let s = session.map_or(0, |s| fnv64(s.as_bytes()).rotate_left(29) | 1);
    project_key(project) ^ s
}

/// The inverted index. See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeywordIndex {
    window: usize,
    term_ids: FastMap<Box<str>, u32>,
    terms: Vec<Box<str>>,
    /// By term id; slots ascending (records are added in slot order).
    postings: Vec<Vec<Posting>>,
    /// By slot.
    docs: Vec<Doc>,
    groups: Vec<Group>,
    group_ids: FastMap<u64, u32>,
    /// Each project's groups (derived from `groups`): a project's records without a scan.
    project_groups: FastMap<u64, Vec<u32>>,
    corpora: FastMap<u64, Corpus>,
    all: Corpus,
    /// Words as written → term id (`STOP` for a stop word): each distinct word is checked
    /// and stemmed once (a cache, not state).
    surface: FastMap<Box<str>, u32>,
    /// The day (since the epoch) of the last record added and its date's term ids (a cache).
    last_day: Option<(u64, Vec<u32>)>,
    /// While a snapshot's index is read in the background (see [`KeywordIndex::deferred`]):
    /// the changes the replay and new writes made meanwhile, in log order.
    pending: Option<Vec<Change>>,
    /// The snapshot's index could not be read: the damage, as an error message.
    damage: Option<(std::path::PathBuf, String)>,
}

/// A change to apply once a deferred index is read.
#[derive(Debug, Clone)]
enum Change {
    Add {
        slot: u32,
        text: Box<str>,
        project: Option<Box<str>>,
        session: Option<Box<str>>,
        ts_us: u64,
    },
    Remove(u32),
}

/// Each term with live postings, and those postings.
pub(crate) type LiveTerms<'a> = Vec<(&'a str, Vec<Posting>)>;

/// What one search scored: every visible record that shares a word with the query (through
/// its context), and its BM25 score.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scores {
    /// By slot (0: no match).
    score: Vec<f32>,
    /// The slots that scored, in no order.
    hits: Vec<u32>,
}

impl Scores {
    /// The score of the record in `slot`, if it matched.
    pub(crate) fn get(&self, slot: u32) -> Option<f32> {
        self.score.get(slot as usize).copied().filter(|s| *s > 0.0)
    }

    /// The best `n`, best first (ties: the older record first).
    pub(crate) fn best(&self, n: usize) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = self
            .hits
            .iter()
            .map(|s| (*s, self.score[*s as usize]))
            .collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if v.len() > n && n > 0 {
            v.select_nth_unstable_by(n - 1, order);
            v.truncate(n);
        }
        v.sort_by(order);
        v
    }
}

impl KeywordIndex {
    /// An empty index whose context documents take `window` records on each side.
    pub(crate) fn new(window: usize) -> KeywordIndex {
        KeywordIndex {
            window: window.min(MAX_WINDOW),
            ..KeywordIndex::default()
        }
    }

    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// An index to be read from a snapshot later (by the indexer thread, so that open does not
    /// wait for it): changes are kept until [`KeywordIndex::resolve`] applies them to it.
    pub(crate) fn deferred(window: usize) -> KeywordIndex {
        KeywordIndex {
            pending: Some(Vec::new()),
            ..KeywordIndex::new(window)
        }
    }

    /// The live records of `project` (`None`: records without one), in no particular order,
    /// or `None` while the snapshot's index is still to be read.
    pub(crate) fn project_slots(&self, project: Option<&str>) -> Option<Vec<u32>> {
        if self.pending.is_some() || self.damage.is_some() {
            return None;
        }
        Some(
            self.project_groups
                .get(&project_key(project))
                .into_iter()
                .flatten()
                .flat_map(|g| self.groups[*g as usize].slots.iter().copied())
                .filter(|s| self.docs.get(*s as usize).is_some_and(|d| d.live))
                .collect(),
        )
    }

    /// The number of live records of `project`, or `None` while the snapshot's index is still
    /// to be read.
    pub(crate) fn project_count(&self, project: Option<&str>) -> Option<u64> {
        if self.pending.is_some() || self.damage.is_some() {
            return None;
        }
        Some(
            self.corpora
                .get(&project_key(project))
                .map_or(0, |c| c.docs),
        )
    }

    /// False when the index, read and undamaged, places the live record in `slot` in a
    /// project other than the one `project_key` names; true otherwise (the caller confirms
    /// a match against the record). A project filter's check for the points a walk visits:
    /// two array reads instead of the record's row.
    pub(crate) fn may_be_in_project(&self, slot: u32, project_key: u64) -> bool {
        if self.pending.is_some() || self.damage.is_some() {
            return true;
        }
        match self.docs.get(slot as usize) {
            Some(d) if d.live => self
                .groups
                .get(d.group as usize)
                .is_none_or(|g| g.project == project_key),
            _ => true,
        }
    }

    /// Whether the snapshot's index is still to be read (searches wait for it).
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes the snapshot's index `loaded` in place of this deferred one, with the changes
    /// made since applied in order.
    pub(crate) fn resolve(&mut self, mut loaded: KeywordIndex) {
        let changes = self.pending.take().unwrap_or_default();
        loaded.set_window(self.window);
        for c in changes {
            match c {
                Change::Add {
                    slot,
                    text,
                    project,
                    session,
                    ts_us,
                } => loaded.add(slot, &text, project.as_deref(), session.as_deref(), ts_us),
                Change::Remove(slot) => loaded.remove(slot),
            }
        }
        *self = loaded;
    }

    /// The snapshot's index could not be read (`why`, about the file at `path`): searches fail
    /// with it as damage until the store is reopened.
    pub(crate) fn fail(&mut self, path: std::path::PathBuf, why: String) {
        self.pending = None;
        self.damage = Some((path, why));
    }

    /// The damage [`KeywordIndex::fail`] recorded.
    pub(crate) fn damage(&self) -> Option<crate::error::Error> {
        self.damage
            .as_ref()
            .map(|(p, why)| crate::error::Error::corrupted(p, 0, why.clone()))
    }

    /// Takes `window` records on each side into each context document from now on.
    pub(crate) fn set_window(&mut self, window: usize) {
        let window = window.min(MAX_WINDOW);
        if window != self.window {
            self.window = window;
            if self.pending.is_none() {
                self.recount();
            }
        }
    }

    /// Counts the corpus figures again from the live records' context documents.
    fn recount(&mut self) {
        self.all = Corpus::default();
        self.corpora.clear();
        for slot in 0..self.docs.len() as u32 {
            if self.docs[slot as usize].live {
                let len = self.context_len(slot);
                self.tally(slot, len, true);
            }
        }
    }

    /// Indexes the record in `slot` (slots come in ascending order, each once).
    pub(crate) fn add(
        &mut self,
        slot: u32,
        text: &str,
        project: Option<&str>,
        session: Option<&str>,
        ts_us: u64,
    ) {
        if let Some(p) = &mut self.pending {
            p.push(Change::Add {
                slot,
                text: text.into(),
                project: project.map(Into::into),
                session: session.map(Into::into),
                ts_us,
            });
            return;
        }
        debug_assert!(self.docs.get(slot as usize).is_none_or(|d| !d.live));
        // (term, count in the text, count in the date); a record has few distinct words, so
        // a scan beats a map.
        let mut counts: Vec<(u32, u16, u8)> = Vec::new();
        let mut len = 0u16;
        surface_words(text, |w| {
            let t = self.surface_term(w);
            if t == STOP {
                return;
            }
            len = len.saturating_add(1);
            match counts.iter_mut().find(|c| c.0 == t) {
                Some(c) => c.1 = c.1.saturating_add(1),
                None => counts.push((t, 1, 0)),
            }
        });
        let date = self.date_terms(ts_us);
        let date_len = date.len();
        for &t in date {
            match counts.iter_mut().find(|c| c.0 == t) {
                Some(c) => c.2 = c.2.saturating_add(1),
                None => counts.push((t, 0, 1)),
            }
        }
        for (t, tf, date_tf) in counts {
            let p = &mut self.postings[t as usize];
            debug_assert!(p.last().is_none_or(|l| l.slot < slot));
            p.push(Posting { slot, tf, date_tf });
        }
        let key = group_key(project, session);
        let next = self.groups.len() as u32;
        let group = *self.group_ids.entry(key).or_insert(next);
        if group == next {
            self.groups.push(Group {
                key,
                project: project_key(project),
                slots: Vec::new(),
            });
            self.project_groups
                .entry(project_key(project))
                .or_default()
                .push(group);
        }
        let g = &mut self.groups[group as usize];
        let pos = g.slots.len() as u32;
        g.slots.push(slot);
        if self.docs.len() <= slot as usize {
            self.docs.resize(slot as usize + 1, Doc::default());
        }
        self.docs[slot as usize] = Doc {
            len,
            date_len: date_len.min(255) as u8,
            live: true,
            group,
            pos,
        };
        self.count(slot, true);
    }

    /// Forgets the record in `slot` (deleted, superseded, expired). Its postings stay until
    /// the next snapshot leaves them out; searches skip them.
    pub(crate) fn remove(&mut self, slot: u32) {
        if let Some(p) = &mut self.pending {
            p.push(Change::Remove(slot));
            return;
        }
        if self.docs.get(slot as usize).is_some_and(|d| d.live) {
            self.count(slot, false);
            self.docs[slot as usize].live = false;
        }
    }

    /// The term of a word as written, stemming it only the first time it is seen.
    fn surface_term(&mut self, w: &str) -> u32 {
        if let Some(t) = self.surface.get(w) {
            return *t;
        }
        let t = if is_stop_word(w) {
            STOP
        } else {
            self.term_id(&stem(w))
        };
        self.surface.insert(w.into(), t);
        t
    }

    /// The terms of the date of `ts_us` (records come in bursts of one day).
    fn date_terms(&mut self, ts_us: u64) -> &[u32] {
        let day = ts_us / 86_400_000_000;
        if self.last_day.as_ref().is_none_or(|(d, _)| *d != day) {
            let terms: Vec<u32> = date_words(ts_us).iter().map(|w| self.term_id(w)).collect();
            self.last_day = Some((day, terms));
        }
        self.last_day.as_ref().map_or(&[], |(_, t)| t)
    }

    fn term_id(&mut self, w: &str) -> u32 {
        if let Some(t) = self.term_ids.get(w) {
            return *t;
        }
        let t = self.terms.len() as u32;
        self.terms.push(w.into());
        self.term_ids.insert(w.into(), t);
        self.postings.push(Vec::new());
        t
    }

    /// The live records around `slot` in its conversation (not itself).
    fn neighbours(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let d = self.docs[slot as usize];
        let g = &self.groups[d.group as usize].slots;
        let pos = d.pos as usize;
        let lo = pos.saturating_sub(self.window);
        let hi = (pos + self.window + 1).min(g.len());
        g[lo..hi]
            .iter()
            .copied()
            .filter(move |s| *s != slot && self.docs[*s as usize].live)
    }

    /// Length of the context document of the live record in `slot`.
    fn context_len(&self, slot: u32) -> u64 {
        let d = self.docs[slot as usize];
        let own = u64::from(d.len) * u64::from(OWN_WEIGHT) + u64::from(d.date_len);
        own + self
            .neighbours(slot)
            .map(|s| u64::from(self.docs[s as usize].len))
            .sum::<u64>()
    }

    /// Adds (or takes away) the live record in `slot` to its corpora: its context document,
    /// and its words in each neighbour's.
    fn count(&mut self, slot: u32, add: bool) {
        let d = self.docs[slot as usize];
        let n = self.neighbours(slot).count() as u64;
        let len = self.context_len(slot) + n * u64::from(d.len);
        self.tally(slot, len, add);
    }

    /// Adds (or takes away) one record and `len` of context length to the whole store's
    /// corpus and to its project's.
    fn tally(&mut self, slot: u32, len: u64, add: bool) {
        let project = self.groups[self.docs[slot as usize].group as usize].project;
        for c in [&mut self.all, self.corpora.entry(project).or_default()] {
            if add {
                c.docs += 1;
                c.len_sum += len;
            } else {
                c.docs = c.docs.saturating_sub(1);
                c.len_sum = c.len_sum.saturating_sub(len);
            }
        }
    }

    /// BM25 of the query's words against the context document of every record that passes
    /// `visible`, with the document count, frequencies and average length of `project`'s
    /// records (of the whole store when `None`). Records sharing no word score nothing and
    /// are not in the result. A query of stop words alone scores nothing, and so does a word
    /// in nine records of ten or more (its idf is near 0; skipping it saves a pass over
    /// nearly every record).
    pub(crate) fn search(
        &self,
        query: &str,
        project: Option<&str>,
        mut visible: impl FnMut(u32) -> bool,
    ) -> Scores {
        let mut qterms: Vec<(u32, u32)> = Vec::new();
        surface_words(query, |w| {
            let t = match self.surface.get(w) {
                Some(t) => Some(t).filter(|t| **t != STOP),
                None if is_stop_word(w) => None,
                None => self.term_ids.get(&*stem(w)),
            };
            if let Some(t) = t {
                match qterms.iter_mut().find(|(x, _)| x == t) {
                    Some((_, n)) => *n += 1,
                    None => qterms.push((*t, 1)),
                }
            }
        });
        let (key, corpus) = match project {
            Some(p) => {
                let k = project_key(Some(p));
                (Some(k), self.corpora.get(&k).copied().unwrap_or_default())
            }
            None => (None, self.all),
        };
        let nd = self.docs.len();
        let mut out = Scores {
            score: Vec::new(),
            hits: Vec::new(),
        };
        qterms.retain(|(t, _)| {
            let df = self.postings[*t as usize].len() as u64;
            self.all.docs < 64 || df * 10 < self.all.docs * 9
        });
        if qterms.is_empty() || corpus.docs == 0 {
            return out;
        }
        out.score = vec![0.0; nd];
        let n = corpus.docs as f32;
        let avg_len = (corpus.len_sum as f32 / n).max(1.0);
        // Scratch by slot: term frequency in the context document, visibility (0 unknown,
        // 1 visible, 2 not), context length (negative: not yet computed).
        let mut tf = vec![0u32; nd];
        let mut seen = vec![0u8; nd];
        let mut lens = vec![-1.0f32; nd];
        let mut touched: Vec<u32> = Vec::new();
        for (t, times) in qterms {
            let mut add = |s: u32, x: u32| {
                let f = &mut tf[s as usize];
                if *f == 0 {
                    touched.push(s);
                }
                *f += x;
            };
            for p in &self.postings[t as usize] {
                if !self.docs[p.slot as usize].live {
                    continue;
                }
                add(p.slot, u32::from(p.tf) * OWN_WEIGHT + u32::from(p.date_tf));
                if p.tf > 0 {
                    for s in self.neighbours(p.slot) {
                        add(s, u32::from(p.tf));
                    }
                }
            }
            let in_corpus = |s: u32| {
                key.is_none_or(|k| self.groups[self.docs[s as usize].group as usize].project == k)
            };
            let df = touched.iter().filter(|s| in_corpus(**s)).count() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln().max(0.0);
            for s in touched.drain(..) {
                let i = s as usize;
                let f = std::mem::take(&mut tf[i]) as f32;
                if seen[i] == 0 {
                    seen[i] = if visible(s) { 1 } else { 2 };
                }
                if seen[i] != 1 {
                    continue;
                }
                if lens[i] < 0.0 {
                    lens[i] = self.context_len(s) as f32;
                }
                let part = idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * lens[i] / avg_len));
                if part > 0.0 {
                    if out.score[i] == 0.0 {
                        out.hits.push(s);
                    }
                    out.score[i] += times as f32 * part;
                }
            }
        }
        out
    }

    /// The live records' entries, for a snapshot: every term with its live postings (terms
    /// with none left out), the records and their conversations.
    pub(crate) fn parts(&self) -> (LiveTerms<'_>, &[Doc], &[Group]) {
        // A checkpoint waits for a deferred index to be read.
        debug_assert!(self.pending.is_none());
        let terms = self
            .terms
            .iter()
            .zip(&self.postings)
            .filter_map(|(t, ps)| {
                let live: Vec<Posting> = ps
                    .iter()
                    .filter(|p| self.docs[p.slot as usize].live)
                    .copied()
                    .collect();
                (!live.is_empty()).then_some((&**t, live))
            })
            .collect();
        (terms, &self.docs, &self.groups)
    }

    /// The index a snapshot held (see [`KeywordIndex::parts`]); `Err` names what is
    /// inconsistent.
    pub(crate) fn from_parts(
        window: usize,
        terms: Vec<(String, Vec<Posting>)>,
        docs: Vec<Doc>,
        groups: Vec<Group>,
    ) -> Result<KeywordIndex, String> {
        if window > MAX_WINDOW {
            return Err(format!("context window {window} above {MAX_WINDOW}"));
        }
        for (g, group) in groups.iter().enumerate() {
            for (pos, s) in group.slots.iter().enumerate() {
                match docs.get(*s as usize) {
                    Some(d) if d.group as usize == g && d.pos as usize == pos => {}
                    _ => {
                        return Err(format!(
                            "group {g} names slot {s} at {pos}, which disagrees"
                        ))
                    }
                }
            }
        }
        for (slot, d) in docs.iter().enumerate() {
            if d.live
                && groups
                    .get(d.group as usize)
                    .and_then(|g| g.slots.get(d.pos as usize))
                    != Some(&(slot as u32))
            {
                return Err(format!("slot {slot} is not where its group says"));
            }
        }
        let mut ix = KeywordIndex::new(window);
        for (term, ps) in terms {
            if ps.windows(2).any(|w| w[0].slot >= w[1].slot)
                || ps
                    .iter()
                    .any(|p| docs.get(p.slot as usize).is_none_or(|d| !d.live))
            {
                return Err(format!(
                    "postings of {term:?} out of order or of a dead record"
                ));
            }
            let t = ix.term_id(&term);
            if !ix.postings[t as usize].is_empty() {
                return Err(format!("term {term:?} listed twice"));
            }
            ix.postings[t as usize] = ps;
        }
        ix.group_ids = FastMap::default();
        for (g, group) in groups.iter().enumerate() {
            if ix.group_ids.insert(group.key, g as u32).is_some() {
                return Err(format!("group key {:#x} listed twice", group.key));
            }
            ix.project_groups
                .entry(group.project)
                .or_default()
                .push(g as u32);
        }
        ix.docs = docs;
        ix.groups = groups;
        // The corpus figures are derived: each live record's context document, counted again.
        ix.recount();
        Ok(ix)
    }

    /// Where one index's live content differs from another's (the terms, postings and
    /// conversations of live records), for `verify`.
    pub(crate) fn differs(&self, other: &KeywordIndex) -> Option<String> {
        let live = |ix: &KeywordIndex| {
            let mut m: std::collections::BTreeMap<String, Vec<Posting>> = Default::default();
            for (t, ps) in ix.parts().0 {
                m.insert(t.to_string(), ps);
            }
            m
        };
        let (a, b) = (live(self), live(other));
        if let Some(t) = a.keys().chain(b.keys()).find(|t| a.get(*t) != b.get(*t)) {
            return Some(format!("keyword postings of {t:?} differ"));
        }
        if self.all.docs != other.all.docs {
            return Some(format!(
                "{} records in the keyword index vs {}",
                self.all.docs, other.all.docs
            ));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAY_2023: u64 = 1_683_554_160_000_000;

    fn conversation(window: usize) -> KeywordIndex {
        let mut ix = KeywordIndex::new(window);
        let turns = [
            "Melanie said, \"I ran a charity race last Saturday\"",
            "Caroline said, \"That's great! How did it go?\"",
            "Melanie said, \"Really well, it was for mental health\"",
            "Caroline said, \"I went to a support group yesterday\"",
            "Melanie said, \"Pottery is my favourite way to relax\"",
        ];
        for (i, t) in turns.iter().enumerate() {
            ix.add(i as u32, t, Some("c1"), Some("s1"), MAY_2023);
        }
        ix
    }

    fn ranked(ix: &KeywordIndex, q: &str) -> Vec<u32> {
        let best = ix.search(q, Some("c1"), |_| true).best(100);
        best.into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn the_record_holding_the_words_ranks_above_its_neighbours() {
        let ix = conversation(2);
        let r = ranked(&ix, "charity race");
        assert_eq!(r[0], 0);
        // Its neighbours match through their context; the record 3 away does not.
        assert!(r.contains(&1) && r.contains(&2), "{r:?}");
        assert!(!r.contains(&3) && !r.contains(&4), "{r:?}");
    }

    #[test]
    fn without_a_window_only_a_records_own_words_count() {
        let ix = conversation(0);
        assert_eq!(ranked(&ix, "charity race"), [0]);
        assert_eq!(ranked(&ix, "relaxing pottery"), [4]);
    }

    #[test]
    fn stop_words_and_unknown_words_match_nothing() {
        let ix = conversation(2);
        assert!(ranked(&ix, "what did they do with it?").is_empty());
        assert!(ranked(&ix, "zeppelin").is_empty());
    }

    #[test]
    fn a_records_date_is_searchable() {
        let mut ix = conversation(0);
        ix.add(
            5,
            "Caroline said, \"See you soon\"",
            Some("c1"),
            Some("s2"),
            0,
        );
        let r = ranked(&ix, "May 2023");
        assert_eq!(r.len(), 5, "the five turns of May 2023: {r:?}");
        assert!(!r.contains(&5));
    }

    #[test]
    fn removed_records_are_not_found_and_leave_the_figures_as_if_never_added() {
        let mut ix = conversation(2);
        ix.remove(0);
        ix.remove(0); // twice is once
        assert!(!ranked(&ix, "charity").contains(&0));
        let mut again = conversation(2);
        again.remove(0);
        assert_eq!(ix.all, again.all);
        // Counted again from the live records: the incremental figures agree.
        let before = ix.all;
        ix.recount();
        assert_eq!(ix.all, before);
    }

    #[test]
    fn the_project_searched_is_the_corpus_and_visibility_filters() {
        let mut ix = conversation(2);
        ix.add(
            5,
            "Jon said, \"I ran a marathon\"",
            Some("c2"),
            Some("s1"),
            MAY_2023,
        );
        let other = ix.search("ran", Some("c2"), |s| s == 5);
        assert_eq!(other.best(10).iter().map(|x| x.0).collect::<Vec<_>>(), [5]);
        let hidden = ix.search("ran", Some("c1"), |s| s != 0);
        assert!(hidden.get(0).is_none() && hidden.get(1).is_some());
    }

    #[test]
    fn a_deferred_index_takes_the_changes_made_before_it_was_read() {
        let mut direct = conversation(2);
        direct.add(
            5,
            "Jon said, \"zeppelin tickets\"",
            Some("c1"),
            Some("s1"),
            MAY_2023,
        );
        direct.remove(1);
        let mut d = KeywordIndex::deferred(2);
        d.add(
            5,
            "Jon said, \"zeppelin tickets\"",
            Some("c1"),
            Some("s1"),
            MAY_2023,
        );
        d.remove(1);
        assert!(d.is_pending());
        d.resolve(conversation(2));
        assert!(!d.is_pending());
        assert_eq!(d.differs(&direct), None);
        assert_eq!(d.all, direct.all);
        assert_eq!(
            ranked(&d, "zeppelin race"),
            ranked(&direct, "zeppelin race")
        );
    }
}
