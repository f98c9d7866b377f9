//! The embedded store: one sled database, for a single fleet server without Redis.
//! **Boundary**: the only module that imports sled.
//!
//! Design constraints:
//! - trees `agents` (id → JSON [`AgentRec`]), `records` and `dlq` (big-endian u64
//!   entry id → CBOR fields); entry ids come from sled's monotonic id generator, so
//!   key order is insertion order;
//! - tree `global`: the global state the Redis workers maintain, here updated inside
//!   the ingest transaction (single node, so no consumer groups are needed): `l/`
//!   latest value per series, `a/` highest anomaly score per series, `d/` devices,
//!   `c/` per-agent counters; distinct counts are exact;
//! - tree `docs`: fleet settings (`d/<key>` documents, `n/<name>` big-endian counters);
//! - ingest is one transaction over all four trees: the high-water mark moves with
//!   the writes or not at all, and concurrent batches of one agent serialize through
//!   sled's conflict detection;
//! - an ingest is acknowledged only after `flush_async`, because the agent deletes
//!   what the fleet acknowledged;
//! - retention: each stream keeps about `maxlen` entries; the oldest go first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use fieldline_common::codec;
use fieldline_common::wire::Heartbeat;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use super::{
    update_of, AgentInfo, Credential, EnrollOutcome, Entry, GlobalSummary, IngestOutcome,
    LatestValue, Store, StoreError, StreamEntry, StreamStats, Update,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AgentRec {
    hwm: u64,
    version: String,
    last_seen_ms: i64,
    started_ms: i64,
    last_ingest_ms: i64,
    counters: serde_json::Value,
    labels: BTreeMap<String, String>,
    enrolled_ms: i64,
    revoked: bool,
    cred: Option<String>,
}

impl AgentRec {
    fn info(&self, id: &str) -> AgentInfo {
        AgentInfo {
            id: id.to_string(),
            version: self.version.clone(),
            last_seen_ms: self.last_seen_ms,
            started_ms: self.started_ms,
            last_ingest_ms: self.last_ingest_ms,
            last_acked_seq: self.hwm,
            counters: self.counters.clone(),
            labels: self.labels.clone(),
            enrolled_ms: self.enrolled_ms,
            revoked: self.revoked,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    fields: Vec<(String, serde_bytes::ByteBuf)>,
}

struct Inner {
    db: sled::Db,
    agents: sled::Tree,
    records: sled::Tree,
    dlq: sled::Tree,
    global: sled::Tree,
    docs: sled::Tree,
    records_len: AtomicU64,
    dlq_len: AtomicU64,
    maxlen: u64,
    path: String,
}

#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

type TxError = ConflictableTransactionError<String>;

impl SledStore {
    pub fn open(path: &Path, maxlen: u64) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let err = |e: sled::Error| StoreError::Embedded {
            path: p.clone(),
            why: e.to_string(),
        };
        let db = sled::Config::new()
            .path(path)
            // sled's 1 GiB default cache is far more than a single-node fleet needs.
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(err)?;
        let agents = db.open_tree("agents").map_err(err)?;
        let records = db.open_tree("records").map_err(err)?;
        let dlq = db.open_tree("dlq").map_err(err)?;
        let global = db.open_tree("global").map_err(err)?;
        let docs = db.open_tree("docs").map_err(err)?;
        let inner = Inner {
            records_len: AtomicU64::new(records.len() as u64),
            dlq_len: AtomicU64::new(dlq.len() as u64),
            db,
            agents,
            records,
            dlq,
            global,
            docs,
            maxlen: maxlen.max(1),
            path: p,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded {
            path: self.inner.path.clone(),
            why: e.to_string(),
        }
    }

    fn rec(&self, id: &str) -> Result<Option<AgentRec>, StoreError> {
        match self.inner.agents.get(id).map_err(|e| self.err(e))? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("agent {id}: {e}"))),
            None => Ok(None),
        }
    }

    /// Read-modify-write of one agent record; `f` returns false to leave it alone.
    /// Returns the record as written, or None when the agent is unknown and
    /// `create` is false.
    fn update<T>(
        &self,
        id: &str,
        create: bool,
        f: impl Fn(&mut AgentRec) -> T,
    ) -> Result<Option<T>, StoreError> {
        let result = self.inner.agents.transaction(|tx| {
            let mut rec = match tx.get(id)? {
                Some(b) => serde_json::from_slice::<AgentRec>(&b)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?,
                None if create => AgentRec::default(),
                None => return Ok(None),
            };
            let out = f(&mut rec);
            let bytes = serde_json::to_vec(&rec)
                .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
            tx.insert(id.as_bytes(), bytes)?;
            Ok(Some(out))
        });
        result.map_err(|e: TransactionError<String>| self.err(e))
    }

    fn trim(&self, tree: &sled::Tree, len: &AtomicU64) -> Result<(), StoreError> {
        let max = self.inner.maxlen;
        // Trim in steps of 10% so the cost is amortized, like MAXLEN ~.
        if len.load(Ordering::Relaxed) <= max + max / 10 {
            return Ok(());
        }
        let mut removed = 0u64;
        while len.load(Ordering::Relaxed) > max {
            match tree.pop_min().map_err(|e| self.err(e))? {
                Some(_) => {
                    len.fetch_sub(1, Ordering::Relaxed);
                    removed += 1;
                }
                None => break,
            }
        }
        tracing::debug!(removed, "trimmed embedded stream");
        Ok(())
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<StreamEntry, StoreError> {
        let id = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("stream key is not 8 bytes".into()))?;
        let stored: StoredEntry = codec::from_cbor(value, codec::MAX_MESSAGE_BYTES)
            .map_err(|e| StoreError::Corrupt(format!("entry {id}: {e}")))?;
        Ok(StreamEntry {
            id: id.to_string(),
            fields: stored
                .fields
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect(),
        })
    }

    fn parse_id(id: &str) -> Option<[u8; 8]> {
        id.parse::<u64>().ok().map(u64::to_be_bytes)
    }
}

