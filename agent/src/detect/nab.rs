//! Numenta Anomaly Benchmark runner: streams every `<category>/<file>.csv` under a data
//! directory through a detector, one row at a time, and writes NAB results files
//! (`timestamp,anomaly_score`, one row per input row, timestamp copied verbatim).
//!
//! One detector configuration for every file: the detector sees only the rows so far.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Detector, DetectorSpec, DEFAULT_ALERT_THRESHOLD};

/// What went wrong, always naming the file (and line for bad input).
#[derive(Debug)]
pub enum NabError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Bad input; `line` is 1-based and counts the header.
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// No `<category>/*.csv` files under the data directory.
    NoData {
        dir: PathBuf,
    },
    InvalidSpec(String),
}

impl fmt::Display for NabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NabError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            NabError::Parse {
                path,
                line,
                message,
            } => write!(f, "{}:{}: {}", path.display(), line, message),
            NabError::NoData { dir } => {
                write!(f, "{}: no <category>/<file>.csv data files", dir.display())
            }
            NabError::InvalidSpec(m) => write!(f, "invalid detector spec: {m}"),
        }
    }
}

impl std::error::Error for NabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NabError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Per-file outcome.
#[derive(Debug, Clone)]
pub struct NabFileSummary {
    /// `<category>/<file>.csv`
    pub rel: String,
    pub rows: u64,
    /// Rows scoring >= [`DEFAULT_ALERT_THRESHOLD`].
    pub alerts: u64,
}

#[derive(Debug, Clone)]
pub struct NabSummary {
    pub files: Vec<NabFileSummary>,
    pub rows: u64,
    pub alerts: u64,
    /// Wall time spent reading, scoring and writing.
    pub elapsed: Duration,
}

/// One parsed data row.
#[derive(Debug, Clone)]
pub struct NabRow {
    /// Timestamp text exactly as in the file.
    pub ts_text: String,
    pub ts_ms: i64,
    pub value: f64,
}

/// Run the default general-purpose detector over the NAB corpus at `data_dir`.
pub fn run_nab(data_dir: &Path, out_dir: &Path) -> Result<NabSummary, NabError> {
    run_nab_with(data_dir, out_dir, &DetectorSpec::default_general())
}

