//! Process-wide counters, reported in heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};

use fieldline_common::wire::AgentCounters;

#[derive(Debug, Default)]
pub struct Counters {
    pub messages_received: AtomicU64,
    pub readings_decoded: AtomicU64,
    pub dead_letters: AtomicU64,
    pub late_dropped: AtomicU64,
    pub windows_emitted: AtomicU64,
    /// Anomaly records (alerts) raised by the pipelines' detectors.
    pub anomalies: AtomicU64,
    /// Readings not scored because their pipeline's detectors already track
    /// `max_series` series.
    pub detector_series_rejected: AtomicU64,
    /// Messages queued for the local broker (`mqtt:` sinks, alert topics).
    pub local_published: AtomicU64,
    /// Messages for the local broker dropped because its queue was full.
    pub local_dropped: AtomicU64,
    /// Readings appended to the ingest log.
    pub readings_logged: AtomicU64,
    /// Frame bytes appended to the ingest log.
    pub ingest_log_bytes: AtomicU64,
    /// Gauges refreshed by the ingest loop about once a second (see
    /// [`crate::ingest`]): the outbox's bytes and drop counters, the process
    /// footprint and the store's size.
    pub outbox_bytes: AtomicU64,
    pub outbox_dropped: AtomicU64,
    pub outbox_dropped_bytes: AtomicU64,
    pub disk_write_bytes: AtomicU64,
    pub rss_bytes: AtomicU64,
    pub state_disk_bytes: AtomicU64,
}

impl Counters {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    pub fn snapshot(&self, outbox_len: u64, last_seq: u64) -> AgentCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentCounters {
            messages_received: get(&self.messages_received),
            readings_decoded: get(&self.readings_decoded),
            dead_letters: get(&self.dead_letters),
            late_dropped: get(&self.late_dropped),
            windows_emitted: get(&self.windows_emitted),
            outbox_len,
            last_seq,
            outbox_bytes: get(&self.outbox_bytes),
            outbox_dropped: get(&self.outbox_dropped),
            outbox_dropped_bytes: get(&self.outbox_dropped_bytes),
            readings_logged: get(&self.readings_logged),
            disk_write_bytes: get(&self.disk_write_bytes),
            rss_bytes: get(&self.rss_bytes),
            state_disk_bytes: get(&self.state_disk_bytes),
            anomalies: get(&self.anomalies),
            detector_series_rejected: get(&self.detector_series_rejected),
            local_published: get(&self.local_published),
            local_dropped: get(&self.local_dropped),
        }
    }
}
