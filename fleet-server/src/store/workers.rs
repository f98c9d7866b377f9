//! Global-state workers on Redis Streams consumer groups.
//!
//! Every fleet-server process on one Redis runs one [`Workers`] task. Per stream
//! partition `p`:
//! - **Lease**: `fl:{pN}:lease` (`SET NX PX`, renewed by its holder) decides which
//!   process consumes the partition; processes register in `fl:workers` (a ZSET of
//!   last-seen times) and each holds at most `ceil(partitions / live workers)`
//!   leases, so a second server takes over half of the partitions.
//! - **Consume**: `XREADGROUP` in group `fl-workers`, own pending entries first; when a
//!   lease changes hands the new holder takes the previous holder's pending entries
//!   with `XAUTOCLAIM`.
//! - **Apply**: one Lua script per entry on the `{gs}` keys (latest value per series,
//!   HyperLogLogs of distinct series and devices, top-K anomalous series, per-agent
//!   counters). The script records the last applied stream id per partition, so an
//!   entry delivered twice (crash between apply and `XACK`) is applied once.
//! - **Retry**: an entry that cannot be applied goes to `fl:{pN}:retry` (ZSET scored by
//!   due time, exponential backoff) and is acknowledged; after `max_attempts` it goes
//!   to the partition's DLQ with the reason.
//! - **Retention**: `XTRIM MAXLEN ~` or `MINID ~` (by age) on held partitions.
//!
//! Invariant: entries of one partition are applied in stream order by one process at
//! a time (the lease holder), which keeps per-series order.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::redis::RedisStore;
use super::{update_of, StoreError, Update};

pub const GROUP: &str = "fl-workers";
pub const WORKERS_KEY: &str = "fl:workers";
pub const APPLIED_KEY: &str = "fl:{gs}:applied";
pub const LATEST_KEY: &str = "fl:{gs}:latest";
pub const HLL_SERIES_KEY: &str = "fl:{gs}:hll:series";
pub const HLL_DEVICES_KEY: &str = "fl:{gs}:hll:devices";
pub const TOP_ANOMALIES_KEY: &str = "fl:{gs}:top_anomalies";
pub const AGENT_COUNTERS_KEY: &str = "fl:{gs}:agent_counters";

pub fn lease_key(p: u32) -> String {
    format!("fl:{{p{p}}}:lease")
}

pub fn retry_key(p: u32) -> String {
    format!("fl:{{p{p}}}:retry")
}

/// How long streams keep entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// About this many entries per partition stream (`MAXLEN ~`).
    MaxLen(u64),
    /// Entries younger than this (`MINID ~`).
    MaxAge(Duration),
}

impl Retention {
    /// Parses `maxlen:1000000` or `age:7d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("maxlen", n)) => n
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Retention::MaxLen)
                .ok_or_else(|| format!("`{n}` is not a positive entry count")),
            Some(("age", d)) => fieldline_common::duration::parse(d)
                .and_then(|d| {
                    if d.is_zero() {
                        Err("must be positive".into())
                    } else {
                        Ok(d)
                    }
                })
                .map(Retention::MaxAge)
                .map_err(|e| format!("age `{d}`: {e}")),
            _ => Err(format!(
                "`{s}` must be maxlen:<entries> (e.g. maxlen:1000000) or age:<duration> (e.g. age:7d)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub top_k: usize,
    pub batch: usize,
    /// `None`: only the ingest cap (`XADD MAXLEN ~`) bounds the streams.
    pub retention: Option<Retention>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            top_k: 100,
            batch: 200,
            retention: None,
        }
    }
}

/// Applies one record to the global state, once per (partition, stream id).
/// KEYS: applied, latest, hll series, hll devices, top anomalies, agent counters.
/// ARGV: partition, stream id, force (1 on retries), agent, kind, series id,
/// device id, value, ts, score ('' if none), top_k.
const APPLY_LUA: &str = r#"
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local last = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] ~= '1' and last and not newer(ARGV[2], last) then return 0 end
local agent, kind, series, device = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local value, ts = ARGV[8], tonumber(ARGV[9])
local cur = redis.call('HGET', KEYS[2], series)
local cur_ts = cur and tonumber(string.match(cur, '"ts_ms":(%-?%d+)'))
if not cur_ts or ts >= cur_ts then
  redis.call('HSET', KEYS[2], series, cjson.encode({agent = agent, kind = kind, value = tonumber(value), ts_ms = ts}))
end
redis.call('PFADD', KEYS[3], series)
redis.call('PFADD', KEYS[4], device)
if ARGV[10] ~= '' then
  redis.call('ZADD', KEYS[5], 'GT', ARGV[10], series)
  local k = tonumber(ARGV[11])
  if redis.call('ZCARD', KEYS[5]) > k then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(k + 1)) end
