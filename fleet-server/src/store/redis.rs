//! The Redis side of the fleet. **Boundary**: the only module that imports redis.
//!
//! Key layout (documented in docs/PROTOCOL.md). Every agent maps to one partition
//! `p = fnv1a64(agent_id) mod partitions`; everything written per agent shares the
//! hash tag `{pN}` so the ingest script touches a single Redis Cluster slot:
//! - `fl:{pN}:records`: stream of window results (and later other record kinds);
//! - `fl:{pN}:dlq`: stream of dead letters and records the fleet rejected, with reason;
//! - `fl:{pN}:agent:<id>`: hash with the agent's high-water mark (`hwm`), registry
//!   fields and last heartbeat;
//! - `fl:agents`: set of known agent ids; `fl:meta`: cluster-wide settings
//!   (`partitions`, fixed at first start because it decides where an agent's
//!   high-water mark lives).

use std::collections::HashMap;
use std::time::Duration;

use fieldline_common::wire::{Heartbeat, Record, RecordBody};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis url `{url}` is invalid: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("cannot reach redis at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis already holds data for {existing} partitions, this server is configured for {configured}; partitions cannot change")]
    Partitions { existing: u32, configured: u32 },
}

/// Ingest is one Lua script so the high-water mark and the XADDs commit together:
/// a record is added iff its seq is above the agent's mark, and the mark moves with it.
/// ARGV: agent, maxlen, now_ms, then per record: seq, target (r|d), nfields, fields...
const INGEST_LUA: &str = r#"
local hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm') or '0')
local agent, maxlen = ARGV[1], ARGV[2]
local added, dups, dead = 0, 0, 0
local i = 4
while i <= #ARGV do
  local seq = tonumber(ARGV[i])
  local target = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  if seq > hwm then
    local args = {}
    for j = 1, n * 2 do args[j] = ARGV[i + 2 + j] end
    local key = KEYS[2]
    if target == 'd' then key = KEYS[3]; dead = dead + 1 else added = added + 1 end
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'agent', agent, 'seq', ARGV[i], unpack(args))
    hwm = seq
  else
    dups = dups + 1
  end
  i = i + 3 + n * 2
end
redis.call('HSET', KEYS[1], 'hwm', hwm, 'last_ingest_ms', ARGV[3])
return {hwm, added, dups, dead}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    pub hwm: u64,
    pub added: u32,
    pub duplicates: u32,
    pub dead_letters: u32,
}

/// What the registry knows about one agent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub version: String,
    pub last_seen_ms: i64,
    pub started_ms: i64,
    pub last_ingest_ms: i64,
    pub last_acked_seq: u64,
    pub counters: serde_json::Value,
}

