//! `[[pipeline]]` rules: validated declarative pipelines for the agent's stream engine.
//!
//! Each rule names its source (device / metric globs), predicates, a map, the key, one
//! window, the aggregates, the watermark and late-data policy, the series cap, the
//! detectors (`detector.rs`) with their alert topic, and the sinks. When a config has no `[[pipeline]]`, the
//! `[window]` section becomes the default pipeline (named `""`), so older configs keep
//! their behaviour. Watermark keys a rule leaves out are taken from `[window]`.

use std::time::Duration;

use serde::Deserialize;

use super::detector::{self, filter_matches};
pub use super::detector::{
    DetectorConfig, DetectorKind, Suppression, DEFAULT_ALERT_TOPIC, KNOWN_DETECTORS,
};
use super::{Problem, WindowConfig};
use crate::duration;

/// A validated pipeline rule.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique name; copied into every record the pipeline emits.
    pub name: String,
    /// Glob patterns (`*`, `?`) on the device; empty means every device.
    pub devices: Vec<String>,
    /// Glob patterns on the metric; empty means every metric.
    pub metrics: Vec<String>,
    /// Readings below / above are filtered out.
    pub value_min: Option<f64>,
    pub value_max: Option<f64>,
    /// `map`: value * scale + offset.
    pub scale: f64,
    pub offset: f64,
    pub key_by: KeyBy,
    pub window: WindowSpec,
    pub aggregates: Vec<Aggregate>,
    pub watermark: WatermarkConfig,
    pub late: LateConfig,
    /// Most keys with state at once; see [`SeriesOverflow`].
    pub max_series: usize,
    pub series_overflow: SeriesOverflow,
    /// Run on the pipeline's readings (after its filter and map), per series.
    pub detectors: Vec<DetectorConfig>,
    /// Local MQTT topic template for anomaly records; `None`: not published.
    pub alert_topic: Option<String>,
    pub sinks: Vec<Sink>,
    /// Unit of the pipeline's output values (after `map`, which may convert units);
    /// empty when unknown. Copied into every window result for charts.
    pub unit: String,
}

/// Longest `unit`, in bytes: a label, not free text.
pub const MAX_UNIT_BYTES: usize = 32;

/// What the windows are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// One key per device and metric (the default).
    Series,
    /// All metrics of a device together; results name the metric `*`.
    Device,
    /// One metric across devices; results name the device `*`.
    Metric,
    /// Everything the pipeline sees, as one key `*/*`.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumbling { size_ms: i64 },
    Sliding { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
    Count { count: u64 },
}

/// One aggregate; the fixed fields (count, sum, mean, min, max) are always computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    Variance,
    Stddev,
    First,
    Last,
    /// Change of the value per second between the first and last reading.
    Rate,
    /// Quantile in (0, 1) from the window's sketch.
    Quantile(f64),
}

