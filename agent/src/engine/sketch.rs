//! A mergeable quantile sketch with a relative-error guarantee (DDSketch, Masson et
//! al., VLDB 2019), hand-written so its state can live in our snapshots.
//!
//! A positive value `v` goes to bucket `ceil(log_γ v)` with `γ = (1 + α) / (1 - α)`;
//! the bucket's representative `2γ^i / (γ + 1)` is within `α` of every value in it,
//! so any quantile is returned with relative error ≤ [`RELATIVE_ACCURACY`] (0.5 %).
//! Negative values use a mirrored store; values with `|v| < MIN_INDEXABLE` count as
//! zero. Memory is bounded: past [`MAX_BUCKETS`] buckets per sign, the buckets nearest
//! zero are collapsed into one (only quantiles that fall in the collapsed range lose
//! the guarantee; that needs a dynamic range above γ^2048 ≈ 10^8.9 within one window).
//!
//! Bytes: 80 + 4 per bucket (per sign). Sensor data in a narrow range (21.0–25.0 °C)
//! spans ~23 buckets, so a sketch is ~170 bytes; the worst case is 80 + 2 × 8 KiB.

use serde::{Deserialize, Serialize};

/// The guaranteed relative error of [`Sketch::quantile`].
pub const RELATIVE_ACCURACY: f64 = 0.005;
/// Most buckets per sign before the lowest ones are collapsed.
pub const MAX_BUCKETS: usize = 2048;
/// Smaller magnitudes are counted as exactly zero.
pub const MIN_INDEXABLE: f64 = 1e-9;
/// Most quantiles [`Sketch::quantiles`] finds in one walk.
pub const MAX_QUANTILES_PER_WALK: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Bucket {
    Neg(i32),
    Zero,
    Pos(i32),
}

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Store {
    offset: i32,
    counts: Vec<u32>,
}

impl Store {
    fn add(&mut self, index: i32, n: u32) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            if self.counts.len() + grow > MAX_BUCKETS {
                // Below the kept range: collapse into the lowest bucket.
                let lowest = self.counts.len().saturating_sub(MAX_BUCKETS);
                self.counts[lowest] = self.counts[lowest].saturating_add(n);
                return;
            }
            // In place: a pane sketch sized like its neighbour already has the room.
            let len = self.counts.len();
            self.counts.resize(len + grow, 0);
            self.counts.copy_within(..len, grow);
            self.counts[..grow].fill(0);
            self.offset = index;
        }
        let pos = (index - self.offset) as usize;
        if pos >= self.counts.len() {
            self.counts.resize(pos + 1, 0);
        }
        self.counts[pos] = self.counts[pos].saturating_add(n);
        if self.counts.len() > MAX_BUCKETS {
            let cut = self.counts.len() - MAX_BUCKETS;
            let collapsed: u32 = self.counts[..=cut]
                .iter()
                .fold(0u32, |a, c| a.saturating_add(*c));
            self.counts.drain(..cut);
            self.counts[0] = collapsed;
            self.offset += cut as i32;
        }
    }

    fn merge(&mut self, other: &Store) {
        for (i, c) in other.counts.iter().enumerate() {
            if *c > 0 {
                self.add(other.offset + i as i32, *c);
            }
        }
    }

    fn bytes(&self) -> usize {
        self.counts.capacity() * 4
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(v: f64) -> i32 {
        (v.ln() / gamma().ln()).ceil() as i32
    }

    fn value(index: i32) -> f64 {
        let g = gamma();
        2.0 * g.powi(index) / (g + 1.0)
    }

    /// Adds one finite value.
    pub fn add(&mut self, v: f64) {
        self.count += 1;
        if v >= MIN_INDEXABLE {
            self.pos.add(Self::index(v), 1);
        } else if v <= -MIN_INDEXABLE {
            self.neg.add(Self::index(-v), 1);
        } else {
            self.zero += 1;
        }
    }

    /// An empty sketch with room for the buckets `self` spans (and a quarter more),
    /// for a pane that will likely see values like its neighbour's.
    pub fn empty_like(&self) -> Self {
        let mut s = Self::new();
        for (to, from) in [(&mut s.pos, &self.pos), (&mut s.neg, &self.neg)] {
            let n = from.counts.len();
            to.counts.reserve_exact(n + n / 4);
        }
        s
    }

    /// Empties the sketch, keeping its buckets' memory for reuse.
    /// Equal to [`Sketch::new`] afterwards.
    pub fn clear(&mut self) {
        for store in [&mut self.pos, &mut self.neg] {
            store.counts.clear();
            store.offset = 0;
        }
        self.zero = 0;
        self.count = 0;
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.pos.merge(&other.pos);
        self.neg.merge(&other.neg);
        self.zero += other.zero;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) of the values added, `None` when empty. Nearest
    /// rank: the value at 0-based rank `ceil(q·n) - 1`, so p99 of two values is the
    /// larger one.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = rank(q, self.count);
        let mut seen = 0u64;
        for (i, c) in self.neg.counts.iter().enumerate().rev() {
            seen += u64::from(*c);
            if seen > rank {
                return Some(-Self::value(self.neg.offset + i as i32));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (i, c) in self.pos.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen > rank {
                return Some(Self::value(self.pos.offset + i as i32));
            }
        }
        None
    }

    /// [`Sketch::quantile`] of every `qs[i]` into `out[i]`, in one walk over the
    /// buckets instead of one per quantile. Past [`MAX_QUANTILES_PER_WALK`] (or the
    /// length of `out`), the rest are left as they were.
    pub fn quantiles(&self, qs: &[f64], out: &mut [Option<f64>]) {
        let n = qs.len().min(out.len()).min(MAX_QUANTILES_PER_WALK);
        out[..n].fill(None);
        if self.count == 0 {
            return;
        }
        // (rank, position) of the valid quantiles, ascending by rank.
        let mut ranks = [(0u64, 0usize); MAX_QUANTILES_PER_WALK];
        let mut k = 0;
        for (i, q) in qs[..n].iter().enumerate() {
            if (0.0..=1.0).contains(q) {
                ranks[k] = (rank(*q, self.count), i);
                k += 1;
            }
        }
        let ranks = &mut ranks[..k];
        ranks.sort_unstable();
        // The walk records bucket indexes only: computing a bucket's value (`powi`)
        // inside it would be done for every bucket once the compiler hoists it.
        let mut hits = [Bucket::Zero; MAX_QUANTILES_PER_WALK];
        let mut next = 0;
        let mut seen = 0u64;
        let mut take = |seen: u64, b: Bucket, next: &mut usize| {
            while *next < ranks.len() && seen > ranks[*next].0 {
                hits[*next] = b;
                *next += 1;
            }
        };
        for (i, c) in self.neg.counts.iter().enumerate().rev() {
            seen += u64::from(*c);
            take(seen, Bucket::Neg(self.neg.offset + i as i32), &mut next);
        }
        seen += self.zero;
        take(seen, Bucket::Zero, &mut next);
        for (i, c) in self.pos.counts.iter().enumerate() {
            if next == ranks.len() {
                break;
            }
            seen += u64::from(*c);
            take(seen, Bucket::Pos(self.pos.offset + i as i32), &mut next);
        }
        for (&(_, i), b) in ranks[..next].iter().zip(hits) {
            out[i] = Some(match b {
                Bucket::Neg(index) => -Self::value(index),
                Bucket::Zero => 0.0,
                Bucket::Pos(index) => Self::value(index),
            });
        }
    }

    /// Heap and inline bytes this sketch holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.pos.bytes() + self.neg.bytes()
    }
}