/// Run any detector spec over the corpus (one fresh detector per file).
pub fn run_nab_with(
    data_dir: &Path,
    out_dir: &Path,
    spec: &DetectorSpec,
) -> Result<NabSummary, NabError> {
    spec.validate().map_err(NabError::InvalidSpec)?;
    let start = Instant::now();
    let files = list_corpus(data_dir)?;
    let mut summary = NabSummary {
        files: Vec::with_capacity(files.len()),
        rows: 0,
        alerts: 0,
        elapsed: Duration::ZERO,
    };
    for (cat, name) in files {
        let src = data_dir.join(&cat).join(&name);
        let dst_dir = out_dir.join(&cat);
        fs::create_dir_all(&dst_dir).map_err(|e| io_err(&dst_dir, e))?;
        let dst = dst_dir.join(&name);
        let mut det = spec.build();
        let (rows, alerts) = stream_file(&src, &dst, det.as_mut())?;
        summary.rows += rows;
        summary.alerts += alerts;
        summary.files.push(NabFileSummary {
            rel: format!("{cat}/{name}"),
            rows,
            alerts,
        });
    }
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// `(category, file name)` of every `<category>/*.csv` under `data_dir`, sorted.
pub fn list_corpus(data_dir: &Path) -> Result<Vec<(String, String)>, NabError> {
    let mut out = Vec::new();
    for cat in sorted_entries(data_dir)? {
        let cat_path = data_dir.join(&cat);
        if !cat_path.is_dir() {
            continue;
        }
        for name in sorted_entries(&cat_path)? {
            if name.ends_with(".csv") && cat_path.join(&name).is_file() {
                out.push((cat.clone(), name));
            }
        }
    }
    if out.is_empty() {
        return Err(NabError::NoData {
            dir: data_dir.to_path_buf(),
        });
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<String>, NabError> {
    let rd = fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        // Non-UTF-8 names cannot be NAB files; skip rather than fail.
        if let Ok(n) = ent.file_name().into_string() {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

fn io_err(path: &Path, source: io::Error) -> NabError {
    NabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streaming CSV reader for `timestamp,value` files.
pub struct NabReader<R> {
    path: PathBuf,
    inner: R,
    line_no: usize,
    buf: String,
}

impl NabReader<BufReader<fs::File>> {
    pub fn open(path: &Path) -> Result<Self, NabError> {
        let f = fs::File::open(path).map_err(|e| io_err(path, e))?;
        NabReader::new(path, BufReader::new(f))
    }
}

impl<R: BufRead> NabReader<R> {
    /// Reads and checks the header.
    pub fn new(path: &Path, inner: R) -> Result<Self, NabError> {
        let mut r = NabReader {
            path: path.to_path_buf(),
            inner,
            line_no: 0,
            buf: String::new(),
        };
        if !r.read_line()? {
            return Err(r.parse_err("empty file (expected header `timestamp,value`)"));
        }
        let header = r.buf.trim_start_matches('\u{feff}').trim();
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        if cols != ["timestamp", "value"] {
            let msg = format!("expected header `timestamp,value`, got `{header}`");
            return Err(r.parse_err(&msg));
        }
        Ok(r)
    }

    fn read_line(&mut self) -> Result<bool, NabError> {
        self.buf.clear();
        let n = self
            .inner
            .read_line(&mut self.buf)
            .map_err(|e| io_err(&self.path, e))?;
        if n > 0 {
            self.line_no += 1;
        }
        Ok(n > 0)
    }

    fn parse_err(&self, msg: &str) -> NabError {
        NabError::Parse {
            path: self.path.clone(),
            line: self.line_no,
            message: msg.to_string(),
        }
    }

    /// Next data row; blank lines are skipped. `None` at end of file.
    pub fn next_row(&mut self) -> Result<Option<NabRow>, NabError> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            let line = self.buf.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            let Some((ts, val)) = line.split_once(',') else {
                return Err(self.parse_err("expected 2 fields `timestamp,value`, found 1"));
            };
            if val.contains(',') {
                let n = line.split(',').count();
                return Err(
                    self.parse_err(&format!("expected 2 fields `timestamp,value`, found {n}"))
                );
            }
            let Some(ts_ms) = parse_timestamp_ms(ts.trim()) else {
                return Err(self.parse_err(&format!(
                    "bad timestamp `{ts}` (expected YYYY-MM-DD HH:MM:SS)"
                )));
            };
            let vt = val.trim();
            let value = match vt.parse::<f64>() {
                Ok(v) => v,
                Err(_) => return Err(self.parse_err(&format!("bad value `{vt}`"))),
            };
            return Ok(Some(NabRow {
                ts_text: ts.to_string(),
                ts_ms,
                value,
            }));
        }
    }

    pub fn line_no(&self) -> usize {
        self.line_no
    }
}

/// Read a whole series into memory (tuning and tests; `run_nab` streams).
pub fn read_series(path: &Path) -> Result<Vec<NabRow>, NabError> {
    let mut r = NabReader::open(path)?;
    let mut rows = Vec::new();
    while let Some(row) = r.next_row()? {
        rows.push(row);
    }
    Ok(rows)
}

fn stream_file(src: &Path, dst: &Path, det: &mut dyn Detector) -> Result<(u64, u64), NabError> {
    let mut reader = NabReader::open(src)?;
    let f = fs::File::create(dst).map_err(|e| io_err(dst, e))?;
    let mut w = BufWriter::new(f);
    let werr = |e| io_err(dst, e);
    writeln!(w, "timestamp,anomaly_score").map_err(werr)?;
    let (mut rows, mut alerts) = (0u64, 0u64);
    while let Some(row) = reader.next_row()? {
        let s = det.update(row.ts_ms, row.value);
        // The contract is [0, 1] and finite; enforce it at the file boundary too.
        let s = if s.is_finite() {
            s.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if s >= DEFAULT_ALERT_THRESHOLD {
            alerts += 1;
        }
        rows += 1;
        writeln!(w, "{},{}", row.ts_text, s).map_err(werr)?;
    }
    w.flush().map_err(werr)?;
    Ok((rows, alerts))
}

/// Parse `YYYY-MM-DD HH:MM:SS` (also `T` separator, fractional seconds, trailing `Z`) as
/// UTC milliseconds since the Unix epoch.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[10] != b' ' && b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || d < 1
        || d > fieldline_common::civil::days_in_month(y, mo)
        || h > 23
        || mi > 59
    {
        return None;
    }
    if sec > 60 {
        return None;
    }
    let mut ms = 0i64;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() == 20 {
            return None;
        }
        let frac = &b[20..];
        if !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for (i, &c) in frac.iter().take(3).enumerate() {
            ms += (c - b'0') as i64 * [100, 10, 1][i];
        }
    }
    let days = fieldline_common::civil::days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp_ms("2014-02-19 08:42:00"),
            Some(1_392_799_320_000)
        );
        assert_eq!(
            parse_timestamp_ms("2014-02-19T08:42:00.250000"),
            Some(1_392_799_320_250)
        );
        assert_eq!(
            parse_timestamp_ms("2016-02-29 00:00:00"),
            Some(1_456_704_000_000)
        );
        assert_eq!(parse_timestamp_ms("2015-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp_ms("2014-02-19 8:42:00"), None);
        assert_eq!(parse_timestamp_ms("garbage"), None);
        assert_eq!(parse_timestamp_ms("2014-02-19 08:42:00."), None);
    }

    fn reader(text: &str) -> Result<Vec<NabRow>, NabError> {
        let mut r = NabReader::new(Path::new("x/y.csv"), text.as_bytes())?;
        let mut v = Vec::new();
        while let Some(row) = r.next_row()? {
            v.push(row);
        }
        Ok(v)
    }

    #[test]
    fn csv_ok_and_errors() {
        let rows =
            reader("timestamp,value\r\n2014-01-01 00:00:00,1.5\r\n\n2014-01-01 00:05:00,2\n")
                .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ts_text, "2014-01-01 00:05:00");
        assert_eq!(rows[1].value, 2.0);

        let e = reader("timestamp,value\n2014-01-01 00:00:00,abc\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x/y.csv:2") && msg.contains("abc"), "{msg}");
        let e = reader("time,value\n").unwrap_err();
        assert!(e.to_string().contains(":1:"));
        let e =
            reader("timestamp,value\n2014-01-01 00:00:00,1\n2014-13-01 00:00:00,1\n").unwrap_err();
        assert!(e.to_string().contains(":3:"), "{e}");
        let e = reader("timestamp,value\n2014-01-01 00:00:00,1,2\n").unwrap_err();
        assert!(e.to_string().contains("found 3"), "{e}");
        assert!(reader("").is_err());
    }

    #[test]
    fn run_nab_end_to_end() {
        let base = std::env::temp_dir().join(format!("nabdev-test-{}", std::process::id()));
        let data = base.join("data");
        let out = base.join("out");
        fs::create_dir_all(data.join("catA")).unwrap();
        let mut text = String::from("timestamp,value\n");
        for i in 0..500 {
            let v = if i == 400 { 50.0 } else { (i % 7) as f64 };
            text.push_str(&format!(
                "2014-01-01 {:02}:{:02}:00,{}\n",
                i / 60 % 24,
                i % 60,
                v
            ));
        }
        fs::write(data.join("catA/s.csv"), &text).unwrap();
        fs::write(data.join("README.md"), "not data").unwrap();
        let sum = run_nab(&data, &out).unwrap();
        assert_eq!(sum.rows, 500);
        let res = fs::read_to_string(out.join("catA/s.csv")).unwrap();
        let lines: Vec<&str> = res.lines().collect();
        assert_eq!(lines[0], "timestamp,anomaly_score");
        assert_eq!(lines.len(), 501);
        assert!(lines[1].starts_with("2014-01-01 00:00:00,"));
        for l in &lines[1..] {
            let s: f64 = l.split(',').nth(1).unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&s));
        }

        fs::write(
            data.join("catA/bad.csv"),
            "timestamp,value\n2014-01-01 00:00:00,1\noops\n",
        )
        .unwrap();
        let e = run_nab(&data, &out).unwrap_err();
        assert!(e.to_string().contains("bad.csv:3"), "{e}");
        assert!(matches!(
            run_nab(&base.join("nope"), &out),
            Err(NabError::Io { .. })
        ));
        fs::remove_dir_all(&base).unwrap();
    }
}
