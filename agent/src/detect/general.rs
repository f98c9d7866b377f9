//! The general-purpose default detector: "calibrated multi-view rarity".
//!
//! Idea: most anomalies in machine/sensor streams are *behaviour the series has not shown
//! before* — a level never visited, a jump bigger than any previous one, a value unusual for
//! the time of day. Instead of a parametric model (which heavy-tailed, multi-modal, quantised
//! real series break) the detector learns the empirical distribution of four views of the
//! signal and asks how rare the current point is under each:
//!
//! 1. level: the value itself;
//! 2. smoothed level: EWMA over ~3 points (level shifts under noise);
//! 3. step: |x_t - x_{t-1}| (spikes, jumps, volatility changes);
//! 4. seasonal residual: x minus a per-time-of-day profile (daily pattern breaks).
//!
//! Each view is normalised by a slow running location/scale and compressed with `asinh`
//! (so one huge outlier does not wreck the resolution of the rest), then counted in a
//! 128-bin histogram with exponential forgetting. Rarity of a point is its surprisal
//! `-ln p(bin)`, plus a distance term when the bin is empty (a value far from anything seen
//! is rarer than one just past the edge; without it all novel values tie).
//!
//! Raw surprisal is not comparable between series (a noisy series produces high surprisal
//! all the time), so each view's surprisal is calibrated against its own history: a second
//! forgetting histogram gives the tail probability of "this much surprise", and above its
//! 95th percentile an exponential tail (peaks-over-threshold, as in extreme value theory)
//! keeps the score continuous and unsaturated. The result is a rarity in nats that means
//! the same thing on every series.
//!
//! Many anomalies are not one very rare point but a run of moderately rare ones (a changed
//! regime, a noisier sensor, a drift). For that each view also runs Numenta's "anomaly
//! likelihood" test on its own rarity stream: a ~120-point average of the rarity is compared
//! with the long-run mean and variance of that average, and the Gaussian tail probability
//! of the excess, in nats, competes with the point rarities. Per view, so an always-noisy
//! view cannot mask a quiet one that changed. On the NAB dev set this stage is worth
//! +4.7 points (72.4 -> 77.1, standard profile).
//!
//! A fifth, grid-free test (`novelty_prototypes`, 256 by default; 0 turns it off): the
//! distance of (level, time of day) to the nearest remembered such point
//! ([`super::novelty`]), calibrated the same way; +1.8 on NAB dev, +1.5 on the
//! bin-edge-jittered score (it is also a support of the derived views below; +0.3 / +1.2
//! before they needed support).
//!
//! A sixth test, the residual run (`ResidualRun`, `run_memory`; 0 turns it off): how many
//! points in a row the time-of-day residual has stayed more than `run_deviation` mean
//! absolute deviations from its running location on one side, calibrated the same way. It
//! sees a daily pattern broken for a few hours by an amount no single point makes rare;
//! +1.4 on NAB dev (one window more, three false-positive rows), +1.3 on the jittered score.
//!
//! The score is the max over the point rarities (four views and the novelty test), the
//! four likelihoods and the residual run, mapped so that `alert_nats` scores exactly 0.5. A [`Suppressor`] then
//! gives one alert per episode. The two derived views need corroboration: the time-of-day
//! residual's point rarity takes part only when a primary point test (level, step,
//! novelty) is at least `residual_support` nats rare at the same point, the smoothed
//! level's only when one is at least `smoothed_support`; alone they are mostly the noise
//! of the daily profile and of the average (on NAB dev the residual alone fired 31 of the
//! 86 false-positive rows; with both rules 78.4 instead of 77.4, jittered 73.7 instead
//! of 72.4).
//!
//! Cost: O(1) per point (~2 M points per CPU second on the bench input, docs/BENCHMARKS.md),
//! ~17.6 KiB of state per series (~7 KiB of it the novelty test's, ~1.1 KiB the residual
//! run's), no allocation after construction, deterministic (no randomness,
//! no wall clock).

use super::novelty::{self, Novelty};
use super::{sanitize, Detector, StateReader, StateWriter, Suppressor, DEFAULT_ALERT_THRESHOLD};

/// Bins per view histogram. With 3 bins per asinh unit this spans |z| up to ~1e9.
const NB: usize = 128;
/// Bins of the surprisal calibration histogram, `CAL_STEP` per nat (covers 0..16 nats;
/// beyond that the exponential tail takes over).
const CB: usize = 128;
const CAL_STEP: f64 = 8.0;
/// The tail quantile is re-read from the calibration histogram every this many points:
/// it moves slowly, and the scan is the most expensive step.
const CAL_REFRESH: u64 = 16;
/// Points a view needs before its histogram is trusted at all.
const MIN_VIEW_POINTS: u64 = 10;
/// Lazy forgetting: counts are stored multiplied by a growing weight and renormalised when
/// the weight gets this large (keeps the per-point decay O(1)).
const RENORM_AT: f64 = 1e100;
/// Deviations beyond this many scales are clipped when updating a view's location/scale.
const WINSOR: f64 = 10.0;

/// Number of views.
const NV: usize = 4;

/// Indices of the derived views, whose point rarities need a primary test's support
/// (`smoothed_support`, `residual_support`); the level, the step and the novelty test
/// are the primary ones.
const SMOOTHED: usize = 1;
const STEP: usize = 2;
const RESIDUAL: usize = 3;

