//! Continuous tail probability of a value from a forgetting quantile sketch: a fixed set of
//! quantile markers tracked by stochastic approximation, linear between markers and
//! exponential beyond the outermost ones. Unlike a histogram it has no bin edges: the
//! probability moves continuously with the value.

const TAUS: [f64; 9] = [0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999];

#[derive(Debug, Clone)]
pub struct QuantileTail {
    q: [f64; 9],
    n: u64,
    pub slope: f64,
    pub scale: f64,
}

impl QuantileTail {
    pub fn new() -> Self {
        QuantileTail {
            q: [0.0; 9],
            n: 0,
            slope: 1.2,
            scale: 1.0,
        }
    }

    /// Two-sided tail surprisal `-ln min(F(x), 1 - F(x))` of `x` (`None` before any data),
    /// then learns `x` with step `eta` (value units).
    pub fn observe(&mut self, x: f64, eta: f64, width_floor: f64) -> Option<f64> {
        self.n += 1;
        if self.n == 1 {
            self.q = [x; 9];
            return None;
        }
        let s = self.surprisal(x, width_floor);
        for (q, &tau) in self.q.iter_mut().zip(&TAUS) {
            *q += eta * (tau - if x <= *q { 1.0 } else { 0.0 });
        }
        for i in 1..self.q.len() {
            if self.q[i] < self.q[i - 1] {
                self.q[i] = self.q[i - 1];
            }
        }
        Some(s)
    }

    fn surprisal(&self, x: f64, width_floor: f64) -> f64 {
        let (q, k) = (&self.q, TAUS.len());
        let tail = |_inner: f64, _outer: f64, _t_in: f64, t_out: f64, dist: f64| {
            // Beyond the outermost marker: surprisal grows with asinh of the distance in
            // running scales, as slowly as the histogram's distance term.
            t_out * (-self.slope * (dist / self.scale).asinh()).exp()
        };
        let f_low;
        let f_high;
        if x <= q[0] {
            f_low = tail(q[1], q[0], TAUS[1], TAUS[0], q[0] - x);
            f_high = 1.0 - f_low;
        } else if x >= q[k - 1] {
            f_high = tail(
                q[k - 2],
                q[k - 1],
                1.0 - TAUS[k - 2],
                1.0 - TAUS[k - 1],
                x - q[k - 1],
            );
            f_low = 1.0 - f_high;
        } else {
            let i = (1..k).find(|&i| x < q[i]).unwrap_or(k - 1);
            let span = (q[i] - q[i - 1]).max(width_floor);
            let f = TAUS[i - 1] + (TAUS[i] - TAUS[i - 1]) * (x - q[i - 1]) / span;
            f_low = f;
            f_high = 1.0 - f;
        }
        -(f_low.min(f_high).max(1e-300)).ln()
    }
}
