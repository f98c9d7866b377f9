//! TLS between agent and fleet: `fieldline-fleet dev-ca` makes a CA and a server
//! certificate, the fleet serves HTTPS with it, and an agent trusting that CA
//! (`[uplink] ca_file`) enrolls and reports. Clients that do not trust the CA, and
//! plain HTTP, get nowhere. The web UI's cookie is `Secure` over TLS.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn https_client(ca: Option<&std::path::Path>) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = http_builder().timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("ca.pem");
        b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"));
    }
    b.build().expect("client")
}

#[test]
fn an_agent_trusting_the_dev_ca_enrolls_and_reports_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let out = Command::new(bin("fieldline-fleet"))
        .args(["dev-ca", "--out"])
        .arg(&tls)
        .output()
        .expect("dev-ca");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let _fleet = Proc::spawn(
        "fleet-tls",
        fleet_command(port)
            .arg("--data-dir")
            .arg(dir.path().join("fleet-store"))
            .arg("--tls-cert")
            .arg(tls.join("fleet.pem"))
            .arg("--tls-key")
            .arg(tls.join("fleet-key.pem"))
            .env("FIELDLINE_ADMIN_PASSWORD", "a web ui password"),
        dir.path(),
    );
    wait_for_port(port);
    let base = format!("https://127.0.0.1:{port}");

    let mqtt_port = free_port();
    let config = agent_config(
        dir.path(),
        "gw-tls",
        mqtt_port,
        &base,
        &format!("ca_file = \"{}\"\n", tls.join("ca.pem").display()),
    );
    enroll_agent(&config);
    let _agent = Proc::spawn(
        "gw-tls",
        Command::new(bin("fieldline-agent"))
            .arg("run")
            .arg("--config")
            .arg(&config),
        dir.path(),
    );

    let trusted = https_client(Some(&tls.join("ca.pem")));
    wait_until(
        "the agent online over https",
        Duration::from_secs(15),
        || {
            trusted
                .get(format!("{base}/api/v1/agents/gw-tls"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .ok()
                .and_then(|r| r.bytes().ok())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|a| a["status"] == "online")
        },
    );

    // Without the CA the certificate is refused; plain HTTP is not served.
    let err = https_client(None)
        .get(format!("{base}/healthz"))
        .send()
        .expect_err("untrusted certificate");
    assert!(
        err.is_connect() || err.to_string().contains("certificate"),
        "{err:?}"
    );
    let plain = http_builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // Over TLS the web UI's session cookie is `Secure`: never sent over plain HTTP.
    let login = trusted
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/json")
        .body(r#"{"user": "admin", "password": "a web ui password"}"#)
        .send()
        .expect("login");
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().expect("cookie");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}