/// Index of the (level, time of day) novelty test in [`VIEW_NAMES`] and `last_view`.
const NOVELTY: usize = NV;
/// Index of the residual run test in [`VIEW_NAMES`] and `last_view`.
const RUN: usize = NV + 1;

const VIEW_NAMES: [&str; NV + 2] = [
    "level",
    "smoothed level",
    "step size",
    "time-of-day residual",
    "level at this time of day",
    "time-of-day residual run",
];

/// Parameters of [`GeneralDetector`]. The defaults are the NAB-tuned configuration; all
/// horizons are in points except the seasonal period.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneralConfig {
    /// Points scored 0 while the histograms fill.
    pub warmup: usize,
    /// Forgetting horizon (points) of the per-view value histograms.
    pub memory: f64,
    /// Horizon (points) of the running location/scale used to normalise each view.
    pub scale_memory: f64,
    /// Histogram resolution in asinh(z) units (3 => 1/3 sd near the centre).
    pub bins_per_unit: f64,
    /// Pseudo-count for the density of a bin; smaller => never-seen values are rarer.
    pub density_prior: f64,
    /// Extra nats of surprisal per empty bin between the value and the nearest seen value.
    pub distance_nats: f64,
    /// EWMA factor of the smoothed-level view.
    pub short_alpha: f64,
    /// Seasonal period for the time-of-day residual view (ms).
    pub season_period_ms: i64,
    /// Number of profile slots per period.
    pub season_slots: usize,
    /// EWMA factor of each profile slot (per visit).
    pub season_alpha: f64,
    /// Forgetting horizon (points) of the surprisal calibration histograms.
    pub calib_memory: f64,
    /// Pseudo-count for calibration tail probabilities.
    pub calib_prior: f64,
    /// Fraction of the surprisal distribution modelled by the exponential tail.
    pub tail_fraction: f64,
    /// Floor (nats) of the exponential tail's scale: limits how fast rarity grows past the
    /// largest surprisal seen (records of pure noise must not look astronomically rare).
    pub tail_beta_min: f64,
    /// Rarity (nats) that maps to score 0.5 (8 nats ~ 1 in 3000).
    pub alert_nats: f64,
    /// Threshold of the built-in suppressor (0 disables suppression).
    pub alert_threshold: f64,
    /// Points the score must stay below `alert_threshold` before the next alert.
    pub cooldown_points: usize,
    /// Horizon (points) of the short average of each view's rarity in the sustained-rarity
    /// test (anomaly likelihood); 0 disables the test.
    pub likelihood_short: f64,
    /// Horizon (points) of the long-run mean and variance that short average is compared with.
    pub likelihood_long: f64,
    /// Remembered (level, time of day) points of the novelty test ([`super::novelty`]);
    /// 0 disables the test. The default 256 is worth +1.8 NAB points (+1.5 on the
    /// bin-edge-jittered score; +0.3 / +1.2 with both `*_support` 0) for ~1,000 more instructions per point and 7 KiB more
    /// state, see docs/BENCHMARKS.md "NAB dev, third attempt" and "Throughput and state".
    pub novelty_prototypes: usize,
    /// Distance (asinh units of the level's running scale) within which a point matches a
    /// remembered one instead of becoming a new one.
    pub novelty_radius: f64,
    /// Radius of the time-of-day circle (same units; `season_period_ms` is one turn): with
    /// 5 and `novelty_radius` 0.6 a remembered point covers about ±1 h 50 min of the day.
    pub novelty_phase: f64,
    /// Surprisal (nats) per unit of distance to the nearest remembered point.
    pub novelty_scale: f64,
    /// The time-of-day residual's point rarity competes only when a primary point test
    /// (level, step or novelty) is at least this rare (nats) at the same point; 0 lets it
    /// compete alone. Its likelihood test is unaffected. On its own the residual of a noisy
    /// daily profile fired 31 of the 86 false-positive rows on NAB dev for 12 first
    /// detections; see docs/BENCHMARKS.md "NAB dev, fourth attempt".
    pub residual_support: f64,
    /// The same for the smoothed level's point rarity: a smoothed level that is rare while
    /// no primary test is even this rare (nats) is left to its likelihood test.
    pub smoothed_support: f64,
    /// Horizon (points) of the residual run test's reference location and scale of the
    /// time-of-day residual; 0 disables the test. See [`ResidualRun`].
    pub run_memory: f64,
    /// A residual counts towards a run when it is more than this many mean absolute
    /// deviations from its reference location (one run per sign).
    pub run_deviation: f64,
    /// What a residual within `run_deviation` takes off a run (a run grows by 1 per point
    /// beyond it), so a short interruption does not end it.
    pub run_decrement: f64,
    /// The run is multiplied by this before its calibration: the tail of a run length is
    /// steep (about 3 nats per point when 5% of residuals are beyond `run_deviation`), and
    /// the calibration's tail scale is floored at `tail_beta_min` per unit.
    pub run_scale: f64,
}

