//! The operator command line (`pilot-center rooms`, `room`, `sessions`,
//! `msus`, `kick`, `close`, `say`, `watch`) against a running center.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT};
use pilot_center::auth::Role;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// Runs `pilot-center ARGS`; returns (success, stdout, stderr).
async fn cli(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-center"));
    command
        .args(args)
        .kill_on_drop(true)
        .env_remove("PILOT_TOKEN");
    if let Some(t) = token {
        command.env("PILOT_TOKEN", t);
    }
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command finished in time")
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_act_and_watch() {
    common::bounded(async move {
        let server = common::start().await;
        let addr = server.grpc_addr().unwrap().to_string();
        let mut sfu = Peer::connect_url(&format!("{}?peer=sfu-1", server.ws_url())).await;
        sfu.join("r1", "u1", "Ann").await;
        sfu.join("r1", "u2", "Ben").await;
        let mut msu = Peer::connect(&server).await;
        msu.collect_invites = true;
        msu.request("register", json!({"id": "m1"})).await;

        let (ok, out, _) = cli(&["rooms", "--addr", &addr], None).await;
        assert!(ok);
        assert_eq!(out, "ROOM  USERS  SESSIONS  MSU\nr1    2      1\n");
        let (ok, out, _) = cli(&["room", "r1", "--addr", &addr, "--json"], None).await;
        assert!(ok);
        let room: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(room["users"][0]["userId"], json!("u1"));
        let (ok, out, _) = cli(&["sessions", "--addr", &addr, "--json"], None).await;
        assert!(ok);
        let sessions: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(sessions[0]["peerId"], json!("sfu-1"));
        assert_eq!(sessions[0]["users"], json!(2));
        assert_eq!(sessions[1]["msuIds"], json!(["m1"]));
        let (ok, out, _) = cli(&["msus", "--addr", &addr], None).await;
        assert!(ok && out.contains("m1"), "{out}");

        // Watch, then act: the watcher sees what the actions do.
        let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-center"))
            .args([
                "watch",
                "--room",
                "r1",
                "--kind",
                "user_left",
                "--json",
                "--addr",
                &addr,
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
        let (ok, out, _) = cli(&["say", "r1", "maintenance at 5", "--addr", &addr], None).await;
        assert!(ok);
        assert_eq!(out, "said in r1; 1 sessions reached\n");
        assert_eq!(
            sfu.expect("textMessage").await["message"],
            json!("maintenance at 5")
        );
        // The watcher subscribes a moment after it starts: kick passers-by
        // until it reports one, then it sees everything that follows.
        let mut k = 0;
        loop {
            sfu.join("r1", &format!("t{k}"), "T").await;
            let (ok, _, _) = cli(&["kick", "r1", &format!("t{k}"), "--addr", &addr], None).await;
            assert!(ok);
            sfu.expect("userLeave").await;
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(200), lines.next_line());
            if let Ok(Ok(Some(_))) = next.await {
                break;
            }
            k += 1;
            assert!(k < 100, "watch never reported");
        }
        let (ok, out, _) = cli(&["kick", "r1", "u2", "--addr", &addr], None).await;
        assert!(ok);
        assert_eq!(out, "removed u2 from r1; 1 sessions told\n");
        let event = loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("watch still running");
            let event: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["kind"], json!("user_left"), "{line}");
            if event["detail"].as_str().unwrap().contains("user=u2") {
                break event;
            }
        };
        assert_eq!(event["roomId"], json!("r1"));
        let (ok, out, _) = cli(&["close", "r1", "--addr", &addr], None).await;
        assert!(ok);
        assert_eq!(out, "closed r1; 1 users removed\n");
        watch.kill().await.ok();

        // Clear errors.
        let (ok, _, err) = cli(&["room", "nope", "--addr", &addr], None).await;
        assert!(!ok);
        assert!(err.contains("not found"), "{err}");
        let (ok, _, err) = cli(&["rooms", "--addr", "127.0.0.1:1"], None).await;
        assert!(!ok);
        assert!(
            err.contains("cannot reach the center at 127.0.0.1:1"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_an_admin_token_when_auth_is_on() {
    common::bounded(async move {
        const SECRET: &str = "operator-secret-0123456789-0123456789-0123456789";
        let auth = format!("  enabled: true\n  hs256_secret: \"{SECRET}\"\n");
        let config = common::config_full(false, "", "", "", "  messages_per_sec: 0\n", &auth);
        let server = pilot_center::server::Server::start(&config).await.unwrap();
        let addr = server.grpc_addr().unwrap().to_string();
        let (ok, _, err) = cli(&["rooms", "--addr", &addr], None).await;
        assert!(!ok);
        assert!(err.contains("not authenticated"), "{err}");
        let sfu = common::token(SECRET, Role::Sfu, &["*"], 60);
        let (ok, _, err) = cli(&["rooms", "--addr", &addr], Some(&sfu)).await;
        assert!(!ok);
        assert!(err.contains("permission denied"), "{err}");
        let admin = common::token(SECRET, Role::Admin, &["*"], 60);
        let (ok, out, _) = cli(&["rooms", "--addr", &addr], Some(&admin)).await;
        assert!(ok, "{out}");
        let (ok, out, _) = cli(&["rooms", "--addr", &addr, "--token", &admin], None).await;
        assert!(ok, "{out}");
    })
    .await;
}
