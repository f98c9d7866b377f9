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
//! Bytes: 80 inline, then per sign either 8 per distinct bucket (up to 16 of them:
//! a window or pane of a few dozen readings) or 4 per bucket of the range spanned
//! (sensor data in a narrow range, 21.0–25.0 °C, spans ~18 buckets); the worst case
//! is 80 + 2 × 8 KiB.

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

thread_local! {
    /// `(value bits, index)` of the last [`Sketch::index`] on this thread (NaN: none;
    /// sketches take finite values only).
    static LAST_INDEX: std::cell::Cell<(u64, i32)> =
        const { std::cell::Cell::new((0x7ff8_0000_0000_0000, 0)) };
}

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Distinct buckets a store keeps as `(index, count)` pairs before it switches to a
/// dense array. A pane of a few dozen readings stays sparse: ~100 bytes instead of
/// 4 bytes for every bucket its range spans (~250 for a sensor's ±30 % band), which
/// is most of the engine's state per series, and state that fits the caches is what
/// makes the engine fast (docs/BENCHMARKS.md, engine section).
const SPARSE_MAX: usize = 16;

/// The counts of one sign. Sparse or dense is a memory choice only: the buckets and
/// counts (and so every quantile) are the same either way, equality compares them,
/// and both serialize as the dense form snapshots have always held.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Dense", into = "Dense")]
enum Store {
    /// Ascending by index, counts > 0, at most [`SPARSE_MAX`] entries.
    Sparse(Vec<(i32, u32)>),
    Dense(Dense),
}

impl Default for Store {
    fn default() -> Self {
        Self::Sparse(Vec::new())
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        self.iter()
            .filter(|b| b.1 > 0)
            .eq(other.iter().filter(|b| b.1 > 0))
    }
}

impl Store {
    fn add(&mut self, index: i32, n: u32) {
        match self {
            Self::Dense(d) => d.add(index, n),
            Self::Sparse(v) => match v.binary_search_by_key(&index, |b| b.0) {
                Ok(i) => v[i].1 = v[i].1.saturating_add(n),
                Err(i) => {
                    let lo = v.first().map_or(index, |b| b.0.min(index));
                    let hi = v.last().map_or(index, |b| b.0.max(index));
                    let span = i64::from(hi) - i64::from(lo) + 1;
                    if v.len() < SPARSE_MAX && span <= MAX_BUCKETS as i64 {
                        v.insert(i, (index, n));
                    } else {
                        let mut d = Dense::default();
                        d.counts.reserve_exact((span as usize).min(MAX_BUCKETS));
                        for &(i, c) in v.iter() {
                            d.add(i, c);
                        }
                        d.add(index, n);
                        *self = Self::Dense(d);
                    }
                }
            },
        }
    }

    fn merge(&mut self, other: &Store) {
        for (i, c) in other.iter() {
            if c > 0 {
                self.add(i, c);
            }
        }
    }

    /// `(lowest, highest)` bucket index held, `None` when empty.
    fn span(&self) -> Option<(i32, i32)> {
        match self {
            Self::Sparse(v) => Some((v.first()?.0, v.last()?.0)),
            Self::Dense(d) if d.counts.is_empty() => None,
            Self::Dense(d) => Some((d.offset, d.offset + d.counts.len() as i32 - 1)),
        }
    }

    /// Calls `f(index, count)` for every bucket with a count, ascending by index
    /// (`rev`: descending) until it returns `false`. Internal iteration: one match
    /// per walk instead of one per bucket, the difference in a window's quantiles.
    #[inline]
    fn walk(&self, rev: bool, mut f: impl FnMut(i32, u32) -> bool) {
        match self {
            Self::Sparse(v) => {
                let mut go = |&(i, c): &(i32, u32)| f(i, c);
                if rev {
                    v.iter().rev().all(&mut go);
                } else {
                    v.iter().all(&mut go);
                }
            }
            Self::Dense(d) => {
                let mut go = |(j, &c): (usize, &u32)| c == 0 || f(d.offset + j as i32, c);
                if rev {
                    d.counts.iter().enumerate().rev().all(&mut go);
                } else {
                    d.counts.iter().enumerate().all(&mut go);
                }
            }
        }
    }

