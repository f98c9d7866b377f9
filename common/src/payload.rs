//! Sensor payload decoding: one MQTT payload → zero or more [`Reading`]s.
//!
//! The format is recognised from the first byte, so one topic may mix them:
//! - JSON object `{"value": 21.5, "ts": …}` → one reading for the topic's series;
//! - JSON object without `value`, e.g. `{"temp": 21.5, "rh": 40, "ts": …}` → one
//!   reading per numeric field, metric `<topic metric>.<field>`;
//! - JSON array → SenML (RFC 8428), metric = resolved name (base name + name);
//! - CBOR map / CBOR array → the same as the JSON object / SenML CBOR;
//! - a bare number in text (`21.5`) or a bare CBOR number.
//!
//! `ts` is ms since the epoch, or seconds when below 10^11, or an RFC 3339 string;
//! without it the agent's arrival time is used. Anything else is a [`DecodeError`]
//! that the agent turns into a dead letter; decoding never panics.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::senml;
use crate::wire::SeriesKey;

/// One decoded measurement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    #[error("payload is neither a number nor a json object (or array, or cbor): {0}")]
    Unrecognised(String),
    #[error("json object has no numeric `value` field and no other numeric field")]
    MissingValue,
    #[error("`value` is not a finite number")]
    NotFinite,
    #[error("`ts` must be a non-negative number of ms or s since the epoch or an RFC 3339 time")]
    BadTimestamp,
    #[error("object has more than {MAX_FIELDS} numeric fields")]
    TooManyFields,
    #[error(transparent)]
    Senml(#[from] senml::SenmlError),
    #[error("senml pack has no numeric value")]
    NoNumericSenml,
}

/// Most series one multi-field object may produce.
pub const MAX_FIELDS: usize = 256;

/// Timestamps below this are taken as seconds: 10^11 ms is 1973, 10^11 s is year 5138.
const SECONDS_CUTOFF: f64 = 1e11;

/// Decodes `payload` for `series`; `arrival_ms` is used when the payload has no time.
pub fn decode(
    series: &SeriesKey,
    payload: &[u8],
    arrival_ms: i64,
) -> Result<Vec<Reading>, DecodeError> {
    let mut out = Vec::with_capacity(1);
    decode_into(series, payload, arrival_ms, &mut out)?;
    Ok(out)
}

/// Like [`decode`], appending to `out`; on error `out` is left as it was.
pub fn decode_into(
    series: &SeriesKey,
    payload: &[u8],
    arrival_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    decode_owned(series.clone(), payload, arrival_ms, out)
}

/// Like [`decode_into`], taking the series by value: the hot path (one reading per
/// message) then moves it instead of copying its strings.
pub fn decode_owned(
    series: SeriesKey,
    payload: &[u8],
    arrival_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let before = out.len();
    let r = decode_inner(series, payload, arrival_ms, out);
    if r.is_err() {
        out.truncate(before);
    }
    r
}

fn decode_inner(
    series: SeriesKey,
    payload: &[u8],
    arrival_ms: i64,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let Some(&first) = payload.first() else {
        return Err(DecodeError::Empty);
    };
    match first {
        // CBOR map (major type 5).
        0xa0..=0xbf => {
            let obj = match small_cbor_map(payload) {
                Some(obj) => obj,
                None => cbor_object(payload)?,
            };
            return obj.into_readings(series, arrival_ms, out);
        }
        // CBOR array (major type 4): SenML CBOR.
        0x80..=0x9f => {
            let pack = senml::parse_cbor(payload, arrival_ms)?;
            return senml_readings(&series, pack, out);
        }
        _ => {}
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        // A bare CBOR number (float or integer).
        return match crate::codec::from_cbor_borrowed::<f64>(payload, 16) {
            Ok(v) => push(out, series, arrival_ms, v),
            Err(_) => Err(DecodeError::NotUtf8),
        };
    };
    let text = text.trim();
    match text.as_bytes().first() {
        None => Err(DecodeError::Empty),
        Some(b'{') => {
            let obj: Object<'_> =
                serde_json::from_str(text).map_err(|e| DecodeError::Unrecognised(e.to_string()))?;
            obj.into_readings(series, arrival_ms, out)
        }
        Some(b'[') => {
            let pack = senml::parse_json(text.as_bytes(), arrival_ms)?;
            senml_readings(&series, pack, out)
        }
        Some(_) => {
            let value: f64 = text
                .parse()
                .map_err(|_| DecodeError::Unrecognised(preview(text)))?;
            push(out, series, arrival_ms, value)
        }
    }
}

