//! The stream engine through the real binary: `fieldline-agent replay` over golden
//! files (`tests/fixtures/golden/<case>/`), determinism, bad input lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::bin;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

fn replay(config: &Path, input: &Path) -> (i32, String, String) {
    let out = Command::new(bin("fieldline-agent"))
        .args(["replay", "--config"])
        .arg(config)
        .arg("--input")
        .arg(input)
        .env_remove("FIELDLINE_LOG")
        .output()
        .expect("run fieldline-agent replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn check_golden(case: &str) {
    let dir = golden_dir().join(case);
    let (code, stdout, stderr) = replay(&dir.join("config.toml"), &dir.join("input.jsonl"));
    assert_eq!(code, 0, "replay failed: {stderr}");
    let expected_path = dir.join("expected.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &stdout).expect("write expected.jsonl");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).expect("read expected.jsonl");
    let (got, want): (Vec<_>, Vec<_>) = (stdout.lines().collect(), expected.lines().collect());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (gv, wv): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(g).expect("output is json"),
            serde_json::from_str(w).expect("expected is json"),
        );
        assert_eq!(gv, wv, "{case}: record {} differs", i + 1);
    }
    assert_eq!(got.len(), want.len(), "{case}: number of records\n{stdout}");
}

#[test]
fn golden_default_window() {
    check_golden("default_window");
}

#[test]
fn golden_pipelines_side_by_side() {
    check_golden("pipelines");
}

/// A spike, a stuck value and a gap: one anomaly record each, between the windows.
#[test]
fn golden_detectors() {
    check_golden("detectors");
}

#[test]
fn replay_is_deterministic_and_order_of_equal_arrivals_is_kept() {
    let dir = golden_dir().join("pipelines");
    let a = replay(&dir.join("config.toml"), &dir.join("input.jsonl"));
    let b = replay(&dir.join("config.toml"), &dir.join("input.jsonl"));
    assert_eq!(a, b);
}

/// A malformed line is reported with its number; the good lines around it still count.
#[test]
fn replay_reports_bad_lines_and_keeps_the_good_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"topic": "sensors/a/t", "payload": "1", "received_at": 1000}"#,
            "\nnot json\n",
            r#"{"topic": "sensors/a/t", "payload": "x", "payload_b64": "eA==", "received_at": 2000}"#,
            "\n",
            r#"{"topic": "sensors/a/t", "payload": "3", "received_at": 3000}"#,
            "\n"
        ),
    )
    .expect("write input");
    let config = golden_dir().join("default_window/config.toml");
    let (code, stdout, stderr) = replay(&config, &input);
    assert_eq!(code, 1);
    assert!(stderr.contains("in.jsonl:2: "), "{stderr}");
    assert!(stderr.contains("in.jsonl:3: exactly one of"), "{stderr}");
    let w: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one window");
    assert_eq!(
        (w["kind"].as_str(), w["count"].as_u64(), w["sum"].as_f64()),
        (Some("window"), Some(2), Some(4.0))
    );
}

#[test]
fn check_config_reports_pipeline_problems_with_their_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[agent]
id = "a"
[[pipeline]]
name = "ok"
window = { kind = "tumbling", size = "1m" }
[[pipeline]]
name = "broken"
window = { kind = "sliding", size = "1m", slide = "2m" }
aggregates = ["mean", "p100", "mean"]
late = { policy = "allowed_lateness" }
detectors = ["crystal_ball"]
sinks = ["mqtt:alerts/#"]
"#,
    )
    .expect("write");
    let out = Command::new(bin("fieldline-agent"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "pipeline[1].window.slide: must not exceed window.size",
        "pipeline[1].aggregates[1]: `p100` is not one of",
        "pipeline[1].aggregates[2]: `mean` is listed twice",
        "pipeline[1].late.allowed_lateness: required by this late policy",
        "pipeline[1].detectors[0]: `crystal_ball` is not one of",
        "pipeline[1].sinks[0]: `mqtt:alerts/#` is not `outbox` or `mqtt:<topic>`",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    assert!(!stdout.contains("pipeline[0]"), "{stdout}");
}

/// The general detector's novelty memory is sized (or turned off) from the config the
/// binary reads; an out-of-range size is a clear config error, not a run.
#[test]
fn replay_takes_the_general_detectors_novelty_size_and_rejects_a_bad_one() {
    let golden = golden_dir().join("detectors");
    let base = std::fs::read_to_string(golden.join("config.toml")).expect("read config");
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |prototypes: u32| {
        let cfg = tmp.path().join(format!("novelty-{prototypes}.toml"));
        let text = format!(
            "{base}\n[[pipeline.detector]]\nkind = \"general\"\nnovelty_prototypes = {prototypes}\n"
        );
        std::fs::write(&cfg, text).expect("write config");
        replay(&cfg, &golden.join("input.jsonl"))
    };
    let expected = std::fs::read_to_string(golden.join("expected.jsonl")).expect("expected");
    let windows = |out: &str| {
        out.lines()
            .filter(|l| l.contains(r#""kind":"window""#))
            .count()
    };
    for prototypes in [0, 256] {
        let (code, stdout, stderr) = run(prototypes);
        assert_eq!(code, 0, "novelty_prototypes = {prototypes}: {stderr}");
        // The general detector adds no window and takes none away.
        assert_eq!(windows(&stdout), windows(&expected), "{stdout}");
    }
    let (code, stdout, stderr) = run(5000);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("novelty_prototypes") && stderr.contains("0..=4096"),
        "{stderr}"
    );
}
