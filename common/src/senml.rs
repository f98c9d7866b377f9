//! SenML (RFC 8428) packs in JSON and CBOR, resolved to absolute records.
//!
//! One deserializer serves both encodings: labels may be the JSON names (`"bn"`,
//! `"v"`) or the CBOR integer labels (-2, 2 …). Resolution follows RFC 8428 §4.6:
//! base name + name, base time + time (a resolved time below 2^28 s is relative to
//! "now", the agent's arrival time), base value + value, base unit when a record has
//! none, base fields carried to the records after them. Records whose value is a
//! string, boolean or data (`vs`, `vb`, `vd`) are returned as non-numeric so the
//! caller can skip them; a label ending in `_` (must-understand) is an error.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Most records accepted in one pack.
pub const MAX_RECORDS: usize = 4096;

/// Resolved times below this many seconds are relative to now (RFC 8428 §4.5.3).
const RELATIVE_LIMIT_S: f64 = 268_435_456.0;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    /// `vs`, `vb` or `vd`: kept out of numeric aggregation.
    Other,
}

/// One record after resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub name: String,
    pub unit: Option<String>,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenmlError {
    #[error("senml: {0}")]
    Syntax(String),
    #[error("senml pack is empty")]
    Empty,
    #[error("senml pack has more than {MAX_RECORDS} records")]
    TooMany,
    #[error("senml record {0} has no value")]
    NoValue(usize),
    #[error("senml record {index}: name `{name}` is not a valid SenML name")]
    BadName { index: usize, name: String },
    #[error("senml record {0}: time or value is not a finite number")]
    NotFinite(usize),
    #[error("senml record {index}: must-understand label `{label}` is not supported")]
    MustUnderstand { index: usize, label: String },
}

/// Parses and resolves a SenML JSON pack.
pub fn parse_json(bytes: &[u8], now_ms: i64) -> Result<Vec<Resolved>, SenmlError> {
    let pack: Pack<'_> =
        serde_json::from_slice(bytes).map_err(|e| SenmlError::Syntax(e.to_string()))?;
    resolve(pack.0, now_ms)
}

/// Parses and resolves a SenML CBOR pack.
pub fn parse_cbor(bytes: &[u8], now_ms: i64) -> Result<Vec<Resolved>, SenmlError> {
    let pack: Pack<'_> = crate::codec::from_cbor_borrowed(bytes, usize::MAX)
        .map_err(|e| SenmlError::Syntax(e.to_string()))?;
    resolve(pack.0, now_ms)
}

#[derive(Debug, Default)]
struct Raw<'a> {
    bn: Option<Cow<'a, str>>,
    bt: Option<f64>,
    bu: Option<Cow<'a, str>>,
    bv: Option<f64>,
    n: Option<Cow<'a, str>>,
    u: Option<Cow<'a, str>>,
    v: Option<f64>,
    other_value: bool,
    t: Option<f64>,
    must_understand: Option<String>,
}

fn resolve(records: Vec<Raw<'_>>, now_ms: i64) -> Result<Vec<Resolved>, SenmlError> {
    if records.is_empty() {
        return Err(SenmlError::Empty);
    }
    let (mut bn, mut bt, mut bu, mut bv): (Cow<'_, str>, f64, Option<Cow<'_, str>>, f64) =
        (Cow::Borrowed(""), 0.0, None, 0.0);
    let mut out = Vec::with_capacity(records.len());
    for (index, r) in records.into_iter().enumerate() {
        if let Some(label) = r.must_understand {
            return Err(SenmlError::MustUnderstand { index, label });
        }
        if let Some(x) = r.bn {
            bn = x;
        }
        if let Some(x) = r.bt {
            bt = x;
        }
        if let Some(x) = r.bu {
            bu = Some(x);
        }
        if let Some(x) = r.bv {
            bv = x;
        }
        let name = format!("{bn}{}", r.n.as_deref().unwrap_or(""));
        if !name.is_empty() && !valid_name(&name) {
            return Err(SenmlError::BadName { index, name });
        }
        let value = match (r.v, r.other_value) {
            (Some(v), _) => Value::Number(bv + v),
            (None, true) => Value::Other,
            (None, false) => return Err(SenmlError::NoValue(index)),
        };
        let t = bt + r.t.unwrap_or(0.0);
        if !t.is_finite() || matches!(value, Value::Number(v) if !v.is_finite()) {
            return Err(SenmlError::NotFinite(index));
        }
        let time_ms = if t < RELATIVE_LIMIT_S {
            now_ms.saturating_add((t * 1000.0).round() as i64)
        } else {
            (t * 1000.0).round() as i64
        };
        out.push(Resolved {
            name,
            unit: r.u.or_else(|| bu.clone()).map(Cow::into_owned),
            time_ms,
            value,
        });
    }
    Ok(out)
}