    /// Makes `self` the merge of `parts` (what clearing it and merging each would
    /// give, bucket for bucket): sized once and filled by index instead of one
    /// search or shift per bucket. A window of several panes does this per result.
    fn assign_merged<'a>(&mut self, parts: impl Iterator<Item = &'a Store> + Clone) {
        let span = parts
            .clone()
            .filter_map(Store::span)
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
        let Some((lo, hi)) = span else {
            self.clear();
            return;
        };
        let len = (i64::from(hi) - i64::from(lo) + 1) as usize;
        if len > MAX_BUCKETS {
            // Beyond the dense limit the lowest buckets collapse: keep that path's
            // exact order of additions.
            self.clear();
            parts.for_each(|p| self.merge(p));
            return;
        }
        if !matches!(self, Self::Dense(_)) {
            *self = Self::Dense(Dense::default());
        }
        let Self::Dense(d) = self else { unreachable!() };
        d.counts.clear();
        d.counts.resize(len, 0);
        d.offset = lo;
        for p in parts {
            match p {
                Self::Sparse(v) => {
                    for &(i, c) in v {
                        let slot = &mut d.counts[(i - lo) as usize];
                        *slot = slot.saturating_add(c);
                    }
                }
                // An empty dense store (a new pane sized like a dense neighbour)
                // has an offset that means nothing: it adds nothing.
                Self::Dense(o) if o.counts.is_empty() => {}
                Self::Dense(o) => {
                    let from = (o.offset - lo) as usize;
                    for (slot, &c) in d.counts[from..from + o.counts.len()]
                        .iter_mut()
                        .zip(&o.counts)
                    {
                        *slot = slot.saturating_add(c);
                    }
                }
            }
        }
    }

    /// `(index, count)` ascending by index (dense stores include zero counts).
    fn iter(&self) -> Iter<'_> {
        match self {
            Self::Sparse(v) => Iter::Sparse(v.iter()),
            Self::Dense(d) => Iter::Dense(d.offset, d.counts.iter().enumerate()),
        }
    }

    /// An empty store with room for what `self` holds (and a quarter more).
    fn empty_like(&self) -> Self {
        match self {
            Self::Sparse(v) => Self::Sparse(Vec::with_capacity(v.len() + v.len() / 4)),
            Self::Dense(d) => {
                let n = d.counts.len();
                Self::Dense(Dense {
                    offset: 0,
                    counts: Vec::with_capacity(n + n / 4),
                })
            }
        }
    }

    /// Empty, keeping the memory.
    fn clear(&mut self) {
        match self {
            Self::Sparse(v) => v.clear(),
            Self::Dense(d) => {
                d.counts.clear();
                d.offset = 0;
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Sparse(v) => v.capacity() * std::mem::size_of::<(i32, u32)>(),
            Self::Dense(d) => d.counts.capacity() * 4,
        }
    }
}

/// Every bucket from `offset` on, zeros included: the snapshot form, and the
/// in-memory form once a store holds more than [`SPARSE_MAX`] buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Dense {
    offset: i32,
    counts: Vec<u32>,
}

impl From<Dense> for Store {
    /// A restored store is sparse again when that is what it would have been.
    fn from(d: Dense) -> Self {
        let used = d.counts.iter().filter(|c| **c > 0).count();
        if used <= SPARSE_MAX && d.counts.len() <= MAX_BUCKETS {
            let mut v = Vec::with_capacity(used);
            v.extend(
                d.counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, c)| (d.offset + i as i32, *c)),
            );
            Self::Sparse(v)
        } else {
            Self::Dense(d)
        }
    }
}