impl Default for GeneralConfig {
    fn default() -> Self {
        GeneralConfig {
            warmup: 150,
            memory: 3000.0,
            scale_memory: 2000.0,
            bins_per_unit: 3.0,
            density_prior: 0.01,
            distance_nats: 0.4,
            short_alpha: 0.35,
            season_period_ms: 86_400_000,
            season_slots: 48,
            season_alpha: 0.05,
            calib_memory: 3350.0,
            calib_prior: 0.1,
            tail_fraction: 0.05,
            tail_beta_min: 1.0,
            alert_nats: 8.0,
            alert_threshold: DEFAULT_ALERT_THRESHOLD,
            cooldown_points: 30,
            likelihood_short: 120.0,
            likelihood_long: 2000.0,
            novelty_prototypes: 256,
            novelty_radius: 0.6,
            novelty_phase: 5.0,
            novelty_scale: 3.0,
            residual_support: 5.0,
            smoothed_support: 2.0,
            run_memory: 240.0,
            run_deviation: 3.05,
            run_decrement: 0.35,
            run_scale: 10.0,
        }
    }
}

/// `GeneralConfig::get` / `set` by field name, from one list of the tunable fields
/// (the keys of `nab_sweep` and `detect_bench`).
macro_rules! tunable_fields {
    (floats: $($f:ident),+; counts: $($n:ident),+) => {
        /// A tunable field by name.
        pub fn get(&self, k: &str) -> Option<f64> {
            match k {
                $(stringify!($f) => Some(self.$f),)+
                $(stringify!($n) => Some(self.$n as f64),)+
                _ => None,
            }
        }

        /// Sets a tunable field by name; counts are rounded. Not validated: call
        /// [`GeneralConfig::validate`] after the last one.
        pub fn set(&mut self, k: &str, v: f64) -> Result<(), String> {
            match k {
                $(stringify!($f) => self.$f = v,)+
                $(stringify!($n) => self.$n = v.round().max(0.0) as usize,)+
                _ => return Err(format!("unknown parameter `{k}` (see GeneralConfig)")),
            }
            Ok(())
        }
    };
}

impl GeneralConfig {
    tunable_fields! {
        floats: memory, scale_memory, bins_per_unit, density_prior, distance_nats,
            short_alpha, season_alpha, calib_memory, calib_prior, tail_fraction,
            tail_beta_min, alert_nats, alert_threshold, likelihood_short, likelihood_long,
            novelty_radius, novelty_phase, novelty_scale, residual_support,
            smoothed_support, run_memory, run_deviation, run_decrement, run_scale;
        counts: warmup, season_slots, cooldown_points, novelty_prototypes
    }

    pub fn validate(&self) -> Result<(), String> {
        let horizon = |name: &str, v: f64| {
            if v.is_finite() && v >= 2.0 {
                Ok(())
            } else {
                Err(format!(
                    "general: {name} must be a finite horizon >= 2, got {v}"
                ))
            }
        };
        let unit = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(format!("general: {name} must be in (0, 1], got {v}"))
            }
        };
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "general: {name} must be positive and finite, got {v}"
                ))
            }
        };
        horizon("memory", self.memory)?;
        horizon("scale_memory", self.scale_memory)?;
        horizon("calib_memory", self.calib_memory)?;
        horizon("likelihood_long", self.likelihood_long)?;
        if !(self.likelihood_short == 0.0
            || (self.likelihood_short.is_finite() && self.likelihood_short >= 1.0))
        {
            return Err(format!(
                "general: likelihood_short must be 0 (off) or a finite horizon >= 1, got {}",
                self.likelihood_short
            ));
        }
        pos("bins_per_unit", self.bins_per_unit)?;
        pos("density_prior", self.density_prior)?;
        pos("calib_prior", self.calib_prior)?;
        pos("alert_nats", self.alert_nats)?;
        pos("tail_beta_min", self.tail_beta_min)?;
        unit("short_alpha", self.short_alpha)?;
        unit("season_alpha", self.season_alpha)?;
        if !(self.tail_fraction.is_finite() && self.tail_fraction > 0.0 && self.tail_fraction < 0.5)
        {
            return Err(format!(
                "general: tail_fraction must be in (0, 0.5), got {}",
                self.tail_fraction
            ));
        }
        if !(self.distance_nats.is_finite() && self.distance_nats >= 0.0) {
            return Err(format!(
                "general: distance_nats must be >= 0, got {}",
                self.distance_nats
            ));
        }
        if !(self.run_memory == 0.0 || (self.run_memory.is_finite() && self.run_memory >= 2.0)) {
            return Err(format!(
                "general: run_memory must be 0 (off) or a finite horizon >= 2, got {}",
                self.run_memory
            ));
        }
        pos("run_scale", self.run_scale)?;
        for (name, v) in [
            ("residual_support", self.residual_support),
            ("smoothed_support", self.smoothed_support),
            ("run_deviation", self.run_deviation),
            ("run_decrement", self.run_decrement),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("general: {name} must be >= 0, got {v}"));
            }
        }
        if self.novelty_prototypes > novelty::MAX_PROTOTYPES {
            return Err(format!(
                "general: novelty_prototypes must be in 0..={}, got {}",
                novelty::MAX_PROTOTYPES,
                self.novelty_prototypes
            ));
        }
        pos("novelty_radius", self.novelty_radius)?;
        pos("novelty_scale", self.novelty_scale)?;
        if !(self.novelty_phase.is_finite() && self.novelty_phase >= 0.0) {
            return Err(format!(
                "general: novelty_phase must be >= 0, got {}",
                self.novelty_phase
            ));
        }
        if self.season_period_ms <= 0 {
            return Err(format!(
                "general: season_period_ms must be > 0, got {}",
                self.season_period_ms
            ));
        }
        if !(1..=4096).contains(&self.season_slots) {
            return Err(format!(
                "general: season_slots must be in 1..=4096, got {}",
                self.season_slots
            ));
        }
        if !(self.alert_threshold.is_finite() && (0.0..=1.0).contains(&self.alert_threshold)) {
            return Err(format!(
                "general: alert_threshold must be in [0, 1], got {}",
                self.alert_threshold
            ));
        }
        Ok(())
    }
}

