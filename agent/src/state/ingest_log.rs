//! The ingest log: decoded readings, appended in batches before they are processed.
//!
//! One sled entry per batch (key = position u64 big-endian, value = a frame), so a
//! batch of a thousand readings costs one write, not a thousand. The body is a small
//! binary format, all integers big-endian, strings length-prefixed:
//!
//! ```text
//! entry  = pre_tick i64 (i64::MIN = none) | post_tick i64 | count u32 | event*
//! event  = 1 | arrival_ms i64 | ts_ms i64 | value f64 bits u64 | device str16 | metric str16
//!        | 2 | received_ms i64 | topic str16 | payload bytes32 | reason str16
//! str16  = len u16 | utf-8 ; bytes32 = len u32 | bytes
//! ```
//!
//! The ticks make replay deterministic: `pre_tick` is the last `advance(wall)` the
//! live loop ran since the previous entry without emitting anything (coalesced:
//! later idle ticks supersede earlier ones), `post_tick` the `advance(wall)` run
//! right after the batch. Replay calls exactly these.
//!
//! Positions are never reused: compaction records the position it compacted
//! through in `meta` before deleting, and numbering continues above it.

use fieldline_common::payload::Reading;
use fieldline_common::wire::{DeadLetter, SeriesKey};

use super::frame::{self, Kind};
use super::{meta_frame, meta_get, StateError, Store};

pub(crate) const META_COMPACTED: &str = "ingest.compacted_through";
/// Log entries removed per sled batch when compacting (see [`IngestLog::compact`]).
const COMPACT_BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum LogEvent {
    Reading { arrival_ms: i64, reading: Reading },
    DeadLetter(DeadLetter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub pre_tick: Option<i64>,
    pub events: Vec<LogEvent>,
    pub post_tick: i64,
}

impl LogEntry {
    pub fn readings(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, LogEvent::Reading { .. }))
            .count()
    }
}

pub struct IngestLog {
    tree: sled::Tree,
    meta: sled::Tree,
    next_pos: u64,
}

impl IngestLog {
    pub fn open(store: &Store) -> Result<Self, StateError> {
        let tree = store.tree(Kind::Ingest)?;
        let meta = store.tree(Kind::Meta)?;
        let compacted = meta_get(&meta, META_COMPACTED)?;
        let last = match tree.last()? {
            Some((k, _)) => frame::be_u64(&k)
                .ok_or_else(|| StateError::corrupt("ingest", &k, "key is not a u64"))?,
            None => 0,
        };
        Ok(Self {
            tree,
            meta,
            next_pos: last.max(compacted) + 1,
        })
    }

    /// Appends one batch; returns its position. Durability is the caller's choice
    /// (flush the store now, or let the periodic flush do it).
    pub fn append(&mut self, entry: &LogEntry) -> Result<(u64, usize), StateError> {
        let pos = self.next_pos;
        let key = pos.to_be_bytes();
        let value = frame::encode(Kind::Ingest, &key, &encode_entry(entry)?);
        let len = value.len();
        self.tree.insert(key, value)?;
        self.next_pos += 1;
        Ok((pos, len))
    }

    /// Positions above which entries exist are never reused; the last one assigned.
    pub fn last_pos(&self) -> u64 {
        self.next_pos - 1
    }

    /// Makes sure positions continue above `floor` (e.g. a checkpoint's position).
    pub fn raise_floor(&mut self, floor: u64) {
        self.next_pos = self.next_pos.max(floor + 1);
    }

