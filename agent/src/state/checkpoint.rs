//! Checkpoints: engine state + ingest-log position + outbox `seq`, committed in one
//! sled transaction together with the `latest` pointer.
//!
//! Key = id u64 big-endian (ids strictly increase, never reused). Body, big-endian:
//! `name str16 | created_ms i64 | ingest_pos u64 | outbox_seq u64 | state bytes32`.
//! Automatic checkpoints are named `auto` and only the newest few are kept; named
//! ones stay until deleted.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::frame::{self, Kind};
use super::{meta_frame, meta_get, StateError, Store};

pub(crate) const META_LAST_ID: &str = "checkpoint.last_id";
pub(crate) const META_LATEST: &str = "checkpoint.latest";
/// Name of the checkpoints the agent takes by itself.
pub const AUTO: &str = "auto";
/// Automatic checkpoints kept besides the newest one (for `state restore`).
const KEEP_AUTO: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub id: u64,
    pub name: String,
    pub created_ms: i64,
    /// Every ingest-log entry up to here is reflected in the state.
    pub ingest_pos: u64,
    /// The outbox's last assigned `seq` when the checkpoint was taken.
    pub outbox_seq: u64,
    pub state_bytes: usize,
}

#[derive(Clone)]
pub struct Checkpoints {
    tree: sled::Tree,
    meta: sled::Tree,
}

impl Checkpoints {
    pub fn open(store: &Store) -> Result<Self, StateError> {
        Ok(Self {
            tree: store.tree(Kind::Checkpoint)?,
            meta: store.tree(Kind::Meta)?,
        })
    }

    /// Stores a checkpoint and makes it the one the next start restores.
    pub fn commit(
        &self,
        name: &str,
        state: &[u8],
        ingest_pos: u64,
        outbox_seq: u64,
        now_ms: i64,
    ) -> Result<u64, StateError> {
        let mut body = Vec::with_capacity(40 + name.len() + state.len());
        let name16 = u16::try_from(name.len())
            .map_err(|_| StateError::Encode("checkpoint name too long".into()))?;
        body.extend_from_slice(&name16.to_be_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&now_ms.to_be_bytes());
        body.extend_from_slice(&ingest_pos.to_be_bytes());
        body.extend_from_slice(&outbox_seq.to_be_bytes());
        let len = u32::try_from(state.len())
            .map_err(|_| StateError::Encode("checkpoint state over 4 GiB".into()))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(state);

        let id = meta_get(&self.meta, META_LAST_ID)? + 1;
        let key = id.to_be_bytes();
        let value = frame::encode(Kind::Checkpoint, &key, &body);
        (&self.tree, &self.meta)
            .transaction(|(t, m)| {
                t.insert(&key, value.as_slice())?;
                m.insert(META_LAST_ID, meta_frame(META_LAST_ID, id))?;
                m.insert(META_LATEST, meta_frame(META_LATEST, id))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StateError::Store(e),
                TransactionError::Abort(()) => StateError::Encode("checkpoint aborted".into()),
            })?;
        if name == AUTO {
            self.prune_auto(id)?;
        }
        Ok(id)
    }

    fn prune_auto(&self, newest: u64) -> Result<(), StateError> {
        let mut autos: Vec<u64> = self
            .list()?
            .into_iter()
            .filter(|c| c.name == AUTO && c.id != newest)
            .map(|c| c.id)
            .collect();
        autos.sort_unstable();
        let excess = autos.len().saturating_sub(KEEP_AUTO);
        for id in &autos[..excess] {
            self.tree.remove(id.to_be_bytes())?;
        }
        Ok(())
    }

    /// The checkpoint the next start restores, with its state.
    pub fn latest(&self) -> Result<Option<(CheckpointInfo, Vec<u8>)>, StateError> {
        let id = meta_get(&self.meta, META_LATEST)?;
        if id == 0 {
            return Ok(None);
        }
        self.get(id).map(Some)
    }

    /// Makes `id` the checkpoint the next start restores (the seed's `restore(id)`
    /// for a stopped agent); returns it.
    pub fn select(&self, id: u64) -> Result<CheckpointInfo, StateError> {
        let (info, _) = self.get(id)?;
        self.meta.insert(META_LATEST, meta_frame(META_LATEST, id))?;
        Ok(info)
    }