/// Exponentially forgetting histogram with lazy decay.
#[derive(Debug, Clone)]
struct Hist<const N: usize> {
    w: f64,
    total: f64,
    bins: [f64; N],
}

impl<const N: usize> Hist<N> {
    fn new() -> Self {
        Hist {
            w: 1.0,
            total: 0.0,
            bins: [0.0; N],
        }
    }

    fn add(&mut self, b: usize, memory: f64) {
        self.w /= 1.0 - 1.0 / memory;
        self.bins[b] += self.w;
        self.total += self.w;
        if self.w > RENORM_AT {
            let inv = 1.0 / self.w;
            for h in self.bins.iter_mut() {
                *h *= inv;
            }
            self.total *= inv;
            self.w = 1.0;
        }
    }

    fn save(&self, w: &mut StateWriter) {
        w.f64(self.w);
        w.f64(self.total);
        w.sparse_f64s(&self.bins);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.w = r.f64()?;
        self.total = r.f64()?;
        r.sparse_f64s_into(&mut self.bins)
    }

    /// Effective (decayed) count of bin `b` and of the whole histogram.
    fn count(&self, b: usize) -> f64 {
        self.bins[b] / self.w
    }
    fn total(&self) -> f64 {
        self.total / self.w
    }
}

/// One view of the signal: normaliser + value histogram + surprisal calibration.
#[derive(Debug, Clone)]
struct View {
    loc: f64,
    scale: f64,
    n: u64,
    hist: Hist<NB>,
    calib: Calib,
}

impl View {
    fn new() -> Self {
        View {
            loc: 0.0,
            scale: 0.0,
            n: 0,
            hist: Hist::new(),
            calib: Calib::new(),
        }
    }

    fn save(&self, w: &mut StateWriter) {
        w.f64(self.loc);
        w.f64(self.scale);
        w.u64(self.n);
        self.hist.save(w);
        self.calib.save(w);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.loc = r.f64()?;
        self.scale = r.f64()?;
        self.n = r.u64()?;
        self.hist.load(r)?;
        self.calib.load(r)
    }

    /// `asinh` of the distance from the running location in running scales.
    fn normalised(&self, f: f64) -> f64 {
        fast_asinh(standardised(f, self.loc, self.scale))
    }

    fn bin(&self, f: f64, bpu: f64) -> usize {
        bin_of(self.normalised(f), bpu)
    }

    /// Surprisal (nats) of the value in bin `b` under the learned histogram, before
    /// calibration.
    fn surprisal(&self, b: usize, cfg: &GeneralConfig) -> f64 {
        let c = self.hist.count(b);
        let mut s = -((c + cfg.density_prior) / (self.hist.total() + cfg.density_prior)).ln();
        if cfg.distance_nats > 0.0 && c < 0.5 {
            // Distance (bins) to the nearest bin with at least half a point of mass.
            let thr = 0.5 * self.hist.w;
            let mut d = NB;
            for k in 1..NB {
                let lo = b >= k && self.hist.bins[b - k] >= thr;
                let hi = b + k < NB && self.hist.bins[b + k] >= thr;
                if lo || hi {
                    d = k;
                    break;
                }
                if b < k && b + k >= NB {
                    break;
                }
            }
            s += cfg.distance_nats * (d as f64 - 1.0);
        }
        s
    }

    /// Score `f` (returns calibrated rarity, or 0 while immature), then learn it. `z` is
    /// `self.normalised(f)` if the caller already has it.
    fn observe(&mut self, f: f64, z: Option<f64>, cfg: &GeneralConfig) -> f64 {
        let mut rarity = 0.0;
        if self.n >= MIN_VIEW_POINTS {
            let z = z.unwrap_or_else(|| self.normalised(f));
            let r = self.surprisal(bin_of(z, cfg.bins_per_unit), cfg);
            rarity = self.calib.score_and_learn(r, self.n, true, cfg);
        }
        self.n += 1;
        track(
            &mut self.loc,
            &mut self.scale,
            f,
            self.n,
            cfg.scale_memory,
            MIN_VIEW_POINTS,
        );
        // Skip the first few points: the normaliser is still jumping around.
        if self.n >= 5 {
            let b = self.bin(f, cfg.bins_per_unit);
            self.hist.add(b, cfg.memory);
        }
        rarity
    }
}

