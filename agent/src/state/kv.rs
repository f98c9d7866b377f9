//! Keyed state with a per-key time to live (the seed's state API), e.g. the applied
//! config or per-series detector memory that should not outlive a removed sensor.
//!
//! Body, big-endian: `expires_ms i64 (i64::MAX = never) | value`. An expired key
//! reads as absent at once and is deleted by [`Kv::purge_expired`].

use std::time::Duration;

use super::frame::{self, Kind};
use super::{StateError, Store};

#[derive(Clone)]
pub struct Kv {
    tree: sled::Tree,
}

impl Kv {
    pub fn open(store: &Store) -> Result<Self, StateError> {
        Ok(Self {
            tree: store.tree(Kind::Kv)?,
        })
    }

    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let expires = ttl.map_or(i64::MAX, |t| {
            now_ms.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        });
        let mut body = Vec::with_capacity(8 + value.len());
        body.extend_from_slice(&expires.to_be_bytes());
        body.extend_from_slice(value);
        self.tree.insert(key, frame::encode(Kind::Kv, key, &body))?;
        Ok(())
    }

    pub fn get(&self, key: &[u8], now_ms: i64) -> Result<Option<Vec<u8>>, StateError> {
        let Some(v) = self.tree.get(key)? else {
            return Ok(None);
        };
        let (expires, value) = decode(key, &v)?;
        Ok((expires > now_ms).then(|| value.to_vec()))
    }

    pub fn remove(&self, key: &[u8]) -> Result<bool, StateError> {
        Ok(self.tree.remove(key)?.is_some())
    }

    /// Deletes every expired key; returns how many.
    pub fn purge_expired(&self, now_ms: i64) -> Result<usize, StateError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if decode(&k, &v)?.0 <= now_ms {
                batch.remove(k);
                n += 1;
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
    }
}

fn decode<'a>(key: &[u8], v: &'a [u8]) -> Result<(i64, &'a [u8]), StateError> {
    let body =
        frame::decode_stored(Kind::Kv, key, v).map_err(|e| StateError::corrupt("kv", key, e))?;
    if body.len() < 8 {
        return Err(StateError::corrupt("kv", key, "shorter than its expiry"));
    }
    let expires = i64::from_be_bytes(body[..8].try_into().unwrap_or_default());
    Ok((expires, &body[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_after_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let kv = Kv::open(&store).unwrap();
        kv.put(b"config.applied", b"gen=3", None, 0).unwrap();
        kv.put(b"series/a", b"x", Some(Duration::from_secs(10)), 1_000)
            .unwrap();
        assert_eq!(
            kv.get(b"series/a", 10_999).unwrap().as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(kv.get(b"series/a", 11_000).unwrap(), None);
        assert_eq!(kv.purge_expired(11_000).unwrap(), 1);
        assert_eq!(
            kv.get(b"config.applied", i64::MAX - 1).unwrap().as_deref(),
            Some(&b"gen=3"[..])
        );
        assert!(kv.remove(b"config.applied").unwrap());
    }
}
