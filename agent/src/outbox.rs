//! The durable outbox, in the agent's one sled database ([`crate::state::Store`]).
//!
//! Design constraints:
//! - Records are numbered per agent: `seq` strictly increases and is never reused,
//!   also across restarts and crashes: the last assigned `seq` is persisted in the
//!   same transaction as the records, and a record is handed to the uplink only once
//!   it is durable ([`Outbox::peek`] flushes first), so the fleet never holds a `seq`
//!   that a crash could hand out again.
//! - A record is deleted only after the fleet acknowledged it, or when a bound drops
//!   it; every drop is counted (records and bytes, persisted in `meta`, reported in
//!   heartbeats).
//! - Bounded by bytes (`max_bytes`, the sum of the stored frames) and by age
//!   (`max_age`). When an append would exceed `max_bytes`: `drop_oldest` deletes the
//!   oldest records in the same transaction; `block` appends anyway and the ingest
//!   loop stops taking input until acknowledgements make room ([`Outbox::has_room`],
//!   [`Outbox::wait_for_room`]), so it overshoots by at most one batch. Expired
//!   records are dropped in both modes.
//! - The records always form one contiguous `seq` range (appends at the end, acks
//!   and drops from the front), so the length is known from the two ends.
//! - Each append may carry the ingest-log position it was produced from; that cursor
//!   (`outbox.applied_pos`) commits atomically with the records, so replay after a
//!   crash knows which outputs are already here and appends nothing twice.
//! - On disk: tree `outbox`, key = `seq` u64 big-endian, value = a
//!   [`crate::state::frame`] of kind `Outbox` whose body is the CBOR [`Record`].
//!   Cursors and counters are `meta` frames (u64 big-endian).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fieldline_common::codec;
use fieldline_common::wire::{Record, RecordBody};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::state::frame::{self, Kind};
use crate::state::{meta_frame, meta_get, StateError, Store};

pub use crate::state::StoreOptions;
pub use fieldline_common::config::OnFull;

/// Errors of the outbox are those of the state store.
pub type OutboxError = StateError;

pub(crate) const META_ACKED: &str = "outbox.acked_seq";
pub(crate) const META_LAST: &str = "outbox.last_seq";
pub(crate) const META_BYTES: &str = "outbox.bytes";
pub(crate) const META_DROPPED: &str = "outbox.dropped_records";
pub(crate) const META_DROPPED_BYTES: &str = "outbox.dropped_bytes";
pub(crate) const META_APPLIED: &str = "outbox.applied_pos";
/// Every `seq` at or below this was dropped by a bound (or acknowledged).
pub(crate) const META_DROPPED_THROUGH: &str = "outbox.dropped_through";

/// Names of the outbox's `meta` keys, for `state check` / `state repair`.
pub(crate) mod meta_keys {
    pub(crate) use super::{
        META_ACKED as ACKED, META_APPLIED as APPLIED, META_BYTES as BYTES, META_DROPPED as DROPPED,
        META_DROPPED_BYTES as DROPPED_BYTES, META_DROPPED_THROUGH as DROPPED_THROUGH,
        META_LAST as LAST,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
    pub on_full: OnFull,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_bytes: u64::MAX,
            max_age: None,
            on_full: OnFull::DropOldest,
        }
    }
}

struct Inner {
    next_seq: u64,
    /// Oldest stored `seq`; equals `next_seq` when empty.
    first_seq: u64,
    acked_seq: u64,
    bytes: u64,
    dropped: u64,
    dropped_bytes: u64,
    applied_pos: u64,
}

pub struct Outbox {
    store: Store,
    records: sled::Tree,
    meta: sled::Tree,
    bounds: Bounds,
    /// Serialises writers so seqs are assigned and written in order.
    inner: Mutex<Inner>,
    durable_seq: AtomicU64,
    // Mirrors of `inner` for lock-free readers (heartbeats, metrics).
    acked: AtomicU64,
    last: AtomicU64,
    len: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    dropped_bytes: AtomicU64,
    room: tokio::sync::Notify,
}

