//! The processing loop: broker messages → decode → **ingest log** → pipeline →
//! outbox, with checkpoints and crash recovery.
//!
//! Per batch of messages (whatever is queued, up to [`MAX_BATCH`]):
//! 1. decode every message ([`Pipeline::decode`] is pure); undecodable payloads
//!    become dead letters in the same batch;
//! 2. append the batch to the ingest log as one entry (with `durability =
//!    "batch-fsync"` the store is flushed before going on);
//! 3. process it and run `advance(now)`; route the outputs by their pipeline's sinks
//!    ([`Pipeline::route`]); append the outbox's share together with the entry's
//!    position (one transaction), then queue the local publishes (`mqtt:` sinks,
//!    alerts) on the agent's own broker ([`crate::local`]), which never blocks.
//!
//! Recovery ([`Processor::open`]) restores the latest checkpoint and replays every
//! log entry after its position. Outputs of entries at or below the outbox's
//! `applied_pos` are already in the outbox and are discarded; the others are
//! appended. Because sled recovers to a prefix of its writes and an entry is logged
//! before its outputs, this gives each logged reading's outputs exactly once.
//!
//! **Determinism contract** with the engine ([`Pipeline`]): given the same
//! `process(reading, arrival_ms)` and `advance(wall_ms)` calls it produces the same
//! outputs and state, and `snapshot`/`restore` cover all of its state. Every call the
//! live loop makes is in the log: each entry records the arrival time of each
//! reading, the `advance` after the batch (`post_tick`) and the last idle `advance`
//! before it (`pre_tick`). Idle ticks that emit nothing are not logged one by one;
//! only the latest is kept, which assumes (as watermarks are monotonic) that such an
//! `advance(t)` is superseded by a later `advance(t')`, `t' >= t`, and that repeating
//! one changes nothing. A tick that emits something is logged as its own entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldline_common::config::Durability;
use fieldline_common::wire::{RawReading, RecordBody};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::Message;
use crate::counters::Counters;
use crate::local::LocalPublisher;
use crate::outbox::Outbox;
use crate::pipeline::{Pipeline, PipelineError};
use crate::state::checkpoint::AUTO;
use crate::state::{
    CheckpointInfo, Checkpoints, Footprint, IngestLog, Kv, LogEntry, LogEvent, StateError, Store,
};

pub const MAX_BATCH: usize = 1024;
/// How often the watermark is re-evaluated when no message arrives.
const TICK: Duration = Duration::from_millis(100);
/// How often gauges are refreshed and expired outbox records dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot restore checkpoint {id}: {source}")]
    Restore { id: u64, source: PipelineError },
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub durability: Durability,
    pub checkpoint_interval: Duration,
    /// Also put every decoded reading in the outbox as a `reading` record.
    pub forward_raw: bool,
    /// Where `mqtt:` sinks and alerts go; `None`: not published (e.g. tools, tests).
    pub publisher: Option<LocalPublisher>,
}

/// What [`Processor::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub checkpoint: Option<u64>,
    pub from_pos: u64,
    pub replayed_entries: u64,
    pub replayed_readings: u64,
    /// Outbox records re-created for entries whose outputs had not been committed.
    pub records_recreated: u64,
    /// Log entries that failed their checksum and were skipped.
    pub corrupt_entries: u64,
}

/// The pipeline bound to its ingest log, outbox and checkpoints.
pub struct Processor {
    pipeline: Pipeline,
    store: Store,
    log: IngestLog,
    outbox: Arc<Outbox>,
    checkpoints: Checkpoints,
    /// Keyed state with per-key TTL; expired keys are purged by housekeeping.
    kv: Kv,
    counters: Arc<Counters>,
    settings: IngestSettings,
    /// The latest idle `advance` not yet logged (see the module doc).
    pending_tick: Option<i64>,
    out: Vec<RecordBody>,
}

