//! Simple single-statistic detectors. Each is O(1) memory per series (the windowed ones use
//! a fixed-size ring buffer) and maps its statistic through [`ratio_score`] so that the
//! configured limit scores exactly [`DEFAULT_ALERT_THRESHOLD`](super::DEFAULT_ALERT_THRESHOLD).

use super::state::{StateReader, StateWriter};
use super::{ratio_score, sanitize, Detector};

/// Largest window the median/MAD detector accepts (it sorts a scratch copy per point).
pub const MAD_MAX_WINDOW: usize = 1024;

/// Consistency constant so that 1.4826 * MAD estimates the std dev of Gaussian data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Scale floor relative to the level, so a perfectly constant series still yields finite z.
fn scale_floor(level: f64) -> f64 {
    1e-9 * level.abs().max(1.0)
}

// ---------------------------------------------------------------------------------------

/// Static min/max limits.
#[derive(Debug, Clone)]
pub struct ThresholdDetector {
    min: Option<f64>,
    max: Option<f64>,
    last: f64,
    last_score: f64,
}

impl ThresholdDetector {
    pub fn new(min: Option<f64>, max: Option<f64>) -> Self {
        ThresholdDetector {
            min,
            max,
            last: 0.0,
            last_score: 0.0,
        }
    }
}

impl Detector for ThresholdDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, _ts_ms: i64, value: f64) -> f64 {
        self.last = value;
        // ±inf is a real "beyond any limit" reading; NaN is no reading.
        let below = self.min.is_some_and(|m| value < m);
        let above = self.max.is_some_and(|m| value > m);
        self.last_score = if below || above { 1.0 } else { 0.0 };
        self.last_score
    }
    fn reason(&self) -> String {
        match (self.min, self.max) {
            (Some(lo), _) if self.last < lo => format!("value {} below min {}", self.last, lo),
            (_, Some(hi)) if self.last > hi => format!("value {} above max {}", self.last, hi),
            _ => format!("value {} within limits", self.last),
        }
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

// ---------------------------------------------------------------------------------------

/// Rolling z-score over the previous `window` points (the current point is scored against
/// the window before it is added, so a spike cannot mask itself).
#[derive(Debug, Clone)]
pub struct ZScoreDetector {
    buf: Vec<f64>,
    pos: usize,
    len: usize,
    // Sums are of (x - anchor) to limit cancellation when the level is large vs the noise.
    anchor: f64,
    sum: f64,
    sumsq: f64,
    since_recompute: usize,
    threshold: f64,
    last_z: f64,
    last_value: f64,
}

impl ZScoreDetector {
    pub fn new(window: usize, threshold: f64) -> Self {
        let window = window.max(3);
        ZScoreDetector {
            buf: vec![0.0; window],
            pos: 0,
            len: 0,
            anchor: 0.0,
            sum: 0.0,
            sumsq: 0.0,
            since_recompute: 0,
            threshold: if threshold > 0.0 { threshold } else { 3.0 },
            last_z: 0.0,
            last_value: 0.0,
        }
    }

    fn recompute(&mut self) {
        // Two-pass resum around the exact window mean: bounds float drift of the running
        // sums and repairs them after a dominant value has left the window.
        let n = self.len as f64;
        let mean = self.buf[..self.len].iter().sum::<f64>() / n;
        self.anchor = mean;
        let (mut s, mut q) = (0.0, 0.0);
        for &x in &self.buf[..self.len] {
            let d = x - mean;
            s += d;
            q += d * d;
        }
        self.sum = s;
        self.sumsq = q;
        self.since_recompute = 0;
    }
}

impl Detector for ZScoreDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, _ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            self.last_z = 0.0;
            return 0.0;
        };
        self.last_value = x;
        let w = self.buf.len();
        if self.len == 0 {
            self.anchor = x;
        }
        let mut score = 0.0;
        self.last_z = 0.0;
        if self.len == w {
            let n = w as f64;
            let mean_d = self.sum / n;
            let var = (self.sumsq / n - mean_d * mean_d).max(0.0);
            let mean = self.anchor + mean_d;
            let sd = var.sqrt().max(scale_floor(mean));
            let z = (x - mean) / sd;
            self.last_z = z;
            score = ratio_score(z.abs(), self.threshold);
            let old = self.buf[self.pos] - self.anchor;
            // A dominant value leaving the window would leave only rounding noise behind
            // (catastrophic cancellation): resum from the buffer instead.
            if old * old > 0.5 * self.sumsq {
                self.since_recompute = w;
            }
            self.sum -= old;
            self.sumsq -= old * old;
        } else {
            self.len += 1;
        }
        let d = x - self.anchor;
        self.buf[self.pos] = x;
        self.sum += d;
        self.sumsq += d * d;
        self.pos = (self.pos + 1) % w;
        self.since_recompute += 1;
        if self.since_recompute >= w || !self.sumsq.is_finite() || self.sumsq < 0.0 {
            self.recompute();
        }
        score
    }
    fn reason(&self) -> String {
        format!(
            "value {} is {:.2} std devs from the mean of the last {} points (limit {})",
            self.last_value,
            self.last_z,
            self.buf.len(),
            self.threshold
        )
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.buf.capacity() * 8
    }
}

