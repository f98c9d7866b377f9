/// Turns a stream of scores into one alert per anomaly episode.
///
/// An episode starts at the first score >= `threshold` while armed (that point is the alert)
/// and lasts as long as scores keep crossing the threshold. The suppressor re-arms only after
/// the score has stayed below the threshold for `cooldown_points` points AND `cooldown_ms`
/// of event time since the last crossing, so a long or flapping anomaly gives one alert.
#[derive(Debug, Clone)]
pub struct Suppressor {
    threshold: f64,
    cooldown_points: u64,
    cooldown_ms: i64,
    armed: bool,
    quiet_points: u64,
    last_high_ms: i64,
}

impl Suppressor {
    pub fn new(threshold: f64, cooldown_points: u64, cooldown_ms: i64) -> Self {
        Suppressor {
            threshold,
            cooldown_points,
            cooldown_ms: cooldown_ms.max(0),
            armed: true,
            quiet_points: 0,
            last_high_ms: i64::MIN,
        }
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// True while an episode (or its cooldown) is suppressing alerts.
    pub fn in_episode(&self) -> bool {
        !self.armed
    }

    /// Feed one score; true if this point should be reported as an alert.
    pub fn observe(&mut self, ts_ms: i64, score: f64) -> bool {
        // NaN compares false: it neither alerts nor extends an episode.
        if score >= self.threshold {
            self.quiet_points = 0;
            self.last_high_ms = ts_ms;
            if self.armed {
                self.armed = false;
                return true;
            }
            return false;
        }
        if !self.armed {
            self.quiet_points += 1;
            let quiet_ms = ts_ms.saturating_sub(self.last_high_ms);
            if self.quiet_points >= self.cooldown_points && quiet_ms >= self.cooldown_ms {
                self.armed = true;
            }
        }
        false
    }

    /// Like [`observe`](Self::observe) but returns the score to publish: unchanged for the
    /// alert and for sub-threshold points; suppressed crossings are capped just below the
    /// threshold so they still read as "elevated" without counting as a new alert.
    pub fn apply(&mut self, ts_ms: i64, score: f64) -> f64 {
        let alert = self.observe(ts_ms, score);
        // NaN is not high: it passes through (and detectors never emit it).
        let high = score >= self.threshold;
        if alert || !high {
            score
        } else {
            below(self.threshold).max(0.0)
        }
    }

    /// Appends the episode state for a checkpoint.
    pub fn save_state(&self, w: &mut super::StateWriter) {
        w.bool(self.armed);
        w.u64(self.quiet_points);
        w.i64(self.last_high_ms);
    }

    /// Loads what [`save_state`](Self::save_state) wrote; `None` when the bytes do not fit.
    pub fn load_state(&mut self, r: &mut super::StateReader) -> Option<()> {
        self.armed = r.bool()?;
        self.quiet_points = r.u64()?;
        self.last_high_ms = r.i64()?;
        Some(())
    }

    pub fn reset(&mut self) {
        self.armed = true;
        self.quiet_points = 0;
        self.last_high_ms = i64::MIN;
    }
}

/// Largest f64 strictly below `x` (for positive finite x); avoids f64::next_down (MSRV).
fn below(x: f64) -> f64 {
    if x > 0.0 && x.is_finite() {
        f64::from_bits(x.to_bits() - 1)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_episode() {
        let mut s = Suppressor::new(0.5, 10, 0);
        let mut alerts = 0;
        for i in 0..100 {
            // flapping anomaly for 50 points, then quiet
            let score = if i < 50 && i % 3 != 0 { 0.9 } else { 0.1 };
            if s.observe(i, score) {
                alerts += 1;
            }
        }
        assert_eq!(alerts, 1);
        // re-armed after the cooldown
        assert!(s.observe(100, 0.9));
    }

    #[test]
    fn cooldown_in_time() {
        let mut s = Suppressor::new(0.5, 0, 60_000);
        assert!(s.observe(0, 0.9));
        assert!(!s.observe(30_000, 0.1));
        assert!(!s.observe(50_000, 0.9)); // still inside episode: extends it
        assert!(!s.observe(100_000, 0.1)); // only 50 s quiet
        assert!(!s.observe(115_000, 0.1)); // 65 s quiet: re-armed
        assert!(s.observe(120_000, 0.9));
    }

    #[test]
    fn apply_caps_suppressed() {
        let mut s = Suppressor::new(0.5, 5, 0);
        assert_eq!(s.apply(0, 0.8), 0.8);
        let v = s.apply(1, 0.8);
        assert!(v < 0.5 && v > 0.49);
        assert_eq!(s.apply(2, 0.2), 0.2);
    }
}