impl Processor {
    /// Restores the latest checkpoint and replays the ingest-log tail.
    pub fn open(
        mut pipeline: Pipeline,
        store: &Store,
        outbox: Arc<Outbox>,
        counters: Arc<Counters>,
        settings: IngestSettings,
    ) -> Result<(Self, Recovery), IngestError> {
        let mut log = IngestLog::open(store)?;
        let checkpoints = Checkpoints::open(store)?;
        let mut rec = Recovery::default();
        let latest = match checkpoints.latest() {
            Ok(l) => l,
            Err(e) => {
                // Starting without the state loses open windows; refusing to start
                // would lose everything that arrives meanwhile.
                tracing::error!(error = %e, "latest checkpoint unreadable; starting from empty engine state (run `fieldline-agent state check`)");
                None
            }
        };
        rec.from_pos = log.compacted_through()?;
        if let Some((info, state)) = latest {
            match pipeline.restore(&state) {
                Ok(()) => {
                    rec.checkpoint = Some(info.id);
                    rec.from_pos = info.ingest_pos;
                }
                // E.g. a snapshot from a newer release after a downgrade: run with
                // empty engine state rather than not at all.
                Err(e) => tracing::error!(
                    checkpoint = info.id,
                    error = %e,
                    "cannot restore the latest checkpoint; starting from empty engine state"
                ),
            }
            log.raise_floor(info.ingest_pos);
        }
        let mut p = Self {
            pipeline,
            store: store.clone(),
            log,
            outbox,
            checkpoints,
            kv: Kv::open(store)?,
            counters,
            settings,
            pending_tick: None,
            out: Vec::new(),
        };
        p.replay(&mut rec)?;
        Ok((p, rec))
    }

    fn replay(&mut self, rec: &mut Recovery) -> Result<(), IngestError> {
        let tail: Vec<_> = self.log.tail(rec.from_pos).collect();
        for item in tail {
            match item {
                Ok((pos, entry)) => {
                    rec.replayed_entries += 1;
                    rec.replayed_readings += entry.readings() as u64;
                    rec.records_recreated += self.apply(pos, &entry, true)? as u64;
                }
                Err(e) => {
                    rec.corrupt_entries += 1;
                    tracing::error!(error = %e, "skipping a corrupt ingest-log entry during replay (run `fieldline-agent state check`)");
                }
            }
        }
        Ok(())
    }

    /// Runs one logged entry through the pipeline; appends its outputs unless the
    /// outbox already has them. Returns the number of records appended.
    fn apply(&mut self, pos: u64, entry: &LogEntry, replay: bool) -> Result<usize, IngestError> {
        self.out.clear();
        if replay {
            // Live, the pending tick already ran when it happened.
            if let Some(t) = entry.pre_tick {
                self.pipeline.advance(t, &mut self.out);
            }
        }
        for ev in &entry.events {
            match ev {
                LogEvent::Reading {
                    arrival_ms,
                    reading,
                } => {
                    if self.settings.forward_raw {
                        self.out.push(RecordBody::Reading(RawReading {
                            series: reading.series.clone(),
                            ts_ms: reading.ts_ms,
                            value: reading.value,
                            arrival_ms: *arrival_ms,
                        }));
                    }
                    self.pipeline.process(reading, *arrival_ms, &mut self.out);
                }
                LogEvent::DeadLetter(d) => self.out.push(RecordBody::DeadLetter(d.clone())),
            }
        }
        self.pipeline.advance(entry.post_tick, &mut self.out);
        if pos <= self.outbox.applied_pos() || self.out.is_empty() {
            return Ok(0);
        }
        let mut local = Vec::new();
        self.pipeline.route(&mut self.out, &mut local);
        let n = self.out.len();
        // created_ms from the log, so a replay re-creates identical records.
        self.outbox
            .append_from(Some(pos), std::mem::take(&mut self.out), entry.post_tick)?;
        self.publish(local);
        Ok(n)
    }

