//! Detectors attached to a pipeline: `detectors = ["general"]` (bare names with their
//! defaults) and/or `[[pipeline.detector]]` tables with parameters, a series match, the
//! alert score, warm-up and suppression. Validated here into [`DetectorConfig`]; the
//! agent maps each onto its `DetectorSpec` (`agent/src/detect/attach.rs`).
//!
//! The parameter ranges mirror `DetectorSpec::validate` in the agent, so a config that
//! passes `check-config` builds; the agent's tests check the two agree.

use std::time::Duration;

use super::Problem;
use crate::duration;

/// Detector kinds a pipeline may name.
pub const KNOWN_DETECTORS: &[&str] = &[
    "threshold",
    "zscore",
    "ewma",
    "mad",
    "rate_of_change",
    "flat_line",
    "missing_data",
    "general",
];

/// Largest window of the `mad` detector (it sorts a copy of the window per point).
pub const MAD_MAX_WINDOW: usize = 1024;
/// Largest window of the `zscore` detector (8 bytes per point per series).
pub const ZSCORE_MAX_WINDOW: usize = 1_000_000;

/// Default alert topic; `{device}`, `{metric}`, `{pipeline}` and `{detector}` are filled in.
/// Largest `novelty_prototypes` of the general detector (the agent's
/// `detect::novelty::MAX_PROTOTYPES`).
pub const MAX_NOVELTY_PROTOTYPES: u64 = 4096;
pub const DEFAULT_ALERT_TOPIC: &str = "alerts/{device}/{metric}";

/// One validated detector attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Copied into anomaly records (`detector`); the kind unless `name` is set.
    pub name: String,
    pub kind: DetectorKind,
    /// Glob patterns; the detector runs only on series whose device / metric match
    /// (empty: every series of the pipeline).
    pub devices: Vec<String>,
    pub metrics: Vec<String>,
    /// Points per series scored 0 while the detector learns (on top of any learning the
    /// detector does by itself, e.g. a z-score window filling up).
    pub warmup: usize,
    /// Score in (0, 1] at or above which a point is an alert.
    pub alert_score: f64,
    pub suppress: Suppression,
}

/// A long anomaly is one alert: see [`Suppression::Episode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    /// Every point at or above the alert score is an alert.
    Off,
    /// One alert per episode: after an alert the next one needs the score to stay below
    /// the alert score for `cooldown_points` points and `cooldown_ms` of event time.
    Episode {
        cooldown_points: u64,
        cooldown_ms: i64,
    },
}

/// Detector parameters by kind (units as in the config: durations in ms).
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorKind {
    Threshold {
        min: Option<f64>,
        max: Option<f64>,
    },
    ZScore {
        window: usize,
        threshold: f64,
    },
    Ewma {
        alpha: f64,
        threshold: f64,
    },
    Mad {
        window: usize,
        threshold: f64,
    },
    RateOfChange {
        max_per_sec: f64,
    },
    FlatLine {
        min_points: usize,
        min_duration_ms: i64,
        tolerance: f64,
    },
    MissingData {
        /// 0: learned from the data.
        expected_interval_ms: i64,
        factor: f64,
    },
    /// The general-purpose detector; `None` keeps its tuned default.
    General {
        memory: Option<f64>,
        alert_nats: Option<f64>,
        season_period_ms: Option<i64>,
        /// Size of the (level, time of day) novelty memory; 0 turns the test off
        /// (about half the state per series, less NAB accuracy).
        novelty_prototypes: Option<usize>,
    },
}

impl DetectorKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Threshold { .. } => "threshold",
            Self::ZScore { .. } => "zscore",
            Self::Ewma { .. } => "ewma",
            Self::Mad { .. } => "mad",
            Self::RateOfChange { .. } => "rate_of_change",
            Self::FlatLine { .. } => "flat_line",
            Self::MissingData { .. } => "missing_data",
            Self::General { .. } => "general",
        }
    }
}