    /// Entries with a position above `after`, oldest first.
    pub fn tail(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, LogEntry), StateError>> + '_ {
        let start = after.saturating_add(1).to_be_bytes();
        self.tree.range(start..).map(|kv| {
            let (k, v) = kv?;
            let body = frame::decode_stored(Kind::Ingest, &k, &v)
                .map_err(|e| StateError::corrupt("ingest", &k, e))?;
            let entry = decode_entry(body).map_err(|e| StateError::corrupt("ingest", &k, e))?;
            Ok((frame::be_u64(&k).unwrap_or(0), entry))
        })
    }

    /// Deletes every entry with position `<= through` (they are covered by a
    /// checkpoint). Returns how many were deleted.
    pub fn compact(&mut self, through: u64) -> Result<usize, StateError> {
        if meta_get(&self.meta, META_COMPACTED)? < through {
            self.meta
                .insert(META_COMPACTED, meta_frame(META_COMPACTED, through))?;
        }
        // Small batches, not one: a sled batch holds one epoch guard for all of its
        // removals, so every tree node they rewrite stays allocated until it ends.
        // Compacting 30 s of a 10,000 msg/s log in one batch took a 64 MiB malloc arena
        // that the process then kept (docs/BENCHMARKS.md). Atomicity is not needed:
        // `compacted_through` is raised first and nothing at or below it is replayed.
        let mut n = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for key in self
                .tree
                .range(..=through.to_be_bytes())
                .keys()
                .take(COMPACT_BATCH)
            {
                batch.remove(key?);
                in_batch += 1;
            }
            if in_batch == 0 {
                break;
            }
            self.tree.apply_batch(batch)?;
            n += in_batch;
        }
        Ok(n)
    }

    pub fn compacted_through(&self) -> Result<u64, StateError> {
        meta_get(&self.meta, META_COMPACTED)
    }

    /// Number of batches held (walks the tree: for tools and tests).
    pub fn entries(&self) -> usize {
        self.tree.len()
    }
}