    /// After the outbox commit, so a crash replay that re-creates the records also
    /// publishes them (local publishes of outbox-less entries may repeat after a crash).
    fn publish(&self, local: Vec<crate::pipeline::LocalMessage>) {
        if let Some(p) = &self.settings.publisher {
            for m in local {
                p.publish(m);
            }
        }
    }

    /// Logs and processes one batch of messages.
    pub fn ingest(&mut self, msgs: &[Message], now_ms: i64) -> Result<usize, IngestError> {
        let mut events = Vec::with_capacity(msgs.len());
        let mut readings = Vec::new();
        for msg in msgs {
            match self.pipeline.decode_into(msg, &mut readings) {
                Ok(()) => {
                    self.counters
                        .add(&self.counters.readings_decoded, readings.len() as u64);
                    events.extend(readings.drain(..).map(|reading| LogEvent::Reading {
                        arrival_ms: msg.arrival_ms,
                        reading,
                    }));
                }
                Err(dead) => {
                    self.counters.inc(&self.counters.dead_letters);
                    events.push(LogEvent::DeadLetter(dead));
                }
            }
        }
        let entry = LogEntry {
            pre_tick: self.pending_tick.take(),
            events,
            post_tick: now_ms,
        };
        self.log_and_apply(entry)
    }

    fn log_and_apply(&mut self, entry: LogEntry) -> Result<usize, IngestError> {
        let (pos, bytes) = self.log.append(&entry)?;
        if self.settings.durability == Durability::BatchFsync && !entry.events.is_empty() {
            self.store.flush()?;
        }
        self.counters
            .add(&self.counters.readings_logged, entry.readings() as u64);
        self.counters
            .add(&self.counters.ingest_log_bytes, bytes as u64);
        self.apply(pos, &entry, false)
    }

    /// Advances event time with the wall clock; logs the tick only when it emitted.
    pub fn tick(&mut self, now_ms: i64) -> Result<usize, IngestError> {
        let mut out = Vec::new();
        self.pipeline.advance(now_ms, &mut out);
        if out.is_empty() {
            self.pending_tick = Some(now_ms);
            return Ok(0);
        }
        // Logged so a replay emits the same; the outputs are computed again from
        // the entry (the engine is deterministic and the repeated advance is a no-op).
        let entry = LogEntry {
            pre_tick: self.pending_tick.take(),
            events: Vec::new(),
            post_tick: now_ms,
        };
        let (pos, bytes) = self.log.append(&entry)?;
        self.counters
            .add(&self.counters.ingest_log_bytes, bytes as u64);
        let mut local = Vec::new();
        self.pipeline.route(&mut out, &mut local);
        let n = out.len();
        self.outbox.append_from(Some(pos), out, now_ms)?;
        self.publish(local);
        Ok(n)
    }

    /// The seed's `checkpoint(name) -> id`: commits engine state, ingest-log position
    /// and outbox `seq` atomically, then compacts the log up to that position.
    pub fn checkpoint(&mut self, name: &str, now_ms: i64) -> Result<u64, IngestError> {
        self.log_pending_tick()?;
        let state = self.pipeline.snapshot();
        let pos = self.log.last_pos();
        let id = self
            .checkpoints
            .commit(name, &state, pos, self.outbox.last_seq(), now_ms)?;
        let compacted = self.log.compact(pos)?;
        tracing::debug!(
            id,
            name,
            pos,
            state_bytes = state.len(),
            compacted,
            "checkpoint"
        );
        Ok(id)
    }

    /// The snapshot includes the pending idle tick: logs it so the log covers
    /// everything the snapshot reflects (repeating it on replay changes nothing).
    fn log_pending_tick(&mut self) -> Result<(), IngestError> {
        if let Some(t) = self.pending_tick.take() {
            let entry = LogEntry {
                pre_tick: Some(t),
                events: Vec::new(),
                post_tick: t,
            };
            self.log.append(&entry)?;
        }
        Ok(())
    }

