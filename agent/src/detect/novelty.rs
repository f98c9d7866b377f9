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
pub const MAX_PROTOTYPES: usize =
    fieldline_common::config::detector::MAX_NOVELTY_PROTOTYPES as usize;

/// Prototypes are scanned this many at a time (a multiple of every SIMD width in use).
const LANES: usize = 8;

#[derive(Debug, Clone)]
pub struct Novelty {
    cap: usize,
    /// `cap` rounded up to a multiple of [`LANES`]: the row length of `protos`.
    stride: usize,
    radius: f32,
    /// Dimension-major (`protos[d * stride + j]` is coordinate `d` of prototype `j`): the
    /// distance scan then runs along contiguous memory and vectorises. Slots not yet used
    /// hold +inf, so a scan may run on to the next multiple of [`LANES`]: their distance
    /// is +inf, never nearer than a real prototype (and ties go to the lower index).
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

/// Chebyshev distance of `p` to each prototype into `dist`, and the smallest of them
/// (+inf for none). Not inlined: inside a large caller the lane loop stays scalar.
#[inline(never)]
fn scan(p: [f32; DIMS], r0: &[f32], r1: &[f32], r2: &[f32], dist: &mut [f32]) -> f32 {
    let mut lane_min = [f32::INFINITY; LANES];
    for (((dc, a), b), c) in dist
        .chunks_exact_mut(LANES)
        .zip(r0.chunks_exact(LANES))
        .zip(r1.chunks_exact(LANES))
        .zip(r2.chunks_exact(LANES))
    {
        // Fixed-size arrays: the compiler then turns the lane loop into packed code.
        let (dc, a, b, c) = (lanes_mut(dc), lanes(a), lanes(b), lanes(c));
        for i in 0..LANES {
            let d0 = (a[i] - p[0]).abs();
            let d1 = (b[i] - p[1]).abs();
            let d2 = (c[i] - p[2]).abs();
            // `d0.max(d1).max(d2)` for a d1, d2 that are never NaN, as selects.
            let d = if d0 > d1 { d0 } else { d1 };
            let d = if d > d2 { d } else { d2 };
            dc[i] = d;
            lane_min[i] = if d < lane_min[i] { d } else { lane_min[i] };
        }
    }
    lane_min
        .iter()
        .fold(f32::INFINITY, |m, &v| if v < m { v } else { m })
}

fn lanes(c: &[f32]) -> &[f32; LANES] {
    c.try_into().expect("a chunk of LANES")
}

fn lanes_mut(c: &mut [f32]) -> &mut [f32; LANES] {
    c.try_into().expect("a chunk of LANES")
}

impl Novelty {
    pub fn new(cap: usize, radius: f64) -> Self {
        let cap = cap.clamp(1, MAX_PROTOTYPES);
        let stride = cap.next_multiple_of(LANES);
        Novelty {
            cap,
            stride,
            radius: radius as f32,
            protos: vec![f32::INFINITY; DIMS * stride],
            last_used: vec![0; cap],
            len: 0,
            tick: 0,
            dist: vec![0.0; stride],
        }
    }

