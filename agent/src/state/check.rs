//! `fieldline-agent state check DIR` and `state repair DIR`.
//!
//! Two independent readers of a store:
//! 1. sled itself: open the database and verify every record of every tree (frame
//!    checksum, key, and the record's own decoding);
//! 2. a raw scan ([`frame::carve`]) of every file under `DIR`, which finds each
//!    intact frame without trusting sled's index, so records that sled can no
//!    longer reach (or a store sled refuses to open) are still found.
//!
//! The *live* records are those the agent still needs: outbox records above the
//! acknowledged/dropped cursor, ingest-log entries above the compaction cursor,
//! checkpoints, keyed state and cursors. Stale copies of deleted records that the
//! raw scan finds are filtered out by those cursors (cursors only grow, so the
//! highest intact copy of each is the current one). What is live, expected and
//! found in neither reader is reported as lost, by key.
//!
//! `repair` writes every live record found into a fresh store next to `DIR`, then
//! moves the damaged store aside to `DIR.damaged-<unix time>` and the new one into
//! place. Nothing is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::checkpoint::{META_LAST_ID, META_LATEST};
use super::frame::{self, Carved, CarvedFrame, Kind};
use super::ingest_log::{decode_entry, META_COMPACTED};
use super::{key_text, meta_frame, StateError, Store, StoreOptions};
use crate::outbox::meta_keys;

/// Cursors and counters that only ever grow: the highest intact copy is current.
const MONOTONIC: &[&str] = &[
    meta_keys::ACKED,
    meta_keys::LAST,
    meta_keys::DROPPED,
    meta_keys::DROPPED_BYTES,
    meta_keys::DROPPED_THROUGH,
    meta_keys::APPLIED,
    META_COMPACTED,
    META_LAST_ID,
];

type Key = (Kind, Vec<u8>);

/// Keyed-state entries where repair records what it could not salvage, so a later
/// check reports those holes as known instead of as new loss.
const LOST_OUTBOX: &[u8] = b"state.repair.lost.outbox";
const LOST_INGEST: &[u8] = b"state.repair.lost.ingest";

fn decode_list(frame_bytes: &[u8]) -> BTreeSet<u64> {
    let Ok(f) = frame::decode(frame_bytes) else {
        return BTreeSet::new();
    };
    f.body
        .get(8..)
        .unwrap_or_default()
        .chunks_exact(8)
        .filter_map(frame::be_u64)
        .collect()
}

fn encode_list(key: &[u8], list: &BTreeSet<u64>) -> Vec<u8> {
    let mut body = i64::MAX.to_be_bytes().to_vec();
    for n in list {
        body.extend_from_slice(&n.to_be_bytes());
    }
    frame::encode(Kind::Kv, key, &body)
}

/// What `check` or `repair` found.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    /// Why sled could not open the store, if it could not.
    pub sled_error: Option<String>,
    /// Records sled returned, per tree: (intact, corrupt).
    pub counts: BTreeMap<&'static str, (u64, u64)>,
    /// Corrupt records as sled returned them: (tree, key, why).
    pub corrupt: Vec<(&'static str, String, String)>,
    /// Intact frames the raw scan found, and places that look like a frame but
    /// fail their checksum (damaged copies, current or stale).
    pub raw_frames: usize,
    pub raw_damaged: usize,
    /// Live records sled could not return but the raw scan found intact.
    pub recoverable: BTreeMap<&'static str, Vec<String>>,
    /// Live records found nowhere intact.
    pub lost: BTreeMap<&'static str, Vec<String>>,
    /// Holes an earlier repair already reported (outbox seqs, ingest positions).
    pub previously_lost: u64,
    /// Live records recovered (repair) or readable (check), per tree.
    pub live: BTreeMap<&'static str, u64>,
    /// Where repair moved the damaged store.
    pub moved_to: Option<PathBuf>,
}

impl Report {
    /// True when every live record is intact and reachable. Damaged copies found by
    /// the raw scan alone do not count: sled leaves stale copies of old versions in
    /// its files (and reuses space), so only damage to live records matters.
    pub fn is_clean(&self) -> bool {
        self.sled_error.is_none()
            && self.corrupt.is_empty()
            && self.recoverable.values().all(Vec::is_empty)
            && self.lost.values().all(Vec::is_empty)
    }