    /// The seed's `restore(id)`: replaces the engine state with checkpoint `id`'s.
    /// Readings logged after it are not replayed (the log is compacted at each
    /// checkpoint); use it to roll state back, e.g. after a bad config.
    pub fn restore(&mut self, id: u64) -> Result<CheckpointInfo, IngestError> {
        let (info, state) = self.checkpoints.get(id)?;
        self.pipeline
            .restore(&state)
            .map_err(|source| IngestError::Restore { id, source })?;
        Ok(info)
    }

    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Drops expired outbox records and refreshes the gauges in [`Counters`].
    pub fn housekeeping(&mut self, now_ms: i64) -> Result<(), IngestError> {
        self.outbox.expire(now_ms)?;
        self.kv.purge_expired(now_ms)?;
        let c = &self.counters;
        c.set(&c.outbox_bytes, self.outbox.bytes());
        c.set(&c.outbox_dropped, self.outbox.dropped());
        c.set(&c.outbox_dropped_bytes, self.outbox.dropped_bytes());
        let f = Footprint::read();
        c.set(&c.rss_bytes, f.rss_bytes);
        c.set(&c.disk_write_bytes, f.disk_write_bytes);
        c.set(&c.state_disk_bytes, self.store.size_on_disk());
        Ok(())
    }
}