fn abort(e: impl std::fmt::Display) -> TxError {
    ConflictableTransactionError::Abort(e.to_string())
}

/// What the Redis workers do per record, inside the caller's transaction.
fn apply_global(global: &TransactionalTree, u: &Update) -> Result<(), TxError> {
    let lkey = format!("l/{}", u.series);
    let newer = match global.get(lkey.as_bytes())? {
        Some(cur) => serde_json::from_slice::<LatestValue>(&cur)
            .map(|c| u.ts_ms >= c.ts_ms)
            .unwrap_or(true),
        None => true,
    };
    if newer {
        let v = LatestValue {
            series: u.series.clone(),
            agent: u.agent.clone(),
            kind: u.kind.clone(),
            value: u.value,
            ts_ms: u.ts_ms,
        };
        global.insert(lkey.as_bytes(), serde_json::to_vec(&v).map_err(abort)?)?;
    }
    if let Some(score) = u.score {
        let akey = format!("a/{}", u.series);
        let cur = global
            .get(akey.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map(f64::from_be_bytes);
        if cur.is_none_or(|c| score > c) {
            global.insert(akey.as_bytes(), &score.to_be_bytes())?;
        }
    }
    global.insert(format!("d/{}", u.device).as_bytes(), &[])?;
    let ckey = format!("c/{}:{}", u.agent, u.kind);
    let n = global
        .get(ckey.as_bytes())?
        .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    global.insert(ckey.as_bytes(), &(n + 1).to_be_bytes())?;
    Ok(())
}

/// Applies a record to the global state, or files it in the DLQ with the reason
/// (as a Redis worker does once its retries are spent: they could not succeed here).
fn apply_or_dead_letter(
    global: &TransactionalTree,
    dlq: &TransactionalTree,
    id_source: &TransactionalTree,
    fields: &[(String, Vec<u8>)],
    source_id: String,
) -> Result<bool, TxError> {
    let map: HashMap<String, Vec<u8>> = fields.iter().cloned().collect();
    match update_of(&map) {
        Ok(u) => {
            apply_global(global, &u)?;
            Ok(true)
        }
        Err(reason) => {
            let mut dead: Vec<(String, Vec<u8>)> = fields
                .iter()
                .filter(|(k, _)| k != "reason" && k != "attempts" && k != "source_id")
                .cloned()
                .collect();
            dead.push(("reason".into(), format!("worker: {reason}").into_bytes()));
            dead.push(("attempts".into(), b"1".to_vec()));
            dead.push(("source_id".into(), source_id.into_bytes()));
            dlq.insert(&id_source.generate_id()?.to_be_bytes(), encode(dead)?)?;
            Ok(false)
        }
    }
}

fn encode(fields: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, TxError> {
    codec::to_cbor(&StoredEntry {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k, serde_bytes::ByteBuf::from(v)))
            .collect(),
    })
    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))
}

