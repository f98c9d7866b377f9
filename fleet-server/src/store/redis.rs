//! The Redis store. **Boundary**: the only module that imports redis.
//!
//! Key layout (documented in docs/PROTOCOL.md). Every agent maps to one partition
//! `p = fnv1a64(agent_id) mod partitions`; everything written per agent shares the
//! hash tag `{pN}` so the ingest script touches a single Redis Cluster slot:
//! - `fl:{pN}:records`: stream of window results, late readings and anomalies;
//! - `fl:{pN}:dlq`: stream of dead letters and records the fleet rejected, with reason;
//! - `fl:{pN}:agent:<id>`: hash with the agent's high-water mark (`hwm`), registry
//!   fields, last heartbeat, credential hash (`cred`), `revoked`, `labels` (JSON);
//! - `fl:agents`: set of known agent ids; `fl:meta`: cluster-wide settings
//!   (`partitions`, fixed at first start because it decides where an agent's
//!   high-water mark lives).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use fieldline_common::wire::Heartbeat;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::workers::{self, WorkerConfig, Workers};
use super::{
    AgentInfo, Credential, EnrollOutcome, Entry, GlobalSummary, GroupStats, IngestOutcome,
    LatestValue, Store, StoreError, StreamEntry, StreamStats,
};

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Redis(e.to_string())
    }
}

/// Single keys, each in its own slot; no script touches them together with a
/// partition key, so Redis Cluster never sees a cross-slot command.
pub const AGENTS_KEY: &str = "fl:agents";
pub const META_KEY: &str = "fl:meta";

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
    local key = KEYS[2]
    if target == 'd' then key = KEYS[3]; dead = dead + 1 else added = added + 1 end
    -- unpack straight from ARGV: no per-record table copy.
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'agent', agent, 'seq', ARGV[i],
      unpack(ARGV, i + 3, i + 2 + n * 2))
    hwm = seq
  else
    dups = dups + 1
  end
  i = i + 3 + n * 2
end
redis.call('HSET', KEYS[1], 'hwm', hwm, 'last_ingest_ms', ARGV[3])
return {hwm, added, dups, dead}
"#;

/// Enrollment must not race with itself: check and set in one script.
/// Returns 0 enrolled, 1 already enrolled, 2 revoked.
const ENROLL_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'revoked') == '1' then return 2 end
if redis.call('HEXISTS', KEYS[1], 'cred') == 1 then return 1 end
redis.call('HSET', KEYS[1], 'cred', ARGV[1], 'enrolled_ms', ARGV[2])
return 0
"#;

/// Moves one entry from the DLQ back to the records stream atomically.
/// KEYS: dlq, records; ARGV: stream id, maxlen, id shown to callers. Returns 1 when moved.
const REPLAY_LUA: &str = r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f = e[1][2]
table.insert(f, 'replayed_from')
table.insert(f, ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(f))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#;

/// Compare-and-set of one document, registering its key. KEYS: doc, index;
/// ARGV: expected ('' + flag), new, key name, has_expected (1|0). Returns 1 when set.
const DOC_CAS_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
  if cur ~= ARGV[1] then return 0 end
else
  if cur then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"#;

/// Fleet settings share the hash tag `{cfg}` so the CAS script stays in one slot.
const DOC_INDEX_KEY: &str = "fl:{cfg}:docs";

fn doc_key(key: &str) -> String {
    format!("fl:{{cfg}}:doc:{key}")
}

fn counter_key(name: &str) -> String {
    format!("fl:{{cfg}}:counter:{name}")
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    ingest: redis::Script,
    enroll: redis::Script,
    replay: redis::Script,
    doc_cas: redis::Script,
    partitions: u32,
    maxlen: u64,
    url: String,
}

impl RedisStore {
    pub async fn connect(url: &str, partitions: u32, maxlen: u64) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Url {
            url: url.to_string(),
            why: e.to_string(),
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
            ingest: redis::Script::new(INGEST_LUA),
            enroll: redis::Script::new(ENROLL_LUA),
            replay: redis::Script::new(REPLAY_LUA),
            doc_cas: redis::Script::new(DOC_CAS_LUA),
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
            .hset_nx(META_KEY, "partitions", self.partitions)
            .await?;
        let existing: u32 = self.conn.hget(META_KEY, "partitions").await?;
        if existing != self.partitions {
            return Err(StoreError::Partitions {
                existing,
                configured: self.partitions,
            });
        }
        Ok(())
    }

