//! The example server as a user runs it: stdout carries only JSON lines, all stamped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::fetch;

/// `cargo test` builds the examples next to the test binaries' `deps` folder.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[tokio::test]
async fn the_example_writes_only_stamped_json_lines_and_stops_cleanly() {
    let path = example_path("api");
    assert!(path.exists(), "{} is missing: run `cargo test --workspace`, which builds the example", path.display());
    let child = Command::new(path)
        .env("ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the api example is built by `cargo test`");
    // Killed if the test fails half-way, so that no server outlives it.
    let mut child = KillOnDrop(Some(child));
    let mut stdout = BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap());
    // Migrations log their statements first; then the server says where it listens.
    let startup = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the server exited before listening");
        let line: Value = serde_json::from_str(&line).expect("every startup line is JSON");
        assert_ne!(line["level"], "WARN", "with JWT_SECRET set, no development-secret warning: {line}");
        if line["message"] == "listening" {
            break line;
        }
    };
    let addr = startup["addr"].as_str().unwrap().parse().unwrap();

    // The documented way to get a token: the mint_token example, with the same secret.
    let minted = Command::new(example_path("mint_token"))
        .arg("3")
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .output()
        .expect("the mint_token example is built by `cargo test`");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let me = fetch(addr, "/users/me", &[("authorization", bearer.as_bytes())]).await;
    assert_eq!(me.json()["name"], "Alan Turing");

    let health = fetch(addr, "/health", &[]).await;
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let fanout = fetch(addr, "/fanout", &[]).await;
    let stream = fetch(addr, "/stream", &[]).await;
    let missing = fetch(addr, "/missing", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut child = child.0.take().unwrap();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "SIGTERM must stop the server cleanly: {exit:?}");

    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| {
            let line = line.unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
        })
        .collect();
    let of = |id: &str| lines.iter().filter(|l| l["request_id"] == id).count();
    assert_eq!(of(health.request_id()), 1, "health: its access line");
    assert_eq!(of(fanout.request_id()), 5, "fanout: four tasks and the access line");
    assert_eq!(of(stream.request_id()), 4, "stream: three chunks and the access line");
    assert_eq!(of(missing.request_id()), 2, "404: the ApiError INFO line and the access line");
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == me.request_id()).collect();
    assert_eq!(mine.len(), 3, "users/me: the handler line, the query line and the access line");
    assert!(mine.iter().all(|l| l["user_id"] == "3"), "{mine:?}");
    assert!(mine.iter().any(|l| l["target"] == "sqlx::query"), "the SQLite query line is stamped: {mine:?}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(lines.iter().all(|l| !l.to_string().contains(signature)), "the token reached stdout");
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