fn cbor_object(payload: &[u8]) -> Result<Object<'_>, DecodeError> {
    crate::codec::from_cbor_borrowed(payload, usize::MAX)
        .map_err(|e| DecodeError::Unrecognised(format!("cbor: {e}")))
}

/// The shape nearly every CBOR sensor sends, `{"value": number, "ts": number}` (either
/// key optional), read directly: serde_cbor's generic deserializer spends ~500
/// instructions on it, a third of the engine's decode cost. `None` for anything else
/// (other keys, strings, half floats, indefinite lengths, trailing bytes), which then
/// takes the general path; where both apply they give the same `Object` (tested).
fn small_cbor_map(b: &[u8]) -> Option<Object<'static>> {
    let entries = match *b.first()? {
        n @ 0xa1..=0xa2 => usize::from(n - 0xa0),
        _ => return None,
    };
    let mut obj = Object::default();
    let mut i = 1;
    for _ in 0..entries {
        let key_len = usize::from(b.get(i)?.checked_sub(0x60).filter(|l| *l < 24)?);
        let key = b.get(i + 1..i + 1 + key_len)?;
        i += 1 + key_len;
        let (v, used) = cbor_number(b.get(i..)?)?;
        i += used;
        match key {
            b"value" => obj.value = Some(Field::Num(v)),
            b"ts" => obj.ts = Some(Field::Num(v)),
            _ => return None,
        }
    }
    (i == b.len()).then_some(obj)
}

/// One CBOR integer or single/double float at the start of `b`, as serde_cbor hands it
/// to the visitor (`u64`/`i64` converted with `as f64`), and the bytes it took.
fn cbor_number(b: &[u8]) -> Option<(f64, usize)> {
    let head = *b.first()?;
    let arg = |len: usize| -> Option<u64> {
        let bytes = b.get(1..1 + len)?;
        Some(bytes.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    };
    let (major, info) = (head >> 5, head & 0x1f);
    let (n, used) = match info {
        0..=23 => (u64::from(info), 1),
        24 => (arg(1)?, 2),
        25 => (arg(2)?, 3),
        26 => (arg(4)?, 5),
        27 => (arg(8)?, 9),
        _ => return None,
    };
    match (major, info) {
        (0, _) => Some((n as f64, used)),
        (1, _) => i64::try_from(n).ok().map(|n| ((-1 - n) as f64, used)),
        (7, 26) => Some((f64::from(f32::from_bits(n as u32)), used)),
        (7, 27) => Some((f64::from_bits(n), used)),
        _ => None,
    }
}

fn push(
    out: &mut Vec<Reading>,
    series: SeriesKey,
    ts_ms: i64,
    value: f64,
) -> Result<(), DecodeError> {
    if !value.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    out.push(Reading {
        series,
        ts_ms,
        value,
    });
    Ok(())
}

fn senml_readings(
    series: &SeriesKey,
    pack: Vec<senml::Resolved>,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let before = out.len();
    for r in pack {
        if let senml::Value::Number(v) = r.value {
            let metric = if r.name.is_empty() {
                series.metric.clone()
            } else {
                r.name.into()
            };
            push(
                out,
                SeriesKey {
                    device: series.device.clone(),
                    metric,
                },
                r.time_ms,
                v,
            )?;
        }
    }
    if out.len() == before {
        return Err(DecodeError::NoNumericSenml);
    }
    Ok(())
}

/// Parses RFC 3339 (`2024-11-21T14:00:00.250Z`, `…+01:00`) into ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > crate::civil::days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = crate::civil::days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec.min(59) - offset_s;
    Some(secs * 1000 + frac_ms)
}

fn ts_from_number(ts: f64) -> Result<i64, DecodeError> {
    if !(0.0..=1e15).contains(&ts) {
        return Err(DecodeError::BadTimestamp);
    }
    Ok(if ts < SECONDS_CUTOFF {
        (ts * 1000.0).round() as i64
    } else {
        ts.round() as i64
    })
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("`{s}`")
}

/// A JSON or CBOR object, keys borrowed from the payload where possible.
#[derive(Default)]
struct Object<'a> {
    value: Option<Field<'a>>,
    ts: Option<Field<'a>>,
    fields: Vec<(Cow<'a, str>, f64)>,
    non_finite_field: bool,
    too_many: bool,
}

