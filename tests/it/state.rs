//! `fieldline-agent state check / repair / checkpoints` on a store written by a real
//! agent, then damaged by flipping bytes in its files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn state(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(bin("fieldline-agent"))
        .arg("state")
        .args(args)
        .arg(dir)
        .output()
        .expect("run fieldline-agent state");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Flips a payload byte in every copy of outbox record `seq` (every frame whose
/// header says kind 1 and whose key is `seq`), wherever sled put it.
fn destroy_outbox_record(store: &Path, seq: u64) -> usize {
    let mut hits = 0;
    let mut key = vec![0u8, 8];
    key.extend_from_slice(&seq.to_be_bytes());
    for entry in std::fs::read_dir(store).expect("store dir").flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read");
        let mut i = 0;
        while i + 30 < bytes.len() {
            if bytes[i..i + 4] == [0xF1, 0xD1, 1, 1] && bytes[i + 12..i + 22] == key[..] {
                bytes[i + 25] ^= 0x20;
                hits += 1;
            }
            i += 1;
        }
        std::fs::write(&path, bytes).expect("write");
    }
    hits
}

#[test]
fn state_check_reports_damage_and_repair_salvages_the_rest() {
    require_tool("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt_port = free_port();
    // No fleet: every record stays in the outbox.
    let config = agent_config(
        dir.path(),
        "gw-state",
        mqtt_port,
        "http://127.0.0.1:9",
        "\n[outbox]\nforward_raw_readings = true\n",
    );
    let run = |n: usize| {
        Proc::spawn(
            &format!("gw-state-{n}"),
            Command::new(bin("fieldline-agent"))
                .arg("run")
                .arg("--config")
                .arg(&config),
            dir.path(),
        )
    };
    let mut agent = run(0);
    wait_for_port(mqtt_port);
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-p",
            &mqtt_port.to_string(),
            "-q",
            "1",
            "-l",
            "-t",
            "sensors/dev1/temp",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let stdin = publisher.stdin.as_mut().expect("stdin");
        for i in 0..30 {
            writeln!(stdin, "{i}.5").expect("write");
        }
    }
    drop(publisher.stdin.take());
    assert!(publisher.wait().expect("mosquitto_pub").success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        agent.log()
    );

    let store = dir.path().join("gw-state").join("state");
    let (code, out) = state(&["check"], &dir.path().join("gw-state"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("result: clean") && out.contains("live outbox: 30"),
        "{out}"
    );
    let (code, out) = state(&["checkpoints"], &store);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\tauto\t"),
        "the shutdown checkpoint is listed: {out}"
    );

    assert!(
        destroy_outbox_record(&store, 7) > 0,
        "record 7 found on disk"
    );
    let (code, out) = state(&["check"], &store);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("LOST: outbox: 1 (7)"), "{out}");

    let (code, out) = state(&["repair"], &store);
    assert_eq!(code, 2, "records were lost: {out}");
    assert!(
        out.contains("LOST: outbox: 1 (7)") && out.contains("live outbox: 29"),
        "{out}"
    );
    let kept = std::fs::read_dir(dir.path().join("gw-state"))
        .expect("data dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.damaged-")
        });
    assert!(kept, "the damaged store is kept aside");

    let (code, out) = state(&["check"], &store);
    assert_eq!(code, 0, "a repaired store checks clean: {out}");
    assert!(
        out.contains("known holes from an earlier repair: 1"),
        "{out}"
    );

    // The agent runs on the repaired store.
    let mut agent = run(1);
    wait_for_port(mqtt_port);
    assert_eq!(
        agent.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        agent.log()
    );
}
