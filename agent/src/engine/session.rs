//! Session windows: a key's readings closer than `gap` to each other form one
//! session `[first ts, last ts + gap)`. A reading may join two sessions into one.
//! A session closes when the watermark reaches its end (no reading for `gap`).

/// The range a reading at `ts` occupies on its own.
pub fn span(ts: i64, gap_ms: i64) -> (i64, i64) {
    (ts, ts.saturating_add(gap_ms))
}

/// Whether a session `[start, end)` takes a reading occupying `[s, e)`.
pub fn overlaps(start: i64, end: i64, s: i64, e: i64) -> bool {
    start < e && s < end
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_gap_of_exactly_gap_starts_a_new_session() {
        let (s, e) = super::span(10, 5);
        assert!(super::overlaps(s, e, 14, 19));
        assert!(!super::overlaps(s, e, 15, 20));
    }
}