/// Keys every detector table takes besides its kind's parameters.
const COMMON_KEYS: &[&str] = &[
    "kind",
    "name",
    "devices",
    "metrics",
    "warmup",
    "alert_score",
    "suppress",
    "cooldown",
    "cooldown_points",
];

fn params_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "threshold" => &["min", "max"],
        "zscore" | "mad" => &["window", "threshold"],
        "ewma" => &["alpha", "threshold"],
        "rate_of_change" => &["max_per_sec"],
        "flat_line" => &["min_points", "min_duration", "tolerance"],
        "missing_data" => &["expected_interval", "factor"],
        "general" => &[
            "memory",
            "alert_nats",
            "season_period",
            "novelty_prototypes",
        ],
        _ => &[],
    }
}

/// A reading flapping around a limit must stay one episode: 30 quiet points and 5
/// minutes of event time before the next alert.
const DEFAULT_COOLDOWN_POINTS: u64 = 30;
const DEFAULT_COOLDOWN_MS: i64 = 300_000;

/// Reads one table (or bare name) at `path`; every problem is pushed with its path.
struct Table<'a> {
    path: &'a str,
    table: Option<&'a toml::Table>,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Table<'a> {
    fn problem(&mut self, key: &str, message: String) {
        self.problems.push(Problem {
            path: format!("{}.{key}", self.path),
            message,
        });
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.and_then(|t| t.get(key))
    }

    fn float(&mut self, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.problem(key, format!("must be a finite number, got {v}"));
                None
            }
        }
    }

    /// A number that must satisfy `ok`; `default` when absent or invalid.
    fn float_in(&mut self, key: &str, default: f64, ok: impl Fn(f64) -> bool, what: &str) -> f64 {
        match self.float(key) {
            Some(f) if ok(f) => f,
            Some(f) => {
                self.problem(key, format!("must be {what}, got {f}"));
                default
            }
            None => default,
        }
    }

    fn int_in(&mut self, key: &str, default: u64, lo: u64, hi: u64) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.as_integer() {
            Some(i) if i >= 0 && (lo..=hi).contains(&(i as u64)) => i as u64,
            _ => {
                self.problem(key, format!("must be an integer in {lo}..={hi}, got {v}"));
                default
            }
        }
    }

    fn dur(&mut self, key: &str, default_ms: i64) -> i64 {
        let Some(v) = self.get(key) else {
            return default_ms;
        };
        match v.as_str().map(duration::parse) {
            Some(Ok(d)) => ms(d),
            Some(Err(e)) => {
                self.problem(key, e);
                default_ms
            }
            None => {
                self.problem(
                    key,
                    format!("must be a duration string like \"5m\", got {v}"),
                );
                default_ms
            }
        }
    }

    fn globs(&mut self, key: &str) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return vec![];
        };
        let Some(items) = v.as_array() else {
            self.problem(key, "must be an array of glob patterns".into());
            return vec![];
        };
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) if !s.is_empty() => out.push(s.to_string()),
                _ => self.problem(
                    &format!("{key}[{j}]"),
                    format!("must be a non-empty glob pattern, got {item}"),
                ),
            }
        }
        out
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Validates `detectors = [...]` (names or inline tables) and `[[pipeline.detector]]`
/// tables of the pipeline at `path`.
pub(super) fn validate(
    detectors: Option<&toml::Value>,
    detector: Option<&toml::Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<DetectorConfig> {
    let mut out: Vec<DetectorConfig> = Vec::new();
    for (field, value) in [("detectors", detectors), ("detector", detector)] {
        let Some(value) = value else { continue };
        let Some(items) = value.as_array() else {
            problems.push(Problem {
                path: format!("{path}.{field}"),
                message: "must be an array of detector names or tables".into(),
            });
            continue;
        };
        for (j, item) in items.iter().enumerate() {
            let at = format!("{path}.{field}[{j}]");
            let before = problems.len();
            let d = match item {
                toml::Value::String(kind) => one(kind, None, &at, problems),
                toml::Value::Table(t) => match t.get("kind").and_then(|k| k.as_str()) {
                    Some(kind) => one(kind, Some(t), &at, problems),
                    None => {
                        problems.push(Problem {
                            path: format!("{at}.kind"),
                            message: format!("required: one of {}", KNOWN_DETECTORS.join(", ")),
                        });
                        None
                    }
                },
                other => {
                    problems.push(Problem {
                        path: at.clone(),
                        message: format!("must be a detector name or table, got {other}"),
                    });
                    None
                }
            };
            let Some(d) = d else { continue };
            if out.iter().any(|o| o.name == d.name) {
                problems.push(Problem {
                    path: at,
                    message: format!(
                        "a second detector named `{}`: give one a `name` (alert records and state are per name)",
                        d.name
                    ),
                });
            } else if problems.len() == before {
                out.push(d);
            }
        }
    }
    out
}

fn one(
    kind: &str,
    table: Option<&toml::Table>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<DetectorConfig> {
    let kind_path = if table.is_some() {
        format!("{path}.kind")
    } else {
        path.to_string()
    };
    if !KNOWN_DETECTORS.contains(&kind) {
        problems.push(Problem {
            path: kind_path,
            message: format!("`{kind}` is not one of {}", KNOWN_DETECTORS.join(", ")),
        });
        return None;
    }
    let mut t = Table {
        path,
        table,
        problems,
    };
    if let Some(table) = table {
        let params = params_of(kind);
        for key in table.keys() {
            if !COMMON_KEYS.contains(&key.as_str()) && !params.contains(&key.as_str()) {
                let allowed: Vec<&str> = params.iter().chain(COMMON_KEYS).copied().collect();
                t.problem(
                    key,
                    format!(
                        "unknown parameter of a `{kind}` detector (expected one of {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
    let positive = |f: f64| f > 0.0;
    let kind = match kind {
        "threshold" => {
            let (min, max) = (t.float("min"), t.float("max"));
            if t.get("min").is_none() && t.get("max").is_none() {
                let at = if table.is_some() { "min" } else { "" };
                let message = "a threshold detector needs `min` and/or `max`: use a table, e.g. { kind = \"threshold\", max = 80.0 }".to_string();
                if at.is_empty() {
                    t.problems.push(Problem {
                        path: path.to_string(),
                        message,
                    });
                } else {
                    t.problem(at, message);
                }
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    t.problem("max", format!("must not be below min ({lo}), got {hi}"));
                }
            }
            DetectorKind::Threshold { min, max }
        }
        "zscore" => DetectorKind::ZScore {
            window: t.int_in("window", 120, 3, ZSCORE_MAX_WINDOW as u64) as usize,
            threshold: t.float_in("threshold", 4.0, positive, "> 0"),
        },
        "mad" => DetectorKind::Mad {
            window: t.int_in("window", 120, 3, MAD_MAX_WINDOW as u64) as usize,
            threshold: t.float_in("threshold", 4.0, positive, "> 0"),
        },
        "ewma" => DetectorKind::Ewma {
            alpha: t.float_in("alpha", 0.05, |a| a > 0.0 && a < 1.0, "in (0, 1)"),
            threshold: t.float_in("threshold", 4.0, positive, "> 0"),
        },
        "rate_of_change" => {
            if t.get("max_per_sec").is_none() {
                let message = "a rate_of_change detector needs `max_per_sec` (value units per second): use a table, e.g. { kind = \"rate_of_change\", max_per_sec = 2.0 }".to_string();
                t.problems.push(Problem {
                    path: if table.is_some() {
                        format!("{path}.max_per_sec")
                    } else {
                        path.to_string()
                    },
                    message,
                });
            }
            DetectorKind::RateOfChange {
                max_per_sec: t.float_in("max_per_sec", 1.0, positive, "> 0"),
            }
        }
        "flat_line" => {
            let min_points = t.int_in("min_points", 10, 0, u32::MAX as u64) as usize;
            let min_duration_ms = t.dur("min_duration", 0);
            if min_points < 2 && min_duration_ms == 0 {
                t.problem(
                    "min_points",
                    "must be at least 2 unless min_duration is set".into(),
                );
            }
            DetectorKind::FlatLine {
                min_points,
                min_duration_ms,
                tolerance: t.float_in("tolerance", 0.0, |v| v >= 0.0, ">= 0"),
            }
        }
        "missing_data" => DetectorKind::MissingData {
            expected_interval_ms: t.dur("expected_interval", 0),
            factor: t.float_in("factor", 3.0, |f| f > 1.0, "> 1"),
        },
        _ => {
            let memory = t.float("memory");
            if memory.is_some_and(|m| m < 2.0) {
                t.problem("memory", "must be at least 2 (points)".into());
            }
            let alert_nats = t.float("alert_nats");
            if alert_nats.is_some_and(|a| a <= 0.0) {
                t.problem("alert_nats", "must be > 0".into());
            }
            let season_period_ms = t
                .get("season_period")
                .is_some()
                .then(|| t.dur("season_period", 1));
            if season_period_ms == Some(0) {
                t.problem("season_period", "must be at least 1ms".into());
            }
            let novelty_prototypes = t
                .get("novelty_prototypes")
                .is_some()
                .then(|| t.int_in("novelty_prototypes", 0, 0, MAX_NOVELTY_PROTOTYPES) as usize);
            DetectorKind::General {
                memory,
                alert_nats,
                season_period_ms,
                novelty_prototypes,
            }
        }
    };
    let name = match t.get("name") {
        None => kind.name().to_string(),
        Some(v) => match v.as_str() {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                n.to_string()
            }
            _ => {
                t.problem(
                    "name",
                    format!("{v} must be 1-64 characters of [A-Za-z0-9-_.]"),
                );
                kind.name().to_string()
            }
        },
    };
    let devices = t.globs("devices");
    let metrics = t.globs("metrics");
    let warmup = t.int_in("warmup", 0, 0, u32::MAX as u64) as usize;
    let alert_score = t.float_in("alert_score", 0.5, |s| s > 0.0 && s <= 1.0, "in (0, 1]");
    let episode = match t.get("suppress").map(|v| v.as_str()) {
        None | Some(Some("episode")) => true,
        Some(Some("off")) => false,
        Some(_) => {
            t.problem("suppress", "must be `episode` or `off`".into());
            true
        }
    };
    let cooldown_ms = t.dur("cooldown", DEFAULT_COOLDOWN_MS);
    let cooldown_points = t.int_in(
        "cooldown_points",
        DEFAULT_COOLDOWN_POINTS,
        0,
        u32::MAX as u64,
    );
    let suppress = if episode {
        Suppression::Episode {
            cooldown_points,
            cooldown_ms,
        }
    } else {
        for key in ["cooldown", "cooldown_points"] {
            if t.get(key).is_some() {
                t.problem(key, "not used with suppress = \"off\"".into());
            }
        }
        Suppression::Off
    };
    Some(DetectorConfig {
        name,
        kind,
        devices,
        metrics,
        warmup,
        alert_score,
        suppress,
    })
}

/// Validates the `alert_topic` template of the pipeline at `path`; `""` turns MQTT alerts
/// off (`None`). The topic must not be one the agent's own subscription would read back.
pub(super) fn alert_topic(
    raw: Option<&str>,
    sensor_filter: Option<&str>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let t = raw.unwrap_or(DEFAULT_ALERT_TOPIC);
    if t.is_empty() {
        return None;
    }
    let mut problem = |message: String| {
        problems.push(Problem {
            path: format!("{path}.alert_topic"),
            message,
        })
    };
    if t.contains(['+', '#']) || t.split('/').any(str::is_empty) {
        problem(format!(
            "`{t}` must be a topic without wildcards or empty levels (\"\" turns alerts off)"
        ));
        return None;
    }
    let mut rest = t.to_string();
    for p in ["{device}", "{metric}", "{pipeline}", "{detector}"] {
        rest = rest.replace(p, "x");
    }
    if rest.contains(['{', '}']) {
        problem(format!(
            "`{t}` has a placeholder other than {{device}}, {{metric}}, {{pipeline}}, {{detector}}"
        ));
        return None;
    }
    if let Some(f) = sensor_filter {
        if filter_matches(f, &rest) {
            problem(format!(
                "`{t}` matches the sensor topic filter `{f}`: alerts would be read back as readings"
            ));
            return None;
        }
    }
    Some(t.to_string())
}

/// MQTT filter matching (`+` one level, `#` the rest).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn load(text: &str) -> Result<AgentConfig, Vec<String>> {
        AgentConfig::from_toml(
            "t.toml",
            &format!("[agent]\nid = \"a\"\n[[pipeline]]\nname = \"p\"\nwindow = {{ kind = \"tumbling\", size = \"1m\" }}\n{text}"),
            Vec::new(),
        )
        .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn bare_names_and_tables_parse_with_their_defaults() {
        let cfg = load(
            r#"
detectors = ["general", { kind = "mad", name = "robust", window = 61 }]
alert_topic = "site/{pipeline}/{device}/{metric}/{detector}"
[[pipeline.detector]]
kind = "zscore"
window = 120
threshold = 4.0
warmup = 50
cooldown = "5m"
metrics = ["temp*"]
[[pipeline.detector]]
kind = "missing_data"
expected_interval = "10s"
suppress = "off"
"#,
        )
        .unwrap();
        let p = &cfg.pipelines[0];
        let names: Vec<_> = p.detectors.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["general", "robust", "zscore", "missing_data"]);
        assert_eq!(
            p.detectors[0].kind,
            DetectorKind::General {
                memory: None,
                alert_nats: None,
                season_period_ms: None,
                novelty_prototypes: None
            }
        );
        assert_eq!(
            p.detectors[0].suppress,
            Suppression::Episode {
                cooldown_points: 30,
                cooldown_ms: 300_000
            }
        );
        assert_eq!(
            p.detectors[1].kind,
            DetectorKind::Mad {
                window: 61,
                threshold: 4.0
            }
        );
        let z = &p.detectors[2];
        assert_eq!(
            z.kind,
            DetectorKind::ZScore {
                window: 120,
                threshold: 4.0
            }
        );
        assert_eq!((z.warmup, z.alert_score), (50, 0.5));
        assert_eq!(z.metrics, ["temp*"]);
        assert_eq!(
            z.suppress,
            Suppression::Episode {
                cooldown_points: 30,
                cooldown_ms: 300_000
            }
        );
        assert_eq!(
            p.detectors[3].kind,
            DetectorKind::MissingData {
                expected_interval_ms: 10_000,
                factor: 3.0
            }
        );
        assert_eq!(p.detectors[3].suppress, Suppression::Off);
        assert_eq!(
            p.alert_topic.as_deref(),
            Some("site/{pipeline}/{device}/{metric}/{detector}")
        );
    }

    #[test]
    fn default_alert_topic_and_off() {
        let cfg = load("detectors = [\"ewma\"]").unwrap();
        assert_eq!(
            cfg.pipelines[0].alert_topic.as_deref(),
            Some(DEFAULT_ALERT_TOPIC)
        );
        let cfg = load("alert_topic = \"\"").unwrap();
        assert_eq!(cfg.pipelines[0].alert_topic, None);
    }

    #[test]
    fn the_general_novelty_memory_can_be_sized_or_turned_off() {
        let cfg =
            load("[[pipeline.detector]]\nkind = \"general\"\nnovelty_prototypes = 0").unwrap();
        assert!(matches!(
            cfg.pipelines[0].detectors[0].kind,
            DetectorKind::General {
                novelty_prototypes: Some(0),
                ..
            }
        ));
        let err = load("[[pipeline.detector]]\nkind = \"general\"\nnovelty_prototypes = 5000")
            .unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.contains("novelty_prototypes") && e.contains("0..=4096")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_parameters_name_their_path() {
        let got = load(
            r#"
detectors = ["threshold", "rate_of_change", "ewma", "ewma", 7]
alert_topic = "sensors/{device}/{metric}"
[[pipeline.detector]]
kind = "zscore"
window = 2
threshold = -1
windw = 5
[[pipeline.detector]]
kind = "ewma"
name = "e2"
alpha = 1.5
cooldown = "soon"
alert_score = 0
[[pipeline.detector]]
kind = "threshold"
name = "limits"
min = 10
max = 5
[[pipeline.detector]]
window = 5
[[pipeline.detector]]
kind = "flat_line"
min_points = 1
suppress = "off"
cooldown_points = 3
[[pipeline.detector]]
kind = "general"
memory = 1
metrics = [""]
"#,
        )
        .unwrap_err();
        let want = [
            "pipeline[0].detectors[0]: a threshold detector needs `min` and/or `max`: use a table, e.g. { kind = \"threshold\", max = 80.0 }",
            "pipeline[0].detectors[1]: a rate_of_change detector needs `max_per_sec` (value units per second): use a table, e.g. { kind = \"rate_of_change\", max_per_sec = 2.0 }",
            "pipeline[0].detectors[3]: a second detector named `ewma`: give one a `name` (alert records and state are per name)",
            "pipeline[0].detectors[4]: must be a detector name or table, got 7",
            "pipeline[0].detector[0].window: must be an integer in 3..=1000000, got 2",
            "pipeline[0].detector[0].threshold: must be > 0, got -1",
            "pipeline[0].detector[0].windw: unknown parameter of a `zscore` detector (expected one of window, threshold, kind, name, devices, metrics, warmup, alert_score, suppress, cooldown, cooldown_points)",
            "pipeline[0].detector[1].alpha: must be in (0, 1), got 1.5",
            "pipeline[0].detector[1].alert_score: must be in (0, 1], got 0",
            "pipeline[0].detector[2].max: must not be below min (10), got 5",
            "pipeline[0].detector[3].kind: required: one of threshold, zscore, ewma, mad, rate_of_change, flat_line, missing_data, general",
            "pipeline[0].detector[4].min_points: must be at least 2 unless min_duration is set",
            "pipeline[0].detector[4].cooldown_points: not used with suppress = \"off\"",
            "pipeline[0].detector[5].memory: must be at least 2 (points)",
            "pipeline[0].detector[5].metrics[0]: must be a non-empty glob pattern, got \"\"",
            "pipeline[0].alert_topic: `sensors/{device}/{metric}` matches the sensor topic filter `sensors/+/+`: alerts would be read back as readings",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert!(
            got.iter().any(
                |g| g.starts_with("pipeline[0].detector[1].cooldown: `soon` is not a duration")
            ),
            "{got:#?}"
        );
        assert_eq!(got.len(), want.len() + 1, "{got:#?}");
    }

    #[test]
    fn sinks_and_alert_topics_stay_out_of_the_sensor_filter() {
        let got = load("sinks = [\"mqtt:sensors/a/b\"]\nalert_topic = \"alerts/+/x\"").unwrap_err();
        assert_eq!(
            got,
            [
                "pipeline[0].alert_topic: `alerts/+/x` must be a topic without wildcards or empty levels (\"\" turns alerts off)",
                "pipeline[0].sinks[0]: `sensors/a/b` matches the sensor topic filter: results would be read back as readings",
            ]
        );
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("+/b", "a/b"));
        assert!(!filter_matches("+/b", "a/b/c"));
    }
}