/// Running location and mean absolute deviation of a stream after its `n`-th value `x`:
/// the first value is the location; then an exponential average with weight 1/n until
/// `horizon` is reached (fast start, then slow tracking). Past `settled` points with a
/// spread, deviations are winsorised at `WINSOR` spreads: one absurd reading must not
/// inflate the spread for thousands of points (a real regime change still moves it
/// geometrically).
fn track(loc: &mut f64, spread: &mut f64, x: f64, n: u64, horizon: f64, settled: u64) {
    if n == 1 {
        *loc = x;
        return;
    }
    let a = (1.0 / n as f64).max(1.0 / horizon);
    let mut d = x - *loc;
    if n > settled && *spread > 0.0 {
        let lim = WINSOR * *spread;
        d = d.clamp(-lim, lim);
    }
    *loc += a * d;
    *spread += a * (d.abs() - *spread);
}

/// `x` in spreads from `loc`, the spread floored relative to the level (a constant
/// stream still gets a finite, large value on change).
fn standardised(x: f64, loc: f64, spread: f64) -> f64 {
    (x - loc) / spread.max(1e-9 * loc.abs().max(1.0))
}

/// Calibration of one surprisal stream against its own history: a forgetting histogram of
/// past surprisals, with an exponential tail above its `1 - tail_fraction` quantile.
#[derive(Debug, Clone)]
struct Calib {
    cal: Hist<CB>,
    /// Surprisal above which the exponential tail applies, and its mean excess.
    tail_u: f64,
    tail_beta: f64,
    /// Every bin above this one is empty (derived, not saved): the tail scan starts here,
    /// since adding an empty bin leaves the sum as it is.
    top: usize,
}

impl Calib {
    fn new() -> Self {
        Calib {
            cal: Hist::new(),
            tail_u: f64::INFINITY,
            tail_beta: 1.0,
            top: 0,
        }
    }

    fn save(&self, w: &mut StateWriter) {
        self.cal.save(w);
        w.f64(self.tail_u);
        w.f64(self.tail_beta);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.cal.load(r)?;
        self.tail_u = r.f64()?;
        self.tail_beta = r.f64()?;
        self.top = self.cal.bins.iter().rposition(|&c| c != 0.0).unwrap_or(0);
        Some(())
    }

    /// Calibrated rarity (nats) of surprisal `r` against this stream's own history.
    fn rarity(&self, r: f64, cfg: &GeneralConfig) -> f64 {
        if r > self.tail_u {
            return -cfg.tail_fraction.ln() + (r - self.tail_u) / self.tail_beta;
        }
        let b = cal_bin(r);
        // Sum whichever side of the bin is shorter (most surprisals are small, so usually
        // the prefix): halves the cost of the hottest loop.
        let raw_tail = if b < CB / 2 {
            (self.cal.total - self.cal.bins[..b].iter().sum::<f64>()).max(0.0)
        } else {
            self.cal.bins[b..].iter().sum::<f64>()
        };
        let tail = raw_tail / self.cal.w;
        -((tail + cfg.calib_prior) / (self.cal.total() + cfg.calib_prior)).ln()
    }

    /// [`Calib::rarity`] of `r` if `scored` (0 while the stream is immature), then learns
    /// it as the stream's `n`-th point.
    fn score_and_learn(&mut self, r: f64, n: u64, scored: bool, cfg: &GeneralConfig) -> f64 {
        let rarity = if scored { self.rarity(r, cfg) } else { 0.0 };
        self.learn(r, n, cfg);
        rarity
    }

    /// Learns surprisal `r`, the stream's `n`-th point (the tail threshold is re-read every
    /// `CAL_REFRESH` points).
    fn learn(&mut self, r: f64, n: u64, cfg: &GeneralConfig) {
        if r > self.tail_u {
            // Mean excess over the threshold = MLE of the exponential tail's scale.
            self.tail_beta += 0.05 * ((r - self.tail_u) - self.tail_beta);
            self.tail_beta = self.tail_beta.max(cfg.tail_beta_min);
        }
        let b = cal_bin(r);
        self.cal.add(b, cfg.calib_memory);
        self.top = self.top.max(b);
        if n.is_multiple_of(CAL_REFRESH) {
            let need = cfg.tail_fraction * self.cal.total;
            let mut acc = 0.0;
            // From the top: the bins above `top` add nothing, and while `acc` is 0 the
            // loop below passes them all (`acc < need` holds for any need > 0).
            let mut k = if need > 0.0 { self.top + 1 } else { CB };
            while k > 0 && acc < need {
                k -= 1;
                acc += self.cal.bins[k];
            }
            self.tail_u = k as f64 / CAL_STEP;
        }
    }
}

/// asinh via ln + sqrt: `f64::asinh` goes through hypot and log1p for last-bit accuracy,
/// which a histogram bin index does not need, and it was ~40% of the detector's time.
/// Overflow of `z * z` for |z| > 1e154 gives +inf, which clamps to the last bin as it should.
#[inline]
fn fast_asinh(z: f64) -> f64 {
    let a = z.abs();
    let r = (a + (a * a + 1.0).sqrt()).ln();
    if z < 0.0 {
        -r
    } else {
        r
    }
}

/// -ln P(Z >= z) for a standard normal Z.
fn gauss_tail_nats(z: f64) -> f64 {
    if z <= 0.0 {
        return 0.0;
    }
    // Abramowitz-Stegun 7.1.26 for erfc, evaluated in log space: erfc itself underflows
    // near z = 38, and the likelihood of a real regime change can be far beyond that.
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let ln_erfc = poly.ln() - x * x;
    -(ln_erfc - std::f64::consts::LN_2)
}