    /// A connection handle for workers (cheap to clone; reconnects by itself).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn maxlen(&self) -> u64 {
        self.maxlen
    }

    pub fn partition_of(&self, agent: &str) -> u32 {
        (super::fnv1a64(agent.as_bytes()) % u64::from(self.partitions)) as u32
    }

    fn agent_key(&self, agent: &str) -> String {
        format!("fl:{{p{}}}:agent:{agent}", self.partition_of(agent))
    }

    pub fn records_stream(partition: u32) -> String {
        format!("fl:{{p{partition}}}:records")
    }

    pub fn dlq_stream(partition: u32) -> String {
        format!("fl:{{p{partition}}}:dlq")
    }

    /// DLQ ids given to callers are `p<N>-<stream id>` so they name their partition.
    fn split_dlq_id(&self, id: &str) -> Option<(u32, String)> {
        let rest = id.strip_prefix('p')?;
        let (p, sid) = rest.split_once('-')?;
        let p: u32 = p.parse().ok()?;
        let (ms, n) = sid.split_once('-')?;
        if p >= self.partitions || ms.parse::<u64>().is_err() || n.parse::<u64>().is_err() {
            return None;
        }
        Some((p, sid.to_string()))
    }

    async fn all_agent_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers(AGENTS_KEY).await?;
        ids.sort();
        Ok(ids)
    }

    async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.sismember(AGENTS_KEY, id).await?)
    }
}

fn agent_info(id: String, h: &HashMap<String, String>) -> AgentInfo {
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
        labels: h
            .get("labels")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default(),
        enrolled_ms: num("enrolled_ms"),
        revoked: h.get("revoked").is_some_and(|v| v == "1"),
        id,
    }
}

type RawEntry = (String, Vec<(String, Vec<u8>)>);

fn flat_entries(raw: redis::Value) -> Result<Vec<RawEntry>, StoreError> {
    // XRANGE answers [[id, [k, v, k, v, ...]], ...].
    let items: Vec<(String, Vec<Vec<u8>>)> =
        redis::from_redis_value(raw).map_err(|e| StoreError::Redis(e.to_string()))?;
    items
        .into_iter()
        .map(|(id, flat)| {
            if flat.len() % 2 != 0 {
                return Err(StoreError::Corrupt(format!(
                    "stream entry {id} has odd fields"
                )));
            }
            let fields = flat
                .chunks(2)
                .map(|kv| (String::from_utf8_lossy(&kv[0]).into_owned(), kv[1].clone()))
                .collect();
            Ok((id, fields))
        })
        .collect()
}