// ---------------------------------------------------------------------------------------

/// EWMA mean with exponentially weighted variance (West's incremental form).
#[derive(Debug, Clone)]
pub struct EwmaDetector {
    alpha: f64,
    threshold: f64,
    mean: f64,
    var: f64,
    n: u64,
    last_z: f64,
    last_value: f64,
}

impl EwmaDetector {
    pub fn new(alpha: f64, threshold: f64) -> Self {
        EwmaDetector {
            alpha: if alpha > 0.0 && alpha < 1.0 {
                alpha
            } else {
                0.05
            },
            threshold: if threshold > 0.0 { threshold } else { 3.0 },
            mean: 0.0,
            var: 0.0,
            n: 0,
            last_z: 0.0,
            last_value: 0.0,
        }
    }
}

impl Detector for EwmaDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, _ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            self.last_z = 0.0;
            return 0.0;
        };
        self.last_value = x;
        if self.n == 0 {
            self.mean = x;
            self.n = 1;
            self.last_z = 0.0;
            return 0.0;
        }
        let sd = self.var.sqrt().max(scale_floor(self.mean));
        let z = (x - self.mean) / sd;
        // Score only once the averages have ~1/alpha points of memory behind them.
        let ready = (self.n as f64) * self.alpha >= 1.0;
        self.last_z = if ready { z } else { 0.0 };
        let d = x - self.mean;
        let incr = self.alpha * d;
        self.mean += incr;
        self.var = (1.0 - self.alpha) * (self.var + d * incr);
        self.n += 1;
        if ready {
            ratio_score(z.abs(), self.threshold)
        } else {
            0.0
        }
    }
    fn reason(&self) -> String {
        format!(
            "value {} is {:.2} EW std devs from the EW mean {:.6} (limit {})",
            self.last_value, self.last_z, self.mean, self.threshold
        )
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

// ---------------------------------------------------------------------------------------

/// Robust z-score: |x - median| / (1.4826 * MAD) over the previous `window` points.
#[derive(Debug, Clone)]
pub struct MadDetector {
    buf: Vec<f64>,
    scratch: Vec<f64>,
    pos: usize,
    len: usize,
    threshold: f64,
    last_z: f64,
    last_median: f64,
    last_value: f64,
}

impl MadDetector {
    pub fn new(window: usize, threshold: f64) -> Self {
        let window = window.clamp(3, MAD_MAX_WINDOW);
        MadDetector {
            buf: vec![0.0; window],
            scratch: vec![0.0; window],
            pos: 0,
            len: 0,
            threshold: if threshold > 0.0 { threshold } else { 3.5 },
            last_z: 0.0,
            last_median: 0.0,
            last_value: 0.0,
        }
    }
}

fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let lo = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + m)
    }
}

