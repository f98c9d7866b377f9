//! SenML packs (RFC 8428) in both encodings: resolve or refuse, never panic.
#![no_main]

use fieldline_common::senml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = senml::parse_json(data, 1_732_200_000_000);
    let _ = senml::parse_cbor(data, 1_732_200_000_000);
});