#[async_trait]
impl Store for RedisStore {
    fn describe(&self) -> String {
        // Never log a password embedded in the URL.
        match self.url.split_once('@') {
            Some((scheme_user, host)) => {
                let scheme = scheme_user.split("://").next().unwrap_or("redis");
                format!("redis {scheme}://***@{host}")
            }
            None => format!("redis {}", self.url),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn ingest(
        &self,
        agent: &str,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<IngestOutcome, StoreError> {
        let p = self.partition_of(agent);
        let mut inv = self.ingest.prepare_invoke();
        inv.key(self.agent_key(agent))
            .key(Self::records_stream(p))
            .key(Self::dlq_stream(p))
            .arg(agent)
            .arg(self.maxlen)
            .arg(now_ms);
        for e in entries {
            inv.arg(e.seq)
                .arg(if e.dead { "d" } else { "r" })
                .arg(e.fields.len() + e.extra.len());
            for (k, v) in e.all_fields() {
                inv.arg(k).arg(v);
            }
        }
        let mut conn = self.conn.clone();
        let (hwm, added, duplicates, dead_letters): (u64, u32, u32, u32) =
            inv.invoke_async(&mut conn).await?;
        let _: () = conn.sadd(AGENTS_KEY, agent).await?;
        Ok(IngestOutcome {
            hwm,
            added,
            duplicates,
            dead_letters,
        })
    }

    async fn heartbeat(&self, hb: &Heartbeat, now_ms: i64) -> Result<u64, StoreError> {
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
            .sadd(AGENTS_KEY, &hb.agent_id)
            .hget(&key, "hwm")
            .query_async(&mut conn)
            .await?;
        Ok(hwm.unwrap_or(0))
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        let ids = self.all_agent_ids().await?;
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(ids.len());
        // Pipelined in chunks so one answer never gets huge with thousands of agents.
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.agent_key(id));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            out.extend(
                chunk
                    .iter()
                    .zip(hashes)
                    .map(|(id, h)| agent_info(id.clone(), &h)),
            );
        }
        Ok(out)
    }

    async fn agent(&self, id: &str) -> Result<Option<AgentInfo>, StoreError> {
        if !self.exists(id).await? {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn.hgetall(self.agent_key(id)).await?;
        Ok(Some(agent_info(id.to_string(), &h)))
    }

    async fn enroll(
        &self,
        id: &str,
        credential_hash: &str,
        now_ms: i64,
    ) -> Result<EnrollOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let code: i64 = self
            .enroll
            .key(self.agent_key(id))
            .arg(credential_hash)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        // The registry set lives in another slot; SADD is idempotent, so a crash
        // between the two is repaired by the agent's next heartbeat or ingest.
        let _: () = conn.sadd(AGENTS_KEY, id).await?;
        Ok(match code {
            0 => EnrollOutcome::Enrolled,
            1 => EnrollOutcome::AlreadyEnrolled,
            _ => EnrollOutcome::Revoked,
        })
    }

    async fn credential(&self, id: &str) -> Result<Option<Credential>, StoreError> {
        let mut conn = self.conn.clone();
        let (hash, revoked): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.agent_key(id), "cred")
            .hget(self.agent_key(id), "revoked")
            .query_async(&mut conn)
            .await?;
        let revoked = revoked.is_some_and(|r| r == "1");
        Ok(match hash {
            Some(hash) => Some(Credential { hash, revoked }),
            None if revoked => Some(Credential {
                hash: String::new(),
                revoked,
            }),
            None => None,
        })
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        if !self.exists(id).await? {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let key = self.agent_key(id);
        let _: () = redis::pipe()
            .atomic()
            .hset(&key, "revoked", "1")
            .hdel(&key, "cred")
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    async fn allow_reenroll(&self, id: &str) -> Result<bool, StoreError> {
        if !self.exists(id).await? {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let _: () = conn.hdel(self.agent_key(id), "revoked").await?;
        Ok(true)
    }

    async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        if !self.exists(id).await? {
            return Ok(false);
        }
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let _: () = conn.hset(self.agent_key(id), "labels", json).await?;
        Ok(true)
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let mut all = Vec::new();
        for p in 0..self.partitions {
            let raw: redis::Value = redis::cmd("XRANGE")
                .arg(Self::dlq_stream(p))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut conn)
                .await?;
            for (id, fields) in flat_entries(raw)? {
                all.push((
                    id.clone(),
                    StreamEntry {
                        id: format!("p{p}-{id}"),
                        fields,
                    },
                ));
            }
        }
        // Oldest first across partitions: stream ids start with milliseconds.
        all.sort_by_key(|(id, _)| {
            let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
            (
                ms.parse::<u64>().unwrap_or(0),
                n.parse::<u64>().unwrap_or(0),
            )
        });
        Ok(all.into_iter().take(limit).map(|(_, e)| e).collect())
    }

    async fn dlq_delete(&self, id: &str) -> Result<bool, StoreError> {
        let Some((p, sid)) = self.split_dlq_id(id) else {
            return Ok(false);
        };
        let mut conn = self.conn.clone();
        let n: u64 = conn.xdel(Self::dlq_stream(p), &[sid]).await?;
        Ok(n > 0)
    }

    async fn dlq_replay(&self, id: &str) -> Result<bool, StoreError> {
        let Some((p, sid)) = self.split_dlq_id(id) else {
            return Ok(false);
        };
        let mut conn = self.conn.clone();
        let moved: i64 = self
            .replay
            .key(Self::dlq_stream(p))
            .key(Self::records_stream(p))
            .arg(sid)
            .arg(self.maxlen)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }

    async fn records_of(&self, agent: &str, limit: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let stream = Self::records_stream(self.partition_of(agent));
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut start = "-".to_string();
        loop {
            let raw: redis::Value = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let page = flat_entries(raw)?;
            let Some((last, _)) = page.last() else { break };
            start = format!("({last}");
            for (id, fields) in page {
                let e = StreamEntry { id, fields };
                if e.field("agent") == Some(agent.as_bytes()) {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn stream_stats(&self) -> Result<Vec<StreamStats>, StoreError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for p in 0..self.partitions {
            for name in [Self::records_stream(p), Self::dlq_stream(p)] {
                let length: u64 = conn.xlen(&name).await?;
                // A stream that never existed has no groups: XINFO answers an error.
                let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let groups = groups
                    .into_iter()
                    .map(|g| {
                        let s = |k: &str| {
                            g.get(k)
                                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        };
                        GroupStats {
                            name: s("name").unwrap_or_default(),
                            lag: s("lag").and_then(|v| v.parse().ok()),
                            pending: s("pending").and_then(|v| v.parse().ok()).unwrap_or(0),
                        }
                    })
                    .collect();
                out.push(StreamStats {
                    name,
                    length,
                    groups,
                });
            }
        }
        Ok(out)
    }

    async fn latest_values(
        &self,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LatestValue>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = match agent {
            // Agent ids cannot contain glob characters (validated), so this is exact.
            Some(a) => format!("{a}/*"),
            None => "*".to_string(),
        };
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(workers::LATEST_KEY)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            for (series, json) in page {
                #[derive(serde::Deserialize)]
                struct Stored {
                    agent: String,
                    kind: String,
                    value: f64,
                    ts_ms: i64,
                }
                let v: Stored = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("latest {series}: {e}")))?;
                out.push(LatestValue {
                    series,
                    agent: v.agent,
                    kind: v.kind,
                    value: v.value,
                    ts_ms: v.ts_ms,
                });
            }
            cursor = next;
            if cursor == 0 || out.len() >= limit {
                break;
            }
        }
        out.sort_by(|a, b| a.series.cmp(&b.series));
        out.truncate(limit);
        Ok(out)
    }

    async fn top_anomalies(&self, limit: usize) -> Result<Vec<(String, f64)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        Ok(conn
            .zrevrange_withscores(workers::TOP_ANOMALIES_KEY, 0, limit as isize - 1)
            .await?)
    }