impl Detector for MadDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, _ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            self.last_z = 0.0;
            return 0.0;
        };
        self.last_value = x;
        let w = self.buf.len();
        let mut score = 0.0;
        self.last_z = 0.0;
        if self.len == w {
            self.scratch.copy_from_slice(&self.buf);
            let med = median_in_place(&mut self.scratch);
            for v in self.scratch.iter_mut() {
                *v = (*v - med).abs();
            }
            let mad = median_in_place(&mut self.scratch);
            let sd = (MAD_TO_SIGMA * mad).max(scale_floor(med));
            let z = (x - med) / sd;
            self.last_z = z;
            self.last_median = med;
            score = ratio_score(z.abs(), self.threshold);
        } else {
            self.len += 1;
        }
        self.buf[self.pos] = x;
        self.pos = (self.pos + 1) % w;
        score
    }
    fn reason(&self) -> String {
        format!(
            "value {} is {:.2} robust std devs (MAD) from the median {} of the last {} points (limit {})",
            self.last_value,
            self.last_z,
            self.last_median,
            self.buf.len(),
            self.threshold
        )
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (self.buf.capacity() + self.scratch.capacity()) * 8
    }
}

// ---------------------------------------------------------------------------------------

/// |dx/dt| between consecutive finite points, in value units per second.
#[derive(Debug, Clone)]
pub struct RateOfChangeDetector {
    max_per_sec: f64,
    prev: Option<(i64, f64)>,
    last_rate: f64,
}

impl RateOfChangeDetector {
    pub fn new(max_per_sec: f64) -> Self {
        RateOfChangeDetector {
            max_per_sec: if max_per_sec > 0.0 { max_per_sec } else { 1.0 },
            prev: None,
            last_rate: 0.0,
        }
    }
}