    pub fn lost_count(&self) -> usize {
        self.lost.values().map(Vec::len).sum()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let _ = writeln!(s, "store: {}", self.dir.display());
        match &self.sled_error {
            Some(e) => {
                let _ = writeln!(s, "sled: cannot open: {e}");
            }
            None => {
                let _ = writeln!(s, "sled: opened");
            }
        }
        for (tree, (ok, bad)) in &self.counts {
            let _ = writeln!(s, "  {tree}: {ok} intact, {bad} corrupt");
        }
        for (tree, key, why) in &self.corrupt {
            let _ = writeln!(s, "corrupt: {tree} {key}: {why}");
        }
        let _ = writeln!(
            s,
            "raw scan: {} intact record copies, {} damaged copies",
            self.raw_frames, self.raw_damaged
        );
        for (tree, n) in &self.live {
            let _ = writeln!(s, "live {tree}: {n}");
        }
        for (tree, keys) in &self.recoverable {
            if !keys.is_empty() {
                let _ = writeln!(
                    s,
                    "recoverable (intact on disk, unreachable through sled): {tree}: {}",
                    ranges(keys)
                );
            }
        }
        for (tree, keys) in &self.lost {
            if !keys.is_empty() {
                let _ = writeln!(s, "LOST: {tree}: {} ({})", keys.len(), ranges(keys));
            }
        }
        if self.previously_lost > 0 {
            let _ = writeln!(
                s,
                "known holes from an earlier repair: {}",
                self.previously_lost
            );
        }
        if let Some(p) = &self.moved_to {
            let _ = writeln!(s, "damaged store kept in {}", p.display());
        }
        let _ = write!(
            s,
            "{}",
            if self.is_clean() {
                "result: clean"
            } else if self.lost_count() == 0 {
                "result: damaged, nothing lost (run `state repair` to rewrite it)"
            } else {
                "result: damaged, records lost (listed above)"
            }
        );
        f.write_str(&s)
    }
}

/// Renders numeric keys as ranges (`3-7, 9`), other keys as they are.
fn ranges(keys: &[String]) -> String {
    let mut nums: Vec<u64> = keys.iter().filter_map(|k| k.parse().ok()).collect();
    let other: Vec<&String> = keys.iter().filter(|k| k.parse::<u64>().is_err()).collect();
    nums.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < nums.len() {
        let mut j = i;
        while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            nums[i].to_string()
        } else {
            format!("{}-{}", nums[i], nums[j])
        });
        i = j + 1;
    }
    parts.extend(other.into_iter().cloned());
    parts.join(", ")
}

