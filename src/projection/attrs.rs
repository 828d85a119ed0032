//! A live record's layer and layer-since time packed in one word per slot
//! (`Projections::attrs`), for the check a search makes on every point it walks.

use super::Slot;
use crate::types::Layer;

/// The word of a slot without a live record.
pub(crate) const DEAD: u64 = u64::MAX;

/// Bits below the layer: the layer-since time in µs (2^56 µs is 2,283 years past 1970).
const SINCE_BITS: u32 = 56;
const SINCE_MASK: u64 = (1 << SINCE_BITS) - 1;

/// The word of a live record in `layer` since `since_us` (saturating past 2^56 µs).
pub(crate) fn pack(layer: Layer, since_us: u64) -> u64 {
    (layer.index() as u64) << SINCE_BITS | since_us.min(SINCE_MASK)
}

/// The word of what `slot` holds.
pub(crate) fn of_slot(slot: &Slot) -> u64 {
    match slot {
        Slot::Owned(r) => pack(r.layer, r.layer_since_us),
        Slot::Row(r) => pack(r.layer, r.layer_since_us),
        Slot::Dead => DEAD,
    }
}

/// The layer index and layer-since time of a word; `None` for [`DEAD`].
pub(crate) fn unpack(word: u64) -> Option<(usize, u64)> {
    (word != DEAD).then_some(((word >> SINCE_BITS) as usize, word & SINCE_MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_gives_back_its_layer_and_time() {
        for l in Layer::ALL {
            for t in [0, 1, 1_765_000_000_000_000, SINCE_MASK] {
                assert_eq!(unpack(pack(l, t)), Some((l.index(), t)));
            }
        }
        assert_eq!(
            unpack(pack(Layer::Assets, u64::MAX - 1)).map(|w| w.1),
            Some(SINCE_MASK)
        );
        assert_eq!(unpack(DEAD), None);
    }
}
