use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match AgentConfig::from_toml("t.toml", text, env(vars)) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_takes_defaults() {
    let cfg = AgentConfig::from_toml("t.toml", "[agent]\nid = \"gw-1\"\n", env(&[])).unwrap();
    assert_eq!(cfg.agent.id, "gw-1");
    assert_eq!(cfg.window.size, Duration::from_secs(10));
    assert_eq!(
        cfg.mqtt.topic_template.as_str(),
        "sensors/{device}/{metric}"
    );
    assert_eq!(cfg.uplink.batch_max_records, 500);
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let text = r#"
[agent]
id = ""
[mqtt]
listen = "nowhere"
topic_template = "sensors/{device}"
[window]
size = "0s"
max_out_of_orderness = "soon"
[uplink]
fleet_url = "ftp://x"
backoff_min = "10s"
backoff_max = "1s"
[bogus]
x = 1
"#;
    let got = problems(text, &[]);
    let expected = [
        "bogus: unknown key",
        "agent.id: must be set (a unique name for this gateway)",
        "mqtt.listen: `nowhere` is not an address like 0.0.0.0:1883",
        "mqtt.topic_template: template must contain {device} and {metric} exactly once each",
        "window.size: must be at least 1ms, got 0s",
        "uplink.fleet_url: `ftp://x` must start with http:// or https://",
        "uplink.backoff_max: must not be below backoff_min",
    ];
    for e in expected {
        assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
    }
    assert!(got
        .iter()
        .any(|g| g.starts_with("window.max_out_of_orderness: `soon` is not a duration")));
    assert_eq!(got.len(), expected.len() + 1, "{got:#?}");
}

#[test]
fn type_errors_name_the_field() {
    let got = problems(
        "[agent]\nid = \"a\"\n[uplink]\nbatch_max_records = \"many\"\n",
        &[],
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("uplink.batch_max_records: invalid type"),
        "{got:?}"
    );
}

#[test]
fn syntax_error_is_one_clear_problem() {
    let got = problems("[agent\nid=", &[]);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("<toml>: "), "{got:?}");
}

#[test]
fn environment_overrides_file() {
    let cfg = AgentConfig::from_toml(
        "t.toml",
        "[agent]\nid = \"file\"\n",
        env(&[
            ("FIELDLINE_AGENT__ID", "from-env"),
            ("FIELDLINE_UPLINK__BATCH_MAX_RECORDS", "7"),
            ("FIELDLINE_UPLINK__FLEET_URL", "http://fleet:9000/"),
            ("FIELDLINE_LOG", "debug"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.agent.id, "from-env");
    assert_eq!(cfg.uplink.batch_max_records, 7);
    assert_eq!(cfg.uplink.fleet_url, "http://fleet:9000");
}

#[test]
fn unknown_environment_key_is_reported() {
    let got = problems(
        "[agent]\nid = \"a\"\n",
        &[("FIELDLINE_WINDOW__SIZZE", "1s")],
    );
    assert_eq!(
        got,
        vec!["env FIELDLINE_WINDOW__SIZZE: `window.sizze` is not a config key (use FIELDLINE_<SECTION>__<KEY>)"]
    );
}

#[test]
fn storage_and_outbox_sections_are_validated_with_paths() {
    let cfg = AgentConfig::from_toml("t.toml", "[agent]\nid = \"gw-1\"\n", env(&[])).unwrap();
    assert_eq!(cfg.storage.durability, Durability::Interval);
    assert_eq!(cfg.storage.checkpoint_interval, Duration::from_secs(30));
    assert_eq!(cfg.outbox.max_bytes, 128 * 1024 * 1024);
    assert_eq!(cfg.outbox.max_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(cfg.outbox.on_full, OnFull::DropOldest);
    assert!(!cfg.outbox.forward_raw_readings);

    let text = "[agent]\nid = \"gw-1\"\n[storage]\ndurability = \"sometimes\"\ncheckpoint_interval = \"1ms\"\n[outbox]\nmax_bytes = 10\non_full = \"explode\"\nmax_age = \"later\"\n";
    let got = problems(text, &[]);
    for e in [
        "storage.durability: `sometimes` must be \"batch-fsync\" or \"interval\"",
        "storage.checkpoint_interval: must be at least 100ms, got 1ms",
        "outbox.max_bytes: must be at least 65536, got 10",
        "outbox.on_full: `explode` must be \"drop_oldest\" or \"block\"",
    ] {
        assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
    }
    assert!(
        got.iter().any(|g| g.starts_with("outbox.max_age: ")),
        "{got:#?}"
    );

    let cfg = AgentConfig::from_toml(
        "t.toml",
        "[agent]\nid = \"gw-1\"\n[outbox]\nmax_age = \"0s\"\n",
        env(&[
            ("FIELDLINE_STORAGE__DURABILITY", "batch-fsync"),
            ("FIELDLINE_OUTBOX__ON_FULL", "block"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.storage.durability, Durability::BatchFsync);
    assert_eq!(
        (cfg.outbox.on_full, cfg.outbox.max_age),
        (OnFull::Block, None)
    );
}