/// RFC 8428 §4.5.1: `[A-Za-z0-9][A-Za-z0-9:./_-]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
}

struct Pack<'a>(Vec<Raw<'a>>);

impl<'de> Deserialize<'de> for Pack<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pack<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of senml records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pack<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(r) = seq.next_element::<Raw<'de>>()? {
                    if out.len() == MAX_RECORDS {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_RECORDS} records"
                        )));
                    }
                    out.push(r);
                }
                Ok(Pack(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A label: JSON name or CBOR integer (RFC 8428 §6, table 4).
enum Label<'a> {
    Bn,
    Bt,
    Bu,
    Bv,
    N,
    U,
    V,
    OtherValue,
    T,
    Ignored,
    MustUnderstand(Cow<'a, str>),
}

impl<'a> Label<'a> {
    fn from_name(s: Cow<'a, str>) -> Self {
        match &*s {
            "bn" => Self::Bn,
            "bt" => Self::Bt,
            "bu" => Self::Bu,
            "bv" => Self::Bv,
            "n" => Self::N,
            "u" => Self::U,
            "v" => Self::V,
            "vs" | "vb" | "vd" => Self::OtherValue,
            "t" => Self::T,
            x if x.ends_with('_') => Self::MustUnderstand(s),
            _ => Self::Ignored,
        }
    }

    fn from_int(i: i64) -> Self {
        match i {
            -2 => Self::Bn,
            -3 => Self::Bt,
            -4 => Self::Bu,
            -5 => Self::Bv,
            0 => Self::N,
            1 => Self::U,
            2 => Self::V,
            3 | 4 | 8 => Self::OtherValue,
            6 => Self::T,
            _ => Self::Ignored,
        }
    }
}

impl<'de> Deserialize<'de> for Label<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Label<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a senml label")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Label<'de>, E> {
                Ok(Label::from_name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Label<'de>, E> {
                Ok(Label::from_name(Cow::Owned(s.to_string())))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<Label<'de>, E> {
                Ok(Label::from_int(i))
            }
            fn visit_u64<E: de::Error>(self, i: u64) -> Result<Label<'de>, E> {
                Ok(Label::from_int(i64::try_from(i).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that may borrow from the input.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a senml record (map)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
                let mut r = Raw::default();
                while let Some(label) = map.next_key::<Label<'de>>()? {
                    match label {
                        Label::Bn => r.bn = Some(map.next_value::<Text<'de>>()?.0),
                        Label::Bu => r.bu = Some(map.next_value::<Text<'de>>()?.0),
                        Label::N => r.n = Some(map.next_value::<Text<'de>>()?.0),
                        Label::U => r.u = Some(map.next_value::<Text<'de>>()?.0),
                        Label::Bt => r.bt = Some(map.next_value()?),
                        Label::Bv => r.bv = Some(map.next_value()?),
                        Label::V => r.v = Some(map.next_value()?),
                        Label::T => r.t = Some(map.next_value()?),
                        Label::OtherValue => {
                            map.next_value::<IgnoredAny>()?;
                            r.other_value = true;
                        }
                        Label::Ignored => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        Label::MustUnderstand(l) => {
                            map.next_value::<IgnoredAny>()?;
                            r.must_understand = Some(l.into_owned());
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(name: &str, unit: Option<&str>, time_ms: i64, v: f64) -> Resolved {
        Resolved {
            name: name.into(),
            unit: unit.map(Into::into),
            time_ms,
            value: Value::Number(v),
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn rfc8428_5_1_1_single_datapoint() {
        let got = parse_json(
            br#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![num("urn:dev:ow:10e2073a01080063", Some("Cel"), NOW, 23.1)]
        );
    }

    #[test]
    fn rfc8428_5_1_2_multiple_datapoints() {
        let got = parse_json(
            br#"[
             {"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
             {"n":"current","u":"A","v":1.2}
            ]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                num("urn:dev:ow:10e2073a01080063:voltage", Some("V"), NOW, 120.1),
                num("urn:dev:ow:10e2073a01080063:current", Some("A"), NOW, 1.2),
            ]
        );
    }

    #[test]
    fn rfc8428_5_1_3_multiple_measurements_with_base_time_and_unit() {
        let got = parse_json(
            br#"[
             {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
              "bu":"A","bver":5,
              "n":"voltage","u":"V","v":120.1},
             {"n":"current","t":-5,"v":1.2},
             {"n":"current","t":-4,"v":1.3},
             {"n":"current","t":-3,"v":1.4},
             {"n":"current","t":-2,"v":1.5},
             {"n":"current","t":-1,"v":1.6},
             {"n":"current","v":1.7}
            ]"#,
            NOW,
        )
        .unwrap();
        let bt = 1_276_020_076_001;
        let mut expected = vec![num(
            "urn:dev:ow:10e2073a0108006:voltage",
            Some("V"),
            bt,
            120.1,
        )];
        for (i, v) in [1.2, 1.3, 1.4, 1.5, 1.6, 1.7].into_iter().enumerate() {
            let t = bt - (5 - i as i64) * 1000;
            expected.push(num("urn:dev:ow:10e2073a0108006:current", Some("A"), t, v));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn rfc8428_5_1_4_resolved_data_is_its_own_resolution() {
        let got = parse_json(
            br#"[
             {"n":"urn:dev:ow:10e2073a0108006:voltage","u":"V","v":120.1,"t":1.276020076001e+09},
             {"n":"urn:dev:ow:10e2073a0108006:current","u":"A","v":1.2,"t":1.276020071001e+09}
            ]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(got[0].time_ms, 1_276_020_076_001);
        assert_eq!(got[1].time_ms, 1_276_020_071_001);
    }

    #[test]
    fn rfc8428_5_1_5_multiple_data_types() {
        let got = parse_json(
            br#"[
             {"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
             {"n":"label","vs":"Machine Room"},
             {"n":"open","vb":false},
             {"n":"nfc-reader","vd":"aGkgCg"}
            ]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].value, Value::Number(23.1));
        assert!(got[1..].iter().all(|r| r.value == Value::Other));
        assert_eq!(got[3].name, "urn:dev:ow:10e2073a01080063:nfc-reader");
    }

    #[test]
    fn rfc8428_base_value_is_added() {
        let got = parse_json(br#"[{"n":"e","bv":100,"v":5},{"n":"e","v":7}]"#, NOW).unwrap();
        assert_eq!(got[0].value, Value::Number(105.0));
        assert_eq!(got[1].value, Value::Number(107.0));
    }

    /// RFC 8428 §6 shows the CBOR encoding of the §5.1.2 example with integer labels.
    #[test]
    fn rfc8428_section_6_cbor_example() {
        let bn = "urn:dev:ow:10e2073a01080063:";
        let mut b = vec![0x82, 0xa4, 0x21, 0x78, bn.len() as u8];
        b.extend_from_slice(bn.as_bytes());
        b.extend_from_slice(&[0x00, 0x67]);
        b.extend_from_slice(b"voltage");
        b.extend_from_slice(&[0x01, 0x61, b'V', 0x02, 0xfb]);
        b.extend_from_slice(&120.1f64.to_be_bytes());
        b.extend_from_slice(&[0xa3, 0x00, 0x67]);
        b.extend_from_slice(b"current");
        b.extend_from_slice(&[0x01, 0x61, b'A', 0x02, 0xfb]);
        b.extend_from_slice(&1.2f64.to_be_bytes());
        let got = parse_cbor(&b, NOW).unwrap();
        assert_eq!(
            got,
            vec![
                num("urn:dev:ow:10e2073a01080063:voltage", Some("V"), NOW, 120.1),
                num("urn:dev:ow:10e2073a01080063:current", Some("A"), NOW, 1.2),
            ]
        );
    }

    #[test]
    fn rejected_packs() {
        assert_eq!(parse_json(b"[]", NOW), Err(SenmlError::Empty));
        assert_eq!(
            parse_json(br#"[{"n":"x"}]"#, NOW),
            Err(SenmlError::NoValue(0))
        );
        assert!(matches!(
            parse_json(br#"[{"n":"-bad","v":1}]"#, NOW),
            Err(SenmlError::BadName { .. })
        ));
        assert!(matches!(
            parse_json(br#"[{"n":"x","v":1,"crit_":1}]"#, NOW),
            Err(SenmlError::MustUnderstand { .. })
        ));
        assert!(matches!(
            parse_json(br#"[{"n":"x","v":"1"}]"#, NOW),
            Err(SenmlError::Syntax(_))
        ));
        assert!(matches!(
            parse_json(br#"{"n":"x"}"#, NOW),
            Err(SenmlError::Syntax(_))
        ));
    }
}