end
redis.call('HINCRBY', KEYS[6], agent .. ':' .. kind, 1)
if not last or newer(ARGV[2], last) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

/// Renews a lease only if this process still holds it. KEYS: lease; ARGV: me, ms.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// Releases a lease only if this process holds it. KEYS: lease; ARGV: me.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

type Fields = HashMap<String, Vec<u8>>;

fn parse_entries(raw: redis::Value) -> Result<Vec<(String, Fields)>, StoreError> {
    let items: Vec<(String, Vec<Vec<u8>>)> =
        redis::from_redis_value(raw).map_err(|e| StoreError::Redis(e.to_string()))?;
    Ok(items
        .into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .filter(|kv| kv.len() == 2)
                .map(|kv| (String::from_utf8_lossy(&kv[0]).into_owned(), kv[1].clone()))
                .collect();
            (id, fields)
        })
        .collect())
}

/// Entries of an XREADGROUP answer for one stream ([[stream, entries]] or nil).
fn read_group_entries(raw: redis::Value) -> Result<Vec<(String, Fields)>, StoreError> {
    if matches!(raw, redis::Value::Nil) {
        return Ok(Vec::new());
    }
    let streams: Vec<(String, redis::Value)> =
        redis::from_redis_value(raw).map_err(|e| StoreError::Redis(e.to_string()))?;
    let mut out = Vec::new();
    for (_, entries) in streams {
        out.extend(parse_entries(entries)?);
    }
    Ok(out)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RetryItem {
    id: String,
    attempts: u32,
    reason: String,
    fields: Vec<(String, serde_bytes::ByteBuf)>,
}

pub struct Workers {
    conn: ConnectionManager,
    partitions: u32,
    me: String,
    cfg: WorkerConfig,
    apply: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    held: BTreeSet<u32>,
    /// Partitions whose previous holder's pending entries were claimed already.
    claimed: BTreeSet<u32>,
}

impl Workers {
    pub fn new(store: &RedisStore, cfg: WorkerConfig) -> Result<Self, StoreError> {
        let mut nonce = [0u8; 4];
        getrandom::getrandom(&mut nonce).map_err(|e| StoreError::Redis(e.to_string()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fleet".into());
        Ok(Self {
            conn: store.connection(),
            partitions: store.partitions(),
            me: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                u32::from_le_bytes(nonce)
            ),
            cfg,
            apply: redis::Script::new(APPLY_LUA),
            renew: redis::Script::new(RENEW_LUA),
            release: redis::Script::new(RELEASE_LUA),
            held: BTreeSet::new(),
            claimed: BTreeSet::new(),
        })
    }

    pub fn consumer_name(&self) -> &str {
        &self.me
    }

    /// Runs until `shutdown`, then releases its leases so another process takes
    /// over at once instead of after the lease expires.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tick = (self.cfg.lease / 5).max(Duration::from_millis(50));
        let mut failing = false;
        tracing::info!(consumer = %self.me, partitions = self.partitions, "global-state workers running");
        while !shutdown.is_cancelled() {
            let busy = match self.step().await {
                Ok(busy) => {
                    if failing {
                        tracing::info!("global-state workers recovered");
                        failing = false;
                    }
                    busy
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "global-state workers failing; retrying");
                        failing = true;
                    }
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(tick.min(Duration::from_millis(200))) => {}
                }
            }
        }
        self.release_all().await;
    }

    /// One round: leases, then one batch per held partition. True when work was done.
    pub async fn step(&mut self) -> Result<bool, StoreError> {
        self.maintain_leases().await?;
        let mut busy = false;
        for p in self.held.clone() {
            busy |= self.process_partition(p).await?;
        }
        Ok(busy)
    }

    /// Processes everything currently in every partition, taking all leases that are
    /// free (tests and tools; a running fleet uses [`Workers::run`]).
    pub async fn drain(&mut self) -> Result<(), StoreError> {
        let now = fieldline_common::now_ms();
        for p in 0..self.partitions {
            self.try_acquire(p, now).await?;
        }
        let result = async {
            while {
                let mut busy = false;
                for p in self.held.clone() {
                    busy |= self.process_partition(p).await?;
                }
                busy
            } {}
            Ok(())
        }
        .await;
        self.release_all().await;
        result
    }

    async fn try_acquire(&mut self, p: u32, _now: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let got: Option<String> = redis::cmd("SET")
            .arg(lease_key(p))
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(self.cfg.lease.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if got.is_some() {
            self.ensure_group(p).await?;
            self.held.insert(p);
            self.claimed.remove(&p);
            tracing::info!(partition = p, consumer = %self.me, "partition lease acquired");
        }
        Ok(got.is_some())
    }

    async fn ensure_group(&self, p: u32) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(RedisStore::records_stream(p))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn maintain_leases(&mut self) -> Result<(), StoreError> {
        let now = fieldline_common::now_ms();
        let lease_ms = self.cfg.lease.as_millis() as u64;
        let mut conn = self.conn.clone();
        let live_since = now - 3 * lease_ms as i64;
        let (_, _, live): ((), (), u64) = redis::pipe()
            .zadd(WORKERS_KEY, &self.me, now)
            .zrembyscore(WORKERS_KEY, "-inf", live_since)
            .zcard(WORKERS_KEY)
            .query_async(&mut conn)
            .await?;
        for p in self.held.clone() {
            let renewed: i64 = self
                .renew
                .key(lease_key(p))
                .arg(&self.me)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await?;
            if renewed != 1 {
                tracing::warn!(partition = p, "partition lease lost");
                self.held.remove(&p);
            }
        }
        let cap = (self.partitions as u64).div_ceil(live.max(1)) as usize;
        // Hand back extras so a newly started server gets its share.
        while self.held.len() > cap {
            let Some(p) = self.held.iter().next_back().copied() else {
                break;
            };
            self.release_one(p).await?;
        }
        if self.held.len() < cap {
            for p in 0..self.partitions {
                if self.held.len() >= cap {
                    break;
                }
                if !self.held.contains(&p) {
                    self.try_acquire(p, now).await?;
                }
            }
        }
        Ok(())
    }

    async fn release_one(&mut self, p: u32) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(lease_key(p))
            .arg(&self.me)
            .invoke_async(&mut conn)
            .await?;
        self.held.remove(&p);
        tracing::info!(partition = p, "partition lease released");
        Ok(())
    }

    async fn release_all(&mut self) {
        for p in self.held.clone() {
            if let Err(e) = self.release_one(p).await {
                tracing::warn!(partition = p, error = %e, "cannot release lease");
            }
        }
        let mut conn = self.conn.clone();
        let _: Result<(), _> = conn.zrem(WORKERS_KEY, &self.me).await;
    }

    /// One batch of one partition: claimed, pending, new entries, then due retries.
    async fn process_partition(&mut self, p: u32) -> Result<bool, StoreError> {
        let stream = RedisStore::records_stream(p);
        let mut conn = self.conn.clone();
        let mut entries = Vec::new();
        if !self.claimed.contains(&p) {
            // The previous holder's unacknowledged entries: it lost the lease, so
            // they are ours; the applied-id check makes a double delivery harmless.
            let mut start = "0-0".to_string();
            loop {
                let raw: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.me)
                    .arg(0)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(self.cfg.batch)
                    .query_async(&mut conn)
                    .await?;
                let (next, claimed): (String, redis::Value) = match raw {
                    redis::Value::Array(mut v) if v.len() >= 2 => {
                        let claimed = v.remove(1);
                        let next = redis::from_redis_value(v.remove(0))
                            .map_err(|e| StoreError::Redis(e.to_string()))?;
                        (next, claimed)
                    }
                    _ => return Err(StoreError::Redis("unexpected XAUTOCLAIM answer".into())),
                };
                let n = parse_entries(claimed)?.len();
                if n > 0 {
                    tracing::info!(
                        partition = p,
                        entries = n,
                        "claimed pending entries of a previous consumer"
                    );
                }
                if next == "0-0" {
                    break;
                }
                start = next;
            }
            self.claimed.insert(p);
        }
        // Own pending entries first (after a claim or a failed round), then new ones.
        for id in ["0", ">"] {
            let raw: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.me)
                .arg("COUNT")
                .arg(self.cfg.batch)
                .arg("STREAMS")
                .arg(&stream)
                .arg(id)
                .query_async(&mut conn)
                .await?;
            entries = read_group_entries(raw)?;
            if !entries.is_empty() {
                break;
            }
        }
        let busy = !entries.is_empty();
        if busy {
            self.apply_batch(p, &entries).await?;
        }
        let retried = self.process_retries(p).await?;
        self.trim(p).await?;
        Ok(busy || retried)
    }

    async fn apply_batch(&self, p: u32, entries: &[(String, Fields)]) -> Result<(), StoreError> {
        let stream = RedisStore::records_stream(p);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        let mut failed = Vec::new();
        let mut applied_any = false;
        for (id, fields) in entries {
            match update_of(fields) {
                Ok(u) => {
                    pipe.invoke_script(&self.invocation(p, id, false, &u));
                    applied_any = true;
                }
                Err(reason) => failed.push((id.clone(), fields.clone(), reason)),
            }
        }
        if applied_any {
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    // Redis restarted or was flushed: load and let the next round retry.
                    self.apply.load_async(&mut conn).await?;
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        let now = fieldline_common::now_ms();
        let mut ack = redis::pipe();
        ack.atomic();
        for (id, fields, reason) in failed {
            self.schedule_retry(&mut ack, p, id, 1, reason, fields, now)?;
        }
        ack.cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(
                entries
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>(),
            )
            .ignore();
        ack.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    fn invocation<'a>(
        &'a self,
        p: u32,
        id: &str,
        force: bool,
        u: &Update,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.apply.prepare_invoke();
        inv.key(APPLIED_KEY)
            .key(LATEST_KEY)
            .key(HLL_SERIES_KEY)
            .key(HLL_DEVICES_KEY)
            .key(TOP_ANOMALIES_KEY)
            .key(AGENT_COUNTERS_KEY)
            .arg(p)
            .arg(id)
            .arg(if force { "1" } else { "0" })
            .arg(&u.agent)
            .arg(&u.kind)
            .arg(&u.series)
            .arg(&u.device)
            .arg(u.value)
            .arg(u.ts_ms)
            .arg(u.score.map(|s| s.to_string()).unwrap_or_default())
            .arg(self.cfg.top_k);
        inv
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule_retry(
        &self,
        pipe: &mut redis::Pipeline,
        p: u32,
        id: String,
        attempts: u32,
        reason: String,
        fields: Fields,
        now: i64,
    ) -> Result<(), StoreError> {
        if attempts >= self.cfg.max_attempts {
            let mut args: Vec<(String, Vec<u8>)> = fields
                .into_iter()
                .filter(|(k, _)| k != "reason" && k != "attempts" && k != "source_id")
                .collect();
            args.sort();
            args.push(("reason".into(), format!("worker: {reason}").into_bytes()));
            args.push(("attempts".into(), attempts.to_string().into_bytes()));
            args.push(("source_id".into(), id.into_bytes()));
            let mut cmd = redis::cmd("XADD");
            cmd.arg(RedisStore::dlq_stream(p)).arg("*");
            for (k, v) in &args {
                cmd.arg(k).arg(v.as_slice());
            }
            pipe.add_command(cmd).ignore();
            tracing::warn!(partition = p, %reason, attempts, "record moved to the dead-letter stream");
            return Ok(());
        }
        let item = RetryItem {
            id,
            attempts,
            reason,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k, serde_bytes::ByteBuf::from(v)))
                .collect(),
        };
        let member = fieldline_common::codec::to_cbor(&item)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let backoff = self.cfg.retry_base.as_millis() as i64 * (1i64 << (attempts - 1).min(16));
        pipe.zadd(retry_key(p), member, now + backoff).ignore();
        Ok(())
    }

    async fn process_retries(&self, p: u32) -> Result<bool, StoreError> {
        let now = fieldline_common::now_ms();
        let mut conn = self.conn.clone();
        let due: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
            .arg(retry_key(p))
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(50)
            .query_async(&mut conn)
            .await?;
        for member in &due {
            let item: RetryItem = match fieldline_common::codec::from_cbor(
                member,
                fieldline_common::codec::MAX_MESSAGE_BYTES,
            ) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "dropping an unreadable retry entry");
                    let _: () = conn.zrem(retry_key(p), member.as_slice()).await?;
                    continue;
                }
            };
            let fields: Fields = item
                .fields
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect();
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.zrem(retry_key(p), member.as_slice()).ignore();
            match update_of(&fields) {
                Ok(u) => {
                    let _: i64 = self
                        .invocation(p, &item.id, true, &u)
                        .invoke_async(&mut conn)
                        .await?;
                }
                Err(reason) => {
                    self.schedule_retry(
                        &mut pipe,
                        p,
                        item.id,
                        item.attempts + 1,
                        reason,
                        fields,
                        now,
                    )?;
                }
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(!due.is_empty())
    }

    async fn trim(&self, p: u32) -> Result<(), StoreError> {
        let Some(retention) = self.cfg.retention else {
            return Ok(());
        };
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(RedisStore::records_stream(p));
        match retention {
            Retention::MaxLen(n) => cmd.arg("MAXLEN").arg("~").arg(n),
            Retention::MaxAge(age) => {
                let min = fieldline_common::now_ms() - age.as_millis() as i64;
                cmd.arg("MINID").arg("~").arg(min.max(0))
            }
        };
        let _: u64 = cmd.query_async(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_both_forms_and_rejects_the_rest() {
        assert_eq!(Retention::parse("maxlen:10"), Ok(Retention::MaxLen(10)));
        assert_eq!(
            Retention::parse("age:2h"),
            Ok(Retention::MaxAge(Duration::from_secs(7200)))
        );
        for bad in [
            "maxlen:0", "maxlen:x", "age:0s", "age:soon", "1000", "size:1",
        ] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }
}
