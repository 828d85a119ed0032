//! The best `k` candidates of a scan or a graph walk.

/// The best `k` (score, slot) pairs seen, without duplicates.
#[derive(Debug)]
pub(crate) struct TopK {
    pub(crate) k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Cand>>,
}

#[derive(Debug, Clone, Copy)]
struct Cand(f32, u32);

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    /// Higher score is better; on a tie the lower slot (older record) is better.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(crate) fn push(&mut self, score: f32, slot: u32) {
        let c = Cand(score, slot);
        if self.heap.len() >= self.k {
            match self.heap.peek() {
                Some(std::cmp::Reverse(worst)) if c > *worst => {}
                _ => return,
            }
        }
        if self.heap.iter().any(|x| x.0 .1 == slot) {
            return;
        }
        self.heap.push(std::cmp::Reverse(c));
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first.
    pub(crate) fn into_sorted(self) -> Vec<(f32, u32)> {
        let mut v: Vec<Cand> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|c| (c.0, c.1)).collect()
    }
}
