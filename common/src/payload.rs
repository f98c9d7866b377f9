//! Sensor payload decoding.
//!
//! Accepted today: a JSON object `{"value": 21.5, "ts": 1732200000000}` (`ts`
//! optional: ms since the epoch, or seconds when below 10^11) and a bare number
//! (`21.5`). Anything else is a [`DecodeError`] that the agent turns into a dead
//! letter; decoding never panics.

use crate::wire::SeriesKey;

/// One decoded measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub series: SeriesKey,
    /// Event time, ms since the Unix epoch.
    pub ts_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload is not utf-8")]
    NotUtf8,
    #[error("payload is neither a number nor a json object: {0}")]
    Unrecognised(String),
    #[error("json object has no numeric `value` field")]
    MissingValue,
    #[error("`value` is not a finite number")]
    NotFinite,
    #[error("`ts` must be a non-negative number of ms or s since the epoch")]
    BadTimestamp,
}

/// Timestamps below this are taken as seconds: 10^11 ms is 1973, 10^11 s is year 5138.
const SECONDS_CUTOFF: f64 = 1e11;

/// Decodes `payload` for `series`; `arrival_ms` is used when the payload has no `ts`.
pub fn decode(series: SeriesKey, payload: &[u8], arrival_ms: i64) -> Result<Reading, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(DecodeError::Empty);
    }
    if text.starts_with('{') {
        return decode_object(series, text, arrival_ms);
    }
    let value: f64 = text
        .parse()
        .map_err(|_| DecodeError::Unrecognised(preview(text)))?;
    finite(value)?;
    Ok(Reading {
        series,
        ts_ms: arrival_ms,
        value,
    })
}

fn decode_object(series: SeriesKey, text: &str, arrival_ms: i64) -> Result<Reading, DecodeError> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| DecodeError::Unrecognised(e.to_string()))?;
    let value = obj
        .get("value")
        .and_then(serde_json::Value::as_f64)
        .ok_or(DecodeError::MissingValue)?;
    finite(value)?;
    let ts_ms = match obj.get("ts") {
        None | Some(serde_json::Value::Null) => arrival_ms,
        Some(ts) => {
            let ts = ts.as_f64().ok_or(DecodeError::BadTimestamp)?;
            if !ts.is_finite() || ts < 0.0 {
                return Err(DecodeError::BadTimestamp);
            }
            if ts < SECONDS_CUTOFF {
                (ts * 1000.0).round() as i64
            } else {
                ts.round() as i64
            }
        }
    };
    Ok(Reading {
        series,
        ts_ms,
        value,
    })
}

fn finite(v: f64) -> Result<(), DecodeError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(DecodeError::NotFinite)
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("`{s}`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SeriesKey {
        SeriesKey::new("dev1", "temp")
    }

    #[track_caller]
    fn check(payload: &str, expected: Result<(i64, f64), DecodeError>) {
        let got = decode(key(), payload.as_bytes(), 5_000).map(|r| (r.ts_ms, r.value));
        assert_eq!(got, expected, "payload {payload:?}");
    }

    #[test]
    fn accepted_forms() {
        check("21.5", Ok((5_000, 21.5)));
        check("  -3 \n", Ok((5_000, -3.0)));
        check(
            r#"{"value": 21.5, "ts": 1732200000000}"#,
            Ok((1_732_200_000_000, 21.5)),
        );
        check(
            r#"{"value": 1, "ts": 1732200000}"#,
            Ok((1_732_200_000_000, 1.0)),
        );
        check(r#"{"value": 1.25}"#, Ok((5_000, 1.25)));
        check(r#"{"value": 2, "ts": null, "unit": "C"}"#, Ok((5_000, 2.0)));
    }

    #[test]
    fn rejected_forms() {
        check("", Err(DecodeError::Empty));
        check("NaN", Err(DecodeError::NotFinite));
        check("inf", Err(DecodeError::NotFinite));
        check(r#"{"v": 1}"#, Err(DecodeError::MissingValue));
        check(r#"{"value": "1"}"#, Err(DecodeError::MissingValue));
        check(r#"{"value": 1, "ts": -5}"#, Err(DecodeError::BadTimestamp));
        check(
            r#"{"value": 1, "ts": "now"}"#,
            Err(DecodeError::BadTimestamp),
        );
        assert!(matches!(
            decode(key(), b"hello", 0),
            Err(DecodeError::Unrecognised(_))
        ));
        assert!(matches!(
            decode(key(), b"{\"value\":", 0),
            Err(DecodeError::Unrecognised(_))
        ));
        assert_eq!(decode(key(), &[0xff, 0xfe], 0), Err(DecodeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = decode(key(), &bytes, 0) {
                prop_assert!(r.value.is_finite());
            }
        }

        #[test]
        fn numbers_round_trip(v in proptest::num::f64::NORMAL | proptest::num::f64::ZERO, ts in 100_000_000_000i64..4_000_000_000_000) {
            let json = format!(r#"{{"value": {v:?}, "ts": {ts}}}"#);
            let r = decode(key(), json.as_bytes(), 0).unwrap();
            prop_assert_eq!(r.value, v);
            prop_assert_eq!(r.ts_ms, ts);
            let bare = decode(key(), format!("{v:?}").as_bytes(), 9).unwrap();
            prop_assert_eq!(bare.value, v);
            prop_assert_eq!(bare.ts_ms, 9);
        }
    }
}
