//! Agent config text (files, fleet-delivered fragments): a validated config or a
//! list of problems, never a panic.
#![no_main]

use fieldline_common::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = AgentConfig::from_toml("fuzz.toml", text, std::iter::empty()) {
            assert!(!e.problems.is_empty(), "an error names its problems");
        }
    }
});
