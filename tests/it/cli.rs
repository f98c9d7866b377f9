//! The binaries' command lines: config checking, clear startup errors, clean shutdown.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn run(bin_name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(bin_name))
        .args(args)
        // The fleet refuses to start without them; the agent ignores them.
        .env("FIELDLINE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("FIELDLINE_BOOTSTRAP_TOKEN", BOOTSTRAP_TOKEN)
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_problem_of_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = agent_config(dir.path(), "good", 1883, "http://127.0.0.1:1", "");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\nid = \"has space\"\n[window]\nsize = \"-1s\"\n[uplink]\nfleet_url = \"fleet\"\n[typo]\n",
    )
    .expect("write");
    let (code, stdout, _) = run(
        "fieldline-agent",
        &["check-config", good.to_str().expect("utf8")],
    );
    assert_eq!((code, stdout.as_str()), (0, ""));

    let (code, stdout, _) = run(
        "fieldline-agent",
        &[
            "check-config",
            good.to_str().expect("utf8"),
            bad.to_str().expect("utf8"),
        ],
    );
    assert_eq!(code, 1);
    let b = bad.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines.contains(&format!("{b}: typo: unknown key").as_str()),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{b}: agent.id: `has space` must be"))),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{b}: window.size: `-1s` is not a duration"))),
        "{stdout}"
    );
    assert!(
        lines.contains(
            &format!("{b}: uplink.fleet_url: `fleet` must start with http:// or https://").as_str()
        ),
        "{stdout}"
    );
}

#[test]
fn agent_reports_a_busy_mqtt_port_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let config = agent_config(dir.path(), "busy", port, "http://127.0.0.1:1", "");
    let (code, _, stderr) = run(
        "fieldline-agent",
        &["run", "--config", config.to_str().expect("utf8")],
    );
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "fieldline-agent: error: cannot listen for mqtt on 127.0.0.1:{port}: "
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn agent_refuses_an_invalid_config_with_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("a.toml");
    std::fs::write(&config, "[agent]\nid = \"\"\n[mqtt]\nlisten = \"x\"\n").expect("write");
    let (code, _, stderr) = run(
        "fieldline-agent",
        &["run", "--config", config.to_str().expect("utf8")],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("agent.id: must be set"), "{stderr}");
    assert!(
        stderr.contains("mqtt.listen: `x` is not an address"),
        "{stderr}"
    );
}

#[test]
fn fleet_reports_unreachable_redis_and_busy_port_in_one_line() {
    let dead_port = free_port();
    let (code, _, stderr) = run(
        "fieldline-fleet",
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &format!("redis://127.0.0.1:{dead_port}/"),
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "fieldline-fleet: error: cannot reach redis at redis://127.0.0.1:{dead_port}/"
        )),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let (code, _, stderr) = run(
        "fieldline-fleet",
        &[
            "run",
            "--listen",
            &addr.to_string(),
            "--redis-url",
            &redis.url(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!(
                "fieldline-fleet: error: cannot listen on {addr}: "
            )),
        "{stderr}"
    );
}

#[test]
fn agent_and_fleet_stop_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = spawn_redis(dir.path());
    let mut fleet = spawn_fleet(&redis.url(), dir.path());
    let mut agent = spawn_agent(dir.path(), "gw-term", &fleet.url());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.proc.terminate(Duration::from_secs(20)), Some(0));
    let log = agent.proc.log();
    let flushed = log
        .find("state flushed")
        .expect("state flushed on shutdown");
    let stopping = log.find("shutting down").expect("shutdown logged");
    assert!(stopping < flushed, "{log}");
    assert_eq!(fleet.proc.terminate(Duration::from_secs(10)), Some(0));
}

#[test]
fn agent_keeps_running_while_the_fleet_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut agent = spawn_agent(dir.path(), "gw-offline", &dead);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent
            .proc
            .log()
            .contains("heartbeat failed; will keep trying"),
        "{}",
        agent.proc.log()
    );
    assert_eq!(agent.proc.terminate(Duration::from_secs(20)), Some(0));
}

/// `fieldline-agent nab` through the binary: one output row per input row under the
/// NAB header, a spike scores highest in its file, and a malformed row is named by file
/// and line (exit 1) while the files read before it (in path order) keep their complete
/// outputs.
#[test]
fn nab_command_scores_every_row_and_names_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let t0 = 1_388_534_400_000i64; // 2014-01-01 00:00:00 UTC
    let stamp = |i: i64| {
        let s = (t0 / 1000) + i * 300;
        let (days, secs) = (s.div_euclid(86_400), s.rem_euclid(86_400));
        // January 2014 only: day of month from the epoch day.
        let day = days - 16_071 + 1;
        format!(
            "2014-01-{day:02} {:02}:{:02}:00",
            secs / 3600,
            secs / 60 % 60
        )
    };
    let mut spikes = Vec::new();
    for (cat, n, spike) in [("catA", 1200, 1000), ("catB", 800, 700)] {
        std::fs::create_dir_all(data.join(cat)).unwrap();
        let mut text = String::from("timestamp,value\n");
        for i in 0..n {
            let v = if i == spike { 50.0 } else { (i % 7) as f64 };
            text.push_str(&format!("{},{v}\n", stamp(i)));
        }
        std::fs::write(data.join(cat).join("s.csv"), text).unwrap();
        spikes.push((cat, n, stamp(spike)));
    }
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let (code, _, stderr) = run("fieldline-agent", &["nab", "--data", d, "--out", o]);
    assert_eq!(code, 0, "{stderr}");
    for (cat, n, spike_ts) in &spikes {
        let res = std::fs::read_to_string(out.join(cat).join("s.csv")).unwrap();
        let lines: Vec<&str> = res.lines().collect();
        assert_eq!(lines[0], "timestamp,anomaly_score");
        assert_eq!(lines.len() as i64, n + 1, "one row per input row in {cat}");
        assert_eq!(
            lines[1],
            format!("{},{}", stamp(0), lines[1].split(',').nth(1).unwrap())
        );
        let scores: Vec<(&str, f64)> = lines[1..]
            .iter()
            .map(|l| {
                let (ts, s) = l.split_once(',').unwrap();
                (ts, s.parse::<f64>().unwrap())
            })
            .collect();
        assert!(scores.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
        let top = scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert_eq!(top.0, spike_ts, "the spike scores highest in {cat}");
        assert!(top.1 > 0.5, "{top:?}");
    }

    std::fs::write(
        data.join("catB/trunc.csv"),
        format!("timestamp,value\n{},1\noops\n", stamp(0)),
    )
    .unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let (code, _, stderr) = run("fieldline-agent", &["nab", "--data", d, "--out", o]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("trunc.csv:3") && stderr.contains("found 1"),
        "{stderr}"
    );
    for (cat, n, _) in &spikes {
        let res = std::fs::read_to_string(out.join(cat).join("s.csv")).unwrap();
        assert_eq!(
            res.lines().count() as i64,
            n + 1,
            "{cat} is complete despite trunc.csv"
        );
    }
}
