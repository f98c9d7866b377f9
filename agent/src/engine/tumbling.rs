//! Tumbling windows: fixed size, aligned to the epoch, no overlap. A reading at `ts`
//! belongs to exactly one window, `[ts - ts mod size, … + size)`.

/// The one window containing `ts`, as `(start, end)`.
pub fn assign(ts: i64, size_ms: i64) -> (i64, i64) {
    let start = ts - ts.rem_euclid(size_ms);
    (start, start.saturating_add(size_ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligned_to_the_epoch_also_before_it() {
        assert_eq!(super::assign(0, 1000), (0, 1000));
        assert_eq!(super::assign(999, 1000), (0, 1000));
        assert_eq!(super::assign(-1, 1000), (-1000, 0));
    }
}