/// 0-based nearest rank of the `q`-quantile among `n` values.
pub fn rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact quantile with the same rank convention as the sketch.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[rank(q, sorted.len() as u64) as usize]
    }

    #[track_caller]
    fn within_bound(got: f64, want: f64) {
        let err = (got - want).abs();
        assert!(
            err <= RELATIVE_ACCURACY * want.abs() + 1e-9,
            "got {got}, want {want}: relative error {}",
            err / want.abs()
        );
    }

    #[test]
    fn known_distribution() {
        let mut s = Sketch::new();
        for i in 1..=10_000 {
            s.add(i as f64);
        }
        within_bound(s.quantile(0.5).unwrap(), 5000.0);
        within_bound(s.quantile(0.999).unwrap(), 9990.0);
        within_bound(s.quantile(0.99).unwrap(), 9900.0);
        within_bound(s.quantile(0.0).unwrap(), 1.0);
        within_bound(s.quantile(1.0).unwrap(), 10_000.0);
        assert_eq!(Sketch::new().quantile(0.5), None);
        let like = s.empty_like();
        assert_eq!(like, Sketch::new(), "sized, not filled");
        assert!(like.bytes() >= s.pos.counts.len() * 4);
    }

    #[test]
    fn bounded_memory_over_a_huge_range() {
        let mut s = Sketch::new();
        let mut v = 1e-8;
        while v < 1e300 {
            s.add(v);
            v *= 1.001;
        }
        assert!(s.pos.counts.len() <= MAX_BUCKETS);
        // Upper quantiles keep the guarantee.
        let top = s.quantile(1.0).unwrap();
        assert!(top > 1e299);
    }

    proptest! {
        /// Every quantile of any sample (mixed signs, zeros, a dynamic range of 10^8)
        /// is within the stated relative error; merging two halves gives the sketch of
        /// the whole.
        #[test]
        fn quantile_error_within_bound(
            values in proptest::collection::vec(
                prop_oneof![-1e6f64..1e6, 0.01f64..1.0, Just(0.0), 1e3f64..1e6], 1..2000),
            split in any::<prop::sample::Index>(),
            q in 0.0f64..=1.0,
        ) {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let want = exact(&sorted, q);

            let mut whole = Sketch::new();
            values.iter().for_each(|v| whole.add(*v));
            let cut = split.index(values.len());
            let (mut a, mut b) = (Sketch::new(), Sketch::new());
            values[..cut].iter().for_each(|v| a.add(*v));
            values[cut..].iter().for_each(|v| b.add(*v));
            a.merge(&b);
            prop_assert_eq!(&a, &whole);

            let qs = [q, 0.5, 0.0, 1.0, 0.99, -1.0, q / 2.0];
            let mut all = [None; 7];
            whole.quantiles(&qs, &mut all);
            for (q, got) in qs.iter().zip(all) {
                prop_assert_eq!(got, whole.quantile(*q), "one walk for all agrees with one per quantile");
            }

            let got = whole.quantile(q).unwrap();
            let tolerance = RELATIVE_ACCURACY * want.abs() + MIN_INDEXABLE;
            prop_assert!((got - want).abs() <= tolerance, "q {} got {} want {}", q, got, want);
        }
    }
}
