//! `pilot-bench` against real centers: sessions spread over several URLs,
//! and its exactly-once check, which must catch centers that do not share
//! state (what a broken cluster would look like).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use pilot_center::config::Config;
use pilot_center::server::Server;
use std::time::Duration;

/// Runs a test body under a bound: a hang fails the test instead.
async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    const LIMIT: Duration = Duration::from_secs(120);
    match tokio::time::timeout(LIMIT, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {LIMIT:?}"),
    }
}

/// Runs `pilot-bench sfu` over `urls`, giving up on missing notifications
/// after `phase_timeout` seconds; returns (success, stdout).
async fn bench_sfu(urls: &[String], phase_timeout: &str) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-bench"));
    for url in urls {
        command.args(["--url", url]);
    }
    let out = command
        .args([
            "sfu",
            "--sessions",
            "4",
            "--rooms",
            "20",
            "--users-per-room",
            "2",
        ])
        .args(["--phase-timeout", phase_timeout])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}

async fn start_unlimited() -> Server {
    // In memory, on loopback ports of its own, with no rate limit.
    let config = Config::parse(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n\
         grpc:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n\
         admin:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n\
         center:\n  state_dir: \"\"\n  reconnect_grace_secs: 0\n\
         limits:\n  messages_per_sec: 0\n",
    )
    .expect("test config");
    Server::start(&config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_several_urls_and_every_delivery_is_checked() {
    bounded(async move {
        // One center under two URLs: the state is shared, so all is delivered.
        let server = start_unlimited().await;
        let url = server.ws_url();
        let (ok, out) = bench_sfu(&[url.clone(), url.clone()], "30").await;
        assert!(ok, "{out}");
        assert!(
            out.contains("every expected message arrived exactly once"),
            "{out}"
        );
        assert!(
            out.contains(&format!("{url},{url}")),
            "the report names both: {out}"
        );

        // Two centers that share nothing: the sessions really are spread over
        // both, and the check sees what went missing (soon: those
        // notifications can never come).
        let other = start_unlimited().await;
        let (ok, out) = bench_sfu(&[url, other.ws_url()], "2").await;
        assert!(!ok, "split state must fail the check: {out}");
        assert!(out.contains("notifications"), "{out}");
    })
    .await;
}

/// Runs `pilot-bench` with `args`; returns (success, stdout and stderr).
async fn bench(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-bench"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("pilot-bench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_a_fanout_are_checked_apart_against_the_relay_and_the_center() {
    bounded(async move {
        // Each room's receivers must get their own sender's sequence, once,
        // in order: a relay or center that mixed rooms fails the check.
        let server = start_unlimited().await;
        let url = server.ws_url();
        let (ok, out) = bench(&[
            "--url",
            &url,
            "compare",
            "--scenario",
            "fanout",
            "--sessions",
            "3",
            "--rooms",
            "4",
            "--seconds",
            "1",
            "--runs",
            "1",
        ])
        .await;
        assert!(ok, "{out}");
        assert!(out.contains("center/relay"), "{out}");

        // Rooms spread over two centers that share nothing: half of each
        // room is missing, and the check says so.
        let other = start_unlimited().await;
        let (ok, out) = bench(&[
            "--url",
            &url,
            "--url",
            &other.ws_url(),
            "fanout",
            "--sessions",
            "3",
            "--rooms",
            "2",
            "--seconds",
            "1",
        ])
        .await;
        assert!(!ok, "rooms split over unshared centers must fail: {out}");
        assert!(out.contains("received"), "{out}");
    })
    .await;
}
