//! The agent's .deb: built by scripts/build-deb.sh and inspected with dpkg-deb.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_package_installs_binary_hardened_unit_and_keeps_config_on_upgrade() {
    require_tool("dpkg-deb");
    let dir = tempfile::tempdir().expect("tempdir");
    // Packaging the already-built binary keeps the test fast; the layout is the same
    // as for the release (`gateway` profile) build.
    let built = sh(Command::new("bash")
        .arg(repo_root().join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(bin("fieldline-agent"))
        .arg("--out")
        .arg(dir.path())
        .args(["--compression", "none"]));
    let deb = PathBuf::from(built.lines().last().expect("deb path").trim());
    assert!(
        deb.file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("fieldline-agent_"),
        "{deb:?}"
    );

    let files = sh(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/fieldline-agent",
        "./lib/systemd/system/fieldline-agent.service",
        "./etc/fieldline/agent.toml",
        "./usr/share/doc/fieldline-agent/CONFIG.md",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(f)),
            "{f} missing from\n{files}"
        );
    }
    let fw: Vec<_> = std::fs::read_dir(repo_root().join("firmware-configs"))
        .expect("firmware-configs")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .collect();
    for e in &fw {
        let name = format!(
            "./usr/share/fieldline/firmware-configs/{}",
            e.file_name().to_string_lossy()
        );
        assert!(files.lines().any(|l| l.ends_with(&name)), "{name} missing");
    }

    let control = sh(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(control.contains("Package: fieldline-agent"), "{control}");
    assert!(
        control.contains("Depends: libc6 (>= 2.34), adduser"),
        "{control}"
    );

    let meta = dir.path().join("DEBIAN");
    sh(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&meta));
    // dpkg keeps an edited conffile on upgrade instead of overwriting it.
    let conffiles = std::fs::read_to_string(meta.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/fieldline/agent.toml");
    for script in ["postinst", "prerm", "postrm"] {
        sh(Command::new("sh").arg("-n").arg(meta.join(script)));
    }
    let postrm = std::fs::read_to_string(meta.join("postrm")).expect("postrm");
    assert!(
        postrm.contains(r#"if [ "$1" = purge ]; then"#)
            && postrm.contains("rm -rf /var/lib/fieldline")
    );
    let postinst = std::fs::read_to_string(meta.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("try-restart"));

    let root = dir.path().join("root");
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/fieldline-agent.service"))
        .expect("unit");
    for line in [
        "User=fieldline",
        "StateDirectory=fieldline",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "Restart=on-failure",
        "ExecStart=/usr/bin/fieldline-agent run --config /etc/fieldline/agent.toml",
        "Environment=FIELDLINE_AGENT__DATA_DIR=/var/lib/fieldline",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in unit");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(root.join("lib/systemd/system/fieldline-agent.service"))
            .output()
            .expect("systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        // The binary path does not exist on the build machine; anything else is a unit error.
        let real: Vec<_> = err
            .lines()
            .filter(|l| !l.contains("/usr/bin/fieldline-agent") && !l.trim().is_empty())
            .collect();
        assert!(real.is_empty(), "systemd-analyze verify: {err}");
    }

    // The shipped config is deliberately incomplete: the service refuses to start
    // (ExecStartPre runs check-config) until the operator names the gateway.
    let out = Command::new(root.join("usr/bin/fieldline-agent"))
        .arg("check-config")
        .arg(root.join("etc/fieldline/agent.toml"))
        .output()
        .expect("check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("agent.id: must be set"), "{stdout}");
}
