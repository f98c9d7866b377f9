//! Has the series been at this level at this time of day? A grid-free answer.
//!
//! The histogram views of [`super::general`] decide "never seen" by the bin a value falls
//! in, so whether a point counts as new depends on where the bin edges happen to lie. This
//! test measures novelty as a distance instead. A point is (normalised level, time of day
//! as a position on a circle); it is compared with a bounded set of remembered points
//! (prototypes, in the manner of ART's categories), and the Chebyshev distance to the
//! nearest one is the surprise. A point farther than `radius` from every prototype becomes
//! one, replacing the prototype matched least recently when the set is full; a nearer point
//! refreshes the one it matched. So the set covers the (level, time of day) region the
//! series has visited, at resolution `radius`, centred on the data instead of on a grid.
//!
//! The time-of-day residual view asks a related question about the mean profile; this one
//! also knows levels that are normal at one hour and new at another, and it fires earlier
//! on a level that is drifting into a region the series has never visited at that hour.

use super::{StateReader, StateWriter};

/// Coordinates of a point: the level and the two of the time-of-day circle.
const DIMS: usize = 3;

/// Largest number of remembered points.
pub const MAX_PROTOTYPES: usize = 4096;

#[derive(Debug, Clone)]
pub struct Novelty {
    cap: usize,
    radius: f32,
    /// Dimension-major (`protos[d * cap + j]` is coordinate `d` of prototype `j`): the
    /// distance scan then runs along contiguous memory and vectorises.
    protos: Vec<f32>,
    last_used: Vec<u64>,
    len: usize,
    tick: u64,
    /// Distance of the current point to each prototype; scratch, not state.
    dist: Vec<f32>,
}

/// The point for `level` (normalised) at `ts_ms`: the time of day within `period_ms` is a
/// position on a circle of radius `phase_radius`, so that midnight neighbours 23:59 and a
/// prototype covers about `2 * radius / phase_radius` radians of the day.
pub fn point(level: f64, ts_ms: i64, period_ms: i64, phase_radius: f64) -> [f32; DIMS] {
    let period = period_ms.max(1);
    let a = ts_ms.rem_euclid(period) as f64 / period as f64 * std::f64::consts::TAU;
    [
        level as f32,
        (phase_radius * a.cos()) as f32,
        (phase_radius * a.sin()) as f32,
    ]
}

impl Novelty {
    pub fn new(cap: usize, radius: f64) -> Self {
        let cap = cap.clamp(1, MAX_PROTOTYPES);
        Novelty {
            cap,
            radius: radius as f32,
            protos: vec![0.0; DIMS * cap],
            last_used: vec![0; cap],
            len: 0,
            tick: 0,
            dist: vec![0.0; cap],
        }
    }

    /// Distance of `p` to the nearest remembered point (`None` while none is remembered),
    /// then learns `p`.
    pub fn observe(&mut self, p: [f32; DIMS]) -> Option<f64> {
        self.tick += 1;
        let n = self.len;
        let (r0, rest) = self.protos.split_at(self.cap);
        let (r1, r2) = rest.split_at(self.cap);
        let dist = &mut self.dist[..n];
        for (((acc, &a), &b), &c) in dist.iter_mut().zip(&r0[..n]).zip(&r1[..n]).zip(&r2[..n]) {
            *acc = (a - p[0]).abs().max((b - p[1]).abs()).max((c - p[2]).abs());
        }
        // Distances are finite and >= 0, so their bit patterns sort like the values: an
        // integer minimum, which vectorises where a float one with NaN rules may not.
        let min_bits = dist.iter().fold(u32::MAX, |m, &v| m.min(v.to_bits()));
        let at = dist.iter().position(|&v| v.to_bits() == min_bits);
        let nearest = (at.map_or(f32::INFINITY, |j| dist[j]), at.unwrap_or(0));
        let slot = if nearest.0 <= self.radius {
            nearest.1
        } else if n < self.cap {
            self.len += 1;
            n
        } else {
            // The region the series left longest ago.
            (0..self.cap)
                .min_by_key(|&j| self.last_used[j])
                .unwrap_or(0)
        };
        if nearest.0 > self.radius {
            for (d, &c) in p.iter().enumerate() {
                self.protos[d * self.cap + slot] = c;
            }
        }
        self.last_used[slot] = self.tick;
        (n > 0).then_some(f64::from(nearest.0))
    }

    pub fn save(&self, w: &mut StateWriter) {
        w.u64(self.len as u64);
        w.u64(self.tick);
        for j in 0..self.len {
            w.u64(self.last_used[j]);
            for d in 0..DIMS {
                w.f64(f64::from(self.protos[d * self.cap + j]));
            }
        }
    }

    pub fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.len = r.usize().filter(|&n| n <= self.cap)?;
        self.tick = r.u64()?;
        for j in 0..self.len {
            self.last_used[j] = r.u64().filter(|&t| t <= self.tick)?;
            for d in 0..DIMS {
                // Written from an f32, so the round trip is exact.
                self.protos[d * self.cap + j] = r.f64()? as f32;
            }
        }
        Some(())
    }

    /// Heap bytes (the struct itself is counted by its owner).
    pub fn heap_bytes(&self) -> usize {
        (self.protos.capacity() + self.dist.capacity()) * 4 + self.last_used.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() < 1e-6)
    }

    #[test]
    fn distance_to_the_nearest_point_and_least_recently_matched_replacement() {
        let mut n = Novelty::new(2, 0.5);
        assert_eq!(n.observe([0.0, 0.0, 0.0]), None); // nothing remembered yet
        assert!(near(n.observe([0.2, 0.0, 0.0]), 0.2)); // matches (0, 0, 0)
        assert!(near(n.observe([3.0, 0.0, 1.0]), 3.0)); // new: remembered
                                                        // Chebyshev: the largest coordinate difference. Too far, and the set is full:
                                                        // (3, 0, 0.1) replaces (0, 0, 0), the prototype matched least recently.
        assert!(near(n.observe([3.0, 0.0, 0.1]), 0.9));
        assert!(near(n.observe([3.0, 0.0, -3.0]), 3.1)); // replaces (3, 0, 1)
        assert!(near(n.observe([0.0, 0.0, 0.0]), 3.0)); // the origin is new again

        let mut buf = Vec::new();
        n.save(&mut StateWriter(&mut buf));
        let mut m = Novelty::new(2, 0.5);
        m.load(&mut StateReader(&buf)).unwrap();
        for p in [[0.1, 0.0, 0.0], [3.0, 0.0, -2.9], [-5.0, 1.0, 1.0]] {
            assert_eq!(m.observe(p), n.observe(p));
        }
        let mut again = Vec::new();
        m.save(&mut StateWriter(&mut again));
        let mut expected = Vec::new();
        n.save(&mut StateWriter(&mut expected));
        assert_eq!(again, expected);
        // A state for a smaller set does not fit.
        let mut small = Novelty::new(1, 0.5);
        assert!(small.load(&mut StateReader(&buf)).is_none());
    }

    #[test]
    fn the_time_of_day_wraps_around() {
        let day = 86_400_000;
        let late = point(0.0, day - 60_000, day, 5.0);
        let midnight = point(0.0, 2 * day, day, 5.0);
        let noon = point(0.0, day / 2, day, 5.0);
        let cheb =
            |a: [f32; 3], b: [f32; 3]| (0..3).map(|d| (a[d] - b[d]).abs()).fold(0.0f32, f32::max);
        assert!(cheb(late, midnight) < 0.05);
        assert!((cheb(noon, midnight) - 10.0).abs() < 1e-4);
    }
}
