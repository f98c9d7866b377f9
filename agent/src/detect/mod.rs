//! Streaming anomaly detectors with constant memory per series.
//!
//! Every detector implements [`Detector`]: it is fed one `(event time, value)` point at a
//! time and returns an anomaly score in `[0, 1]`. Scores are calibrated so that
//! [`DEFAULT_ALERT_THRESHOLD`] (0.5) means "this crosses the detector's configured limit";
//! pair a detector with a [`Suppressor`] to turn scores into one alert per episode.
//!
//! Detectors are built from plain-data [`DetectorSpec`]s (no serde here so the module can be
//! dropped into any crate; the agent maps its config onto the spec). The default detector
//! is [`general::GeneralDetector`], see [`DetectorSpec::default_general`].
//!
//! Non-finite inputs (NaN, ±inf) are treated as "no reading": they score 0 (except in the
//! static threshold detector, which flags ±inf) and never touch the learned state, so a
//! burst of NaNs cannot poison a series. Finite values are clamped to ±[`VALUE_LIMIT`] so
//! that squares and sums stay finite.

pub mod attach;
pub mod general;
pub mod nab;
mod novelty;
pub mod simple;
pub mod state;
mod suppress;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use general::{GeneralConfig, GeneralDetector};
pub use nab::{run_nab, NabError, NabSummary};
pub use simple::{
    EwmaDetector, FlatLineDetector, MadDetector, MissingDataDetector, RateOfChangeDetector,
    ThresholdDetector, WarmUp, ZScoreDetector,
};
pub use state::{StateReader, StateWriter};
pub use suppress::Suppressor;

/// Score at or above which a point is reported as an anomaly by default.
pub const DEFAULT_ALERT_THRESHOLD: f64 = 0.5;

/// Finite inputs are clamped to this magnitude: squares stay below f64::MAX, and no
/// physical sensor reading is anywhere near it.
pub const VALUE_LIMIT: f64 = 1e100;

/// A streaming anomaly detector for one series.
pub trait Detector: Send {
    /// Feed one point (event time in ms since epoch, value); returns anomaly score in [0, 1].
    fn update(&mut self, ts_ms: i64, value: f64) -> f64;
    /// Human-readable reason for the last update's score (only called when it is reported, so it may allocate).
    fn reason(&self) -> String;
    /// Approximate bytes of state (for docs/benchmarks).
    fn state_bytes(&self) -> usize;
    /// Score the absence of data at wall-clock time `now_ms` without feeding a point.
    ///
    /// Update-driven detectors cannot see a gap until the next point arrives; the agent calls
    /// this from a timer. Only the missing-data detector (and wrappers around it) returns
    /// non-zero; it must not change what the next `update` returns.
    fn check_idle(&mut self, _now_ms: i64) -> f64 {
        0.0
    }
    /// Appends the learned state for a checkpoint ([`state`]); false when this detector
    /// cannot save it (after a restore it then starts learning again).
    fn save_state(&self, _out: &mut StateWriter) -> bool {
        false
    }
    /// Loads what [`save_state`](Self::save_state) wrote for a detector built from the same
    /// spec; false when the bytes do not fit (the detector must then be rebuilt).
    fn load_state(&mut self, _input: &mut StateReader) -> bool {
        false
    }
}

impl Detector for Box<dyn Detector> {
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        (**self).update(ts_ms, value)
    }
    fn reason(&self) -> String {
        (**self).reason()
    }
    fn state_bytes(&self) -> usize {
        (**self).state_bytes()
    }
    fn check_idle(&mut self, now_ms: i64) -> f64 {
        (**self).check_idle(now_ms)
    }
    fn save_state(&self, out: &mut StateWriter) -> bool {
        (**self).save_state(out)
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        (**self).load_state(input)
    }
}

/// Plain-data description of a detector; `validate` then `build`.
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorSpec {
    /// Static limits: score 1 outside `[min, max]` (either bound optional), 0 inside.
    Threshold { min: Option<f64>, max: Option<f64> },
    /// |x - mean| / std over the previous `window` points; `threshold` std devs scores 0.5.
    ZScore { window: usize, threshold: f64 },
    /// Exponentially weighted mean and variance with smoothing `alpha` in (0, 1).
    Ewma { alpha: f64, threshold: f64 },
    /// |x - median| / (1.4826 MAD) over the previous `window` points (window <= 1024).
    Mad { window: usize, threshold: f64 },
    /// |dx/dt| in value units per second; `max_per_sec` scores 0.5.
    RateOfChange { max_per_sec: f64 },
    /// Same value (within `tolerance`) for at least `min_points` points AND at least
    /// `min_duration_ms` (set either to 0 to ignore it).
    FlatLine {
        min_points: usize,
        min_duration_ms: i64,
        tolerance: f64,
    },
    /// No reading for `factor` x the expected interval. `expected_interval_ms == 0` learns the
    /// interval from the data (robust running estimate).
    MissingData {
        expected_interval_ms: i64,
        factor: f64,
    },
    /// The general-purpose default detector.
    General(GeneralConfig),
    /// Score 0 for the first `points` points while `inner` learns.
    WarmUp {
        points: usize,
        inner: Box<DetectorSpec>,
    },
}

impl DetectorSpec {
    /// The default detector: [`GeneralDetector`] with [`GeneralConfig::default`].
    pub fn default_general() -> Self {
        DetectorSpec::General(GeneralConfig::default())
    }