impl Aggregate {
    /// Parses `count`, `p99`, `p99.9`, `median` …; `None` when unknown.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "mean" | "avg" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "variance" => Self::Variance,
            "stddev" => Self::Stddev,
            "first" => Self::First,
            "last" => Self::Last,
            "rate" => Self::Rate,
            "median" => Self::Quantile(0.5),
            p => {
                let pct: f64 = p.strip_prefix('p')?.parse().ok()?;
                if !(pct > 0.0 && pct < 100.0) || p.contains(['e', 'E', '+', '-']) {
                    return None;
                }
                Self::Quantile(pct / 100.0)
            }
        })
    }

    /// The key used in `WindowResult::aggregates` (`p99`, `p99.9`, `stddev` …).
    pub fn name(&self) -> String {
        match self {
            Self::Count => "count".into(),
            Self::Sum => "sum".into(),
            Self::Mean => "mean".into(),
            Self::Min => "min".into(),
            Self::Max => "max".into(),
            Self::Variance => "variance".into(),
            Self::Stddev => "stddev".into(),
            Self::First => "first".into(),
            Self::Last => "last".into(),
            Self::Rate => "rate".into(),
            Self::Quantile(q) => {
                let pct = (q * 100.0 * 1e6).round() / 1e6;
                format!("p{pct}")
            }
        }
    }

    /// Every aggregate with the quantiles p50, p90, p95 and p99.
    pub fn all() -> Vec<Self> {
        vec![
            Self::Count,
            Self::Sum,
            Self::Mean,
            Self::Min,
            Self::Max,
            Self::Variance,
            Self::Stddev,
            Self::First,
            Self::Last,
            Self::Rate,
            Self::Quantile(0.5),
            Self::Quantile(0.9),
            Self::Quantile(0.95),
            Self::Quantile(0.99),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStrategy {
    /// Watermark = newest event time - bound.
    BoundedOutOfOrderness { max_out_of_orderness_ms: i64 },
    /// Event time never goes back: the watermark is the newest event time.
    Monotonic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    pub strategy: WatermarkStrategy,
    /// A device silent this long (agent clock) no longer holds anything back: its
    /// event time is assumed to advance with the wall clock.
    pub idle_timeout_ms: i64,
    /// Watermarks are recomputed at most this often (agent clock); 0 = on every advance.
    pub emit_interval_ms: i64,
}

impl WatermarkConfig {
    pub fn bound_ms(&self) -> i64 {
        match self.strategy {
            WatermarkStrategy::BoundedOutOfOrderness {
                max_out_of_orderness_ms,
            } => max_out_of_orderness_ms,
            WatermarkStrategy::Monotonic => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Late readings are dropped and counted.
    Drop,
    /// Closed windows are kept for `allowed_lateness`; each late reading re-emits the
    /// window with `revision + 1`.
    AllowedLateness,
    /// Late readings become `late` records.
    SideOutput,
    /// Closed windows are kept for `allowed_lateness`; late readings update them
    /// silently and one corrected result (`revision + 1`) is emitted when they retire.
    Recompute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateConfig {
    pub policy: LatePolicy,
    pub allowed_lateness_ms: i64,
    /// With `allowed_lateness` / `recompute`: readings later than the allowed
    /// lateness become `late` records instead of being dropped.
    pub side_output_beyond: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesOverflow {
    /// Readings of keys beyond the cap are dropped and counted; known keys go on.
    DropNew,
    /// The least recently updated key is evicted: its open windows are emitted early
    /// (counted), then the new key takes its place.
    EvictOldest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Outbox,
    /// Published on the agent's local MQTT broker under this topic.
    Mqtt(String),
}

/// Serde shape of one `[[pipeline]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    name: String,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    metrics: Vec<String>,
    value_min: Option<f64>,
    value_max: Option<f64>,
    #[serde(default)]
    map: RawMap,
    #[serde(default = "default_key_by")]
    key_by: KeyBy,
    window: RawWindow,
    aggregates: Option<Vec<String>>,
    #[serde(default)]
    watermark: RawWatermark,
    #[serde(default)]
    late: RawLate,
    #[serde(default = "default_max_series")]
    max_series: usize,
    #[serde(default = "default_overflow")]
    series_overflow: SeriesOverflow,
    /// Names or inline tables; checked by `detector::validate`.
    detectors: Option<toml::Value>,
    /// `[[pipeline.detector]]` tables.
    detector: Option<toml::Value>,
    alert_topic: Option<String>,
    #[serde(default = "default_sinks")]
    sinks: Vec<String>,
    #[serde(default)]
    unit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
}

impl Default for RawMap {
    fn default() -> Self {
        Self {
            scale: 1.0,
            offset: 0.0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    kind: String,
    size: Option<String>,
    slide: Option<String>,
    gap: Option<String>,
    count: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWatermark {
    strategy: Option<String>,
    max_out_of_orderness: Option<String>,
    idle_timeout: Option<String>,
    emit_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLate {
    #[serde(default = "default_policy")]
    policy: LatePolicy,
    allowed_lateness: Option<String>,
    #[serde(default)]
    side_output_beyond: bool,
}

impl Default for RawLate {
    fn default() -> Self {
        Self {
            policy: LatePolicy::Drop,
            allowed_lateness: None,
            side_output_beyond: false,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn default_key_by() -> KeyBy {
    KeyBy::Series
}
fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES
}
fn default_overflow() -> SeriesOverflow {
    SeriesOverflow::DropNew
}
fn default_policy() -> LatePolicy {
    LatePolicy::Drop
}
fn default_sinks() -> Vec<String> {
    vec!["outbox".into()]
}

/// Default cap on keys with state per pipeline.
pub const DEFAULT_MAX_SERIES: usize = 100_000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The pipeline `[window]` stands for when no `[[pipeline]]` is configured.
pub fn default_pipeline(w: &WindowConfig) -> PipelineConfig {
    PipelineConfig {
        name: String::new(),
        devices: vec![],
        metrics: vec![],
        value_min: None,
        value_max: None,
        scale: 1.0,
        offset: 0.0,
        key_by: KeyBy::Series,
        window: WindowSpec::Tumbling {
            size_ms: ms(w.size),
        },
        aggregates: vec![
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Max,
        ],
        watermark: WatermarkConfig {
            strategy: WatermarkStrategy::BoundedOutOfOrderness {
                max_out_of_orderness_ms: ms(w.max_out_of_orderness),
            },
            idle_timeout_ms: ms(w.idle_timeout),
            emit_interval_ms: 0,
        },
        late: LateConfig {
            policy: LatePolicy::Drop,
            allowed_lateness_ms: 0,
            side_output_beyond: false,
        },
        max_series: DEFAULT_MAX_SERIES,
        series_overflow: SeriesOverflow::DropNew,
        detectors: vec![],
        alert_topic: Some(DEFAULT_ALERT_TOPIC.to_string()),
        sinks: vec![Sink::Outbox],
        unit: String::new(),
    }
}

/// Validates the `pipeline` array; every problem is pushed with its path
/// (`pipeline[2].window.size`).
/// `sensor_filter` is the agent's own subscription: local publishes must stay out of it.
pub(super) fn validate(
    value: Option<&toml::Value>,
    window: Option<&WindowConfig>,
    sensor_filter: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Vec<PipelineConfig> {
    let Some(value) = value else {
        return window.map(default_pipeline).into_iter().collect();
    };
    let Some(items) = value.as_array() else {
        problems.push(Problem {
            path: "pipeline".into(),
            message: "must be an array of tables ([[pipeline]])".into(),
        });
        return vec![];
    };
    let mut out: Vec<PipelineConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("pipeline[{i}]");
        let raw = match serde_path_to_error::deserialize::<_, RawPipeline>(item.clone()) {
            Ok(r) => r,
            Err(e) => {
                let inner = e.path().to_string();
                problems.push(Problem {
                    path: if inner == "." {
                        path
                    } else {
                        format!("{path}.{inner}")
                    },
                    message: e.into_inner().message().to_string(),
                });
                continue;
            }
        };
        let before = problems.len();
        let p = check(raw, &path, window, sensor_filter, problems);
        if out.iter().any(|o| o.name == p.name) {
            problems.push(Problem {
                path: format!("{path}.name"),
                message: format!("`{}` is used by another pipeline", p.name),
            });
        }
        if problems.len() == before {
            out.push(p);
        }
    }
    out
}

fn check(
    raw: RawPipeline,
    path: &str,
    window: Option<&WindowConfig>,
    sensor_filter: Option<&str>,
    problems: &mut Vec<Problem>,
) -> PipelineConfig {
    let problem = |problems: &mut Vec<Problem>, field: &str, message: String| {
        problems.push(Problem {
            path: format!("{path}.{field}"),
            message,
        })
    };
    if raw.name.is_empty()
        || raw.name.len() > 64
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problem(
            problems,
            "name",
            format!("`{}` must be 1-64 characters of [A-Za-z0-9-_.]", raw.name),
        );
    }
    for (field, globs) in [("devices", &raw.devices), ("metrics", &raw.metrics)] {
        for (j, g) in globs.iter().enumerate() {
            if g.is_empty() {
                problem(
                    problems,
                    &format!("{field}[{j}]"),
                    "must not be empty".into(),
                );
            }
        }
    }
    for (field, v) in [("value_min", raw.value_min), ("value_max", raw.value_max)] {
        if v.is_some_and(|v| !v.is_finite()) {
            problem(problems, field, "must be a finite number".into());
        }
    }
    if let (Some(lo), Some(hi)) = (raw.value_min, raw.value_max) {
        if lo > hi {
            problem(
                problems,
                "value_max",
                format!("must not be below value_min ({lo})"),
            );
        }
    }
    if raw.unit.len() > MAX_UNIT_BYTES {
        problem(
            problems,
            "unit",
            format!(
                "must be at most {MAX_UNIT_BYTES} bytes, got {}",
                raw.unit.len()
            ),
        );
    } else if raw.unit.chars().any(char::is_control) {
        problem(
            problems,
            "unit",
            format!("{:?} must not contain control characters", raw.unit),
        );
    }
    if !raw.map.scale.is_finite() || !raw.map.offset.is_finite() {
        problem(
            problems,
            "map",
            "scale and offset must be finite numbers".into(),
        );
    }

    let dur = |problems: &mut Vec<Problem>,
               field: &str,
               text: Option<&String>,
               min_ms: i64,
               fallback: i64|
     -> i64 {
        match text {
            None => fallback,
            Some(t) => match duration::parse(t) {
                Ok(d) if ms(d) < min_ms => {
                    problems.push(Problem {
                        path: format!("{path}.{field}"),
                        message: format!("must be at least {min_ms}ms, got {t}"),
                    });
                    fallback
                }
                Ok(d) => ms(d),
                Err(e) => {
                    problems.push(Problem {
                        path: format!("{path}.{field}"),
                        message: e,
                    });
                    fallback
                }
            },
        }
    };
    let w = &raw.window;
    let mut window_problems: Vec<(&str, String)> = Vec::new();
    let spec = match w.kind.as_str() {
        "tumbling" => {
            if w.size.is_none() {
                window_problems.push(("window.size", "required for a tumbling window".into()));
            }
            WindowSpec::Tumbling {
                size_ms: dur(problems, "window.size", w.size.as_ref(), 1, 1000),
            }
        }
        "sliding" | "hopping" => {
            if w.size.is_none() {
                window_problems.push(("window.size", "required for a sliding window".into()));
            }
            if w.slide.is_none() {
                window_problems.push(("window.slide", "required for a sliding window".into()));
            }
            let size_ms = dur(problems, "window.size", w.size.as_ref(), 1, 1000);
            let slide_ms = dur(problems, "window.slide", w.slide.as_ref(), 1, size_ms);
            if slide_ms > size_ms {
                window_problems.push((
                    "window.slide",
                    "must not exceed window.size (readings would fall between windows)".into(),
                ));
            } else if size_ms / slide_ms > 1000 {
                window_problems.push((
                    "window.slide",
                    "window.size / window.slide must be at most 1000 (each reading updates that many windows)".into(),
                ));
            }
            WindowSpec::Sliding { size_ms, slide_ms }
        }
        "session" => {
            if w.gap.is_none() {
                window_problems.push(("window.gap", "required for a session window".into()));
            }
            WindowSpec::Session {
                gap_ms: dur(problems, "window.gap", w.gap.as_ref(), 1, 1000),
            }
        }
        "count" => {
            let count = w.count.unwrap_or(0);
            if count == 0 {
                window_problems.push((
                    "window.count",
                    "required for a count window and must be at least 1".into(),
                ));
            }
            WindowSpec::Count {
                count: count.max(1),
            }
        }
        other => {
            window_problems.push((
                "window.kind",
                format!("`{other}` is not one of tumbling, sliding, session, count"),
            ));
            WindowSpec::Tumbling { size_ms: 1000 }
        }
    };
    let unused: &[(&str, bool)] = match spec {
        WindowSpec::Tumbling { .. } => &[
            ("slide", w.slide.is_some()),
            ("gap", w.gap.is_some()),
            ("count", w.count.is_some()),
        ],
        WindowSpec::Sliding { .. } => &[("gap", w.gap.is_some()), ("count", w.count.is_some())],
        WindowSpec::Session { .. } => &[
            ("size", w.size.is_some()),
            ("slide", w.slide.is_some()),
            ("count", w.count.is_some()),
        ],
        WindowSpec::Count { .. } => &[
            ("size", w.size.is_some()),
            ("slide", w.slide.is_some()),
            ("gap", w.gap.is_some()),
        ],
    };
    for (field, set) in unused {
        if *set {
            window_problems.push((
                match *field {
                    "slide" => "window.slide",
                    "gap" => "window.gap",
                    "count" => "window.count",
                    _ => "window.size",
                },
                format!("not used by a `{}` window", w.kind),
            ));
        }
    }

    let defaults = window.map(default_pipeline);
    let default_wm = defaults.as_ref().map(|d| d.watermark);
    let wm = &raw.watermark;
    let default_bound = default_wm.map_or(2000, |d| d.bound_ms());
    let bound = dur(
        problems,
        "watermark.max_out_of_orderness",
        wm.max_out_of_orderness.as_ref(),
        0,
        default_bound,
    );
    let strategy = match wm.strategy.as_deref().unwrap_or("bounded") {
        "bounded" | "bounded_out_of_orderness" => WatermarkStrategy::BoundedOutOfOrderness {
            max_out_of_orderness_ms: bound,
        },
        "monotonic" => {
            if wm.max_out_of_orderness.is_some() {
                window_problems.push((
                    "watermark.max_out_of_orderness",
                    "not used by the `monotonic` strategy".into(),
                ));
            }
            WatermarkStrategy::Monotonic
        }
        other => {
            window_problems.push((
                "watermark.strategy",
                format!("`{other}` is not one of bounded, monotonic"),
            ));
            WatermarkStrategy::Monotonic
        }
    };
    let watermark = WatermarkConfig {
        strategy,
        idle_timeout_ms: dur(
            problems,
            "watermark.idle_timeout",
            wm.idle_timeout.as_ref(),
            10,
            default_wm.map_or(5000, |d| d.idle_timeout_ms),
        ),
        emit_interval_ms: dur(
            problems,
            "watermark.emit_interval",
            wm.emit_interval.as_ref(),
            0,
            0,
        ),
    };
    let allowed_lateness_ms = dur(
        problems,
        "late.allowed_lateness",
        raw.late.allowed_lateness.as_ref(),
        0,
        0,
    );
    match raw.late.policy {
        LatePolicy::AllowedLateness | LatePolicy::Recompute => {
            if raw.late.allowed_lateness.is_none() {
                window_problems.push((
                    "late.allowed_lateness",
                    "required by this late policy".into(),
                ));
            }
        }
        LatePolicy::Drop | LatePolicy::SideOutput => {
            if raw.late.allowed_lateness.is_some() {
                window_problems.push((
                    "late.allowed_lateness",
                    "only used by the allowed_lateness and recompute policies".into(),
                ));
            }
            if raw.late.side_output_beyond {
                window_problems.push((
                    "late.side_output_beyond",
                    "only used by the allowed_lateness and recompute policies".into(),
                ));
            }
        }
    }

    let mut aggregates = Vec::new();
    match &raw.aggregates {
        None => aggregates = Aggregate::all(),
        Some(names) if names.is_empty() => {
            window_problems.push(("aggregates", "must name at least one aggregate".into()))
        }
        Some(names) => {
            for (j, n) in names.iter().enumerate() {
                match Aggregate::parse(n) {
                    Some(a) if aggregates.contains(&a) => {
                        problems.push(Problem {
                            path: format!("{path}.aggregates[{j}]"),
                            message: format!("`{n}` is listed twice"),
                        })
                    }
                    Some(a) => aggregates.push(a),
                    None => problems.push(Problem {
                        path: format!("{path}.aggregates[{j}]"),
                        message: format!(
                            "`{n}` is not one of count, sum, mean, min, max, variance, stddev, first, last, rate, median, pNN (e.g. p99, p99.9)"
                        ),
                    }),
                }
            }
        }
    }
    if raw.max_series == 0 {
        window_problems.push(("max_series", "must be at least 1".into()));
    }
    let detectors = detector::validate(
        raw.detectors.as_ref(),
        raw.detector.as_ref(),
        path,
        problems,
    );
    let alert_topic =
        detector::alert_topic(raw.alert_topic.as_deref(), sensor_filter, path, problems);
    let mut sinks = Vec::new();
    for (j, s) in raw.sinks.iter().enumerate() {
        match s.as_str() {
            "outbox" => sinks.push(Sink::Outbox),
            s => match s.strip_prefix("mqtt:") {
                Some(t) if sensor_filter.is_some_and(|f| filter_matches(f, t)) => {
                    problems.push(Problem {
                        path: format!("{path}.sinks[{j}]"),
                        message: format!(
                            "`{t}` matches the sensor topic filter: results would be read back as readings"
                        ),
                    })
                }
                Some(t) if !t.is_empty() && !t.contains(['+', '#']) => {
                    sinks.push(Sink::Mqtt(t.to_string()))
                }
                _ => problems.push(Problem {
                    path: format!("{path}.sinks[{j}]"),
                    message: format!(
                        "`{s}` is not `outbox` or `mqtt:<topic>` (a topic without wildcards)"
                    ),
                }),
            },
        }
    }
    if sinks.is_empty() && !raw.sinks.is_empty() {
        // Already reported above.
    } else if raw.sinks.is_empty() {
        window_problems.push(("sinks", "must name at least one sink".into()));
    }
    for (field, message) in window_problems {
        problems.push(Problem {
            path: format!("{path}.{field}"),
            message,
        });
    }
    PipelineConfig {
        name: raw.name,
        devices: raw.devices,
        metrics: raw.metrics,
        value_min: raw.value_min,
        value_max: raw.value_max,
        scale: raw.map.scale,
        offset: raw.map.offset,
        key_by: raw.key_by,
        window: spec,
        aggregates,
        watermark,
        late: LateConfig {
            policy: raw.late.policy,
            allowed_lateness_ms,
            side_output_beyond: raw.late.side_output_beyond,
        },
        max_series: raw.max_series.max(1),
        series_overflow: raw.series_overflow,
        detectors,
        alert_topic,
        sinks,
        unit: raw.unit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn load(text: &str) -> Result<AgentConfig, Vec<String>> {
        AgentConfig::from_toml(
            "t.toml",
            &format!("[agent]\nid = \"a\"\n{text}"),
            Vec::new(),
        )
        .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn without_pipelines_the_window_section_is_the_default_pipeline() {
        let cfg = load("[window]\nsize = \"30s\"\n").unwrap();
        assert_eq!(cfg.pipelines.len(), 1);
        let p = &cfg.pipelines[0];
        assert_eq!(p.name, "");
        assert_eq!(p.window, WindowSpec::Tumbling { size_ms: 30_000 });
        assert_eq!(p.watermark.bound_ms(), 2000);
        assert_eq!(p.late.policy, LatePolicy::Drop);
    }

    #[test]
    fn a_full_rule_parses_and_takes_watermark_defaults_from_window() {
        let cfg = load(
            r#"
[window]
max_out_of_orderness = "7s"
[[pipeline]]
name = "p1"
devices = ["gw-*"]
value_max = 100
map = { scale = 2.0 }
key_by = "metric"
window = { kind = "sliding", size = "1m", slide = "10s" }
aggregates = ["p99.9", "stddev", "median"]
watermark = { idle_timeout = "30s", emit_interval = "1s" }
late = { policy = "recompute", allowed_lateness = "5m", side_output_beyond = true }
max_series = 10
series_overflow = "evict_oldest"
detectors = ["zscore"]
sinks = ["outbox", "mqtt:fieldline/p1"]
[[pipeline]]
name = "p2"
window = { kind = "count", count = 5 }
"#,
        )
        .unwrap();
        let p = &cfg.pipelines[0];
        assert_eq!(
            p.window,
            WindowSpec::Sliding {
                size_ms: 60_000,
                slide_ms: 10_000
            }
        );
        assert_eq!(p.watermark.bound_ms(), 7000);
        assert_eq!(
            (p.watermark.idle_timeout_ms, p.watermark.emit_interval_ms),
            (30_000, 1000)
        );
        assert_eq!(
            p.aggregates.iter().map(Aggregate::name).collect::<Vec<_>>(),
            ["p99.9", "stddev", "p50"]
        );
        assert_eq!(p.sinks, [Sink::Outbox, Sink::Mqtt("fieldline/p1".into())]);
        assert_eq!((p.scale, p.offset, p.key_by), (2.0, 0.0, KeyBy::Metric));
        assert_eq!(cfg.pipelines[1].aggregates, Aggregate::all());
        assert_eq!(cfg.pipelines[1].unit, "");
    }

    #[test]
    fn unit_is_carried_and_bad_units_are_rejected_with_their_path() {
        let rule = |unit: &str| {
            format!(
                "[[pipeline]]\nname = \"p\"\nwindow = {{ kind = \"count\", count = 5 }}\nunit = {unit}\n"
            )
        };
        assert_eq!(load(&rule("\"°C\"")).unwrap().pipelines[0].unit, "°C");
        assert_eq!(
            load(&rule(&format!("\"{}\"", "x".repeat(33)))).unwrap_err(),
            ["pipeline[0].unit: must be at most 32 bytes, got 33"]
        );
        assert_eq!(
            load(&rule("\"k\\nPa\"")).unwrap_err(),
            ["pipeline[0].unit: \"k\\nPa\" must not contain control characters"]
        );
        assert!(
            load("[window]\nsize = \"30s\"\n").unwrap().pipelines[0]
                .unit
                .is_empty(),
            "the default pipeline has no unit"
        );
    }

    #[test]
    fn every_problem_has_its_path() {
        let got = load(
            r#"
[[pipeline]]
name = "a b"
window = { kind = "session", gap = "0s", size = "1m" }
watermark = { strategy = "eventually" }
late = { policy = "drop", allowed_lateness = "1m" }
[[pipeline]]
name = "x"
window = { kind = "count" }
bogus = 1
[[pipeline]]
name = "y"
window = { kind = "tumbling", size = "1m" }
[[pipeline]]
name = "y"
window = { kind = "tumbling", size = "1m" }
"#,
        )
        .unwrap_err();
        for want in [
            "pipeline[0].name: `a b` must be 1-64 characters of [A-Za-z0-9-_.]",
            "pipeline[0].window.gap: must be at least 1ms, got 0s",
            "pipeline[0].window.size: not used by a `session` window",
            "pipeline[0].watermark.strategy: `eventually` is not one of bounded, monotonic",
            "pipeline[0].late.allowed_lateness: only used by the allowed_lateness and recompute policies",
            "pipeline[3].name: `y` is used by another pipeline",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("pipeline[1].bogus: unknown field `bogus`")),
            "{got:#?}"
        );
        assert_eq!(got.len(), 7, "{got:#?}");
    }

    #[test]
    fn aggregate_names_round_trip() {
        for a in Aggregate::all() {
            assert_eq!(Aggregate::parse(&a.name()), Some(a));
        }
        assert_eq!(Aggregate::parse("p0"), None);
        assert_eq!(Aggregate::parse("p1e1"), None);
        assert_eq!(Aggregate::parse("p-5"), None);
    }
}