/// One record as it will be written: target stream and field/value pairs.
pub struct Entry {
    pub seq: u64,
    pub dead: bool,
    pub fields: Vec<(&'static str, Vec<u8>)>,
    /// Fields with computed names (e.g. `agg.p99`).
    pub extra: Vec<(String, Vec<u8>)>,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    script: redis::Script,
    partitions: u32,
    maxlen: u64,
    url: String,
}

impl RedisStore {
    pub async fn connect(url: &str, partitions: u32, maxlen: u64) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|source| StoreError::Url {
            url: url.to_string(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let unreachable = |why: String| StoreError::Unreachable {
            url: url.to_string(),
            why,
        };
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unreachable("no answer within 10s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let mut store = Self {
            conn,
            script: redis::Script::new(INGEST_LUA),
            partitions,
            maxlen,
            url: url.to_string(),
        };
        store.ping().await.map_err(|e| unreachable(e.to_string()))?;
        store.claim_partitions().await?;
        Ok(store)
    }

    async fn claim_partitions(&mut self) -> Result<(), StoreError> {
        let _: bool = self
            .conn
            .hset_nx("fl:meta", "partitions", self.partitions)
            .await?;
        let existing: u32 = self.conn.hget("fl:meta", "partitions").await?;
        if existing != self.partitions {
            return Err(StoreError::Partitions {
                existing,
                configured: self.partitions,
            });
        }
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub fn partition_of(&self, agent: &str) -> u32 {
        (fnv1a64(agent.as_bytes()) % u64::from(self.partitions)) as u32
    }

    fn agent_key(&self, agent: &str) -> String {
        format!("fl:{{p{}}}:agent:{agent}", self.partition_of(agent))
    }

    pub fn records_stream(&self, partition: u32) -> String {
        format!("fl:{{p{partition}}}:records")
    }

    pub fn dlq_stream(&self, partition: u32) -> String {
        format!("fl:{{p{partition}}}:dlq")
    }

    /// Adds entries whose seq is above the agent's high-water mark, atomically.
    pub async fn ingest(
        &self,
        agent: &str,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, StoreError> {
        let p = self.partition_of(agent);
        let mut inv = self.script.prepare_invoke();
        inv.key(self.agent_key(agent))
            .key(self.records_stream(p))
            .key(self.dlq_stream(p))
            .arg(agent)
            .arg(self.maxlen)
            .arg(now_ms);
        for e in entries {
            inv.arg(e.seq)
                .arg(if e.dead { "d" } else { "r" })
                .arg(e.fields.len());
            for (k, v) in &e.fields {
                inv.arg(*k).arg(v.as_slice());
            }
        }
        let mut conn = self.conn.clone();
        let (hwm, added, duplicates, dead_letters): (u64, u32, u32, u32) =
            inv.invoke_async(&mut conn).await?;
        let _: () = conn.sadd("fl:agents", agent).await?;
        Ok(IngestOutcome {
            hwm,
            added,
            duplicates,
            dead_letters,
        })
    }

    /// Records a heartbeat; returns the agent's high-water mark.
    pub async fn heartbeat(&self, hb: &Heartbeat, now_ms: i64) -> Result<u64, StoreError> {
        let key = self.agent_key(&hb.agent_id);
        let counters = serde_json::to_string(&hb.counters).unwrap_or_default();
        let mut conn = self.conn.clone();
        let (_, _, hwm): ((), (), Option<u64>) = redis::pipe()
            .hset_multiple(
                &key,
                &[
                    ("version", hb.version.clone()),
                    ("last_seen_ms", now_ms.to_string()),
                    ("started_ms", hb.started_ms.to_string()),
                    ("counters", counters),
                ],
            )
            .sadd("fl:agents", &hb.agent_id)
            .hget(&key, "hwm")
            .query_async(&mut conn)
            .await?;
        Ok(hwm.unwrap_or(0))
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers("fl:agents").await?;
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.agent_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(hashes)
            .map(|(id, h)| {
                let num = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                AgentInfo {
                    version: h.get("version").cloned().unwrap_or_default(),
                    last_seen_ms: num("last_seen_ms"),
                    started_ms: num("started_ms"),
                    last_ingest_ms: num("last_ingest_ms"),
                    last_acked_seq: h.get("hwm").and_then(|v| v.parse().ok()).unwrap_or(0),
                    counters: h
                        .get("counters")
                        .and_then(|c| serde_json::from_str(c).ok())
                        .unwrap_or(serde_json::Value::Null),
                    id,
                }
            })
            .collect())
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// FNV-1a, 64 bit: stable across versions and platforms, which the partition
/// assignment depends on.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Turns a record into stream fields; records that fail validation go to the DLQ.
pub fn entry(record: &Record) -> Entry {
    let num = |v: f64| v.to_string().into_bytes();
    let mut fields: Vec<(&'static str, Vec<u8>)> = vec![
        ("kind", record.body.kind().as_bytes().to_vec()),
        ("created_ms", record.created_ms.to_string().into_bytes()),
    ];
    match &record.body {
        RecordBody::Window(w) => {
            if let Err(why) = validate_window(w) {
                fields.push(("reason", why.into_bytes()));
                fields.push(("series", w.series.to_string().into_bytes()));
                return Entry {
                    seq: record.seq,
                    dead: true,
                    fields,
                    extra: Vec::new(),
                };
            }
            fields.extend([
                ("series", w.series.to_string().into_bytes()),
                ("device", w.series.device.clone().into_bytes()),
                ("metric", w.series.metric.clone().into_bytes()),
                ("start_ms", w.start_ms.to_string().into_bytes()),
                ("end_ms", w.end_ms.to_string().into_bytes()),
                ("count", w.count.to_string().into_bytes()),
                ("sum", num(w.sum)),
                ("mean", num(w.mean)),
                ("min", num(w.min)),
                ("max", num(w.max)),
                ("revision", w.revision.to_string().into_bytes()),
                ("pipeline", w.pipeline.clone().into_bytes()),
            ]);
            // Extra aggregates become `agg.<name>` fields, so they cannot collide
            // with the fixed ones.
            let extra = w
                .aggregates
                .iter()
                .map(|(name, v)| (format!("agg.{name}"), num(*v)))
                .collect();
            Entry {
                seq: record.seq,
                dead: false,
                fields,
                extra,
            }
        }
        RecordBody::DeadLetter(d) => {
            fields.extend([
                ("topic", d.topic.clone().into_bytes()),
                ("payload", d.payload.clone()),
                ("reason", d.reason.clone().into_bytes()),
                ("received_ms", d.received_ms.to_string().into_bytes()),
            ]);
            Entry {
                seq: record.seq,
                dead: true,
                fields,
                extra: Vec::new(),
            }
        }
        RecordBody::Late(l) => {
            fields.extend([
                ("pipeline", l.pipeline.clone().into_bytes()),
                ("series", l.series.to_string().into_bytes()),
                ("ts_ms", l.ts_ms.to_string().into_bytes()),
                ("value", num(l.value)),
                ("watermark_ms", l.watermark_ms.to_string().into_bytes()),
                ("received_ms", l.received_ms.to_string().into_bytes()),
            ]);
            Entry {
                seq: record.seq,
                dead: false,
                fields,
                extra: Vec::new(),
            }
        }
        RecordBody::Anomaly(a) => {
            fields.extend([
                ("pipeline", a.pipeline.clone().into_bytes()),
                ("series", a.series.to_string().into_bytes()),
                ("ts_ms", a.ts_ms.to_string().into_bytes()),
                ("value", num(a.value)),
                ("score", num(a.score)),
                ("detector", a.detector.clone().into_bytes()),
                ("reason", a.reason.clone().into_bytes()),
            ]);
            Entry {
                seq: record.seq,
                dead: false,
                fields,
                extra: Vec::new(),
            }
        }
    }
}

fn validate_window(w: &fieldline_common::wire::WindowResult) -> Result<(), String> {
    if w.count == 0 {
        return Err("window result with count 0".into());
    }
    if w.end_ms <= w.start_ms {
        return Err(format!(
            "window end {} is not after start {}",
            w.end_ms, w.start_ms
        ));
    }
    if ![w.sum, w.mean, w.min, w.max].iter().all(|v| v.is_finite()) {
        return Err("window result with a non-finite aggregate".into());
    }
    if w.min > w.max {
        return Err(format!("window min {} exceeds max {}", w.min, w.max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        // Partition assignment must never change between releases.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"gw-1"), fnv1a64(b"gw-1"));
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
