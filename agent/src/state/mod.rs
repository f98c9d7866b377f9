//! The agent's durable state: one sled database per agent. **Boundary**: only
//! `state/` and [`crate::outbox`] touch sled.
//!
//! Design constraints:
//! - One database (`<data_dir>/state`) holds every tree: `ingest` (the ingest log),
//!   `outbox`, `checkpoints`, `meta` (cursors and counters) and `kv` (keyed state with
//!   per-key TTL, e.g. the applied config).
//! - Every value is a [`frame`]: explicit big-endian layout, format version, CRC-32,
//!   and its own key, so a damaged store can be verified and salvaged record by
//!   record ([`check`]).
//! - sled recovers a crashed store to a prefix of its writes (its log is sequential
//!   and atomic batches/transactions stay atomic); the ordering arguments in
//!   [`crate::ingest`] rely on that.
//! - Writes that must be atomic together go in one sled transaction: an outbox
//!   append with its cursors, a checkpoint with its position and `seq`.

pub mod check;
pub mod checkpoint;
pub mod frame;
pub mod ingest_log;
pub mod kv;

use std::path::Path;
use std::time::Duration;

pub use checkpoint::{CheckpointInfo, Checkpoints};
pub use ingest_log::{IngestLog, LogEntry, LogEvent};
pub use kv::Kv;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Store(#[from] sled::Error),
    #[error("{tree} record {key} is corrupt: {why}")]
    Corrupt {
        tree: &'static str,
        key: String,
        why: String,
    },
    #[error("cannot encode {0}")]
    Encode(String),
    #[error("no checkpoint with id {0}")]
    NoCheckpoint(u64),
    #[error("io on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StateError {
    pub(crate) fn corrupt(tree: &'static str, key: &[u8], why: impl ToString) -> Self {
        StateError::Corrupt {
            tree,
            key: key_text(key),
            why: why.to_string(),
        }
    }
}

/// Renders a key for messages: a u64 when it is one, text when printable, hex otherwise.
pub fn key_text(key: &[u8]) -> String {
    if let Some(n) = frame::be_u64(key) {
        return n.to_string();
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// How sled is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache; its 1 GiB default is far too much for a gateway.
    pub cache_capacity_bytes: u64,
    /// sled's background flush period; `None` flushes only when asked (tests use this
    /// to control exactly what a simulated crash leaves on disk).
    pub flush_every: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 16 * 1024 * 1024,
            flush_every: Some(Duration::from_millis(500)),
        }
    }
}

/// The opened database. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    pub(crate) db: sled::Db,
}

impl Store {
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Self, StateError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(opts.flush_every.map(|d| (d.as_millis() as u64).max(1)))
            .open()?;
        Ok(Self { db })
    }

    pub(crate) fn tree(&self, kind: frame::Kind) -> Result<sled::Tree, StateError> {
        Ok(self.db.open_tree(kind.tree())?)
    }

    /// Makes every write so far durable; returns the bytes flushed.
    pub fn flush(&self) -> Result<usize, StateError> {
        Ok(self.db.flush()?)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Reads a framed u64 cursor or counter from `meta`; 0 when absent.
pub(crate) fn meta_get(meta: &sled::Tree, key: &str) -> Result<u64, StateError> {
    match meta.get(key)? {
        None => Ok(0),
        Some(v) => decode_meta(key, &v),
    }
}

pub(crate) fn decode_meta(key: &str, v: &[u8]) -> Result<u64, StateError> {
    let body = frame::decode_stored(frame::Kind::Meta, key.as_bytes(), v)
        .map_err(|e| StateError::corrupt("meta", key.as_bytes(), e))?;
    frame::be_u64(body).ok_or_else(|| StateError::corrupt("meta", key.as_bytes(), "not a u64"))
}

pub(crate) fn meta_frame(key: &str, value: u64) -> Vec<u8> {
    frame::encode(frame::Kind::Meta, key.as_bytes(), &value.to_be_bytes())
}

/// Process footprint from `/proc` (Linux); zeros elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Bytes this process caused to be written to the block layer (`write_bytes` in
    /// `/proc/self/io`): the flash wear. Some container file systems report 0.
    pub disk_write_bytes: u64,
    /// Bytes passed to write(2)-like calls, sockets included (`wchar`).
    pub write_call_bytes: u64,
}

impl Footprint {
    pub fn read() -> Footprint {
        let mut f = Footprint::default();
        // VmRSS is in kB whatever the page size (4 KiB, 16 KiB or 64 KiB on ARM).
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                f.rss_bytes = kb * 1024;
            }
        }
        if let Ok(io) = std::fs::read_to_string("/proc/self/io") {
            for line in io.lines() {
                let mut parts = line.split(':');
                let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let v = v.trim().parse().unwrap_or(0);
                match k {
                    "write_bytes" => f.disk_write_bytes = v,
                    "wchar" => f.write_call_bytes = v,
                    _ => {}
                }
            }
        }
        f
    }
}