/// Value-histogram bin of normalised value `z`.
fn bin_of(z: f64, bpu: f64) -> usize {
    let u = z * bpu + (NB / 2) as f64;
    u.clamp(0.0, (NB - 1) as f64) as usize
}

fn cal_bin(r: f64) -> usize {
    (r * CAL_STEP).clamp(0.0, (CB - 1) as f64) as usize
}

/// Running "anomaly likelihood" of one view: a short average of its calibrated rarity,
/// compared with the long-run mean and variance of that average.
#[derive(Debug, Clone, Copy, Default)]
struct Likelihood {
    short: f64,
    mean: f64,
    var: f64,
    n: u64,
}

impl Likelihood {
    fn save(&self, w: &mut StateWriter) {
        w.f64(self.short);
        w.f64(self.mean);
        w.f64(self.var);
        w.u64(self.n);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.short = r.f64()?;
        self.mean = r.f64()?;
        self.var = r.f64()?;
        self.n = r.u64()?;
        Some(())
    }

    /// Feed one rarity; returns -ln P(average this high) under the long-run Gaussian.
    fn observe(&mut self, rarity: f64, cfg: &GeneralConfig) -> f64 {
        self.n += 1;
        self.short += (rarity - self.short) / cfg.likelihood_short;
        // The floor keeps a view that has been perfectly quiet from turning its first
        // wobble into an infinite z.
        let sd = self.var.sqrt().max(1e-3);
        let z = (self.short - self.mean) / sd;
        let a = (1.0 / self.n as f64).max(1.0 / cfg.likelihood_long);
        let d = self.short - self.mean;
        self.mean += a * d;
        self.var += a * (d * d - self.var);
        gauss_tail_nats(z)
    }
}

/// The (level, time of day) novelty, calibrated like a view.
#[derive(Debug, Clone)]
struct NoveltyTest {
    memory: Novelty,
    calib: Calib,
    n: u64,
}

impl NoveltyTest {
    fn new(cfg: &GeneralConfig) -> Option<Self> {
        (cfg.novelty_prototypes > 0).then(|| NoveltyTest {
            memory: Novelty::new(cfg.novelty_prototypes, cfg.novelty_radius),
            calib: Calib::new(),
            n: 0,
        })
    }

    /// Calibrated rarity (nats) of normalised level `u` at `ts_ms`, then learns it.
    fn observe(&mut self, u: f64, ts_ms: i64, cfg: &GeneralConfig) -> f64 {
        let p = novelty::point(u, ts_ms, cfg.season_period_ms, cfg.novelty_phase);
        let Some(d) = self.memory.observe(p) else {
            return 0.0;
        };
        self.n += 1;
        let r = cfg.novelty_scale * d;
        self.calib
            .score_and_learn(r, self.n, self.n > MIN_VIEW_POINTS, cfg)
    }

    fn save(&self, w: &mut StateWriter) {
        self.memory.save(w);
        self.calib.save(w);
        w.u64(self.n);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.memory.load(r)?;
        self.calib.load(r)?;
        self.n = r.u64()?;
        Some(())
    }
}

/// The residual run test: how long the time-of-day residual has stayed beyond its usual
/// range on one side. The residual is compared with its own running location and mean
/// absolute deviation (horizon `run_memory`); each point more than `run_deviation` of
/// them above (below) adds 1 to the upper (lower) run, any other point takes
/// `run_decrement` off it (floored at 0: a one-sided CUSUM of exceedance indicators). The
/// longer run, times `run_scale`, is calibrated like a view's surprisal. It sees a daily
/// pattern broken for a few hours in a row by an amount that no single point makes rare
/// (exchange-4_cpm_results' second NAB window: six hourly values at twice their usual
/// night level, 4-5 deviations each).
#[derive(Debug, Clone)]
struct ResidualRun {
    loc: f64,
    dev: f64,
    n: u64,
    up: f64,
    down: f64,
    calib: Calib,
}

/// Residuals the run test learns from before it counts runs, and before it scores them.
const RUN_START: u64 = 10;
const RUN_SCORE: u64 = 30;

impl ResidualRun {
    fn new() -> Self {
        ResidualRun {
            loc: 0.0,
            dev: 0.0,
            n: 0,
            up: 0.0,
            down: 0.0,
            calib: Calib::new(),
        }
    }

    /// Calibrated rarity (nats) of the run after residual `v`, then learns it.
    fn observe(&mut self, v: f64, cfg: &GeneralConfig) -> f64 {
        self.n += 1;
        if self.n == 1 {
            self.loc = v;
            return 0.0;
        }
        let started = self.n > RUN_START && self.dev > 0.0;
        let u = if started {
            standardised(v, self.loc, self.dev)
        } else {
            0.0
        };
        track(
            &mut self.loc,
            &mut self.dev,
            v,
            self.n,
            cfg.run_memory,
            RUN_START,
        );
        let step =
            |run: f64, beyond: bool| (run + if beyond { 1.0 } else { -cfg.run_decrement }).max(0.0);
        self.up = step(self.up, u > cfg.run_deviation);
        self.down = step(self.down, u < -cfg.run_deviation);
        if self.n <= RUN_SCORE {
            return 0.0;
        }
        let r = cfg.run_scale * self.up.max(self.down);
        let scored = self.n > RUN_SCORE + MIN_VIEW_POINTS;
        self.calib.score_and_learn(r, self.n, scored, cfg)
    }

