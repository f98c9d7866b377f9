//! Every ready-made gateway config validates with the same code as `check-config`.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

#[test]
fn every_firmware_config_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("firmware-configs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected a config per gateway model, found {files:?}"
    );

    // The gateway's id is given at deployment (enrollment or a systemd drop-in), as here.
    let out = Command::new(bin("fieldline-agent"))
        .arg("check-config")
        .args(&files)
        .env("FIELDLINE_AGENT__ID", "gw-under-test")
        .output()
        .expect("check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Without it, the only problem is the missing id: nothing else is left to chance.
    let out = Command::new(bin("fieldline-agent"))
        .arg("check-config")
        .args(&files)
        .env_remove("FIELDLINE_AGENT__ID")
        .output()
        .expect("check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    assert!(
        stdout
            .lines()
            .all(|l| l.ends_with("agent.id: must be set (a unique name for this gateway)")),
        "{stdout}"
    );
}
