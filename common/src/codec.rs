//! CBOR encoding of wire messages. The only module that names serde_cbor
//! (unmaintained, RUSTSEC-2021-0127, but stable): swapping it touches this file only.

use serde::{de::DeserializeOwned, Serialize};

/// Upper bound for any CBOR message we accept; callers may pass a smaller one.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid cbor: {0}")]
    Invalid(String),
    #[error("cannot encode cbor: {0}")]
    Encode(String),
}

pub fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one CBOR message, refusing inputs over `limit` bytes and trailing garbage.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_cbor::from_slice(bytes).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Like [`from_cbor`], for types that borrow strings from `bytes` (sensor payloads
/// decoded on the hot path without copying their keys).
pub fn from_cbor_borrowed<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    limit: usize,
) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    serde_cbor::from_slice(bytes).map_err(|e| CodecError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::*;
    use proptest::prelude::*;

    fn arb_series() -> impl Strategy<Value = SeriesKey> {
        ("[a-z0-9_-]{1,12}", "[a-z0-9_.-]{1,12}").prop_map(|(d, m)| SeriesKey::new(d, m))
    }

    fn arb_body() -> impl Strategy<Value = RecordBody> {
        prop_oneof![
            (
                arb_series(),
                any::<i64>(),
                0u64..1_000_000,
                any::<f64>(),
                any::<u32>()
            )
                .prop_map(|(series, start, count, x, revision)| {
                    RecordBody::Window(WindowResult {
                        series,
                        start_ms: start,
                        end_ms: start.saturating_add(1000),
                        count,
                        sum: x,
                        mean: x / 2.0,
                        min: -x,
                        max: x,
                        revision,
                        pipeline: "p".into(),
                        aggregates: [("p99".to_string(), x)].into_iter().collect(),
                        // Both shapes: with a unit and without (field left out).
                        unit: if revision % 2 == 0 {
                            "°C".into()
                        } else {
                            String::new()
                        },
                    })
                }),
            (
                ".{0,40}",
                proptest::collection::vec(any::<u8>(), 0..200),
                ".{0,40}",
                any::<i64>()
            )
                .prop_map(|(topic, payload, reason, received_ms)| {
                    RecordBody::DeadLetter(DeadLetter {
                        topic,
                        payload,
                        reason,
                        received_ms,
                    })
                }),
        ]
    }

    fn same(a: &IngestBatch, b: &IngestBatch) -> bool {
        // NaN != NaN, so compare through the encoding, which is canonical for equal values.
        to_cbor(a).ok() == to_cbor(b).ok()
    }

    proptest! {
        #[test]
        fn batch_round_trips(
            agent in "[a-z0-9-]{1,20}",
            bodies in proptest::collection::vec(arb_body(), 0..20),
        ) {
            let records = bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| Record { seq: i as u64 + 1, created_ms: 7, body })
                .collect();
            let batch = IngestBatch { v: PROTOCOL_VERSION, agent_id: agent, records };
            let bytes = to_cbor(&batch).unwrap();
            let back: IngestBatch = from_cbor(&bytes, MAX_MESSAGE_BYTES).unwrap();
            prop_assert!(same(&batch, &back));
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = from_cbor::<IngestBatch>(&bytes, MAX_MESSAGE_BYTES);
            let _ = from_cbor::<Heartbeat>(&bytes, MAX_MESSAGE_BYTES);
        }

        #[test]
        fn truncated_batch_is_an_error(cut in 0usize..100) {
            let batch = IngestBatch {
                v: PROTOCOL_VERSION,
                agent_id: "a".into(),
                records: vec![Record {
                    seq: 1,
                    created_ms: 1,
                    body: RecordBody::Window(WindowResult {
                        series: SeriesKey::new("d", "m"),
                        start_ms: 0, end_ms: 1000, count: 1, sum: 1.0, mean: 1.0, min: 1.0, max: 1.0, revision: 0, pipeline: Default::default(), aggregates: Default::default(), unit: String::new(),
                    }),
                }],
            };
            let bytes = to_cbor(&batch).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(from_cbor::<IngestBatch>(&bytes[..cut], MAX_MESSAGE_BYTES).is_err());
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let err = from_cbor::<IngestBatch>(&[0u8; 100], 10).unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLarge {
                size: 100,
                limit: 10
            }
        ));
    }
}
