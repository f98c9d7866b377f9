//! The durable outbox. **Boundary**: the only module that touches sled.
//!
//! Design constraints:
//! - Records are numbered per agent: `seq` strictly increases and is never reused,
//!   also across restarts (the next `seq` is derived from the newest record and the
//!   persisted acknowledged `seq`, whichever is higher).
//! - A record is deleted only after the fleet acknowledged it.
//! - On-disk layout, explicit byte order: key = `seq` as u64 big-endian (so sled's
//!   ordering is `seq` order); value = format version (u8 = 1), CRC-32 of the body
//!   (u32 big-endian), body (CBOR of [`Record`]). A record whose checksum does not
//!   match is reported as corrupt, never returned as data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fieldline_common::codec::{self, CodecError};
use fieldline_common::wire::{Record, RecordBody};

const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 5;
const META_ACKED: &[u8] = b"acked_seq";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("state store: {0}")]
    Store(#[from] sled::Error),
    #[error("outbox record {seq} is corrupt: {why}")]
    Corrupt { seq: u64, why: String },
    #[error("outbox record: {0}")]
    Codec(#[from] CodecError),
}

pub struct StoreOptions {
    pub cache_capacity_bytes: u64,
    pub flush_every_ms: u64,
}

pub struct Outbox {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    /// Serialises appends so seqs are assigned and written in order.
    next_seq: Mutex<u64>,
    acked_seq: AtomicU64,
    len: AtomicU64,
}

impl Outbox {
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Self, OutboxError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(Some(opts.flush_every_ms.max(1)))
            .open()?;
        let records = db.open_tree("outbox")?;
        let meta = db.open_tree("meta")?;
        let acked = meta.get(META_ACKED)?.map(|v| be_u64(&v)).unwrap_or(0);
        let newest = records.last()?.map(|(k, _)| be_u64(&k)).unwrap_or(0);
        let len = records.len() as u64;
        Ok(Self {
            db,
            records,
            meta,
            next_seq: Mutex::new(newest.max(acked) + 1),
            acked_seq: AtomicU64::new(acked),
            len: AtomicU64::new(len),
        })
    }

    /// Appends bodies atomically (all or none), returning the records written.
    pub fn append(&self, bodies: Vec<RecordBody>, now_ms: i64) -> Result<Vec<Record>, OutboxError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut written = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let record = Record {
                seq: *next + i as u64,
                created_ms: now_ms,
                body,
            };
            batch.insert(&record.seq.to_be_bytes(), encode(&record)?);
            written.push(record);
        }
        self.records.apply_batch(batch)?;
        *next += written.len() as u64;
        self.len.fetch_add(written.len() as u64, Ordering::Relaxed);
        Ok(written)
    }

    /// Up to `max` unacknowledged records, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<Record>, OutboxError> {
        self.records
            .iter()
            .take(max)
            .map(|kv| {
                let (k, v) = kv?;
                decode(be_u64(&k), &v)
            })
            .collect()
    }

    /// Deletes every record with `seq <= through`. Safe to repeat.
    pub fn ack(&self, through: u64) -> Result<(), OutboxError> {
        if through <= self.acked_seq.load(Ordering::Acquire) {
            return Ok(());
        }
        // Persist the cursor first: if we crash between the two steps, the records
        // are resent and the fleet drops them as duplicates.
        self.meta.insert(META_ACKED, &through.to_be_bytes())?;
        self.acked_seq.store(through, Ordering::Release);
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.records.range(..=through.to_be_bytes()).keys() {
            batch.remove(key?);
            removed += 1;
        }
        self.records.apply_batch(batch)?;
        self.len.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure future records get a `seq` above `floor`: used when the fleet holds
    /// a higher `seq` for this agent than the local store (e.g. the store was wiped),
    /// since the fleet would drop lower ones as duplicates.
    pub fn raise_seq_floor(&self, floor: u64) -> bool {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        if *next <= floor {
            *next = floor + 1;
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq.load(Ordering::Acquire)
    }

    /// The highest `seq` assigned so far (0 when none).
    pub fn last_seq(&self) -> u64 {
        *self.next_seq.lock().unwrap_or_else(|p| p.into_inner()) - 1
    }

    /// Writes everything to disk; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, OutboxError> {
        Ok(self.db.flush()?)
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

fn encode(record: &Record) -> Result<Vec<u8>, OutboxError> {
    let body = codec::to_cbor(record)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode(seq: u64, bytes: &[u8]) -> Result<Record, OutboxError> {
    let corrupt = |why: String| OutboxError::Corrupt { seq, why };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(corrupt(format!("unknown format version {}", bytes[0])));
    }
    let want = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != want {
        return Err(corrupt("checksum mismatch".into()));
    }
    let record: Record = codec::from_cbor(body, codec::MAX_MESSAGE_BYTES)?;
    if record.seq != seq {
        return Err(corrupt(format!(
            "key says seq {seq}, record says {}",
            record.seq
        )));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_common::wire::DeadLetter;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 1 << 20,
            flush_every_ms: 1000,
        }
    }

    fn body(n: u64) -> RecordBody {
        RecordBody::DeadLetter(DeadLetter {
            topic: format!("t/{n}"),
            payload: vec![n as u8],
            reason: "test".into(),
            received_ms: n as i64,
        })
    }

    /// sled's background flusher holds the file lock for a moment after the last
    /// handle is dropped, so an immediate in-process reopen may need a retry.
    fn reopen(dir: &Path) -> Outbox {
        let mut tries = 0;
        loop {
            match Outbox::open(dir, &opts()) {
                Ok(o) => return o,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Ack(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..5).prop_map(Op::Append),
            any::<u8>().prop_map(Op::Ack),
            Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Model test: the real outbox and a VecDeque agree through appends, acks and
        /// reopen (a clean restart; crash consistency is covered by the process tests).
        #[test]
        fn agrees_with_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut ob = Some(Outbox::open(dir.path(), &opts()).unwrap());
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 1u64;
            let mut issued_max = 0u64;
            for op in ops {
                let o = ob.as_ref().unwrap();
                match op {
                    Op::Append(n) => {
                        let recs = o.append((0..n as u64).map(body).collect(), 0).unwrap();
                        for r in recs {
                            prop_assert_eq!(r.seq, next);
                            prop_assert!(r.seq > issued_max, "seq reused");
                            issued_max = r.seq;
                            model.push_back(next);
                            next += 1;
                        }
                    }
                    Op::Ack(k) => {
                        let through = model.get(k as usize % (model.len() + 1)).copied().unwrap_or(next - 1);
                        o.ack(through).unwrap();
                        while model.front().is_some_and(|s| *s <= through) {
                            model.pop_front();
                        }
                    }
                    Op::Reopen => {
                        o.flush().unwrap();
                        drop(ob.take());
                        ob = Some(reopen(dir.path()));
                    }
                }
                let o = ob.as_ref().unwrap();
                let seqs: Vec<u64> = o.peek(usize::MAX).unwrap().iter().map(|r| r.seq).collect();
                prop_assert_eq!(&seqs, &model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(o.len(), model.len() as u64);
            }
        }
    }

    #[test]
    fn seq_floor_skips_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), &opts()).unwrap();
        assert!(o.raise_seq_floor(41));
        let r = o.append(vec![body(1)], 0).unwrap();
        assert_eq!(r[0].seq, 42);
        assert!(!o.raise_seq_floor(10));
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
            decode(3, &bytes),
            Err(OutboxError::Corrupt { seq: 3, .. })
        ));
        assert!(matches!(
            decode(3, &[1, 2]),
            Err(OutboxError::Corrupt { .. })
        ));
    }
}