    /// Distance of `p` to the nearest remembered point (`None` while none is remembered),
    /// then learns `p`.
    ///
    /// The distance is the Chebyshev one, `max(|Δlevel|, |Δcos|, |Δsin|)`, with the
    /// semantics of `f32::max` (a NaN level difference, from two infinite levels, is
    /// ignored; the phase differences are always finite). One pass computes the distances
    /// and a per-lane minimum, written as compare-and-select so that it compiles to packed
    /// max/min instructions; a second pass finds the first prototype at that distance
    /// eight at a time. Both passes are exact, so the result is the same nearest
    /// prototype (lowest index among ties) as a plain scan.
    pub fn observe(&mut self, p: [f32; DIMS]) -> Option<f64> {
        self.tick += 1;
        let n = self.len;
        // Unused slots are +inf: scanning them is harmless.
        let m = n.next_multiple_of(LANES);
        let (r0, rest) = self.protos.split_at(self.stride);
        let (r1, r2) = rest.split_at(self.stride);
        let min = scan(p, &r0[..m], &r1[..m], &r2[..m], &mut self.dist[..m]);
        // Distances are never NaN and never -0, so `==` is bit equality.
        let at = (n > 0).then(|| {
            let dist = &self.dist[..m];
            let chunk = dist
                .chunks_exact(LANES)
                .position(|c| lanes(c).iter().fold(false, |any, &v| any | (v == min)))
                .unwrap_or(0);
            let k = chunk * LANES;
            k + dist[k..k + LANES]
                .iter()
                .position(|&v| v == min)
                .unwrap_or(0)
        });
        let nearest = (at.map_or(f32::INFINITY, |j| self.dist[j]), at.unwrap_or(0));
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
                self.protos[d * self.stride + slot] = c;
            }
        }
        self.last_used[slot] = self.tick;
        (n > 0).then_some(f64::from(nearest.0))
    }

    /// 20 bytes per remembered point (its last match and three f32 coordinates).
    pub fn save(&self, w: &mut StateWriter) {
        w.u64(self.len as u64);
        w.u64(self.tick);
        for j in 0..self.len {
            w.u64(self.last_used[j]);
            for d in 0..DIMS {
                w.f32(self.protos[d * self.stride + j]);
            }
        }
    }

    pub fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.len = r.usize().filter(|&n| n <= self.cap)?;
        self.tick = r.u64()?;
        // Slots past the loaded set are unused again (+inf, see `protos`).
        self.protos.fill(f32::INFINITY);
        for j in 0..self.len {
            self.last_used[j] = r.u64().filter(|&t| t <= self.tick)?;
            for d in 0..DIMS {
                self.protos[d * self.stride + j] = r.f32()?;
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

    /// The plain scan the packed one replaced: `f32::max` distances, the first minimum by
    /// bit pattern, the least recently matched prototype replaced.
    struct Plain {
        cap: usize,
        radius: f32,
        protos: Vec<[f32; DIMS]>,
        last_used: Vec<u64>,
        tick: u64,
    }

    impl Plain {
        fn observe(&mut self, p: [f32; DIMS]) -> Option<f64> {
            self.tick += 1;
            let dist: Vec<f32> = self
                .protos
                .iter()
                .map(|q| {
                    (q[0] - p[0])
                        .abs()
                        .max((q[1] - p[1]).abs())
                        .max((q[2] - p[2]).abs())
                })
                .collect();
            let min_bits = dist.iter().fold(u32::MAX, |m, &v| m.min(v.to_bits()));
            let at = dist.iter().position(|&v| v.to_bits() == min_bits);
            let nearest = at.map_or(f32::INFINITY, |j| dist[j]);
            let n = self.protos.len();
            let slot = if nearest <= self.radius {
                at.unwrap()
            } else if n < self.cap {
                self.protos.push(p);
                self.last_used.push(0);
                n
            } else {
                let j = (0..self.cap).min_by_key(|&j| self.last_used[j]).unwrap();
                self.protos[j] = p;
                j
            };
            self.last_used[slot] = self.tick;
            (n > 0).then_some(f64::from(nearest))
        }
    }

    #[test]
    fn the_packed_scan_agrees_with_the_plain_one_bit_for_bit() {
        let mut rng = crate::detect::testutil::Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.uniform();
        for (cap, radius) in [
            (1, 0.5),
            (7, 0.5),
            (13, 0.3),
            (64, 0.6),
            (256, 0.6),
            (256, 0.1),
        ] {
            let mut packed = Novelty::new(cap, radius);
            let mut plain = Plain {
                cap,
                radius: radius as f32,
                protos: Vec::new(),
                last_used: Vec::new(),
                tick: 0,
            };
            for i in 0..3000i64 {
                let u = next();
                // Coarse levels make exact ties; a few infinite ones make NaN differences.
                let level = match (u * 40.0) as u32 {
                    0 => f64::INFINITY,
                    1 => f64::NEG_INFINITY,
                    2..=9 => (next() * 6.0).round() / 2.0,
                    _ => (next() - 0.5) * 6.0,
                };
                let ts = if u < 0.3 {
                    (i % 7) * 3_600_000
                } else {
                    i * 300_000
                };
                let p = point(level, ts, 86_400_000, 5.0);
                let (a, b) = (packed.observe(p), plain.observe(p));
                assert_eq!(
                    a.map(f64::to_bits),
                    b.map(f64::to_bits),
                    "cap {cap} point {i}"
                );
            }
            assert_eq!(packed.len, plain.protos.len());
            for (j, q) in plain.protos.iter().enumerate() {
                assert_eq!(packed.last_used[j], plain.last_used[j]);
                for (d, &c) in q.iter().enumerate() {
                    assert_eq!(packed.protos[d * packed.stride + j].to_bits(), c.to_bits());
                }
            }
        }
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
