//! What the fleet reads from agents: CBOR ingest batches and heartbeats. Decoding is
//! bounded and total; whatever decodes re-encodes to the same value.
#![no_main]

use fieldline_common::codec::{from_cbor, to_cbor};
use fieldline_common::wire::{Heartbeat, IngestBatch};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = from_cbor::<IngestBatch>(data, LIMIT) {
        let again: IngestBatch = from_cbor(&to_cbor(&batch).expect("encode"), usize::MAX)
            .expect("a decoded batch decodes again");
        // NaN != NaN, so compare encodings rather than values.
        assert_eq!(to_cbor(&again).unwrap(), to_cbor(&batch).unwrap());
    }
    let _ = from_cbor::<Heartbeat>(data, LIMIT);
});