    /// Check parameters; the error names the offending parameter and why.
    pub fn validate(&self) -> Result<(), String> {
        fn pos_finite(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive finite number, got {v}"))
            }
        }
        match self {
            DetectorSpec::Threshold { min, max } => {
                if min.is_none() && max.is_none() {
                    return Err("threshold: at least one of min/max is required".into());
                }
                for (n, v) in [("min", min), ("max", max)] {
                    if let Some(v) = v {
                        if v.is_nan() {
                            return Err(format!("threshold: {n} is NaN"));
                        }
                    }
                }
                if let (Some(a), Some(b)) = (min, max) {
                    if a > b {
                        return Err(format!("threshold: min ({a}) > max ({b})"));
                    }
                }
                Ok(())
            }
            DetectorSpec::ZScore { window, threshold } => {
                if !(3..=1_000_000).contains(window) {
                    return Err(format!(
                        "zscore: window must be in 3..=1000000, got {window}"
                    ));
                }
                pos_finite("zscore: threshold", *threshold)
            }
            DetectorSpec::Ewma { alpha, threshold } => {
                if !(alpha.is_finite() && *alpha > 0.0 && *alpha < 1.0) {
                    return Err(format!("ewma: alpha must be in (0, 1), got {alpha}"));
                }
                pos_finite("ewma: threshold", *threshold)
            }
            DetectorSpec::Mad { window, threshold } => {
                if !(3..=simple::MAD_MAX_WINDOW).contains(window) {
                    return Err(format!(
                        "mad: window must be in 3..={}, got {window}",
                        simple::MAD_MAX_WINDOW
                    ));
                }
                pos_finite("mad: threshold", *threshold)
            }
            DetectorSpec::RateOfChange { max_per_sec } => {
                pos_finite("rate_of_change: max_per_sec", *max_per_sec)
            }
            DetectorSpec::FlatLine {
                min_points,
                min_duration_ms,
                tolerance,
            } => {
                if *min_points < 2 && *min_duration_ms <= 0 {
                    return Err("flatline: need min_points >= 2 or min_duration_ms > 0".to_string());
                }
                if *min_duration_ms < 0 {
                    return Err(format!(
                        "flatline: min_duration_ms must be >= 0, got {min_duration_ms}"
                    ));
                }
                if !(tolerance.is_finite() && *tolerance >= 0.0) {
                    return Err(format!("flatline: tolerance must be >= 0, got {tolerance}"));
                }
                Ok(())
            }
            DetectorSpec::MissingData {
                expected_interval_ms,
                factor,
            } => {
                if *expected_interval_ms < 0 {
                    return Err(format!(
                        "missing_data: expected_interval_ms must be >= 0 (0 = learn), got {expected_interval_ms}"
                    ));
                }
                if !(factor.is_finite() && *factor > 1.0) {
                    return Err(format!("missing_data: factor must be > 1, got {factor}"));
                }
                Ok(())
            }
            DetectorSpec::General(cfg) => cfg.validate(),
            DetectorSpec::WarmUp { inner, .. } => inner.validate(),
        }
    }

    /// Build the detector. Call [`validate`](Self::validate) first: invalid parameters are
    /// clamped to something usable rather than panicking.
    pub fn build(&self) -> Box<dyn Detector> {
        match self {
            DetectorSpec::Threshold { min, max } => Box::new(ThresholdDetector::new(*min, *max)),
            DetectorSpec::ZScore { window, threshold } => {
                Box::new(ZScoreDetector::new(*window, *threshold))
            }
            DetectorSpec::Ewma { alpha, threshold } => {
                Box::new(EwmaDetector::new(*alpha, *threshold))
            }
            DetectorSpec::Mad { window, threshold } => {
                Box::new(MadDetector::new(*window, *threshold))
            }
            DetectorSpec::RateOfChange { max_per_sec } => {
                Box::new(RateOfChangeDetector::new(*max_per_sec))
            }
            DetectorSpec::FlatLine {
                min_points,
                min_duration_ms,
                tolerance,
            } => Box::new(FlatLineDetector::new(
                *min_points,
                *min_duration_ms,
                *tolerance,
            )),
            DetectorSpec::MissingData {
                expected_interval_ms,
                factor,
            } => Box::new(MissingDataDetector::new(*expected_interval_ms, *factor)),
            DetectorSpec::General(cfg) => Box::new(GeneralDetector::new(cfg.clone())),
            DetectorSpec::WarmUp { points, inner } => Box::new(WarmUp::new(inner.build(), *points)),
        }
    }
}

/// Map a non-negative statistic to [0, 1) so that `stat == limit` gives exactly 0.5.
///
/// Squared ratio makes the curve flat for small deviations (noise stays near 0) and steep
/// around the limit; the score saturates smoothly instead of clipping.
#[inline]
pub(crate) fn ratio_score(stat: f64, limit: f64) -> f64 {
    let r = stat / limit;
    if !r.is_finite() {
        return if r.is_nan() { 0.0 } else { 1.0 };
    }
    let s = 1.0 - (-std::f64::consts::LN_2 * r * r).exp();
    s.clamp(0.0, 1.0)
}

/// Clamp a finite value into ±VALUE_LIMIT; `None` for NaN/±inf.
#[inline]
pub(crate) fn sanitize(v: f64) -> Option<f64> {
    if v.is_finite() {
        Some(v.clamp(-VALUE_LIMIT, VALUE_LIMIT))
    } else {
        None
    }
}