impl Detector for RateOfChangeDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            self.last_rate = 0.0;
            return 0.0;
        };
        let mut score = 0.0;
        self.last_rate = 0.0;
        if let Some((pt, pv)) = self.prev {
            let dt = ts_ms.saturating_sub(pt);
            // Duplicate or out-of-order timestamps carry no rate information.
            if dt > 0 {
                let rate = (x - pv) / (dt as f64 / 1000.0);
                self.last_rate = rate;
                score = ratio_score(rate.abs(), self.max_per_sec);
            }
        }
        self.prev = Some((ts_ms, x));
        score
    }
    fn reason(&self) -> String {
        format!(
            "rate of change {:.6}/s (limit {}/s)",
            self.last_rate, self.max_per_sec
        )
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

// ---------------------------------------------------------------------------------------

/// Stuck sensor: the value stays within `tolerance` of the run's first value for at least
/// `min_points` points and `min_duration_ms`. Scores 1 for every point of a stuck run (use a
/// [`Suppressor`](super::Suppressor) for one alert per run).
#[derive(Debug, Clone)]
pub struct FlatLineDetector {
    min_points: u64,
    min_duration_ms: i64,
    tolerance: f64,
    run_value: f64,
    run_start_ms: i64,
    run_len: u64,
    started: bool,
    last_ms: i64,
}

impl FlatLineDetector {
    pub fn new(min_points: usize, min_duration_ms: i64, tolerance: f64) -> Self {
        FlatLineDetector {
            min_points: min_points as u64,
            min_duration_ms: min_duration_ms.max(0),
            tolerance: if tolerance >= 0.0 { tolerance } else { 0.0 },
            run_value: 0.0,
            run_start_ms: 0,
            run_len: 0,
            started: false,
            last_ms: 0,
        }
    }

    fn stuck(&self) -> bool {
        self.run_len >= self.min_points.max(2)
            && self.last_ms.saturating_sub(self.run_start_ms) >= self.min_duration_ms
    }
}

impl Detector for FlatLineDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            return if self.stuck() { 1.0 } else { 0.0 };
        };
        if self.started && (x - self.run_value).abs() <= self.tolerance {
            self.run_len += 1;
        } else {
            self.started = true;
            self.run_value = x;
            self.run_start_ms = ts_ms;
            self.run_len = 1;
        }
        self.last_ms = ts_ms;
        if self.stuck() {
            1.0
        } else {
            0.0
        }
    }
    fn reason(&self) -> String {
        format!(
            "value stuck at {} for {} points / {} s",
            self.run_value,
            self.run_len,
            self.last_ms.saturating_sub(self.run_start_ms) / 1000
        )
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

// ---------------------------------------------------------------------------------------

/// Missing data: a gap longer than `factor` x the expected sampling interval.
///
/// Being update-driven, a gap is scored when the next point arrives (`update` scores the gap
/// that point closes); to alert while the gap is still open the agent calls
/// [`Detector::check_idle`] from a timer with the wall-clock time. Both use the same scale:
/// gap <= expected interval scores 0, gap == factor x interval scores 0.5.
///
/// With `expected_interval_ms == 0` the interval is learned as a running median of observed
/// intervals (multiplicative stochastic median: robust to the gaps being detected).
#[derive(Debug, Clone)]
pub struct MissingDataDetector {
    fixed_interval_ms: i64,
    factor: f64,
    est_interval_ms: f64,
    intervals_seen: u64,
    last_ts: Option<i64>,
    last_gap_ms: i64,
}

/// Intervals needed before a learned interval is trusted.
const MISSING_MIN_INTERVALS: u64 = 3;

impl MissingDataDetector {
    pub fn new(expected_interval_ms: i64, factor: f64) -> Self {
        MissingDataDetector {
            fixed_interval_ms: expected_interval_ms.max(0),
            factor: if factor > 1.0 { factor } else { 3.0 },
            est_interval_ms: 0.0,
            intervals_seen: 0,
            last_ts: None,
            last_gap_ms: 0,
        }
    }

    /// Current expected interval in ms (configured or learned), if known yet.
    pub fn expected_interval_ms(&self) -> Option<f64> {
        if self.fixed_interval_ms > 0 {
            Some(self.fixed_interval_ms as f64)
        } else if self.intervals_seen >= MISSING_MIN_INTERVALS {
            Some(self.est_interval_ms)
        } else {
            None
        }
    }

    fn gap_score(&self, gap_ms: i64) -> f64 {
        match self.expected_interval_ms() {
            Some(exp) if exp > 0.0 => {
                let excess = (gap_ms as f64 - exp).max(0.0);
                ratio_score(excess, (self.factor - 1.0) * exp)
            }
            _ => 0.0,
        }
    }
}

impl Detector for MissingDataDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        if !value.is_finite() {
            // Not a reading: the gap stays open.
            return 0.0;
        }
        let mut score = 0.0;
        if let Some(prev) = self.last_ts {
            let gap = ts_ms.saturating_sub(prev);
            self.last_gap_ms = gap;
            score = self.gap_score(gap);
            if gap > 0 {
                let g = gap as f64;
                if self.intervals_seen == 0 {
                    self.est_interval_ms = g;
                } else if g > self.est_interval_ms {
                    self.est_interval_ms *= 1.05;
                } else if g < self.est_interval_ms {
                    self.est_interval_ms /= 1.05;
                }
                self.intervals_seen += 1;
            }
        }
        if self.last_ts.is_none_or(|p| ts_ms >= p) {
            self.last_ts = Some(ts_ms);
        }
        score
    }
    fn check_idle(&mut self, now_ms: i64) -> f64 {
        match self.last_ts {
            Some(prev) => {
                let gap = now_ms.saturating_sub(prev);
                self.last_gap_ms = gap;
                self.gap_score(gap)
            }
            None => 0.0,
        }
    }
    fn reason(&self) -> String {
        match self.expected_interval_ms() {
            Some(exp) => format!(
                "no data for {} s (expected every {:.1} s, limit {}x)",
                self.last_gap_ms / 1000,
                exp / 1000.0,
                self.factor
            ),
            None => "interval not learned yet".to_string(),
        }
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

// ---------------------------------------------------------------------------------------

/// Scores 0 for the first `points` updates while the inner detector learns.
pub struct WarmUp {
    inner: Box<dyn Detector>,
    points: u64,
    seen: u64,
}

impl WarmUp {
    pub fn new(inner: Box<dyn Detector>, points: usize) -> Self {
        WarmUp {
            inner,
            points: points as u64,
            seen: 0,
        }
    }
}

impl Detector for WarmUp {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out)
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        self.load(input).is_some()
    }
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        let s = self.inner.update(ts_ms, value);
        self.seen = self.seen.saturating_add(1);
        if self.seen <= self.points {
            0.0
        } else {
            s
        }
    }
    fn check_idle(&mut self, now_ms: i64) -> f64 {
        if self.seen <= self.points {
            0.0
        } else {
            self.inner.check_idle(now_ms)
        }
    }
    fn reason(&self) -> String {
        if self.seen <= self.points {
            format!("warming up ({}/{} points)", self.seen, self.points)
        } else {
            self.inner.reason()
        }
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.inner.state_bytes()
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoint state: the learned fields only (parameters come from the spec).

impl ThresholdDetector {
    fn save(&self, w: &mut StateWriter) {
        w.f64(self.last);
        w.f64(self.last_score);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.last = r.f64()?;
        self.last_score = r.f64()?;
        Some(())
    }
}

impl ZScoreDetector {
    fn save(&self, w: &mut StateWriter) {
        w.f64s(&self.buf);
        w.u64(self.pos as u64);
        w.u64(self.len as u64);
        w.u64(self.since_recompute as u64);
        for v in [
            self.anchor,
            self.sum,
            self.sumsq,
            self.last_z,
            self.last_value,
        ] {
            w.f64(v);
        }
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        r.f64s_into(&mut self.buf)?;
        let (pos, len) = (r.usize()?, r.usize()?);
        if pos >= self.buf.len() || len > self.buf.len() {
            return None;
        }
        (self.pos, self.len, self.since_recompute) = (pos, len, r.usize()?);
        self.anchor = r.f64()?;
        self.sum = r.f64()?;
        self.sumsq = r.f64()?;
        self.last_z = r.f64()?;
        self.last_value = r.f64()?;
        Some(())
    }
}

impl EwmaDetector {
    fn save(&self, w: &mut StateWriter) {
        for v in [self.mean, self.var, self.last_z, self.last_value] {
            w.f64(v);
        }
        w.u64(self.n);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.mean = r.f64()?;
        self.var = r.f64()?;
        self.last_z = r.f64()?;
        self.last_value = r.f64()?;
        self.n = r.u64()?;
        Some(())
    }
}

impl MadDetector {
    fn save(&self, w: &mut StateWriter) {
        // `scratch` is rewritten from `buf` before every use: not state.
        w.f64s(&self.buf);
        w.u64(self.pos as u64);
        w.u64(self.len as u64);
        for v in [self.last_z, self.last_median, self.last_value] {
            w.f64(v);
        }
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        r.f64s_into(&mut self.buf)?;
        let (pos, len) = (r.usize()?, r.usize()?);
        if pos >= self.buf.len() || len > self.buf.len() {
            return None;
        }
        (self.pos, self.len) = (pos, len);
        self.last_z = r.f64()?;
        self.last_median = r.f64()?;
        self.last_value = r.f64()?;
        Some(())
    }
}

impl RateOfChangeDetector {
    fn save(&self, w: &mut StateWriter) {
        w.bool(self.prev.is_some());
        let (t, v) = self.prev.unwrap_or((0, 0.0));
        w.i64(t);
        w.f64(v);
        w.f64(self.last_rate);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        let some = r.bool()?;
        let (t, v) = (r.i64()?, r.f64()?);
        self.prev = some.then_some((t, v));
        self.last_rate = r.f64()?;
        Some(())
    }
}

impl FlatLineDetector {
    fn save(&self, w: &mut StateWriter) {
        w.f64(self.run_value);
        w.i64(self.run_start_ms);
        w.u64(self.run_len);
        w.bool(self.started);
        w.i64(self.last_ms);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.run_value = r.f64()?;
        self.run_start_ms = r.i64()?;
        self.run_len = r.u64()?;
        self.started = r.bool()?;
        self.last_ms = r.i64()?;
        Some(())
    }
}

impl MissingDataDetector {
    fn save(&self, w: &mut StateWriter) {
        w.f64(self.est_interval_ms);
        w.u64(self.intervals_seen);
        w.bool(self.last_ts.is_some());
        w.i64(self.last_ts.unwrap_or(0));
        w.i64(self.last_gap_ms);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.est_interval_ms = r.f64()?;
        self.intervals_seen = r.u64()?;
        let some = r.bool()?;
        let t = r.i64()?;
        self.last_ts = some.then_some(t);
        self.last_gap_ms = r.i64()?;
        Some(())
    }
}

impl WarmUp {
    /// False when the wrapped detector cannot save its state.
    fn save(&self, w: &mut StateWriter) -> bool {
        w.u64(self.seen);
        self.inner.save_state(w)
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.seen = r.u64()?;
        self.inner.load_state(r).then_some(())
    }
}
