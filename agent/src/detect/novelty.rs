//! Continuous context novelty: how far the last few normalised values are from every
//! context the series has shown before, with no grid.
//!
//! The histogram views decide "never seen" by which bin a value falls in, so whether a
//! point is novel depends on where the bin edges happen to lie. Here the evidence is a
//! distance: the current context (the last `k` normalised levels) is compared with a
//! bounded set of remembered contexts (prototypes, in the manner of ART's categories), and
//! the Chebyshev distance to the nearest one is the surprise. A context farther than
//! `radius` from every prototype becomes a new prototype (replacing the one matched least
//! recently when the set is full); a closer one refreshes its prototype. So the set covers
//! the region of context space visited recently at resolution `radius`, centred on the data
//! rather than on a fixed grid.

use super::{StateReader, StateWriter};

/// Largest context length (values per context).
pub const MAX_CONTEXT: usize = 4;
/// Values kept for building contexts: `(k - 1) * lag` must stay below it.
const HISTORY: usize = 32;
/// Largest spacing (points) between the values of a context.
pub const MAX_LAG: usize = (HISTORY - 1) / (MAX_CONTEXT - 1);
/// Largest number of remembered contexts.
pub const MAX_PROTOTYPES: usize = 512;

#[derive(Debug, Clone)]
pub struct Novelty {
    k: usize,
    lag: usize,
    cap: usize,
    radius: f32,
    /// Prototypes not matched for this many contexts are forgotten (0: never).
    horizon: u64,
    /// Dimension-major (`protos[d * cap + j]` is coordinate `d` of prototype `j`), so the
    /// distance scan runs along contiguous memory and vectorises.
    protos: Vec<f32>,
    last_used: Vec<u64>,
    len: usize,
    /// The last normalised values, newest first.
    recent: [f32; HISTORY],
    filled: usize,
    tick: u64,
    /// Per-prototype distance of the current context; scratch, not state.
    dist: Vec<f32>,
}

impl Novelty {
    pub fn new(k: usize, lag: usize, cap: usize, radius: f64, horizon: u64) -> Self {
        let k = k.clamp(1, MAX_CONTEXT);
        let lag = lag.clamp(1, MAX_LAG);
        let cap = cap.clamp(1, MAX_PROTOTYPES);
        Novelty {
            k,
            lag,
            cap,
            radius: radius as f32,
            horizon: if horizon == 0 { u64::MAX } else { horizon },
            protos: vec![0.0; k * cap],
            last_used: vec![0; cap],
            len: 0,
            recent: [0.0; HISTORY],
            filled: 0,
            tick: 0,
            dist: vec![0.0; cap],
        }
    }

    /// Feed the next normalised value; returns the distance of the context ending here to
    /// the nearest remembered one (`None` until `k` values and one prototype exist), then
    /// learns the context.
    pub fn observe(&mut self, u: f64) -> Option<f64> {
        self.recent.copy_within(0..HISTORY - 1, 1);
        self.recent[0] = u as f32;
        let span = (self.k - 1) * self.lag + 1;
        self.filled = (self.filled + 1).min(span);
        if self.filled < span {
            return None;
        }
        self.tick += 1;
        let n = self.len;
        let dist = &mut self.dist[..n];
        dist.fill(0.0);
        for d in 0..self.k {
            let c = self.recent[d * self.lag];
            let row = &self.protos[d * self.cap..d * self.cap + n];
            for (acc, &p) in dist.iter_mut().zip(row) {
                *acc = acc.max((p - c).abs());
            }
        }
        let (mut best, mut at) = (f32::INFINITY, 0);
        for (j, &v) in dist.iter().enumerate() {
            if v < best && self.tick - self.last_used[j] <= self.horizon {
                (best, at) = (v, j);
            }
        }
        if best > self.radius {
            let slot = if n < self.cap {
                self.len += 1;
                n
            } else {
                // Least recently matched: the region the series left longest ago.
                let mut oldest = 0;
                for j in 1..self.cap {
                    if self.last_used[j] < self.last_used[oldest] {
                        oldest = j;
                    }
                }
                oldest
            };
            for d in 0..self.k {
                self.protos[d * self.cap + slot] = self.recent[d * self.lag];
            }
            self.last_used[slot] = self.tick;
        } else {
            self.last_used[at] = self.tick;
        }
        (n > 0).then_some(f64::from(best))
    }

    pub fn save(&self, w: &mut StateWriter) {
        w.u64(self.len as u64);
        w.u64(self.filled as u64);
        w.u64(self.tick);
        let recent: Vec<f64> = self.recent.iter().map(|&v| f64::from(v)).collect();
        w.f64s(&recent);
        for j in 0..self.len {
            w.u64(self.last_used[j]);
            for d in 0..self.k {
                w.f64(f64::from(self.protos[d * self.cap + j]));
            }
        }
    }

    pub fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.len = r.usize().filter(|&n| n <= self.cap)?;
        self.filled = r.usize().filter(|&n| n <= (self.k - 1) * self.lag + 1)?;
        self.tick = r.u64()?;
        let mut recent = [0.0f64; HISTORY];
        r.f64s_into(&mut recent)?;
        for (dst, src) in self.recent.iter_mut().zip(recent) {
            *dst = src as f32;
        }
        for j in 0..self.len {
            self.last_used[j] = r.u64()?;
            for d in 0..self.k {
                self.protos[d * self.cap + j] = r.f64()? as f32;
            }
        }
        Some(())
    }

    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.protos.capacity() + self.dist.capacity()) * 4
            + self.last_used.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() < 1e-6)
    }

    #[test]
    fn distance_to_nearest_context_and_lru_replacement() {
        let mut n = Novelty::new(2, 1, 2, 0.5, 0);
        assert_eq!(n.observe(0.0), None); // context not full yet
        assert_eq!(n.observe(0.0), None); // first prototype (0, 0)
        assert!(near(n.observe(0.2), 0.2)); // (0.2, 0) refreshes (0, 0)
        assert!(near(n.observe(3.0), 3.0)); // (3, 0.2) becomes a prototype
        assert!(near(n.observe(3.0), 2.8)); // (3, 3) is new too: the set is full, and
                                            // (0, 0) was matched least recently
                                            // (0, 3) against {(3, 3), (3, 0.2)}: the origin's prototype is gone.
        assert!(near(n.observe(0.0), 3.0));
        let mut buf = Vec::new();
        n.save(&mut StateWriter(&mut buf));
        let mut m = Novelty::new(2, 1, 2, 0.5, 0);
        m.load(&mut StateReader(&buf)).unwrap();
        assert!(near(m.observe(3.0), n.observe(3.0).unwrap()));
    }
}
