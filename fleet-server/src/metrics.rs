//! Fleet counters in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub ingest_batches: AtomicU64,
    pub ingest_added: AtomicU64,
    pub ingest_duplicates: AtomicU64,
    pub ingest_dead_letters: AtomicU64,
    pub ingest_rejected: AtomicU64,
    pub ingest_micros: AtomicU64,
    pub heartbeats: AtomicU64,
    pub store_errors: AtomicU64,
    pub auth_failures: AtomicU64,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, agents_known: usize) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        counter(
            "fieldline_fleet_ingest_batches_total",
            "Ingest batches accepted.",
            &[("", g(&self.ingest_batches))],
        );
        counter(
            "fieldline_fleet_ingest_records_total",
            "Records in accepted batches by outcome.",
            &[
                ("{outcome=\"added\"}", g(&self.ingest_added)),
                ("{outcome=\"duplicate\"}", g(&self.ingest_duplicates)),
                ("{outcome=\"dead_letter\"}", g(&self.ingest_dead_letters)),
            ],
        );
        counter(
            "fieldline_fleet_ingest_rejected_total",
            "Ingest requests rejected with a 4xx.",
            &[("", g(&self.ingest_rejected))],
        );
        counter(
            "fieldline_fleet_ingest_seconds_total",
            "Time spent writing accepted batches to the store, in microseconds / 1e6.",
            &[],
        );
        let _ = writeln!(
            s,
            "fieldline_fleet_ingest_seconds_total {}",
            g(&self.ingest_micros) as f64 / 1e6
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "fieldline_fleet_heartbeats_total",
            "Agent heartbeats received.",
            g(&self.heartbeats),
        );
        counter(
            "fieldline_fleet_store_errors_total",
            "Requests that failed because the store failed.",
            g(&self.store_errors),
        );
        counter(
            "fieldline_fleet_auth_failures_total",
            "Requests refused for a missing, wrong or revoked credential or token.",
            g(&self.auth_failures),
        );
        let _ = writeln!(
            s,
            "# HELP fieldline_fleet_agents Agents known to the registry.\n# TYPE fieldline_fleet_agents gauge\nfieldline_fleet_agents {agents_known}"
        );
        s
    }
}

/// Each agent's last reported counters (heartbeat) as gauges labelled by agent, so
/// flash wear, RSS, outbox drops and backlog are scraped with the fleet's metrics.
/// Gauges, not counters: an agent's process counters restart with the process.
pub fn render_agents(agents: &[crate::store::AgentInfo]) -> String {
    let mut families: std::collections::BTreeMap<String, Vec<(&str, f64)>> = Default::default();
    for a in agents {
        let Some(counters) = a.counters.as_object() else {
            continue;
        };
        for (name, v) in counters {
            let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if let (true, Some(v)) = (valid, v.as_f64()) {
                families
                    .entry(name.clone())
                    .or_default()
                    .push((a.id.as_str(), v));
            }
        }
    }
    let mut s = String::new();
    for (name, samples) in families {
        let metric = format!("fieldline_agent_{name}");
        let _ = writeln!(
            s,
            "# HELP {metric} Last value of `{name}` the agent reported in its heartbeat."
        );
        let _ = writeln!(s, "# TYPE {metric} gauge");
        for (agent, v) in samples {
            // Agent ids are [A-Za-z0-9-_.]: nothing to escape in a label value.
            let _ = writeln!(s, "{metric}{{agent=\"{agent}\"}} {v}");
        }
    }
    s
}
