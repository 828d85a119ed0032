//! Tiny deterministic PRNG (SplitMix64). No external `rand` dependency.

/// SplitMix64: small, fast, deterministic, good enough to pick crash states.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform value in `0..n` (returns 0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift reduction; bias is negligible for our small ranges.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Generator for one inode, derived from the crash seed. Independent of the
    /// order in which inodes are visited.
    pub(crate) fn for_inode(seed: u64, ino: u64) -> Self {
        let mut mix = SplitMix64::new(seed ^ ino.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let s = mix.next_u64();
        SplitMix64::new(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            let x = a.below(11);
            assert_eq!(x, b.below(11));
            assert!(x < 11);
        }
        assert_eq!(SplitMix64::new(1).below(0), 0);
    }
}