impl Outbox {
    pub fn open(store: &Store, bounds: Bounds) -> Result<Self, OutboxError> {
        let records = store.tree(Kind::Outbox)?;
        let meta = store.tree(Kind::Meta)?;
        let seq_of = |k: &[u8]| {
            frame::be_u64(k).ok_or_else(|| StateError::corrupt("outbox", k, "key is not a u64"))
        };
        let acked = meta_get(&meta, META_ACKED)?;
        let last_meta = meta_get(&meta, META_LAST)?;
        let newest = match records.last()? {
            Some((k, _)) => seq_of(&k)?,
            None => 0,
        };
        let next = newest.max(last_meta).max(acked) + 1;
        let first = match records.first()? {
            Some((k, _)) => seq_of(&k)?,
            None => next,
        };
        let inner = Inner {
            next_seq: next,
            first_seq: first,
            acked_seq: acked,
            bytes: meta_get(&meta, META_BYTES)?,
            dropped: meta_get(&meta, META_DROPPED)?,
            dropped_bytes: meta_get(&meta, META_DROPPED_BYTES)?,
            applied_pos: meta_get(&meta, META_APPLIED)?,
        };
        let ob = Self {
            store: store.clone(),
            records,
            meta,
            bounds,
            durable_seq: AtomicU64::new(next - 1),
            acked: AtomicU64::new(0),
            last: AtomicU64::new(0),
            len: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            inner: Mutex::new(inner),
        };
        ob.publish(&ob.lock());
        Ok(ob)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, i: &Inner) {
        self.acked.store(i.acked_seq, Ordering::Release);
        self.last.store(i.next_seq - 1, Ordering::Release);
        self.len.store(i.next_seq - i.first_seq, Ordering::Release);
        self.bytes.store(i.bytes, Ordering::Release);
        self.dropped.store(i.dropped, Ordering::Release);
        self.dropped_bytes.store(i.dropped_bytes, Ordering::Release);
    }

    /// Appends bodies atomically (all or none), returning the records written.
    pub fn append(&self, bodies: Vec<RecordBody>, now_ms: i64) -> Result<Vec<Record>, OutboxError> {
        self.append_from(None, bodies, now_ms)
    }

    /// Like [`Outbox::append`], and records that everything produced from ingest-log
    /// entries up to `pos` is now in the outbox (atomically with the records).
    pub fn append_from(
        &self,
        pos: Option<u64>,
        bodies: Vec<RecordBody>,
        now_ms: i64,
    ) -> Result<Vec<Record>, OutboxError> {
        let mut i = self.lock();
        // No outputs: the cursor need not move, since replaying that entry again
        // yields nothing either (and skipping the write saves flash).
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let mut written = Vec::with_capacity(bodies.len());
        let mut inserts = Vec::with_capacity(bodies.len());
        for (n, body) in bodies.into_iter().enumerate() {
            let record = Record {
                seq: i.next_seq + n as u64,
                created_ms: now_ms,
                body,
            };
            inserts.push((record.seq, encode(&record)?));
            written.push(record);
        }
        let new_bytes: u64 = inserts.iter().map(|(_, v)| v.len() as u64).sum();
        let next_after = i.next_seq + inserts.len() as u64;

        // Make room by dropping the oldest records, if so configured.
        let mut removes = Vec::new();
        let mut freed = 0u64;
        let mut skip_new = 0usize;
        if self.bounds.on_full == OnFull::DropOldest {
            let mut s = i.first_seq;
            while i.bytes - freed + new_bytes > self.bounds.max_bytes && s < i.next_seq {
                if let Some(v) = self.records.get(s.to_be_bytes())? {
                    freed += v.len() as u64;
                    removes.push(s);
                }
                s += 1;
            }
            // A batch larger than the whole bound keeps only its newest records.
            let mut kept_new = new_bytes;
            while i.bytes - freed + kept_new > self.bounds.max_bytes && skip_new < inserts.len() {
                kept_new -= inserts[skip_new].1.len() as u64;
                skip_new += 1;
            }
        }
        let dropped_new_bytes: u64 = inserts[..skip_new]
            .iter()
            .map(|(_, v)| v.len() as u64)
            .sum();
        let bytes_after = i.bytes - freed + new_bytes - dropped_new_bytes;
        let dropped_after = i.dropped + (removes.len() + skip_new) as u64;
        let dropped_bytes_after = i.dropped_bytes + freed + dropped_new_bytes;
        let applied_after = pos.map_or(i.applied_pos, |p| p.max(i.applied_pos));
        let mut metas = vec![
            (META_LAST, next_after - 1),
            (META_BYTES, bytes_after),
            (META_APPLIED, applied_after),
        ];
        if dropped_after != i.dropped {
            metas.push((META_DROPPED, dropped_after));
            metas.push((META_DROPPED_BYTES, dropped_bytes_after));
            let through = if skip_new > 0 {
                i.next_seq + skip_new as u64 - 1
            } else {
                removes.last().copied().unwrap_or(0)
            };
            metas.push((META_DROPPED_THROUGH, through));
        }
        self.commit(&inserts[skip_new..], &removes, &metas)?;

        if !removes.is_empty() || skip_new > 0 {
            tracing::warn!(
                dropped = removes.len() + skip_new,
                bytes = freed + dropped_new_bytes,
                max_bytes = self.bounds.max_bytes,
                "outbox full: oldest records dropped (outbox.on_full = drop_oldest)"
            );
        }
        let kept_new = (inserts.len() - skip_new) as u64;
        let old_left = (i.next_seq - i.first_seq).saturating_sub(removes.len() as u64);
        i.first_seq = if old_left == 0 {
            next_after - kept_new
        } else {
            removes.last().map_or(i.first_seq, |s| s + 1)
        };
        i.next_seq = next_after;
        i.bytes = bytes_after;
        i.dropped = dropped_after;
        i.dropped_bytes = dropped_bytes_after;
        i.applied_pos = applied_after;
        self.publish(&i);
        if skip_new > 0 {
            written.drain(..skip_new);
        }
        Ok(written)
    }