#[async_trait]
impl Store for SledStore {
    fn describe(&self) -> String {
        format!("embedded sled store at {}", self.inner.path)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The database is in-process; a failed flush is the one thing that can be wrong.
        self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn ingest(
        &self,
        agent: &str,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, StoreError> {
        let inner = &self.inner;
        let result = (&inner.agents, &inner.records, &inner.dlq, &inner.global).transaction(
            |(agents, records, dlq, global)| {
                let mut rec = match agents.get(agent)? {
                    Some(b) => serde_json::from_slice::<AgentRec>(&b)
                        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?,
                    None => AgentRec::default(),
                };
                let mut out = IngestOutcome::default();
                for e in entries {
                    if e.seq <= rec.hwm {
                        out.duplicates += 1;
                        continue;
                    }
                    let mut fields = vec![
                        ("agent".to_string(), agent.as_bytes().to_vec()),
                        ("seq".to_string(), e.seq.to_string().into_bytes()),
                    ];
                    fields.extend(e.all_fields().map(|(k, v)| (k.to_string(), v.to_vec())));
                    let id = agents.generate_id()?;
                    if e.dead {
                        dlq.insert(&id.to_be_bytes(), encode(fields)?)?;
                        out.dead_letters += 1;
                    } else {
                        apply_or_dead_letter(global, dlq, agents, &fields, id.to_string())?;
                        records.insert(&id.to_be_bytes(), encode(fields)?)?;
                        out.added += 1;
                    }
                    rec.hwm = e.seq;
                }
                rec.last_ingest_ms = now_ms;
                out.hwm = rec.hwm;
                let bytes = serde_json::to_vec(&rec)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                agents.insert(agent.as_bytes(), bytes)?;
                Ok(out)
            },
        );
        let out = result.map_err(|e: TransactionError<String>| self.err(e))?;
        // Acknowledged means durable: the agent deletes what we acknowledge.
        inner.db.flush_async().await.map_err(|e| self.err(e))?;
        inner
            .records_len
            .fetch_add(u64::from(out.added), Ordering::Relaxed);
        inner
            .dlq_len
            .fetch_add(u64::from(out.dead_letters), Ordering::Relaxed);
        self.trim(&inner.records, &inner.records_len)?;
        self.trim(&inner.dlq, &inner.dlq_len)?;
        Ok(out)
    }

    async fn heartbeat(&self, hb: &Heartbeat, now_ms: i64) -> Result<u64, StoreError> {
        let counters = serde_json::to_value(&hb.counters).unwrap_or_default();
        let hwm = self.update(&hb.agent_id, true, |rec| {
            rec.version = hb.version.clone();
            rec.last_seen_ms = now_ms;
            rec.started_ms = hb.started_ms;
            rec.counters = counters.clone();
            rec.hwm
        })?;
        Ok(hwm.unwrap_or(0))
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.agents.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let rec: AgentRec = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("agent {id}: {e}")))?;
            out.push(rec.info(&id));
        }
        Ok(out)
    }

    async fn agent(&self, id: &str) -> Result<Option<AgentInfo>, StoreError> {
        Ok(self.rec(id)?.map(|r| r.info(id)))
    }

    async fn enroll(
        &self,
        id: &str,
        credential_hash: &str,
        now_ms: i64,
    ) -> Result<EnrollOutcome, StoreError> {
        let outcome = self.update(id, true, |rec| {
            if rec.revoked {
                EnrollOutcome::Revoked
            } else if rec.cred.is_some() {
                EnrollOutcome::AlreadyEnrolled
            } else {
                rec.cred = Some(credential_hash.to_string());
                rec.enrolled_ms = now_ms;
                EnrollOutcome::Enrolled
            }
        })?;
        self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        Ok(outcome.unwrap_or(EnrollOutcome::Enrolled))
    }

    async fn credential(&self, id: &str) -> Result<Option<Credential>, StoreError> {
        Ok(self.rec(id)?.and_then(|r| match r.cred {
            Some(hash) => Some(Credential {
                hash,
                revoked: r.revoked,
            }),
            None if r.revoked => Some(Credential {
                hash: String::new(),
                revoked: true,
            }),
            None => None,
        }))
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let done = self.update(id, false, |rec| {
            rec.revoked = true;
            rec.cred = None;
        })?;
        self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        Ok(done.is_some())
    }

    async fn allow_reenroll(&self, id: &str) -> Result<bool, StoreError> {
        let done = self.update(id, false, |rec| rec.revoked = false)?;
        Ok(done.is_some())
    }

    async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let done = self.update(id, false, |rec| rec.labels = labels.clone())?;
        Ok(done.is_some())
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<StreamEntry>, StoreError> {
        self.inner
            .dlq
            .iter()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                self.decode_entry(&k, &v)
            })
            .collect()
    }

    async fn dlq_delete(&self, id: &str) -> Result<bool, StoreError> {
        let Some(key) = Self::parse_id(id) else {
            return Ok(false);
        };
        let removed = self.inner.dlq.remove(key).map_err(|e| self.err(e))?;
        if removed.is_some() {
            self.inner.dlq_len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(removed.is_some())
    }

    async fn dlq_replay(&self, id: &str) -> Result<bool, StoreError> {
        let Some(key) = Self::parse_id(id) else {
            return Ok(false);
        };
        let inner = &self.inner;
        let moved = (&inner.agents, &inner.records, &inner.dlq, &inner.global)
            .transaction(|(agents, records, dlq, global)| {
                let Some(value) = dlq.remove(&key)? else {
                    return Ok(false);
                };
                let stored: StoredEntry =
                    codec::from_cbor(&value, codec::MAX_MESSAGE_BYTES).map_err(abort)?;
                let mut fields: Vec<(String, Vec<u8>)> = stored
                    .fields
                    .into_iter()
                    .map(|(k, v)| (k, v.into_vec()))
                    .collect();
                fields.push(("replayed_from".into(), id.as_bytes().to_vec()));
                let new_id = agents.generate_id()?;
                apply_or_dead_letter(global, dlq, agents, &fields, new_id.to_string())?;
                records.insert(&new_id.to_be_bytes(), encode(fields)?)?;
                Ok(true)
            })
            .map_err(|e: TransactionError<String>| self.err(e))?;
        if moved {
            // The dlq may have gained the entry back; recount rather than guess.
            inner
                .dlq_len
                .store(inner.dlq.len() as u64, Ordering::Relaxed);
            inner.records_len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(moved)
    }

    async fn records_of(&self, agent: &str, limit: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.records.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let e = self.decode_entry(&k, &v)?;
            if e.field("agent") == Some(agent.as_bytes()) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn stream_stats(&self) -> Result<Vec<StreamStats>, StoreError> {
        Ok(vec![
            StreamStats {
                name: "records".into(),
                length: self.inner.records.len() as u64,
                groups: Vec::new(),
            },
            StreamStats {
                name: "dlq".into(),
                length: self.inner.dlq.len() as u64,
                groups: Vec::new(),
            },
        ])
    }

    async fn latest_values(
        &self,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestValue>, StoreError> {
        let prefix = match agent {
            Some(a) => format!("l/{a}/"),
            None => "l/".to_string(),
        };
        self.inner
            .global
            .scan_prefix(prefix.as_bytes())
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| self.err(e))?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn top_anomalies(&self, limit: usize) -> Result<Vec<(String, f64)>, StoreError> {
        let mut all = Vec::new();
        for kv in self.inner.global.scan_prefix(b"a/") {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let score = <[u8; 8]>::try_from(&v[..])
                .map(f64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("anomaly score is not 8 bytes".into()))?;
            all.push((String::from_utf8_lossy(&k[2..]).into_owned(), score));
        }
        // Highest first; ties in series order, like ZREVRANGE's reverse-lex.
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        all.truncate(limit);
        Ok(all)
    }

    async fn global_summary(&self) -> Result<GlobalSummary, StoreError> {
        let g = &self.inner.global;
        let mut summary = GlobalSummary {
            distinct_series: g.scan_prefix(b"l/").count() as u64,
            distinct_devices: g.scan_prefix(b"d/").count() as u64,
            agent_counters: BTreeMap::new(),
        };
        for kv in g.scan_prefix(b"c/") {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let key = String::from_utf8_lossy(&k[2..]).into_owned();
            let n = <[u8; 8]>::try_from(&v[..])
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("counter is not 8 bytes".into()))?;
            if let Some((agent, kind)) = key.rsplit_once(':') {
                summary
                    .agent_counters
                    .entry(agent.to_string())
                    .or_default()
                    .insert(kind.to_string(), n);
            }
        }
        Ok(summary)
    }

    async fn doc_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .inner
            .docs
            .get(format!("d/{key}"))
            .map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    async fn doc_cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let swapped = self
            .inner
            .docs
            .compare_and_swap(format!("d/{key}"), expected, Some(new))
            .map_err(|e| self.err(e))?;
        if swapped.is_ok() {
            self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        }
        Ok(swapped.is_ok())
    }

    async fn doc_list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner
            .docs
            .scan_prefix(format!("d/{prefix}"))
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                Ok((String::from_utf8_lossy(&k[2..]).into_owned(), v.to_vec()))
            })
            .collect()
    }

    async fn counter_next(&self, name: &str) -> Result<u64, StoreError> {
        let v = self
            .inner
            .docs
            .update_and_fetch(format!("n/{name}"), |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.err(e))?;
        self.inner.db.flush_async().await.map_err(|e| self.err(e))?;
        v.and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt(format!("counter {name}")))
    }

    async fn counter_get(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .docs
            .get(format!("n/{name}"))
            .map_err(|e| self.err(e))?
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    async fn settle(&self) -> Result<(), StoreError> {
        // Global state is applied inside the ingest transaction: nothing is pending.
        Ok(())
    }
}