pub fn encode_entry(e: &LogEntry) -> Result<Vec<u8>, StateError> {
    let mut out = Vec::with_capacity(24 + e.events.len() * 48);
    out.extend_from_slice(&e.pre_tick.unwrap_or(i64::MIN).to_be_bytes());
    out.extend_from_slice(&e.post_tick.to_be_bytes());
    let n =
        u32::try_from(e.events.len()).map_err(|_| StateError::Encode("batch too large".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    for ev in &e.events {
        match ev {
            LogEvent::Reading {
                arrival_ms,
                reading,
            } => {
                out.push(1);
                out.extend_from_slice(&arrival_ms.to_be_bytes());
                out.extend_from_slice(&reading.ts_ms.to_be_bytes());
                out.extend_from_slice(&reading.value.to_bits().to_be_bytes());
                str16(&mut out, &reading.series.device)?;
                str16(&mut out, &reading.series.metric)?;
            }
            LogEvent::DeadLetter(d) => {
                out.push(2);
                out.extend_from_slice(&d.received_ms.to_be_bytes());
                str16(&mut out, &d.topic)?;
                let len = u32::try_from(d.payload.len())
                    .map_err(|_| StateError::Encode("dead letter payload too large".into()))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&d.payload);
                // Reasons are ours and short; cut rather than fail on a huge one.
                let reason: String = d.reason.chars().take(1000).collect();
                str16(&mut out, &reason)?;
            }
        }
    }
    Ok(out)
}

fn str16(out: &mut Vec<u8>, s: &str) -> Result<(), StateError> {
    let len = u16::try_from(s.len())
        .map_err(|_| StateError::Encode(format!("string of {} bytes", s.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: wanted {n} more bytes, {} left",
                self.0.len()
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    /// Borrowed from the entry: series names go straight into their inline form.
    fn str16(&mut self) -> Result<&'a str, String> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "string is not utf-8".to_string())
    }
}

pub fn decode_entry(body: &[u8]) -> Result<LogEntry, String> {
    let mut c = Cursor(body);
    let pre = c.i64()?;
    let post_tick = c.i64()?;
    let n = c.u32()? as usize;
    let mut events = Vec::with_capacity(n.min(65_536));
    for _ in 0..n {
        match c.u8()? {
            1 => {
                let arrival_ms = c.i64()?;
                let ts_ms = c.i64()?;
                let value = f64::from_bits(c.u64()?);
                let device = c.str16()?;
                let metric = c.str16()?;
                events.push(LogEvent::Reading {
                    arrival_ms,
                    reading: Reading {
                        series: SeriesKey::new(device, metric),
                        ts_ms,
                        value,
                    },
                });
            }
            2 => {
                let received_ms = c.i64()?;
                let topic = c.str16()?;
                let len = c.u32()? as usize;
                let payload = c.take(len)?.to_vec();
                let reason = c.str16()?;
                events.push(LogEvent::DeadLetter(DeadLetter {
                    topic: topic.to_string(),
                    payload,
                    reason: reason.to_string(),
                    received_ms,
                }));
            }
            t => return Err(format!("unknown event tag {t}")),
        }
    }
    if !c.0.is_empty() {
        return Err(format!("{} trailing bytes", c.0.len()));
    }
    Ok(LogEntry {
        pre_tick: (pre != i64::MIN).then_some(pre),
        events,
        post_tick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = LogEvent> {
        prop_oneof![
            (
                any::<i64>(),
                any::<i64>(),
                any::<f64>(),
                "[a-z0-9]{0,8}",
                "[a-z.]{0,8}"
            )
                .prop_map(|(arrival_ms, ts_ms, value, d, m)| LogEvent::Reading {
                    arrival_ms,
                    reading: Reading {
                        series: SeriesKey::new(d, m),
                        ts_ms,
                        value
                    },
                }),
            (
                any::<i64>(),
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..40),
                ".{0,30}"
            )
                .prop_map(
                    |(received_ms, topic, payload, reason)| LogEvent::DeadLetter(DeadLetter {
                        topic,
                        payload,
                        reason,
                        received_ms,
                    })
                ),
        ]
    }

    proptest! {
        #[test]
        fn entries_round_trip(pre in proptest::option::of(any::<i64>().prop_filter("sentinel", |t| *t != i64::MIN)),
                              post in any::<i64>(),
                              events in proptest::collection::vec(arb_event(), 0..20)) {
            let e = LogEntry { pre_tick: pre, events, post_tick: post };
            let back = decode_entry(&encode_entry(&e).unwrap()).unwrap();
            // Compare through bits: NaN != NaN.
            prop_assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }

        #[test]
        fn truncated_entries_are_errors_not_panics(events in proptest::collection::vec(arb_event(), 1..5), cut in any::<prop::sample::Index>()) {
            let bytes = encode_entry(&LogEntry { pre_tick: None, events, post_tick: 0 }).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode_entry(&bytes[..cut]).is_err());
        }
    }

    /// A store whose ingest log holds `n` empty entries (positions 1..=n).
    fn log_with(n: u64) -> (tempfile::TempDir, Store, IngestLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let mut log = IngestLog::open(&store).unwrap();
        let e = LogEntry {
            pre_tick: None,
            events: vec![],
            post_tick: 5,
        };
        for _ in 0..n {
            log.append(&e).unwrap();
        }
        (dir, store, log)
    }

    #[test]
    fn positions_continue_after_compaction_and_reopen() {
        let (_dir, store, mut log) = log_with(3);
        assert_eq!(log.compact(3).unwrap(), 3);
        let log = IngestLog::open(&store).unwrap();
        assert_eq!(log.last_pos(), 3, "compacted positions are not reused");
        assert_eq!(log.tail(0).count(), 0);
    }

    #[test]
    fn compaction_in_several_batches_removes_exactly_the_covered_entries() {
        let total = 3 * COMPACT_BATCH as u64 + 7;
        let (_dir, _store, mut log) = log_with(total);
        let through = 2 * COMPACT_BATCH as u64 + 5;
        assert_eq!(log.compact(through).unwrap(), through as usize);
        let left: Vec<u64> = log.tail(0).map(|r| r.unwrap().0).collect();
        assert_eq!(left, (through + 1..=total).collect::<Vec<_>>());
        assert_eq!(log.compacted_through().unwrap(), through);
    }
}
