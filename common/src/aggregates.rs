//! The named aggregates of a window result (`stddev`, `p99`, ...).
//!
//! A vector sorted by name instead of a `BTreeMap<String, f64>`: the engine builds one
//! per emitted window (60,000 per 300,000 readings in the engine benchmark), and the
//! map cost ~13 allocations and ~2,000 instructions each — a quarter of the engine's
//! time per reading. Names are `Arc<str>` shared with the pipeline's aggregate spec, so
//! building a result allocates the vector only.
//!
//! **Wire format unchanged**: serialized as the map it replaced, keys ascending, so
//! CBOR and JSON bytes (and the golden files) are identical; deserializing accepts any
//! key order and keeps the last of duplicate keys, as the map did.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Aggregate values by name, sorted by name, names unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates(Vec<(Arc<str>, f64)>);

impl Aggregates {
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.find(name).ok().map(|i| self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: impl Into<Arc<str>>, value: f64) -> Option<f64> {
        let name = name.into();
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Appends `name`, which must sort after every name held (the engine walks a spec
    /// sorted and deduplicated once): no name comparison, which on the engine's
    /// per-result path (~9 names a window result) cost more than the push. Checked in
    /// debug builds; a caller that breaks it gets lookups that may miss, never
    /// unsafety. [`Aggregates::insert`] takes names in any order.
    pub fn push(&mut self, name: &Arc<str>, value: f64) {
        debug_assert!(
            self.0.last().is_none_or(|(last, _)| **last < **name),
            "push: {name:?} does not sort after the names held"
        );
        self.0.push((name.clone(), value));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` in ascending name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &f64)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &f64> {
        self.0.iter().map(|(_, v)| v)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }
}

impl std::ops::Index<&str> for Aggregates {
    type Output = f64;

    /// Panics when `name` is absent, as a map's index does.
    fn index(&self, name: &str) -> &f64 {
        match self.find(name) {
            Ok(i) => &self.0[i].1,
            Err(_) => panic!("no aggregate named {name:?}"),
        }
    }
}

impl<'a> IntoIterator for &'a Aggregates {
    type Item = (&'a str, &'a f64);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, f64)>,
        fn(&'a (Arc<str>, f64)) -> (&'a str, &'a f64),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

impl<K: Into<Arc<str>>> FromIterator<(K, f64)> for Aggregates {
    fn from_iter<I: IntoIterator<Item = (K, f64)>>(iter: I) -> Self {
        let mut out = Self::default();
        for (k, v) in iter {
            out.insert(k, v);
        }
        out
    }
}

impl Serialize for Aggregates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Aggregates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> Visitor<'de> for Map {
            type Value = Aggregates;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of aggregate names to numbers")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Aggregates, A::Error> {
                let mut out = Aggregates::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = map.next_entry::<String, f64>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Same bytes as the map it replaced, in CBOR and JSON, and the same map back
        /// from any key order (duplicates: the last wins, as in a map).
        #[test]
        fn encodes_and_decodes_as_the_map(entries in proptest::collection::vec(("[a-z]{1,6}", -1e9f64..1e9), 0..12)) {
            let map: BTreeMap<String, f64> = entries.iter().cloned().collect();
            let ours: Aggregates = entries.iter().cloned().collect();
            prop_assert_eq!(ours.len(), map.len());
            prop_assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&map).unwrap());
            prop_assert_eq!(serde_cbor::to_vec(&ours).unwrap(), serde_cbor::to_vec(&map).unwrap());
            let unsorted: Vec<(String, f64)> = entries.iter().rev().cloned().collect();
            let json = format!("{{{}}}", unsorted.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect::<Vec<_>>().join(","));
            let back: Aggregates = serde_json::from_str(&json).unwrap();
            let expect: BTreeMap<String, f64> = unsorted.into_iter().collect();
            prop_assert_eq!(back.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>(), expect.into_iter().collect::<Vec<_>>());
            for (k, v) in &map {
                prop_assert_eq!(ours.get(k), Some(*v));
                prop_assert_eq!(ours[k.as_str()], *v);
            }
            prop_assert_eq!(ours.get("NOT-A-KEY"), None);
        }

        /// `push` of ascending names gives the sorted, unique result `insert` gives in
        /// any order.
        #[test]
        fn push_keeps_names_sorted(names in proptest::collection::vec("[a-c]{1,2}", 0..10)) {
            let mut ascending = names.clone();
            ascending.sort();
            ascending.dedup();
            let mut pushed = Aggregates::default();
            for n in &ascending {
                pushed.push(&Arc::from(n.as_str()), n.len() as f64);
            }
            let inserted: Aggregates = names.iter().rev().map(|n| (n.as_str(), n.len() as f64)).collect();
            prop_assert_eq!(pushed, inserted);
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "does not sort after")]
    fn push_out_of_order_is_caught_in_debug_builds() {
        let mut a = Aggregates::default();
        a.push(&Arc::from("p99"), 1.0);
        a.push(&Arc::from("p50"), 2.0);
    }

    #[test]
    fn rejects_a_non_numeric_value() {
        let err = serde_json::from_str::<Aggregates>(r#"{"p99": "high"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
