//! The agent's .deb: built by scripts/build-deb.sh and inspected with dpkg-deb.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
        control.contains("Depends: libc6 (>= 2.34), adduser, ca-certificates"),
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

/// The package's whole life under dpkg, in a throwaway Debian bookworm root (never on
/// the machine running the test): install (files, owners, modes, the system user, the
/// unit), the agent running from it as that user, an upgrade that keeps the operator's
/// config and the agent's state, an upgrade whose shipped config changed, remove
/// (config and state stay), reinstall, purge (everything goes, user included).
#[test]
fn deb_installs_upgrades_removes_and_purges_in_a_bookworm_root() {
    if let Some(why) = chroot_unavailable() {
        skip(
            "deb_installs_upgrades_removes_and_purges_in_a_bookworm_root",
            &why,
        );
        return;
    }
    require_tool("dpkg-deb");
    require_tool("strip");
    require_tool("mosquitto_pub");
    let pristine = match bookworm_root() {
        Ok(p) => p,
        Err(why) => {
            skip(
                "deb_installs_upgrades_removes_and_purges_in_a_bookworm_root",
                &why,
            );
            return;
        }
    };
    let host_passwd = std::fs::read("/etc/passwd").expect("host /etc/passwd");
    let host_group = std::fs::read("/etc/group").expect("host /etc/group");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    sh(Command::new("cp").arg("-a").arg(&pristine).arg(&root));
    let debs = Debs::build(dir.path(), &root);
    let r = Root(root);

    // --- install ---
    r.dpkg(&["-i", &debs.v1]);
    assert_eq!(r.package_status(), "install ok installed");
    assert_eq!(r.installed_version(), debs.v1_version);
    for (path, owner_mode) in [
        ("/usr/bin/fieldline-agent", "root:root 755"),
        (
            "/lib/systemd/system/fieldline-agent.service",
            "root:root 644",
        ),
        ("/etc/fieldline/agent.toml", "root:fieldline 640"),
        ("/var/lib/fieldline", "fieldline:fieldline 750"),
    ] {
        assert_eq!(r.owner_mode(path), owner_mode, "{path}");
    }
    let user = r.sh(&["getent", "passwd", "fieldline"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "not a system user: {user}");
    assert_eq!(
        &fields[5..],
        ["/var/lib/fieldline", "/usr/sbin/nologin"],
        "{user}"
    );
    r.sh(&["getent", "group", "fieldline"]);
    assert_eq!(
        r.read("/lib/systemd/system/fieldline-agent.service"),
        std::fs::read_to_string(repo_root().join("agent/packaging/fieldline-agent.service"))
            .expect("unit")
    );
    assert!(r
        .sh(&["dpkg-query", "-W", "-f", "${Conffiles}", "fieldline-agent"])
        .contains("/etc/fieldline/agent.toml"));
    let shipped = r.read("/etc/fieldline/agent.toml");
    // The binary runs on a clean bookworm root, and the shipped config waits for an id.
    let out = r.run(&[
        "/usr/bin/fieldline-agent",
        "check-config",
        "/etc/fieldline/agent.toml",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent.id: must be set"));

    // --- the operator configures it; the agent runs as the service would ---
    let mqtt = free_port();
    let edited = format!(
        "# edited by the operator\n[agent]\nid = \"gw-package-test\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [window]\nsize = \"1s\"\nmax_out_of_orderness = \"100ms\"\nidle_timeout = \"500ms\"\n\
         [uplink]\nfleet_url = \"http://127.0.0.1:{}\"\n",
        free_port()
    );
    r.write("/etc/fieldline/agent.toml", &edited);
    r.run_agent_once(mqtt, dir.path());
    let state = r.state_fingerprint();
    let report = r.state_check();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("live outbox: ") && l != "live outbox: 0"),
        "the window result should wait in the outbox:\n{report}"
    );

    // --- upgrade, same shipped config: the edited one stays, silently ---
    r.dpkg(&["-i", &debs.v2]);
    assert_eq!(r.installed_version(), debs.v2_version);
    assert_eq!(r.read("/etc/fieldline/agent.toml"), edited);
    assert_eq!(r.ls("/etc/fieldline"), ["agent.toml"]);
    assert_eq!(
        r.owner_mode("/etc/fieldline/agent.toml"),
        "root:fieldline 640"
    );
    assert_eq!(r.state_fingerprint(), state, "upgrade touched the state");
    assert_eq!(r.state_check(), report);
    assert_eq!(r.sh(&["getent", "passwd", "fieldline"]), user);

    // --- upgrade whose shipped config changed: unattended, the operator's wins and the
    // new default lands beside it (DEPLOYMENT.md: --force-confdef --force-confold) ---
    r.dpkg(&["--force-confdef", "--force-confold", "-i", &debs.v3]);
    assert_eq!(r.installed_version(), debs.v3_version);
    assert_eq!(r.read("/etc/fieldline/agent.toml"), edited);
    assert_eq!(
        r.read("/etc/fieldline/agent.toml.dpkg-dist"),
        format!("{shipped}{V3_CONFIG_LINE}")
    );
    assert_eq!(r.state_fingerprint(), state);

    // --- remove: program and unit go; config, state and user stay ---
    r.dpkg(&["-r", "fieldline-agent"]);
    assert_eq!(r.package_status(), "deinstall ok config-files");
    assert!(!r.exists("/usr/bin/fieldline-agent"));
    assert!(!r.exists("/lib/systemd/system/fieldline-agent.service"));
    assert_eq!(r.read("/etc/fieldline/agent.toml"), edited);
    assert_eq!(r.state_fingerprint(), state, "remove touched the state");
    assert_eq!(r.sh(&["getent", "passwd", "fieldline"]), user);

    // --- reinstall after remove: picks up the kept config and state ---
    r.dpkg(&["--force-confdef", "--force-confold", "-i", &debs.v3]);
    assert_eq!(r.package_status(), "install ok installed");
    assert_eq!(r.read("/etc/fieldline/agent.toml"), edited);
    assert_eq!(r.state_check(), report);

    // --- purge: config, state, user and group are gone ---
    r.dpkg(&["-P", "fieldline-agent"]);
    for gone in [
        "/etc/fieldline",
        "/var/lib/fieldline",
        "/usr/bin/fieldline-agent",
    ] {
        assert!(!r.exists(gone), "{gone} survived purge");
    }
    assert!(!r.run(&["getent", "passwd", "fieldline"]).status.success());
    assert!(!r.run(&["getent", "group", "fieldline"]).status.success());
    assert!(!r
        .run(&["dpkg-query", "-W", "fieldline-agent"])
        .status
        .success());

    assert_eq!(
        std::fs::read("/etc/passwd").unwrap(),
        host_passwd,
        "host users changed"
    );
    assert_eq!(
        std::fs::read("/etc/group").unwrap(),
        host_group,
        "host groups changed"
    );
}

/// Appended to the shipped config of the third package: a release that changed it.
const V3_CONFIG_LINE: &str = "# shipped by a newer release\n";

/// Three packages of the current debug binary (stripped: dpkg then moves MBs, not
/// hundreds), copied into the root's /tmp: the workspace version, a newer one with the
/// same shipped config, and a newer one whose shipped config changed.
struct Debs {
    v1: String,
    v1_version: String,
    v2: String,
    v2_version: String,
    v3: String,
    v3_version: String,
}

impl Debs {
    fn build(dir: &Path, root: &Path) -> Debs {
        let binary = dir.join("fieldline-agent");
        sh(Command::new("strip")
            .arg("-o")
            .arg(&binary)
            .arg(bin("fieldline-agent")));
        let build = |version: Option<&str>| {
            let mut cmd = Command::new("bash");
            cmd.arg(repo_root().join("scripts/build-deb.sh"))
                .arg("--binary")
                .arg(&binary)
                .arg("--out")
                .arg(dir.join("debs"))
                .args(["--compression", "none"]);
            if let Some(v) = version {
                cmd.args(["--version", v]);
            }
            PathBuf::from(sh(&mut cmd).lines().last().expect("deb path").trim())
        };
        let v1 = build(None);
        let v1_version = sh(Command::new("dpkg-deb").arg("-f").arg(&v1).arg("Version"))
            .trim()
            .to_string();
        let v2_version = format!("{v1_version}+upgrade1");
        let v2 = build(Some(&v2_version));
        let v3_version = format!("{v1_version}+upgrade2");
        let v3 = build(Some(&v3_version));
        // Re-pack the third with a changed default config, as a later release might ship.
        let tree = dir.join("v3-tree");
        sh(Command::new("dpkg-deb").arg("-R").arg(&v3).arg(&tree));
        let conf = tree.join("etc/fieldline/agent.toml");
        let mut text = std::fs::read_to_string(&conf).expect("shipped config");
        text.push_str(V3_CONFIG_LINE);
        std::fs::write(&conf, text).expect("write config");
        sh(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Znone", "--build"])
            .arg(&tree)
            .arg(&v3));

        let copy = |deb: &Path| {
            let name = deb.file_name().expect("deb name").to_string_lossy();
            std::fs::copy(deb, root.join("tmp").join(&*name)).expect("copy deb into root");
            format!("/tmp/{name}")
        };
        Debs {
            v1: copy(&v1),
            v1_version,
            v2: copy(&v2),
            v2_version,
            v3: copy(&v3),
            v3_version,
        }
    }
}

/// A Debian root to run commands in with chroot(8), with a clean environment.
struct Root(PathBuf);

impl Root {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.0)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("chroot")
    }

    fn sh(&self, args: &[&str]) -> String {
        sh(&mut self.command(args))
    }

    /// dpkg as an operator runs it, without a terminal: a question would fail the step.
    fn dpkg(&self, args: &[&str]) {
        let mut all = vec!["dpkg"];
        all.extend_from_slice(args);
        self.sh(&all);
    }

    fn package_status(&self) -> String {
        self.sh(&["dpkg-query", "-W", "-f", "${Status}", "fieldline-agent"])
    }

    fn installed_version(&self) -> String {
        self.sh(&["dpkg-query", "-W", "-f", "${Version}", "fieldline-agent"])
    }

    /// `user:group mode`, with names from the root's own user database.
    fn owner_mode(&self, path: &str) -> String {
        self.sh(&["stat", "-c", "%U:%G %a", path])
            .trim()
            .to_string()
    }

    fn host_path(&self, path: &str) -> PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }

    fn exists(&self, path: &str) -> bool {
        self.host_path(path).exists()
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.host_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(self.host_path(path), text).unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    fn ls(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.host_path(path))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every file and directory under /var/lib/fieldline with owner and mode, and every
    /// file's SHA-256.
    fn state_fingerprint(&self) -> String {
        let out = self.sh(&[
            "sh",
            "-c",
            "cd /var/lib/fieldline && find . -printf '%p %u:%g %m\\n' | sort && find . -type f -exec sha256sum {} + | sort",
        ]);
        assert!(!out.trim().is_empty(), "no state files");
        out
    }

    /// A command run as the service user, as systemd's `User=`/`Group=` would.
    fn as_service_user(&self, args: &[&str]) -> Command {
        let mut all = vec![
            "setpriv",
            "--reuid=fieldline",
            "--regid=fieldline",
            "--init-groups",
        ];
        all.extend_from_slice(args);
        self.command(&all)
    }

    /// `state check` as the service user (it writes a scratch copy beside the store).
    fn state_check(&self) -> String {
        let out = self
            .as_service_user(&[
                "/usr/bin/fieldline-agent",
                "state",
                "check",
                "/var/lib/fieldline/state",
            ])
            .output()
            .expect("chroot");
        assert_eq!(out.status.code(), Some(0), "state check: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the agent as the unit does (user, config, data dir), publishes a reading,
    /// waits until its window result is in the outbox (the offline uplink says so) and
    /// stops it with SIGTERM.
    fn run_agent_once(&self, mqtt: u16, logs: &Path) {
        let mut cmd = self.as_service_user(&[
            "/usr/bin/fieldline-agent",
            "run",
            "--config",
            "/etc/fieldline/agent.toml",
        ]);
        cmd.env("FIELDLINE_AGENT__DATA_DIR", "/var/lib/fieldline");
        let mut agent = Proc::spawn("packaged-agent", &mut cmd, logs);
        wait_until("the packaged agent runs", Duration::from_secs(30), || {
            agent.log().contains("agent running")
        });
        sh(Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-q", "1"])
            .args(["-t", "sensors/boiler1/temp", "-m", "21.5"]));
        wait_until("a record in the outbox", Duration::from_secs(30), || {
            agent.log().contains("records stay in the outbox")
        });
        assert_eq!(
            agent.terminate(Duration::from_secs(20)),
            Some(0),
            "{}",
            agent.log()
        );
        assert!(agent.log().contains("state flushed"), "{}", agent.log());
    }
}

/// Why the install test cannot run here, if it cannot: chroot(2) needs root.
fn chroot_unavailable() -> Option<String> {
    let uid = sh(Command::new("id").arg("-u"));
    (uid.trim() != "0").then(|| {
        "installing into a throwaway root needs chroot, i.e. root (CI runs as root)".to_string()
    })
}

/// A pristine Debian bookworm root (debootstrap minbase with the package's
/// dependencies), made once (about a minute, ~45 MB from the Debian mirror) and kept in
/// ~/.cache/fieldline; each test run copies it.
fn bookworm_root() -> Result<PathBuf, String> {
    require_tool("debootstrap");
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    // Named after what it holds: a change of suite or packages makes a new one.
    let cache = Path::new(&home).join(".cache/fieldline/deb-roots/bookworm-minbase-adduser-ca");
    if cache.join("var/lib/dpkg/status").is_file() {
        return Ok(cache);
    }
    let parent = cache.parent().expect("cache parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    // Built aside and renamed, so an interrupted run never leaves a half root behind.
    let tmp = parent.join(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mirror = std::env::var("FIELDLINE_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_string());
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=adduser,ca-certificates",
            "bookworm",
        ])
        .arg(&tmp)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run debootstrap: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let log = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!(
            "debootstrap of bookworm from {mirror} failed (no mirror reachable?): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    // The downloaded .debs are not needed to install ours: 30 MB less to copy per run.
    let _ = Command::new("sh")
        .arg("-c")
        .arg("rm -f \"$1\"/var/cache/apt/archives/*.deb")
        .arg("sh")
        .arg(&tmp)
        .status();
    match std::fs::rename(&tmp, &cache) {
        Ok(()) => Ok(cache),
        // Another run finished first: use its root.
        Err(_) if cache.join("var/lib/dpkg/status").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(cache)
        }
        Err(e) => Err(format!("cannot keep the root in {}: {e}", cache.display())),
    }
}

/// A skip that shows even when the test harness captures output (a skipped test
/// still counts as passed, so the reason must be visible).
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
