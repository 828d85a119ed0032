//! Bitsets over slots.
use crate::util::part_bounds;

/// A growable bitset over slots.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(crate) fn set(&mut self, i: u32) {
        let w = i as usize / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
    pub(crate) fn unset(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
    /// The set bits, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        Bits::words_from(0, &self.0)
    }
    /// The set bits of `words`, which start at word `first`.
    fn words_from(first: usize, words: &[u64]) -> impl Iterator<Item = u32> + '_ {
        words.iter().enumerate().flat_map(move |(w, word)| {
            let w = first + w;
            let mut x = *word;
            std::iter::from_fn(move || {
                (x != 0).then(|| {
                    let b = x.trailing_zeros();
                    x &= x - 1;
                    w as u32 * 64 + b
                })
            })
        })
    }
}

/// A set of slots: a bitset and its size. A layer's members are one; building it at open
/// sets a bit per record instead of making a million hash inserts.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotSet {
    bits: Bits,
    len: usize,
}

impl SlotSet {
    /// The set whose bits are `words` (bit `s % 64` of word `s / 64` for slot `s`), `len` of
    /// them set.
    pub(crate) fn from_words(words: Vec<u64>, len: usize) -> SlotSet {
        debug_assert_eq!(
            words.iter().map(|w| w.count_ones() as usize).sum::<usize>(),
            len
        );
        SlotSet {
            bits: Bits(words),
            len,
        }
    }

    pub(crate) fn insert(&mut self, slot: u32) -> bool {
        if self.bits.get(slot) {
            return false;
        }
        self.bits.set(slot);
        self.len += 1;
        true
    }
    pub(crate) fn remove(&mut self, slot: &u32) -> bool {
        if !self.bits.get(*slot) {
            return false;
        }
        self.bits.unset(*slot);
        self.len -= 1;
        true
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The slots, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter()
    }

    /// The `i`-th of `n` runs of the slots, ascending, each holding about as many slots (the
    /// runs split the bitset at word boundaries; a layer's slots can sit in a narrow range).
    pub(crate) fn iter_part(&self, i: usize, n: usize) -> impl Iterator<Item = u32> + '_ {
        let words = &self.bits.0;
        // One past the word that holds slot number `want` (0-based) of the set: the same
        // function on both ends of adjacent parts, so every word lands in exactly one.
        let word_at = |want: usize| {
            let mut seen = 0;
            words
                .iter()
                .position(|w| {
                    seen += w.count_ones() as usize;
                    seen > want
                })
                .map_or(words.len(), |p| p + 1)
        };
        let (lo, hi) = part_bounds(self.len, i, n);
        let a = if i == 0 { 0 } else { word_at(lo) };
        let b = if i + 1 == n { words.len() } else { word_at(hi) };
        Bits::words_from(a, &words[a.min(b)..b])
    }
}
