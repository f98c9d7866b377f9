//! Human durations for config files: `"250ms"`, `"10s"`, `"5m"`.

use std::time::Duration;

/// Parses a human duration; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like \"500ms\", \"10s\" or \"5m\" ({e})"))
}

/// Formats a duration the way a config file would spell it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_common_forms() {
        assert_eq!(super::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(super::parse("10s").unwrap().as_secs(), 10);
        assert_eq!(super::parse("1m").unwrap().as_secs(), 60);
        assert!(super::parse("ten").is_err());
        assert!(super::parse("").is_err());
    }
}