    /// Applies inserts, removals and cursor updates in one sled transaction.
    fn commit(
        &self,
        inserts: &[(u64, Vec<u8>)],
        removes: &[u64],
        metas: &[(&str, u64)],
    ) -> Result<(), OutboxError> {
        let mut batch = sled::Batch::default();
        for s in removes {
            batch.remove(&s.to_be_bytes());
        }
        for (s, v) in inserts {
            batch.insert(&s.to_be_bytes(), v.as_slice());
        }
        let metas: Vec<(&str, Vec<u8>)> =
            metas.iter().map(|(k, v)| (*k, meta_frame(k, *v))).collect();
        (&self.records, &self.meta)
            .transaction(|(r, m)| {
                r.apply_batch(&batch)?;
                for (k, v) in &metas {
                    m.insert(*k, v.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StateError::Store(e),
                TransactionError::Abort(()) => {
                    StateError::Encode("outbox transaction aborted".into())
                }
            })
    }

    /// Up to `max` unacknowledged records, oldest first. They are flushed to disk
    /// before they are returned: only durable records may leave the agent.
    pub fn peek(&self, max: usize) -> Result<Vec<Record>, OutboxError> {
        let records: Vec<Record> = self
            .records
            .iter()
            .take(max)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        if let Some(last) = records.last() {
            if last.seq > self.durable_seq.load(Ordering::Acquire) {
                let covered = self.last_seq();
                self.store.flush()?;
                self.durable_seq.fetch_max(covered, Ordering::AcqRel);
            }
        }
        Ok(records)
    }

    /// Deletes every record with `seq <= through`. Safe to repeat.
    pub fn ack(&self, through: u64) -> Result<(), OutboxError> {
        let mut i = self.lock();
        if through <= i.acked_seq {
            return Ok(());
        }
        let mut removes = Vec::new();
        let mut freed = 0u64;
        for kv in self.records.range(..=through.to_be_bytes()) {
            let (k, v) = kv?;
            freed += v.len() as u64;
            removes.push(frame::be_u64(&k).unwrap_or(0));
        }
        let bytes_after = i.bytes.saturating_sub(freed);
        self.commit(
            &[],
            &removes,
            &[(META_ACKED, through), (META_BYTES, bytes_after)],
        )?;
        i.acked_seq = through;
        i.bytes = bytes_after;
        i.first_seq = i.first_seq.max((through + 1).min(i.next_seq));
        self.publish(&i);
        drop(i);
        self.room.notify_waiters();
        Ok(())
    }

    /// Drops records older than `max_age`; returns how many.
    pub fn expire(&self, now_ms: i64) -> Result<u64, OutboxError> {
        let Some(max_age) = self.bounds.max_age else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let mut i = self.lock();
        let mut removes = Vec::new();
        let mut freed = 0u64;
        for kv in self.records.iter().take(10_000) {
            let (k, v) = kv?;
            if decode(&k, &v)?.created_ms >= cutoff {
                break;
            }
            freed += v.len() as u64;
            removes.push(frame::be_u64(&k).unwrap_or(0));
        }
        let Some(&last_removed) = removes.last() else {
            return Ok(0);
        };
        let n = removes.len() as u64;
        let bytes_after = i.bytes.saturating_sub(freed);
        self.commit(
            &[],
            &removes,
            &[
                (META_BYTES, bytes_after),
                (META_DROPPED, i.dropped + n),
                (META_DROPPED_BYTES, i.dropped_bytes + freed),
                (META_DROPPED_THROUGH, last_removed),
            ],
        )?;
        tracing::warn!(dropped = n, max_age = ?max_age, "outbox records older than outbox.max_age dropped");
        i.bytes = bytes_after;
        i.dropped += n;
        i.dropped_bytes += freed;
        i.first_seq = last_removed + 1;
        self.publish(&i);
        drop(i);
        self.room.notify_waiters();
        Ok(n)
    }

    /// False when `on_full = block` and the byte bound is reached: take no more input.
    pub fn has_room(&self) -> bool {
        self.bounds.on_full == OnFull::DropOldest || self.bytes() < self.bounds.max_bytes
    }

    /// Resolves when an acknowledgement or expiry freed space (or after `max_wait`).
    pub async fn wait_for_room(&self, max_wait: Duration) {
        let notified = self.room.notified();
        if self.has_room() {
            return;
        }
        let _ = tokio::time::timeout(max_wait, notified).await;
    }

    /// Makes sure future records get a `seq` above `floor`: used when the fleet holds
    /// a higher `seq` for this agent than the local store (e.g. the store was wiped),
    /// since the fleet would drop lower ones as duplicates.
    pub fn raise_seq_floor(&self, floor: u64) -> bool {
        let mut i = self.lock();
        if i.next_seq > floor {
            return false;
        }
        if let Err(e) = self.commit(&[], &[], &[(META_LAST, floor)]) {
            tracing::error!(error = %e, "cannot persist the raised seq floor");
            return false;
        }
        let was_empty = i.first_seq == i.next_seq;
        i.next_seq = floor + 1;
        if was_empty {
            i.first_seq = i.next_seq;
        }
        self.publish(&i);
        true
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The highest `seq` assigned so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Bytes of the stored records (frames), what `max_bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Records dropped by a bound since the store was created.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Acquire)
    }

    /// The newest ingest-log position whose outputs are all in the outbox.
    pub fn applied_pos(&self) -> u64 {
        self.lock().applied_pos
    }

    /// Writes everything to disk; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, OutboxError> {
        let covered = self.last_seq();
        let n = self.store.flush()?;
        self.durable_seq.fetch_max(covered, Ordering::AcqRel);
        Ok(n)
    }
}

pub(crate) fn encode(record: &Record) -> Result<Vec<u8>, OutboxError> {
    let body = codec::to_cbor(record).map_err(|e| StateError::Encode(e.to_string()))?;
    Ok(frame::encode(
        Kind::Outbox,
        &record.seq.to_be_bytes(),
        &body,
    ))
}

/// Decodes and verifies one stored record.
pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Record, OutboxError> {
    let body = frame::decode_stored(Kind::Outbox, key, bytes)
        .map_err(|e| StateError::corrupt("outbox", key, e))?;
    let record: Record = codec::from_cbor(body, codec::MAX_MESSAGE_BYTES)
        .map_err(|e| StateError::corrupt("outbox", key, e))?;
    if Some(record.seq) != frame::be_u64(key) {
        return Err(StateError::corrupt(
            "outbox",
            key,
            format!("record says seq {}", record.seq),
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_common::wire::DeadLetter;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::path::Path;

    fn no_flusher() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 1 << 20,
            flush_every: None,
        }
    }

    /// Same size for every `n < 256`, so byte bounds are easy to reason about.
    fn body(n: u64) -> RecordBody {
        RecordBody::DeadLetter(DeadLetter {
            topic: "t".into(),
            payload: vec![n as u8; 16],
            reason: "test".into(),
            received_ms: 0,
        })
    }

    /// Seqs from here on encode to the same CBOR length (3 bytes up to 65535).
    const BASE: u64 = 1000;

    fn size_of(seq: u64) -> u64 {
        encode(&Record {
            seq,
            created_ms: 0,
            body: body(0),
        })
        .unwrap()
        .len() as u64
    }

    /// sled's background threads hold the file lock for a moment after the last
    /// handle is dropped, so an immediate in-process reopen may need a retry.
    fn open_retry(dir: &Path, bounds: &Bounds) -> Outbox {
        let mut tries = 0;
        loop {
            match Store::open(dir, &no_flusher()).and_then(|s| Outbox::open(&s, bounds.clone())) {
                Ok(o) => return o,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        }
    }

    /// What a SIGKILL leaves behind: the files as they are right now, without the
    /// flush a clean shutdown would do. Copying them is the crash.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Ack(u8),
        /// The uplink takes a batch (this flushes: only durable records leave).
        Send(u8),
        Flush,
        /// Clean stop: flush and reopen.
        Reopen,
        /// kill -9: reopen from the files as they are, nothing flushed.
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..6).prop_map(Op::Append),
            2 => any::<u8>().prop_map(Op::Ack),
            1 => (1u8..8).prop_map(Op::Send),
            1 => Just(Op::Flush),
            1 => Just(Op::Reopen),
            2 => Just(Op::Crash),
        ]
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Model {
        records: VecDeque<u64>,
        next: u64,
        acked: u64,
        dropped: u64,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.records.iter().map(|s| size_of(*s)).sum()
        }
    }

    fn observe(o: &Outbox) -> Model {
        Model {
            records: o.peek_unflushed().into_iter().map(|r| r.seq).collect(),
            next: o.last_seq() + 1,
            acked: o.acked_seq(),
            dropped: o.dropped(),
        }
    }

    impl Outbox {
        fn peek_unflushed(&self) -> Vec<Record> {
            self.records
                .iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    decode(&k, &v).unwrap()
                })
                .collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Model test: the real outbox and a VecDeque agree through appends, acks,
        /// sends, clean restarts and crashes. After a crash the outbox is in a state
        /// the model passed through since the last durable point, and no `seq` that
        /// ever left the agent is handed out again.
        #[test]
        fn agrees_with_model(ops in proptest::collection::vec(op(), 1..40), bound in prop::option::of(3u64..12)) {
            let root = tempfile::tempdir().unwrap();
            let bounds = Bounds {
                max_bytes: bound.map_or(u64::MAX, |n| n * size_of(BASE)),
                max_age: None,
                on_full: OnFull::DropOldest,
            };
            let mut dir = root.path().join("gen0");
            let mut generation = 0;
            let mut ob = Some(open_retry(&dir, &bounds));
            let mut model = Model { records: VecDeque::new(), next: 1, acked: 0, dropped: 0 };
            // Model states since the last point where everything was durable.
            let mut since_durable = vec![model.clone()];
            let mut max_sent = 0u64;
            // Highest seq known durable: `peek` flushes only past it.
            let mut durable = 0u64;
            for op in ops {
                let o = ob.as_ref().unwrap();
                match op {
                    Op::Append(n) => {
                        let recs = o.append((0..n as u64).map(body).collect(), 0).unwrap();
                        for s in model.next..model.next + n as u64 {
                            model.records.push_back(s);
                        }
                        model.next += n as u64;
                        while model.bytes() > bounds.max_bytes {
                            model.records.pop_front();
                            model.dropped += 1;
                        }
                        prop_assert!(recs.iter().all(|r| r.seq > max_sent), "seq reused");
                        since_durable.push(model.clone());
                    }
                    Op::Ack(k) => {
                        let through = model.records.get(k as usize % (model.records.len() + 1)).copied().unwrap_or(model.next - 1);
                        o.ack(through).unwrap();
                        if through > model.acked {
                            model.acked = through;
                            model.records.retain(|s| *s > through);
                        }
                        since_durable.push(model.clone());
                    }
                    Op::Send(n) => {
                        let batch = o.peek(n as usize).unwrap();
                        let want: Vec<u64> = model.records.iter().take(n as usize).copied().collect();
                        prop_assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
                        if let Some(r) = batch.last() {
                            max_sent = max_sent.max(r.seq);
                            if r.seq > durable {
                                durable = model.next - 1;
                                since_durable = vec![model.clone()];
                            }
                        }
                    }
                    Op::Flush => {
                        o.flush().unwrap();
                        durable = model.next - 1;
                        since_durable = vec![model.clone()];
                    }
                    Op::Reopen => {
                        o.flush().unwrap();
                        drop(ob.take());
                        ob = Some(open_retry(&dir, &bounds));
                        durable = model.next - 1;
                        since_durable = vec![model.clone()];
                    }
                    Op::Crash => {
                        generation += 1;
                        let crashed = root.path().join(format!("gen{generation}"));
                        copy_dir(&dir, &crashed);
                        drop(ob.take());
                        dir = crashed;
                        let o = open_retry(&dir, &bounds);
                        let got = observe(&o);
                        prop_assert!(since_durable.contains(&got),
                            "after a crash the outbox is {:?}, not a state since the last durable point {:?}", got, since_durable);
                        prop_assert!(got.next > max_sent, "a sent seq would be reused");
                        model = got;
                        durable = model.next - 1;
                        since_durable = vec![model.clone()];
                        ob = Some(o);
                    }
                }
                let o = ob.as_ref().unwrap();
                prop_assert_eq!(&observe(o), &model);
                prop_assert_eq!(o.len(), model.records.len() as u64);
                prop_assert_eq!(o.bytes(), model.bytes());
            }
        }
    }

    #[test]
    fn full_outbox_counts_every_drop_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &no_flusher()).unwrap();
        let size = size_of(BASE);
        let bounds = Bounds {
            max_bytes: 10 * size,
            max_age: None,
            on_full: OnFull::DropOldest,
        };
        let o = Outbox::open(&store, bounds.clone()).unwrap();
        o.raise_seq_floor(BASE - 1);
        for _ in 0..7 {
            o.append((0..3).map(body).collect(), 0).unwrap();
        }
        // 21 appended, 10 fit.
        assert_eq!(
            (o.len(), o.dropped(), o.dropped_bytes()),
            (10, 11, 11 * size)
        );
        assert_eq!(o.bytes(), 10 * size);
        assert_eq!(o.peek(100).unwrap().first().map(|r| r.seq), Some(BASE + 11));
        // A batch larger than the bound keeps only its newest records.
        o.append((0..15).map(body).collect(), 0).unwrap();
        assert_eq!((o.len(), o.dropped()), (10, 26));
        assert_eq!(o.peek(1).unwrap()[0].seq, BASE + 26);
        // The counters survive a restart.
        drop(o);
        let o = Outbox::open(&store, bounds).unwrap();
        assert_eq!((o.len(), o.dropped(), o.last_seq()), (10, 26, BASE + 35));
    }

    #[test]
    fn block_mode_keeps_everything_and_reports_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &no_flusher()).unwrap();
        let o = Outbox::open(
            &store,
            Bounds {
                max_bytes: 4 * size_of(BASE),
                max_age: None,
                on_full: OnFull::Block,
            },
        )
        .unwrap();
        o.raise_seq_floor(BASE - 1);
        o.append((0..6).map(body).collect(), 0).unwrap();
        assert_eq!((o.len(), o.dropped()), (6, 0));
        assert!(!o.has_room());
        o.ack(BASE + 2).unwrap();
        assert!(o.has_room());
    }

    #[test]
    fn records_older_than_max_age_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &no_flusher()).unwrap();
        let o = Outbox::open(
            &store,
            Bounds {
                max_bytes: u64::MAX,
                max_age: Some(Duration::from_secs(60)),
                on_full: OnFull::Block,
            },
        )
        .unwrap();
        o.append(vec![body(1), body(2)], 1_000).unwrap();
        o.append(vec![body(3)], 50_000).unwrap();
        assert_eq!(o.expire(61_000).unwrap(), 0, "exactly max_age old is kept");
        assert_eq!(o.expire(61_001).unwrap(), 2);
        assert_eq!((o.len(), o.dropped()), (1, 2));
        assert_eq!(o.peek(10).unwrap()[0].seq, 3);
    }

    #[test]
    fn seq_floor_skips_ahead_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &no_flusher()).unwrap();
        let o = Outbox::open(&store, Bounds::default()).unwrap();
        assert!(o.raise_seq_floor(41));
        let r = o.append(vec![body(1)], 0).unwrap();
        assert_eq!(r[0].seq, 42);
        assert!(!o.raise_seq_floor(10));
        o.ack(42).unwrap();
        drop(o);
        let o = Outbox::open(&store, Bounds::default()).unwrap();
        assert_eq!(
            o.append(vec![body(1)], 0).unwrap()[0].seq,
            43,
            "acked-away seqs are not reused"
        );
    }

    #[test]
    fn corrupt_record_is_reported() {
        let mut bytes = encode(&Record {
            seq: 3,
            created_ms: 0,
            body: body(3),
        })
        .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            decode(&3u64.to_be_bytes(), &bytes),
            Err(StateError::Corrupt { .. })
        ));
        let good = encode(&Record {
            seq: 3,
            created_ms: 0,
            body: body(3),
        })
        .unwrap();
        assert!(
            decode(&4u64.to_be_bytes(), &good).is_err(),
            "a record under the wrong key is corrupt"
        );
        assert!(decode(&3u64.to_be_bytes(), &[1, 2]).is_err());
    }
}
