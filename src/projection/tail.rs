//! Int8 codes of the newest records' vectors: what a search scores the records its graph
//! lacks by (`IndexState::pending` and `unfrozen`, scanned by every search until the indexer
//! takes them in), before it re-scores the best of them on f32.
//!
//! While the indexer works through a large batch, that tail is every record of the batch
//! not yet in the graph; scored on f32 it cost each search 1.5 KB per record at 384-d (30 MB
//! at the start of a 20,000-record batch). The codes are a quarter of that, in one array read
//! in slot order. They cover the slots from `base` on, appended as records are applied and
//! dropped from the front once the graph holds them; a tail slot outside them (an old record
//! whose point was lost with a dump) is scored on f32.

use crate::index::frozen::push_code;

/// Most codes kept: past this the older half is dropped (those slots are then scored on
/// f32). 100 MB at 384-d; a tail this long is a bulk load or a replay the indexer has not
/// reached, scanned exactly either way.
const MAX_CODES: usize = 1 << 18;

/// Codes dropped from the front at once, at least (the rest is moved down).
const TRIM_MIN: usize = 1024;

#[derive(Default)]
pub(crate) struct TailCodes {
    /// Slot of the first code.
    base: u32,
    dim: usize,
    codes: Vec<i8>,
    /// Each code's scale back ([`crate::index::frozen::code_into`]).
    unscale: Vec<f32>,
    /// Keeps no codes (projections that are never searched through a graph: offline
    /// replays for training and verification).
    off: bool,
}

impl TailCodes {
    /// Codes held.
    pub(crate) fn len(&self) -> usize {
        self.unscale.len()
    }

    /// Adds the code of `slot`'s vector `v`. Slots come in order; one that does not follow
    /// the last starts the codes afresh from it.
    pub(crate) fn push(&mut self, slot: u32, v: &[f32]) {
        if self.off {
            return;
        }
        if self.dim != v.len() || slot as usize != self.base as usize + self.len() {
            self.clear_from(slot);
            self.dim = v.len();
        }
        if self.len() >= MAX_CODES {
            self.drop_front(MAX_CODES / 2);
        }
        let back = push_code(&mut self.codes, v);
        self.unscale.push(back);
    }

    /// Keeps no codes from now on (and drops those held).
    pub(crate) fn turn_off(&mut self) {
        self.clear_from(0);
        self.off = true;
    }

    /// `slot`'s code and scale back, if held.
    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<(&[i8], f32)> {
        let i = slot.checked_sub(self.base)? as usize;
        let back = *self.unscale.get(i)?;
        Some((&self.codes[i * self.dim..(i + 1) * self.dim], back))
    }

    /// Drops the codes of slots below `low` (the lowest slot still in the tail; `None`: no
    /// tail, drop all), at least [`TRIM_MIN`] at a time unless all go.
    pub(crate) fn trim_below(&mut self, low: Option<u32>) {
        let end = self.base as usize + self.len();
        let low = low.map_or(end, |l| (l as usize).min(end));
        let n = low.saturating_sub(self.base as usize);
        if n == self.len() {
            self.clear_from(end as u32);
        } else if n >= TRIM_MIN {
            self.drop_front(n);
        }
    }

    fn drop_front(&mut self, n: usize) {
        self.codes.drain(..n * self.dim);
        self.unscale.drain(..n);
        self.base += n as u32;
    }

    fn clear_from(&mut self, slot: u32) {
        self.codes.clear();
        self.unscale.clear();
        self.base = slot;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report
    use super::*;
    use crate::index::frozen::code_into;

    fn v(i: u32) -> Vec<f32> {
        (0..8).map(|j| ((i * 8 + j) as f32).sin()).collect()
    }

    #[test]
    fn codes_follow_the_slots_and_trim_from_the_front() {
        let mut t = TailCodes::default();
        for s in 100..100 + 3000u32 {
            t.push(s, &v(s));
        }
        let mut want = vec![0i8; 8];
        let back = code_into(&v(2500), &mut want);
        assert_eq!(t.get(2500), Some((&want[..], back)));
        assert!(t.get(99).is_none() && t.get(3100).is_none());
        // Fewer than TRIM_MIN below: kept.
        t.trim_below(Some(600));
        assert!(t.get(100).is_some());
        t.trim_below(Some(1500));
        assert!(t.get(1499).is_none());
        assert_eq!(t.get(2500), Some((&want[..], back)));
        // A gap starts afresh.
        t.push(5000, &v(5000));
        assert_eq!(t.len(), 1);
        assert!(t.get(2500).is_none() && t.get(5000).is_some());
        t.trim_below(None);
        assert_eq!(t.len(), 0);
        t.push(5001, &v(5001));
        assert!(t.get(5001).is_some());
        t.turn_off();
        t.push(5002, &v(5002));
        assert!(t.len() == 0 && t.get(5001).is_none());
    }
}