impl From<Store> for Dense {
    fn from(s: Store) -> Self {
        match s {
            Store::Dense(d) => d,
            Store::Sparse(v) => {
                let mut d = Dense::default();
                for (i, c) in v {
                    d.add(i, c);
                }
                d
            }
        }
    }
}

enum Iter<'a> {
    Sparse(std::slice::Iter<'a, (i32, u32)>),
    Dense(i32, std::iter::Enumerate<std::slice::Iter<'a, u32>>),
}

impl Iterator for Iter<'_> {
    type Item = (i32, u32);

    fn next(&mut self) -> Option<(i32, u32)> {
        match self {
            Self::Sparse(it) => it.next().copied(),
            Self::Dense(offset, it) => it.next().map(|(i, c)| (*offset + i as i32, *c)),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<(i32, u32)> {
        match self {
            Self::Sparse(it) => it.next_back().copied(),
            Self::Dense(offset, it) => it.next_back().map(|(i, c)| (*offset + i as i32, *c)),
        }
    }
}

impl Dense {
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
        // Pipelines side by side add each reading to their sketches one after the
        // other, and the logarithm is most of an add: the last one is remembered.
        LAST_INDEX.with(|last| {
            let (bits, i) = last.get();
            if bits == v.to_bits() {
                return i;
            }
            let i = (v.ln() / gamma().ln()).ceil() as i32;
            last.set((v.to_bits(), i));
            i
        })
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
        Self {
            pos: self.pos.empty_like(),
            neg: self.neg.empty_like(),
            zero: 0,
            count: 0,
        }
    }

    /// Empties the sketch, keeping its buckets' memory for reuse.
    /// Equal to [`Sketch::new`] afterwards.
    pub fn clear(&mut self) {
        self.pos.clear();
        self.neg.clear();
        self.zero = 0;
        self.count = 0;
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.pos.merge(&other.pos);
        self.neg.merge(&other.neg);
        self.zero += other.zero;
        self.count += other.count;
    }

    /// Makes `self` the merge of `parts`, keeping its memory: equal to clearing it
    /// and merging each part, at a fraction of the cost.
    pub fn assign_merged<'a>(&mut self, parts: impl Iterator<Item = &'a Sketch> + Clone) {
        self.pos.assign_merged(parts.clone().map(|s| &s.pos));
        self.neg.assign_merged(parts.clone().map(|s| &s.neg));
        (self.zero, self.count) = parts.fold((0, 0), |(z, n), s| (z + s.zero, n + s.count));
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
        for (i, c) in self.neg.iter().rev() {
            seen += u64::from(c);
            if seen > rank {
                return Some(-Self::value(i));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (i, c) in self.pos.iter() {
            seen += u64::from(c);
            if seen > rank {
                return Some(Self::value(i));
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
        // Callers ask in ascending order (a pipeline's quantiles are sorted by name).
        if !ranks.is_sorted() {
            ranks.sort_unstable();
        }
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
        let k = ranks.len();
        self.neg.walk(true, |i, c| {
            seen += u64::from(c);
            take(seen, Bucket::Neg(i), &mut next);
            next < k
        });
        seen += self.zero;
        take(seen, Bucket::Zero, &mut next);
        if next < k {
            self.pos.walk(false, |i, c| {
                seen += u64::from(c);
                take(seen, Bucket::Pos(i), &mut next);
                next < k
            });
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
        assert!(
            like.bytes() >= s.pos.bytes(),
            "room for what the model holds"
        );
    }

    #[test]
    fn bounded_memory_over_a_huge_range() {
        let mut s = Sketch::new();
        let mut v = 1e-8;
        while v < 1e300 {
            s.add(v);
            v *= 1.001;
        }
        match &s.pos {
            Store::Dense(d) => assert!(d.counts.len() <= MAX_BUCKETS),
            Store::Sparse(_) => panic!("thousands of buckets are dense"),
        }
        // Upper quantiles keep the guarantee.
        let top = s.quantile(1.0).unwrap();
        assert!(top > 1e299);
    }

    /// The same sketch with both stores forced dense (the pre-sparse layout).
    fn dense(s: &Sketch) -> Sketch {
        Sketch {
            pos: Store::Dense(s.pos.clone().into()),
            neg: Store::Dense(s.neg.clone().into()),
            ..s.clone()
        }
    }

    proptest! {
        /// Sparse stores are a memory layout only: the same quantiles to the bit as
        /// the dense layout, the same snapshot bytes, and a snapshot restores to a
        /// sketch equal to the one saved. Few and many distinct buckets both covered.
        #[test]
        fn sparse_and_dense_agree(
            values in proptest::collection::vec(prop_oneof![20.0f64..21.0, -5.0f64..5.0, 1.0f64..1e6], 0..60),
        ) {
            let mut s = Sketch::new();
            values.iter().for_each(|v| s.add(*v));
            let d = dense(&s);
            prop_assert_eq!(&s, &d);
            for q in [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0] {
                prop_assert_eq!(s.quantile(q).map(f64::to_bits), d.quantile(q).map(f64::to_bits));
            }
            let bytes = fieldline_common::codec::to_cbor(&s).unwrap();
            prop_assert_eq!(&bytes, &fieldline_common::codec::to_cbor(&d).unwrap());
            let back: Sketch = fieldline_common::codec::from_cbor(&bytes, 1 << 20).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert!(back.bytes() <= d.bytes().max(s.bytes()));
        }
    }

    proptest! {
        /// Merging a window's panes in one go gives the sketch that merging them one
        /// by one gives (the same buckets, so the same quantiles to the bit), whatever
        /// mix of sparse and dense panes, signs and ranges, into a reused sketch.
        #[test]
        fn assign_merged_equals_merging_one_by_one(
            parts in proptest::collection::vec(proptest::collection::vec(
                prop_oneof![20.0f64..21.0, -5.0f64..5.0, 1.0f64..1e6, Just(0.0)], 0..40), 0..5),
            reused in proptest::collection::vec(-1e3f64..1e3, 0..40),
            huge in any::<bool>(),
        ) {
            let mut sketches: Vec<Sketch> = parts.iter().map(|vs| {
                let mut s = Sketch::new();
                vs.iter().for_each(|v| s.add(*v));
                s
            }).collect();
            // Panes sized like a dense neighbour start as empty dense stores (with a
            // meaningless offset), and a cleared dense sketch stays dense.
            let dense = sketches.iter().find(|s| matches!(s.pos, Store::Dense(_)) || matches!(s.neg, Store::Dense(_))).cloned();
            if let Some(dense) = dense {
                let mut like = dense.empty_like();
                sketches.insert(0, like.clone());
                like.add(-1.0);
                sketches.push(like);
                let mut cleared = dense.clone();
                cleared.clear();
                sketches.push(cleared);
            }
            if huge {
                // A span beyond MAX_BUCKETS takes the collapsing path.
                let mut s = Sketch::new();
                [1e-8, 1e300, -1e-8, -1e300].iter().for_each(|v| s.add(*v));
                sketches.push(s);
            }
            let mut want = Sketch::new();
            sketches.iter().for_each(|s| want.merge(s));
            let mut got = Sketch::new();
            reused.iter().for_each(|v| got.add(*v));
            got.assign_merged(sketches.iter());
            prop_assert_eq!(&got, &want);
            let qs = [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0];
            let (mut a, mut b) = ([None; 7], [None; 7]);
            got.quantiles(&qs, &mut a);
            want.quantiles(&qs, &mut b);
            prop_assert_eq!(a.map(|q| q.map(f64::to_bits)), b.map(|q| q.map(f64::to_bits)));
            for (q, v) in qs.iter().zip(a) {
                prop_assert_eq!(v.map(f64::to_bits), want.quantile(*q).map(f64::to_bits));
            }
        }
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