/// Verifies a frame's body as the record it claims to be.
fn validate(kind: Kind, key: &[u8], body: &[u8]) -> Result<(), String> {
    match kind {
        Kind::Outbox => {
            let frame = frame::encode(kind, key, body);
            crate::outbox::decode(key, &frame)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Kind::Ingest => {
            frame::be_u64(key).ok_or("key is not a u64")?;
            decode_entry(body).map(|_| ())
        }
        Kind::Checkpoint => {
            let id = frame::be_u64(key).ok_or("key is not a u64")?;
            super::checkpoint::decode(id, &frame::encode(kind, key, body))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Kind::Meta => frame::be_u64(body)
            .map(|_| ())
            .ok_or_else(|| "not a u64".into()),
        Kind::Kv => (body.len() >= 8)
            .then_some(())
            .ok_or_else(|| "shorter than its expiry".into()),
    }
}

struct Scan {
    report: Report,
    /// Intact records sled returned.
    sled: BTreeMap<Key, Vec<u8>>,
    carved: Carved,
}

fn scan(dir: &Path) -> Result<Scan, StateError> {
    if !dir.is_dir() {
        return Err(StateError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let mut report = Report {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let mut carved = Carved::default();
    carve_dir(dir, &mut carved)?;
    report.raw_frames = carved.frames.len();
    report.raw_damaged = carved.damaged;

    // sled's open is not read-only (it may truncate a log tail it finds damaged,
    // which would destroy what the raw scan could still salvage): open a copy.
    let copy = dir.with_file_name(format!(
        "{}.check-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(dir, &copy)?;
    let mut sled_records = BTreeMap::new();
    match read_sled(&copy, &mut report) {
        Ok(records) => sled_records = records,
        Err(e) => report.sled_error = Some(e),
    }
    // sled's threads let go of the copy a moment after the last handle is dropped.
    for _ in 0..100 {
        if std::fs::remove_dir_all(&copy).is_ok() || !copy.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(Scan {
        report,
        sled: sled_records,
        carved,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StateError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StateError::Io { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

fn carve_dir(dir: &Path, into: &mut Carved) -> Result<(), StateError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StateError::Io { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            carve_dir(&path, into)?;
        } else {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            frame::carve(&bytes, into);
        }
    }
    Ok(())
}

/// Opens the store read-mostly with sled and returns every intact record.
fn read_sled(dir: &Path, report: &mut Report) -> Result<BTreeMap<Key, Vec<u8>>, String> {
    let opts = StoreOptions {
        cache_capacity_bytes: 8 * 1024 * 1024,
        flush_every: None,
    };
    // sled may panic on some damaged files instead of returning an error.
    let opened = std::panic::catch_unwind(|| Store::open(dir, &opts));
    let store = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("sled panicked while opening the store".into()),
    };
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        let tree = store.tree(kind).map_err(|e| e.to_string())?;
        let (mut ok, mut bad) = (0, 0);
        let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut items = Vec::new();
            for kv in tree.iter() {
                match kv {
                    Ok((k, v)) => items.push(Ok((k.to_vec(), v.to_vec()))),
                    Err(e) => {
                        items.push(Err(e.to_string()));
                        break;
                    }
                }
            }
            items
        }));
        let items = walked.unwrap_or_else(|_| vec![Err("sled panicked while reading".into())]);
        for item in items {
            match item {
                Ok((k, v)) => {
                    let verdict = frame::decode_stored(kind, &k, &v)
                        .map_err(|e| e.to_string())
                        .and_then(|body| validate(kind, &k, body));
                    match verdict {
                        Ok(()) => {
                            ok += 1;
                            out.insert((kind, k), v);
                        }
                        Err(why) => {
                            bad += 1;
                            report.corrupt.push((kind.tree(), key_text(&k), why));
                        }
                    }
                }
                Err(e) => {
                    bad += 1;
                    report
                        .corrupt
                        .push((kind.tree(), "<iteration>".into(), format!("sled: {e}")));
                }
            }
        }
        report.counts.insert(kind.tree(), (ok, bad));
    }
    // Flushes nothing (no writes), releases the lock before repair reopens.
    drop(store);
    Ok(out)
}

/// The live records: sled's intact ones, completed from the raw scan.
struct Live {
    records: BTreeMap<Key, Vec<u8>>,
    known_outbox: BTreeSet<u64>,
    known_ingest: BTreeSet<u64>,
    from_raw: BTreeMap<&'static str, Vec<String>>,
    lost: BTreeMap<&'static str, Vec<String>>,
    lost_outbox: u64,
}

fn meta_value(bytes: &[u8]) -> Option<u64> {
    frame::decode(bytes)
        .ok()
        .and_then(|f| frame::be_u64(f.body))
}

fn live(scan: &Scan) -> Live {
    let mut records = scan.sled.clone();
    let mut from_raw: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    // Carved copies: keep the ones whose body validates; for monotonic meta keys
    // the highest value wins, for everything else sled's copy wins, then the last
    // copy in file order.
    for CarvedFrame {
        kind, key, bytes, ..
    } in &scan.carved.frames
    {
        let Ok(f) = frame::decode(bytes) else {
            continue;
        };
        if validate(*kind, key, f.body).is_err() {
            continue;
        }
        let k = (*kind, key.clone());
        let is_monotonic =
            *kind == Kind::Meta && MONOTONIC.iter().any(|m| m.as_bytes() == key.as_slice());
        match records.get(&k) {
            None => {
                records.insert(k, bytes.clone());
            }
            Some(have) if is_monotonic && meta_value(bytes) > meta_value(have) => {
                records.insert(k, bytes.clone());
            }
            Some(_) => {}
        }
    }
    let meta = |name: &str| {
        records
            .get(&(Kind::Meta, name.as_bytes().to_vec()))
            .and_then(|v| meta_value(v))
            .unwrap_or(0)
    };
    let acked_floor = meta(meta_keys::ACKED).max(meta(meta_keys::DROPPED_THROUGH));
    let compacted = meta(META_COMPACTED);
    let last_seq_meta = meta(meta_keys::LAST);
    let applied = meta(meta_keys::APPLIED);
    let latest = meta(META_LATEST);
    let num = |k: &[u8]| frame::be_u64(k).unwrap_or(0);
    records.retain(|(kind, key), _| match kind {
        Kind::Outbox => num(key) > acked_floor,
        Kind::Ingest => num(key) > compacted,
        _ => true,
    });

    let keys_of = |kind: Kind| -> BTreeSet<u64> {
        records
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, key)| num(key))
            .collect()
    };
    let mut lost: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let outbox = keys_of(Kind::Outbox);
    let last_seq = last_seq_meta.max(outbox.last().copied().unwrap_or(0));
    let known = |key: &[u8]| {
        records
            .get(&(Kind::Kv, key.to_vec()))
            .map(|v| decode_list(v))
            .unwrap_or_default()
    };
    let known_outbox = known(LOST_OUTBOX);
    let known_ingest = known(LOST_INGEST);
    let lost_outbox: Vec<String> = (acked_floor + 1..=last_seq)
        .filter(|s| !outbox.contains(s) && !known_outbox.contains(s))
        .map(|s| s.to_string())
        .collect();
    let ingest = keys_of(Kind::Ingest);
    let last_pos = applied.max(ingest.last().copied().unwrap_or(0));
    let lost_ingest: Vec<String> = (compacted + 1..=last_pos)
        .filter(|p| !ingest.contains(p) && !known_ingest.contains(p))
        .map(|p| p.to_string())
        .collect();
    if latest != 0 && !records.contains_key(&(Kind::Checkpoint, latest.to_be_bytes().to_vec())) {
        lost.entry("checkpoints")
            .or_default()
            .push(latest.to_string());
    }
    // Keys sled reported corrupt and no intact copy replaced.
    for (tree, key, _) in &scan.report.corrupt {
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.tree() == *tree) else {
            continue;
        };
        let found = records
            .keys()
            .any(|(k, kk)| *k == kind && key_text(kk) == *key);
        if !found && matches!(kind, Kind::Kv) {
            lost.entry(tree).or_default().push(key.clone());
        }
    }
    let lost_outbox_n = lost_outbox.len() as u64;
    if !lost_outbox.is_empty() {
        lost.insert("outbox", lost_outbox);
    }
    if !lost_ingest.is_empty() {
        lost.insert("ingest", lost_ingest);
    }
    for (k, _) in records.iter() {
        if !scan.sled.contains_key(k) {
            from_raw.entry(k.0.tree()).or_default().push(key_text(&k.1));
        }
    }
    Live {
        records,
        known_outbox,
        known_ingest,
        from_raw,
        lost,
        lost_outbox: lost_outbox_n,
    }
}

/// Verifies every record; changes nothing.
pub fn check(dir: &Path) -> Result<Report, StateError> {
    let scan = scan(dir)?;
    let live = live(&scan);
    let mut report = scan.report;
    report.previously_lost = (live.known_outbox.len() + live.known_ingest.len()) as u64;
    for (kind, _) in live.records.keys() {
        *report.live.entry(kind.tree()).or_default() += 1;
    }
    // Meta copies the raw scan prefers (higher cursor) are not damage.
    report.recoverable = live
        .from_raw
        .into_iter()
        .filter(|(tree, _)| *tree != "meta")
        .collect();
    report.lost = live.lost;
    Ok(report)
}

/// Salvages every live record into a fresh store and swaps it in.
pub fn repair(dir: &Path) -> Result<Report, StateError> {
    let scan = scan(dir)?;
    let live = live(&scan);
    let mut report = scan.report;
    let dir = dir.to_path_buf();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let fresh = dir.with_file_name(format!("{name}.repair-{stamp}"));
    let aside = dir.with_file_name(format!("{name}.damaged-{stamp}"));
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| StateError::Io { path, source }
    };
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    {
        let store = Store::open(&fresh, &StoreOptions::default())?;
        let mut outbox_bytes = 0u64;
        for ((kind, key), value) in &live.records {
            if *kind == Kind::Outbox {
                outbox_bytes += value.len() as u64;
            }
            store
                .tree(*kind)?
                .insert(key.as_slice(), value.as_slice())?;
            *report.live.entry(kind.tree()).or_default() += 1;
        }
        // Remember the holes, so later checks report them as known.
        let kv = store.tree(Kind::Kv)?;
        let nums = |tree: &str| -> BTreeSet<u64> {
            live.lost
                .get(tree)
                .into_iter()
                .flatten()
                .filter_map(|k| k.parse().ok())
                .collect()
        };
        for (key, known, tree) in [
            (LOST_OUTBOX, &live.known_outbox, "outbox"),
            (LOST_INGEST, &live.known_ingest, "ingest"),
        ] {
            let all: BTreeSet<u64> = known.union(&nums(tree)).copied().collect();
            if !all.is_empty() {
                kv.insert(key, encode_list(key, &all))?;
            }
        }
        let meta = store.tree(Kind::Meta)?;
        meta.insert(meta_keys::BYTES, meta_frame(meta_keys::BYTES, outbox_bytes))?;
        if live.lost_outbox > 0 {
            // Lost records count as dropped, so heartbeats show the loss too.
            let dropped = super::meta_get(&meta, meta_keys::DROPPED)? + live.lost_outbox;
            meta.insert(meta_keys::DROPPED, meta_frame(meta_keys::DROPPED, dropped))?;
        }
        store.flush()?;
    }
    std::fs::rename(&dir, &aside).map_err(io(&dir))?;
    std::fs::rename(&fresh, &dir).map_err(io(&fresh))?;
    report.moved_to = Some(aside);
    report.recoverable = live
        .from_raw
        .into_iter()
        .filter(|(t, _)| *t != "meta")
        .collect();
    report.lost = live.lost;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Bounds, Outbox};
    use crate::state::{Checkpoints, IngestLog, Kv, LogEntry, LogEvent};
    use fieldline_common::payload::Reading;
    use fieldline_common::wire::{DeadLetter, RecordBody, SeriesKey};
    use std::collections::HashMap;

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: 1 << 20,
            flush_every: None,
        }
    }

    /// sled's threads hold the lock for a moment after the last handle is dropped.
    fn wait_unlocked(dir: &Path) {
        for _ in 0..200 {
            if Store::open(dir, &opts()).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("store stays locked");
    }

    /// A store with every kind of record, some acknowledged and compacted away.
    fn populate(dir: &Path) {
        let store = Store::open(dir, &opts()).unwrap();
        let outbox = Outbox::open(&store, Bounds::default()).unwrap();
        let mut log = IngestLog::open(&store).unwrap();
        for b in 0..40u64 {
            let entry = LogEntry {
                pre_tick: None,
                events: (0..5)
                    .map(|i| LogEvent::Reading {
                        arrival_ms: (b * 5 + i) as i64,
                        reading: Reading {
                            series: SeriesKey::new(format!("d{i}"), "t"),
                            ts_ms: (b * 5 + i) as i64,
                            value: b as f64,
                        },
                    })
                    .collect(),
                post_tick: b as i64,
            };
            let (pos, _) = log.append(&entry).unwrap();
            let bodies = (0..3)
                .map(|i| {
                    RecordBody::DeadLetter(DeadLetter {
                        topic: format!("t/{b}/{i}"),
                        payload: vec![b as u8; 20],
                        reason: "r".into(),
                        received_ms: 0,
                    })
                })
                .collect();
            outbox.append_from(Some(pos), bodies, b as i64).unwrap();
            if b == 15 {
                Checkpoints::open(&store)
                    .unwrap()
                    .commit("auto", b"engine-state", pos, outbox.last_seq(), 1)
                    .unwrap();
                log.compact(pos).unwrap();
            }
        }
        outbox.ack(30).unwrap();
        Kv::open(&store)
            .unwrap()
            .put(b"config.applied", b"generation 7", None, 0)
            .unwrap();
        store.flush().unwrap();
    }

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out)
            } else {
                out.push(p)
            }
        }
        out.sort();
    }

    /// Every live record (kind, key) → its frame bytes, as a clean store holds them.
    fn live_records(dir: &Path) -> BTreeMap<Key, Vec<u8>> {
        wait_unlocked(dir);
        // Let the threads of that open finish before the files are read and changed.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let s = scan(dir).unwrap();
        live(&s).records
    }

    #[test]
    fn clean_store_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path());
        wait_unlocked(dir.path());
        let r = check(dir.path()).unwrap();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.live.get("outbox"), Some(&(40 * 3 - 30)));
        assert_eq!(r.live.get("ingest"), Some(&(40 - 16)));
    }

    #[test]
    fn flipped_bytes_are_reported_and_repair_recovers_every_intact_record() {
        for seed in 0..6u64 {
            let dir = tempfile::tempdir().unwrap();
            let store_dir = dir.path().join("state");
            populate(&store_dir);
            let before = live_records(&store_dir);
            let mut rng = fastrand::Rng::with_seed(seed);

            // Where every copy of every frame sits, per file.
            let mut paths = Vec::new();
            files(&store_dir, &mut paths);
            let mut copies: HashMap<Key, Vec<(usize, usize, usize)>> = HashMap::new();
            let mut contents: Vec<Vec<u8>> = Vec::new();
            for (fi, p) in paths.iter().enumerate() {
                let bytes = std::fs::read(p).unwrap();
                let mut c = Carved::default();
                frame::carve(&bytes, &mut c);
                for f in c.frames {
                    copies.entry((f.kind, f.key.clone())).or_default().push((
                        fi,
                        f.offset,
                        f.bytes.len(),
                    ));
                }
                contents.push(bytes);
            }
            // Destroy every copy of a few live outbox and ingest records, one copy of
            // a few others, and flip some bytes anywhere.
            let live_keys: Vec<&Key> = before
                .keys()
                .filter(|k| matches!(k.0, Kind::Outbox | Kind::Ingest))
                .collect();
            let mut destroyed = BTreeSet::new();
            for _ in 0..4 {
                let k = live_keys[rng.usize(..live_keys.len())];
                destroyed.insert(k.clone());
                for &(fi, off, len) in &copies[k] {
                    contents[fi][off + 12 + rng.usize(..len - 12)] ^= 0x40;
                }
            }
            for _ in 0..4 {
                let k = live_keys[rng.usize(..live_keys.len())];
                let c = &copies[k];
                let (fi, off, len) = c[rng.usize(..c.len())];
                if c.len() == 1 {
                    destroyed.insert(k.clone());
                }
                contents[fi][off + rng.usize(..len)] ^= 0x01;
            }
            for _ in 0..3 {
                let fi = rng.usize(..contents.len());
                if contents[fi].is_empty() {
                    continue;
                }
                let at = rng.usize(..contents[fi].len());
                contents[fi][at] ^= 0x80;
            }
            for (p, bytes) in paths.iter().zip(&contents) {
                std::fs::write(p, bytes).unwrap();
            }
            // A record is intact when at least one copy has no flipped byte.
            let intact: BTreeSet<Key> = copies
                .iter()
                .filter(|(_, cs)| {
                    cs.iter()
                        .any(|&(fi, off, len)| frame::decode(&contents[fi][off..off + len]).is_ok())
                })
                .map(|(k, _)| k.clone())
                .collect();
            let want_lost: BTreeSet<Key> = before
                .keys()
                .filter(|k| !intact.contains(*k))
                .cloned()
                .collect();
            assert!(
                !want_lost.is_empty(),
                "seed {seed}: the test destroyed nothing"
            );

            let r = check(&store_dir).unwrap();
            assert!(!r.is_clean(), "seed {seed}: check missed the damage:\n{r}");
            let repaired = repair(&store_dir).unwrap();
            let lost: BTreeSet<(String, String)> = repaired
                .lost
                .iter()
                .flat_map(|(t, ks)| ks.iter().map(move |k| (t.to_string(), k.clone())))
                .collect();
            let want: BTreeSet<(String, String)> = want_lost
                .iter()
                .map(|(k, key)| (k.tree().to_string(), key_text(key)))
                .collect();
            assert_eq!(
                lost, want,
                "seed {seed}: reported loss differs from what was destroyed\n{repaired}"
            );

            wait_unlocked(&store_dir);
            let after = live_records(&store_dir);
            for (k, v) in &before {
                // outbox.bytes and the drop counter are recomputed by repair.
                if intact.contains(k) && k.0 != Kind::Meta {
                    assert_eq!(
                        after.get(k),
                        Some(v),
                        "seed {seed}: intact record {:?} {} not recovered",
                        k.0,
                        key_text(&k.1)
                    );
                }
            }
            let again = check(&store_dir).unwrap();
            assert!(again.is_clean(), "seed {seed}: repaired store:\n{again}");
            assert_eq!(
                again.previously_lost,
                want.len() as u64,
                "seed {seed}: holes remembered"
            );
            // The repaired store opens and the outbox continues above the old seqs.
            let store = Store::open(&store_dir, &opts()).unwrap();
            let ob = Outbox::open(&store, Bounds::default()).unwrap();
            assert_eq!(ob.last_seq(), 120);
        }
    }
}