/// Runs until `shutdown` or until the broker channel closes. On shutdown intake
/// stops first, the batch in hand is finished, a checkpoint is taken and the store
/// flushed.
pub async fn run(
    mut proc: Processor,
    mut messages: mpsc::Receiver<Message>,
    wake_uplink: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut last_housekeeping = Instant::now() - HOUSEKEEPING;
    let mut blocked_since: Option<Instant> = None;
    loop {
        // Also while blocked: expiry frees room, and checkpoints keep replay short.
        if last_checkpoint.elapsed() >= proc.settings.checkpoint_interval {
            proc.checkpoint(AUTO, fieldline_common::now_ms())?;
            last_checkpoint = Instant::now();
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            // Gauges and expiry must not stop intake (e.g. one corrupt kv record).
            if let Err(e) = proc.housekeeping(fieldline_common::now_ms()) {
                tracing::warn!(error = %e, "state housekeeping failed (run `fieldline-agent state check`)");
            }
            last_housekeeping = Instant::now();
        }
        let outbox = proc.outbox.clone();
        if !outbox.has_room() {
            if blocked_since.is_none() {
                tracing::warn!(bytes = outbox.bytes(), "outbox full (outbox.on_full = block): not taking readings until the fleet acknowledges");
                blocked_since = Some(Instant::now());
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = outbox.wait_for_room(TICK) => {}
            }
            let n = proc.tick(fieldline_common::now_ms())?;
            if n > 0 {
                wake_uplink.notify_one();
            }
            continue;
        }
        if let Some(since) = blocked_since.take() {
            tracing::info!(blocked_for = ?since.elapsed(), "outbox has room again");
        }
        let appended = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            n = messages.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                let r = proc.ingest(&batch, fieldline_common::now_ms())?;
                batch.clear();
                r
            }
            _ = tick.tick() => proc.tick(fieldline_common::now_ms())?,
        };
        if appended > 0 {
            wake_uplink.notify_one();
        }
    }
    let id = proc.checkpoint(AUTO, fieldline_common::now_ms())?;
    proc.store.flush()?;
    tracing::info!(checkpoint = id, "ingest stopped; state checkpointed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Bounds;
    use crate::state::StoreOptions;
    use fieldline_common::config::pipeline::{
        default_pipeline, DetectorConfig, DetectorKind, Suppression,
    };
    use fieldline_common::config::WindowConfig;
    use fieldline_common::topic::TopicTemplate;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn pipeline(counters: &Arc<Counters>) -> Pipeline {
        let window = WindowConfig {
            size: Duration::from_millis(1000),
            max_out_of_orderness: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(700),
            max_future: Duration::from_secs(60),
        };
        // Detectors that alert often on this input, including gap alerts raised by
        // ticks, so crash replay has to reproduce anomaly records too.
        let det = |kind: DetectorKind, cooldown_points: u64| DetectorConfig {
            name: kind.name().to_string(),
            kind,
            devices: vec![],
            metrics: vec![],
            warmup: 0,
            alert_score: 0.5,
            suppress: Suppression::Episode {
                cooldown_points,
                cooldown_ms: 0,
            },
        };
        let mut cfg = default_pipeline(&window);
        cfg.detectors = vec![
            det(
                DetectorKind::ZScore {
                    window: 4,
                    threshold: 1.5,
                },
                1,
            ),
            det(DetectorKind::RateOfChange { max_per_sec: 50.0 }, 0),
            det(
                DetectorKind::FlatLine {
                    min_points: 2,
                    min_duration_ms: 0,
                    tolerance: 0.5,
                },
                1,
            ),
            det(
                DetectorKind::MissingData {
                    expected_interval_ms: 100,
                    factor: 3.0,
                },
                0,
            ),
        ];
        Pipeline::with_pipelines(
            TopicTemplate::parse("sensors/{device}/{metric}").expect("template"),
            &window,
            &[cfg],
            counters.clone(),
        )
    }

    fn open(dir: &Path, forward_raw: bool) -> (Processor, Recovery) {
        let mut tries = 0;
        let store = loop {
            match Store::open(
                dir,
                &StoreOptions {
                    cache_capacity_bytes: 1 << 20,
                    flush_every: None,
                },
            ) {
                Ok(s) => break s,
                // sled's threads release the lock a moment after the last handle.
                Err(_) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let outbox = Arc::new(Outbox::open(&store, Bounds::default()).unwrap());
        let counters = Arc::new(Counters::default());
        Processor::open(
            pipeline(&counters),
            &store,
            outbox,
            counters,
            IngestSettings {
                durability: Durability::Interval,
                checkpoint_interval: Duration::from_secs(3600),
                forward_raw,
                publisher: None,
            },
        )
        .unwrap()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn log_entries(p: &Processor) -> Vec<(u64, LogEntry)> {
        p.log.tail(0).map(Result::unwrap).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Readings (device, event-time offset, value step) arriving together.
        Batch(Vec<(u8, i16, u8)>),
        Tick(u16),
        Checkpoint,
        Flush,
        /// kill -9: reopen from the files as they are.
        Crash,
        /// kill -9 right after a batch was logged and made durable, before any of
        /// its outputs reached the outbox: replay must create them.
        KillAfterLog(Vec<(u8, i16, u8)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => proptest::collection::vec((0u8..3, -500i16..200, 0u8..40), 1..6).prop_map(Op::Batch),
            3 => (50u16..1500).prop_map(Op::Tick),
            1 => Just(Op::Checkpoint),
            2 => Just(Op::Flush),
            2 => Just(Op::Crash),
            1 => proptest::collection::vec((0u8..3, -500i16..200, 0u8..40), 1..6).prop_map(Op::KillAfterLog),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Checkpoint + restore + replay after crashes gives exactly the outputs of
        /// one uninterrupted run over the same logged entries: nothing lost, nothing
        /// twice, same window results.
        #[test]
        fn crashes_give_the_results_of_an_uninterrupted_run(ops in proptest::collection::vec(op(), 1..40), forward_raw in any::<bool>()) {
            let root = tempfile::tempdir().unwrap();
            let mut dir = root.path().join("g0");
            let (mut p, _) = open(&dir, forward_raw);
            // Milliseconds since the epoch: payload `ts` below 10^11 would be read as seconds.
            let mut now = 1_700_000_000_000i64;
            // Every entry that is in the log, by position (what the reference replays).
            let mut logged: BTreeMap<u64, LogEntry> = BTreeMap::new();
            let mut gen = 0;
            let mut recreated = 0;
            let mut killed_after_log = false;
            let msgs = |rs: &[(u8, i16, u8)], now: i64| -> Vec<Message> {
                rs.iter().map(|(d, off, v)| Message {
                    topic: format!("sensors/d{d}/t"),
                    payload: format!(r#"{{"value": {}, "ts": {}}}"#, *v as f64 * 0.25, now + *off as i64).into_bytes(),
                    arrival_ms: now,
                }).collect()
            };
            for op in ops {
                let crash = match op {
                    Op::Batch(rs) => {
                        now += 37;
                        p.ingest(&msgs(&rs, now), now).unwrap();
                        false
                    }
                    Op::KillAfterLog(rs) => {
                        now += 37;
                        let events = msgs(&rs, now).iter().flat_map(|m| match p.pipeline.decode(m) {
                            Ok(rs) => rs.into_iter().map(|reading| LogEvent::Reading { arrival_ms: m.arrival_ms, reading }).collect(),
                            Err(d) => vec![LogEvent::DeadLetter(d)],
                        }).collect();
                        let entry = LogEntry { pre_tick: p.pending_tick.take(), events, post_tick: now };
                        p.log.append(&entry).unwrap();
                        p.store.flush().unwrap();
                        killed_after_log = true;
                        true
                    }
                    Op::Tick(dt) => {
                        now += dt as i64;
                        p.tick(now).unwrap();
                        false
                    }
                    Op::Checkpoint => {
                        // What the checkpoint logs itself (the pending idle tick, whose
                        // effect its snapshot holds) is compacted away at once: collect
                        // it first, or the reference misses that tick.
                        p.log_pending_tick().unwrap();
                        logged.extend(log_entries(&p));
                        p.checkpoint(AUTO, now).unwrap();
                        false
                    }
                    Op::Flush => {
                        p.store.flush().unwrap();
                        false
                    }
                    Op::Crash => true,
                };
                if crash {
                        logged.extend(log_entries(&p));
                        gen += 1;
                        let next = root.path().join(format!("g{gen}"));
                        copy_dir(&dir, &next);
                        drop(p);
                        dir = next;
                        let (q, rec) = open(&dir, forward_raw);
                        recreated += rec.records_recreated;
                        p = q;
                        // Entries past what survived are gone (their positions get reused).
                        let survived = p.log.last_pos();
                        logged.retain(|pos, _| *pos <= survived);
                        logged.extend(log_entries(&p));
                }
            }
            if forward_raw && killed_after_log {
                // Every logged reading has a raw record, so replay had to create some.
                prop_assert!(recreated > 0, "replay re-created nothing");
            }
            logged.extend(log_entries(&p));
            let got: Vec<RecordBody> = p.outbox.peek(usize::MAX).unwrap().into_iter().map(|r| r.body).collect();

            // Reference: one uninterrupted engine over the logged entries.
            let counters = Arc::new(Counters::default());
            let mut reference = pipeline(&counters);
            let mut want = Vec::new();
            for entry in logged.values() {
                if let Some(t) = entry.pre_tick {
                    reference.advance(t, &mut want);
                }
                for ev in &entry.events {
                    match ev {
                        LogEvent::Reading { arrival_ms, reading } => {
                            if forward_raw {
                                want.push(RecordBody::Reading(RawReading {
                                    series: reading.series.clone(),
                                    ts_ms: reading.ts_ms,
                                    value: reading.value,
                                    arrival_ms: *arrival_ms,
                                }));
                            }
                            reference.process(reading, *arrival_ms, &mut want);
                        }
                        LogEvent::DeadLetter(d) => want.push(RecordBody::DeadLetter(d.clone())),
                    }
                }
                reference.advance(entry.post_tick, &mut want);
            }
            prop_assert_eq!(got, want);
        }
    }
}