enum Field<'a> {
    Num(f64),
    Text(Cow<'a, str>),
    Null,
    Other,
}

impl Object<'_> {
    fn into_readings(
        self,
        series: SeriesKey,
        arrival_ms: i64,
        out: &mut Vec<Reading>,
    ) -> Result<(), DecodeError> {
        let ts_ms = match self.ts {
            None | Some(Field::Null) => arrival_ms,
            Some(Field::Num(ts)) => ts_from_number(ts)?,
            Some(Field::Text(t)) => parse_rfc3339_ms(&t)
                .filter(|ms| *ms >= 0)
                .ok_or(DecodeError::BadTimestamp)?,
            Some(Field::Other) => return Err(DecodeError::BadTimestamp),
        };
        match self.value {
            Some(Field::Num(v)) => return push(out, series, ts_ms, v),
            Some(_) => return Err(DecodeError::MissingValue),
            None => {}
        }
        if self.too_many {
            return Err(DecodeError::TooManyFields);
        }
        if self.non_finite_field {
            return Err(DecodeError::NotFinite);
        }
        if self.fields.is_empty() {
            return Err(DecodeError::MissingValue);
        }
        for (name, v) in self.fields {
            push(
                out,
                SeriesKey {
                    device: series.device.clone(),
                    metric: compact_str::format_compact!("{}.{name}", series.metric),
                },
                ts_ms,
                v,
            )?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'de>, E> {
                Ok(Field::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(Field::Num(v as f64))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Field<'de>, E> {
                Ok(Field::Num(v as f64))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Field<'de>, E> {
                Ok(Field::Num(v as f64))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Owned(s.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
                Field::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Field<'de>, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut obj = Object::default();
                while let Some(key) = map.next_key::<Field<'de>>()? {
                    let Field::Text(key) = key else {
                        // Non-text keys (CBOR integers) carry nothing we know.
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    let value: Field<'de> = map.next_value()?;
                    match &*key {
                        "value" => obj.value = Some(value),
                        "ts" => obj.ts = Some(value),
                        _ => {
                            if let Field::Num(v) = value {
                                if !v.is_finite() {
                                    obj.non_finite_field = true;
                                } else if obj.fields.len() == MAX_FIELDS {
                                    obj.too_many = true;
                                } else {
                                    obj.fields.push((key, v));
                                }
                            }
                        }
                    }
                }
                Ok(obj)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SeriesKey {
        SeriesKey::new("dev1", "temp")
    }

    #[track_caller]
    fn check(payload: &[u8], expected: Result<Vec<(&str, i64, f64)>, DecodeError>) {
        let got = decode(&key(), payload, 5_000).map(|rs| {
            rs.into_iter()
                .map(|r| (r.series.metric, r.ts_ms, r.value))
                .collect::<Vec<_>>()
        });
        let expected = expected.map(|v| {
            v.into_iter()
                .map(|(m, t, x)| (m.into(), t, x))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            got,
            expected,
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
    }

    #[test]
    fn accepted_forms() {
        check(b"21.5", Ok(vec![("temp", 5_000, 21.5)]));
        check(b"  -3 \n", Ok(vec![("temp", 5_000, -3.0)]));
        check(
            br#"{"value": 21.5, "ts": 1732200000000}"#,
            Ok(vec![("temp", 1_732_200_000_000, 21.5)]),
        );
        check(
            br#"{"value": 1, "ts": 1732200000}"#,
            Ok(vec![("temp", 1_732_200_000_000, 1.0)]),
        );
        check(
            br#"{"value": 1, "ts": 1732200000.25}"#,
            Ok(vec![("temp", 1_732_200_000_250, 1.0)]),
        );
        check(
            br#"{"value": 1, "ts": "2024-11-21T14:40:00.250Z"}"#,
            Ok(vec![("temp", 1_732_200_000_250, 1.0)]),
        );
        check(
            br#"{"value": 1, "ts": "2024-11-21T15:40:00+01:00"}"#,
            Ok(vec![("temp", 1_732_200_000_000, 1.0)]),
        );
        check(br#"{"value": 1.25}"#, Ok(vec![("temp", 5_000, 1.25)]));
        check(
            br#"{"value": 2, "ts": null, "unit": "C", "meta": {"a": [1]}}"#,
            Ok(vec![("temp", 5_000, 2.0)]),
        );
    }

    #[test]
    fn multi_field_object_gives_one_series_per_numeric_field() {
        check(
            br#"{"t": 21.5, "rh": 40, "label": "x", "ok": true, "ts": 1732200000}"#,
            Ok(vec![
                ("temp.t", 1_732_200_000_000, 21.5),
                ("temp.rh", 1_732_200_000_000, 40.0),
            ]),
        );
    }

    #[test]
    fn cbor_object_and_number() {
        let mut b = vec![0xa2, 0x65];
        b.extend_from_slice(b"value");
        b.push(0xfb);
        b.extend_from_slice(&21.5f64.to_be_bytes());
        b.extend_from_slice(&[0x62, b't', b's', 0x1b]);
        b.extend_from_slice(&1_732_200_000_000u64.to_be_bytes());
        check(&b, Ok(vec![("temp", 1_732_200_000_000, 21.5)]));
        let mut f = vec![0xfb];
        f.extend_from_slice(&(-2.5f64).to_be_bytes());
        check(&f, Ok(vec![("temp", 5_000, -2.5)]));
    }

    #[test]
    fn senml_json_names_the_metric() {
        check(
            br#"[{"bn":"room1:","bt":1732200000,"n":"t","v":21},{"n":"rh","t":1,"v":40},{"n":"door","vb":true}]"#,
            Ok(vec![
                ("room1:t", 1_732_200_000_000, 21.0),
                ("room1:rh", 1_732_200_001_000, 40.0),
            ]),
        );
    }

    #[test]
    fn rejected_forms() {
        check(b"", Err(DecodeError::Empty));
        check(b"  ", Err(DecodeError::Empty));
        check(b"NaN", Err(DecodeError::NotFinite));
        check(b"inf", Err(DecodeError::NotFinite));
        check(br#"{"v": "1"}"#, Err(DecodeError::MissingValue));
        check(br#"{"value": "1"}"#, Err(DecodeError::MissingValue));
        check(br#"{"value": 1, "ts": -5}"#, Err(DecodeError::BadTimestamp));
        check(
            br#"{"value": 1, "ts": "now"}"#,
            Err(DecodeError::BadTimestamp),
        );
        check(
            br#"{"value": 1, "ts": "2024-02-30T00:00:00Z"}"#,
            Err(DecodeError::BadTimestamp),
        );
        check(br#"[{"n":"x","vs":"a"}]"#, Err(DecodeError::NoNumericSenml));
        assert!(matches!(
            decode(&key(), b"hello", 0),
            Err(DecodeError::Unrecognised(_))
        ));
        assert!(matches!(
            decode(&key(), b"{\"value\":", 0),
            Err(DecodeError::Unrecognised(_))
        ));
        assert_eq!(decode(&key(), &[0xff, 0xfe], 0), Err(DecodeError::NotUtf8));
        assert!(decode(&key(), &[0xa1, 0x61], 0).is_err(), "truncated cbor");
    }

    #[test]
    fn rfc3339_agrees_with_known_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T12:00:00.5Z"),
            Some(951_825_600_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T12:00:00-00:30"),
            Some(951_827_400_000)
        );
        assert_eq!(parse_rfc3339_ms("2000-02-29T12:00:00"), None);
        assert_eq!(parse_rfc3339_ms("2001-02-29T12:00:00Z"), None);
    }

    fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend([m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend((n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend((n as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend(n.to_be_bytes());
            }
        }
    }

    /// A CBOR map of 0–3 entries with keys and values of the kinds sensors send,
    /// including ones the fast path must leave to serde (other keys, texts, half floats).
    fn arb_small_map() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![Just("value"), Just("ts"), Just("rh"), Just("valu")];
        let val = prop_oneof![
            any::<u64>().prop_map(|n| (0u8, n.to_be_bytes().to_vec())),
            any::<u64>().prop_map(|n| (1u8, n.to_be_bytes().to_vec())),
            any::<f32>().prop_map(|x| (2u8, x.to_bits().to_be_bytes().to_vec())),
            any::<f64>().prop_map(|x| (3u8, x.to_bits().to_be_bytes().to_vec())),
            (0u64..30).prop_map(|n| (0u8, n.to_be_bytes().to_vec())),
            any::<u16>().prop_map(|h| (4u8, h.to_be_bytes().to_vec())),
            Just((5u8, b"2024-11-21T14:00:00Z".to_vec())),
        ];
        (
            prop::collection::vec((key, val), 0..4),
            prop::collection::vec(any::<u8>(), 0..2),
        )
            .prop_map(|(entries, trailing)| {
                let mut b = Vec::new();
                cbor_head(&mut b, 5, entries.len() as u64);
                for (k, (kind, v)) in entries {
                    cbor_head(&mut b, 3, k.len() as u64);
                    b.extend(k.as_bytes());
                    let n = u64::from_be_bytes(v.clone().try_into().unwrap_or([0; 8]));
                    match kind {
                        0 => cbor_head(&mut b, 0, n),
                        1 => cbor_head(&mut b, 1, n),
                        2 => b.extend([[0xfa].as_slice(), &v].concat()),
                        3 => b.extend([[0xfb].as_slice(), &v].concat()),
                        4 => b.extend([[0xf9].as_slice(), &v].concat()),
                        _ => {
                            cbor_head(&mut b, 3, v.len() as u64);
                            b.extend(&v);
                        }
                    }
                }
                b.extend(trailing);
                b
            })
    }

    #[test]
    fn small_cbor_map_takes_the_common_shapes() {
        let mut b = vec![0xa2, 0x65];
        b.extend(b"value");
        b.push(0xfb);
        b.extend(21.5f64.to_be_bytes());
        b.extend([0x62, b't', b's', 0x1b]);
        b.extend(1_732_200_000_000u64.to_be_bytes());
        assert!(small_cbor_map(&b).is_some());
        check(&b, Ok(vec![("temp", 1_732_200_000_000, 21.5)]));
        // `{"value": -3}` and `{"value": 1.5f32}`
        check(
            &[0xa1, 0x65, b'v', b'a', b'l', b'u', b'e', 0x22],
            Ok(vec![("temp", 5_000, -3.0)]),
        );
        let mut f = vec![0xa1, 0x65];
        f.extend(b"value");
        f.push(0xfa);
        f.extend(1.5f32.to_bits().to_be_bytes());
        check(&f, Ok(vec![("temp", 5_000, 1.5)]));
        b.push(0x00);
        assert!(
            small_cbor_map(&b).is_none(),
            "trailing bytes go to the general path"
        );
    }

    proptest! {
        /// The fast path and serde_cbor agree wherever the fast path answers, down to
        /// the error; everything it declines decodes exactly as before.
        #[test]
        fn small_cbor_map_agrees_with_serde(b in arb_small_map()) {
            let series = key();
            let via = |obj: Result<Object<'_>, DecodeError>| {
                let mut out = Vec::new();
                obj.and_then(|o| o.into_readings(series.clone(), 5_000, &mut out))
                    .map(|()| out.iter().map(|r| (r.ts_ms, r.value.to_bits())).collect::<Vec<_>>())
            };
            if let Some(fast) = small_cbor_map(&b) {
                prop_assert_eq!(via(Ok(fast)), via(cbor_object(&b)));
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut out = vec![];
            if decode_into(&key(), &bytes, 0, &mut out).is_ok() {
                prop_assert!(out.iter().all(|r| r.value.is_finite()));
            } else {
                prop_assert!(out.is_empty());
            }
        }

        #[test]
        fn numbers_round_trip(v in proptest::num::f64::NORMAL | proptest::num::f64::ZERO, ts in 100_000_000_000i64..4_000_000_000_000) {
            let json = format!(r#"{{"value": {v:?}, "ts": {ts}}}"#);
            let r = decode(&key(), json.as_bytes(), 0).unwrap();
            prop_assert_eq!(r[0].value, v);
            prop_assert_eq!(r[0].ts_ms, ts);
            let bare = decode(&key(), format!("{v:?}").as_bytes(), 9).unwrap();
            prop_assert_eq!(bare[0].value, v);
            prop_assert_eq!(bare[0].ts_ms, 9);
        }

        #[test]
        fn rfc3339_round_trips_through_days(days in 0i64..100_000, ms in 0i64..86_400_000) {
            let total = days * 86_400_000 + ms;
            let secs = total / 1000;
            let (d, rem) = (secs / 86_400, secs % 86_400);
            // civil_from_days, independent of the parser's days_from_civil.
            let z = d + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = doy - (153 * mp + 2) / 5 + 1;
            let month = if mp < 10 { mp + 3 } else { mp - 9 };
            let year = yoe + era * 400 + i64::from(month <= 2);
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600, rem % 3600 / 60, rem % 60, total % 1000
            );
            prop_assert_eq!(parse_rfc3339_ms(&text), Some(total));
        }
    }
}
