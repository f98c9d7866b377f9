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
}

impl Counters {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
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
        }
    }
}
