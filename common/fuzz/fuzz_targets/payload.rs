//! Any bytes on any topic: decoding returns readings or an error, never panics, and
//! what it returns obeys the decoder's contract.
#![no_main]

use fieldline_common::payload::{decode_into, Reading};
use fieldline_common::wire::SeriesKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let series = SeriesKey::new("dev", "temp");
    let keep = Reading {
        series: series.clone(),
        ts_ms: 1,
        value: 1.0,
    };
    let mut out = vec![keep.clone()];
    match decode_into(&series, data, 1_732_200_000_000, &mut out) {
        // A failed decode must leave earlier readings of the batch untouched.
        Err(_) => assert_eq!(out, [keep]),
        Ok(()) => {
            assert!(out.len() > 1, "success without a reading");
            for r in &out[1..] {
                assert!(r.value.is_finite(), "non-finite value {r:?}");
                assert!(r.ts_ms >= 0, "negative time {r:?}");
            }
        }
    }
});
