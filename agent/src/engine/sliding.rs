//! Sliding (hopping) windows: `size` long, starting every `slide`, aligned to the
//! epoch. A reading belongs to `ceil(size / slide)` windows (fewer when `slide` does
//! not divide `size` and the reading sits near an edge); tumbling is `slide = size`.

/// Calls `f(start, end)` for every window containing `ts`, newest start first.
pub fn assign(ts: i64, size_ms: i64, slide_ms: i64, f: impl FnMut(i64, i64)) {
    assign_from(ts - ts.rem_euclid(slide_ms), ts, size_ms, slide_ms, f);
}

/// [`assign`] given the latest start (`ts - ts mod slide`), saving the division.
pub fn assign_from(
    latest_start: i64,
    ts: i64,
    size_ms: i64,
    slide_ms: i64,
    mut f: impl FnMut(i64, i64),
) {
    let mut start = latest_start;
    while start > ts.saturating_sub(size_ms) {
        f(start, start.saturating_add(size_ms));
        start -= slide_ms;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn windows(ts: i64, size: i64, slide: i64) -> Vec<(i64, i64)> {
        let mut v = vec![];
        super::assign(ts, size, slide, |s, e| v.push((s, e)));
        v
    }

    #[test]
    fn five_minute_windows_every_minute() {
        assert_eq!(
            windows(130, 300, 60),
            vec![(120, 420), (60, 360), (0, 300), (-60, 240), (-120, 180)]
        );
        assert_eq!(windows(5, 10, 10), vec![(0, 10)]);
    }

    proptest! {
        /// Exactly the windows `[k·slide, k·slide + size)` that contain `ts`.
        #[test]
        fn matches_definition(ts in -10_000i64..10_000, size in 1i64..500, slide in 1i64..500) {
            prop_assume!(slide <= size);
            let got = windows(ts, size, slide);
            let lo = (ts - size).div_euclid(slide) - 1;
            let hi = ts.div_euclid(slide) + 1;
            let want: Vec<_> = (lo..=hi).rev()
                .map(|k| (k * slide, k * slide + size))
                .filter(|(s, e)| *s <= ts && ts < *e)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