    fn save(&self, w: &mut StateWriter) {
        w.f64(self.loc);
        w.f64(self.dev);
        w.u64(self.n);
        w.f64(self.up);
        w.f64(self.down);
        self.calib.save(w);
    }
    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.loc = r.f64()?;
        self.dev = r.f64()?;
        self.n = r.u64()?;
        self.up = r.f64()?;
        self.down = r.f64()?;
        self.calib.load(r)
    }
}

/// See the module docs. Build via [`DetectorSpec::General`](super::DetectorSpec::General) or
/// [`GeneralDetector::new`]`(GeneralConfig::default())`.
pub struct GeneralDetector {
    cfg: GeneralConfig,
    n: u64,
    prev: f64,
    short: f64,
    views: [View; NV],
    likelihood: [Likelihood; NV],
    /// Boxed: when the test is off it costs a pointer, not its calibration.
    novelty: Option<Box<NoveltyTest>>,
    /// Boxed like the novelty test: off, it costs a pointer.
    run: Option<Box<ResidualRun>>,
    season: Vec<f64>,
    season_n: Vec<u32>,
    sup: Suppressor,
    last_value: f64,
    last_rarity: f64,
    last_view: usize,
    last_sustained: bool,
    last_score: f64,
    last_nonfinite: bool,
}

impl GeneralDetector {
    pub fn new(cfg: GeneralConfig) -> Self {
        let slots = cfg.season_slots.clamp(1, 4096);
        GeneralDetector {
            sup: Suppressor::new(cfg.alert_threshold, cfg.cooldown_points as u64, 0),
            n: 0,
            prev: 0.0,
            short: 0.0,
            views: std::array::from_fn(|_| View::new()),
            likelihood: [Likelihood::default(); NV],
            novelty: NoveltyTest::new(&cfg).map(Box::new),
            run: (cfg.run_memory > 0.0).then(|| Box::new(ResidualRun::new())),
            season: vec![0.0; slots],
            season_n: vec![0; slots],
            last_value: 0.0,
            last_rarity: 0.0,
            last_view: 0,
            last_sustained: false,
            last_score: 0.0,
            last_nonfinite: false,
            cfg,
        }
    }

    /// Calibrated rarity (nats) of the last point, before mapping and suppression.
    pub fn last_rarity(&self) -> f64 {
        self.last_rarity
    }

    /// Index into the view list of the view that set the last rarity, and whether it was the
    /// sustained-rarity test rather than the point itself.
    pub fn last_view(&self) -> (usize, bool) {
        (self.last_view, self.last_sustained)
    }

    /// Everything learned (the config is not state: it comes from the spec). 7.5–17 KB on the
    /// NAB dev series (mean 11.5 KB) instead of the 17.6 KiB in memory: empty bins and
    /// unused prototypes are skipped (20 bytes per remembered prototype).
    fn save(&self, w: &mut StateWriter) {
        w.u64(self.n);
        w.f64(self.prev);
        w.f64(self.short);
        for v in &self.views {
            v.save(w);
        }
        for l in &self.likelihood {
            l.save(w);
        }
        if let Some(t) = &self.novelty {
            t.save(w);
        }
        if let Some(t) = &self.run {
            t.save(w);
        }
        w.sparse_f64s(&self.season);
        let counts: Vec<f64> = self.season_n.iter().map(|&c| f64::from(c)).collect();
        w.sparse_f64s(&counts);
        self.sup.save_state(w);
        w.f64(self.last_value);
        w.f64(self.last_rarity);
        w.u64(self.last_view as u64);
        w.bool(self.last_sustained);
        w.f64(self.last_score);
        w.bool(self.last_nonfinite);
    }

    fn load(&mut self, r: &mut StateReader) -> Option<()> {
        self.n = r.u64()?;
        self.prev = r.f64()?;
        self.short = r.f64()?;
        for v in &mut self.views {
            v.load(r)?;
        }
        for l in &mut self.likelihood {
            l.load(r)?;
        }
        if let Some(t) = &mut self.novelty {
            t.load(r)?;
        }
        if let Some(t) = &mut self.run {
            t.load(r)?;
        }
        r.sparse_f64s_into(&mut self.season)?;
        let mut counts = vec![0.0; self.season_n.len()];
        r.sparse_f64s_into(&mut counts)?;
        for (n, c) in self.season_n.iter_mut().zip(counts) {
            if !(0.0..=f64::from(u32::MAX)).contains(&c) || c.fract() != 0.0 {
                return None;
            }
            *n = c as u32;
        }
        self.sup.load_state(r)?;
        self.last_value = r.f64()?;
        self.last_rarity = r.f64()?;
        self.last_view = r.usize().filter(|&v| v < VIEW_NAMES.len())?;
        self.last_sustained = r.bool()?;
        self.last_score = r.f64()?;
        self.last_nonfinite = r.bool()?;
        Some(())
    }

    fn season_slot(&self, ts_ms: i64) -> usize {
        let period = self.cfg.season_period_ms.max(1);
        let slots = self.season.len() as i64;
        let slot_ms = (period / slots).max(1);
        (ts_ms.rem_euclid(period) / slot_ms).clamp(0, slots - 1) as usize
    }
}

