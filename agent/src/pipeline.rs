//! Turns broker messages into outbox records: decode → window → append.
//!
//! Messages are taken in batches (whatever is queued, up to [`MAX_BATCH`]) so one
//! sled write covers many readings. Undecodable payloads become dead-letter records
//! next to the good readings around them.

use std::sync::Arc;
use std::time::Duration;

use fieldline_common::config::WindowConfig;
use fieldline_common::payload::{self, Reading};
use fieldline_common::topic::TopicTemplate;
use fieldline_common::wire::{DeadLetter, RecordBody};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::broker::Message;
use crate::counters::Counters;
use crate::outbox::{Outbox, OutboxError};
use crate::window::{Accepted, TumblingWindows};

const MAX_BATCH: usize = 1024;

/// Version of the [`Pipeline::snapshot`] encoding; restore refuses others.
const SNAPSHOT_VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot decode pipeline snapshot: {0}")]
    Snapshot(String),
    #[error("pipeline snapshot version {found} is not supported (expected {expected})")]
    SnapshotVersion { found: u16, expected: u16 },
}

#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    v: u16,
    windows: &'a TumblingWindows,
}

#[derive(serde::Deserialize)]
struct SnapshotOwned {
    v: u16,
    windows: TumblingWindows,
}
/// How often the watermark is re-evaluated when no message arrives.
const TICK: Duration = Duration::from_millis(100);

pub struct Pipeline {
    template: TopicTemplate,
    windows: TumblingWindows,
    max_future_ms: i64,
    counters: Arc<Counters>,
}

impl Pipeline {
    pub fn new(template: TopicTemplate, window: &WindowConfig, counters: Arc<Counters>) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            template,
            windows: TumblingWindows::new(
                ms(window.size),
                ms(window.max_out_of_orderness),
                ms(window.idle_timeout),
            ),
            max_future_ms: ms(window.max_future),
            counters,
        }
    }

    /// Encodes all engine state (open windows, watermarks) as CBOR. Restoring it and
    /// feeding the same inputs gives the same outputs as an uninterrupted run.
    pub fn snapshot(&self) -> Vec<u8> {
        fieldline_common::codec::to_cbor(&SnapshotRef {
            v: SNAPSHOT_VERSION,
            windows: &self.windows,
        })
        .unwrap_or_default()
    }

    /// Replaces all engine state with a [`Pipeline::snapshot`]. On error nothing changes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), PipelineError> {
        let snap: SnapshotOwned = fieldline_common::codec::from_cbor(bytes, usize::MAX)
            .map_err(|e| PipelineError::Snapshot(e.to_string()))?;
        if snap.v != SNAPSHOT_VERSION {
            return Err(PipelineError::SnapshotVersion {
                found: snap.v,
                expected: SNAPSHOT_VERSION,
            });
        }
        self.windows = snap.windows;
        Ok(())
    }

    /// Decodes one message into readings, or the dead letter that keeps it. Pure:
    /// no state changes, so decoded readings can be logged before they are processed.
    pub fn decode(&self, msg: &Message) -> Result<Vec<Reading>, DeadLetter> {
        self.decode_one(msg).map(|r| vec![r]).map_err(|reason| DeadLetter {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            reason,
            received_ms: msg.arrival_ms,
        })
    }

    fn decode_one(&self, msg: &Message) -> Result<Reading, String> {
        let series = self.template.series(&msg.topic).map_err(|e| e.to_string())?;
        let reading = payload::decode(series, &msg.payload, msg.arrival_ms).map_err(|e| e.to_string())?;
        if reading.ts_ms > msg.arrival_ms.saturating_add(self.max_future_ms) {
            return Err(format!(
                "timestamp {} is {} ms ahead of the agent clock (window.max_future)",
                reading.ts_ms,
                reading.ts_ms - msg.arrival_ms
            ));
        }
        Ok(reading)
    }

    /// Feeds one decoded reading; `arrival_ms` is the agent clock when it arrived.
    pub fn process(&mut self, reading: &Reading, arrival_ms: i64, _out: &mut Vec<RecordBody>) {
        if self.windows.add(reading, arrival_ms) == Accepted::Late {
            self.counters.inc(&self.counters.late_dropped);
        }
    }

    /// Decodes and processes one message (dead letters go to `out` too).
    pub fn handle(&mut self, msg: &Message, out: &mut Vec<RecordBody>) {
        match self.decode(msg) {
            Ok(readings) => {
                for r in &readings {
                    self.counters.inc(&self.counters.readings_decoded);
                    self.process(r, msg.arrival_ms, out);
                }
            }
            Err(dead) => {
                self.counters.inc(&self.counters.dead_letters);
                out.push(RecordBody::DeadLetter(dead));
            }
        }
    }

    /// Closes due windows, pushing their results onto `out`.
    pub fn advance(&mut self, wall_ms: i64, out: &mut Vec<RecordBody>) {
        let closed = self.windows.advance(wall_ms);
        self.counters
            .add(&self.counters.windows_emitted, closed.len() as u64);
        out.extend(closed.into_iter().map(RecordBody::Window));
    }
}

/// Runs until `shutdown` or until the broker channel closes. On shutdown, intake
/// stops first; the batch in hand is still written.
pub async fn run(
    mut pipeline: Pipeline,
    mut messages: mpsc::Receiver<Message>,
    outbox: Arc<Outbox>,
    wake_uplink: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), OutboxError> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            n = messages.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                for msg in batch.drain(..) {
                    pipeline.handle(&msg, &mut out);
                }
            }
            _ = tick.tick() => {}
        }
        pipeline.advance(fieldline_common::now_ms(), &mut out);
        if !out.is_empty() {
            outbox.append(std::mem::take(&mut out), fieldline_common::now_ms())?;
            wake_uplink.notify_one();
        }
    }
    Ok(())
}