    async fn global_summary(&self) -> Result<GlobalSummary, StoreError> {
        let mut conn = self.conn.clone();
        let (series, devices, counters): (u64, u64, HashMap<String, u64>) = redis::pipe()
            .pfcount(workers::HLL_SERIES_KEY)
            .pfcount(workers::HLL_DEVICES_KEY)
            .hgetall(workers::AGENT_COUNTERS_KEY)
            .query_async(&mut conn)
            .await?;
        let mut agent_counters: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (k, n) in counters {
            if let Some((agent, kind)) = k.rsplit_once(':') {
                agent_counters
                    .entry(agent.to_string())
                    .or_default()
                    .insert(kind.to_string(), n);
            }
        }
        Ok(GlobalSummary {
            distinct_series: series,
            distinct_devices: devices,
            agent_counters,
        })
    }

    async fn doc_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.get(doc_key(key)).await?)
    }

    async fn doc_cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: i64 = self
            .doc_cas
            .key(doc_key(key))
            .key(DOC_INDEX_KEY)
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(set == 1)
    }

    async fn doc_list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = conn.smembers(DOC_INDEX_KEY).await?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| doc_key(k)).collect();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&full).query_async(&mut conn).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn counter_next(&self, name: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.incr(counter_key(name), 1).await?)
    }

    async fn counter_get(&self, name: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = conn.get(counter_key(name)).await?;
        Ok(v.unwrap_or(0))
    }

    async fn settle(&self) -> Result<(), StoreError> {
        let mut w = Workers::new(
            self,
            WorkerConfig {
                retry_base: Duration::ZERO,
                ..WorkerConfig::default()
            },
        )?;
        w.drain().await
    }
}