impl Detector for GeneralDetector {
    fn save_state(&self, out: &mut StateWriter) -> bool {
        self.save(out);
        true
    }
    fn load_state(&mut self, input: &mut StateReader) -> bool {
        // On a misfit the detector is left half-loaded; the caller rebuilds it.
        self.load(input).is_some()
    }
    fn update(&mut self, ts_ms: i64, value: f64) -> f64 {
        let Some(x) = sanitize(value) else {
            self.last_nonfinite = true;
            self.last_score = 0.0;
            return 0.0;
        };
        self.last_nonfinite = false;
        self.last_value = x;
        self.n += 1;
        if self.n == 1 {
            self.prev = x;
            self.short = x;
        }
        let cfg = &self.cfg;
        self.short += cfg.short_alpha * (x - self.short);
        let step = (x - self.prev).abs();
        self.prev = x;
        let slot = self.season_slot(ts_ms);
        // The residual view only exists once the slot has a profile to compare against.
        let residual = (self.season_n[slot] >= 2).then(|| x - self.season[slot]);

        let views = [Some(x), Some(self.short), Some(step), residual];
        let (mut best, mut which, mut sustained) = (0.0f64, 0usize, false);
        // Normalised by the level view as it was before this point, like the views' scores
        // (the level view scores the same normalised value: computed once).
        let mut level_z = None;
        let mut novelty = 0.0f64;
        if let Some(t) = self.novelty.as_mut() {
            if self.views[0].n >= MIN_VIEW_POINTS {
                let z = self.views[0].normalised(x);
                level_z = Some(z);
                novelty = t.observe(z, ts_ms, cfg);
                if novelty > best {
                    (best, which) = (novelty, NOVELTY);
                }
            }
        }
        let mut rarity = [None; NV];
        for (k, v) in views.iter().enumerate() {
            if let Some(v) = *v {
                let z = if k == 0 { level_z } else { None };
                rarity[k] = Some(self.views[k].observe(v, z, cfg));
            }
        }
        // A rare smoothed level or residual that no primary test corroborates is mostly
        // noise (of the average, of the daily profile): it feeds its likelihood below but
        // does not compete.
        let primary = novelty
            .max(rarity[0].unwrap_or(0.0))
            .max(rarity[STEP].unwrap_or(0.0));
        for (k, r) in rarity.iter().enumerate() {
            let Some(r) = *r else { continue };
            let competes = match k {
                SMOOTHED => primary >= cfg.smoothed_support,
                RESIDUAL => primary >= cfg.residual_support,
                _ => true,
            };
            if competes && r > best {
                (best, which, sustained) = (r, k, false);
            }
            // A shift in behaviour often shows as many moderately rare points rather
            // than one very rare one; the likelihood test catches that, per view, so a
            // view that is always noisy cannot mask a quiet one that changed.
            if cfg.likelihood_short > 0.0 {
                let l = self.likelihood[k].observe(r, cfg);
                if l > best {
                    (best, which, sustained) = (l, k, true);
                }
            }
        }
        // Competes after the views, as a sustained test: ties go to the views.
        if let (Some(t), Some(v)) = (self.run.as_mut(), residual) {
            let r = t.observe(v, cfg);
            if r > best {
                (best, which, sustained) = (r, RUN, false);
            }
        }
        if self.season_n[slot] == 0 {
            self.season[slot] = x;
        } else {
            self.season[slot] += cfg.season_alpha * (x - self.season[slot]);
        }
        self.season_n[slot] = self.season_n[slot].saturating_add(1);

        self.last_rarity = best;
        self.last_view = which;
        self.last_sustained = sustained;
        let mut score = if (self.n as usize) <= cfg.warmup {
            0.0
        } else {
            1.0 - (-std::f64::consts::LN_2 * best / cfg.alert_nats).exp()
        };
        if !score.is_finite() {
            score = 0.0;
        }
        let score = score.clamp(0.0, 1.0);
        let out = if cfg.alert_threshold > 0.0 {
            self.sup.apply(ts_ms, score)
        } else {
            score
        };
        self.last_score = out;
        out
    }

    fn reason(&self) -> String {
        if self.last_nonfinite {
            return "non-finite value ignored".to_string();
        }
        if (self.n as usize) <= self.cfg.warmup {
            return format!("warming up ({}/{} points)", self.n, self.cfg.warmup);
        }
        let one_in = self.last_rarity.min(700.0).exp();
        if self.last_view == RUN {
            return format!(
                "value {}: its time-of-day residual has stayed beyond its usual range for several points: rarity {:.1} nats (~1 in {:.0})",
                self.last_value, self.last_rarity, one_in
            );
        }
        if self.last_sustained {
            return format!(
                "value {}: its {} has been unusually rare for a while: likelihood {:.1} nats (~1 in {:.0})",
                self.last_value, VIEW_NAMES[self.last_view], self.last_rarity, one_in
            );
        }
        format!(
            "value {} is unusual in its {}: rarity {:.1} nats (~1 in {:.0} of recent points)",
            self.last_value, VIEW_NAMES[self.last_view], self.last_rarity, one_in
        )
    }

    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.season.capacity() * 8
            + self.season_n.capacity() * 4
            + self.novelty.as_ref().map_or(0, |t| {
                std::mem::size_of::<NoveltyTest>() + t.memory.heap_bytes()
            })
            + self
                .run
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<ResidualRun>())
    }
}