    pub fn get(&self, id: u64) -> Result<(CheckpointInfo, Vec<u8>), StateError> {
        let key = id.to_be_bytes();
        let v = self.tree.get(key)?.ok_or(StateError::NoCheckpoint(id))?;
        decode(id, &v)
    }

    pub fn list(&self) -> Result<Vec<CheckpointInfo>, StateError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = frame::be_u64(&k)
                    .ok_or_else(|| StateError::corrupt("checkpoints", &k, "key is not a u64"))?;
                Ok(decode(id, &v)?.0)
            })
            .collect()
    }

    /// Deletes a checkpoint; the latest one cannot be deleted (the next start needs it).
    pub fn delete(&self, id: u64) -> Result<bool, StateError> {
        if id == meta_get(&self.meta, META_LATEST)? {
            return Err(StateError::Encode(format!(
                "checkpoint {id} is the one the next start restores; take or select another first"
            )));
        }
        Ok(self.tree.remove(id.to_be_bytes())?.is_some())
    }
}

pub(crate) fn decode(id: u64, v: &[u8]) -> Result<(CheckpointInfo, Vec<u8>), StateError> {
    let key = id.to_be_bytes();
    let body = frame::decode_stored(Kind::Checkpoint, &key, v)
        .map_err(|e| StateError::corrupt("checkpoints", &key, e))?;
    decode_body(id, body).map_err(|e| StateError::corrupt("checkpoints", &key, e))
}

fn decode_body(id: u64, b: &[u8]) -> Result<(CheckpointInfo, Vec<u8>), String> {
    let short = || "truncated checkpoint".to_string();
    let take =
        |b: &[u8], at: usize, n: usize| b.get(at..at + n).map(<[u8]>::to_vec).ok_or_else(short);
    let u = |bytes: Vec<u8>| frame::be_u64(&bytes).ok_or_else(short);
    let name_len = u16::from_be_bytes(take(b, 0, 2)?.try_into().map_err(|_| short())?) as usize;
    let name =
        String::from_utf8(take(b, 2, name_len)?).map_err(|_| "name is not utf-8".to_string())?;
    let mut at = 2 + name_len;
    let created_ms = u(take(b, at, 8)?)? as i64;
    at += 8;
    let ingest_pos = u(take(b, at, 8)?)?;
    at += 8;
    let outbox_seq = u(take(b, at, 8)?)?;
    at += 8;
    let len = u32::from_be_bytes(take(b, at, 4)?.try_into().map_err(|_| short())?) as usize;
    at += 4;
    let state = take(b, at, len)?;
    if at + len != b.len() {
        return Err("trailing bytes after checkpoint state".into());
    }
    Ok((
        CheckpointInfo {
            id,
            name,
            created_ms,
            ingest_pos,
            outbox_seq,
            state_bytes: len,
        },
        state,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_restore_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let cps = Checkpoints::open(&store).unwrap();
        assert!(cps.latest().unwrap().is_none());
        let a = cps.commit("before-upgrade", b"state-a", 10, 4, 1).unwrap();
        let b = cps.commit(AUTO, b"state-b", 12, 7, 2).unwrap();
        assert!(b > a);
        let (info, state) = cps.latest().unwrap().unwrap();
        assert_eq!(
            (info.id, info.ingest_pos, info.outbox_seq, state.as_slice()),
            (b, 12, 7, &b"state-b"[..])
        );
        assert!(cps.delete(b).is_err(), "the latest checkpoint is protected");
        cps.select(a).unwrap();
        assert_eq!(cps.latest().unwrap().unwrap().1, b"state-a");
        assert!(cps.delete(b).unwrap());
        assert_eq!(
            cps.list().unwrap().iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![a]
        );
        for i in 0..6 {
            cps.commit(AUTO, &[i], 20 + i as u64, 0, 3).unwrap();
        }
        let autos = cps
            .list()
            .unwrap()
            .into_iter()
            .filter(|c| c.name == AUTO)
            .count();
        assert_eq!(autos, KEEP_AUTO + 1, "old automatic checkpoints are pruned");
        assert!(
            cps.list().unwrap().iter().any(|c| c.id == a),
            "named ones are kept"
        );
    }
}
