//! Count windows: every `count` readings of a key (in arrival order) form one window,
//! emitted as soon as it is full. They need no watermark and have no late data; the
//! result spans `[earliest ts, latest ts + 1)`. A partial window is never emitted.

/// Whether a window holding `n` readings is full.
pub fn full(n: u64, count: u64) -> bool {
    n >= count
}
